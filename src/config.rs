//! Typed settings, layered as Rocket layers its own: defaults in code, then `Rocket.toml` (profile-aware),
//! then `ROCKET_*` and `UPSHOT_*` environment variables. Validated once at start.

use std::path::PathBuf;

use figment::providers::{Env, Serialized};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::domain::ImageFormat;

const MIB: u64 = 1024 * 1024;
/// What a multipart form may carry beyond its file (the description, the boundaries, the CSRF token).
pub const FORM_OVERHEAD_BYTES: u64 = MIB;

/// Where `scripts/fetch-onnxruntime.sh` installs the ONNX Runtime library.
pub const DEFAULT_ORT_LIB: &str = "target/onnxruntime/libonnxruntime.so.1.31.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifierKind {
    Log,
    Sns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Local,
    S3,
}

/// Everything Upshot reads from configuration. Each field's default is documented in README.md and in
/// `Rocket.toml`; a test keeps the three in step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where the embedded defaults (SQLite file, local objects, generated secret) live.
    pub data_dir: PathBuf,
    /// `postgres://…`, `sqlite://PATH` or a plain SQLite path. Unset: `<data_dir>/upshot.sqlite3`.
    pub database_url: Option<String>,
    pub database_pool_size: u32,
    /// Seconds to wait for a pooled connection before answering 503.
    pub database_timeout_secs: u64,
    pub store: StoreKind,
    /// Directory of the local object store. Unset: `<data_dir>/objects`.
    pub local_store_dir: Option<PathBuf>,
    pub s3_bucket: Option<String>,
    pub s3_prefix: String,
    pub s3_force_path_style: bool,
    /// Overrides the SDK's region chain (`AWS_REGION`, profile, instance metadata).
    pub s3_region: Option<String>,
    /// Overrides `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for an S3-compatible endpoint.
    pub s3_endpoint_url: Option<String>,
    /// The longest one S3 call (with its retries) may take before its request gets 503 `STORE_UNAVAILABLE`.
    pub s3_timeout_secs: u64,
    /// Objects of an upload whose row was never written (the process died in between) are removed after this.
    pub orphan_grace_secs: u64,
    /// `upshot reconcile` leaves objects younger than this alone: an upload may still be writing its row.
    pub reconcile_grace_secs: u64,
    /// Where `upshot reconcile` sends its figures as StatsD gauges (the CloudWatch agent listens there on the
    /// instances); unset, they go to the log and `/metrics` only.
    pub statsd_addr: Option<std::net::SocketAddr>,
    /// Bearer key for admin routes; admin routes answer 403 while it is unset.
    pub admin_api_key: Option<String>,
    /// Key that derives delete tokens. Generated into the data dir when unset on SQLite; required on
    /// PostgreSQL so that every instance derives the same tokens.
    pub secret_key: Option<String>,
    pub max_upload_bytes: u64,
    /// The largest file a direct upload session accepts (`POST /api/v1/uploads`): sent straight to the store,
    /// so it may exceed `max_upload_bytes`.
    pub direct_upload_max_bytes: u64,
    /// The upload page sends every file by a direct upload session, not only those over `max_upload_bytes`.
    pub direct_uploads_always: bool,
    /// How long a direct upload's URL stays valid; a session not completed twice as long after is swept.
    pub upload_url_ttl_secs: u64,
    /// Finished direct upload sessions are removed this long after they finished (their images stay).
    pub upload_session_retention_hours: u64,
    pub max_image_width: u32,
    pub max_image_height: u32,
    pub max_image_pixels: u64,
    /// Frames of an animated GIF, PNG or WebP (all are stored and served).
    pub max_frames: u64,
    /// Frames × width × height of an animation.
    pub max_animation_pixels: u64,
    pub max_description_chars: usize,
    pub accepted_formats: Vec<String>,
    /// Longest side of the thumbnail, in pixels.
    pub thumbnail_size: u32,
    /// Store identical (sanitized) bytes once.
    pub dedup: bool,
    /// Image decoding jobs that may run at once; 0 means one per CPU core.
    pub cpu_slots: usize,
    /// How long an upload waits for a free CPU slot before 503 `BUSY`.
    pub cpu_wait_ms: u64,
    /// Upload bytes held in memory at once, across all requests; an upload that finds no room within
    /// `cpu_wait_ms` gets 503 `BUSY`. Memory follows this budget, not the number of connections.
    pub upload_budget_bytes: u64,
    /// Multipart bodies being spooled to disk (under the data directory) at once, counted by their declared
    /// length before any of it is read; over it, a request waits up to `cpu_wait_ms`, then gets 503 `BUSY`.
    pub spool_quota_bytes: u64,
    pub static_dir: PathBuf,
    /// Directory of `manifest.json` and the model files it names.
    pub models_dir: PathBuf,
    /// `libonnxruntime.so`; `scripts/fetch-onnxruntime.sh` puts it at the default path.
    pub ort_lib: PathBuf,
    /// Model sessions that run at once; 0 means one per CPU core.
    pub inference_sessions: usize,
    /// ONNX Runtime threads inside one session.
    pub inference_threads: usize,
    /// How long a request waits for a free session before 503 `INFERENCE_BUSY`.
    pub inference_wait_ms: u64,
    /// How many labels the classifier reports.
    pub top_k: usize,
    /// `log` (one log line per notification) or `sns`.
    pub notifier: NotifierKind,
    pub sns_topic_arn: Option<String>,
    /// Overrides the SDK's region chain for SNS.
    pub sns_region: Option<String>,
    /// Overrides `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL`.
    pub sns_endpoint_url: Option<String>,
    /// An SQS queue that receives the bucket's `ObjectCreated` events for `incoming/`: every instance
    /// long-polls it and processes the direct uploads their clients never completed. Unset: no polling.
    pub upload_queue_url: Option<String>,
    /// Overrides `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL`.
    pub sqs_endpoint_url: Option<String>,
    /// The address people reach Upshot at, for links in notifications.
    /// Where people reach Upshot. Unset: where the server listens (see `AppConfig::follow_listen_address`);
    /// given empty (the `aws` profile), the deployment must set it.
    pub public_url: Option<String>,
    /// Attempts before a notification is parked as `failed`; 0: no limit but the retry horizon.
    pub outbox_max_attempts: i32,
    /// How long a notification is retried (with capped backoff) before it is parked as `failed`.
    pub outbox_retry_horizon_hours: u64,
    /// How often the relay looks for due notifications besides being woken by uploads.
    pub outbox_poll_ms: u64,
    /// How long a claimed notification stays with one relay before another may take it.
    pub outbox_lease_secs: u64,
    /// First retry delay; each further attempt doubles it.
    pub outbox_backoff_base_ms: u64,
    pub outbox_backoff_cap_secs: u64,
    /// An unsent notification older than this marks readiness `degraded` (still 200).
    pub outbox_degraded_after_secs: u64,
    /// Notifications the topic (so each subscriber) gets in an hour at most; past it, uploads are summed up in
    /// one digest every `notify_digest_secs`. 0: no limit.
    pub notify_max_per_hour: u32,
    pub notify_digest_secs: u64,
    /// Proxies in front of Upshot that append to `X-Forwarded-For` (1 behind an ALB); 0 trusts no header.
    pub trusted_proxy_hops: usize,
    /// Client connections open at once; the next one is answered 503 `BUSY` and closed.
    pub max_connections: usize,
    /// Connections one client address may hold open at once where it reaches the socket itself
    /// (`trusted_proxy_hops` = 0); the next one is answered 429 `TOO_MANY_REQUESTS` and closed. Behind proxies
    /// the socket sees only them, and `max_intake_in_flight_per_client` does this work.
    pub max_connections_per_client: usize,
    /// From the first byte of a request head to its end; a slower client is disconnected.
    pub header_timeout_secs: u64,
    /// A connection with no request under way and nothing sent either way is closed after this. Behind an ALB,
    /// keep it above the ALB's idle timeout (60 s), so that the ALB closes first.
    pub idle_timeout_secs: u64,
    /// A request body must average at least this many bytes per second once it has had `body_grace_secs`;
    /// 0 turns the check off (the idle timeout still applies).
    pub min_body_bytes_per_sec: u64,
    pub body_grace_secs: u64,
    /// Intake requests (uploads, classifications, WebSocket messages, direct-upload sessions and completions)
    /// one client address may make per minute, sustained; over it, 429 `TOO_MANY_REQUESTS` with `Retry-After`.
    pub client_requests_per_minute: u32,
    /// How many of those a client may make at once before the per-minute rate applies.
    pub client_request_burst: u32,
    /// Intake requests one client address may have under way at once (their bodies being received or
    /// processed); the next is answered 429 `TOO_MANY_REQUESTS` before its body is read.
    pub max_intake_in_flight_per_client: usize,
    /// WebSockets open at once, in all and per client address.
    pub max_websockets: usize,
    pub max_websockets_per_client: usize,
    /// The largest WebSocket message (one image); a larger one closes the socket (status 1009).
    pub websocket_max_message_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_pool_size: 8,
            database_timeout_secs: 5,
            store: StoreKind::Local,
            local_store_dir: None,
            s3_bucket: None,
            s3_prefix: String::new(),
            s3_force_path_style: false,
            s3_region: None,
            s3_endpoint_url: None,
            s3_timeout_secs: 20,
            orphan_grace_secs: 600,
            reconcile_grace_secs: 3600,
            statsd_addr: None,
            admin_api_key: None,
            secret_key: None,
            max_upload_bytes: 20 * MIB,
            direct_upload_max_bytes: 64 * MIB,
            upload_url_ttl_secs: 900,
            upload_session_retention_hours: 24,
            direct_uploads_always: false,
            max_image_width: 12_000,
            max_image_height: 12_000,
            max_image_pixels: 50_000_000,
            max_frames: 1_000,
            max_animation_pixels: 300_000_000,
            max_description_chars: 1_000,
            accepted_formats: ["jpeg", "png", "webp", "gif"].map(String::from).to_vec(),
            thumbnail_size: 320,
            dedup: true,
            cpu_slots: 0,
            cpu_wait_ms: 10_000,
            upload_budget_bytes: 128 * MIB,
            spool_quota_bytes: 512 * MIB,
            static_dir: PathBuf::from("static"),
            models_dir: PathBuf::from("models"),
            ort_lib: PathBuf::from(DEFAULT_ORT_LIB),
            inference_sessions: 0,
            inference_threads: 1,
            inference_wait_ms: 2_000,
            top_k: 5,
            notifier: NotifierKind::Log,
            sns_topic_arn: None,
            sns_region: None,
            sns_endpoint_url: None,
            upload_queue_url: None,
            sqs_endpoint_url: None,
            public_url: None,
            outbox_max_attempts: 0,
            outbox_retry_horizon_hours: 48,
            outbox_poll_ms: 5_000,
            outbox_lease_secs: 60,
            outbox_backoff_base_ms: 2_000,
            outbox_backoff_cap_secs: 600,
            outbox_degraded_after_secs: 300,
            notify_max_per_hour: 60,
            notify_digest_secs: 300,
            trusted_proxy_hops: 0,
            max_connections: 1024,
            max_connections_per_client: 64,
            header_timeout_secs: 10,
            idle_timeout_secs: 75,
            min_body_bytes_per_sec: 1024,
            body_grace_secs: 10,
            client_requests_per_minute: 60,
            client_request_burst: 30,
            max_intake_in_flight_per_client: 8,
            max_websockets: 32,
            max_websockets_per_client: 4,
            websocket_max_message_bytes: 4 * MIB,
        }
    }
}

/// The longest one SNS publish may take; the outbox relay's leases are sized from it.
pub const SNS_PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Which database a URL points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(raw.to_owned()));
        }
        if raw.contains("://") && !raw.starts_with("sqlite://") {
            return Err(format!("unsupported scheme in {:?}: use postgres://… or sqlite://PATH", redact_url(raw)));
        }
        let path = raw.strip_prefix("sqlite://").unwrap_or(raw);
        if path.is_empty() {
            return Err("not set: give a postgres://… URL or a SQLite path (UPSHOT_DATABASE_URL)".into());
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgresql",
            DatabaseUrl::Sqlite(_) => "sqlite",
        }
    }
}

/// Hides the password of a connection URL so it can be logged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

/// Settings that passed validation, with the values derived from them.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub figment: Figment,
    pub settings: Settings,
    pub database: DatabaseUrl,
    pub accepted_formats: Vec<ImageFormat>,
    pub cpu_slots: usize,
    pub inference_sessions: usize,
}

impl AppConfig {
    /// The configuration of a normal start: defaults, `Rocket.toml`, environment.
    pub fn figment() -> Figment {
        Figment::from(rocket::Config::figment())
            .join(Serialized::defaults(Settings::default()))
            // UPSHOT_LOG is the log level, read by the logger; as a key it would reach Rocket as its old `log`.
            .merge(Env::prefixed("UPSHOT_").ignore(&["log"]).global())
    }

    pub fn load() -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment())
    }

    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        let database = match &settings.database_url {
            Some(url) => DatabaseUrl::parse(url).map_err(|reason| invalid("database_url", reason))?,
            None => DatabaseUrl::Sqlite(settings.data_dir.join("upshot.sqlite3")),
        };
        if settings.database_pool_size == 0 {
            return Err(invalid("database_pool_size", "must be at least 1"));
        }
        if settings.s3_timeout_secs == 0 {
            return Err(invalid("s3_timeout_secs", "must be at least 1"));
        }
        // An upload still storing its objects must not look dead: its S3 calls alone may take this long.
        if settings.orphan_grace_secs < 2 * settings.s3_timeout_secs {
            return Err(invalid("orphan_grace_secs", "must be at least twice s3_timeout_secs"));
        }
        if settings.client_requests_per_minute == 0 || settings.client_request_burst == 0 {
            return Err(invalid("client_requests_per_minute", "the rate and the burst must be at least 1"));
        }
        if settings.max_websockets == 0 || settings.max_websockets_per_client == 0 {
            return Err(invalid("max_websockets", "must be at least 1, as max_websockets_per_client"));
        }
        if settings.websocket_max_message_bytes == 0 {
            return Err(invalid("websocket_max_message_bytes", "must be at least 1"));
        }
        if settings.max_connections == 0 || settings.max_connections_per_client == 0 {
            return Err(invalid("max_connections", "must be at least 1, as max_connections_per_client"));
        }
        if settings.max_intake_in_flight_per_client == 0 {
            return Err(invalid("max_intake_in_flight_per_client", "must be at least 1"));
        }
        if settings.header_timeout_secs == 0 || settings.idle_timeout_secs == 0 || settings.body_grace_secs == 0 {
            return Err(invalid("header_timeout_secs", "connection timeouts must be at least 1 second"));
        }
        if settings.database_timeout_secs == 0 {
            return Err(invalid("database_timeout_secs", "must be at least 1"));
        }
        if settings.store == StoreKind::S3 {
            match settings.s3_bucket.as_deref() {
                None | Some("") => return Err(invalid("s3_bucket", "required when store = \"s3\"")),
                Some(bucket) if !valid_bucket_name(bucket) => {
                    return Err(invalid("s3_bucket", format!("{bucket:?} is not a valid S3 bucket name")))
                }
                Some(_) => {}
            }
        }
        if settings.s3_prefix.starts_with('/') || settings.s3_prefix.contains("..") {
            return Err(invalid("s3_prefix", "must be relative and must not contain `..`"));
        }
        if let Some(key) = &settings.admin_api_key {
            if key.len() < 16 {
                return Err(invalid("admin_api_key", "must be at least 16 characters"));
            }
        }
        match &settings.secret_key {
            Some(key) if key.len() < 32 => return Err(invalid("secret_key", "must be at least 32 characters")),
            None if matches!(database, DatabaseUrl::Postgres(_)) => {
                return Err(invalid(
                    "secret_key",
                    "required with PostgreSQL so that every instance derives the same delete tokens",
                ))
            }
            _ => {}
        }
        if settings.max_upload_bytes < 1024 {
            return Err(invalid("max_upload_bytes", "must be at least 1024"));
        }
        if settings.direct_upload_max_bytes < settings.max_upload_bytes {
            return Err(invalid("direct_upload_max_bytes", "must be at least max_upload_bytes"));
        }
        if !(60..=7 * 24 * 3600).contains(&settings.upload_url_ttl_secs) {
            return Err(invalid("upload_url_ttl_secs", "must be between 60 s and 7 days (S3's longest)"));
        }
        if settings.upload_budget_bytes < settings.max_upload_bytes {
            return Err(invalid(
                "upload_budget_bytes",
                "must be at least max_upload_bytes, so that the largest upload fits",
            ));
        }
        // A completed direct upload is read into memory whole, under the same budget as the form's.
        if settings.direct_upload_max_bytes > settings.upload_budget_bytes {
            return Err(invalid(
                "direct_upload_max_bytes",
                "must be at most upload_budget_bytes: a completed direct upload is held in memory",
            ));
        }
        if settings.spool_quota_bytes < settings.max_upload_bytes + FORM_OVERHEAD_BYTES
            || settings.spool_quota_bytes / 1024 > u64::from(u32::MAX)
        {
            return Err(invalid(
                "spool_quota_bytes",
                "must hold one whole form (max_upload_bytes + 1 MiB), below 4 TiB",
            ));
        }
        if settings.upload_budget_bytes / 1024 > u64::from(u32::MAX) {
            return Err(invalid("upload_budget_bytes", "must be below 4 TiB"));
        }
        if settings.max_image_width == 0 || settings.max_image_height == 0 || settings.max_image_pixels == 0 {
            return Err(invalid("max_image_pixels", "image limits must be positive"));
        }
        if settings.max_frames == 0 || settings.max_animation_pixels == 0 {
            return Err(invalid("max_frames", "animation limits must be positive"));
        }
        if !(16..=2048).contains(&settings.thumbnail_size) {
            return Err(invalid("thumbnail_size", "must be between 16 and 2048"));
        }
        let mut accepted_formats = Vec::new();
        for name in &settings.accepted_formats {
            let format = ImageFormat::from_name(name).ok_or_else(|| {
                invalid("accepted_formats", format!("unknown format {name:?} (jpeg, png, webp, gif)"))
            })?;
            accepted_formats.push(format);
        }
        if accepted_formats.is_empty() {
            return Err(invalid("accepted_formats", "must name at least one format"));
        }
        if settings.notifier == NotifierKind::Sns {
            match settings.sns_topic_arn.as_deref() {
                Some(arn) if arn.starts_with("arn:") && arn.split(':').count() == 6 => {}
                Some(arn) => return Err(invalid("sns_topic_arn", format!("{arn:?} is not an SNS topic ARN"))),
                None => return Err(invalid("sns_topic_arn", "required when notifier = \"sns\"")),
            }
        }
        match settings.public_url.as_deref() {
            Some("") => {
                return Err(invalid(
                    "public_url",
                    "required: the address people reach Upshot at, for links and cookies",
                ))
            }
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(invalid("public_url", "must start with http:// or https://"));
            }
            _ => {}
        }
        if settings.outbox_max_attempts < 0 || settings.outbox_retry_horizon_hours == 0 || settings.outbox_poll_ms == 0
        {
            return Err(invalid(
                "outbox_retry_horizon_hours",
                "outbox attempts, horizon and poll interval must be positive",
            ));
        }
        // A claim must outlast the publishes it covers, or another relay takes it over and publishes again.
        let publish = SNS_PUBLISH_TIMEOUT.as_secs();
        if settings.outbox_lease_secs < 2 * publish {
            return Err(invalid(
                "outbox_lease_secs",
                format!("must be at least {} (two SNS publish timeouts)", 2 * publish),
            ));
        }
        if !(1..=20).contains(&settings.top_k) {
            return Err(invalid("top_k", "must be between 1 and 20"));
        }
        if settings.inference_threads == 0 {
            return Err(invalid("inference_threads", "must be at least 1"));
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let or_cores = |n: usize| if n == 0 { cores } else { n };
        Ok(AppConfig {
            cpu_slots: or_cores(settings.cpu_slots),
            inference_sessions: or_cores(settings.inference_sessions),
            figment,
            settings,
            database,
            accepted_formats,
        })
    }

    pub fn local_store_dir(&self) -> PathBuf {
        self.settings.local_store_dir.clone().unwrap_or_else(|| self.settings.data_dir.join("objects"))
    }

    pub fn secret_key_file(&self) -> PathBuf {
        self.settings.data_dir.join("secret_key")
    }

    /// Rocket's own body limits, derived from ours so that one setting governs both.
    /// Links, cookies and direct-upload URLs follow `public_url`; where it is unset (the embedded default), it
    /// is the address the server listens on, so a changed port changes the links with it.
    pub fn follow_listen_address(&mut self, listening: std::net::SocketAddr) {
        if self.settings.public_url.is_none() {
            let mut reachable = listening;
            if reachable.ip().is_unspecified() {
                reachable.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            self.settings.public_url = Some(format!("http://{reachable}"));
        }
    }

    /// Where people reach Upshot, without a trailing slash (see `follow_listen_address`).
    pub fn public_url(&self) -> &str {
        self.settings.public_url.as_deref().unwrap_or_default().trim_end_matches('/')
    }

    pub fn rocket_figment(&self) -> Figment {
        let max = self.settings.max_upload_bytes;
        self.figment
            .clone()
            .merge(("limits.file", max))
            .merge(("limits.data-form", max + FORM_OVERHEAD_BYTES))
            .merge(("limits.bytes", max))
            .merge(("temp_dir", self.spool_dir()))
    }

    pub fn client_limits(&self) -> crate::client_limits::ClientLimitsConfig {
        let settings = &self.settings;
        crate::client_limits::ClientLimitsConfig {
            requests_per_minute: settings.client_requests_per_minute,
            burst: settings.client_request_burst,
            max_websockets: settings.max_websockets,
            max_websockets_per_client: settings.max_websockets_per_client,
            max_in_flight_per_client: settings.max_intake_in_flight_per_client,
        }
    }

    /// Where Rocket spools upload bodies: under the data directory, which the service owns and sweeps at
    /// start (a killed process leaves its spool files behind), not the shared system temp directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.settings.data_dir.join("spool")
    }
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_database_urls() {
        assert_eq!(DatabaseUrl::parse("postgres://u:p@h/db").unwrap().backend_name(), "postgresql");
        assert_eq!(DatabaseUrl::parse("sqlite://data/x.db").unwrap(), DatabaseUrl::Sqlite("data/x.db".into()));
        assert_eq!(DatabaseUrl::parse("x.db").unwrap(), DatabaseUrl::Sqlite("x.db".into()));
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn a_bad_setting_names_its_key() {
        let figment = AppConfig::figment().merge(("store", "s3"));
        let err = AppConfig::from_figment(figment).unwrap_err().to_string();
        assert!(err.contains("s3_bucket"), "{err}");
        let figment = AppConfig::figment().merge(("thumbnail_size", 4));
        let err = AppConfig::from_figment(figment).unwrap_err().to_string();
        assert!(err.contains("thumbnail_size"), "{err}");
        let figment = AppConfig::figment().merge(("database_url", "postgres://h/db"));
        let err = AppConfig::from_figment(figment).unwrap_err().to_string();
        assert!(err.contains("secret_key"), "{err}");
    }
}
