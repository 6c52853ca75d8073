//! Device trust: WebAuthn ceremonies at the end of sign-in (webauthn-rs 0.6, passkeys with
//! user verification required), the registered-device table, and posture binding.
//!
//! * `ceremony`: [`Ceremonies`] — the WebAuthn relying party ([`relying_party`]) and the
//!   ceremonies in flight, kept in the state store.
//! * `routes`: [`DeviceTrust`] — the `/auth/device/*` routes.
//! * `page`: the device page.

mod ceremony;
mod page;
mod routes;

#[cfg(test)]
mod flow_tests;

pub use ceremony::{relying_party, Binding, Ceremonies, COOKIE};
pub use page::page;
#[doc(hidden)]
pub use routes::fuzz_body;
pub use routes::{cli_wait, handle, DeviceTrust, Step};
