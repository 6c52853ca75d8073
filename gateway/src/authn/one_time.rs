//! One-time codes that stand for a session token in the store's one-time code table (so any
//! replica can redeem them), each in a scope of its own (`web` codes for an application's
//! host, `ticket`s that end a browser sign-in) and bound to a challenge the redeemer must
//! match. Keys are hashed; a code is taken once.

use postern_proto::ids::{ct_eq, random_bytes, sha256_hex};

use crate::state::{CliCodeRec, SharedStore, StoreError};

/// How long a code can be redeemed.
pub const TTL: u64 = 60;

fn key(scope: &str, code: &str) -> String {
    sha256_hex(format!("{scope}:{code}").as_bytes())
}

/// A new code in `scope` standing for `token`, bound to `challenge`.
pub async fn put(
    store: &SharedStore,
    now: u64,
    scope: &str,
    challenge: String,
    token: String,
) -> Result<String, StoreError> {
    use base64::Engine as _;
    let code = random_bytes(32)
        .map(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
        .map_err(|_| StoreError::Backend("random number generator failed".into()))?;
    let rec = CliCodeRec {
        challenge,
        token,
        expires: now + TTL,
    };
    store.put_cli_code(key(scope, &code), rec, now).await?;
    Ok(code)
}

/// The token `code` stands for, if it is live in `scope`, unused, and bound to `challenge`
/// (compared in constant time). The code is used up either way.
pub async fn take(
    store: &SharedStore,
    now: u64,
    scope: &str,
    code: &str,
    challenge: &str,
) -> Option<String> {
    if code.is_empty() || code.len() > 128 {
        return None;
    }
    let rec = store.take_cli_code(key(scope, code), now).await.ok()??;
    ct_eq(challenge.as_bytes(), rec.challenge.as_bytes()).then_some(rec.token)
}
