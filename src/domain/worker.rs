use std::fmt;
use std::str::FromStr;

/// Where a worker is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerStatus {
    Registered,
    Active,
    Stale,
    Offline,
    Deregistered,
}

impl WorkerStatus {
    pub const ALL: [WorkerStatus; 5] = [
        WorkerStatus::Registered,
        WorkerStatus::Active,
        WorkerStatus::Stale,
        WorkerStatus::Offline,
        WorkerStatus::Deregistered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Registered => "registered",
            WorkerStatus::Active => "active",
            WorkerStatus::Stale => "stale",
            WorkerStatus::Offline => "offline",
            WorkerStatus::Deregistered => "deregistered",
        }
    }
}

impl FromStr for WorkerStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                "must be one of registered, active, stale, offline, deregistered".to_string()
            })
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Path segments under `/api/workers/` that are routes, so no worker may be named so.
const RESERVED_NAMES: [&str; 7] = [
    "list",
    "status",
    "register",
    "heartbeat",
    "models",
    "events",
    "liveness",
];

fn text_rule(value: &str, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if len == 0 || len > max {
        return Err(format!("must be 1-{max} characters (got {len})"));
    }
    if value.chars().all(char::is_whitespace) {
        return Err("must not be blank".to_string());
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_string());
    }
    if value.chars().any(is_invisible) {
        return Err(
            "must not contain invisible formatting characters (zero-width spaces, byte-order \
             marks, direction overrides)"
                .to_string(),
        );
    }
    // " w" and "w" would be two workers that look the same in every table.
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err("must not start or end with white space".to_string());
    }
    Ok(())
}

/// Characters that show as nothing (or reorder what follows), so two different names would
/// look the same: soft hyphen, zero-width and joiner characters, direction marks, embeddings
/// and isolates, word joiners, the Mongolian vowel separator, byte-order marks.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// An absolute URL of one of `schemes` with a host, written out as such: `url` would also
/// accept `http:x` or ` http://x` and normalise them, but the string stored is the one sent.
pub(crate) fn is_absolute_url(value: &str, schemes: &[&str]) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let host_part = rest.split(['/', '?', '#']).next().unwrap_or_default();
    schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
        && !host_part.is_empty()
        && !value.chars().any(|c| c.is_whitespace() || is_invisible(c))
        && url::Url::parse(value).is_ok_and(|url| url.host().is_some())
}

/// A worker name: 1-128 characters, no control characters, not a route of the API.
pub fn validate_worker_name(name: &str) -> Result<(), String> {
    text_rule(name, 128)?;
    if RESERVED_NAMES.contains(&name) || name == "." || name == ".." {
        return Err(format!(
            "{name:?} is reserved by the API and cannot name a worker"
        ));
    }
    Ok(())
}

/// A worker type as sent at registration: 1-128 characters, no control characters.
pub fn validate_worker_type(worker_type: &str) -> Result<(), String> {
    text_rule(worker_type, 128)
}

/// A user id: 1-128 characters, no control characters.
pub fn validate_user_id(user_id: &str) -> Result<(), String> {
    text_rule(user_id, 128)
}

/// An `api_url`: an absolute http or https URL with a host, at most 2048 characters.
pub fn validate_api_url(api_url: &str) -> Result<(), String> {
    let rule = "must be an http:// or https:// URL with a host, at most 2048 characters";
    if api_url.chars().count() > 2048
        || api_url.chars().any(char::is_control)
        || !is_absolute_url(api_url, &["http", "https"])
    {
        return Err(rule.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_worker_name("Josephine-user_123").is_ok());
        assert!(validate_worker_name("a/b c?d#é").is_ok());
        assert!(validate_worker_name("").is_err());
        assert!(validate_worker_name(&"x".repeat(129)).is_err());
        assert!(validate_worker_name(&"é".repeat(128)).is_ok());
        assert!(validate_worker_name("bad\nname").is_err());
        assert!(validate_worker_name("list").is_err());
        assert!(validate_worker_name(" ").is_err());
        assert!(validate_worker_name("w ").is_err());
        assert!(validate_worker_name("\u{3000}w").is_err());
        assert!(validate_worker_name("a b").is_ok());
        assert!(validate_user_id("u\t").is_err());
        for invisible in ["x\u{200B}", "\u{FEFF}x", "x\u{180E}", "a\u{202E}b"] {
            assert!(validate_worker_name(invisible).is_err(), "{invisible:?}");
        }
    }

    #[test]
    fn urls() {
        assert!(validate_api_url("http://localhost:8080").is_ok());
        assert!(validate_api_url("https://w.example/x").is_ok());
        assert!(validate_api_url("ftp://x").is_err());
        assert!(validate_api_url("localhost:8080").is_err());
        assert!(validate_api_url(&format!("http://h/{}", "a".repeat(2048))).is_err());
        for normalised_by_url in ["http:x", "http:/x", "http:\\\\x", " http://x", "http://x y"] {
            assert!(
                validate_api_url(normalised_by_url).is_err(),
                "{normalised_by_url}"
            );
        }
        assert!(validate_api_url("HTTP://H:1/p?q#f").is_ok());
    }

    #[test]
    fn statuses_round_trip() {
        for s in WorkerStatus::ALL {
            assert_eq!(s.as_str().parse::<WorkerStatus>().unwrap(), s);
        }
        assert!("dead".parse::<WorkerStatus>().is_err());
    }
}
