//! What a certificate says: validity dates, subject, serial and names, read from DER and
//! judged against a `now` the caller passes in. Pure (no files, no clock, no TLS config), so the
//! gateway, connector and client interpret certificates that crossed the wire the same way and
//! tests drive expiry without waiting. Reading certificate and key *files*, loading a key into
//! rustls and the findings of the `check` subcommands live in `postern_net::certs`; PEM parsing
//! lives next to the TLS builders in `postern_net::tls`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Expiry warnings start this long before a certificate expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86400);

/// What `check` and renewal need to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names and IP addresses of the subject alternative name extension.
    pub names: Vec<String>,
}

fn to_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
    }
}

/// Reads the fields of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(std::net::Ipv4Addr::from([b[0], b[1], b[2], b[3]]).to_string()),
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        serial_hex: crate::ids::hex(cert.raw_serial()),
        not_before: to_time(cert.validity().not_before.timestamp()),
        not_after: to_time(cert.validity().not_after.timestamp()),
        names,
    })
}

/// How a certificate's validity looks at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    Ok,
    /// Valid, but expires within the warning window.
    ExpiresSoon(Duration),
    Expired,
    NotYetValid,
}

/// Validity of `info` at `now`, warning when less than `warn_within` is left.
pub fn validity(info: &CertInfo, now: SystemTime, warn_within: Duration) -> Validity {
    if now < info.not_before {
        return Validity::NotYetValid;
    }
    match info.not_after.duration_since(now) {
        Err(_) => Validity::Expired,
        Ok(left) if left < warn_within => Validity::ExpiresSoon(left),
        Ok(_) => Validity::Ok,
    }
}

/// RFC 3339 (seconds) of a time, for messages.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed_der(names: &[&str], days: i64) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(days);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn info_and_validity() {
        let der = self_signed_der(&["gw.example.org", "127.0.0.1", "::1"], 10);
        let info = cert_info(&der).unwrap();
        assert_eq!(info.names, vec!["gw.example.org", "127.0.0.1", "::1"]);
        assert!(!info.serial_hex.is_empty());
        let now = SystemTime::now();
        assert!(matches!(
            validity(&info, now, EXPIRY_WARNING),
            Validity::ExpiresSoon(_)
        ));
        assert_eq!(
            validity(&info, now, Duration::from_secs(86400)),
            Validity::Ok
        );
        assert_eq!(
            validity(&info, now + Duration::from_secs(11 * 86400), Duration::ZERO),
            Validity::Expired
        );
        assert_eq!(
            validity(&info, now - Duration::from_secs(2 * 86400), Duration::ZERO),
            Validity::NotYetValid
        );
        assert!(cert_info(b"not a certificate").is_err());
    }
}
