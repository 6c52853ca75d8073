//! Weekly windows at the decision level, with fixed instants: crossing midnight and the end of
//! the week, and both daylight-saving transitions in Europe/London and America/New_York.

use crate::tests_lang::{at, parse};
use crate::*;

fn policy(zone: &str, windows: &str) -> Policy {
    parse(&format!(
        "[[endpoints]]\nname = \"pacs\"\nsite = \"s\"\nhost = \"h\"\nport = 104\nprotocol = \"dicom\"\n\n[[rules]]\nid = \"evenings\"\neffect = \"allow\"\ngroups = [\"locums\"]\nendpoints = [\"pacs\"]\nzone = \"{zone}\"\nwindows = [{windows}]\n"
    ))
}

fn decide(p: &Policy, t: &str) -> Decision {
    let groups = vec!["locums".to_owned()];
    p.evaluate(&Request::new("l@x", &groups, "pacs", at(t)))
}

#[test]
fn evening_window_crosses_midnight_and_the_weekend() {
    let p = policy("Europe/London", "\"Mon-Fri 18:00-08:00\"");
    // Tuesday 4 March 2025, GMT.
    for (t, allowed) in [
        ("2025-03-04T17:59:59Z", false),
        ("2025-03-04T18:00:00Z", true),
        ("2025-03-05T00:00:00Z", true),
        ("2025-03-05T07:59:59Z", true),
        ("2025-03-05T08:00:00Z", false),
        ("2025-03-08T07:59:59Z", true), // Friday's shift, Saturday morning
        ("2025-03-08T08:00:00Z", false),
        ("2025-03-09T20:00:00Z", false), // Sunday starts no shift
        ("2025-03-10T07:00:00Z", false), // so Monday morning is closed
        ("2025-03-10T18:00:00Z", true),
    ] {
        assert_eq!(decide(&p, t).is_allowed(), allowed, "{t}");
    }
    let d = decide(&p, "2025-03-04T12:00:00Z");
    assert_eq!(
        d.reason,
        "Denied: access to pacs for locums is only Mon–Fri 18:00–08:00 Europe/London"
    );
    assert_eq!(d.valid_until, Some(at("2025-03-04T18:00:00Z")));
    let d = decide(&p, "2025-03-07T19:00:00Z");
    assert_eq!(d.valid_until, Some(at("2025-03-08T08:00:00Z")));
    let d = decide(&p, "2025-03-08T08:00:00Z");
    assert_eq!(d.valid_until, Some(at("2025-03-10T18:00:00Z")));
}

#[test]
fn london_windows_keep_local_hours_across_both_transitions() {
    let p = policy("Europe/London", "\"daily 09:00-17:00\"");
    // Before and after the spring change (30 March 2025): 09:00 is 09:00Z, then 08:00Z.
    assert!(decide(&p, "2025-03-29T09:00:00Z").is_allowed());
    assert!(decide(&p, "2025-03-31T08:00:00Z").is_allowed());
    assert!(!decide(&p, "2025-03-31T07:59:59Z").is_allowed());
    assert!(!decide(&p, "2025-03-31T16:00:00Z").is_allowed());
    // After the autumn change (26 October 2025) 09:00 is 09:00Z again.
    assert!(decide(&p, "2025-10-25T08:00:00Z").is_allowed());
    assert!(!decide(&p, "2025-10-27T08:00:00Z").is_allowed());
    assert!(decide(&p, "2025-10-27T09:00:00Z").is_allowed());
    // Closing on Saturday 29 March at 17:00Z, the next change is the clocks going forward;
    // from there, the opening at 09:00 BST.
    let d = decide(&p, "2025-03-29T17:00:00Z");
    assert_eq!(d.valid_until, Some(at("2025-03-30T01:00:00Z")));
    let d = decide(&p, "2025-03-30T01:00:00Z");
    assert_eq!(d.valid_until, Some(at("2025-03-30T08:00:00Z")));
}

#[test]
fn the_skipped_and_the_repeated_hour() {
    let p = policy("Europe/London", "\"Sun 01:15-01:45\"");
    // 30 March 2025: 01:00 GMT jumps to 02:00 BST, so 01:15-01:45 never happens.
    for t in [
        "2025-03-30T00:59:59Z",
        "2025-03-30T01:00:00Z",
        "2025-03-30T01:20:00Z",
    ] {
        assert!(!decide(&p, t).is_allowed(), "{t}");
    }
    // 26 October 2025: 01:00-02:00 happens twice (BST, then GMT); the window is open both times.
    assert!(decide(&p, "2025-10-26T00:15:00Z").is_allowed()); // 01:15 BST
    assert!(!decide(&p, "2025-10-26T00:45:00Z").is_allowed()); // 01:45 BST
    assert!(decide(&p, "2025-10-26T01:15:00Z").is_allowed()); // 01:15 GMT
    assert!(!decide(&p, "2025-10-26T01:45:00Z").is_allowed()); // 01:45 GMT
                                                               // Between the two, the decision is valid until the clocks go back.
    assert_eq!(
        decide(&p, "2025-10-26T00:45:00Z").valid_until,
        Some(at("2025-10-26T01:00:00Z"))
    );
}

#[test]
fn new_york_night_shift_across_its_transitions() {
    let p = policy("America/New_York", "\"Sat 22:00-06:00\"");
    // 9 March 2025, 02:00 EST becomes 03:00 EDT: Saturday 22:00 EST is 03:00Z, the shift ends
    // at 06:00 EDT = 10:00Z: eight hours of wall clock, seven real ones.
    assert!(!decide(&p, "2025-03-09T02:59:59Z").is_allowed());
    assert!(decide(&p, "2025-03-09T03:00:00Z").is_allowed());
    let d = decide(&p, "2025-03-09T03:00:00Z");
    assert_eq!(
        d.valid_until,
        Some(at("2025-03-09T07:00:00Z")),
        "the clocks change first"
    );
    let d = decide(&p, "2025-03-09T07:00:00Z");
    assert!(d.is_allowed());
    assert_eq!(d.valid_until, Some(at("2025-03-09T10:00:00Z")));
    assert!(!decide(&p, "2025-03-09T10:00:00Z").is_allowed());
    // 2 November 2025, 02:00 EDT becomes 01:00 EST: 22:00 EDT is 02:00Z, 06:00 EST is 11:00Z.
    assert!(decide(&p, "2025-11-02T02:00:00Z").is_allowed());
    assert!(decide(&p, "2025-11-02T10:59:59Z").is_allowed());
    assert!(!decide(&p, "2025-11-02T11:00:00Z").is_allowed());
}
