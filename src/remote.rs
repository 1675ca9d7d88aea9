//! Calls to a running registry's HTTP API, shared by `dals verify` and the operator commands
//! (`dals workers ...`, `dals catalog ...`).

use std::fmt;
use std::time::Duration;

use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::Value;

/// How long one call may take before the command gives up.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the registry failed.
#[derive(Debug)]
pub enum CallError {
    /// Nothing answered at the address.
    Unreachable { url: String },
    /// The request failed on the way (timeout, reset, bad URL).
    Transport { url: String, error: reqwest::Error },
    /// The answer could not be read, or was not JSON.
    NotJson { status: StatusCode, error: String },
    /// The registry refused: a non-2xx status with its JSON error body.
    Api { status: StatusCode, body: Value },
}

impl CallError {
    /// One line for an operator: the API's own message when it gave one.
    pub fn message(&self) -> String {
        match self {
            CallError::Api { status, body } => match body["message"].as_str() {
                Some(message) => format!("{message} (HTTP {})", status.as_u16()),
                None => self.to_string(),
            },
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Unreachable { url } => {
                write!(f, "cannot reach {url}: is the registry running?")
            }
            CallError::Transport { url, error } => write!(f, "request to {url} failed: {error}"),
            CallError::NotJson { status, error } => {
                write!(f, "answer is not JSON ({status}): {error}")
            }
            CallError::Api { status, body } => write!(f, "HTTP {status}: {body}"),
        }
    }
}

impl std::error::Error for CallError {}

/// An HTTP client with the commands' timeout.
/// Checks a `--url` value: an http(s) URL, for clap's value parser (a bad one exits 2).
pub fn parse_base_url(value: &str) -> Result<String, String> {
    match url::Url::parse(value) {
        Ok(url) if url.scheme() == "http" && url.host().is_some() => Ok(value.to_string()),
        Ok(url) if url.scheme() == "https" => Err(
            "https is not supported by this build; use http:// (or a local TLS-terminating proxy)"
                .to_string(),
        ),
        _ => Err(format!(
            "{value:?} is not a registry URL such as http://127.0.0.1:8003"
        )),
    }
}

pub fn client() -> Result<Client, reqwest::Error> {
    Client::builder().timeout(TIMEOUT).build()
}

/// A registry's answer: parsed, and as sent (key order kept) for printing.
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: Value,
    pub text: String,
}

/// GETs `url` and parses the JSON answer.
pub async fn get_json(client: &Client, url: &str) -> Result<Value, CallError> {
    send_json(client.get(url)).await
}

/// Sends a request and parses the JSON answer; a non-2xx status is a `CallError::Api`.
pub async fn send_json(request: RequestBuilder) -> Result<Value, CallError> {
    send(request).await.map(|answer| answer.body)
}

/// Sends a request and keeps both the parsed answer and its text.
pub async fn send(request: RequestBuilder) -> Result<Answer, CallError> {
    let response = request.send().await.map_err(|error| {
        let url = error.url().map(|u| u.to_string()).unwrap_or_default();
        if error.is_connect() {
            CallError::Unreachable { url }
        } else {
            CallError::Transport { url, error }
        }
    })?;
    let status = response.status();
    let not_json = |error: String| CallError::NotJson { status, error };
    let text = response
        .text()
        .await
        .map_err(|e| not_json(format!("error reading response body: {e}")))?;
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| not_json(format!("error decoding response body: {e}")))?;
    if status.is_success() {
        Ok(Answer { body, text })
    } else {
        Err(CallError::Api { status, body })
    }
}

/// Percent-encodes a worker name (or worker type) as one path segment.
pub fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
