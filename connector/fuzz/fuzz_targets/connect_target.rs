//! See `postern_connector::fuzzing::connect_target` for the input format and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_connector::fuzzing::connect_target(data));
