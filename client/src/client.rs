//! The HTTP calls a worker makes: register, heartbeat, deregister.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::Error;

/// Default time a request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A registry client. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base_url: String,
    token: Option<String>,
    timeout: Duration,
}

impl ClientBuilder {
    /// A bearer token sent with every request (`Authorization: Bearer <token>`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long one request may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client, or why these settings cannot work.
    pub fn build(self) -> Result<Client, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: self.base_url.clone(),
            reason: reason.to_string(),
        };
        let base = Url::parse(self.base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("must be an http:// or https:// URL"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("must not have a query or a fragment"));
        }
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::InvalidToken)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("dals-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Build)?;
        Ok(Client { http, base })
    }
}

/// What a worker registers as.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Registration {
    name: String,
    worker_type: String,
    api_url: String,
    user_id: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    metadata: Map<String, Value>,
}

impl Registration {
    /// A registration of `name` (e.g. `Josephine-user_123`) of `worker_type` (a catalog key
    /// such as `truemark`), reachable at `api_url`, for `user_id`.
    pub fn new(
        name: impl Into<String>,
        worker_type: impl Into<String>,
        api_url: impl Into<String>,
        user_id: impl Into<String>,
    ) -> Self {
        Registration {
            name: name.into(),
            worker_type: worker_type.into(),
            api_url: api_url.into(),
            user_id: user_id.into(),
            metadata: Map::new(),
        }
    }

    /// Replaces the metadata (a JSON object the registry keeps with the deployment).
    pub fn metadata(mut self, metadata: Map<String, Value>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Adds one metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The worker name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers with `client`: the same as [`Client::register`].
    pub async fn register(&self, client: &Client) -> Result<Registered, Error> {
        client.register(self).await
    }
}

/// The registry's answer to a registration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Registered {
    pub worker_name: String,
    pub worker_type: String,
    /// `DMN-XX-YY`.
    pub model_number: String,
    /// This deployment's serial number, e.g. `DMN-TM-01-A7F3B9E1-1B48B`.
    pub serial_number: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub deployed_iso: Option<String>,
    /// Notes, e.g. a worker type missing from the catalog.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The heartbeat interval the registry asks for (absent from older registries).
    #[serde(default)]
    pub heartbeat_interval_secs: Option<f64>,
    /// Commands for this deployment (a new deployment has none).
    #[serde(default)]
    pub commands: Vec<Command>,
}

impl Registered {
    /// The heartbeat interval the registry asks for, when it said one that makes sense.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        interval(self.heartbeat_interval_secs)
    }
}

/// A command from the registry for this deployment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Command {
    /// Acknowledged by this id.
    pub id: i64,
    /// The command word, e.g. `restart`; see [`Command::kind`].
    pub command: String,
    /// Why it was sent (an operator's words, or the registry's remediation policy).
    #[serde(default)]
    pub reason: String,
    /// `operator` or `remediation`.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// The commands this client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Restart the work loop.
    Restart,
    /// A command newer than this client.
    Unknown,
}

impl Command {
    /// What the command asks.
    pub fn kind(&self) -> CommandKind {
        match self.command.as_str() {
            "restart" => CommandKind::Restart,
            _ => CommandKind::Unknown,
        }
    }
}

/// The registry's answer to a heartbeat that carried the serial number.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HeartbeatReply {
    pub status: String,
    pub worker: String,
    #[serde(default)]
    pub heartbeat_interval_secs: Option<f64>,
    /// Open commands for this deployment, oldest first; repeated until acknowledged.
    #[serde(default)]
    pub commands: Vec<Command>,
}

impl HeartbeatReply {
    /// The heartbeat interval the registry asks for, when it said one that makes sense.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        interval(self.heartbeat_interval_secs)
    }
}

/// A positive, finite interval; anything else is ignored.
fn interval(secs: Option<f64>) -> Option<Duration> {
    secs.and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
}

impl Client {
    /// A client of the registry at `base_url` (e.g. `http://dals-controller:8003`; a trailing
    /// `/api` is accepted too).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client with default settings.
    pub fn new(base_url: impl Into<String>) -> Result<Client, Error> {
        Client::builder(base_url).build()
    }

    /// The registry's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Registers (a new deployment with a new serial number; a previous deployment of the
    /// same name is closed).
    pub async fn register(&self, registration: &Registration) -> Result<Registered, Error> {
        let body = serde_json::to_value(registration)
            .map_err(|e| Error::Protocol(format!("cannot encode the registration: {e}")))?;
        self.call(
            Method::POST,
            &["register"],
            None,
            Some(body),
            &registration.name,
            None,
        )
        .await
    }

    /// One heartbeat of deployment `serial_number`, acknowledging the commands in `acked`.
    pub async fn heartbeat(
        &self,
        worker_name: &str,
        serial_number: &str,
        acked: &[i64],
    ) -> Result<HeartbeatReply, Error> {
        let mut body = json!({ "worker_name": worker_name, "serial_number": serial_number });
        if !acked.is_empty() {
            body["acked_commands"] = json!(acked);
        }
        self.call(
            Method::POST,
            &["heartbeat"],
            None,
            Some(body),
            worker_name,
            Some(serial_number),
        )
        .await
    }

    /// Deregisters deployment `serial_number` of `worker_name` (its graceful shutdown).
    /// Idempotent; refused with [`Error::Superseded`] when a newer deployment exists.
    pub async fn deregister(&self, worker_name: &str, serial_number: &str) -> Result<(), Error> {
        let _: Value = self
            .call(
                Method::DELETE,
                &[worker_name],
                Some(("serial_number", serial_number)),
                None,
                worker_name,
                Some(serial_number),
            )
            .await?;
        Ok(())
    }

    /// `<base>/api/workers/<segments...>`, each segment percent-encoded.
    pub(crate) fn endpoint(&self, segments: &[&str]) -> Result<Url, Error> {
        let mut url = self.base.clone();
        let has_api = url
            .path_segments()
            .is_some_and(|mut s| s.rfind(|seg| !seg.is_empty()) == Some("api"));
        {
            let mut path = url.path_segments_mut().map_err(|()| Error::InvalidUrl {
                url: self.base.to_string(),
                reason: "cannot hold a path".to_string(),
            })?;
            path.pop_if_empty();
            if !has_api {
                path.push("api");
            }
            path.push("workers");
            path.extend(segments);
        }
        Ok(url)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<(&str, &str)>,
        body: Option<Value>,
        worker: &str,
        serial_number: Option<&str>,
    ) -> Result<T, Error> {
        let mut url = self.endpoint(segments)?;
        if let Some((key, value)) = query {
            url.query_pairs_mut().append_pair(key, value);
        }
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(Error::from_transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(Error::from_transport)?;
        if !status.is_success() {
            return Err(Error::from_answer(
                status.as_u16(),
                retry_after,
                &bytes,
                worker,
                serial_number,
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Protocol(format!(
                "{status} answer is not the expected JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_built_from_the_base_url() {
        for base in [
            "http://registry:8003",
            "http://registry:8003/",
            "http://registry:8003/api",
            "http://registry:8003/api/",
        ] {
            let c = Client::new(base).unwrap();
            assert_eq!(
                c.endpoint(&["register"]).unwrap().as_str(),
                "http://registry:8003/api/workers/register",
                "{base}"
            );
        }
        let c = Client::new("http://proxy/dals").unwrap();
        assert_eq!(
            c.endpoint(&["rack/7 node"]).unwrap().as_str(),
            "http://proxy/dals/api/workers/rack%2F7%20node"
        );
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(matches!(
            Client::new("registry:8003"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            Client::new("ftp://registry"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            Client::builder("http://r").token("a\nb").build(),
            Err(Error::InvalidToken)
        ));
    }

    #[test]
    fn registration_body() {
        let r = Registration::new("w", "truemark", "http://localhost:8080", "u");
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"name": "w", "worker_type": "truemark",
                   "api_url": "http://localhost:8080", "user_id": "u"})
        );
        let r = r.meta("port", 8080);
        assert_eq!(
            serde_json::to_value(&r).unwrap()["metadata"],
            json!({"port": 8080})
        );
    }

    #[test]
    fn odd_intervals_are_ignored() {
        assert_eq!(interval(Some(0.25)), Some(Duration::from_millis(250)));
        assert_eq!(interval(Some(0.0)), None);
        assert_eq!(interval(Some(-1.0)), None);
        assert_eq!(interval(Some(f64::NAN)), None);
        assert_eq!(interval(None), None);
    }
}
