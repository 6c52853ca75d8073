//! See `postern_client::login::fuzz_callback` for the input and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_client::login::fuzz_callback(data));
