//! Weekly time windows in a named IANA time zone, and the zone arithmetic behind them.
//!
//! A window is written `"Mon-Fri 18:00-08:00"`: the days on which it *starts*, a start time and an
//! end time in the zone's local wall-clock time. An end at or before the start means the window
//! ends the next day (so `Fri 18:00-08:00` runs to Saturday 08:00). Whether an instant is inside
//! a window is decided by the local wall-clock time at that instant: on the night clocks go
//! forward the skipped hour never happens, and on the night they go back the repeated hour is
//! inside (or outside) a window both times.
//!
//! Windows are compiled into sorted, merged intervals of "seconds since Monday 00:00 local", so
//! that evaluation is a binary search; the zone's UTC offsets for 2000–2100 are tabulated at load
//! time so that evaluation does not call into the time zone database.

use std::fmt;
use std::sync::Arc;

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Seconds in a week.
pub(crate) const WEEK: u32 = 7 * 86_400;

/// The tabulated range of zone transitions: 2000-01-01 to 2100-01-01 (UTC). Outside it the
/// time zone database is asked directly.
const TABLE_START: i64 = 946_684_800;
const TABLE_END: i64 = 4_102_444_800;
/// No zone has more than a few transitions a year; a bound keeps a pathological zone cheap.
const TABLE_MAX: usize = 1_000;

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A time zone, with its UTC offsets tabulated.
#[derive(Debug)]
pub(crate) struct Zone {
    /// The IANA name as written in the policy (checked to be the database's spelling).
    pub(crate) name: String,
    tz: TimeZone,
    /// Instants (Unix seconds) at which the offset changes, ascending, within the table range.
    transitions: Vec<i64>,
    /// `offsets[i]` is in force before `transitions[i]` (and after `transitions[i - 1]`);
    /// one longer than `transitions`.
    offsets: Vec<i32>,
}

impl Zone {
    /// Looks `name` up in the bundled time zone database. The error is a hint for people.
    pub(crate) fn lookup(name: &str) -> Result<Zone, String> {
        let tz = match jiff::tz::db().get(name) {
            Ok(tz) => tz,
            Err(_) => {
                let names: Vec<String> =
                    jiff::tz::db().available().map(|n| n.to_string()).collect();
                let lower = name.to_ascii_lowercase();
                let exact_case = names.iter().find(|n| n.to_ascii_lowercase() == lower);
                let close = exact_case
                    .map(String::as_str)
                    .or_else(|| crate::text::suggest(name, names.iter().map(String::as_str)));
                return Err(match close {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None => "use an IANA time zone name such as \"Europe/London\"".to_owned(),
                });
            }
        };
        if let Some(canonical) = tz.iana_name() {
            if canonical != name && canonical.eq_ignore_ascii_case(name) {
                return Err(format!("write it as \"{canonical}\""));
            }
        }
        let mut transitions = Vec::new();
        let mut offsets = vec![offset_seconds(&tz, TABLE_START)];
        if let Ok(start) = Timestamp::from_second(TABLE_START) {
            for transition in tz.following(start).take(TABLE_MAX) {
                let at = transition.timestamp().as_second();
                if at >= TABLE_END {
                    break;
                }
                transitions.push(at);
                offsets.push(transition.offset().seconds());
            }
        }
        Ok(Zone {
            name: name.to_owned(),
            tz,
            transitions,
            offsets,
        })
    }

    /// The UTC offset in force at Unix second `t`, and the next instant after `t` at which it
    /// may change (a transition, or the end of the table; `None` if the zone never changes
    /// again).
    pub(crate) fn offset_at(&self, t: i64) -> (i32, Option<i64>) {
        if (TABLE_START..TABLE_END).contains(&t) {
            let i = self.transitions.partition_point(|&x| x <= t);
            let offset = self.offsets.get(i).copied().unwrap_or(0);
            let next = self.transitions.get(i).copied().unwrap_or(TABLE_END);
            return (offset, Some(next));
        }
        let offset = offset_seconds(&self.tz, t);
        let next = Timestamp::from_second(t).ok().and_then(|ts| {
            self.tz
                .following(ts)
                .next()
                .map(|tr| tr.timestamp().as_second())
        });
        (offset, next)
    }

    /// Local wall-clock time at `t`: seconds since Monday 00:00 local, and the next offset
    /// change.
    pub(crate) fn week_second(&self, t: i64) -> LocalTime {
        let (offset, next_change) = self.offset_at(t);
        let local = t.saturating_add(i64::from(offset));
        let days = local.div_euclid(86_400);
        // 1970-01-01 was a Thursday: day 0 is weekday 3 counting from Monday.
        let weekday = (days + 3).rem_euclid(7);
        let second_of_week = weekday * 86_400 + local.rem_euclid(86_400);
        LocalTime {
            second_of_week: u32::try_from(second_of_week).unwrap_or(0),
            next_change,
        }
    }

    /// The first instant whose local wall-clock time is `dt` (the earlier one in a fold; the
    /// moment the clocks jump, in a gap).
    pub(crate) fn local_instant(&self, dt: jiff::civil::DateTime) -> Option<i64> {
        use jiff::tz::AmbiguousOffset;
        let ambiguous = self.tz.to_ambiguous_timestamp(dt);
        let local = dt.to_zoned(TimeZone::UTC).ok()?.timestamp().as_second();
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { offset } => Some(local - i64::from(offset.seconds())),
            AmbiguousOffset::Fold { before, .. } => Some(local - i64::from(before.seconds())),
            AmbiguousOffset::Gap { before, .. } => {
                // The jump happens after `local - before` would be reached; find the transition.
                let probe = local - i64::from(before.seconds());
                let from = Timestamp::from_second(probe - 2 * 86_400).ok()?;
                self.tz
                    .following(from)
                    .map(|tr| tr.timestamp().as_second())
                    .find(|&at| at > probe - 2 * 86_400)
            }
        }
    }
}

fn offset_seconds(tz: &TimeZone, t: i64) -> i32 {
    Timestamp::from_second(t)
        .map(|ts| tz.to_offset(ts).seconds())
        .unwrap_or(0)
}

/// Wall-clock time in a zone at some instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalTime {
    /// Seconds since Monday 00:00 local, `0..WEEK`.
    pub(crate) second_of_week: u32,
    /// When the offset may next change (a DST transition), as Unix seconds.
    pub(crate) next_change: Option<i64>,
}

/// One window as written: start days, start and end minute of the day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// Bit `d` set when the window starts on weekday `d` (Monday = 0).
    days: u8,
    /// Minutes after midnight, `0..1440`.
    start: u32,
    /// Minutes after midnight, `1..=1440`; at or before `start` means the next day.
    end: u32,
}

impl Window {
    /// Parses `"Mon-Fri 18:00-08:00"`. The error is (message, hint).
    pub(crate) fn parse(text: &str) -> Result<Window, (String, String)> {
        const HINT: &str = "write days and times such as \"Mon-Fri 08:00-18:00\", \"Sat,Sun 09:00-13:00\" or \"daily 18:00-08:00\"";
        let err = |what: String| Err((what, HINT.to_owned()));
        let mut parts = text.split_whitespace();
        let (Some(days), Some(times), None) = (parts.next(), parts.next(), parts.next()) else {
            return err("expected days, a space, then a time range".into());
        };
        let days = match parse_days(days) {
            Ok(days) => days,
            Err(e) => return err(e),
        };
        let Some((start, end)) = times.split_once('-') else {
            return err(format!("time range '{times}' has no '-'"));
        };
        let (Some(start), Some(end)) = (parse_time(start, false), parse_time(end, true)) else {
            return err(format!(
                "time range '{times}' is not HH:MM-HH:MM (00:00 to 24:00)"
            ));
        };
        if start == end || (start == 0 && end == 0) {
            return Err((
                format!("window '{text}' starts and ends at the same time, so it never matches"),
                "for whole days write 00:00-24:00".to_owned(),
            ));
        }
        Ok(Window { days, start, end })
    }

    /// Half-open intervals of seconds since Monday 00:00, split at the end of the week.
    fn intervals(&self, out: &mut Vec<(u32, u32)>) {
        let length = if self.end > self.start {
            self.end - self.start
        } else {
            self.end + 1440 - self.start
        };
        for day in 0..7u32 {
            if self.days & (1 << day) == 0 {
                continue;
            }
            let start = (day * 1440 + self.start) * 60;
            let end = start + length * 60;
            if end <= WEEK {
                out.push((start, end));
            } else {
                out.push((start, WEEK));
                out.push((0, end - WEEK));
            }
        }
    }
}

/// The canonical text of a window: `Mon-Fri 18:00-08:00`. `dash` separates ranges (an en dash
/// in sentences for people, '-' in the file).
pub(crate) struct WindowText<'a>(pub(crate) &'a Window, pub(crate) &'a str);

impl fmt::Display for WindowText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Window { days, start, end } = *self.0;
        let dash = self.1;
        if days == 0x7f {
            f.write_str("daily")?;
        } else {
            // Runs of consecutive days, e.g. Mon-Wed,Fri.
            let mut first = true;
            let mut day = 0;
            while day < 7 {
                if days & (1 << day) == 0 {
                    day += 1;
                    continue;
                }
                let run_start = day;
                while day + 1 < 7 && days & (1 << (day + 1)) != 0 {
                    day += 1;
                }
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                let (a, b) = (DAY_NAMES[run_start], DAY_NAMES[day]);
                match day - run_start {
                    0 => f.write_str(a)?,
                    1 => write!(f, "{a},{b}")?,
                    _ => write!(f, "{a}{dash}{b}")?,
                }
                day += 1;
            }
        }
        write!(
            f,
            " {:02}:{:02}{dash}{:02}:{:02}",
            start / 60,
            start % 60,
            end / 60,
            end % 60
        )
    }
}

fn parse_days(text: &str) -> Result<u8, String> {
    if text.eq_ignore_ascii_case("daily") || text == "*" {
        return Ok(0x7f);
    }
    let mut days = 0u8;
    for part in text.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (day_number(a)?, day_number(b)?),
            None => {
                let d = day_number(part)?;
                (d, d)
            }
        };
        // Ranges may wrap round the week: Fri-Mon is Fri, Sat, Sun, Mon.
        let mut d = a;
        loop {
            days |= 1 << d;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

fn day_number(text: &str) -> Result<u8, String> {
    let lower = text.to_ascii_lowercase();
    const LONG: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    LONG.iter()
        .position(|long| lower.len() >= 3 && long.starts_with(&lower))
        .and_then(|d| u8::try_from(d).ok())
        .ok_or_else(|| {
            format!(
                "'{}' is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)",
                crate::text::Quoted(text)
            )
        })
}

/// `HH:MM` as minutes; `24:00` only where `allow_24` (window ends).
fn parse_time(text: &str, allow_24: bool) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    match (h, m) {
        (24, 0) if allow_24 => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// A rule's windows, compiled for one zone.
#[derive(Debug)]
pub(crate) struct Schedule {
    pub(crate) zone: Arc<Zone>,
    pub(crate) windows: Vec<Window>,
    /// Merged, sorted, disjoint, non-adjacent half-open intervals within `0..WEEK`.
    intervals: Vec<(u32, u32)>,
    /// Seconds of the week at which membership changes, ascending. Empty when the windows
    /// cover the whole week.
    edges: Vec<u32>,
}

impl Schedule {
    pub(crate) fn new(zone: Arc<Zone>, windows: Vec<Window>) -> Schedule {
        let mut raw = Vec::new();
        for window in &windows {
            window.intervals(&mut raw);
        }
        raw.sort_unstable();
        let mut intervals: Vec<(u32, u32)> = Vec::new();
        for (start, end) in raw {
            match intervals.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => intervals.push((start, end)),
            }
        }
        let wraps = intervals.first().is_some_and(|i| i.0 == 0)
            && intervals.last().is_some_and(|i| i.1 == WEEK);
        let mut edges = Vec::new();
        for &(start, end) in &intervals {
            if !(start == 0 && wraps) {
                edges.push(start);
            }
            if !(end == WEEK && wraps) {
                edges.push(end % WEEK);
            }
        }
        edges.sort_unstable();
        edges.dedup();
        Schedule {
            zone,
            windows,
            intervals,
            edges,
        }
    }

    /// Whether the windows cover the whole week (the schedule never restricts anything).
    pub(crate) fn is_always(&self) -> bool {
        self.edges.is_empty() && !self.intervals.is_empty()
    }

    /// Whether the local time `second_of_week` is inside a window.
    pub(crate) fn contains(&self, second_of_week: u32) -> bool {
        let i = self
            .intervals
            .partition_point(|&(start, _)| start <= second_of_week);
        i > 0
            && self
                .intervals
                .get(i - 1)
                .is_some_and(|&(_, end)| second_of_week < end)
    }

    /// Whether instant `t` (Unix seconds) is inside a window, and the earliest later instant at
    /// which that may change: the next window edge in local time, or an earlier change of the
    /// zone's offset (clocks going back can re-open a window that had just closed).
    pub(crate) fn state_at(&self, t: i64) -> (bool, Option<i64>) {
        self.state_at_local(t, self.zone.week_second(t))
    }

    /// [`Schedule::state_at`] with the local time at `t` already known.
    pub(crate) fn state_at_local(&self, t: i64, local: LocalTime) -> (bool, Option<i64>) {
        let inside = self.contains(local.second_of_week);
        let next_edge = self
            .seconds_to_next_edge(local.second_of_week)
            .map(|delta| {
                let edge = t.saturating_add(i64::from(delta));
                match local.next_change {
                    Some(change) if change < edge => change,
                    _ => edge,
                }
            });
        (inside, next_edge)
    }

    /// Seconds from `second_of_week` to the next edge, `1..=WEEK`.
    fn seconds_to_next_edge(&self, second_of_week: u32) -> Option<u32> {
        let first = *self.edges.first()?;
        let i = self.edges.partition_point(|&e| e <= second_of_week);
        Some(match self.edges.get(i) {
            Some(&edge) => edge - second_of_week,
            None => WEEK - second_of_week + first,
        })
    }

    /// Whether any instant in `from..until` (Unix seconds) is inside a window. Walks edge to
    /// edge, so it costs a few steps per week of the range; ranges are checked at load time and
    /// the walk is capped.
    pub(crate) fn matches_within(&self, from: i64, until: i64) -> bool {
        let mut t = from;
        for _ in 0..64 {
            if t >= until {
                return false;
            }
            let (inside, next) = self.state_at(t);
            if inside {
                return true;
            }
            match next {
                Some(next) if next > t => t = next,
                _ => return false,
            }
        }
        // A long range: some window surely falls inside it.
        true
    }

    /// `Mon–Fri 18:00–08:00, Sat 09:00–13:00 Europe/London`, for reasons.
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for (i, window) in self.windows.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&WindowText(window, "\u{2013}").to_string());
        }
        out.push(' ');
        out.push_str(&self.zone.name);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn london() -> Arc<Zone> {
        Arc::new(Zone::lookup("Europe/London").unwrap())
    }

    fn utc(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_second()
    }

    fn schedule(windows: &[&str]) -> Schedule {
        Schedule::new(
            london(),
            windows.iter().map(|w| Window::parse(w).unwrap()).collect(),
        )
    }

    #[test]
    fn windows_parse_and_print_canonically() {
        for (input, canonical) in [
            ("Mon-Fri 18:00-08:00", "Mon-Fri 18:00-08:00"),
            ("mon-fri 8:00-18:00", "Mon-Fri 08:00-18:00"),
            ("Monday,Wednesday 00:00-24:00", "Mon,Wed 00:00-24:00"),
            ("Fri-Mon 22:00-06:00", "Mon,Fri-Sun 22:00-06:00"),
            ("daily 09:00-17:00", "daily 09:00-17:00"),
            ("Sat,Sun 09:00-13:00", "Sat,Sun 09:00-13:00"),
            ("Mon,Tue,Wed,Fri 09:00-13:00", "Mon-Wed,Fri 09:00-13:00"),
        ] {
            let w = Window::parse(input).unwrap();
            assert_eq!(WindowText(&w, "-").to_string(), canonical, "{input}");
            assert_eq!(Window::parse(canonical).unwrap(), w);
        }
    }

    #[test]
    fn bad_windows_are_rejected_with_a_reason() {
        for (input, message) in [
            ("Mon-Fri", "expected days, a space, then a time range"),
            ("Mon-Fri 08:00-18:00 extra", "expected days"),
            ("Mun 08:00-18:00", "'Mun' is not a day"),
            ("Mon 08:00", "has no '-'"),
            ("Mon 25:00-26:00", "is not HH:MM-HH:MM"),
            ("Mon 24:00-08:00", "is not HH:MM-HH:MM"),
            ("Mon 08:60-09:00", "is not HH:MM-HH:MM"),
            ("Mon 08:00-08:00", "never matches"),
            ("Mon 00:00-00:00", "never matches"),
            ("Mo 08:00-09:00", "'Mo' is not a day"),
        ] {
            let (got, _hint) = Window::parse(input).unwrap_err();
            assert!(got.contains(message), "{input}: {got}");
        }
    }

    #[test]
    fn london_offsets_follow_dst() {
        let zone = london();
        // 2025: BST from 30 March 01:00 UTC to 26 October 01:00 UTC.
        assert_eq!(zone.offset_at(utc("2025-03-30T00:59:59Z")).0, 0);
        assert_eq!(
            zone.offset_at(utc("2025-03-30T00:59:59Z")).1,
            Some(utc("2025-03-30T01:00:00Z"))
        );
        assert_eq!(zone.offset_at(utc("2025-03-30T01:00:00Z")).0, 3600);
        assert_eq!(zone.offset_at(utc("2025-10-26T00:59:59Z")).0, 3600);
        assert_eq!(zone.offset_at(utc("2025-10-26T01:00:00Z")).0, 0);
        // Outside the table, the database answers.
        assert_eq!(zone.offset_at(utc("2150-07-01T00:00:00Z")).0, 3600);
        assert_eq!(zone.offset_at(utc("1990-01-01T00:00:00Z")).0, 0);
    }

    #[test]
    fn unknown_zones_get_a_hint() {
        assert_eq!(
            Zone::lookup("Europe/Londn").unwrap_err(),
            "did you mean \"Europe/London\"?"
        );
        assert_eq!(
            Zone::lookup("europe/london").unwrap_err(),
            "write it as \"Europe/London\""
        );
        assert!(Zone::lookup("Mars/Olympus").unwrap_err().contains("IANA"));
        assert!(Zone::lookup("UTC").is_ok());
    }

    #[test]
    fn evening_window_crosses_midnight() {
        let s = schedule(&["Mon-Fri 18:00-08:00"]);
        // Tuesday 4 March 2025 (GMT, so UTC = local).
        let at = |t: &str| s.state_at(utc(t));
        assert!(!at("2025-03-04T12:00:00Z").0);
        assert_eq!(
            at("2025-03-04T12:00:00Z").1,
            Some(utc("2025-03-04T18:00:00Z"))
        );
        assert!(at("2025-03-04T18:00:00Z").0);
        assert!(at("2025-03-04T23:59:59Z").0);
        assert!(at("2025-03-05T07:59:59Z").0);
        assert_eq!(
            at("2025-03-05T07:59:59Z").1,
            Some(utc("2025-03-05T08:00:00Z"))
        );
        assert!(!at("2025-03-05T08:00:00Z").0);
        // Friday's window runs into Saturday morning; Saturday evening has none; Monday morning
        // belongs to no window (Sunday starts none).
        assert!(at("2025-03-08T07:00:00Z").0);
        assert!(!at("2025-03-08T19:00:00Z").0);
        assert!(!at("2025-03-10T07:00:00Z").0);
        assert_eq!(
            at("2025-03-08T08:00:00Z").1,
            Some(utc("2025-03-10T18:00:00Z"))
        );
    }

    #[test]
    fn windows_follow_local_time_across_dst() {
        let s = schedule(&["Mon-Fri 09:00-17:00"]);
        // Summer: 09:00 BST is 08:00 UTC.
        assert!(!s.state_at(utc("2025-07-01T07:59:59Z")).0);
        assert!(s.state_at(utc("2025-07-01T08:00:00Z")).0);
        assert!(s.state_at(utc("2025-07-01T15:59:59Z")).0);
        assert!(!s.state_at(utc("2025-07-01T16:00:00Z")).0);
        // Friday 28 March 17:00 GMT → next opening Monday 31 March 09:00 BST = 08:00 UTC,
        // but the clocks change on Sunday 01:00 UTC first, which is reported as a possible change.
        let (inside, next) = s.state_at(utc("2025-03-28T17:00:00Z"));
        assert!(!inside);
        assert_eq!(next, Some(utc("2025-03-30T01:00:00Z")));
        let (inside, next) = s.state_at(utc("2025-03-30T01:00:00Z"));
        assert!(!inside);
        assert_eq!(next, Some(utc("2025-03-31T08:00:00Z")));
    }

    #[test]
    fn window_ending_in_the_skipped_hour_closes_when_the_clocks_jump() {
        // Sunday 30 March 2025: 01:00 GMT becomes 02:00 BST; 01:30 never happens.
        let s = schedule(&["Sat 22:00-01:30"]);
        let (inside, next) = s.state_at(utc("2025-03-30T00:30:00Z"));
        assert!(inside);
        assert_eq!(next, Some(utc("2025-03-30T01:00:00Z")));
        let (inside, _) = s.state_at(utc("2025-03-30T01:00:00Z"));
        assert!(!inside, "02:00 BST is after the window");
    }

    #[test]
    fn repeated_hour_is_inside_a_window_both_times() {
        // Sunday 26 October 2025: 02:00 BST becomes 01:00 GMT; 01:00-02:00 happens twice.
        let s = schedule(&["Sat 22:00-01:30"]);
        let (inside, next) = s.state_at(utc("2025-10-26T00:10:00Z")); // 01:10 BST
        assert!(inside);
        assert_eq!(next, Some(utc("2025-10-26T00:30:00Z"))); // 01:30 BST
        let (inside, next) = s.state_at(utc("2025-10-26T00:30:00Z"));
        assert!(!inside);
        assert_eq!(
            next,
            Some(utc("2025-10-26T01:00:00Z")),
            "the clocks go back"
        );
        let (inside, next) = s.state_at(utc("2025-10-26T01:00:00Z")); // 01:00 GMT
        assert!(inside);
        assert_eq!(next, Some(utc("2025-10-26T01:30:00Z"))); // 01:30 GMT
        assert!(!s.state_at(utc("2025-10-26T01:30:00Z")).0);
    }

    #[test]
    fn overlapping_and_adjacent_windows_merge() {
        let s = schedule(&["Mon 08:00-12:00", "Mon 11:00-13:00", "Mon 13:00-14:00"]);
        assert_eq!(s.intervals, [(8 * 3600, 14 * 3600)]);
        assert_eq!(s.edges, [8 * 3600, 14 * 3600]);
        let always = schedule(&["daily 00:00-24:00"]);
        assert!(always.is_always());
        assert_eq!(always.state_at(utc("2025-03-04T12:00:00Z")), (true, None));
        // Sunday night into Monday morning wraps round the week.
        let wrap = schedule(&["Sun 20:00-06:00"]);
        assert!(wrap.contains(0));
        assert!(wrap.contains(WEEK - 1));
        assert!(!wrap.contains(6 * 3600));
        assert_eq!(wrap.edges, [6 * 3600, 6 * 86_400 + 20 * 3600]);
    }

    #[test]
    fn matches_within_finds_windows_in_short_ranges() {
        let s = schedule(&["Mon-Fri 09:00-17:00"]);
        // Saturday and Sunday only.
        assert!(!s.matches_within(utc("2025-03-08T00:00:00Z"), utc("2025-03-10T00:00:00Z")));
        assert!(s.matches_within(utc("2025-03-08T00:00:00Z"), utc("2025-03-10T09:00:01Z")));
        assert!(!s.matches_within(utc("2025-03-10T17:00:00Z"), utc("2025-03-11T09:00:00Z")));
    }

    #[test]
    fn local_instants_handle_gaps_and_folds() {
        let zone = london();
        let dt = |s: &str| s.parse::<jiff::civil::DateTime>().unwrap();
        assert_eq!(
            zone.local_instant(dt("2025-07-01T00:00")),
            Some(utc("2025-06-30T23:00:00Z"))
        );
        assert_eq!(
            zone.local_instant(dt("2025-03-30T01:30")),
            Some(utc("2025-03-30T01:00:00Z"))
        );
        assert_eq!(
            zone.local_instant(dt("2025-10-26T01:30")),
            Some(utc("2025-10-26T00:30:00Z"))
        );
    }
}
