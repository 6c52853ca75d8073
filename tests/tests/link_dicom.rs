//! The clinician's link, DICOM scenario (issue #14, "Scenarios that must pass"): a radiologist
//! at home pulls a 200 MB study with a real DICOM C-GET (dcmtk `getscu`) through one
//! `postern connect` from an Orthanc PACS in the cloud, across the emulated `home` broadband
//! link (40 ms RTT, 100/20 Mbit/s; see [`LOSS`]), while the laptop's address changes twice (and,
//! with [`OUTAGE`], the link goes down for 10 s once). The study arrives byte-identical, with
//! one token, one client process and one audited session.
//!
//! Run alone with `cargo test -p postern-e2e --test link_dicom -- --nocapture` to see the
//! timeline (generation, load, each image's arrival, each step on the link).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postern_e2e::dicom::{dataset_offset, getscu_command, make_large_study, storescu_all};
use postern_e2e::linkbed::Cloud;
use postern_e2e::wan::Wan;
use postern_e2e::{wait_for, Proc};
use serde_json::Value;

/// Take the link down for [`OUTAGE_LENGTH`] once during the transfer (at 40 %), as the issue
/// demands: the client sees its connection stall after 2 s and closes it, the tunnel is
/// suspended, and it is resumed over a new connection when the link returns (resumable
/// tunnels). `POSTERN_LINK_OUTAGE=SECONDS` stages another length.
const OUTAGE: bool = true;
const OUTAGE_LENGTH: Duration = Duration::from_secs(10);

/// Assert the `session.suspended` / `session.resumed` events (see [`check_suspensions`]).
const RESUME_EVENTS: bool = true;

/// The study: 20 images of 2560×2048 16-bit pixels, 10 MiB each, 210 MB in all.
const INSTANCES: u32 = 20;
const ROWS: u16 = 2048;
const COLS: u16 = 2560;

/// Random loss on the link, in percent each way: the `home` profile's 0.1 %. (With quinn's
/// default congestion control, Cubic, that loss held the transfer to about 11 Mbit/s and the
/// C-GET took 150 s; with BBR, which Postern's QUIC uses, it runs near the link's rate.)
/// `POSTERN_LINK_LOSS` overrides it.
const LOSS: &str = "0.1";

/// Upper bound for the C-GET (about 17 s at the link's 100 Mbit/s with no loss).
const TRANSFER_LIMIT: Duration = Duration::from_secs(240);

/// The outage to stage, if any.
fn outage() -> Option<Duration> {
    match std::env::var("POSTERN_LINK_OUTAGE") {
        Ok(v) => Some(Duration::from_secs_f64(v.parse().unwrap_or_else(|_| {
            panic!("POSTERN_LINK_OUTAGE={v}: expected the outage's length in seconds")
        }))),
        Err(_) => OUTAGE.then_some(OUTAGE_LENGTH),
    }
}

fn policy(dicom_port: u16) -> String {
    format!(
        r#"
[[endpoints]]
name = "pacs-dicom"
site = "truro"
host = "127.0.0.1"
port = {dicom_port}
protocol = "dicom"

[[rules]]
id = "radiologists"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs-dicom"]
max_session = "1h"
"#
    )
}

/// What happens to the link while the study flows, once `at` images have arrived.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The home address changes (a Wi-Fi switch).
    Move,
    /// The link goes down for this long, then up (a laptop lid, a dead access point).
    Outage(Duration),
}

/// On a failing test, the tails of the logs that say why (gateway, connector, client, getscu,
/// Orthanc).
struct Logs(Vec<PathBuf>);

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for p in &self.0 {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("----- {} (last 60 lines)\n{tail}", p.display());
        }
    }
}

/// The retrieved files (`getscu -od`) so far.
fn retrieved(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[test]
fn a_200_mb_dicom_c_get_survives_address_changes_on_the_home_link() {
    c_get_scenario(false);
}

/// The same on a network that drops all UDP: the client falls back to TCP, and resumable
/// tunnels carry the transfer over each broken TCP connection (an address change ends one).
#[test]
fn with_udp_blocked_the_200_mb_c_get_survives_over_tcp() {
    c_get_scenario(true);
}

fn c_get_scenario(udp_blocked: bool) {
    if let Some(why) = postern_e2e::wan::unavailable() {
        panic!("the link emulator cannot run here: {why}");
    }
    let outage = outage();
    let work = tempfile::tempdir().unwrap();

    // The study, on the test's side (the reference the retrieved files are compared with).
    let t = Instant::now();
    let study = make_large_study(
        &work.path().join("study"),
        "PID-LINK-1",
        INSTANCES,
        ROWS,
        COLS,
        14,
    );
    let generation = t.elapsed();
    assert_eq!(study.files.len(), INSTANCES as usize);
    assert!(
        study.pixel_bytes >= 200_000_000,
        "the study is {} bytes",
        study.pixel_bytes
    );

    let loss = std::env::var("POSTERN_LINK_LOSS").unwrap_or_else(|_| LOSS.into());
    let mut wan = Wan::start_with(&["--profile", "home", "--loss", &loss]);
    if udp_blocked {
        wan.block_udp();
    }
    let mut c = Cloud::new(&wan);
    let getscu_log = work.path().join("getscu.log");
    let _logs = Logs(vec![
        c.path("gateway.log"),
        c.path("conn.log"),
        c.path("client.log"),
        getscu_log.clone(),
        c.path("orthanc/orthanc.log"),
    ]);

    // Orthanc on the cloud side's loopback, loaded over that loopback (not across the link).
    let t = Instant::now();
    let orthanc = c.start_orthanc(&wan);
    let (ok, out, err) = storescu_all(wan.cloud("storescu"), orthanc.dicom_addr(), &study.files);
    assert!(ok, "loading Orthanc (storescu) failed: {out}{err}");
    assert_eq!(orthanc.instance_count(), INSTANCES as usize);
    let load = t.elapsed();

    c.start(
        &wan,
        &policy(orthanc.dicom_port),
        "",
        &orthanc.dicom_port.to_string(),
    );
    let token = c.mint("rad@hospital.test", "radiologists");
    // The default transport (`auto`): QUIC when UDP gets through, as it does here.
    let (mut client, local) = c.client(&wan, "client", "pacs-dicom", &token, &[]);

    // The plan, in images received: moves at 25 % and 60 %, the outage (if on) at 40 %.
    let n = INSTANCES as usize;
    let mut plan = vec![(n / 4, Step::Move), (n * 3 / 5, Step::Move)];
    if let Some(length) = outage {
        plan.push((n * 2 / 5, Step::Outage(length)));
    }
    plan.sort_by_key(|(at, _)| *at);

    let out_dir = work.path().join("retrieved");
    let t = Instant::now();
    let mut getscu = Proc::spawn(
        "getscu",
        &mut getscu_command(wan.home("getscu"), local, &study.study_uid, &out_dir, 60),
        getscu_log,
    );
    // When each image arrived, and what was done to the link when.
    let mut arrivals: Vec<Duration> = Vec::new();
    let mut done: Vec<(Duration, String)> = Vec::new();
    let watch = |getscu: &mut Proc, arrivals: &mut Vec<Duration>| -> bool {
        let have = retrieved(&out_dir).len();
        while arrivals.len() < have {
            arrivals.push(t.elapsed());
        }
        // The one session stays open for the whole transfer (once the last image is in, the
        // association's release may end it before getscu has exited).
        if have < n {
            let events = c.audit();
            assert!(
                of_type(&events, "session.end").is_empty(),
                "the session ended during the transfer, after {have} of {n} images: {events:?}"
            );
        }
        !getscu.is_running()
    };
    for (at, step) in plan {
        let what = format!("{at} of {n} images (before {step:?})");
        let exited = wait_for(&what, TRANSFER_LIMIT, || {
            let exited = watch(&mut getscu, &mut arrivals);
            (exited || arrivals.len() >= at).then_some(exited)
        });
        if exited {
            break;
        }
        match step {
            Step::Move => {
                let old = wan.home_addr;
                let new = wan.change_address();
                done.push((t.elapsed(), format!("home address {old} -> {new}")));
            }
            Step::Outage(length) => {
                wan.down();
                done.push((t.elapsed(), "link down".into()));
                // The outage itself, not a wait for anything.
                std::thread::sleep(length);
                wan.up();
                done.push((t.elapsed(), "link up".into()));
            }
        }
    }
    wait_for("getscu to finish", TRANSFER_LIMIT, || {
        watch(&mut getscu, &mut arrivals).then_some(())
    });
    let transfer = t.elapsed();
    let status = getscu.child.wait().unwrap();
    let getscu_text = getscu.log_text();
    eprintln!(
        "timeline (from the C-GET's start):\n{}",
        timeline(&arrivals, &done)
    );
    assert!(
        status.success(),
        "getscu failed ({status}) after {transfer:?}"
    );
    assert_eq!(
        done.iter()
            .filter(|(_, s)| s.starts_with("home address"))
            .count(),
        2,
        "the transfer ended before both address changes: {done:?}"
    );

    // Byte-identical. What crossed the tunnel is each image's data set (in the transfer syntax
    // negotiated: Explicit VR Little Endian, the one the files were written in); the File Meta
    // Information group (0002) in front of it is written by whoever saves the file (this
    // test's generator, then Orthanc on C-STORE, then getscu on the C-GET's sub-operations,
    // each with its own implementation UID and version) and never travels in a DIMSE message.
    // So "byte-identical" is: every byte after the meta group, the pixel data included, equal
    // to what was stored. dcmtk re-encodes a data set on the way; the generator writes the
    // canonical encoding (make_large_study), so a difference here is a changed byte, not an
    // encoding choice.
    let t = Instant::now();
    let got: HashMap<String, PathBuf> = retrieved(&out_dir)
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            // getscu names files MODALITY.SOPInstanceUID.
            let uid = name
                .split_once('.')
                .map(|(_, u)| u.to_owned())
                .unwrap_or(name);
            (uid, p)
        })
        .collect();
    assert!(!got.is_empty(), "getscu retrieved nothing: {getscu_text}");
    assert_eq!(
        got.len(),
        n,
        "retrieved {:?}; getscu: {getscu_text}",
        got.keys()
    );
    let mut whole_files_equal = 0;
    for (file, uid) in study.files.iter().zip(&study.instance_uids) {
        let path = got
            .get(uid)
            .unwrap_or_else(|| panic!("instance {uid} was not retrieved: {:?}", got.keys()));
        let (a, b) = (std::fs::read(file).unwrap(), std::fs::read(path).unwrap());
        let (oa, ob) = (dataset_offset(&a).unwrap(), dataset_offset(&b).unwrap());
        let (da, db) = (&a[oa..], &b[ob..]);
        if da != db {
            let at = da.iter().zip(db).position(|(x, y)| x != y);
            panic!(
                "{} differs from the stored {}: data sets of {} and {} bytes, first difference at \
                 data set offset {at:?}",
                path.display(),
                file.display(),
                da.len(),
                db.len()
            );
        }
        whole_files_equal += usize::from(a == b);
    }
    let compare = t.elapsed();

    // One session: started once, ended once, after the transfer, with the study's bytes.
    let ends = wait_for("session.end", Duration::from_secs(20), || {
        let e = c.audit();
        (!of_type(&e, "session.end").is_empty()).then_some(e)
    });
    let events = c.audit();
    let starts = of_type(&events, "session.start");
    let ends = of_type(&ends, "session.end");
    assert_eq!((starts.len(), ends.len()), (1, 1), "{events:?}");
    let (start, end) = (starts[0], ends[0]);
    assert_eq!(start["session_id"], end["session_id"]);
    assert!(
        end["close_reason"] == "client_closed" || end["close_reason"] == "endpoint_closed",
        "the session did not end with the association: {end}"
    );
    assert_eq!(start["user"], "rad@hospital.test");
    assert_eq!(start["endpoint"]["name"], "pacs-dicom");
    let bytes_down = end["bytes_down"].as_u64().unwrap_or(0);
    assert!(
        bytes_down >= study.pixel_bytes,
        "the session carried {bytes_down} bytes down, the pixel data alone is {}: {end}",
        study.pixel_bytes
    );
    check_suspensions(&events, &start["session_id"], outage, udp_blocked);
    // Over QUIC (the gateway logs the session inside the QUIC connection's span) unless UDP
    // is blocked.
    let gateway_log = std::fs::read_to_string(c.path("gateway.log")).unwrap();
    let started = gateway_log
        .lines()
        .find(|l| l.contains("session started"))
        .unwrap_or_default();
    assert_eq!(
        started.contains("quic"),
        !udp_blocked,
        "the session went over the wrong transport: {started}"
    );

    // No re-login, no second client: the one `postern connect` is still up.
    assert!(
        client.is_running(),
        "the client exited: {}",
        client.log_text()
    );
    let stats = wan.stats();
    eprintln!(
        "study: {n} images, {} bytes of pixel data, {} bytes in files",
        study.pixel_bytes, study.file_bytes
    );
    eprintln!(
        "generation {generation:?}, Orthanc start + load {load:?}, C-GET {transfer:?} ({:.1} \
         Mbit/s of pixel data), comparison {compare:?}; {whole_files_equal} of {n} files equal \
         whole (meta group included)",
        study.pixel_bytes as f64 * 8.0 / transfer.as_secs_f64() / 1e6
    );
    eprintln!("session.end: {end}");
    eprintln!("link counters: {stats}");
    eprintln!(
        "client log:\n{}",
        client
            .log_text()
            .lines()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    client.kill();
}

/// The session's suspensions and resumptions (issue #14, item 3: resumable tunnels).
///
/// An address change is carried by QUIC migration and need not suspend anything; the 10 s
/// outage must (a suspension and its resumption, with the outage length as the gateway saw
/// it), and nothing may end with `resume_expired`.
fn check_suspensions(
    events: &[Value],
    session_id: &Value,
    outage: Option<Duration>,
    over_tcp: bool,
) {
    let mine = |t: &str| -> Vec<&Value> {
        of_type(events, t)
            .into_iter()
            .filter(|e| &e["session_id"] == session_id)
            .collect()
    };
    let (suspended, resumed) = (mine("session.suspended"), mine("session.resumed"));
    eprintln!(
        "suspensions: {} suspended, {} resumed: {suspended:?} {resumed:?}",
        suspended.len(),
        resumed.len()
    );
    if !RESUME_EVENTS {
        return;
    }
    assert_eq!(
        suspended.len(),
        resumed.len(),
        "every suspension resumed: {events:?}"
    );
    if let Some(length) = outage {
        assert!(
            !suspended.is_empty(),
            "the {length:?} outage suspended nothing: {events:?}"
        );
    }
    if over_tcp {
        // A TCP connection does not survive an address change: each move suspends too.
        assert!(
            suspended.len() >= 2,
            "over TCP the moves suspended nothing: {events:?}"
        );
    }
    for r in &resumed {
        assert!(
            r["duration_ms"].is_u64(),
            "session.resumed without its outage length: {r}"
        );
    }
    assert!(
        !of_type(events, "session.end")
            .iter()
            .any(|e| e["close_reason"] == "resume_expired"),
        "{events:?}"
    );
}

/// Each image's arrival and each step on the link, in time order.
fn timeline(arrivals: &[Duration], done: &[(Duration, String)]) -> String {
    let mut lines: Vec<(Duration, String)> = arrivals
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, format!("image {} received", i + 1)))
        .chain(done.iter().cloned())
        .collect();
    lines.sort_by_key(|(t, _)| *t);
    lines
        .iter()
        .map(|(t, s)| format!("  {:>8.3} s  {s}", t.as_secs_f64()))
        .collect::<Vec<_>>()
        .join("\n")
}
