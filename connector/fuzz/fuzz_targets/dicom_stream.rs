//! See `postern_connector::fuzzing::dicom_stream` for the input format and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_connector::fuzzing::dicom_stream(data));
