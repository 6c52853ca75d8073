//! The audit event schema (version 1).
//!
//! One [`Event`] is one JSON object on one line. Optional fields are omitted when empty, so a
//! line carries only what is known about that event. Readers tolerate fields and event types they
//! do not know: `kind` is a plain string and unknown keys are ignored, so an older `postern-audit`
//! can still read a log written by a newer gateway.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Schema version written into [`Event::v`] by this crate.
pub const SCHEMA_VERSION: u32 = 1;

/// One audited fact: a session opened, refused or closed, a connector came or went, a token was
/// issued, a gateway started or stopped, an administrator ran a command.
///
/// Fields are serialized in declaration order and optional fields are omitted when empty; the
/// writer fills `seq`, `prev` and `hash` (whatever a caller put there is overwritten). The
/// declaration order is part of the format only in that the writer always puts `prev` and then
/// `hash` last, which the chain's canonical bytes rely on (see `docs/audit.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Schema version ([`SCHEMA_VERSION`]), so readers can tell old lines from new ones.
    pub v: u32,
    /// Position in the log: 1 for the first event, +1 for each next one, across segments and
    /// across every process that appends. A gap or a repeat means events were removed or
    /// reordered. Set by the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When the event happened: RFC 3339, UTC, microseconds (`2025-03-01T08:15:02.123456Z`).
    pub ts: String,
    /// What happened, e.g. `session.start` (see [`EventType`]). A string, not the enum, so that
    /// readers keep working when later versions add types.
    #[serde(rename = "type")]
    pub kind: String,
    /// Ties `session.start` to its `session.end` (and to the gateway's logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The authenticated user the event is about: the IdP subject (or username). For `admin.*`
    /// events, the operating-system user who ran the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user's display name from the IdP, so a report reads "Dr Ann Jones", not a subject id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// The user's email from the IdP: what auditors usually search by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_email: Option<String>,
    /// The user's groups as the policy saw them, so a decision can be re-checked later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// The device the user came from, when device trust identified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceRef>,
    /// The sign-in the event belongs to: the id of the session token (`tok-…`) that
    /// `auth.login` issued, on that `auth.login`, on `auth.logout` and on every session event of
    /// a connection opened with the token. It ties a clinician's connections to one sign-in
    /// (`postern-audit sessions` makes them one visit per endpoint). An identifier, not a
    /// credential: the token itself is never logged. Added after v1 was first written: absent
    /// in older lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signin: Option<String>,
    /// Client address `ip:port` as seen by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The client's user agent (`postern/0.1.0`, a browser), as it announced itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The endpoint asked for (session events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointRef>,
    /// The endpoint's egress class from the policy (e.g. `clinical`, `admin`), kept beside
    /// `endpoint` rather than inside it so that [`EndpointRef`] stays as it was in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_class: Option<String>,
    /// The connector that carried (or refused) the session, or the subject of a connector event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<ConnectorRef>,
    /// The policy decision, with the rule and policy version that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionRef>,
    /// Findings of report-only rules: what a rule in report-only mode would have decided, one
    /// sentence each. They did not change the decision; they show what enforcing would change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_only: Option<Vec<String>>,
    /// The reason the user typed for break-glass access, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// Bytes relayed client -> endpoint (`session.end`, `session.terminated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Bytes relayed endpoint -> client (`session.end`, `session.terminated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    /// How long the session lasted (`session.end`, `session.terminated`); for
    /// `session.resumed`, how long it was suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why a session ended: `client_closed`, `endpoint_closed`, `max_duration`, `idle_timeout`,
    /// `connector_lost`, `connector_refused`, `policy_revoked`, `shutdown`, `error`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    /// Id of the gateway node that wrote the event (several replicas may share an auditor).
    /// The writer fills it from `AuditOptions::node_id` when the caller left it empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Free text for what has no field of its own: why a connection was refused, a token's
    /// `jti`, the admin command that was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Hospital site, for connector and enrolment events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// `access.refused_unauthenticated`: how many requests from `source` were refused for
    /// one reason, and when the first and the last of them came. Added after v1 was first
    /// written: absent in older lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedSummary>,
    /// `web.request`: one request of a web application session through the gateway's proxy.
    /// Added after v1 was first written: absent in older lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRef>,
    /// Clinical objects the event touched, as identifiers (a DICOMweb study, series or
    /// instance UID in a `web.request` path), so that "who opened this study" has an answer.
    /// Added after v1 was first written: absent in older lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<ObjectRef>>,
    /// `dicom.*`: what the connector saw on a DICOM association of the session (AE titles,
    /// the operation's keys, the studies and instances moved), bounded by the gateway before
    /// it was written. Added after v1 was first written: absent in older lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomRef>,
    /// What the log itself records about its integrity (`audit.*` events only): a checkpoint's
    /// signature, the key that signs, what a recovery found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditMeta>,
    /// `hash` of the event before this one (64 hex digits; 64 zeros for the first event).
    /// Set by the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// SHA-256 over `prev` and this event's canonical bytes (64 hex digits); always the last
    /// member of the line. Set by the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// Refusals of unauthenticated requests, aggregated: one event per source address and reason
/// per interval instead of one per request (see `access.refused_unauthenticated`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedSummary {
    /// Stable reason code: `token_missing`, `token_malformed`, `token_invalid_signature`,
    /// `token_expired`, `token_revoked`, `user_revoked`, `device_revoked`, `rate_limited`,
    /// `bad_target`.
    pub reason: String,
    /// How many requests were refused for `reason` between `first` and `last`.
    pub count: u64,
    /// When the first of them came (RFC 3339, UTC, microseconds).
    pub first: String,
    /// When the last of them came.
    pub last: String,
}

/// The device a session came from, as device trust identified it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRef {
    /// Stable device id (e.g. from the device certificate or MDM).
    pub id: String,
    /// Human name of the device (`RAD-LAPTOP-042`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the user proved presence on the device (biometric / PIN) for this sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_verified: Option<bool>,
}

/// Integrity facts carried by `audit.*` events. Every member is optional; which ones are set
/// depends on the type (see `docs/audit.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditMeta {
    /// `audit.checkpoint`: why it was written: `count`, `interval`, `rotate`, `close` or
    /// `truncation` (right after an accepted `audit.truncation_detected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `audit.checkpoint`, `audit.started`: the Ed25519 public key that signs checkpoints
    /// (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `audit.checkpoint`: Ed25519 signature (128 hex digits) over the checkpoint message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// `audit.recovered`: the segment file in which torn bytes were found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// `audit.recovered`: byte offset in `segment` where the torn bytes began (and were cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// `audit.recovered`: how many torn bytes were cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn_bytes: Option<u64>,
    /// `audit.recovered`: SHA-256 of the cut bytes, so a copy taken earlier can be matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn_sha256: Option<String>,
}

/// The endpoint a session was for, copied from the policy at decision time (the policy file may
/// change later; the audit line must still say what was reached).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRef {
    /// Policy name of the endpoint, e.g. `pacs-dicom`.
    pub name: String,
    /// Site the endpoint lives at.
    pub site: String,
    /// Host name or address the connector dials.
    pub host: String,
    /// TCP port the connector dials.
    pub port: u16,
    /// Protocol tag from the policy: `dicom`, `rdp`, `https`, ...
    pub protocol: String,
}

/// One request through the web proxy (`web.request`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRef {
    /// The request method (`GET`, `POST`, ...).
    pub method: String,
    /// The request path without its query string (which may carry patient identifiers or
    /// tokens), percent-encoded as the browser sent it.
    pub path: String,
    /// The status answered to the browser (the upstream's, or the gateway's own: 403 for a
    /// request the policy refused, 502/504 when the upstream failed).
    pub status: u16,
    /// Request body bytes sent to the upstream.
    pub bytes_up: u64,
    /// Response body bytes sent to the browser.
    pub bytes_down: u64,
    /// From the request's arrival to the end of its response body.
    pub duration_ms: u64,
    /// Set when requests of this endpoint are sampled (`request_audit = "1/N"`): this event
    /// stands for about N requests. Absent: every request is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<u32>,
}

/// What the connector saw on a DICOM association ([`Event::dicom`]); the same record travels
/// from connector to gateway ([`postern_proto::dicom`]).
#[doc(no_inline)]
pub use postern_proto::dicom::DicomRecord as DicomRef;

/// A clinical object an event touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// `study`, `series` or `instance` (DICOM UIDs); `patient` (a Patient ID) and `accession`
    /// (an Accession Number) from DICOM query keys.
    pub kind: String,
    /// The identifier: a DICOM UID for studies, series and instances.
    pub id: String,
}

/// A connector, identified by the id in its certificate and its site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorRef {
    /// Connector id (from its client certificate).
    pub id: String,
    /// Site the connector serves.
    pub site: String,
}

/// The policy decision behind a session event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRef {
    /// `allow` or `deny`.
    pub effect: String,
    /// The rule that decided (absent for a default deny: no rule matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Version (hash) of the policy that was evaluated, so the decision can be replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// Human-readable reason from the policy trace.
    pub reason: String,
    /// Every allow rule that matched, in policy file order, including the deciding one; a deny
    /// may still have won. With `matched_denies`, shows an auditor what else applied, not only
    /// the rule that decided. Added after v1 was first written: absent in older lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_allows: Vec<String>,
    /// Every deny rule that matched, in policy file order. Added after v1 was first written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_denies: Vec<String>,
    /// Until when the decision holds on time alone (RFC 3339, UTC, whole seconds,
    /// `2026-12-04T18:00:00Z`): the next instant at which a time window, a validity date or the
    /// sign-in's age could change it, when the gateway re-evaluates a live session. Absent: no
    /// passage of time changes it. Added after v1 was first written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
}

/// The event types this version writes. The on-disk value is [`EventType::as_str`].
///
/// Types are grouped in families by the part before the dot (`session.*`, `auth.*`, ...), which
/// `search --type session.*` selects as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A session was allowed; written durably before the first byte is relayed.
    SessionStart,
    /// A session was refused (policy, token, no connector, ...).
    SessionDenied,
    /// One request of a web application session ([`Event::http`], [`Event::objects`]); the
    /// session itself has one `session.start` and one `session.end`.
    WebRequest,
    /// Requests without a valid session token (or over the per-address limit before
    /// authentication) were refused: one event per source address and reason per interval,
    /// with a count ([`Event::refused`]), never the token.
    AccessRefusedUnauthenticated,
    /// A session closed; carries byte counts, duration and close reason.
    SessionEnd,
    /// A DICOM association of the session was accepted ([`Event::dicom`]: calling and called
    /// AE titles, the SOP classes accepted), as the connector that carries the session saw it.
    DicomAssociation,
    /// A C-FIND of the session: its level and keys (patient, accession, study, modality,
    /// date) and how many matches came back.
    DicomQuery,
    /// A C-GET or C-MOVE of the session: the studies and series asked for and the instances
    /// transferred.
    DicomRetrieve,
    /// C-STORE from the clinician's side to the PACS: how many instances, their UIDs.
    DicomStore,
    /// The connector refused a DICOM association (A-ASSOCIATE-RJ) or aborted one (A-ABORT)
    /// because the permit did not allow it: the rule, the reason code and the answer sent.
    DicomRefused,
    /// A resumable session lost its client's link (Wi-Fi change, sleep, a network that
    /// dropped it): the endpoint side stays open for the rule's `resume_grace` while the
    /// client reconnects; continuous authorization still applies.
    SessionSuspended,
    /// A suspended session's client came back: `duration_ms` is how long it was suspended,
    /// `source` the client's address now.
    SessionResumed,
    /// A live session moved onto a renewed sign-in (a new session token of the same user and
    /// device): the policy was asked again and its deadline follows the new token; `detail`
    /// names both token ids and the new end.
    SessionRenewed,
    /// A connector enrolled with a one-time token and got its certificate.
    ConnectorEnrolled,
    /// A connector connection came up.
    ConnectorConnected,
    /// A connector connection went away.
    ConnectorDisconnected,
    /// A connector connection was refused (bad or revoked certificate, ...).
    ConnectorRefused,
    /// A connector's certificate was revoked.
    ConnectorRevoked,
    /// A connector renewed its client certificate (same id and site, new serial).
    ConnectorRenewed,
    /// A certificate renewal was refused as a security alert: `detail` starts with the reason
    /// code (`superseded_certificate`: the certificate presented was already replaced by a
    /// renewal, so a copy of an old key is in use).
    ConnectorRenewalRefused,
    /// An enrolment attempt failed (bad, used or expired token, bad CSR).
    EnrollmentFailed,
    /// An enrolment token was issued.
    TokenCreated,
    /// A session token was minted for a signed-in user.
    TokenMinted,
    /// A gateway node started.
    GatewayStarted,
    /// A gateway node stopped.
    GatewayStopped,
    /// The gateway's client-facing certificate was reloaded from its files (SIGHUP).
    GatewayCertReloaded,
    /// A new client-facing certificate was refused; the running one stays.
    GatewayCertRejected,
    /// The state store changed form: an old `state.json` was imported into the database
    /// (`detail`: what, and where the old file was kept).
    StoreMigrated,
    /// The state store's database stopped answering: live sessions go on, new ones follow
    /// the last known state for `[store] max_staleness`.
    StoreUnavailable,
    /// The database has not answered for longer than `max_staleness`: new sessions are
    /// refused (`store_unavailable`) until it answers.
    StoreStale,
    /// The database answers again (`detail`: after how long).
    StoreAvailable,
    /// A user signed in at the identity provider and the gateway accepted the result.
    AuthLogin,
    /// A sign-in failed (IdP error, bad state, unknown user, MFA missing, ...).
    AuthFailed,
    /// A user signed out, or their sign-in was ended.
    AuthLogout,
    /// A device (WebAuthn credential) was registered; `detail` says whether it is active or
    /// pending approval.
    DeviceRegistered,
    /// A pending device was approved (by an administrator, or automatically by site policy).
    DeviceApproved,
    /// A device proved itself with a WebAuthn assertion at sign-in.
    DeviceVerified,
    /// A WebAuthn ceremony failed; `detail` starts with the error reference and reason code
    /// (`posture_mismatch`, `unknown_challenge`, `possible_clone`, ...).
    DeviceAssertionFailed,
    /// A device's registration was revoked (its live sessions end).
    DeviceRevoked,
    /// A device reported its posture, signed with its device key; `detail` is the report.
    PostureReported,
    /// A live session was ended by the gateway (policy change, revocation, admin action), as
    /// opposed to [`EventType::SessionEnd`], where one of the two ends closed it.
    SessionTerminated,
    /// A new policy was loaded and is in force.
    PolicyReloaded,
    /// A new policy was rejected; the previous one stays in force.
    PolicyRejected,
    /// A session token was revoked before its expiry.
    TokenRevoked,
    /// An administrator ran a command (`detail` holds the command, `user` the OS user).
    /// Further `admin.*` types may be written; `search --type admin.*` finds them all.
    AdminCommand,
    /// A signed checkpoint: the log up to here is vouched for by the audit key.
    AuditCheckpoint,
    /// An audit writer opened the log (carries the public key that will sign its checkpoints).
    AuditStarted,
    /// An audit writer found and cut torn bytes left by a crash (what it found is recorded).
    AuditRecovered,
    /// An audit writer found the log shorter than the checkpoint `audit.head` named and was told
    /// to go on (`--accept-truncated-audit`): events were lost; `detail` names both `seq`s.
    AuditTruncationDetected,
}

impl EventType {
    /// Every type this version knows, in declaration order.
    pub const ALL: [EventType; 49] = [
        EventType::SessionStart,
        EventType::SessionDenied,
        EventType::WebRequest,
        EventType::AccessRefusedUnauthenticated,
        EventType::SessionEnd,
        EventType::DicomAssociation,
        EventType::DicomQuery,
        EventType::DicomRetrieve,
        EventType::DicomStore,
        EventType::DicomRefused,
        EventType::SessionSuspended,
        EventType::SessionResumed,
        EventType::SessionRenewed,
        EventType::ConnectorEnrolled,
        EventType::ConnectorConnected,
        EventType::ConnectorDisconnected,
        EventType::ConnectorRefused,
        EventType::ConnectorRevoked,
        EventType::ConnectorRenewed,
        EventType::ConnectorRenewalRefused,
        EventType::EnrollmentFailed,
        EventType::TokenCreated,
        EventType::TokenMinted,
        EventType::GatewayStarted,
        EventType::GatewayStopped,
        EventType::GatewayCertReloaded,
        EventType::GatewayCertRejected,
        EventType::StoreMigrated,
        EventType::StoreUnavailable,
        EventType::StoreStale,
        EventType::StoreAvailable,
        EventType::AuthLogin,
        EventType::AuthFailed,
        EventType::AuthLogout,
        EventType::DeviceRegistered,
        EventType::DeviceApproved,
        EventType::DeviceVerified,
        EventType::DeviceAssertionFailed,
        EventType::DeviceRevoked,
        EventType::PostureReported,
        EventType::SessionTerminated,
        EventType::PolicyReloaded,
        EventType::PolicyRejected,
        EventType::TokenRevoked,
        EventType::AdminCommand,
        EventType::AuditCheckpoint,
        EventType::AuditStarted,
        EventType::AuditRecovered,
        EventType::AuditTruncationDetected,
    ];

    /// The string stored in the `type` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::SessionStart => "session.start",
            EventType::SessionDenied => "session.denied",
            EventType::WebRequest => "web.request",
            EventType::AccessRefusedUnauthenticated => "access.refused_unauthenticated",
            EventType::SessionEnd => "session.end",
            EventType::DicomAssociation => "dicom.association",
            EventType::DicomQuery => "dicom.query",
            EventType::DicomRetrieve => "dicom.retrieve",
            EventType::DicomStore => "dicom.store",
            EventType::DicomRefused => "dicom.refused",
            EventType::SessionSuspended => "session.suspended",
            EventType::SessionResumed => "session.resumed",
            EventType::SessionRenewed => "session.renewed",
            EventType::ConnectorEnrolled => "connector.enrolled",
            EventType::ConnectorConnected => "connector.connected",
            EventType::ConnectorDisconnected => "connector.disconnected",
            EventType::ConnectorRefused => "connector.refused",
            EventType::ConnectorRevoked => "connector.revoked",
            EventType::ConnectorRenewed => "connector.renewed",
            EventType::ConnectorRenewalRefused => "connector.renewal_refused",
            EventType::EnrollmentFailed => "connector.enroll_failed",
            EventType::TokenCreated => "token.created",
            EventType::TokenMinted => "token.minted",
            EventType::GatewayStarted => "gateway.started",
            EventType::GatewayStopped => "gateway.stopped",
            EventType::GatewayCertReloaded => "gateway.cert_reloaded",
            EventType::GatewayCertRejected => "gateway.cert_rejected",
            EventType::StoreMigrated => "store.migrated",
            EventType::StoreUnavailable => "store.unavailable",
            EventType::StoreStale => "store.stale",
            EventType::StoreAvailable => "store.available",
            EventType::AuthLogin => "auth.login",
            EventType::AuthFailed => "auth.failed",
            EventType::AuthLogout => "auth.logout",
            EventType::DeviceRegistered => "device.registered",
            EventType::DeviceApproved => "device.approved",
            EventType::DeviceVerified => "device.verified",
            EventType::DeviceAssertionFailed => "device.assertion_failed",
            EventType::DeviceRevoked => "device.revoked",
            EventType::PostureReported => "posture.reported",
            EventType::SessionTerminated => "session.terminated",
            EventType::PolicyReloaded => "policy.reloaded",
            EventType::PolicyRejected => "policy.rejected",
            EventType::TokenRevoked => "token.revoked",
            EventType::AdminCommand => "admin.command",
            EventType::AuditCheckpoint => "audit.checkpoint",
            EventType::AuditStarted => "audit.started",
            EventType::AuditRecovered => "audit.recovered",
            EventType::AuditTruncationDetected => "audit.truncation_detected",
        }
    }

    /// The known type stored as `s`, or `None` for a type this version does not know.
    pub fn from_type_str(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether an event of this type may be shed (dropped, and counted) when the writer's queue
    /// is nearly full: only per-request refusals that an unauthenticated or already-refused
    /// party can cause in bulk. Everything else (sign-in, sign-out, revocations, device and
    /// connector changes, session starts and ends, the aggregated refusal counts) waits for
    /// room instead. Types this version does not know are never shed.
    pub fn sheddable(kind: &str) -> bool {
        matches!(
            EventType::from_type_str(kind),
            Some(
                EventType::SessionDenied
                    | EventType::ConnectorRefused
                    | EventType::EnrollmentFailed
                    | EventType::AuthFailed
                    | EventType::DeviceAssertionFailed
            )
        )
    }

    /// Whether only the audit writer itself may write this type (`audit.*`): a caller that
    /// records one is refused, so nobody can forge a checkpoint through the normal API.
    pub fn is_reserved(s: &str) -> bool {
        s.starts_with("audit.")
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    /// A new event of type `kind`, stamped with the schema version and the current time.
    pub fn new(kind: EventType) -> Event {
        Event {
            v: SCHEMA_VERSION,
            ts: now_rfc3339_micros(),
            kind: kind.as_str().to_owned(),
            ..Event::default()
        }
    }

    /// Cuts every caller-supplied string to a bound (and every list to a number of entries),
    /// so no field of an event can make a line large: `MAX_TEXT_BYTES` for free text
    /// (`detail`, reasons, `justification`, report-only findings), `MAX_FIELD_BYTES` for
    /// names, ids and addresses, `MAX_LIST_ITEMS` entries per list. A cut string ends in
    /// `…[+N bytes]`. The writer applies it to every event before it is chained; what the
    /// writer itself fills (`seq`, `prev`, `hash`, `audit`) is left alone.
    pub fn bound_lengths(&mut self) {
        let short = |s: &mut String| bound(s, MAX_FIELD_BYTES);
        let short_opt = |s: &mut Option<String>| {
            if let Some(s) = s {
                bound(s, MAX_FIELD_BYTES)
            }
        };
        let text_opt = |s: &mut Option<String>| {
            if let Some(s) = s {
                bound(s, MAX_TEXT_BYTES)
            }
        };
        let list = |l: &mut Vec<String>, max: usize| {
            l.truncate(MAX_LIST_ITEMS);
            l.iter_mut().for_each(|s| bound(s, max));
        };
        short(&mut self.ts);
        short(&mut self.kind);
        short_opt(&mut self.session_id);
        short_opt(&mut self.user);
        short_opt(&mut self.user_name);
        short_opt(&mut self.user_email);
        if let Some(g) = &mut self.groups {
            list(g, MAX_FIELD_BYTES);
        }
        if let Some(d) = &mut self.device {
            short(&mut d.id);
            short_opt(&mut d.name);
        }
        short_opt(&mut self.source);
        short_opt(&mut self.user_agent);
        if let Some(e) = &mut self.endpoint {
            short(&mut e.name);
            short(&mut e.site);
            short(&mut e.host);
            short(&mut e.protocol);
        }
        short_opt(&mut self.egress_class);
        if let Some(c) = &mut self.connector {
            short(&mut c.id);
            short(&mut c.site);
        }
        if let Some(d) = &mut self.decision {
            short(&mut d.effect);
            short_opt(&mut d.rule);
            short_opt(&mut d.policy_version);
            bound(&mut d.reason, MAX_TEXT_BYTES);
            list(&mut d.matched_allows, MAX_FIELD_BYTES);
            list(&mut d.matched_denies, MAX_FIELD_BYTES);
            short_opt(&mut d.valid_until);
        }
        if let Some(r) = &mut self.report_only {
            list(r, MAX_TEXT_BYTES);
        }
        text_opt(&mut self.justification);
        short_opt(&mut self.close_reason);
        short_opt(&mut self.gateway);
        text_opt(&mut self.detail);
        short_opt(&mut self.site);
        if let Some(h) = &mut self.http {
            short(&mut h.method);
            bound(&mut h.path, MAX_TEXT_BYTES);
        }
        if let Some(o) = &mut self.objects {
            o.truncate(MAX_LIST_ITEMS);
            for o in o.iter_mut() {
                short(&mut o.kind);
                short(&mut o.id);
            }
        }
        if let Some(r) = &mut self.refused {
            short(&mut r.reason);
            short(&mut r.first);
            short(&mut r.last);
        }
    }

    /// The type as an enum, or `None` if it is one this version does not know.
    pub fn event_type(&self) -> Option<EventType> {
        EventType::from_type_str(&self.kind)
    }
}

/// Bound of a free-text field (`detail`, a decision's reason, `justification`).
pub const MAX_TEXT_BYTES: usize = 2048;
/// Bound of a name, id, address or code.
pub const MAX_FIELD_BYTES: usize = 512;
/// Bound of a list's number of entries (groups, matched rules, report-only findings).
pub const MAX_LIST_ITEMS: usize = 64;

/// Cuts `s` to at most `max` bytes (at a character boundary), marking the cut.
fn bound(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let total = s.len();
    // Room for the marker, so the result stays within `max`.
    let mut cut = max.saturating_sub(24);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(&format!("…[+{} bytes]", total - cut));
}

/// The current time as written in [`Event::ts`].
pub fn now_rfc3339_micros() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_strings_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for t in EventType::ALL {
            assert!(
                seen.insert(t.as_str()),
                "duplicate type string {}",
                t.as_str()
            );
            assert_eq!(EventType::from_type_str(t.as_str()), Some(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(seen.len(), EventType::ALL.len());
        assert_eq!(EventType::from_type_str("session.teleported"), None);
    }

    #[test]
    fn bound_lengths_cuts_every_caller_string_at_a_char_boundary_and_marks_it() {
        let huge = "é".repeat(10_000); // 2 bytes per char: cuts must respect boundaries
        let mut e = Event::new(EventType::SessionDenied);
        e.user = Some(huge.clone());
        e.source = Some(huge.clone());
        e.detail = Some(huge.clone());
        e.groups = Some(vec![huge.clone(); 1000]);
        e.endpoint = Some(EndpointRef {
            name: huge.clone(),
            ..EndpointRef::default()
        });
        e.decision = Some(DecisionRef {
            reason: huge.clone(),
            matched_denies: vec![huge.clone(); 3],
            ..DecisionRef::default()
        });
        e.refused = Some(RefusedSummary {
            reason: huge.clone(),
            count: 1,
            ..RefusedSummary::default()
        });
        e.session_id = Some("short".into());
        e.bound_lengths();
        let user = e.user.as_deref().unwrap();
        assert!(user.len() <= MAX_FIELD_BYTES, "{}", user.len());
        assert!(user.ends_with(" bytes]"), "{user}");
        assert!(user.starts_with("éé"));
        assert!(e.source.as_deref().unwrap().len() <= MAX_FIELD_BYTES);
        let detail = e.detail.as_deref().unwrap();
        assert!(detail.len() <= MAX_TEXT_BYTES && detail.len() > MAX_FIELD_BYTES);
        let groups = e.groups.as_ref().unwrap();
        assert_eq!(groups.len(), MAX_LIST_ITEMS);
        assert!(groups.iter().all(|g| g.len() <= MAX_FIELD_BYTES));
        assert!(e.endpoint.as_ref().unwrap().name.len() <= MAX_FIELD_BYTES);
        let d = e.decision.as_ref().unwrap();
        assert!(d.reason.len() <= MAX_TEXT_BYTES);
        assert!(d.matched_denies.iter().all(|r| r.len() <= MAX_FIELD_BYTES));
        assert!(e.refused.as_ref().unwrap().reason.len() <= MAX_FIELD_BYTES);
        assert_eq!(
            e.session_id.as_deref(),
            Some("short"),
            "short strings untouched"
        );
        // The whole line is now bounded, whatever the caller put in.
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.len() < 64 * 1024, "{}", line.len());
    }

    #[test]
    fn only_bulk_refusals_are_sheddable() {
        for t in [
            EventType::AuthLogin,
            EventType::AuthLogout,
            EventType::TokenRevoked,
            EventType::DeviceRegistered,
            EventType::DeviceRevoked,
            EventType::ConnectorConnected,
            EventType::ConnectorRevoked,
            EventType::SessionStart,
            EventType::SessionEnd,
            EventType::SessionTerminated,
            EventType::AccessRefusedUnauthenticated,
        ] {
            assert!(!EventType::sheddable(t.as_str()), "{t} must never be shed");
        }
        assert!(EventType::sheddable("session.denied"));
        assert!(!EventType::sheddable("future.type"));
    }

    #[test]
    fn new_fills_version_type_and_utc_micro_timestamp() {
        let e = Event::new(EventType::SessionEnd);
        assert_eq!(e.v, 1);
        assert_eq!(e.kind, "session.end");
        assert_eq!(e.event_type(), Some(EventType::SessionEnd));
        // 2025-03-01T08:15:02.123456Z
        assert_eq!(e.ts.len(), 27, "{}", e.ts);
        assert!(e.ts.ends_with('Z'), "{}", e.ts);
        assert_eq!(&e.ts[19..20], ".", "{}", e.ts);
        assert!(humantime::parse_rfc3339(&e.ts).is_ok(), "{}", e.ts);
        assert_eq!(e.user, None);
    }

    #[test]
    fn empty_options_are_omitted() {
        let e = Event {
            ts: "2025-03-01T08:15:02.123456Z".into(),
            ..Event::new(EventType::GatewayStarted)
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"v":1,"ts":"2025-03-01T08:15:02.123456Z","type":"gateway.started"}"#
        );
        let d = DecisionRef {
            effect: "deny".into(),
            reason: "no rule matched".into(),
            ..DecisionRef::default()
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"effect":"deny","reason":"no rule matched"}"#
        );
    }

    #[test]
    fn every_field_round_trips_with_its_exact_name() {
        let e = Event {
            v: 1,
            ts: "2025-03-01T08:15:02.123456Z".into(),
            kind: "session.end".into(),
            session_id: Some("s-1".into()),
            user: Some("dr.jones".into()),
            groups: Some(vec!["radiologists".into(), "on-call".into()]),
            source: Some("203.0.113.7:51234".into()),
            endpoint: Some(EndpointRef {
                name: "pacs-dicom".into(),
                site: "truro".into(),
                host: "10.1.2.3".into(),
                port: 11112,
                protocol: "dicom".into(),
            }),
            connector: Some(ConnectorRef {
                id: "conn-7".into(),
                site: "truro".into(),
            }),
            decision: Some(DecisionRef {
                effect: "allow".into(),
                rule: Some("radiologists-pacs".into()),
                policy_version: Some("sha256:abcd".into()),
                reason: "rule radiologists-pacs matched".into(),
                matched_allows: vec!["radiologists-pacs".into(), "on-call-pacs".into()],
                matched_denies: vec!["unmanaged-devices".into()],
                valid_until: Some("2026-12-04T18:00:00Z".into()),
            }),
            bytes_up: Some(1234),
            bytes_down: Some(u64::MAX),
            duration_ms: Some(60_000),
            close_reason: Some("client_closed".into()),
            gateway: Some("gw-a".into()),
            detail: Some("détail ünïcode \"quoted\"\nnewline".into()),
            site: Some("truro".into()),
            seq: Some(7),
            user_name: Some("Dr Ann Jones".into()),
            user_email: Some("ann.jones@nhs.example".into()),
            device: Some(DeviceRef {
                id: "dev-9".into(),
                name: Some("RAD-LAPTOP-042".into()),
                user_verified: Some(true),
            }),
            user_agent: Some("postern/0.1.0".into()),
            signin: Some("tok-0123456789abcdef".into()),
            egress_class: Some("clinical".into()),
            report_only: Some(vec!["rule night-shift would deny: outside hours".into()]),
            justification: Some("stroke call, consultant unavailable".into()),
            refused: Some(RefusedSummary {
                reason: "token_malformed".into(),
                count: 3,
                first: "2025-03-01T08:15:00.000000Z".into(),
                last: "2025-03-01T08:15:02.000000Z".into(),
            }),
            http: Some(HttpRef {
                method: "GET".into(),
                path: "/dicom-web/studies/1.2.3".into(),
                status: 200,
                bytes_up: 0,
                bytes_down: 1536,
                duration_ms: 42,
                sampled: Some(10),
            }),
            objects: Some(vec![ObjectRef {
                kind: "study".into(),
                id: "1.2.3".into(),
            }]),
            dicom: Some(DicomRef {
                event: "retrieve".into(),
                calling_ae: "RAD_JONES".into(),
                called_ae: "PACS".into(),
                service: Some("get".into()),
                level: Some("STUDY".into()),
                study_uids: vec!["1.2.3".into()],
                instances: Some(120),
                status: Some("0000".into()),
                ..DicomRef::default()
            }),
            audit: Some(AuditMeta {
                reason: Some("close".into()),
                ..AuditMeta::default()
            }),
            prev: Some("0".repeat(64)),
            hash: Some("f".repeat(64)),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains('\n'), "one event must be one line: {json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "audit",
                "bytes_down",
                "bytes_up",
                "close_reason",
                "connector",
                "decision",
                "detail",
                "device",
                "dicom",
                "duration_ms",
                "egress_class",
                "endpoint",
                "gateway",
                "groups",
                "hash",
                "http",
                "justification",
                "objects",
                "prev",
                "refused",
                "report_only",
                "seq",
                "session_id",
                "signin",
                "site",
                "source",
                "ts",
                "type",
                "user",
                "user_agent",
                "user_email",
                "user_name",
                "v"
            ]
        );
        assert_eq!(value["endpoint"]["port"], 11112);
        assert_eq!(value["decision"]["policy_version"], "sha256:abcd");
        assert_eq!(
            value["decision"]["matched_allows"],
            serde_json::json!(["radiologists-pacs", "on-call-pacs"])
        );
        assert_eq!(
            value["decision"]["matched_denies"],
            serde_json::json!(["unmanaged-devices"])
        );
        assert_eq!(value["decision"]["valid_until"], "2026-12-04T18:00:00Z");
        assert_eq!(value["connector"]["id"], "conn-7");
        assert_eq!(value["device"]["user_verified"], true);
        assert_eq!(value["refused"]["count"], 3);
        assert_eq!(value["refused"]["reason"], "token_malformed");
        assert_eq!(value["http"]["sampled"], 10);
        assert_eq!(value["http"]["status"], 200);
        assert_eq!(value["objects"][0]["kind"], "study");
        // Serialization order: seq right after v; prev then hash last (the chain relies on it).
        assert!(json.starts_with(r#"{"v":1,"seq":7,"ts":"#), "{json}");
        let tail = format!(
            r#","prev":"{}","hash":"{}"}}"#,
            "0".repeat(64),
            "f".repeat(64)
        );
        assert!(json.ends_with(&tail), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn decision_fields_added_later_are_optional_and_omitted_when_empty() {
        // A decision as written before matched_allows / matched_denies / valid_until existed.
        let old = r#"{"effect":"allow","rule":"rads","policy_version":"sha256:0f1e","reason":"group radiologists"}"#;
        let d: DecisionRef = serde_json::from_str(old).unwrap();
        assert_eq!(
            d,
            DecisionRef {
                effect: "allow".into(),
                rule: Some("rads".into()),
                policy_version: Some("sha256:0f1e".into()),
                reason: "group radiologists".into(),
                ..DecisionRef::default()
            }
        );
        assert!(d.matched_allows.is_empty() && d.matched_denies.is_empty());
        assert_eq!(d.valid_until, None);
        // Serialized again it is byte for byte what it was.
        assert_eq!(serde_json::to_string(&d).unwrap(), old);

        let new = DecisionRef {
            effect: "deny".into(),
            rule: Some("unmanaged-devices".into()),
            reason: "device is not managed".into(),
            matched_allows: vec!["rads".into()],
            matched_denies: vec!["unmanaged-devices".into()],
            valid_until: Some("2026-12-04T18:00:00Z".into()),
            ..DecisionRef::default()
        };
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(
            json,
            r#"{"effect":"deny","rule":"unmanaged-devices","reason":"device is not managed","matched_allows":["rads"],"matched_denies":["unmanaged-devices"],"valid_until":"2026-12-04T18:00:00Z"}"#
        );
        assert_eq!(serde_json::from_str::<DecisionRef>(&json).unwrap(), new);
    }

    #[test]
    fn readers_tolerate_unknown_fields_and_types() {
        let line = r#"{"v":2,"ts":"2030-01-01T00:00:00.000000Z","type":"session.paused","seq":42,"prev":"ab","user":"u"}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert_eq!(e.v, 2);
        assert_eq!(e.kind, "session.paused");
        assert_eq!(e.event_type(), None);
        assert_eq!(e.user.as_deref(), Some("u"));
    }

    #[test]
    fn required_fields_are_required() {
        for line in [
            r#"{"ts":"2030-01-01T00:00:00.000000Z","type":"session.start"}"#,
            r#"{"v":1,"type":"session.start"}"#,
            r#"{"v":1,"ts":"2030-01-01T00:00:00.000000Z"}"#,
        ] {
            let err = serde_json::from_str::<Event>(line).unwrap_err();
            assert!(err.to_string().contains("missing field"), "{line}: {err}");
        }
    }
}
