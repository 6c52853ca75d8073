//! Random identifiers and constant-time comparison of secrets.

use ring::rand::{SecureRandom, SystemRandom};

/// `n` random bytes from the operating system.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, ring::error::Unspecified> {
    let mut buf = vec![0u8; n];
    SystemRandom::new().fill(&mut buf)?;
    Ok(buf)
}

/// A random identifier with a readable prefix, e.g. `sess-3f9c…` (128 bits of randomness).
pub fn random_id(prefix: &str) -> Result<String, ring::error::Unspecified> {
    Ok(format!("{prefix}-{}", hex(&random_bytes(16)?)))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// SHA-256 as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Compares two secrets (or digests of secrets) in constant time.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_prefixed() {
        let a = random_id("sess").unwrap();
        let b = random_id("sess").unwrap();
        assert!(a.starts_with("sess-"));
        assert_eq!(a.len(), 5 + 32);
        assert_ne!(a, b);
    }

    #[test]
    fn hashes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
