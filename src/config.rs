//! Typed settings, layered as Rocket layers its own: defaults in code, then `Rocket.toml` (profile-aware),
//! then `ROCKET_*` and `UPSHOT_*` environment variables. Validated once at start.

use std::path::PathBuf;

use figment::providers::{Env, Serialized};
use figment::Figment;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use crate::domain::ImageFormat;

const MIB: u64 = 1024 * 1024;
/// What a multipart form may carry beyond its file (the description, the boundaries, the CSRF token).
pub const FORM_OVERHEAD_BYTES: u64 = MIB;

/// Where `scripts/fetch-onnxruntime.sh` installs the ONNX Runtime library.
pub const DEFAULT_ORT_LIB: &str = "target/onnxruntime/libonnxruntime.so.1.31.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifierKind {
    #[default]
    Log,
    Sns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Local,
    S3,
}

/// Everything Upshot reads from configuration, in sections, one for each part of the service that reads it.
/// Operators set flat keys (`max_upload_bytes`, `UPSHOT_MAX_UPLOAD_BYTES`); each field's default is given
/// beside it, the one place defaults live, and README.md's table is checked against them.
#[derive(Debug, Clone, Serialize, SmartDefault)]
pub struct Settings {
    /// Where the embedded defaults (SQLite file, local objects, generated secret, upload spool) live.
    #[default(PathBuf::from("data"))]
    pub data_dir: PathBuf,
    #[serde(flatten)]
    pub database: DatabaseSettings,
    #[serde(flatten)]
    pub store: StoreSettings,
    #[serde(flatten)]
    pub reconcile: ReconcileSettings,
    #[serde(flatten)]
    pub keys: KeySettings,
    #[serde(flatten)]
    pub uploads: UploadSettings,
    #[serde(flatten)]
    pub images: ImageSettings,
    #[serde(flatten)]
    pub direct_uploads: DirectUploadSettings,
    #[serde(flatten)]
    pub inference: InferenceSettings,
    #[serde(flatten)]
    pub notify: NotifySettings,
    #[serde(flatten)]
    pub outbox: OutboxSettings,
    #[serde(flatten)]
    pub web: WebSettings,
    #[serde(flatten)]
    pub connections: ConnectionSettings,
    #[serde(flatten)]
    pub clients: ClientSettings,
}

impl Settings {
    /// Reads each section from the figment's flat keys. Sections are read one by one, not as one flattened
    /// struct, so that a value of the wrong type is reported with its key.
    fn extract(figment: &Figment) -> Result<Self, Box<figment::Error>> {
        Ok(Settings {
            data_dir: figment.extract_inner("data_dir")?,
            database: figment.extract()?,
            store: figment.extract()?,
            reconcile: figment.extract()?,
            keys: figment.extract()?,
            uploads: figment.extract()?,
            images: figment.extract()?,
            direct_uploads: figment.extract()?,
            inference: figment.extract()?,
            notify: figment.extract()?,
            outbox: figment.extract()?,
            web: figment.extract()?,
            connections: figment.extract()?,
            clients: figment.extract()?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct DatabaseSettings {
    /// `postgres://…`, `sqlite://PATH` or a plain SQLite path. Unset: `<data_dir>/upshot.sqlite3`.
    pub database_url: Option<String>,
    #[default(8)]
    pub database_pool_size: u32,
    /// Seconds to wait for a pooled connection before answering 503.
    #[default(5)]
    pub database_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct StoreSettings {
    #[serde(rename = "store")]
    pub kind: StoreKind,
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
    #[default(20)]
    pub s3_timeout_secs: u64,
    /// Objects of an upload whose row was never written (the process died in between) are removed after this.
    #[default(600)]
    pub orphan_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct ReconcileSettings {
    /// `upshot reconcile` leaves objects younger than this alone: an upload may still be writing its row.
    #[default(3600)]
    pub reconcile_grace_secs: u64,
    /// Where `upshot reconcile` and the readiness report send StatsD gauges (the CloudWatch agent listens
    /// there on the instances); unset, figures go to the log and `/metrics` only.
    pub statsd_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct KeySettings {
    /// Bearer key for admin routes; admin routes answer 403 while it is unset.
    pub admin_api_key: Option<String>,
    /// Key that derives delete tokens, admin sessions and upload URLs. Generated into the data dir when unset
    /// on SQLite; required on PostgreSQL so that every instance derives the same.
    pub secret_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct UploadSettings {
    #[default(20 * MIB)]
    pub max_upload_bytes: u64,
    #[default(1_000)]
    pub max_description_chars: usize,
    /// Store identical (sanitized) bytes once.
    #[default(true)]
    pub dedup: bool,
    /// Image decoding jobs that may run at once; 0 means one per CPU core (resolved at start).
    pub cpu_slots: usize,
    /// How long an upload waits for a free CPU slot, or room in the budgets below, before 503 `BUSY`.
    #[default(10_000)]
    pub cpu_wait_ms: u64,
    /// Upload bytes held in memory at once, across all requests: memory follows it, not the connections.
    #[default(128 * MIB)]
    pub upload_budget_bytes: u64,
    /// Multipart bodies being spooled to disk at once, counted by their declared length before any is read.
    #[default(512 * MIB)]
    pub spool_quota_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct ImageSettings {
    #[default(12_000)]
    pub max_image_width: u32,
    #[default(12_000)]
    pub max_image_height: u32,
    #[default(50_000_000)]
    pub max_image_pixels: u64,
    /// Frames of an animated GIF, PNG or WebP (all are stored and served).
    #[default(1_000)]
    pub max_frames: u64,
    /// Frames × width × height of an animation.
    #[default(300_000_000)]
    pub max_animation_pixels: u64,
    #[default(ImageFormat::ALL.to_vec())]
    pub accepted_formats: Vec<ImageFormat>,
    /// Longest side of the thumbnail, in pixels.
    #[default(320)]
    pub thumbnail_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct DirectUploadSettings {
    /// The largest file a direct upload session accepts: sent straight to the store, so it may exceed
    /// `max_upload_bytes`.
    #[default(64 * MIB)]
    pub direct_upload_max_bytes: u64,
    /// The upload page sends every file by a direct upload session, not only those over `max_upload_bytes`.
    pub direct_uploads_always: bool,
    /// How long a direct upload's URL stays valid; a session not completed twice as long after is swept.
    #[default(900)]
    pub upload_url_ttl_secs: u64,
    /// Finished direct upload sessions are removed this long after they finished (their images stay).
    #[default(24)]
    pub upload_session_retention_hours: u64,
    /// An SQS queue of the bucket's `ObjectCreated` events for `incoming/`: every instance long-polls it and
    /// processes the direct uploads their clients never completed. Unset: no polling.
    pub upload_queue_url: Option<String>,
    /// Overrides `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL`.
    pub sqs_endpoint_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct InferenceSettings {
    /// Directory of `manifest.json` and the model files it names.
    #[default(PathBuf::from("models"))]
    pub models_dir: PathBuf,
    /// `libonnxruntime.so`; `scripts/fetch-onnxruntime.sh` puts it at the default path.
    #[default(PathBuf::from(DEFAULT_ORT_LIB))]
    pub ort_lib: PathBuf,
    /// Model sessions that run at once; 0 means one per CPU core (resolved at start).
    pub inference_sessions: usize,
    /// ONNX Runtime threads inside one session.
    #[default(1)]
    pub inference_threads: usize,
    /// How long a request waits for a free session before 503 `INFERENCE_BUSY`.
    #[default(2_000)]
    pub inference_wait_ms: u64,
    /// How many labels the classifier reports.
    #[default(5)]
    pub top_k: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct NotifySettings {
    /// `log` (one log line per notification) or `sns`.
    pub notifier: NotifierKind,
    pub sns_topic_arn: Option<String>,
    /// Overrides the topic ARN's region for SNS.
    pub sns_region: Option<String>,
    /// Overrides `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL`.
    pub sns_endpoint_url: Option<String>,
    /// Notifications the topic (so each subscriber) gets in an hour at most; past it, uploads are summed up in
    /// one digest every `notify_digest_secs`. 0: no limit.
    #[default(60)]
    pub notify_max_per_hour: u32,
    #[default(300)]
    pub notify_digest_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct OutboxSettings {
    /// Attempts before a notification is parked as `failed`; 0: no limit but the retry horizon.
    pub outbox_max_attempts: i32,
    /// How long a notification is retried (with capped backoff) before it is parked as `failed`.
    #[default(48)]
    pub outbox_retry_horizon_hours: u64,
    /// How often the relay looks for due notifications besides being woken by uploads.
    #[default(5_000)]
    pub outbox_poll_ms: u64,
    /// How long a claimed notification stays with one relay before another may take it.
    #[default(60)]
    pub outbox_lease_secs: u64,
    /// First retry delay; each further attempt doubles it.
    #[default(2_000)]
    pub outbox_backoff_base_ms: u64,
    #[default(600)]
    pub outbox_backoff_cap_secs: u64,
    /// An unsent notification older than this marks readiness `degraded` (still 200).
    #[default(300)]
    pub outbox_degraded_after_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct WebSettings {
    /// Where people reach Upshot, for links, cookies and direct-upload URLs. Unset: where the server listens
    /// (see `AppConfig::follow_listen_address`); given empty (the `aws` profile), the deployment must set it.
    pub public_url: Option<String>,
    #[default(PathBuf::from("static"))]
    pub static_dir: PathBuf,
    /// Proxies in front of Upshot that append to `X-Forwarded-For` (1 behind an ALB); 0 trusts no header.
    pub trusted_proxy_hops: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct ConnectionSettings {
    /// Client connections open at once; the next one is answered 503 `BUSY` and closed.
    #[default(1024)]
    pub max_connections: usize,
    /// Connections one client address may hold open where it reaches the socket itself (no trusted proxy).
    #[default(64)]
    pub max_connections_per_client: usize,
    /// From the first byte of a request head to its end; a slower client is disconnected.
    #[default(10)]
    pub header_timeout_secs: u64,
    /// A connection with nothing under way is closed after this; behind an ALB, keep it above its 60 s.
    #[default(75)]
    pub idle_timeout_secs: u64,
    /// A request body must average at least this rate once it has had `body_grace_secs`; 0: no check.
    #[default(1024)]
    pub min_body_bytes_per_sec: u64,
    #[default(10)]
    pub body_grace_secs: u64,
}

/// What one client address may take of the intake.
#[derive(Debug, Clone, Serialize, Deserialize, SmartDefault)]
#[serde(default)]
pub struct ClientSettings {
    /// Intake requests a client may make per minute, sustained; over it, 429 with `Retry-After`.
    #[default(60)]
    pub client_requests_per_minute: u32,
    /// How many of those a client may make at once before the per-minute rate applies.
    #[default(30)]
    pub client_request_burst: u32,
    /// Intake requests one client may have under way at once; the next is answered 429 unread.
    #[default(8)]
    pub max_intake_in_flight_per_client: usize,
    #[default(32)]
    pub max_websockets: usize,
    #[default(4)]
    pub max_websockets_per_client: usize,
    /// The largest WebSocket message (one image); a larger one closes the socket (status 1009).
    #[default(4 * MIB)]
    pub websocket_max_message_bytes: u64,
}

/// The longest one SNS publish may take; the outbox relay's leases are sized from it.
/// (`validate` asks `outbox_lease_secs` for at least twice it, 30 s, in its message.)
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

/// Settings that passed validation, with the database they name.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub figment: Figment,
    pub settings: Settings,
    pub database: DatabaseUrl,
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
        let mut settings = Settings::extract(&figment)?;
        let database = match &settings.database.database_url {
            Some(url) => DatabaseUrl::parse(url).map_err(|reason| invalid("database_url", reason))?,
            None => DatabaseUrl::Sqlite(settings.data_dir.join("upshot.sqlite3")),
        };
        validate(&settings, &database)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let or_cores = |n: usize| if n == 0 { cores } else { n };
        settings.uploads.cpu_slots = or_cores(settings.uploads.cpu_slots);
        settings.inference.inference_sessions = or_cores(settings.inference.inference_sessions);
        Ok(AppConfig { figment, settings, database })
    }

    pub fn local_store_dir(&self) -> PathBuf {
        self.settings.store.local_store_dir.clone().unwrap_or_else(|| self.settings.data_dir.join("objects"))
    }

    pub fn secret_key_file(&self) -> PathBuf {
        self.settings.data_dir.join("secret_key")
    }

    /// Links, cookies and direct-upload URLs follow `public_url`; where it is unset (the embedded default), it
    /// is the address the server listens on, so a changed port changes the links with it.
    pub fn follow_listen_address(&mut self, listening: std::net::SocketAddr) {
        if self.settings.web.public_url.is_none() {
            let mut reachable = listening;
            if reachable.ip().is_unspecified() {
                reachable.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            self.settings.web.public_url = Some(format!("http://{reachable}"));
        }
    }

    /// Where people reach Upshot, without a trailing slash (see `follow_listen_address`).
    pub fn public_url(&self) -> &str {
        self.settings.web.public_url.as_deref().unwrap_or_default().trim_end_matches('/')
    }

    /// Rocket's own body limits, derived from ours so that one setting governs both.
    pub fn rocket_figment(&self) -> Figment {
        let max = self.settings.uploads.max_upload_bytes;
        self.figment
            .clone()
            .merge(("limits.file", max))
            .merge(("limits.data-form", max + FORM_OVERHEAD_BYTES))
            .merge(("limits.bytes", max))
            .merge(("temp_dir", self.spool_dir()))
    }

    /// Where Rocket spools upload bodies: under the data directory, which the service owns and sweeps at
    /// start (a killed process leaves its spool files behind), not the shared system temp directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.settings.data_dir.join("spool")
    }
}

/// Refuses settings that cannot work, naming the key to change.
fn validate(settings: &Settings, database: &DatabaseUrl) -> Result<(), ConfigError> {
    let Settings { database: db, store, keys, uploads, images, direct_uploads: direct, inference, notify, .. } =
        settings;
    let (outbox, connections, clients) = (&settings.outbox, &settings.connections, &settings.clients);
    let max_upload = uploads.max_upload_bytes;
    let below_4_tib = |bytes: u64| bytes / 1024 <= u64::from(u32::MAX);
    let publish_timeout = SNS_PUBLISH_TIMEOUT.as_secs();
    // What must hold, the key to change when it does not, and why.
    let rules: [(bool, &'static str, &str); 24] = [
        (db.database_pool_size > 0, "database_pool_size", "must be at least 1"),
        (db.database_timeout_secs > 0, "database_timeout_secs", "must be at least 1"),
        (store.s3_timeout_secs > 0, "s3_timeout_secs", "must be at least 1"),
        // An upload still storing its objects must not look dead: its S3 calls alone may take this long.
        (
            store.orphan_grace_secs >= 2 * store.s3_timeout_secs,
            "orphan_grace_secs",
            "must be at least twice s3_timeout_secs",
        ),
        (
            !store.s3_prefix.starts_with('/') && !store.s3_prefix.contains(".."),
            "s3_prefix",
            "must be relative, without `..`",
        ),
        (
            keys.admin_api_key.as_ref().is_none_or(|key| key.len() >= 16),
            "admin_api_key",
            "must be at least 16 characters",
        ),
        (keys.secret_key.as_ref().is_none_or(|key| key.len() >= 32), "secret_key", "must be at least 32 characters"),
        (
            keys.secret_key.is_some() || !matches!(database, DatabaseUrl::Postgres(_)),
            "secret_key",
            "required with PostgreSQL so that every instance derives the same delete tokens",
        ),
        (max_upload >= 1024, "max_upload_bytes", "must be at least 1024"),
        (
            uploads.upload_budget_bytes >= max_upload,
            "upload_budget_bytes",
            "must hold the largest upload (max_upload_bytes)",
        ),
        (below_4_tib(uploads.upload_budget_bytes), "upload_budget_bytes", "must be below 4 TiB"),
        (
            uploads.spool_quota_bytes >= max_upload + FORM_OVERHEAD_BYTES && below_4_tib(uploads.spool_quota_bytes),
            "spool_quota_bytes",
            "must hold one whole form (max_upload_bytes + 1 MiB), below 4 TiB",
        ),
        (direct.direct_upload_max_bytes >= max_upload, "direct_upload_max_bytes", "must be at least max_upload_bytes"),
        // A completed direct upload is read into memory whole, under the same budget as the form's.
        (
            direct.direct_upload_max_bytes <= uploads.upload_budget_bytes,
            "direct_upload_max_bytes",
            "must be at most upload_budget_bytes: a completed direct upload is held in memory",
        ),
        (
            (60..=7 * 24 * 3600).contains(&direct.upload_url_ttl_secs),
            "upload_url_ttl_secs",
            "must be between 60 s and 7 days (S3's longest)",
        ),
        (
            images.max_image_width > 0 && images.max_image_height > 0 && images.max_image_pixels > 0,
            "max_image_pixels",
            "image limits must be positive",
        ),
        (images.max_frames > 0 && images.max_animation_pixels > 0, "max_frames", "animation limits must be positive"),
        ((16..=2048).contains(&images.thumbnail_size), "thumbnail_size", "must be between 16 and 2048"),
        (!images.accepted_formats.is_empty(), "accepted_formats", "must name at least one format"),
        (
            outbox.outbox_max_attempts >= 0 && outbox.outbox_retry_horizon_hours > 0 && outbox.outbox_poll_ms > 0,
            "outbox_retry_horizon_hours",
            "outbox attempts, horizon and poll interval must be positive",
        ),
        // A claim must outlast the publishes it covers, or another relay takes it over and publishes again.
        (
            outbox.outbox_lease_secs >= 2 * publish_timeout,
            "outbox_lease_secs",
            "must be at least 30: two SNS publish timeouts",
        ),
        ((1..=20).contains(&inference.top_k), "top_k", "must be between 1 and 20"),
        (inference.inference_threads > 0, "inference_threads", "must be at least 1"),
        (
            connections.max_connections > 0
                && connections.max_connections_per_client > 0
                && connections.header_timeout_secs > 0
                && connections.idle_timeout_secs > 0
                && connections.body_grace_secs > 0,
            "max_connections",
            "connection limits and timeouts must be at least 1",
        ),
    ];
    let client_rules = [
        (clients.client_requests_per_minute > 0 && clients.client_request_burst > 0, "client_requests_per_minute"),
        (clients.max_intake_in_flight_per_client > 0, "max_intake_in_flight_per_client"),
        (clients.max_websockets > 0 && clients.max_websockets_per_client > 0, "max_websockets"),
        (clients.websocket_max_message_bytes > 0, "websocket_max_message_bytes"),
    ];
    if let Some((_, key, reason)) = rules.iter().find(|(holds, ..)| !holds) {
        return Err(invalid(key, *reason));
    }
    if let Some((_, key)) = client_rules.iter().find(|(holds, _)| !holds) {
        return Err(invalid(key, "per-client limits must be at least 1"));
    }
    if store.kind == StoreKind::S3 {
        match store.s3_bucket.as_deref() {
            None | Some("") => return Err(invalid("s3_bucket", "required when store = \"s3\"")),
            Some(bucket) if !valid_bucket_name(bucket) => {
                return Err(invalid("s3_bucket", format!("{bucket:?} is not a valid S3 bucket name")))
            }
            Some(_) => {}
        }
    }
    if notify.notifier == NotifierKind::Sns {
        match notify.sns_topic_arn.as_deref() {
            Some(arn) if arn.starts_with("arn:") && arn.split(':').count() == 6 => {}
            Some(arn) => return Err(invalid("sns_topic_arn", format!("{arn:?} is not an SNS topic ARN"))),
            None => return Err(invalid("sns_topic_arn", "required when notifier = \"sns\"")),
        }
    }
    match settings.web.public_url.as_deref() {
        Some("") => Err(invalid("public_url", "required: the address people reach Upshot at, for links and cookies")),
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            Err(invalid("public_url", "must start with http:// or https://"))
        }
        _ => Ok(()),
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

    /// Values as the environment gives them: figment parses `UPSHOT_*` text into numbers, booleans and arrays.
    fn from_env_text(pairs: &[(&str, &str)]) -> Result<AppConfig, ConfigError> {
        let mut figment = AppConfig::figment();
        for (key, text) in pairs {
            figment = figment.merge((*key, text.parse::<figment::value::Value>().unwrap()));
        }
        AppConfig::from_figment(figment)
    }

    #[test]
    fn environment_values_reach_their_sections() {
        let config = from_env_text(&[
            ("max_upload_bytes", "2048"),
            ("dedup", "false"),
            ("accepted_formats", "[JPG, png]"),
            ("statsd_addr", "127.0.0.1:8125"),
            ("store", "local"),
            ("cpu_slots", "0"),
        ])
        .unwrap();
        let settings = &config.settings;
        assert_eq!(settings.uploads.max_upload_bytes, 2048);
        assert!(!settings.uploads.dedup);
        assert_eq!(settings.images.accepted_formats, [ImageFormat::Jpeg, ImageFormat::Png]);
        assert_eq!(settings.reconcile.statsd_addr, Some("127.0.0.1:8125".parse().unwrap()));
        assert!(settings.uploads.cpu_slots >= 1, "0 means one per core");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let err = from_env_text(&[("max_upload_bytes", "20MB")]).unwrap_err().to_string();
        assert!(err.contains("max_upload_bytes"), "{err}");
        let err = from_env_text(&[("accepted_formats", "[jpeg, bmp]")]).unwrap_err().to_string();
        assert!(err.contains("accepted_formats") && err.contains("bmp"), "{err}");
        let err = from_env_text(&[("store", "ftp")]).unwrap_err().to_string();
        assert!(err.contains("store"), "{err}");
    }
}
