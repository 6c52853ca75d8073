//! Real DICOM peers: an Orthanc PACS per test and dcmtk command-line tools.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, run, wait_for, Proc};

/// The AE title our dcmtk "viewer" uses; Orthanc knows it as a modality.
pub const VIEWER_AET: &str = "VIEWER";
pub const ORTHANC_AET: &str = "ORTHANC";

/// An Orthanc process with its own storage, HTTP and DICOM ports.
pub struct Orthanc {
    pub proc: Proc,
    pub http_port: u16,
    pub dicom_port: u16,
    pub dir: PathBuf,
}

impl Orthanc {
    /// Starts Orthanc in `dir` and waits until `GET /system` answers.
    pub fn start(dir: &Path) -> Orthanc {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let http_port = free_port();
        let dicom_port = free_port();
        let config = serde_json::json!({
            "Name": "postern-e2e",
            "StorageDirectory": dir.join("db"),
            "IndexDirectory": dir.join("db"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": ORTHANC_AET,
            "DicomCheckCalledAet": true,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomModalities": { "viewer": [VIEWER_AET, "127.0.0.1", 4242] },
            "Plugins": [],
        });
        let cfg = dir.join("orthanc.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let proc = Proc::spawn(
            "orthanc",
            Command::new("Orthanc").arg(&cfg),
            dir.join("orthanc.log"),
        );
        let mut o = Orthanc {
            proc,
            http_port,
            dicom_port,
            dir: dir.to_owned(),
        };
        wait_for("Orthanc /system", Duration::from_secs(30), || {
            assert!(o.proc.is_running(), "Orthanc exited: {}", o.proc.log_text());
            http_get(SocketAddr::from(([127, 0, 0, 1], http_port)), "/system")
                .filter(|b| b.contains("DicomAet"))
        });
        o
    }

    pub fn dicom_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dicom_port))
    }

    /// Number of instances stored (REST API, bypassing the tunnel).
    pub fn instance_count(&self) -> usize {
        let body = http_get(
            SocketAddr::from(([127, 0, 0, 1], self.http_port)),
            "/instances",
        )
        .unwrap_or_default();
        serde_json::from_str::<Vec<String>>(&body)
            .map(|v| v.len())
            .unwrap_or(0)
    }
}

/// Minimal HTTP/1.0 GET; Some(body) on a 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")).then(|| body.to_owned())
}

/// A test DICOM file made with dump2dcm (fresh UIDs): a 512×512 8-bit secondary capture
/// with random pixels. Returns (path, StudyInstanceUID).
pub fn make_study(dir: &Path, patient_id: &str) -> (PathBuf, String) {
    let pixels: Vec<u8> = (0..512 * 512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("pixels.raw"), pixels).unwrap();
    let dump = format!(
        "(0008,0016) UI =SecondaryCaptureImageStorage\n(0008,0018) UI [1.2.3.4]\n(0008,0020) DA [20261125]\n(0008,0060) CS [OT]\n(0010,0010) PN [Test^Patient]\n(0010,0020) LO [{patient_id}]\n(0020,000d) UI [1.2.3.5]\n(0020,000e) UI [1.2.3.6]\n(0020,0010) SH [STUDY1]\n(0028,0002) US 1\n(0028,0004) CS [MONOCHROME2]\n(0028,0010) US 512\n(0028,0011) US 512\n(0028,0100) US 8\n(0028,0101) US 8\n(0028,0102) US 7\n(0028,0103) US 0\n(7fe0,0010) OB ={}\n",
        dir.join("pixels.raw").display()
    );
    std::fs::write(dir.join("study.dump"), dump).unwrap();
    let file = dir.join("study.dcm");
    let (ok, out, err) = run(Command::new("dump2dcm")
        .args(["+Ug", "+Uo", "+te"])
        .arg(dir.join("study.dump"))
        .arg(&file));
    assert!(ok, "dump2dcm failed: {out}{err}");
    let (ok, out, err) = run(Command::new("dcmdump").args(["+P", "0020,000d"]).arg(&file));
    assert!(ok, "dcmdump failed: {err}");
    let uid = out
        .split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap()
        .trim()
        .to_owned();
    assert!(uid.starts_with("1.2."), "unexpected study UID {uid}");
    (file, uid)
}

fn dcmtk(tool: &str, addr: SocketAddr, args: &[&str], files: &[&str]) -> (bool, String, String) {
    run(Command::new(tool)
        .args([
            "-aet",
            VIEWER_AET,
            "-aec",
            ORTHANC_AET,
            "-to",
            "20",
            "-ta",
            "20",
            "-td",
            "20",
        ])
        .args(args)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files))
}

/// C-ECHO.
pub fn echoscu(addr: SocketAddr) -> (bool, String, String) {
    dcmtk("echoscu", addr, &[], &[])
}

/// C-STORE of `file`.
pub fn storescu(addr: SocketAddr, file: &Path) -> (bool, String, String) {
    dcmtk("storescu", addr, &[], &[file.to_str().unwrap()])
}

/// C-FIND at study level by PatientID; returns the output (with `-v`, responses are printed).
pub fn findscu(addr: SocketAddr, patient_id: &str) -> (bool, String, String) {
    let pid = format!("PatientID={patient_id}");
    dcmtk(
        "findscu",
        addr,
        &[
            "-v",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &pid,
            "-k",
            "StudyInstanceUID",
        ],
        &[],
    )
}

/// C-GET of a study into `out`.
pub fn getscu(addr: SocketAddr, study_uid: &str, out: &Path) -> (bool, String, String) {
    std::fs::create_dir_all(out).unwrap();
    let uid = format!("StudyInstanceUID={study_uid}");
    dcmtk(
        "getscu",
        addr,
        &[
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &uid,
            "-od",
            out.to_str().unwrap(),
        ],
        &[],
    )
}
