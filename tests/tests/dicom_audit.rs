//! DICOM-aware sessions end to end (issue #17): the real gateway, connector and client, a real
//! Orthanc PACS and real dcmtk tools. The policy binds AE titles to people and services to
//! rules; the connector enforces both with real A-ASSOCIATE-RJ and A-ABORT answers that dcmtk
//! reports, and what it saw (associations, queries, retrieves, stores, refusals) becomes the
//! session's `dicom.*` audit events, which `postern-audit access` searches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use postern_e2e::dicom::{dicom_tag, make_study, storescu, Orthanc, ORTHANC_AET, VIEWER_AET};
use postern_e2e::{run, wait_for, Deployment};
use serde_json::Value;

fn policy(dicom_port: u16) -> String {
    format!(
        r#"
[dicom]
ae_titles = {{ "alice@truro.nhs.uk" = ["{VIEWER_AET}"] }}

[[endpoints]]
name = "pacs-dicom"
site = "truro"
host = "127.0.0.1"
port = {dicom_port}
protocol = "dicom"
called_ae = "{ORTHANC_AET}"

[[rules]]
id = "radiologists-read"
effect = "allow"
groups = ["radiologists"]
endpoints = ["pacs-dicom"]
calling_ae = ["{{user.ae}}"]
max_session = "1h"

[[rules]]
id = "pacs-admin"
effect = "allow"
groups = ["pacs-admins"]
endpoints = ["pacs-dicom"]
calling_ae = ["{VIEWER_AET}"]
dicom_services = ["echo", "find", "get", "move", "store"]
max_session = "1h"
"#
    )
}

/// `tool` as `calling` AE title calling `called`, against `addr`: options `args`, then the
/// peer, then `files` (storescu's).
fn dcmtk_as(
    tool: &str,
    calling: &str,
    called: &str,
    addr: SocketAddr,
    args: &[&str],
    files: &[&Path],
) -> (bool, String) {
    let (ok, out, err) = run(Command::new(tool)
        .args(["-aet", calling, "-aec", called])
        .args(["-to", "20", "-ta", "20", "-td", "20"])
        .args(args)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files));
    (ok, format!("{out}{err}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| s(x).to_owned()).collect())
        .unwrap_or_default()
}

/// A study made with dcmtk in its own directory: (file, study UID, SOP instance UID).
fn study(dir: &Path, patient: &str) -> (std::path::PathBuf, String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let (file, study_uid) = make_study(dir, patient);
    let sop = dicom_tag(&file, "0008,0018");
    (file, study_uid, sop)
}

#[test]
fn ae_titles_and_services_are_enforced_on_the_connector_and_every_study_is_audited() {
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let (file, study_uid, sop_uid) = study(&work.path().join("s1"), "PID-GOV-1");
    let (ok, out, err) = storescu(orthanc.dicom_addr(), &file);
    assert!(ok, "loading Orthanc: {out}{err}");

    let d = Deployment::start(
        &policy(orthanc.dicom_port),
        &[("127.0.0.1/32", orthanc.dicom_port.to_string())],
    );
    let token = d.mint("alice@truro.nhs.uk", "radiologists", "1h");
    let (client, local) = d.connect("pacs-dicom", &token).unwrap();

    // Alice's own AE title: verification, query and retrieve pass.
    let (ok, out) = dcmtk_as("echoscu", VIEWER_AET, ORTHANC_AET, local, &[], &[]);
    assert!(ok, "C-ECHO as {VIEWER_AET}: {out}");
    let (ok, out) = dcmtk_as(
        "findscu",
        VIEWER_AET,
        ORTHANC_AET,
        local,
        &[
            "-v",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientID=PID-GOV-1",
            "-k",
            "StudyInstanceUID",
        ],
        &[],
    );
    assert!(ok && out.contains(&study_uid), "C-FIND: {out}");
    let got = work.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    let key = format!("StudyInstanceUID={study_uid}");
    let (ok, out) = dcmtk_as(
        "getscu",
        VIEWER_AET,
        ORTHANC_AET,
        local,
        &[
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &key,
            "-od",
            got.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "C-GET: {out}");
    let retrieved: Vec<_> = std::fs::read_dir(&got)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(retrieved.len(), 1, "{retrieved:?}");
    let retrieved_study = dicom_tag(&retrieved[0], "0020,000d");
    let retrieved_sop = dicom_tag(&retrieved[0], "0008,0018");
    assert_eq!((&retrieved_study, &retrieved_sop), (&study_uid, &sop_uid));

    // Someone else's AE title: a real A-ASSOCIATE-RJ, which dcmtk reports as such.
    let (ok, out) = dcmtk_as("echoscu", "EVIL", ORTHANC_AET, local, &[], &[]);
    assert!(!ok, "an unknown calling AE title was accepted: {out}");
    assert!(
        out.contains("Association Rejected") && out.contains("Calling AE Title Not Recognized"),
        "{out}"
    );
    // The wrong PACS title: rejected with reason 7.
    let (ok, out) = dcmtk_as("echoscu", VIEWER_AET, "OTHERPACS", local, &[], &[]);
    assert!(!ok, "a wrong called AE title was accepted: {out}");
    assert!(
        out.contains("Association Rejected") && out.contains("Called AE Title Not Recognized"),
        "{out}"
    );
    // C-STORE from home is not in the reporters' rule: the association is aborted and the
    // PACS has nothing new.
    let (file2, _, _) = study(&work.path().join("s2"), "PID-GOV-2");
    let (ok, out) = dcmtk_as(
        "storescu",
        VIEWER_AET,
        ORTHANC_AET,
        local,
        &["-v"],
        &[&file2],
    );
    assert!(!ok, "C-STORE was allowed: {out}");
    assert_eq!(
        orthanc.instance_count(),
        1,
        "the refused instance reached the PACS"
    );

    // The audit: every refusal with its rule, reason code and the answer sent.
    let refused = wait_for(
        "three dicom.refused events",
        Duration::from_secs(20),
        || {
            let e = d.events("dicom.refused");
            (e.len() >= 3).then_some(e)
        },
    );
    let by_code = |code: &str| -> &Value {
        refused
            .iter()
            .find(|e| e["dicom"]["refusal"] == code)
            .unwrap_or_else(|| panic!("no dicom.refused with {code}: {refused:#?}"))
    };
    let calling = by_code("calling_ae_not_allowed");
    assert_eq!(calling["dicom"]["calling_ae"], "EVIL");
    assert_eq!(calling["user"], "alice@truro.nhs.uk");
    assert!(
        s(&calling["dicom"]["reason"]).contains("radiologists-read"),
        "{calling}"
    );
    assert!(
        s(&calling["dicom"]["answer"]).starts_with("A-ASSOCIATE-RJ"),
        "{calling}"
    );
    assert!(
        s(&calling["dicom"]["answer"]).contains("reason 3"),
        "{calling}"
    );
    let called = by_code("called_ae_not_recognized");
    assert_eq!(called["dicom"]["called_ae"], "OTHERPACS");
    assert!(
        s(&called["dicom"]["answer"]).contains("reason 7"),
        "{called}"
    );
    let store = by_code("service_not_allowed");
    assert_eq!(store["dicom"]["service"], "store");
    assert!(
        s(&store["dicom"]["answer"]).starts_with("A-ABORT"),
        "{store}"
    );
    assert!(s(&store["detail"]).contains("radiologists-read"), "{store}");

    // The clinician is told why, in the policy's words, not only "association rejected".
    let told = wait_for(
        "the refusal notice on the client",
        Duration::from_secs(10),
        || {
            let log = client.log_text();
            log.contains("the PACS connection was refused")
                .then_some(log)
        },
    );
    assert!(
        told.contains("pacs-dicom: the PACS connection was refused: ")
            && told.contains("EVIL")
            && told.contains("radiologists-read"),
        "{told}"
    );

    // Associations, the query with its keys, the retrieve with the study dcmtk got.
    let starts = d.events("session.start");
    let assoc = d.events("dicom.association");
    assert!(assoc.len() >= 3, "{assoc:#?}");
    for a in &assoc {
        assert_eq!(a["dicom"]["calling_ae"], VIEWER_AET);
        assert_eq!(a["dicom"]["called_ae"], ORTHANC_AET);
        assert!(!strings(&a["dicom"]["sop_classes"]).is_empty(), "{a}");
        assert_eq!(a["user"], "alice@truro.nhs.uk");
        assert!(
            starts.iter().any(|st| st["session_id"] == a["session_id"]),
            "a dicom event of a session that never started: {a}"
        );
    }
    let query = wait_for("dicom.query", Duration::from_secs(10), || {
        d.events("dicom.query").into_iter().next()
    });
    assert_eq!(query["dicom"]["service"], "find");
    assert_eq!(query["dicom"]["level"], "STUDY");
    assert_eq!(query["dicom"]["patient_id"], "PID-GOV-1");
    assert_eq!(query["dicom"]["matches"], 1);
    assert!(query["objects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["kind"] == "patient" && o["id"] == "PID-GOV-1"));
    let retrieve = wait_for("dicom.retrieve", Duration::from_secs(10), || {
        d.events("dicom.retrieve").into_iter().next()
    });
    assert_eq!(retrieve["dicom"]["service"], "get");
    assert_eq!(
        strings(&retrieve["dicom"]["study_uids"]),
        [study_uid.as_str()]
    );
    assert_eq!(retrieve["dicom"]["instances"], 1);
    assert_eq!(
        strings(&retrieve["dicom"]["instance_uids"]),
        [sop_uid.as_str()]
    );
    assert_eq!(retrieve["dicom"]["status"], "0000");

    // "Who opened this study?" — the auditor's question, answered from the log.
    let out = d.audit_cli(&["access", "--study", &study_uid]);
    assert!(out.contains("alice@truro.nhs.uk"), "{out}");

    // The administrator's rule allows C-STORE: stored, and audited as a store.
    let admin = d.mint("sam@truro.nhs.uk", "pacs-admins", "1h");
    let (_admin_client, admin_local) = d.connect("pacs-dicom", &admin).unwrap();
    let (ok, out) = dcmtk_as(
        "storescu",
        VIEWER_AET,
        ORTHANC_AET,
        admin_local,
        &["-v"],
        &[&file2],
    );
    assert!(ok, "the administrator's C-STORE: {out}");
    assert_eq!(orthanc.instance_count(), 2);
    let stored = wait_for("dicom.store", Duration::from_secs(10), || {
        d.events("dicom.store").into_iter().next()
    });
    assert_eq!(stored["user"], "sam@truro.nhs.uk");
    assert_eq!(stored["dicom"]["instances"], 1);

    let (ok, out) = d.verify_audit();
    assert!(ok, "the audit log does not verify: {out}");

    // The trust's audit repository gets the same log as IHE ATNA messages, each valid against
    // the PS3.15 A.5.1 schema (jing), the retrieve as "DICOM Instances Transferred" naming the
    // study; and as FHIR AuditEvents naming it too.
    let atna = work.path().join("audit.atna");
    d.audit_cli(&[
        "export",
        "--format",
        "atna",
        "--out",
        atna.to_str().unwrap(),
    ]);
    let messages: Vec<String> = std::fs::read_to_string(&atna)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    assert!(messages.len() >= 10, "{messages:#?}");
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../audit/tests/fixtures/atna/audit-message.rnc"
    );
    let files: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let f = work.path().join(format!("atna-{i}.xml"));
            std::fs::write(&f, m).unwrap();
            f
        })
        .collect();
    let (ok, out, err) = run(Command::new("jing").arg("-c").arg(schema).args(&files));
    assert!(
        ok,
        "ATNA messages from a real log fail the schema: {out}{err}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("csd-code=\"110104\"") && m.contains(&study_uid)),
        "no DICOM Instances Transferred message naming {study_uid}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("csd-code=\"110113\"") && m.contains("EVIL")),
        "no Security Alert for the refused AE title"
    );
    let resources = d.audit_cli_json(&["export", "--format", "fhir"]);
    assert!(resources.iter().all(|r| r["resourceType"] == "AuditEvent"));
    assert!(
        resources.iter().any(|r| r.to_string().contains(&study_uid)),
        "no AuditEvent names study {study_uid}"
    );
}
