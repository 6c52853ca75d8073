//! Policy text → `format_policy`: never panics, and formatting is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(once) = postern_policy::format_policy(text, "fuzz.toml") {
        let twice = postern_policy::format_policy(&once, "fuzz.toml")
            .expect("formatted text is valid TOML");
        assert_eq!(once, twice, "formatting is idempotent");
    }
});
