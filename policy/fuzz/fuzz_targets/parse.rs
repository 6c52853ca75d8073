//! Policy text → `Policy::parse`: never panics, never hangs; whatever loads answers requests
//! and runs its inline tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_policy::{Policy, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text, "fuzz.toml") {
        Ok(policy) => {
            let groups = vec!["g".to_owned()];
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_741_089_600);
            for endpoint in policy.endpoints().iter().take(8) {
                let _ = policy.explain(&Request::new("u@x", &groups, &endpoint.name, at));
            }
            let _ = policy.run_tests();
        }
        Err(e) => {
            assert!(!e.diagnostics().is_empty());
            let _ = e.to_string();
        }
    }
});
