//! [`Subject`]: who is asking, built once from a verified token and the connection it came on.
//! Everything downstream — the policy request, live-session re-evaluation, revocation checks,
//! audit events — reads it from here instead of unpacking the token again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use postern_audit::DeviceRef;
use postern_policy::DeviceFacts;

use super::tokens::Claims;
use crate::clock::from_unix;

/// An authenticated principal on one connection.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The verified token's claims.
    pub claims: Arc<Claims>,
    /// The client connection's address (the policy's source networks).
    pub source: SocketAddr,
    /// When the user authenticated.
    pub auth_time: Option<SystemTime>,
    /// The device facts the policy sees (None: the token is not bound to a device).
    pub device: Option<DeviceFacts>,
    /// The device as audit events name it.
    pub device_ref: Option<DeviceRef>,
}

impl Subject {
    pub(super) fn new(
        claims: Claims,
        source: SocketAddr,
        device: Option<DeviceFacts>,
        device_ref: Option<DeviceRef>,
    ) -> Subject {
        Subject {
            auth_time: claims.auth_time.map(from_unix),
            claims: Arc::new(claims),
            source,
            device,
            device_ref,
        }
    }

    pub fn user(&self) -> &str {
        &self.claims.sub
    }

    pub fn groups(&self) -> &[String] {
        &self.claims.groups
    }

    /// The policy request for `endpoint` at `at`, with the break-glass reason if one was given.
    pub fn request<'a>(
        &'a self,
        endpoint: &'a str,
        at: SystemTime,
        justification: Option<&'a str>,
    ) -> postern_policy::Request<'a> {
        let r = postern_policy::Request::new(&self.claims.sub, &self.claims.groups, endpoint, at)
            .with_source(self.source.ip())
            .with_auth(self.claims.mfa, self.auth_time)
            .with_ae_titles(&self.claims.ae);
        let r = match &self.device {
            Some(d) => r.with_device(d),
            None => r,
        };
        match justification {
            Some(j) => r.with_justification(j),
            None => r,
        }
    }
}
