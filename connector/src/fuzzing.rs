//! Entry points for the `cargo fuzz` targets in `connector/fuzz` (not part of the connector's
//! API): each feeds outside input to the code path the connector runs on it.

use std::path::Path;
use std::sync::OnceLock;

use http::{Method, Request};

use crate::config::Config;

/// A connector configuration with a small allowlist, for the `connect_target` target.
fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let text = "state_dir = \"/var/lib/postern-connector\"\ngateways = [\"gw.example.org:8443\"]\n\n[[allow]]\ncidr = \"10.20.0.0/16\"\nports = \"104, 3389, 8000-8099\"\n\n[[allow]]\ncidr = \"fd00::/8\"\nports = \"*\"\n";
        Config::parse(text, Path::new("/etc/postern/connector.toml"))
            .unwrap_or_else(|e| panic!("fuzz fixture: connector config: {e}"))
    })
}

/// Target `connect_target`: the gateway's `CONNECT` request target as the connector reads it
/// (`link::connect_target`, `link::literal_target`) and the allowlist decision on it.
pub fn connect_target(data: &[u8]) {
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    let Ok(req) = Request::builder().method(Method::CONNECT).uri(uri).body(()) else {
        return;
    };
    let Some((host, port)) = crate::link::connect_target(&req) else {
        return;
    };
    if let Some(addr) = crate::link::literal_target(&host, port) {
        let allowed = config().allowlist.allows(addr.ip(), addr.port());
        if allowed {
            // Only what the fixture lists may pass.
            let ok = match addr.ip() {
                std::net::IpAddr::V4(v4) => {
                    let o = v4.octets();
                    o[0] == 10
                        && o[1] == 20
                        && (port == 104 || port == 3389 || (8000..=8099).contains(&port))
                }
                std::net::IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
            };
            assert!(ok, "{addr} passed the allowlist");
        }
    }
}

/// Target `link_request`: a request frame of a QUIC link ([`wire::LinkRequest`] JSON) as the
/// connector reads it (`link::request_parts`), then its `CONNECT` target.
///
/// [`wire::LinkRequest`]: postern_proto::wire::LinkRequest
pub fn link_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<postern_proto::wire::LinkRequest>(data) else {
        return;
    };
    let Ok((method, uri, headers)) = crate::link::request_parts(&req) else {
        return;
    };
    assert!(headers.len() <= req.headers.len());
    if method == Method::CONNECT {
        if let Ok(r) = Request::builder().method(method).uri(uri).body(()) {
            if let Some((host, port)) = crate::link::connect_target(&r) {
                let _ = crate::link::literal_target(&host, port);
            }
        }
    }
}

/// Target `dicom_stream`: `data` as what the clinician's side of a DICOM tunnel sends, through
/// the inspecting relay ([`crate::dicom::relay_inspected`]) to a PACS that answers its first
/// input with an A-ASSOCIATE-AC (one context, Verification, Implicit VR Little Endian) and then
/// reads to the end. Checks that the relay ends within 10 s, that a refusal names one of the
/// refusal codes, and that its record says so.
pub fn dicom_stream(data: &[u8]) {
    thread_local! {
        static RT: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok();
    }
    RT.with(|rt| {
        let Some(rt) = rt else {
            panic!("fuzz fixture: no tokio runtime");
        };
        rt.block_on(dicom_stream_async(data));
    });
}

/// The A-ASSOCIATE-AC the fuzzing PACS answers with (the inspection tests' PACS too).
pub(crate) fn dicom_ac() -> Vec<u8> {
    use dicom_ul::pdu::{
        AssociationAC, Pdu, PresentationContextResult, PresentationContextResultReason,
        UserVariableItem,
    };
    let ac = Pdu::AssociationAC(AssociationAC {
        protocol_version: 1,
        calling_ae_title: "VIEWER".into(),
        called_ae_title: "PACS".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextResult {
            id: 1,
            reason: PresentationContextResultReason::Acceptance,
            transfer_syntax: crate::dicom::pdu::IMPLICIT_VR_LE.into(),
        }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut out = Vec::new();
    if dicom_ul::pdu::write_pdu(&mut out, &ac).is_err() {
        panic!("fuzz fixture: the A-ASSOCIATE-AC does not encode");
    }
    out
}

async fn dicom_stream_async(data: &[u8]) {
    use postern_proto::dicom::{DicomPermit, DicomService};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let permit = DicomPermit {
        rule: "fuzz".into(),
        calling_ae: vec!["VIEWER".into()],
        called_ae: Some("PACS".into()),
        services: DicomService::DEFAULT.to_vec(),
    };
    let (mut client, relay_c) = tokio::io::duplex(64 * 1024);
    let (relay_p, mut pacs) = tokio::io::duplex(64 * 1024);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let counters = std::sync::Arc::new(postern_net::relay::Counters::default());
    let relay = crate::dicom::relay_inspected(relay_c, relay_p, &permit, tx, counters);
    let pacs_side = async {
        let mut buf = [0u8; 4096];
        let mut answered = false;
        while let Ok(n) = pacs.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if !std::mem::replace(&mut answered, true) {
                let _ = pacs.write_all(&dicom_ac()).await;
            }
        }
        let _ = pacs.shutdown().await;
    };
    // The first PDU (by its header's length), then the answer awaited (as a real client
    // waits for the A-ASSOCIATE-AC), then the rest.
    let first = data
        .get(2..6)
        .map(|l| 6 + u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .unwrap_or(data.len())
        .min(data.len());
    let client_side = async {
        let _ = client.write_all(&data[..first]).await;
        let mut sink = vec![0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), client.read(&mut sink))
            .await;
        let _ = client.write_all(&data[first..]).await;
        let _ = client.shutdown().await;
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
    };
    let all = async { tokio::join!(relay, pacs_side, client_side).0 };
    let Ok(summary) = tokio::time::timeout(std::time::Duration::from_secs(10), all).await else {
        panic!("the inspecting relay hung");
    };
    let mut last = None;
    while let Ok(r) = rx.try_recv() {
        last = Some(r);
    }
    if let Some(code) = summary.refusal {
        assert!(crate::dicom::refusal::ALL.contains(&code), "{code}");
        let r = last.unwrap_or_else(|| panic!("refused ({code}) without a record"));
        assert_eq!(r.refusal.as_deref(), Some(code));
    }
}

/// Target `connector_config`: `Config::parse` on arbitrary text (it reads no files) and the
/// allowlist's port syntax.
pub fn connector_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Config::parse(&text, Path::new("/etc/postern/connector.toml"));
    let _ = crate::allowlist::Ports::parse(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seeds and crash reproducers of both targets run clean under `cargo test`.
    #[test]
    fn seeds_and_regressions_replay() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 4] = [
            ("connect_target", connect_target),
            ("connector_config", connector_config),
            ("dicom_stream", dicom_stream),
            ("link_request", link_request),
        ];
        for (name, f) in targets {
            let mut n = 0;
            for kind in ["seeds", "regressions"] {
                let Ok(dir) = std::fs::read_dir(base.join(kind).join(name)) else {
                    continue;
                };
                for e in dir {
                    f(&std::fs::read(e.unwrap().path()).unwrap());
                    n += 1;
                }
            }
            assert!(n > 0, "no seeds for {name}");
        }
        // The example configuration parses, and the fixture allows what it lists.
        let example =
            std::fs::read_to_string(base.join("seeds/connector_config/example.toml")).unwrap();
        Config::parse(&example, Path::new("/etc/postern/connector.toml")).unwrap();
        assert!(config().allowlist.allows("10.20.1.2".parse().unwrap(), 104));
    }
}
