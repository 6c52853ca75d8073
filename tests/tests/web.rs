//! Web viewers in the browser through the gateway's identity-aware proxy (issue #16): the
//! real gateway (apps domain `apps.localhost`, its own CA issuing `*.apps.localhost`), a real
//! connector, Orthanc with Orthanc Explorer and Debian's DICOMweb plugin, a real OpenID provider
//! and headless Chromium with a WebDriver virtual authenticator — plus plain HTTPS clients for
//! the hostile cases and an upstream that echoes what it receives.
//!
//! Web endpoint `orthanc-web` (protocol `http`, Orthanc's HTTP port, site `truro`) is served at
//! `https://orthanc-web.apps.localhost:PORT/`; `echo-web` (a [`HeaderEcho`]) beside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_e2e::browser::{AuthenticatorOptions, Chromium};
use postern_e2e::dicom::{dicom_tag, make_study, storescu, Orthanc};
use postern_e2e::oidc::{self, OidcUser};
use postern_e2e::wait_for;
use postern_e2e::web::{
    app_browser, app_host, app_origin, artefacts_dir, echoed_headers, frame, is_denial_page,
    multipart_parts, page_fetch, page_fetch_bytes, page_status, read_frame, sign_in_to_app,
    verify_jwt, web_config, websocket_accept, HeaderEcho, Https, Response,
};
use postern_e2e::world::{device_of, World};
use serde_json::{json, Value};

const ORTHANC_WEB: &str = "orthanc-web";
const ECHO_WEB: &str = "echo-web";
/// The cookies of the contract.
const APP_COOKIE: &str = "__Host-postern-app";
const STATE_COOKIE: &str = "__Host-postern-state";
/// What a DICOMweb client asks for when it wants an instance as stored.
const ACCEPT_DICOM: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

/// alice, bob: radiologists (Orthanc and the echo app); carol: a student (nothing); dave: a
/// viewer (Orthanc, read-only).
fn web_users() -> Vec<OidcUser> {
    vec![
        OidcUser::new("alice", "alice-pw", &["radiologists"], true),
        OidcUser::new("bob", "bob-pw", &["radiologists"], true),
        OidcUser::new("carol", "carol-pw", &["students"], true),
        OidcUser::new("dave", "dave-pw", &["viewers"], true),
    ]
}

/// The web endpoints and their rules: `orthanc-web` for radiologists (everything) and viewers
/// (`GET`/`HEAD` only), `echo-web` (when `echo_port` is given) for radiologists.
fn web_policy(orthanc_http: u16, echo_port: Option<u16>) -> String {
    let mut p = format!(
        r#"
[[endpoints]]
name = "{ORTHANC_WEB}"
site = "truro"
host = "127.0.0.1"
port = {orthanc_http}
protocol = "http"

[[rules]]
id = "radiologists-orthanc-web"
effect = "allow"
groups = ["radiologists"]
endpoints = ["{ORTHANC_WEB}"]
max_session = "8h"

[[rules]]
id = "viewer-read-only"
effect = "allow"
groups = ["viewers"]
endpoints = ["{ORTHANC_WEB}"]
methods = ["GET", "HEAD"]
max_session = "8h"
"#
    );
    if let Some(port) = echo_port {
        p.push_str(&format!(
            r#"
[[endpoints]]
name = "{ECHO_WEB}"
site = "truro"
host = "127.0.0.1"
port = {port}
protocol = "http"

[[rules]]
id = "radiologists-echo-web"
effect = "allow"
groups = ["radiologists"]
endpoints = ["{ECHO_WEB}"]
max_session = "8h"
"#
        ));
    }
    p
}

/// A study made with dcmtk and stored in Orthanc with storescu.
struct Stored {
    file: PathBuf,
    bytes: Vec<u8>,
    patient_id: String,
    study: String,
    series: String,
    instance: String,
}

fn store_study(orthanc: &Orthanc, dir: &Path, patient_id: &str) -> Stored {
    std::fs::create_dir_all(dir).unwrap();
    let (file, study) = make_study(dir, patient_id);
    let (ok, out, err) = storescu(orthanc.dicom_addr(), &file);
    assert!(ok, "storescu: {out}{err}");
    assert_eq!(orthanc.instance_count(), 1);
    Stored {
        bytes: std::fs::read(&file).unwrap(),
        series: dicom_tag(&file, "0020,000e"),
        instance: dicom_tag(&file, "0008,0018"),
        patient_id: patient_id.to_owned(),
        file,
        study,
    }
}

/// The gateway (with `[web]` and device trust, devices approved at registration), a
/// connector that may reach Orthanc's HTTP port (and `echo`'s), Orthanc with DICOMweb and one
/// stored study.
struct Web {
    w: World,
    orthanc: Orthanc,
    study: Stored,
    echo: Option<HeaderEcho>,
    _dir: tempfile::TempDir,
}

impl Web {
    fn start(devices: &str, with_echo: bool) -> Web {
        let dir = tempfile::tempdir().unwrap();
        let orthanc = Orthanc::start_web(&dir.path().join("orthanc"));
        let study = store_study(&orthanc, &dir.path().join("study"), "PAT-WEB-1");
        let echo = with_echo.then(HeaderEcho::start);
        let echo_port = echo.as_ref().map(|e| e.addr.port());
        let mut ports = vec![orthanc.http_port];
        ports.extend(echo_port);
        let w = World::build(
            &web_policy(orthanc.http_port, echo_port),
            &format!("{devices}{}", web_config()),
            &ports,
            "8h",
            &web_users(),
        );
        Web {
            w,
            orthanc,
            study,
            echo,
            _dir: dir,
        }
    }

    /// Device trust as in production, new devices active at registration.
    fn with_devices() -> Web {
        Web::start("[devices]\napproval = \"auto\"\n", false)
    }

    fn port(&self) -> u16 {
        self.w.d.client_port
    }

    /// `https://NAME.apps.localhost:PORT`.
    fn app(&self, name: &str) -> String {
        app_origin(name, self.port())
    }

    /// Orthanc Explorer through the proxy.
    fn explorer(&self) -> String {
        format!("{}/app/explorer.html", self.app(ORTHANC_WEB))
    }

    /// A Chromium that trusts the gateway, resolves the apps domain, and holds a virtual
    /// platform authenticator (added on the gateway's main host).
    fn browser(&self) -> Chromium {
        let b = app_browser(&self.w.d.ca_file());
        b.goto(&format!("{}/healthz", self.w.url()));
        b.add_authenticator(&AuthenticatorOptions::default());
        b
    }

    /// A plain HTTPS client for this gateway (trusting its CA only).
    fn https(&self) -> Https {
        Https::new(&self.w.d.ca_file(), self.port())
    }

    /// Signs `user` in to Orthanc Explorer in `b` (registering `b`'s authenticator) and checks
    /// the sign-in went through the provider and the gateway's device page.
    fn sign_in(&self, b: &Chromium, user: &str, pass: &str) {
        let seen = sign_in_to_app(
            &self.w,
            b,
            &self.explorer(),
            &self.app(ORTHANC_WEB),
            user,
            pass,
            &format!("{user}'s laptop"),
        );
        assert!(seen.idp_form, "the provider never asked: {seen:?}");
        assert!(
            seen.pages.iter().any(|p| p.starts_with(&self.w.url())),
            "the sign-in never reached the gateway's main host: {seen:?}"
        );
        assert!(
            b.url().starts_with(&self.explorer()),
            "not back on the page asked for: {}",
            b.url()
        );
    }

    /// The one `session.start` of `user` for `endpoint` (waits for it; fails if there are more).
    fn app_session(&self, user: &str, endpoint: &str) -> Value {
        let start = self.w.d.wait_event("session.start", |e| {
            e["user"] == user && e["endpoint"]["name"] == endpoint
        });
        let all: Vec<Value> = self
            .w
            .d
            .events("session.start")
            .into_iter()
            .filter(|e| e["user"] == user && e["endpoint"]["name"] == endpoint)
            .collect();
        assert_eq!(
            all.len(),
            1,
            "one application session, not one per request: {all:#?}"
        );
        start
    }

    /// `web.request` events of session `sid` so far.
    fn requests(&self, sid: &str) -> Vec<Value> {
        self.w
            .d
            .events("web.request")
            .into_iter()
            .filter(|e| e["session_id"] == sid)
            .collect()
    }

    /// Waits for a `web.request` of session `sid` matching `pred`.
    fn wait_request(&self, sid: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, Duration::from_secs(20), || {
            self.requests(sid).into_iter().find(|e| pred(e))
        })
    }
}

/// Orthanc Explorer, already loaded in `b`: All patients → the patient → the study; checks each
/// page shows what Orthanc holds and returns the study page's text.
fn walk_explorer(b: &Chromium, s: &Stored) -> String {
    let long = Duration::from_secs(20);
    b.click_when_ready("a[href=\"#find-patients\"]", long);
    let list = b.wait("the patient list", long, || {
        b.element_text("#all-patients")
            .filter(|t| t.contains(&s.patient_id))
    });
    assert!(list.contains("Test^Patient"), "{list}");
    b.click_when_ready("#all-patients a[href^=\"#patient?uuid=\"]", long);
    b.click_when_ready("#list-studies a[href^=\"#study?uuid=\"]", long);
    b.wait("the study page", long, || {
        b.element_text("#study-info")
            .filter(|t| t.contains(&s.study))
            .and_then(|_| b.element_text("#list-series"))
            .filter(|t| !t.trim().is_empty())
            .map(|_| b.element_text("#study").unwrap_or_default())
    })
}

/// Downloads the stored instance with DICOMweb (WADO-RS) from the page in `b` (a
/// `multipart/related` answer of one part) and checks it is byte-identical to the stored file.
fn download_instance(b: &Chromium, s: &Stored, base: &str) -> String {
    let path = format!(
        "{base}/dicom-web/studies/{}/series/{}/instances/{}",
        s.study, s.series, s.instance
    );
    let (status, ctype, body) = page_fetch_bytes(b, &path, ACCEPT_DICOM);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert!(ctype.starts_with("multipart/related"), "{ctype}");
    let parts = multipart_parts(&ctype, &body).unwrap();
    assert_eq!(parts.len(), 1, "one instance asked for");
    let (headers, dicom) = &parts[0];
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with("application/dicom")),
        "{headers:?}"
    );
    assert!(
        dicom == &s.bytes,
        "the instance downloaded through the browser ({} bytes) differs from the file stored \
         with storescu ({}, {} bytes)",
        dicom.len(),
        s.file.display(),
        s.bytes.len()
    );
    path
}

/// Signs out as a person does: the proxy's sign-out page on the app host, its form's button;
/// checks the page says "You are signed out".
fn sign_out(b: &Chromium, app: &str) {
    b.goto(&format!("{app}/.postern/logout"));
    b.wait_find("form button", Duration::from_secs(10));
    let page = b.text();
    assert!(page.to_lowercase().contains("sign out"), "{}", b.describe());
    b.click_when_ready("form button", Duration::from_secs(10));
    let after = b.wait_any_text(
        &["You are signed out", "did not work", "Access denied"],
        Duration::from_secs(15),
    );
    assert!(
        after.contains("You are signed out"),
        "the sign-out form was refused: {}",
        b.describe()
    );
}

/// Saves a PNG screenshot of `b` as `name` in the artefacts directory; returns its path.
fn screenshot(b: &Chromium, name: &str) -> PathBuf {
    b.set_window_size(1280, 900);
    let png = b.screenshot_png();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(
        png.len() > 5_000,
        "an empty screenshot ({} bytes)",
        png.len()
    );
    let path = artefacts_dir("web").join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    path
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Drop for Web {
    /// A failed test shows the end of the gateway's log (its files go with the temporary
    /// directory).
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(g) = &self.w.d.gateway {
                let log = g.log_text();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                eprintln!("--- gateway log (last 80 lines) ---\n{tail}\n---");
            }
        }
    }
}

/// The harness on its own, without the gateway: Orthanc with the DICOMweb plugin lists the study
/// stored with dcmtk, Orthanc Explorer works in the test's Chromium, a DICOMweb download from
/// the browser is byte-identical to the stored file, and a screenshot is kept.
#[test]
fn harness_orthanc_explorer_and_dicomweb_in_chromium_without_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start_web(&dir.path().join("orthanc"));
    let s = store_study(&orthanc, &dir.path().join("study"), "PAT-HARNESS-1");
    let studies: Value =
        serde_json::from_str(&orthanc.rest("/dicom-web/studies").unwrap()).unwrap();
    let uids: Vec<&str> = studies
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|st| st["0020000D"]["Value"][0].as_str())
        .collect();
    assert_eq!(uids, [s.study.as_str()], "{studies}");
    // WADO-URI answers the stored file as it is too.
    let direct = format!("http://127.0.0.1:{}", orthanc.http_port);

    let b = Chromium::start_mapping(None, &["*.apps.localhost"]);
    b.goto(&format!("{direct}/app/explorer.html"));
    let text = walk_explorer(&b, &s);
    assert!(text.contains(&s.study), "{text}");
    download_instance(&b, &s, "");
    let wado = format!(
        "/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}&contentType=application/dicom",
        s.study, s.series, s.instance
    );
    let (status, ctype, body) = page_fetch_bytes(&b, &wado, "application/dicom");
    assert_eq!((status, ctype.as_str()), (200, "application/dicom"));
    assert!(body == s.bytes, "WADO-URI answered other bytes");
    screenshot(&b, "harness-orthanc-explorer-study.png");

    // The echo upstream, as the gateway will reach it.
    let echo = HeaderEcho::start();
    let (status, body) = postern_e2e::http(echo.addr, "/x?y=1").unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["target"], "/x?y=1");
    assert!(echoed_headers(&v).iter().any(|(n, _)| n == "host"), "{v}");
}

/// Scenario 1. A radiologist opens Orthanc Explorer at its own host, is sent through the
/// gateway's sign-in (the provider, then the device page registering the laptop's platform
/// authenticator), lands back on the page asked for, lists patients, opens the study, downloads
/// an instance with DICOMweb from the browser — byte-identical to what storescu stored — and
/// signs out. Audit: one `session.start` and one `session.end` for the application session,
/// `web.request` events between them (method, path without query, status), the study UID as an
/// accessed object of the DICOMweb request.
#[test]
fn a_radiologist_signs_in_and_reads_a_study_in_orthanc_explorer() {
    let t = Instant::now();
    let web = Web::with_devices();
    let b = web.browser();
    let app = web.app(ORTHANC_WEB);
    eprintln!("[{:?}] world and browser up", t.elapsed());

    web.sign_in(&b, "alice", "alice-pw");
    eprintln!("[{:?}] signed in: {}", t.elapsed(), b.url());
    assert_eq!(
        b.exec("return document.title", vec![]).unwrap(),
        json!("Orthanc Explorer"),
        "{}",
        b.describe()
    );
    let devices = web.w.devices();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["user"], "alice@hospital.test");
    let device = devices[0]["id"].as_str().unwrap().to_owned();

    // The application cookie: host-only, Secure, HttpOnly, SameSite=Lax, Path=/.
    let cookies = b.cookies();
    let app_cookie = cookies
        .iter()
        .find(|c| c["name"] == APP_COOKIE)
        .unwrap_or_else(|| panic!("no {APP_COOKIE} on {app}: {cookies:#?}"));
    assert_eq!(app_cookie["secure"], true, "{app_cookie}");
    assert_eq!(app_cookie["httpOnly"], true, "{app_cookie}");
    assert_eq!(app_cookie["sameSite"], "Lax", "{app_cookie}");
    assert_eq!(app_cookie["path"], "/", "{app_cookie}");
    assert_eq!(
        app_cookie["domain"],
        app_host(ORTHANC_WEB),
        "a host-only cookie: {app_cookie}"
    );
    let old_cookie = app_cookie["value"].as_str().unwrap().to_owned();
    assert!(
        !cookies.iter().any(|c| c["name"] == "__Host-postern-sso"),
        "the main host's sign-in cookie is not the app's: {cookies:#?}"
    );

    // Who the proxy thinks this is.
    let who = page_fetch(
        &b,
        "/.postern/whoami",
        json!({"headers": {"Accept": "application/json"}}),
    );
    assert_eq!(who["status"], 200, "{who}");
    let who = &who["json"];
    assert_eq!(who["user"], "alice@hospital.test", "{who}");
    assert_eq!(who["app"], ORTHANC_WEB, "{who}");
    assert_eq!(who["device"], device.as_str(), "{who}");
    assert!(
        who["groups"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("radiologists"))),
        "{who}"
    );

    // The patient list, the study, the series.
    let text = walk_explorer(&b, &web.study);
    assert!(text.contains("STUDY1"), "{text}");
    let shot = screenshot(&b, "orthanc-explorer-study-through-postern.png");
    eprintln!("[{:?}] study page shown ({})", t.elapsed(), shot.display());

    // DICOMweb from the page: QIDO lists the study, WADO-RS returns the stored bytes.
    let qido = page_fetch(
        &b,
        "/dicom-web/studies?PatientID=PAT-WEB-1",
        json!({"headers": {"Accept": "application/dicom+json"}}),
    );
    assert_eq!(qido["status"], 200, "{qido}");
    assert_eq!(
        qido["json"][0]["0020000D"]["Value"][0],
        web.study.study.as_str(),
        "{qido}"
    );
    let wado_path = download_instance(&b, &web.study, "");
    eprintln!("[{:?}] instance downloaded, byte-identical", t.elapsed());

    // Audit: one application session, per-request events, the study as an accessed object.
    let start = web.app_session("alice@hospital.test", ORTHANC_WEB);
    let sid = start["session_id"].as_str().unwrap().to_owned();
    assert_eq!(start["endpoint"]["protocol"], "http", "{start}");
    assert_eq!(device_of(&start), device, "{start}");
    // The person as the auditor knows them: the IdP's e-mail on every session event (#17).
    assert_eq!(start["user_email"], "alice@hospital.test", "{start}");
    assert_eq!(
        who["session_id"],
        sid.as_str(),
        "whoami and the audit agree: {who}"
    );
    let page = web.wait_request(&sid, "GET /app/explorer.html", |e| {
        e["http"]["method"] == "GET" && e["http"]["path"] == "/app/explorer.html"
    });
    assert_eq!(page["http"]["status"], 200, "{page}");
    assert_eq!(page["user"], "alice@hospital.test", "{page}");
    let dicomweb = web.wait_request(&sid, "the WADO-RS request", |e| {
        e["http"]["path"] == wado_path.as_str()
    });
    assert_eq!(dicomweb["http"]["method"], "GET", "{dicomweb}");
    assert_eq!(dicomweb["http"]["status"], 200, "{dicomweb}");
    // Bytes as sent to the browser (Orthanc may compress them): some.
    assert!(
        dicomweb["http"]["bytes_down"].as_u64() > Some(0),
        "{dicomweb}"
    );
    let objects = dicomweb["objects"].as_array().cloned().unwrap_or_default();
    for (kind, uid) in [
        ("study", &web.study.study),
        ("series", &web.study.series),
        ("instance", &web.study.instance),
    ] {
        assert!(
            objects
                .iter()
                .any(|o| o["kind"] == kind && o["id"] == uid.as_str()),
            "{kind} {uid} not among the accessed objects: {dicomweb}"
        );
    }
    let qido_ev = web.wait_request(&sid, "the QIDO-RS request", |e| {
        e["http"]["path"] == "/dicom-web/studies"
    });
    assert_eq!(qido_ev["http"]["status"], 200, "{qido_ev}");
    let all = web.requests(&sid);
    assert!(
        all.len() >= 5,
        "explorer, its scripts and REST calls: {all:#?}"
    );
    // Every request names the sign-in the session was opened with: the browser's auth.login.
    let signin = start["signin"].as_str().unwrap_or_default().to_owned();
    assert!(signin.starts_with("tok-"), "{start}");
    assert!(
        web.w
            .d
            .events("auth.login")
            .iter()
            .any(|e| e["signin"] == signin.as_str()),
        "no auth.login of {signin}"
    );
    for e in &all {
        let path = e["http"]["path"].as_str().unwrap_or("");
        assert!(!path.contains('?'), "a query string in the audit: {e}");
        assert!(e["http"]["status"].as_u64().is_some(), "{e}");
        assert_eq!(e["signin"], signin.as_str(), "{e}");
    }
    assert!(
        web.w
            .d
            .events("session.end")
            .iter()
            .all(|e| e["session_id"] != sid.as_str()),
        "the session ended before sign-out"
    );

    // Sign-out: the proxy's own page, a form button.
    sign_out(&b, &app);
    let end = web
        .w
        .d
        .wait_event("session.end", |e| e["session_id"] == sid.as_str());
    let ends = web
        .w
        .d
        .events("session.end")
        .into_iter()
        .filter(|e| e["session_id"] == sid.as_str())
        .count();
    assert_eq!(ends, 1, "one session.end");
    assert!(
        end["close_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{end}"
    );
    assert!(
        !b.cookies()
            .iter()
            .any(|c| c["name"] == APP_COOKIE && c["value"] != ""),
        "the app cookie survived sign-out: {:#?}",
        b.cookies()
    );
    // The cookie the browser held is dead: replayed by another client, it gets 401 JSON.
    // (The sign-out page itself allows no script to fetch: its CSP is strict.)
    let after = web.https().get(
        &app_host(ORTHANC_WEB),
        "/system",
        &[
            ("Accept", "application/json"),
            ("Cookie", &format!("{APP_COOKIE}={old_cookie}")),
        ],
    );
    assert_eq!(after.status, 401, "{}", after.describe());
    assert_eq!(after.json()["error"], "signed_out", "{}", after.describe());
    let (ok, out) = web.w.d.verify_audit();
    assert!(ok, "{out}");
    eprintln!("[{:?}] done", t.elapsed());
}

/// Scenario 2. A signed-in student whose groups no rule allows gets the readable denial: a 403
/// page titled "Access denied" with the policy's reason, audited as `session.denied` with it.
#[test]
fn a_user_the_policy_does_not_allow_gets_the_access_denied_page_with_the_reason() {
    let web = Web::with_devices();
    let b = web.browser();
    b.goto(&web.explorer());
    let mut filled = false;
    let mut registered = false;
    b.wait("the denial", Duration::from_secs(60), || {
        let u = b.url();
        if u.starts_with(&web.w.idp.issuer) {
            if !filled && b.find("input[name=password]").is_some() {
                b.type_into("input[name=login]", "carol");
                b.type_into("input[name=password]", "carol-pw");
                b.click("button[type=submit]");
                filled = true;
            }
            return None;
        }
        if is_denial_page(&b) {
            return Some(());
        }
        if u.starts_with(&web.w.url()) {
            match postern_e2e::world::page_state(&b).as_str() {
                "register" if !registered => {
                    registered = true;
                    b.type_into("#device-name", "carol's laptop");
                    b.click("#register");
                }
                "confirm" => b.click("#confirm"),
                s @ ("error" | "pending") => panic!("device page: {s}: {}", b.describe()),
                _ => {}
            }
        }
        assert!(
            !(u.starts_with(&web.explorer()) && b.find("#lookup").is_some()),
            "carol reached Orthanc Explorer: {}",
            b.describe()
        );
        None
    });
    assert!(filled, "carol signed in at the provider first");
    let denied = web.w.d.wait_event("session.denied", |e| {
        e["user"] == "carol@hospital.test" && e["endpoint"]["name"] == ORTHANC_WEB
    });
    let reason = denied["decision"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("no rule allows user 'carol@hospital.test'")
            && reason.contains("students")
            && reason.contains(ORTHANC_WEB),
        "{denied}"
    );
    assert_eq!(denied["decision"]["effect"], "deny", "{denied}");
    assert_eq!(
        b.element_text("h1").as_deref(),
        Some("Access denied"),
        "{}",
        b.describe()
    );
    let text = b.text();
    assert!(
        text.contains(&reason),
        "the page should give the policy's reason {reason:?}: {}",
        b.describe()
    );
    if let Some(status) = page_status(&b) {
        assert_eq!(status, 403, "{}", b.describe());
    }
    assert!(
        !web.w
            .d
            .events("session.start")
            .iter()
            .any(|e| e["user"] == "carol@hospital.test"),
        "no application session for carol"
    );
    assert!(
        !b.cookies()
            .iter()
            .any(|c| c["name"] == APP_COOKIE && c["value"] != ""),
        "no app cookie for a denied user: {:#?}",
        b.cookies()
    );
}

/// Scenario 3. Two tabs on the application; signing out in one ends the application in the
/// other: its next request gets 401 JSON `signed_out`, its next navigation is sent to sign-in,
/// and the session's `session.end` carries the sign-out as its reason.
#[test]
fn signing_out_in_one_tab_ends_the_application_in_another() {
    let web = Web::with_devices();
    let b = web.browser();
    let app = web.app(ORTHANC_WEB);
    web.sign_in(&b, "alice", "alice-pw");
    let tab1 = b.window();
    let tab2 = b.new_tab();
    b.switch_to(&tab2);
    b.goto(&web.explorer());
    assert!(
        b.url().starts_with(&web.explorer()),
        "tab 2 needs no new sign-in: {}",
        b.describe()
    );
    b.wait_find("a[href=\"#find-patients\"]", Duration::from_secs(20));
    let ok = page_fetch(
        &b,
        "/system",
        json!({"headers": {"Accept": "application/json"}}),
    );
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["json"]["Name"], "postern-e2e", "{ok}");
    let start = web.app_session("alice@hospital.test", ORTHANC_WEB);
    let sid = start["session_id"].as_str().unwrap().to_owned();

    // Tab 1 signs out.
    b.switch_to(&tab1);
    sign_out(&b, &app);
    let end = web
        .w
        .d
        .wait_event("session.end", |e| e["session_id"] == sid.as_str());
    let reason = end["close_reason"].as_str().unwrap_or("").to_owned();
    assert!(
        ["signed_out", "token_revoked", "logout", "sign_out"].contains(&reason.as_str())
            || reason.contains("revoked"),
        "a sign-out (revocation) reason: {end}"
    );

    // Tab 2: the page's next request, then its next navigation.
    b.switch_to(&tab2);
    let r = page_fetch(
        &b,
        "/system",
        json!({"headers": {"Accept": "application/json"}}),
    );
    assert_eq!(r["status"], 401, "{r}");
    assert_eq!(r["json"]["error"], "signed_out", "{r}");
    b.goto(&web.explorer());
    let landed = b.wait("tab 2 sent to sign-in", Duration::from_secs(30), || {
        let u = b.url();
        (u.starts_with(&web.w.url()) || u.starts_with(&web.w.idp.issuer)).then_some(u)
    });
    assert!(!landed.starts_with(&app), "{landed}");
    assert_eq!(
        web.w
            .d
            .events("session.start")
            .iter()
            .filter(|e| e["endpoint"]["name"] == ORTHANC_WEB)
            .count(),
        1,
        "no new application session without a new sign-in"
    );
}

/// Scenario 4. Revoking the device a clinician signed in with ends the application session:
/// the page's next request is refused, the session ends as `device_revoked`, and navigation is
/// sent back to sign-in.
#[test]
fn a_revoked_device_loses_the_application_at_its_next_request() {
    let web = Web::with_devices();
    let b = web.browser();
    web.sign_in(&b, "alice", "alice-pw");
    let ok = page_fetch(
        &b,
        "/system",
        json!({"headers": {"Accept": "application/json"}}),
    );
    assert_eq!(ok["status"], 200, "{ok}");
    let start = web.app_session("alice@hospital.test", ORTHANC_WEB);
    let sid = start["session_id"].as_str().unwrap().to_owned();
    let device = device_of(&start);
    assert!(!device.is_empty(), "the session names the device: {start}");

    // The revocation is made by the admin command (another process) in the shared store; the
    // gateway hears of it as it does for tunnels (within about a second), and from then on
    // the application's requests are refused.
    let t0 = Instant::now();
    let (ok, out, err) = web.w.admin(&["device", "revoke", &device]);
    assert!(ok, "device revoke: {out}{err}");
    let r = wait_for(
        "a request of the page to be refused",
        Duration::from_secs(10),
        || {
            let r = page_fetch(
                &b,
                "/system",
                json!({"headers": {"Accept": "application/json"}}),
            );
            (r["status"] != 200).then_some(r)
        },
    );
    let took = t0.elapsed();
    eprintln!("device revoke → the app's requests refused after {took:?}");
    let status = r["status"].as_u64().unwrap_or(0);
    assert!(status == 401 || status == 403, "refused: {r}");
    assert!(
        r["json"]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a JSON error for the page's script: {r}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the application was usable {took:?} after its device was revoked"
    );
    web.w
        .d
        .wait_event("device.revoked", |e| device_of(e) == device);
    let again = page_fetch(
        &b,
        "/system",
        json!({"headers": {"Accept": "application/json"}}),
    );
    assert_ne!(again["status"], 200, "{again}");
    let end = web
        .w
        .d
        .wait_event("session.end", |e| e["session_id"] == sid.as_str());
    assert_eq!(end["close_reason"], "device_revoked", "{end}");

    b.goto(&web.explorer());
    let landed = b.wait("sent to sign-in", Duration::from_secs(30), || {
        let u = b.url();
        (u.starts_with(&web.w.url()) || u.starts_with(&web.w.idp.issuer)).then_some(u)
    });
    assert!(!landed.starts_with(&web.app(ORTHANC_WEB)), "{landed}");
}

/// Scenario 5. A viewer allowed `GET`/`HEAD` only loads Orthanc Explorer and reads with
/// DICOMweb, but a `POST` to Orthanc's REST API from the page is refused with 403 JSON and the
/// rule's reason, and audited as a refused request.
#[test]
fn a_read_only_rule_lets_pages_load_but_refuses_a_post_with_the_reason() {
    let web = Web::with_devices();
    let b = web.browser();
    web.sign_in(&b, "dave", "dave-pw");
    b.wait_find("a[href=\"#find-patients\"]", Duration::from_secs(20));
    let start = web.app_session("dave@hospital.test", ORTHANC_WEB);
    assert_eq!(start["decision"]["rule"], "viewer-read-only", "{start}");
    let sid = start["session_id"].as_str().unwrap().to_owned();

    let studies = page_fetch(
        &b,
        "/dicom-web/studies",
        json!({"headers": {"Accept": "application/dicom+json"}}),
    );
    assert_eq!(studies["status"], 200, "{studies}");
    assert_eq!(
        studies["json"][0]["0020000D"]["Value"][0],
        web.study.study.as_str(),
        "{studies}"
    );

    let instances_before = web.orthanc.instance_count();
    let post = page_fetch(
        &b,
        "/tools/find",
        json!({
            "method": "POST",
            "headers": {"Accept": "application/json", "Content-Type": "application/json"},
            "body": json!({"Level": "Study", "Query": {}}).to_string(),
        }),
    );
    assert_eq!(post["status"], 403, "{post}");
    assert_eq!(post["json"]["error"], "policy_denied", "{post}");
    // The contract's field is `reason`; a gateway that puts the sentence elsewhere is reported
    // at the end, after the rest of the scenario.
    let mut deviations = Vec::new();
    let reason = match post["json"]["reason"].as_str() {
        Some(r) => r.to_owned(),
        None => {
            deviations.push(format!(
                "403 JSON without \"reason\" (the contract): {}",
                post["json"]
            ));
            post["json"]["message"].as_str().unwrap_or("").to_owned()
        }
    };
    assert!(
        reason.contains("viewer-read-only") && reason.contains("POST"),
        "the reason names the rule and the method: {post}"
    );
    // A write, refused too (DELETE of the study).
    let del = page_fetch(
        &b,
        "/dicom-web/studies",
        json!({"method": "DELETE", "headers": {"Accept": "application/json"}}),
    );
    assert_eq!(del["status"], 403, "{del}");
    assert_eq!(web.orthanc.instance_count(), instances_before);

    let refused = web.wait_request(&sid, "the refused POST", |e| {
        e["http"]["method"] == "POST" && e["http"]["path"] == "/tools/find"
    });
    assert_eq!(refused["http"]["status"], 403, "{refused}");
    let got = web.wait_request(&sid, "the QIDO GET", |e| {
        e["http"]["method"] == "GET" && e["http"]["path"] == "/dicom-web/studies"
    });
    assert_eq!(got["http"]["status"], 200, "{got}");
    assert!(
        deviations.is_empty(),
        "departures from the contract: {deviations:#?}"
    );
}

/// A navigation's headers, as a browser sends them for a top-level page load.
const NAVIGATE: [(&str, &str); 3] = [
    ("Accept", "text/html,application/xhtml+xml"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Dest", "document"),
];
const JSON_FETCH: [(&str, &str); 2] = [("Accept", "application/json"), ("Sec-Fetch-Mode", "cors")];

/// A code the gateway issued for app `name`, not yet redeemed: the app host's redirect of an
/// unauthenticated navigation (and its state cookie), then the sign-in at the provider by the
/// curl browser, stopped before it follows the redirect to the app's `/.postern/callback`.
struct Code {
    /// The callback URL with the code (`/.postern/callback?code=...`, path and query).
    callback: String,
    /// `__Host-postern-state=VALUE` (empty if the gateway set none).
    state_cookie: String,
}

fn issue_code(web: &Web, https: &Https, name: &str, user: &str, pass: &str) -> Code {
    let host = app_host(name);
    let r = https.get(&host, "/app/explorer.html", &NAVIGATE);
    assert!(
        matches!(r.status, 302 | 303 | 307),
        "an unauthenticated navigation is sent to sign-in: {}",
        r.describe()
    );
    let location = r.header("location").unwrap_or("").to_owned();
    assert!(
        location.starts_with(&format!("{}/auth/web?", web.w.url())),
        "to the main host's /auth/web: {location}"
    );
    assert_eq!(
        oidc::query_param(&location, "app").as_deref(),
        Some(name),
        "{location}"
    );
    assert!(r.set_cookie(APP_COOKIE).is_none(), "{}", r.describe());
    let state_cookie = r
        .cookie_value(STATE_COOKIE)
        .map(|v| format!("{STATE_COOKIE}={v}"))
        .unwrap_or_default();
    let origin = app_origin(name, web.port());
    let curl = oidc::Browser::new(&web.w.d.ca_file());
    let res = curl.login_until(
        &location,
        user,
        pass,
        &format!("{origin}/.postern/callback"),
    );
    assert!(
        res.final_url
            .starts_with(&format!("{origin}/.postern/callback?")),
        "the sign-in should end at the app's callback: {res:#?}"
    );
    assert!(
        oidc::query_param(&res.final_url, "code").is_some_and(|c| c.len() >= 16),
        "{}",
        res.final_url
    );
    Code {
        callback: res.final_url[origin.len()..].to_owned(),
        state_cookie,
    }
}

/// Redeems `code` at app `name`'s callback (with the state cookie, as the browser would).
fn redeem(https: &Https, name: &str, callback: &str, state_cookie: &str) -> Response {
    let mut headers = NAVIGATE.to_vec();
    if !state_cookie.is_empty() {
        headers.push(("Cookie", state_cookie));
    }
    https.get(&app_host(name), callback, &headers)
}

/// Checks a refused code exchange: not a redirect into the app, no app cookie.
fn assert_code_refused(r: &Response, what: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what} must be refused: {}",
        r.describe()
    );
    assert!(
        r.cookie_value(APP_COOKIE).is_none_or(|v| v.is_empty()),
        "{what} set an app cookie: {}",
        r.describe()
    );
}

/// `__Host-postern-app=VALUE` from a successful exchange, checking the cookie's attributes.
fn app_cookie_of(r: &Response) -> String {
    assert!(matches!(r.status, 302 | 303), "{}", r.describe());
    let set = r
        .set_cookie(APP_COOKIE)
        .unwrap_or_else(|| panic!("no {APP_COOKIE}: {}", r.describe()))
        .to_owned();
    let lower = set.to_ascii_lowercase();
    for attr in ["secure", "httponly", "samesite=lax", "path=/"] {
        assert!(lower.contains(attr), "{APP_COOKIE} without {attr}: {set}");
    }
    assert!(
        !lower.contains("domain="),
        "a __Host- cookie has no Domain: {set}"
    );
    let v = r.cookie_value(APP_COOKIE).unwrap();
    assert!(v.len() >= 16, "{set}");
    format!("{APP_COOKIE}={v}")
}

/// Scenario 6. Hostile clients (plain HTTPS/1.1 with the app host's SNI): forged and replayed
/// codes, a code for another app, a cookie from another app host, spoofed identity and
/// forwarding headers (the upstream sees the gateway's own assertion only, which verifies
/// against the published key set with the endpoint as audience), an oversized header, and
/// slowloris clients cut within the header timeout without blocking anyone else.
#[test]
fn hostile_clients_cannot_forge_replay_or_carry_sessions_and_cannot_stall_the_proxy() {
    let t = Instant::now();
    // Device trust off: the curl browser signs in (WebAuthn has its own tests above).
    let mut web = Web::start("[devices]\nrequired = false\n", true);
    // Departures from the contract that do not stop the rest of the test: reported at the end.
    let mut deviations: Vec<String> = Vec::new();
    let https = web.https();
    let orthanc = app_host(ORTHANC_WEB);
    let echo_host = app_host(ECHO_WEB);

    // Unauthenticated API request: 401 JSON, not a redirect.
    let r = https.get(&orthanc, "/system", &JSON_FETCH);
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(r.json()["error"], "signed_out", "{}", r.describe());

    // A forged code (with or without a state cookie) sets no cookie.
    let code = issue_code(&web, &https, ORTHANC_WEB, "alice", "alice-pw");
    let forged = format!("/.postern/callback?code={}", oidc::random_token());
    assert_code_refused(
        &redeem(&https, ORTHANC_WEB, &forged, &code.state_cookie),
        "a forged code",
    );
    assert_code_refused(
        &redeem(&https, ORTHANC_WEB, &forged, ""),
        "a forged code, no state",
    );
    // The genuine code, once.
    let r = redeem(&https, ORTHANC_WEB, &code.callback, &code.state_cookie);
    let cookie = app_cookie_of(&r);
    let back = r.header("location").unwrap_or("");
    assert!(
        back.starts_with("/app/explorer.html") || back.starts_with(&web.explorer()),
        "back to the page asked for, on this host: {back}"
    );
    // Replayed: refused, no cookie.
    assert_code_refused(
        &redeem(&https, ORTHANC_WEB, &code.callback, &code.state_cookie),
        "a replayed code",
    );
    let ok = https.get(
        &orthanc,
        "/system",
        &[JSON_FETCH[0], JSON_FETCH[1], ("Cookie", &cookie)],
    );
    assert_eq!(ok.status, 200, "{}", ok.describe());
    assert_eq!(ok.json()["Name"], "postern-e2e", "{}", ok.describe());
    eprintln!("[{:?}] codes: forged and replayed refused", t.elapsed());

    // No open redirect: a sign-in asked to return to another site ends on the app's host or
    // is refused; the browser never goes to the other site.
    let origin = web.app(ORTHANC_WEB);
    let curl = oidc::Browser::new(&web.w.d.ca_file());
    let res = curl.login_until(
        &format!(
            "{}/auth/web?app={ORTHANC_WEB}&return=https%3A%2F%2Fevil.example%2Fphish",
            web.w.url()
        ),
        "alice",
        "alice-pw",
        &format!("{origin}/.postern/callback"),
    );
    assert!(!res.visited("https://evil.example"), "{res:#?}");
    if res
        .final_url
        .starts_with(&format!("{origin}/.postern/callback?"))
    {
        let r = redeem(&https, ORTHANC_WEB, &res.final_url[origin.len()..], "");
        if (300..400).contains(&r.status) {
            let to = r.header("location").unwrap_or("");
            assert!(
                to.starts_with(&format!("{origin}/"))
                    || to.starts_with('/') && !to.starts_with("//"),
                "an open redirect: {}",
                r.describe()
            );
        }
    }

    // A code issued for the echo app, with its own state cookie, is no good at Orthanc's host
    // (the attempt may use it up: the echo app gets a code of its own below).
    let stray = issue_code(&web, &https, ECHO_WEB, "alice", "alice-pw");
    assert_code_refused(
        &redeem(&https, ORTHANC_WEB, &stray.callback, &stray.state_cookie),
        "a code for another app",
    );
    let echo_code = issue_code(&web, &https, ECHO_WEB, "alice", "alice-pw");
    let r = redeem(
        &https,
        ECHO_WEB,
        &echo_code.callback,
        &echo_code.state_cookie,
    );
    let echo_cookie = app_cookie_of(&r);

    // The echo app's cookie on Orthanc's host: refused as signed out, Orthanc not reached.
    let r = https.get(
        &orthanc,
        "/system",
        &[JSON_FETCH[0], JSON_FETCH[1], ("Cookie", &echo_cookie)],
    );
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(r.json()["error"], "signed_out", "{}", r.describe());
    let r = https.get(
        &orthanc,
        "/app/explorer.html",
        &[
            NAVIGATE[0],
            NAVIGATE[1],
            NAVIGATE[2],
            ("Cookie", &echo_cookie),
        ],
    );
    assert!(matches!(r.status, 302 | 303), "{}", r.describe());
    // ... and Orthanc's cookie on the echo app.
    let before = web.echo.as_ref().unwrap().requests().len();
    let r = https.get(
        &echo_host,
        "/",
        &[JSON_FETCH[0], JSON_FETCH[1], ("Cookie", &cookie)],
    );
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(
        web.echo.as_ref().unwrap().requests().len(),
        before,
        "the upstream was reached"
    );
    eprintln!("[{:?}] cookies: another app's refused", t.elapsed());

    // Spoofed identity and forwarding headers never reach the upstream; the gateway's own do.
    let r = https.get(
        &echo_host,
        "/whoever?x=1",
        &[
            ("Accept", "application/json"),
            ("Cookie", &format!("{echo_cookie}; theme=dark")),
            (
                "postern-jwt-assertion",
                "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",
            ),
            ("X-Postern-User", "admin@hospital.test"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "http"),
            ("Forwarded", "for=203.0.113.9;host=evil.example;proto=http"),
            ("X-Real-IP", "203.0.113.9"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    let echoed = r.json();
    assert_eq!(echoed["target"], "/whoever?x=1", "{echoed}");
    let h = echoed_headers(&echoed);
    let values = |name: &str| -> Vec<String> {
        h.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    for gone in ["x-postern-user", "x-real-ip"] {
        assert!(
            values(gone).is_empty(),
            "{gone} reached the upstream: {echoed}"
        );
    }
    let text = echoed.to_string();
    assert!(
        !text.contains("203.0.113.9")
            && !text.contains("evil.example")
            && !text.contains("\"admin"),
        "a spoofed value reached the upstream: {echoed}"
    );
    assert_eq!(values("x-forwarded-for"), ["127.0.0.1"], "{echoed}");
    assert_eq!(values("x-forwarded-proto"), ["https"], "{echoed}");
    assert_eq!(
        values("x-forwarded-host"),
        [format!("{echo_host}:{}", web.port())],
        "{echoed}"
    );
    let fwd = values("forwarded").join(",");
    assert!(
        fwd.contains("proto=https") && fwd.contains("for="),
        "{echoed}"
    );
    let echo_port = web.echo.as_ref().unwrap().addr.port();
    assert_eq!(
        values("host"),
        [format!("127.0.0.1:{echo_port}")],
        "{echoed}"
    );
    let cookies = values("cookie").join("; ");
    assert!(
        !cookies.contains(APP_COOKIE),
        "the app cookie went upstream: {echoed}"
    );
    assert!(
        cookies.contains("theme=dark"),
        "the app's own cookies pass: {echoed}"
    );

    let assertion = values("postern-jwt-assertion");
    assert_eq!(
        assertion.len(),
        1,
        "exactly the gateway's assertion: {echoed}"
    );
    let jwks_r = https.get(
        &echo_host,
        "/.postern/jwks.json",
        &[("Accept", "application/json")],
    );
    assert_eq!(jwks_r.status, 200, "{}", jwks_r.describe());
    let jwks = jwks_r.json();
    let main_jwks = https.get("localhost", "/.well-known/postern/jwks.json", &[]);
    assert_eq!(main_jwks.status, 200, "{}", main_jwks.describe());
    assert_eq!(
        main_jwks.json()["keys"],
        jwks["keys"],
        "one key set on both hosts"
    );
    let (header, claims) = verify_jwt(&assertion[0], &jwks)
        .unwrap_or_else(|e| panic!("the assertion does not verify: {e}: {}", assertion[0]));
    // Ed25519, with the gateway's token keys (published by every replica).
    assert_eq!(header["alg"], "EdDSA", "{header}");
    assert!(header["kid"].is_string(), "{header}");
    let aud_ok = claims["aud"] == ECHO_WEB
        || claims["aud"]
            .as_array()
            .is_some_and(|a| a == &vec![json!(ECHO_WEB)]);
    assert!(aud_ok, "aud is the endpoint: {claims}");
    assert_eq!(claims["sub"], "alice@hospital.test", "{claims}");
    assert_eq!(claims["email"], "alice@hospital.test", "{claims}");
    assert!(
        claims["groups"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("radiologists"))),
        "{claims}"
    );
    let iss = claims["iss"].as_str().unwrap_or("");
    assert!(!iss.is_empty(), "{claims}");
    if iss.trim_end_matches('/') != web.w.url() {
        deviations.push(format!(
            "postern-jwt-assertion iss is {iss:?}, not the gateway's public URL {} (the contract)",
            web.w.url()
        ));
    }
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 60, "{claims}");
    assert!(iat <= now() + 5 && exp > now(), "{claims}");
    let who = https.get(
        &echo_host,
        "/.postern/whoami",
        &[("Accept", "application/json"), ("Cookie", &echo_cookie)],
    );
    assert_eq!(who.status, 200, "{}", who.describe());
    assert_eq!(claims["sid"], who.json()["session_id"], "{claims}");
    // The same assertion does not verify for Orthanc's audience, and a tampered one not at all.
    assert_ne!(claims["aud"], ORTHANC_WEB);
    let mut parts: Vec<&str> = assertion[0].split('.').collect();
    let forged_claims = oidc::b64url_encode(
        json!({"sub": "admin@hospital.test", "aud": ECHO_WEB, "exp": now() + 60})
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged_claims;
    assert!(verify_jwt(&parts.join("."), &jwks).is_err());
    eprintln!(
        "[{:?}] identity headers: spoofed stripped, assertion verified",
        t.elapsed()
    );

    // Sign-out is a POST with the sign-out page's CSRF token from a page of this host: one
    // from elsewhere, or without the token, changes nothing.
    for (origin, body) in [
        ("https://evil.example", "csrf=x"),
        (web.app(ORTHANC_WEB).as_str(), ""),
    ] {
        let r = https.request(
            &orthanc,
            "POST",
            "/.postern/logout",
            &[
                ("Origin", origin),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 403, "a forged sign-out: {}", r.describe());
        assert!(r.cookie_value(APP_COOKIE).is_none(), "{}", r.describe());
    }
    let ok = https.get(
        &orthanc,
        "/system",
        &[JSON_FETCH[0], JSON_FETCH[1], ("Cookie", &cookie)],
    );
    assert_eq!(ok.status, 200, "still signed in: {}", ok.describe());

    // An oversized header: 431 (or 400), and the gateway goes on serving.
    let huge = format!("{cookie}; big={}", "x".repeat(100 * 1024));
    match https.send(
        &orthanc,
        &format!("GET /system HTTP/1.1\r\nAccept: application/json\r\nCookie: {huge}"),
        b"",
    ) {
        Ok(r) => assert!(matches!(r.status, 431 | 400), "{}", r.describe()),
        Err(e) => panic!("an oversized header should get an answer (431/400), got {e}"),
    }
    let ok = https.get(
        &orthanc,
        "/system",
        &[JSON_FETCH[0], JSON_FETCH[1], ("Cookie", &cookie)],
    );
    assert_eq!(ok.status, 200, "{}", ok.describe());
    eprintln!("[{:?}] oversized header refused", t.elapsed());

    // Slowloris: clients sending their header one byte a second are cut within the header
    // timeout, while another client is served as usual.
    let request = format!(
        "GET /system HTTP/1.1\r\nHost: {orthanc}:{}\r\nAccept: application/json\r\nCookie: {cookie}\r\nX-Padding: {}\r\n\r\n",
        web.port(),
        "p".repeat(40)
    );
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (https, host, request, stop) = (
                https.clone(),
                orthanc.clone(),
                request.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || -> Result<Duration, String> {
                let mut tls = https.connect(&host).map_err(|e| e.to_string())?;
                tls.sock
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                let t0 = Instant::now();
                let mut buf = [0u8; 4096];
                for byte in request.as_bytes() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if tls.write_all(&[*byte]).and_then(|()| tls.flush()).is_err() {
                        return Ok(t0.elapsed());
                    }
                    // Waits a second for the gateway to say or do something.
                    match tls.read(&mut buf) {
                        Ok(_) => return Ok(t0.elapsed()),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return Ok(t0.elapsed()),
                    }
                }
                Err(format!(
                    "sent the whole {}-byte header over {:?} without being cut",
                    request.len(),
                    t0.elapsed()
                ))
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut served = 0;
    while t0.elapsed() < Duration::from_secs(4) || !slow.iter().all(|h| h.is_finished()) {
        if t0.elapsed() > Duration::from_secs(45) {
            break;
        }
        let q = Instant::now();
        let ok = https.get(
            &orthanc,
            "/system",
            &[JSON_FETCH[0], JSON_FETCH[1], ("Cookie", &cookie)],
        );
        assert_eq!(ok.status, 200, "{}", ok.describe());
        assert!(
            q.elapsed() < Duration::from_secs(5),
            "a request took {:?} beside the slow clients",
            q.elapsed()
        );
        served += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        served >= 3,
        "other requests were served meanwhile: {served}"
    );
    for h in slow {
        let cut = h
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("slowloris: {e}"));
        eprintln!("slowloris client cut after {cut:?}");
        assert!(cut < Duration::from_secs(30), "cut after {cut:?}");
    }
    // Nothing secret in the audit log: no code, no cookie, no query string.
    let log: String = web.w.d.audit().iter().map(Value::to_string).collect();
    let code_value = oidc::query_param(&code.callback, "code").unwrap();
    assert!(
        !log.contains(&code_value),
        "a sign-in code in the audit log"
    );
    let cookie_value = cookie.split_once('=').unwrap().1;
    assert!(
        !log.contains(cookie_value),
        "an app cookie in the audit log"
    );
    assert!(
        !log.contains("/whoever?"),
        "a query string in the audit log"
    );
    let gateway = web.w.d.gateway.as_mut().unwrap();
    assert!(
        gateway.is_running(),
        "the gateway died: {}",
        gateway.log_text()
    );
    eprintln!("[{:?}] slowloris cut", t.elapsed());

    // A WebSocket through the proxy: echoed both ways, and closed at once by the sign-out of
    // its session's sign-in.
    let mut ws = https.connect(&echo_host).unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        ws,
        "GET /ws HTTP/1.1\r\nHost: {echo_host}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nCookie: {echo_cookie}\r\n\r\n",
        https.addr.port()
    )
    .unwrap();
    ws.flush().unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        ws.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!(
            "sec-websocket-accept: {}",
            websocket_accept(key).to_ascii_lowercase()
        )),
        "{head}"
    );
    ws.write_all(&frame(0x1, b"hello through postern", true))
        .unwrap();
    ws.flush().unwrap();
    let (op, echoed) = read_frame(&mut ws).unwrap();
    assert_eq!(
        (op, echoed.as_slice()),
        (0x1, &b"hello through postern"[..])
    );
    // Sign out from the echo app's sign-out page (its CSRF token, same-origin).
    let page = https.get(&echo_host, "/.postern/logout", &[("Cookie", &echo_cookie)]);
    let text = String::from_utf8_lossy(&page.body).into_owned();
    let csrf = text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the sign-out page: {text}"))
        .to_owned();
    let out = https.request(
        &echo_host,
        "POST",
        "/.postern/logout",
        &[
            ("Cookie", &echo_cookie),
            ("Sec-Fetch-Site", "same-origin"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={csrf}").as_bytes(),
    );
    assert_eq!(out.status, 200, "{}", out.describe());
    let closed_at = Instant::now();
    let gone = loop {
        match read_frame(&mut ws) {
            Ok((0x8, _)) | Err(_) => break true,
            Ok(_) if closed_at.elapsed() < Duration::from_secs(10) => continue,
            Ok(_) => break false,
        }
    };
    assert!(gone, "the WebSocket outlived its sign-in");
    assert!(
        closed_at.elapsed() < Duration::from_secs(5),
        "the WebSocket closed only after {:?}",
        closed_at.elapsed()
    );
    let ws_event = web
        .w
        .d
        .wait_event("web.request", |e| e["http"]["status"] == 101);
    assert_eq!(ws_event["http"]["path"], "/ws", "{ws_event}");
    assert!(
        ws_event["http"]["bytes_up"].as_u64().unwrap() > 0,
        "{ws_event}"
    );
    eprintln!(
        "[{:?}] WebSocket echoed, then closed by sign-out; done",
        t.elapsed()
    );
    assert!(
        deviations.is_empty(),
        "departures from the contract: {deviations:#?}"
    );
}
