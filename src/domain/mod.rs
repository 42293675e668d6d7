//! Identifiers and checked values that the rest of the code can trust once constructed.

pub mod event;
pub mod format;

pub use format::ImageFormat;

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// An image id: 128 random bits as 32 lowercase hex digits, so ids can be neither guessed nor enumerated.
/// Kept in the database as its text (`db/ids.rs`).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
#[serde(transparent)]
pub struct ImageId(String);

impl ImageId {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        ImageId(hex::encode(bytes))
    }

    /// Accepts only the exact shape `generate` makes; anything else is "not found", never a lookup.
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| ImageId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> rocket::request::FromParam<'a> for ImageId {
    type Error = &'a str;

    fn from_param(param: &'a str) -> Result<Self, Self::Error> {
        ImageId::parse(param).ok_or(param)
    }
}

/// `n` random bytes, base64url without padding.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The server's secret key and what it signs: delete tokens, admin sessions and direct-upload URLs. A delete
/// token is an HMAC of the image id, so an idempotent retry can hand the same token out again; the database
/// keeps only its SHA-256, so a database dump reveals no token.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn new(secret: &str) -> Self {
        Signer { key: secret.as_bytes().to_vec() }
    }

    pub fn delete_token(&self, id: &ImageId) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(b"upshot delete token v1:");
        mac.update(id.as_str().as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A signature of `message` under the same key, for other server-issued values (admin sessions, upload
    /// URLs); its domain separation keeps it from ever equalling a delete token.
    pub fn sign(&self, message: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(b"upshot signature v1:");
        mac.update(message.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    pub fn hash_token(token: &str) -> String {
        sha256_hex(token.as_bytes())
    }

    /// Compares hashes in constant time so response timing says nothing about a stored hash.
    pub fn token_matches(token: &str, stored_hash: &str) -> bool {
        constant_time_eq(Self::hash_token(token).as_bytes(), stored_hash.as_bytes())
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes differ (secrets, tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Option<Self> {
        (!raw.is_empty() && raw.len() <= 255 && raw.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| IdempotencyKey(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as stored: one client's keys never meet another's, so a key guessed or reused by someone else
    /// replays nothing of theirs.
    pub fn scoped_to(&self, client: &str) -> IdempotencyKey {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new().chain_update(client).chain_update([0]).chain_update(&self.0).finalize();
        IdempotencyKey(format!("client:{}", hex::encode(digest)))
    }
}

/// A filename as the client sent it, reduced to something safe to store and show: the last path segment,
/// no control characters, at most 255 characters. It is never used to build a path or a storage key.
pub fn display_filename(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last.chars().filter(|c| !c.is_control()).take(255).collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then(|| cleaned.to_owned())
}

/// Timestamps are kept to the millisecond so both databases return exactly what was written.
pub fn now() -> chrono::NaiveDateTime {
    use chrono::Timelike;
    let now = chrono::Utc::now().naive_utc();
    now.with_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000).unwrap_or(now)
}

/// Human-readable byte size: "20 MiB", "1.5 KiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_byte_sizes() {
        assert_eq!(human_bytes(20 << 20), "20 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10), "10 B");
    }

    use super::*;

    #[test]
    fn ids_are_random_and_strictly_parsed() {
        let a = ImageId::generate();
        assert_ne!(a, ImageId::generate());
        assert_eq!(ImageId::parse(a.as_str()), Some(a.clone()));
        assert!(ImageId::parse("../etc/passwd").is_none());
        assert!(ImageId::parse(&a.as_str().to_uppercase()).is_none());
    }

    #[test]
    fn delete_tokens_are_stable_per_id_and_checked_by_hash() {
        let tokens = Signer::new("0123456789abcdef0123456789abcdef");
        let id = ImageId::generate();
        let token = tokens.delete_token(&id);
        assert_eq!(token, tokens.delete_token(&id));
        assert_ne!(token, tokens.delete_token(&ImageId::generate()));
        assert!(Signer::token_matches(&token, &Signer::hash_token(&token)));
        assert!(!Signer::token_matches("wrong", &Signer::hash_token(&token)));
    }

    #[test]
    fn filenames_lose_paths_and_controls() {
        assert_eq!(display_filename("../../etc/passwd.jpg").as_deref(), Some("passwd.jpg"));
        assert_eq!(display_filename("C:\\x\\a\u{7}b.png").as_deref(), Some("ab.png"));
        assert_eq!(display_filename(".."), None);
        assert_eq!(display_filename(&"a".repeat(1000)).unwrap().len(), 255);
    }
}
