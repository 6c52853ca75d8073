//! The gateway's two certificate authorities, kept in its state directory:
//!
//! * `server-ca`: issues the gateway's own TLS server certificate (renewed at every start, for
//!   the names in `tls.server_names`). Its digest is the pin in enrolment tokens; clients and
//!   connectors trust it.
//! * `connector-ca`: issues connector client certificates from CSRs at enrolment. The connector
//!   listener accepts only certificates from this CA, then checks the serial against the store.
//!
//! Keys are ECDSA P-256, stored PKCS#8 PEM with mode 0600.

pub mod server_cert;

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use postern_net::fsutil::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert { what: String, source: rcgen::Error },
    #[error("random number generator failed")]
    Rng,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Io { what, source }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Cert { what, source }
}

/// A certificate authority loaded from (or created in) the state directory.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads `DIR/NAME.pem` + `DIR/NAME.key`, creating both on first start.
    pub fn load_or_create(
        dir: &Path,
        name: &str,
        common_name: &str,
        now: SystemTime,
    ) -> Result<Ca, PkiError> {
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        if !cert_path.exists() {
            let key = KeyPair::generate().map_err(cert_err("generating CA key"))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params
                .distinguished_name
                .push(DnType::OrganizationName, "Postern");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.serial_number = Some(random_serial()?);
            params.not_before = offset(now, -3600);
            params.not_after = offset(now, 10 * 365 * 86400);
            let cert = params
                .self_signed(&key)
                .map_err(cert_err(format!("creating {name}")))?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(io(format!("writing {}", key_path.display())))?;
            write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)
                .map_err(io(format!("writing {}", cert_path.display())))?;
        }
        let cert_pem = std::fs::read_to_string(&cert_path)
            .map_err(io(format!("reading {}", cert_path.display())))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .map_err(io(format!("reading {}", key_path.display())))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(cert_err(format!("parsing {}", key_path.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(cert_err(format!("parsing {}", cert_path.display())))?;
        let cert_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Io {
                what: format!("parsing {}", cert_path.display()),
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(Ca {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// Issues a TLS server certificate for `names`; returns the chain (leaf, CA) and key.
    pub fn issue_server(
        &self,
        names: &[String],
        validity: Duration,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate().map_err(cert_err("generating server key"))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(cert_err(
            "server_names are not valid DNS names or IP addresses",
        ))?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("postern"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        params.not_before = offset(now, -3600);
        params.not_after = offset(now + validity, 0);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err("signing server certificate"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs a connector CSR. Only the CSR's public key is used; the subject is ours:
    /// CN = connector id, OU = site. Returns (PEM, serial hex, not_after).
    pub fn sign_connector(
        &self,
        csr_pem: &str,
        connector_id: &str,
        site: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<(String, String, SystemTime), PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert_err("the certificate signing request is invalid"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, connector_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, site);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = random_serial()?;
        let serial_hex = postern_proto::ids::hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        let not_after = now + validity;
        params.not_before = offset(now, -300);
        params.not_after = offset(not_after, 0);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(cert_err("signing connector certificate"))?;
        Ok((cert.pem(), serial_hex, not_after))
    }
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = postern_proto::ids::random_bytes(16).map_err(|_| PkiError::Rng)?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte, so the DER encoding round-trips exactly
    Ok(SerialNumber::from_slice(&bytes))
}

fn offset(t: SystemTime, secs: i64) -> time::OffsetDateTime {
    let base = time::OffsetDateTime::from(t);
    base + time::Duration::seconds(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_signs_csr() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            Ca::load_or_create(dir.path(), "connector-ca", "test CA", SystemTime::now()).unwrap();
        let again =
            Ca::load_or_create(dir.path(), "connector-ca", "test CA", SystemTime::now()).unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("connector-ca.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let (pem, serial, _) = ca
            .sign_connector(
                &csr,
                "conn-1",
                "truro",
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(serial.len(), 32);
        assert!(ca
            .sign_connector(
                "garbage",
                "conn-1",
                "truro",
                Duration::from_secs(1),
                SystemTime::now()
            )
            .is_err());
    }
}
