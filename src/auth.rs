//! Authentication and authorization: optional bearer tokens from the configuration, stored
//! as SHA-256 hashes and compared in constant time, each with permissions per topic-name
//! pattern. With no token configured, every request is allowed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do on the topics its pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Produce to the topic (creating it when `auto_create_topics` is on).
    Produce,
    /// Read the topic's records and its description, and commit and read consumer group
    /// offsets for it.
    Consume,
    /// Create and delete the topic.
    Admin,
}

/// One grant: a topic-name pattern (`*` matches any run of characters) and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub topics: String,
    pub allow: Vec<Permission>,
}

/// A token, as configured: the hex SHA-256 of the secret (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs.
    pub name: String,
    /// SHA-256 of the token, in hex: `mapq token hash` prints it (`printf %s "$TOKEN" |
    /// sha256sum` too: its trailing `  -` is accepted).
    pub sha256: String,
    pub grants: Vec<Grant>,
}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No tokens are configured: everything is allowed.
    Anyone,
    /// A configured token.
    Token { name: String, grants: Vec<Grant> },
}

impl Principal {
    /// Whether the principal may do `what` on `topic`.
    pub fn may(&self, what: Permission, topic: &str) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Token { grants, .. } => grants
                .iter()
                .any(|g| g.allow.contains(&what) && matches(&g.topics, topic)),
        }
    }

    /// Whether the principal holds any permission on `topic` (it is listed to it).
    pub fn sees(&self, topic: &str) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Token { grants, .. } => grants
                .iter()
                .any(|g| !g.allow.is_empty() && matches(&g.topics, topic)),
        }
    }

    /// Whether the principal holds `what` on any topic at all.
    pub fn holds(&self, what: Permission) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Token { grants, .. } => grants.iter().any(|g| g.allow.contains(&what)),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::Anyone => "anyone",
            Principal::Token { name, .. } => name,
        }
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| matches(rest, &tail[i..]))
        }
    }
}

/// The configured tokens, ready to check requests against.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<([u8; 32], TokenConfig)>,
}

impl Tokens {
    /// Parses the configured hashes; a malformed one is named.
    pub fn new(configs: &[TokenConfig]) -> Result<Self, String> {
        let mut tokens = Vec::with_capacity(configs.len());
        for t in configs {
            // `sha256sum` prints `<hash>  -` for its standard input: take the hash.
            let hex = t.sha256.trim().trim_end_matches('-').trim_end();
            let hash = decode_hex32(hex)
                .ok_or_else(|| format!("token {:?}: sha256 must be 64 hex digits", t.name))?;
            tokens.push((hash, t.clone()));
        }
        Ok(Tokens { tokens })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Who presents `bearer` (the token after `Bearer `), if anyone configured. Every
    /// configured hash is compared, in constant time, whatever matches.
    pub fn authenticate(&self, bearer: Option<&str>) -> Option<Principal> {
        if self.tokens.is_empty() {
            return Some(Principal::Anyone);
        }
        let presented: [u8; 32] = Sha256::digest(bearer?.as_bytes()).into();
        let mut found = None;
        for (hash, config) in &self.tokens {
            if bool::from(hash.ct_eq(&presented)) && found.is_none() {
                found = Some(Principal::Token {
                    name: config.name.clone(),
                    grants: config.grants.clone(),
                });
            }
        }
        found
    }
}

/// The hex SHA-256 of a token, as the `sha256` of its configuration wants it.
pub fn token_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token: 32 bytes from the operating system's generator, in hex.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("*", "anything"));
        assert!(matches("orders", "orders"));
        assert!(!matches("orders", "orders2"));
        assert!(matches("orders*", "orders.eu"));
        assert!(matches("*.eu", "orders.eu"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn tokens_are_checked_by_hash() {
        let hash: String = Sha256::digest(b"s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let tokens = Tokens::new(&[TokenConfig {
            name: "app".into(),
            sha256: hash,
            grants: vec![Grant {
                topics: "orders*".into(),
                allow: vec![Permission::Produce],
            }],
        }])
        .unwrap();
        assert!(tokens.authenticate(None).is_none());
        assert!(tokens.authenticate(Some("wrong")).is_none());
        let p = tokens.authenticate(Some("s3cret")).unwrap();
        assert!(p.may(Permission::Produce, "orders.eu"));
        assert!(!p.may(Permission::Consume, "orders.eu"));
        assert!(!p.may(Permission::Produce, "audit"));
        // As `sha256sum` prints it, with `  -` after the hash.
        let pasted = Tokens::new(&[TokenConfig {
            name: "pasted".into(),
            sha256: format!("{}  -\n", token_hash("s3cret")),
            grants: vec![],
        }])
        .unwrap();
        assert!(pasted.authenticate(Some("s3cret")).is_some());
        assert!(Tokens::new(&[TokenConfig {
            name: "bad".into(),
            sha256: "xyz".into(),
            grants: vec![],
        }])
        .is_err());
    }
}
