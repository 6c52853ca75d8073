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
    /// The network namespace it runs in (None: the test's own).
    pub netns: Option<String>,
}

impl Orthanc {
    /// Starts Orthanc in `dir` and waits until `GET /system` answers.
    pub fn start(dir: &Path) -> Orthanc {
        Orthanc::start_in(dir, None)
    }

    /// Starts Orthanc in `dir` inside network namespace `netns` (None: the test's own), e.g.
    /// the link emulator's cloud side, and waits until `GET /system` answers there.
    pub fn start_in(dir: &Path, netns: Option<&str>) -> Orthanc {
        Orthanc::launch(dir, netns, false)
    }

    /// Starts Orthanc in `dir` as a web PACS: Orthanc Explorer (its built-in web interface at
    /// `/app/explorer.html`) and Debian's DICOMweb plugin (`orthanc-dicomweb`) at
    /// `/dicom-web/` (QIDO-RS, WADO-RS, STOW-RS; WADO-URI at `/wado`). Waits until both the
    /// REST API and `GET /dicom-web/studies` answer.
    pub fn start_web(dir: &Path) -> Orthanc {
        let o = Orthanc::launch(dir, None, true);
        wait_for("Orthanc's DICOMweb plugin", Duration::from_secs(10), || {
            o.rest("/dicom-web/studies")
                .filter(|b| b.trim_start().starts_with('['))
        });
        o
    }

    fn launch(dir: &Path, netns: Option<&str>, dicomweb: bool) -> Orthanc {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let http_port = free_port();
        let dicom_port = free_port();
        let mut config = serde_json::json!({
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
        if dicomweb {
            let plugin = dicomweb_plugin();
            config["Plugins"] = serde_json::json!([plugin]);
            config["DicomWeb"] = serde_json::json!({"Enable": true, "Root": "/dicom-web/"});
        }
        let cfg = dir.join("orthanc.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut cmd = match netns {
            Some(ns) => crate::wan::netns_exec(ns, "Orthanc"),
            None => Command::new("Orthanc"),
        };
        let proc = Proc::spawn("orthanc", cmd.arg(&cfg), dir.join("orthanc.log"));
        let mut o = Orthanc {
            proc,
            http_port,
            dicom_port,
            dir: dir.to_owned(),
            netns: netns.map(str::to_owned),
        };
        wait_for("Orthanc /system", Duration::from_secs(30), || {
            assert!(o.proc.is_running(), "Orthanc exited: {}", o.proc.log_text());
            o.rest("/system").filter(|b| b.contains("DicomAet"))
        });
        o
    }

    /// `GET path` on Orthanc's REST API (in its namespace); Some(body) on a 200.
    pub fn rest(&self, path: &str) -> Option<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.http_port));
        match &self.netns {
            Some(ns) => crate::wan::in_netns(ns, || http_get(addr, path)),
            None => http_get(addr, path),
        }
    }

    pub fn dicom_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dicom_port))
    }

    /// Number of instances stored (REST API, bypassing the tunnel).
    pub fn instance_count(&self) -> usize {
        let body = self.rest("/instances").unwrap_or_default();
        serde_json::from_str::<Vec<String>>(&body)
            .map(|v| v.len())
            .unwrap_or(0)
    }
}

/// Where Debian's `orthanc-dicomweb` package puts the DICOMweb plugin (tests fail with what to
/// install if it is missing).
pub const DICOMWEB_PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

/// The DICOMweb plugin's path; panics with the package to install if it is missing.
pub fn dicomweb_plugin() -> PathBuf {
    let p = PathBuf::from(DICOMWEB_PLUGIN);
    assert!(
        p.exists(),
        "{DICOMWEB_PLUGIN} is missing: install orthanc-dicomweb (scripts/test.sh does)"
    );
    p
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

/// The value of `tag` (e.g. `0020,000e`) in `file`, as dcmdump prints it between brackets.
pub fn dicom_tag(file: &Path, tag: &str) -> String {
    let (ok, out, err) = run(Command::new("dcmdump").args(["+P", tag]).arg(file));
    assert!(ok, "dcmdump {tag} {}: {err}", file.display());
    out.split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no {tag} in {}: {out}", file.display()))
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

/// `tool`'s usual arguments (our AE titles, 20 s connect and ACSE timeouts, DIMSE timeout
/// `dimse_timeout` seconds), then `args`, the peer and `files`, on `cmd` (a
/// `Command::new(tool)`, or one under `ip netns exec`).
fn dcmtk_on(
    mut cmd: Command,
    addr: SocketAddr,
    dimse_timeout: u32,
    args: &[&str],
    files: &[PathBuf],
) -> Command {
    cmd.args(["-aet", VIEWER_AET, "-aec", ORTHANC_AET])
        .args(["-to", "20", "-ta", "20", "-td", &dimse_timeout.to_string()])
        .args(args)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files);
    cmd
}

/// C-STORE of `files` in one association, by `storescu` run as `cmd` (e.g.
/// `wan.cloud("storescu")` to load a PACS in the link emulator's cloud namespace).
pub fn storescu_all(cmd: Command, addr: SocketAddr, files: &[PathBuf]) -> (bool, String, String) {
    run(&mut dcmtk_on(cmd, addr, 60, &[], files))
}

/// A `getscu` C-GET of study `study_uid` into `out`, verbose, not started: `cmd` is
/// `Command::new("getscu")` or one under `ip netns exec`; the test spawns it and watches `out`
/// fill while it runs.
pub fn getscu_command(
    cmd: Command,
    addr: SocketAddr,
    study_uid: &str,
    out: &Path,
    dimse_timeout: u32,
) -> Command {
    std::fs::create_dir_all(out).unwrap();
    let uid = format!("StudyInstanceUID={study_uid}");
    dcmtk_on(
        cmd,
        addr,
        dimse_timeout,
        &[
            "-v",
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

/// A generated study: one series of `files.len()` single-frame images.
pub struct LargeStudy {
    pub study_uid: String,
    /// The instances' files, in instance-number order.
    pub files: Vec<PathBuf>,
    /// Their SOP instance UIDs, in the same order.
    pub instance_uids: Vec<String>,
    /// Pixel data bytes over all instances.
    pub pixel_bytes: u64,
    /// File bytes over all instances.
    pub file_bytes: u64,
}

/// Writes a study of `instances` Secondary Capture images, each `rows`×`cols` 16-bit
/// MONOCHROME2 with pseudo-random pixels, into `dir` (`IMG0001.dcm`, …): Part 10 files,
/// Explicit VR Little Endian. Deterministic: the same `seed` gives the same bytes (UIDs
/// `1.2.3.14.SEED…` included), so a failure can be reproduced and a retrieved file compared.
///
/// The encoding is the canonical one dcmtk writes (even-length values, UIs padded with NUL and
/// text with a space, defined lengths, no group lengths in the data set), so dcmtk tools that
/// re-encode the data set on the way (storescu, getscu) write back the same bytes. Written
/// directly rather than through dump2dcm: 200 MB takes about a second instead of a raw pixel
/// file per image plus a process each.
pub fn make_large_study(
    dir: &Path,
    patient_id: &str,
    instances: u32,
    rows: u16,
    cols: u16,
    seed: u64,
) -> LargeStudy {
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    std::fs::create_dir_all(dir).unwrap();
    let study_uid = format!("1.2.3.14.{seed}");
    let series_uid = format!("{study_uid}.1");
    let pixel_len = usize::from(rows) * usize::from(cols) * 2;
    let mut study = LargeStudy {
        study_uid: study_uid.clone(),
        files: Vec::new(),
        instance_uids: Vec::new(),
        pixel_bytes: 0,
        file_bytes: 0,
    };
    let mut pixels = vec![0u8; pixel_len];
    for n in 1..=instances {
        let sop_uid = format!("{series_uid}.{n}");
        let mut meta = Vec::new();
        element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
        element(&mut meta, 0x0002, 0x0002, b"UI", SC.as_bytes());
        element(&mut meta, 0x0002, 0x0003, b"UI", sop_uid.as_bytes());
        element(&mut meta, 0x0002, 0x0010, b"UI", EXPLICIT_LE.as_bytes());
        element(&mut meta, 0x0002, 0x0012, b"UI", b"1.2.3.14.0.1");
        element(&mut meta, 0x0002, 0x0013, b"SH", b"POSTERN_E2E");
        let mut head = vec![0u8; 128];
        head.extend_from_slice(b"DICM");
        element(
            &mut head,
            0x0002,
            0x0000,
            b"UL",
            &(meta.len() as u32).to_le_bytes(),
        );
        head.extend_from_slice(&meta);
        let t = |v: &str| v.as_bytes().to_vec();
        let us = |v: u16| v.to_le_bytes().to_vec();
        // In ascending tag order, as a data set must be.
        let elements: [(u16, u16, &[u8; 2], Vec<u8>); 22] = [
            (0x0008, 0x0016, b"UI", t(SC)),
            (0x0008, 0x0018, b"UI", t(&sop_uid)),
            (0x0008, 0x0020, b"DA", t("20261125")),
            (0x0008, 0x0030, b"TM", t("101500")),
            (0x0008, 0x0050, b"SH", t(&format!("ACC{seed}"))),
            (0x0008, 0x0060, b"CS", t("OT")),
            (0x0008, 0x1030, b"LO", t("Postern link test study")),
            (0x0010, 0x0010, b"PN", t("Link^Test")),
            (0x0010, 0x0020, b"LO", t(patient_id)),
            (0x0020, 0x000d, b"UI", t(&study_uid)),
            (0x0020, 0x000e, b"UI", t(&series_uid)),
            (0x0020, 0x0010, b"SH", t("LINK1")),
            (0x0020, 0x0011, b"IS", t("1")),
            (0x0020, 0x0013, b"IS", t(&n.to_string())),
            (0x0028, 0x0002, b"US", us(1)),
            (0x0028, 0x0004, b"CS", t("MONOCHROME2")),
            (0x0028, 0x0010, b"US", us(rows)),
            (0x0028, 0x0011, b"US", us(cols)),
            (0x0028, 0x0100, b"US", us(16)),
            (0x0028, 0x0101, b"US", us(16)),
            (0x0028, 0x0102, b"US", us(15)),
            (0x0028, 0x0103, b"US", us(0)),
        ];
        let mut ds = Vec::new();
        for (g, e, vr, v) in &elements {
            element(&mut ds, *g, *e, vr, v);
        }
        // SplitMix64, one stream per instance.
        let mut x = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(n));
        for chunk in pixels.chunks_mut(8) {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        // (7FE0,0010) OW: the header here, the value straight from `pixels`.
        element_header(&mut ds, 0x7fe0, 0x0010, b"OW", pixel_len as u32);
        let path = dir.join(format!("IMG{n:04}.dcm"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        f.write_all(&head).unwrap();
        f.write_all(&ds).unwrap();
        f.write_all(&pixels).unwrap();
        f.flush().unwrap();
        study.pixel_bytes += pixel_len as u64;
        study.file_bytes += (head.len() + ds.len() + pixel_len) as u64;
        study.files.push(path);
        study.instance_uids.push(sop_uid);
    }
    study
}

/// Appends an Explicit VR Little Endian element, its value padded to even length (NUL for UI,
/// a space for text VRs, as DICOM says).
fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let pad = value.len() % 2;
    element_header(out, group, elem, vr, (value.len() + pad) as u32);
    out.extend_from_slice(value);
    if pad == 1 {
        out.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
}

fn element_header(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], len: u32) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

/// Where the data set starts in a Part 10 file: after the 128-byte preamble, `DICM` and the
/// File Meta Information group, whose length (0002,0000) gives. None if `file` is not Part 10.
pub fn dataset_offset(file: &[u8]) -> Option<usize> {
    let rest = file.get(128..)?;
    if rest.get(..4)? != b"DICM" || rest.get(4..10)? != [2, 0, 0, 0, b'U', b'L'] {
        return None;
    }
    let len = u32::from_le_bytes(rest.get(12..16)?.try_into().ok()?);
    let off = 128 + 16 + usize::try_from(len).ok()?;
    (off <= file.len()).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator's files are deterministic Part 10 files that dcmtk reads element by
    /// element, and [`dataset_offset`] finds where their data set starts.
    #[test]
    fn large_study_files_are_deterministic_part10() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = make_large_study(a.path(), "PID-UNIT", 2, 4, 6, 7);
        let t = make_large_study(b.path(), "PID-UNIT", 2, 4, 6, 7);
        assert_eq!(s.files.len(), 2);
        assert_eq!(s.pixel_bytes, 2 * 4 * 6 * 2);
        assert_eq!(s.study_uid, "1.2.3.14.7");
        assert_eq!(s.instance_uids, ["1.2.3.14.7.1.1", "1.2.3.14.7.1.2"]);
        let first = std::fs::read(&s.files[0]).unwrap();
        assert_eq!(first, std::fs::read(&t.files[0]).unwrap());
        assert_ne!(
            first[first.len() - 48..],
            std::fs::read(&s.files[1]).unwrap()[first.len() - 48..],
            "two images with the same pixels"
        );
        let off = dataset_offset(&first).unwrap();
        // The data set opens with (0008,0016) UI.
        assert_eq!(first[off..off + 6], [8, 0, 0x16, 0, b'U', b'I']);
        assert_eq!(dataset_offset(b"not dicom"), None);

        let (ok, out, err) = run(Command::new("dcmdump").arg(&s.files[1]));
        assert!(ok, "dcmdump: {out}{err}");
        for want in [
            "(0002,0010) UI =LittleEndianExplicit",
            "(0010,0020) LO [PID-UNIT]",
            "(0020,0013) IS [2]",
            "(0028,0011) US 6",
            "(7fe0,0010) OW",
        ] {
            assert!(out.contains(want), "no {want} in {out}");
        }
    }
}
