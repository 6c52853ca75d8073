//! The sign-in confirmation code: `postern login` prints it and sends it with the sign-in
//! (`cli_code`); the gateway keeps it with the pending sign-in and shows it on the device page,
//! which starts no WebAuthn ceremony until the person confirms that it is the code their own
//! terminal printed. A sign-in that someone else started on a shared machine (their loopback
//! redirect, their challenge) then shows a code the person never saw.
//!
//! Format: `XXXX-XXXX`, eight characters from an alphabet without look-alikes (no `0 O 1 I`),
//! 40 bits. The code is not a secret from the person at the browser; its job is to tie the
//! page to one terminal, as the device-code confirmations of `gh auth login` and the Azure CLI.

use std::fmt;

/// The characters a code is drawn from (32: five bits each).
pub const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Characters in a code, without the dash.
pub const LEN: usize = 8;

/// A well-formed confirmation code, in its canonical form `XXXX-XXXX` (serialised as that
/// string; deserialising validates it again).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfirmCode(String);

impl TryFrom<String> for ConfirmCode {
    type Error = CodeError;
    fn try_from(s: String) -> Result<Self, CodeError> {
        ConfirmCode::parse(&s)
    }
}

impl From<ConfirmCode> for String {
    fn from(c: ConfirmCode) -> String {
        c.0
    }
}

/// Why a string is not a confirmation code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("the confirmation code is {0} characters long; expected XXXX-XXXX")]
    Length(usize),
    #[error("the confirmation code has a character outside {}", std::str::from_utf8(ALPHABET).unwrap_or("its alphabet"))]
    Alphabet,
    #[error("the random number generator failed")]
    Random,
}

impl ConfirmCode {
    /// A fresh random code.
    pub fn generate() -> Result<ConfirmCode, CodeError> {
        let bytes = crate::ids::random_bytes(LEN).map_err(|_| CodeError::Random)?;
        let chars: String = bytes
            .iter()
            .map(|b| ALPHABET[usize::from(b % 32)] as char)
            .collect();
        Ok(ConfirmCode(format!("{}-{}", &chars[..4], &chars[4..])))
    }

    /// Parses outside input: exactly `XXXX-XXXX` (the dash may be left out; lower case is
    /// accepted) from [`ALPHABET`]. Anything longer is refused before it is looked at.
    pub fn parse(s: &str) -> Result<ConfirmCode, CodeError> {
        let b = s.as_bytes();
        let chars: Vec<u8> = match b.len() {
            9 if b[4] == b'-' => b[..4].iter().chain(&b[5..]).copied().collect(),
            LEN => b.to_vec(),
            n => return Err(CodeError::Length(n)),
        };
        let chars: Vec<u8> = chars.iter().map(u8::to_ascii_uppercase).collect();
        if !chars.iter().all(|c| ALPHABET.contains(c)) {
            return Err(CodeError::Alphabet);
        }
        // All ASCII from the alphabet: valid UTF-8.
        let chars = String::from_utf8_lossy(&chars).into_owned();
        Ok(ConfirmCode(format!("{}-{}", &chars[..4], &chars[4..])))
    }

    /// `XXXX-XXXX`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` (outside input, e.g. from the device page) is this code, compared in
    /// constant time after normalising it.
    pub fn matches(&self, other: &str) -> bool {
        match ConfirmCode::parse(other) {
            Ok(o) => crate::ids::ct_eq(o.0.as_bytes(), self.0.as_bytes()),
            Err(_) => false,
        }
    }
}

impl fmt::Display for ConfirmCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConfirmCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfirmCode({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_parse_and_differ() {
        let a = ConfirmCode::generate().unwrap();
        let b = ConfirmCode::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 9);
        assert_eq!(&a.as_str()[4..5], "-");
        assert_eq!(ConfirmCode::parse(a.as_str()).unwrap(), a);
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
    }

    #[test]
    fn parse_normalises_and_refuses() {
        assert_eq!(
            ConfirmCode::parse("abcd-2345").unwrap().as_str(),
            "ABCD-2345"
        );
        assert_eq!(
            ConfirmCode::parse("ABCD2345").unwrap().as_str(),
            "ABCD-2345"
        );
        assert_eq!(ConfirmCode::parse("ABCD-23"), Err(CodeError::Length(7)));
        assert_eq!(ConfirmCode::parse("ABCD-234"), Err(CodeError::Alphabet));
        assert_eq!(ConfirmCode::parse(""), Err(CodeError::Length(0)));
        assert_eq!(
            ConfirmCode::parse(&"A".repeat(10_000)),
            Err(CodeError::Length(10_000))
        );
        // Look-alikes and anything else outside the alphabet.
        assert_eq!(ConfirmCode::parse("ABCD-0000"), Err(CodeError::Alphabet));
        assert_eq!(ConfirmCode::parse("ABCD-IIII"), Err(CodeError::Alphabet));
        assert_eq!(ConfirmCode::parse("ABC--2345"), Err(CodeError::Alphabet));
        assert_eq!(ConfirmCode::parse("ABCD_2345"), Err(CodeError::Length(9)));
        assert!(ConfirmCode::parse("ABCDé234").is_err());
        let c = ConfirmCode::parse("ABCD-2345").unwrap();
        assert!(c.matches("abcd2345"));
        assert!(!c.matches("ABCD-2346"));
        assert!(!c.matches("ABCD-2345x"));
        // Serialised as the string; deserialising checks it again.
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"ABCD-2345\"");
        assert_eq!(
            serde_json::from_str::<ConfirmCode>("\"ABCD-2345\"").unwrap(),
            c
        );
        assert!(serde_json::from_str::<ConfirmCode>("\"ABCD-0000\"").is_err());
    }
}
