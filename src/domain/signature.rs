//! Webhook signatures: HMAC-SHA256 over `"<timestamp>.<body>"` with the endpoint's secret.
//!
//! The one implementation, used by the registry to sign, by the example receiver and the tests
//! to verify. Signing the timestamp with the body lets a receiver refuse replays of old
//! requests; comparing in constant time keeps the secret from leaking through timing.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Header with the Unix time (seconds) the request was signed at.
pub const TIMESTAMP_HEADER: &str = "x-dals-timestamp";
/// Header with `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-dals-signature";
/// Header with the event kind (`offline`, `stale`, ...).
pub const EVENT_HEADER: &str = "x-dals-event";
/// Header with the delivery id: the same on every retry of one delivery, for deduplication.
pub const DELIVERY_HEADER: &str = "x-dals-delivery";
/// How far a receiver should let a signature's timestamp stray from its own clock.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

const SCHEME: &str = "sha256=";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-DALS-Signature` value for `body` signed at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("{SCHEME}{}", hex::encode(digest))
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The timestamp header is missing or not an integer.
    BadTimestamp,
    /// The timestamp is further than the tolerance from the receiver's clock.
    OutsideTolerance { age_secs: i64 },
    /// The signature header is missing or not `sha256=<64 hex digits>`.
    Malformed,
    /// The signature does not match the body, timestamp and secret.
    Mismatch,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::BadTimestamp => {
                write!(f, "{TIMESTAMP_HEADER} is missing or not Unix seconds")
            }
            SignatureError::OutsideTolerance { age_secs } => write!(
                f,
                "{TIMESTAMP_HEADER} is {age_secs} s away from this receiver's clock (a replay?)"
            ),
            SignatureError::Malformed => {
                write!(f, "{SIGNATURE_HEADER} is missing or not sha256=<hex>")
            }
            SignatureError::Mismatch => write!(f, "signature does not match"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Checks a request: `timestamp` and `signature` are the header values as received, `now` the
/// receiver's Unix time. The timestamp must lie within `tolerance_secs` of `now`.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp
        .map(str::trim)
        .ok_or(SignatureError::BadTimestamp)?;
    let signed_at: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let age_secs = now.saturating_sub(signed_at);
    if age_secs.saturating_abs() > tolerance_secs {
        return Err(SignatureError::OutsideTolerance { age_secs });
    }
    let expected = signature
        .map(str::trim)
        .and_then(|s| s.strip_prefix(SCHEME))
        .and_then(|h| hex::decode(h).ok())
        .filter(|bytes| bytes.len() == 32)
        .ok_or(SignatureError::Malformed)?;
    mac(secret, timestamp, body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'topsecret-0123456789'
        assert_eq!(
            sign(b"topsecret-0123456789", 1_700_000_000, br#"{"a":1}"#),
            "sha256=626e5ba229f6bb6d3f4106bca9a65587340c1de8729475535aca9ac9323003ff"
        );
    }

    #[test]
    fn round_trip_and_refusals() {
        let secret = b"topsecret-0123456789";
        let body = br#"{"kind":"offline"}"#;
        let sig = sign(secret, 1000, body);
        assert_eq!(
            verify(secret, Some("1000"), Some(&sig), body, 1010, 300),
            Ok(())
        );
        assert_eq!(
            verify(secret, Some("1000"), Some(&sig), b"{}", 1010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"another-secret-xyz",
                Some("1000"),
                Some(&sig),
                body,
                1010,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is signed: changing it breaks the signature.
        assert_eq!(
            verify(secret, Some("1001"), Some(&sig), body, 1010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(secret, Some("1000"), Some(&sig), body, 1301, 300),
            Err(SignatureError::OutsideTolerance { age_secs: 301 })
        );
        assert_eq!(
            verify(secret, Some("1000"), Some(&sig), body, 699, 300),
            Err(SignatureError::OutsideTolerance { age_secs: -301 })
        );
        assert_eq!(
            verify(secret, None, Some(&sig), body, 1000, 300),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(secret, Some("soon"), Some(&sig), body, 1000, 300),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(secret, Some("1000"), None, body, 1000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(secret, Some("1000"), Some(&sig[7..]), body, 1000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(secret, Some("1000"), Some("sha256=abcd"), body, 1000, 300),
            Err(SignatureError::Malformed)
        );
    }
}
