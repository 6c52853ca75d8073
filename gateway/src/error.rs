//! [`GatewayError`]: what stops the gateway from starting, or an admin command from finishing.

/// Errors that stop the gateway from starting (or an admin command).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("policy: {0}")]
    Policy(#[from] postern_policy::PolicyError),
    #[error("audit log: {0}")]
    Audit(#[from] postern_audit::AuditError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
    #[error(transparent)]
    Tokens(#[from] crate::authn::tokens::TokenError),
    #[error(transparent)]
    Tls(#[from] postern_net::tls::TlsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl GatewayError {
    /// An error while doing `what`, with a message.
    pub fn other(what: impl Into<String>, message: impl std::fmt::Display) -> GatewayError {
        GatewayError::Io {
            what: what.into(),
            source: std::io::Error::other(message.to_string()),
        }
    }
}
