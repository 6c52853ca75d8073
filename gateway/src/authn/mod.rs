//! Who is asking: session tokens, sign-in (OIDC, then a WebAuthn device ceremony) and the
//! [`Subject`] every access decision is made about. Modules, lowest first:
//!
//! * `tokens`: session tokens (EdDSA JWT, `kid` rotation), verified against an injected time.
//! * `oidc`: the OpenID Connect relying party (code flow + PKCE, one-time CLI codes).
//! * `subject`: [`Subject`], built once from verified claims and the connection.
//! * `device_table`: the registered devices and revoked users, as token checks read them.
//! * `devices`: device trust — the WebAuthn relying party and ceremonies, their routes and
//!   page.
//! * `verify`: [`Authn`], the service every listener and the broker use: bearer token →
//!   claims → revocation checks → subject.
//! * `issue`: [`Issuer`], which ends a sign-in by minting the session token (`auth.login`).
//! * `signin`: [`SignIn`], the `/auth/*` and `/v1/whoami` routes.

mod device_table;
pub mod devices;
pub mod issue;
pub mod oidc;
pub mod one_time;
pub mod signin;
mod subject;
pub mod tokens;
mod verify;

pub use device_table::{DeviceTable, DeviceView};
pub use issue::Issuer;
pub use signin::{SessionControl, SignIn};
pub use subject::Subject;
pub use verify::{token_refusal, Authn};
