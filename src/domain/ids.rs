//! Identifiers checked once at the edge, so an invalid one cannot exist past
//! the API layer. `parse` returns the reason a value is refused.

use std::fmt;

/// A queue's id: 1 to 64 characters of `[A-Za-z0-9._-]`. The character set
/// keeps ids safe inside Redis key names (no `{`, `}` or `:`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.len() > Self::MAX_LEN {
            return Err(format!(
                "must be at most {} characters, got {}",
                Self::MAX_LEN,
                value.len()
            ));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "may contain only A-Z, a-z, 0-9, '.', '_' and '-', found {c:?}"
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's id as the caller knows it (a session or account id): 1 to 128
/// bytes of UTF-8 without control characters. Opaque to the service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub const MAX_BYTES: usize = 128;

    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.len() > Self::MAX_BYTES {
            return Err(format!(
                "must be at most {} bytes, got {}",
                Self::MAX_BYTES,
                value.len()
            ));
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A caller-chosen id that makes an `AdmitBatch` retry safe: 1 to 128
/// characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_LEN: usize = 128;
    /// The start of the ids the service makes up.
    pub const GENERATED_PREFIX: &str = "auto:";

    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.len() > Self::MAX_LEN {
            return Err(format!(
                "must be at most {} characters, got {}",
                Self::MAX_LEN,
                value.len()
            ));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!(
                "may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-', found {c:?}"
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// A fresh id for a call whose caller gave none, so that a retry made
    /// below the API (a Redis client resending a script after a dropped
    /// connection) finds the first run's result instead of acting twice.
    /// Sixteen random bytes, so no two calls share one.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        // Without an entropy source the clock still gives a per-call value;
        // it only has to differ between calls of one process.
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes = nanos.to_le_bytes();
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("{}{hex}", Self::GENERATED_PREFIX))
    }

    /// Made by [`RequestId::generate`] (or given in its shape).
    pub fn is_generated(&self) -> bool {
        self.0.starts_with(Self::GENERATED_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A name for this process among the replicas: random, so a restarted pod
/// does not inherit its predecessor's reports or announcements.
pub fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_accept_the_documented_alphabet_only() {
        assert!(QueueId::parse("Sale-2026.final_1").is_ok());
        assert!(QueueId::parse(&"q".repeat(64)).is_ok());
        assert!(QueueId::parse("").is_err());
        assert!(QueueId::parse(&"q".repeat(65)).is_err());
        for bad in ["a b", "a{b}", "a:b", "é", "a/b"] {
            assert!(QueueId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn user_ids_are_bounded_in_bytes_and_free_of_control_characters() {
        assert!(UserId::parse("user@example.com").is_ok());
        assert!(UserId::parse("Zoë 🎟").is_ok());
        assert!(UserId::parse(&"u".repeat(128)).is_ok());
        assert!(UserId::parse(&"é".repeat(65)).is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::parse("a\u{7f}b").is_err());
    }
}
