//! Webhook endpoints' rules: which events they may subscribe to, their URL and secret, and
//! the retry schedule of their deliveries.

/// Every kind of `worker_events`: what webhooks subscribe to and event streams filter on.
pub const EVENT_KINDS: [&str; 9] = [
    "registered",
    "re_registered",
    "first_heartbeat",
    "stale",
    "offline",
    "recovered",
    "deregistered",
    "brake_held",
    "brake_released",
];

/// Shorthand for both brake kinds.
const BRAKE: &str = "brake";
const BRAKE_KINDS: [&str; 2] = ["brake_held", "brake_released"];

/// Longest endpoint description.
pub const WEBHOOK_DESCRIPTION_MAX_CHARS: usize = 1024;

/// Expands and checks a subscription list: each entry a kind of [`EVENT_KINDS`] or `brake`
/// (`brake_held` and `brake_released`). Returns the kinds once each, in the order of
/// [`EVENT_KINDS`], or the index of the first bad entry with the rule it broke.
pub fn parse_event_kinds(events: &[String]) -> Result<Vec<String>, (Option<usize>, String)> {
    if events.is_empty() {
        return Err((None, "must list at least one event kind".to_string()));
    }
    let mut wanted = [false; EVENT_KINDS.len()];
    for (index, event) in events.iter().enumerate() {
        let single = [event.as_str()];
        let expanded: &[&str] = if event == BRAKE {
            &BRAKE_KINDS
        } else {
            &single
        };
        for kind in expanded {
            match EVENT_KINDS.iter().position(|k| k == kind) {
                Some(i) => wanted[i] = true,
                None => return Err(unknown(index, event)),
            }
        }
    }
    Ok(EVENT_KINDS
        .iter()
        .zip(wanted)
        .filter(|(_, on)| *on)
        .map(|(kind, _)| kind.to_string())
        .collect())
}

fn unknown(index: usize, event: &str) -> (Option<usize>, String) {
    (
        Some(index),
        format!(
            "{event:?} is not an event kind; use one of {}, or brake (both brake kinds)",
            EVENT_KINDS.join(", ")
        ),
    )
}

/// A webhook URL: absolute `http://` with a host, no credentials, at most 2048 characters.
/// This build's HTTP client has no TLS, so `https://` is refused rather than failing at every
/// delivery; put a TLS-terminating proxy in front of an https receiver.
pub fn validate_webhook_url(url: &str) -> Result<(), String> {
    let rule = "must be an http:// URL with a host, at most 2048 characters";
    if url.chars().count() > 2048
        || url.chars().any(char::is_control)
        || !super::worker::is_absolute_url(url, &["http", "https"])
    {
        return Err(rule.to_string());
    }
    let parsed = url::Url::parse(url).map_err(|_| rule.to_string())?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(
                "https:// is not supported by this build (its HTTP client has no TLS); use an \
                 http:// URL, e.g. of a TLS-terminating proxy"
                    .to_string(),
            );
        }
        _ => return Err(rule.to_string()),
    }
    if parsed.host().is_none() {
        return Err(rule.to_string());
    }
    // `http://:@h` has neither a user name nor a password, but an `@` in the authority
    // is a credentials part all the same.
    let authority = url.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or_default()
    });
    if !parsed.username().is_empty() || parsed.password().is_some() || authority.contains('@') {
        return Err(
            "must not carry credentials (they would be shown by GET /api/webhooks); the \
             signature authenticates the registry"
                .to_string(),
        );
    }
    Ok(())
}

/// A webhook secret: 16-256 characters without control characters.
pub fn validate_webhook_secret(secret: &str) -> Result<(), String> {
    let len = secret.chars().count();
    if !(16..=256).contains(&len) {
        return Err(format!("must be 16-256 characters (got {len})"));
    }
    if secret.chars().any(char::is_control) {
        return Err("must not contain control characters".to_string());
    }
    Ok(())
}

/// An endpoint description: at most 1024 characters.
pub fn validate_webhook_description(description: &str) -> Result<(), String> {
    let len = description.chars().count();
    if len > WEBHOOK_DESCRIPTION_MAX_CHARS {
        return Err(format!(
            "must be at most {WEBHOOK_DESCRIPTION_MAX_CHARS} characters (got {len})"
        ));
    }
    // Line breaks and tabs may lay out a longer description; other control characters are
    // noise in every listing.
    if description
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("must not contain control characters other than line breaks and tabs".into());
    }
    Ok(())
}

/// Seconds to wait before the attempt after `failed_attempts` failures: `base` doubled per
/// failure after the first, at most `max`.
pub fn backoff_secs(base: f64, max: f64, failed_attempts: i32) -> f64 {
    let doublings = failed_attempts.saturating_sub(1).clamp(0, 62);
    (base * 2f64.powi(doublings)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(list: &[&str]) -> Result<Vec<String>, (Option<usize>, String)> {
        parse_event_kinds(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn event_kinds() {
        assert_eq!(
            kinds(&["offline", "brake", "stale", "offline"]).unwrap(),
            ["stale", "offline", "brake_held", "brake_released"]
        );
        assert_eq!(kinds(&["brake_released"]).unwrap(), ["brake_released"]);
        assert_eq!(kinds(&["stale", "dead"]).unwrap_err().0, Some(1));
        assert_eq!(kinds(&[]).unwrap_err().0, None);
    }

    #[test]
    fn descriptions_and_credentials() {
        assert!(validate_webhook_description("restart\noffline workers\t(ops)").is_ok());
        assert!(validate_webhook_description("bell\u{7}").is_err());
        assert!(validate_webhook_url("http://:@h/x").is_err());
        assert!(validate_webhook_url("http://h/x?to=a@b").is_ok());
    }

    #[test]
    fn urls() {
        assert!(validate_webhook_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(validate_webhook_url("http://orchestrator.internal/dals?x=1").is_ok());
        assert!(validate_webhook_url("https://example.com/hook").is_err());
        assert!(validate_webhook_url("ftp://example.com").is_err());
        assert!(validate_webhook_url("example.com/hook").is_err());
        assert!(validate_webhook_url("http://user:pw@example.com/").is_err());
        assert!(validate_webhook_url(&format!("http://h/{}", "a".repeat(2048))).is_err());
    }

    #[test]
    fn secrets() {
        assert!(validate_webhook_secret("0123456789abcdef").is_ok());
        assert!(validate_webhook_secret("short").is_err());
        assert!(validate_webhook_secret(&"x".repeat(257)).is_err());
        assert!(validate_webhook_secret("0123456789abcdef\n").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_secs(5.0, 3600.0, 1), 5.0);
        assert_eq!(backoff_secs(5.0, 3600.0, 2), 10.0);
        assert_eq!(backoff_secs(5.0, 3600.0, 4), 40.0);
        assert_eq!(backoff_secs(5.0, 3600.0, 30), 3600.0);
        assert_eq!(backoff_secs(0.2, 3600.0, 1000), 3600.0);
    }
}
