//! Settings, layered: built-in defaults < `dals.toml` (from `--config`) < environment < flags.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

/// Every setting of the registry.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub registry: RegistrySettings,
    pub liveness: LivenessSettings,
    pub retention: RetentionSettings,
    pub remediation: RemediationSettings,
    pub webhooks: WebhookSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

/// Where Prometheus metrics are served.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// A separate `host:port` for `/metrics`; empty serves it on the API listener.
    pub listen: String,
}

impl MetricsSettings {
    /// The separate metrics address, if one is set.
    pub fn listen_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "invalid settings: DALS_METRICS__LISTEN must be host:port such as 0.0.0.0:9090, \
                 got {listen:?}"
            )
        })
    }
}

/// Where and how the HTTP server listens.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: IpAddr,
    pub port: u16,
    /// Longest time a request may take before it is answered 503.
    pub request_timeout_secs: f64,
    /// How long in-flight requests get to finish on shutdown.
    pub shutdown_timeout_secs: f64,
}

/// The PostgreSQL connection.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503.
    pub acquire_timeout_secs: f64,
    /// Create the database named in the URL when it does not exist.
    pub create_if_missing: bool,
}

/// Registration rules.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistrySettings {
    /// Answer 422 to a `worker_type` that is not in the catalog instead of registering it
    /// under the Generic family.
    pub reject_unknown_worker_types: bool,
}

/// When workers go stale and offline.
#[derive(Debug, Clone, Deserialize)]
pub struct LivenessSettings {
    pub stale_after_secs: f64,
    pub offline_after_secs: f64,
    pub sweep_interval_secs: f64,
    /// A sweep that would mark more than this fraction of the live fleet stale is held.
    pub brake_fraction: f64,
    /// ... but only when it would mark at least this many workers.
    pub brake_min_workers: i64,
    /// The heartbeat interval the registry asks of workers (in register and heartbeat
    /// answers), so the fleet is retuned without redeploying workers.
    pub heartbeat_interval_secs: f64,
}

/// What the registry does about workers in trouble.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RemediationSettings {
    /// Queue a restart command for a worker's deployment when it goes stale, delivered on its
    /// next heartbeat.
    pub restart_on_stale: bool,
}

/// How long history is kept.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    pub heartbeat_days: i32,
}

/// Webhook delivery, and the endpoints of the settings file.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Attempts per delivery before it is marked failed.
    pub max_attempts: i32,
    /// Wait after the first failed attempt; doubled after each further failure.
    pub backoff_base_secs: f64,
    /// Longest wait between two attempts.
    pub backoff_max_secs: f64,
    /// How long one attempt may take.
    pub timeout_secs: f64,
    /// How often the delivery task looks for due deliveries when no event wakes it.
    pub poll_interval_secs: f64,
    /// `[[webhooks.endpoints]]` of the settings file, upserted by URL at start-up.
    #[serde(default)]
    pub endpoints: Vec<WebhookEndpointSettings>,
}

/// One `[[webhooks.endpoints]]` entry of the settings file.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookEndpointSettings {
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl WebhookSettings {
    /// Checks the delivery settings and every endpoint of the file by the API's rules.
    fn validate(&self) -> anyhow::Result<()> {
        use crate::domain::{
            parse_event_kinds, validate_webhook_description, validate_webhook_secret,
            validate_webhook_url,
        };
        for (value, name) in [
            (self.backoff_base_secs, "DALS_WEBHOOKS__BACKOFF_BASE_SECS"),
            (self.backoff_max_secs, "DALS_WEBHOOKS__BACKOFF_MAX_SECS"),
            (self.timeout_secs, "DALS_WEBHOOKS__TIMEOUT_SECS"),
            (self.poll_interval_secs, "DALS_WEBHOOKS__POLL_INTERVAL_SECS"),
        ] {
            if !(value.is_finite() && value > 0.0) {
                bail!("invalid settings: {name} must be a positive number of seconds, got {value}");
            }
        }
        if self.backoff_max_secs < self.backoff_base_secs {
            bail!(
                "invalid settings: DALS_WEBHOOKS__BACKOFF_MAX_SECS ({}) must be at least \
                 DALS_WEBHOOKS__BACKOFF_BASE_SECS ({})",
                self.backoff_max_secs,
                self.backoff_base_secs
            );
        }
        if !(1..=1000).contains(&self.max_attempts) {
            bail!(
                "invalid settings: DALS_WEBHOOKS__MAX_ATTEMPTS must be 1-1000, got {}",
                self.max_attempts
            );
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let field = |name: &str, rule: String| {
                anyhow::anyhow!("invalid settings: webhooks.endpoints[{i}].{name} {rule}")
            };
            validate_webhook_url(&endpoint.url).map_err(|r| field("url", r))?;
            validate_webhook_secret(&endpoint.secret).map_err(|r| field("secret", r))?;
            validate_webhook_description(&endpoint.description)
                .map_err(|r| field("description", r))?;
            parse_event_kinds(&endpoint.events).map_err(|(_, r)| field("events", r))?;
        }
        Ok(())
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `auto` (pretty on a terminal, JSON otherwise), `pretty` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `dals_registry=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

/// Values given on the command line; they override every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub database_url: Option<String>,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/dals";

const DEFAULTS: &str = r#"
[server]
host = "0.0.0.0"
port = 8003
request_timeout_secs = 30.0
shutdown_timeout_secs = 10.0

[database]
url = "postgres://postgres@localhost:5432/dals"
max_connections = 10
acquire_timeout_secs = 3.0
create_if_missing = true

[registry]
reject_unknown_worker_types = false

[liveness]
stale_after_secs = 90.0
offline_after_secs = 600.0
sweep_interval_secs = 5.0
brake_fraction = 0.5
brake_min_workers = 10
heartbeat_interval_secs = 30.0

[retention]
heartbeat_days = 7

[remediation]
restart_on_stale = false

[webhooks]
max_attempts = 15
backoff_base_secs = 5.0
backoff_max_secs = 3600.0
timeout_secs = 10.0
poll_interval_secs = 1.0

[metrics]
listen = ""

[log]
format = "auto"
level = "info"
"#;

impl Settings {
    /// Loads the layers: defaults, the optional file, `DALS_*` and `DATABASE_URL`, then flags.
    pub fn load(config_file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = config_file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        builder = builder
            .add_source(
                Environment::with_prefix("DALS")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true),
            )
            .set_override_option("database.url", std::env::var("DATABASE_URL").ok())?
            .set_override_option("server.host", overrides.host.map(|h| h.to_string()))?
            .set_override_option("server.port", overrides.port.map(i64::from))?
            .set_override_option("database.url", overrides.database_url.clone())?;
        let settings: Settings = builder
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the rules between settings that the types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        fn positive(value: f64, name: &str) -> anyhow::Result<()> {
            if !(value.is_finite() && value > 0.0) {
                bail!("invalid settings: {name} must be a positive number of seconds, got {value}");
            }
            Ok(())
        }
        positive(
            self.server.request_timeout_secs,
            "DALS_SERVER__REQUEST_TIMEOUT_SECS",
        )?;
        positive(
            self.server.shutdown_timeout_secs,
            "DALS_SERVER__SHUTDOWN_TIMEOUT_SECS",
        )?;
        positive(
            self.database.acquire_timeout_secs,
            "DALS_DATABASE__ACQUIRE_TIMEOUT_SECS",
        )?;
        positive(
            self.liveness.stale_after_secs,
            "DALS_LIVENESS__STALE_AFTER_SECS",
        )?;
        positive(
            self.liveness.offline_after_secs,
            "DALS_LIVENESS__OFFLINE_AFTER_SECS",
        )?;
        positive(
            self.liveness.sweep_interval_secs,
            "DALS_LIVENESS__SWEEP_INTERVAL_SECS",
        )?;
        if self.liveness.offline_after_secs <= self.liveness.stale_after_secs {
            bail!(
                "invalid settings: DALS_LIVENESS__OFFLINE_AFTER_SECS ({}) must be greater than \
                 DALS_LIVENESS__STALE_AFTER_SECS ({})",
                self.liveness.offline_after_secs,
                self.liveness.stale_after_secs
            );
        }
        positive(
            self.liveness.heartbeat_interval_secs,
            "DALS_LIVENESS__HEARTBEAT_INTERVAL_SECS",
        )?;
        // A worker beating on the advertised interval must never look stale.
        if self.liveness.heartbeat_interval_secs >= self.liveness.stale_after_secs {
            bail!(
                "invalid settings: DALS_LIVENESS__HEARTBEAT_INTERVAL_SECS ({}) must be less than \
                 DALS_LIVENESS__STALE_AFTER_SECS ({})",
                self.liveness.heartbeat_interval_secs,
                self.liveness.stale_after_secs
            );
        }
        if !(self.liveness.brake_fraction > 0.0 && self.liveness.brake_fraction <= 1.0) {
            bail!(
                "invalid settings: DALS_LIVENESS__BRAKE_FRACTION must be in (0, 1], got {}",
                self.liveness.brake_fraction
            );
        }
        if self.liveness.brake_min_workers < 1 {
            bail!("invalid settings: DALS_LIVENESS__BRAKE_MIN_WORKERS must be at least 1");
        }
        if self.database.max_connections < 2 {
            bail!("invalid settings: DALS_DATABASE__MAX_CONNECTIONS must be at least 2");
        }
        if self.retention.heartbeat_days < 1 {
            bail!("invalid settings: DALS_RETENTION__HEARTBEAT_DAYS must be at least 1");
        }
        self.metrics.listen_addr()?;
        self.webhooks.validate()?;
        url::Url::parse(&self.database.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"))
            .with_context(|| {
                format!(
                    "invalid settings: DATABASE_URL must be a postgres:// URL, got {}",
                    redact_url(&self.database.url)
                )
            })?;
        Ok(())
    }

    /// The address the HTTP server binds.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.host, self.server.port)
    }
}

/// Converts a settings value in seconds to a `Duration`.
pub fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value)
}

/// The URL with any password replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load(None, &Overrides::default()).unwrap();
        assert_eq!(s.server.port, 8003);
        assert_eq!(s.liveness.stale_after_secs, 90.0);
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
    }
}
