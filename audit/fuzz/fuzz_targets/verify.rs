//! Any bytes, as one or two segments and an `audit.head`: the verifier and the line parser
//! must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_audit::verify::{verify_bytes, VerifyOptions};

fuzz_target!(|data: &[u8]| {
    let options = VerifyOptions::default();
    let _ = verify_bytes(&[data], None, &options);
    if let Some((&split, rest)) = data.split_first() {
        let cut = usize::from(split) * rest.len() / 255;
        let (a, b) = rest.split_at(cut);
        let head = std::str::from_utf8(b).ok();
        let _ = verify_bytes(&[a, b], head, &options);
    }
    for line in data.split(|&b| b == b'\n') {
        let _ = serde_json::from_slice::<postern_audit::Event>(line);
    }
});
