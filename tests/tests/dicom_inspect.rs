//! DICOM inspection on the connector (issue #17) against real peers: dcmtk's tools on one
//! side, an Orthanc PACS on the other, and between them a loopback listener in this process
//! whose connections go through `postern_connector::dicom::relay_inspected` — the relay the
//! connector runs for a tunnel whose `CONNECT` carries a DICOM permit.
//!
//! Run alone with `cargo test -p postern-e2e --test dicom_inspect`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_connector::dicom::relay_inspected;
use postern_e2e::dicom::{
    dicom_tag, echoscu, findscu, getscu, make_study, storescu, Orthanc, ORTHANC_AET,
};
use postern_e2e::{run, wait_for};
use postern_net::relay::Counters;
use postern_proto::dicom::{DicomPermit, DicomRecord, DicomService};

/// A loopback listener whose connections are relayed to `upstream` by the inspecting relay
/// with `permit`; every record any of them sent is kept.
struct Inspector {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<DicomRecord>>>,
    /// Bytes relayed by connections that ended, (to the PACS, from the PACS).
    bytes: Arc<Mutex<(u64, u64)>>,
    _rt: tokio::runtime::Runtime,
}

impl Inspector {
    fn start(upstream: SocketAddr, permit: DicomPermit) -> Inspector {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let bytes = Arc::new(Mutex::new((0, 0)));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (recs, by) = (records.clone(), bytes.clone());
        rt.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let permit = permit.clone();
                let (recs, by) = (recs.clone(), by.clone());
                tokio::spawn(async move {
                    let pacs = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
                    let collector = tokio::spawn(async move {
                        while let Some(r) = rx.recv().await {
                            recs.lock().unwrap().push(r);
                        }
                    });
                    let counters = Arc::new(Counters::default());
                    relay_inspected(client, pacs, &permit, tx, counters.clone()).await;
                    collector.await.unwrap();
                    let mut b = by.lock().unwrap();
                    b.0 += counters.a_to_b();
                    b.1 += counters.b_to_a();
                });
            }
        });
        Inspector {
            addr,
            records,
            bytes,
            _rt: rt,
        }
    }

    /// The records of `event` once there are at least `n`.
    fn wait(&self, event: &str, n: usize) -> Vec<DicomRecord> {
        wait_for(
            &format!("{n} {event} record(s)"),
            Duration::from_secs(20),
            || {
                let all = self.records.lock().unwrap();
                let got: Vec<DicomRecord> =
                    all.iter().filter(|r| r.event == event).cloned().collect();
                (got.len() >= n).then_some(got)
            },
        )
    }

    fn all(&self) -> Vec<DicomRecord> {
        self.records.lock().unwrap().clone()
    }
}

fn permit(services: &[DicomService]) -> DicomPermit {
    DicomPermit {
        rule: "reporters-pacs".into(),
        calling_ae: vec!["VIEWER".into(), "RAD_*".into()],
        called_ae: Some(ORTHANC_AET.into()),
        services: services.to_vec(),
    }
}

/// A dcmtk tool with our usual timeouts and the given AE titles.
fn dcmtk_as(tool: &str, calling: &str, called: &str, addr: SocketAddr) -> (bool, String) {
    let (ok, out, err) = run(Command::new(tool).args([
        "-aet",
        calling,
        "-aec",
        called,
        "-to",
        "20",
        "-ta",
        "20",
        "-td",
        "20",
        &addr.ip().to_string(),
        &addr.port().to_string(),
    ]));
    (ok, format!("{out}{err}"))
}

/// Loads `file` into Orthanc directly (not through the inspector).
fn load(orthanc: &Orthanc, file: &Path) {
    let (ok, out, err) = storescu(orthanc.dicom_addr(), file);
    assert!(ok, "loading Orthanc failed: {out}{err}");
}

#[test]
fn a_permitted_viewer_echoes_finds_and_gets_and_the_records_name_what_it_retrieved() {
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let (file, study_uid) = make_study(work.path(), "PID-INSPECT-1");
    load(&orthanc, &file);
    let insp = Inspector::start(orthanc.dicom_addr(), permit(&DicomService::DEFAULT));

    let (ok, out, err) = echoscu(insp.addr);
    assert!(ok, "echoscu through the inspector failed: {out}{err}");
    let (ok, out, err) = findscu(insp.addr, "PID-INSPECT-1");
    assert!(ok, "findscu failed: {out}{err}");
    assert!(
        format!("{out}{err}").contains(&study_uid),
        "findscu did not find {study_uid}: {out}{err}"
    );
    let got_dir = work.path().join("got");
    let (ok, out, err) = getscu(insp.addr, &study_uid, &got_dir);
    assert!(ok, "getscu failed: {out}{err}");

    // What getscu wrote: its files' study and instance UIDs.
    let files: Vec<_> = std::fs::read_dir(&got_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "getscu wrote {files:?}");
    let got_study = dicom_tag(&files[0], "0020,000d");
    let got_instance = dicom_tag(&files[0], "0008,0018");
    assert_eq!(got_study, study_uid);

    // Three associations (echo, find, get), each recorded with its accepted SOP classes.
    let assocs = insp.wait("association", 3);
    for a in &assocs {
        assert_eq!(
            (a.calling_ae.as_str(), a.called_ae.as_str()),
            ("VIEWER", "ORTHANC")
        );
        assert!(!a.sop_classes.is_empty(), "{a:?}");
    }
    assert!(assocs
        .iter()
        .any(|a| a.sop_classes.iter().any(|c| c == "1.2.840.10008.1.1")));

    let q = &insp.wait("query", 1)[0];
    assert_eq!(q.service.as_deref(), Some("find"));
    assert_eq!(q.level.as_deref(), Some("STUDY"));
    assert_eq!(q.patient_id.as_deref(), Some("PID-INSPECT-1"));
    assert_eq!(q.matches, Some(1), "{q:?}");
    assert_eq!(q.status.as_deref(), Some("0000"));
    assert_eq!(
        q.sop_class.as_deref(),
        Some("1.2.840.10008.5.1.4.1.2.2.1"),
        "study root FIND"
    );

    let r = &insp.wait("retrieve", 1)[0];
    assert_eq!(r.service.as_deref(), Some("get"));
    assert_eq!(r.level.as_deref(), Some("STUDY"));
    // The audit names the study getscu actually retrieved, and the instance it wrote.
    assert_eq!(r.study_uids, vec![got_study]);
    assert_eq!(r.instances, Some(files.len() as u64));
    assert_eq!(r.instance_uids, vec![got_instance]);
    assert_eq!(r.status.as_deref(), Some("0000"));

    let all = insp.all();
    assert!(
        all.iter()
            .all(|r| r.event != "refused" && r.event != "store"),
        "{all:?}"
    );
    let (up, down) = *insp.bytes.lock().unwrap();
    assert!(
        down > std::fs::metadata(&file).unwrap().len() / 2,
        "from the PACS: {down} bytes"
    );
    assert!(up > 0);
}

#[test]
fn a_calling_ae_the_permit_does_not_list_is_rejected_and_a_wrong_called_ae_too() {
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let insp = Inspector::start(orthanc.dicom_addr(), permit(&DicomService::DEFAULT));

    let (ok, out) = dcmtk_as("echoscu", "EVIL", ORTHANC_AET, insp.addr);
    assert!(!ok, "echoscu as EVIL passed: {out}");
    assert!(
        out.contains("Association Rejected") && out.contains("Calling AE Title Not Recognized"),
        "dcmtk did not report the rejection: {out}"
    );
    let r = &insp.wait("refused", 1)[0];
    assert_eq!(r.refusal.as_deref(), Some("calling_ae_not_allowed"));
    assert_eq!(r.calling_ae, "EVIL");
    assert_eq!(
        r.reason.as_deref(),
        Some(
            "calling AE title EVIL is not allowed for this user by rule 'reporters-pacs' \
             (allowed: VIEWER, RAD_*)"
        )
    );
    assert_eq!(
        r.answer.as_deref(),
        Some("A-ASSOCIATE-RJ result 1 source 1 reason 3")
    );

    // A prefix pattern admits RAD_ALICE; the wrong called AE title is rejected with reason 7.
    let (ok, out) = dcmtk_as("echoscu", "RAD_ALICE", "NOTPACS", insp.addr);
    assert!(!ok, "echoscu calling NOTPACS passed: {out}");
    assert!(
        out.contains("Called AE Title Not Recognized"),
        "dcmtk did not report the rejection: {out}"
    );
    let r = &insp.wait("refused", 2)[1];
    assert_eq!(r.refusal.as_deref(), Some("called_ae_not_recognized"));
    assert_eq!(
        r.answer.as_deref(),
        Some("A-ASSOCIATE-RJ result 1 source 1 reason 7")
    );
    assert!(r.reason.as_deref().unwrap().contains("NOTPACS"), "{r:?}");
    // Nothing was accepted.
    assert!(insp.all().iter().all(|r| r.event == "refused"));
}

#[test]
fn a_store_the_permit_does_not_allow_is_aborted_and_one_it_allows_is_recorded() {
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let (file, _) = make_study(work.path(), "PID-INSPECT-2");
    let sop_uid = dicom_tag(&file, "0008,0018");

    let reading = Inspector::start(orthanc.dicom_addr(), permit(&DicomService::DEFAULT));
    let (ok, out, err) = storescu(reading.addr, &file);
    assert!(!ok, "storescu without store passed: {out}{err}");
    assert!(
        format!("{out}{err}").contains("Peer aborted Association"),
        "storescu did not report the abort: {out}{err}"
    );
    let r = &reading.wait("refused", 1)[0];
    assert_eq!(r.refusal.as_deref(), Some("service_not_allowed"));
    assert_eq!(r.service.as_deref(), Some("store"));
    assert_eq!(r.answer.as_deref(), Some("A-ABORT source 2 reason 0"));
    assert_eq!(
        r.reason.as_deref(),
        Some(
            "C-STORE is not allowed for this user by rule 'reporters-pacs' \
             (allowed: echo, find, get, move)"
        )
    );
    // The association had been accepted (recorded), the instance never reached Orthanc.
    assert_eq!(reading.wait("association", 1).len(), 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        orthanc.instance_count(),
        0,
        "Orthanc got the refused instance"
    );
    assert!(reading.all().iter().all(|r| r.event != "store"));

    let mut services = DicomService::DEFAULT.to_vec();
    services.push(DicomService::Store);
    let sending = Inspector::start(orthanc.dicom_addr(), permit(&services));
    let (ok, out, err) = storescu(sending.addr, &file);
    assert!(ok, "storescu with store allowed failed: {out}{err}");
    assert_eq!(orthanc.instance_count(), 1);
    let s = &sending.wait("store", 1)[0];
    assert_eq!(s.instances, Some(1));
    assert_eq!(s.instance_uids, vec![sop_uid]);
    assert_eq!(s.status.as_deref(), Some("0000"));
    assert_eq!(s.calling_ae, "VIEWER");
}

#[test]
fn garbage_on_the_port_gets_an_abort_and_a_malformed_pdu_record() {
    use std::io::{Read, Write};
    let work = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&work.path().join("orthanc"));
    let insp = Inspector::start(orthanc.dicom_addr(), permit(&DicomService::DEFAULT));

    let mut s = std::net::TcpStream::connect(insp.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    // A-ABORT, source 2 (service provider), reason 0; then the connection closed.
    assert_eq!(answer, [7, 0, 0, 0, 0, 4, 0, 0, 2, 0]);
    let r = &insp.wait("refused", 1)[0];
    assert_eq!(r.refusal.as_deref(), Some("malformed_pdu"));
    assert_eq!(r.answer.as_deref(), Some("A-ABORT source 2 reason 0"));
    assert!(
        r.reason.as_deref().unwrap().contains("PDU type 0x47"),
        "{r:?}"
    );

    // A truncated A-ASSOCIATE-RQ (the header promises more than ever comes).
    let mut s = std::net::TcpStream::connect(insp.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[1, 0, 0, 0, 0, 200, 0, 1, 0, 0]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, [7, 0, 0, 0, 0, 4, 0, 0, 2, 0]);
    let r = &insp.wait("refused", 2)[1];
    assert_eq!(r.refusal.as_deref(), Some("malformed_pdu"));
    assert!(
        r.reason.as_deref().unwrap().contains("ended inside"),
        "{r:?}"
    );

    // Orthanc is unharmed: a proper association still works through the inspector.
    let (ok, out, err) = echoscu(insp.addr);
    assert!(ok, "echoscu after the garbage failed: {out}{err}");
}
