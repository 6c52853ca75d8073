//! DICOM inspection on the connector (issue #17): for a tunnel whose `CONNECT` carries a
//! [`postern_proto::dicom::DicomPermit`], the connector relays the association with
//! [`relay_inspected`] instead of the opaque relay.
//!
//! * [`pdu`]: the PDU header, the small PDUs (via `dicom-ul`), the A-ASSOCIATE-RJ and A-ABORT
//!   the connector answers with, command sets and query identifiers (via `dicom-object`).
//! * [`inspect`]: the relay itself, which enforces the permit (calling and called AE titles,
//!   DIMSE services) and reports [`postern_proto::dicom::DicomRecord`]s.
//! * [`sessions`]: the records of each session until the gateway's events stream takes them.

pub mod inspect;
pub mod pdu;
pub mod sessions;

pub use inspect::{refusal, relay_inspected, Summary};
pub use sessions::Sessions;
