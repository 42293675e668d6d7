//! Logging and request ids: journald when started by systemd, plain stderr otherwise; one access line per
//! request; an `X-Request-Id` on every response.

use std::io::Write;
use std::time::Instant;

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::Header;
use rocket::{Data, Request, Response};

/// The id of the current request: the caller's `X-Request-Id` when it is sane, else a fresh one.
#[derive(Debug, Clone)]
pub struct RequestId(String);

impl RequestId {
    /// The request's id, decided on first use and cached for the rest of the request.
    pub fn of<'r>(req: &'r Request<'_>) -> &'r str {
        &req.local_cache(|| {
            let incoming = req.headers().get_one("X-Request-Id").filter(|id| is_valid_request_id(id));
            RequestId(incoming.map_or_else(|| crate::domain::random_token(12), str::to_owned))
        })
        .0
    }
}

fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[rocket::async_trait]
impl<'r> rocket::request::FromRequest<'r> for RequestId {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> rocket::request::Outcome<Self, Self::Error> {
        rocket::request::Outcome::Success(RequestId(RequestId::of(req).to_owned()))
    }
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

struct RequestStart(Instant);

/// Assigns request ids, echoes them in the response and writes the access log.
pub struct RequestLog;

#[rocket::async_trait]
impl Fairing for RequestLog {
    fn info(&self) -> Info {
        Info { name: "request id and access log", kind: Kind::Request | Kind::Response }
    }

    async fn on_request(&self, req: &mut Request<'_>, _: &mut Data<'_>) {
        req.local_cache(|| RequestStart(Instant::now()));
        RequestId::of(req);
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        let request_id = RequestId::of(req);
        res.set_header(Header::new("X-Request-Id", request_id.to_owned()));
        let elapsed = req.local_cache(|| RequestStart(Instant::now())).0.elapsed();
        // The route's template, not the raw path: raw paths and queries may carry tokens.
        let route = req.route().map_or_else(|| "-".to_owned(), |r| r.uri.origin.path().to_string());
        let state = req.rocket().state::<crate::state::AppState>();
        let hops = state.map_or(0, |s| s.app.config.settings.web.trusted_proxy_hops);
        if let Some(state) = state {
            state.app.metrics.observe_request(req.method().as_str(), &route, res.status().code, elapsed.as_secs_f64());
        }
        let client = client_ip(req, hops).map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        log::info!(
            target: "upshot::access",
            "request_id={request_id} client={client} method={} route={route} status={} latency_ms={:.1}",
            req.method(),
            res.status().code,
            elapsed.as_secs_f64() * 1000.0,
        );
    }
}

/// The client's address. Behind `hops` trusted proxies (the load balancer appends the address it saw to
/// `X-Forwarded-For`), it is the entry that many places from the right; entries further left are whatever the
/// client sent and are not trusted. With no trusted proxy, it is the connection's peer (the client of the
/// loopback connection that Rocket saw, see `connections`).
pub fn client_ip(req: &Request<'_>, hops: usize) -> Option<std::net::IpAddr> {
    let loopback = req.remote();
    let peers = req.rocket().state::<std::sync::Arc<crate::connections::Peers>>();
    let peer = match (loopback, peers) {
        (Some(loopback), Some(peers)) => peers.client_of(loopback).or(Some(loopback)),
        (loopback, None) => loopback,
        (None, Some(_)) => None,
    }
    .map(|addr| addr.ip());
    if hops == 0 {
        return peer;
    }
    let forwarded: Vec<&str> = req.headers().get("X-Forwarded-For").flat_map(|v| v.split(',')).map(str::trim).collect();
    forwarded_client(&forwarded, hops).or(peer)
}

fn forwarded_client(forwarded: &[&str], hops: usize) -> Option<std::net::IpAddr> {
    let index = forwarded.len().checked_sub(hops)?;
    forwarded.get(index)?.parse().ok()
}

/// Installs the process logger; `UPSHOT_LOG` sets the level (default `info`).
pub fn init_logging() {
    let level = std::env::var("UPSHOT_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(log::LevelFilter::Info);
    // Under systemd, records go to journald with their fields; elsewhere, to stderr.
    let journal = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| systemd_journal_logger::JournalLog::new().ok())
        .map(|journal| journal.with_syslog_identifier("upshot".to_owned()));
    let _ = match journal {
        Some(journal) => log::set_boxed_logger(Box::new(Filtered(journal))),
        None => log::set_boxed_logger(Box::new(Filtered(StderrLogger))),
    };
    log::set_max_level(level);
}

/// Keeps Rocket's own per-request chatter out of the log: our access line says it once.
fn is_wanted(metadata: &log::Metadata<'_>) -> bool {
    let target = metadata.target();
    let framework = target.starts_with("rocket") || target == "_" || target.starts_with("hyper");
    // Rocket announces its launch as a warning, naming the loopback port behind the public socket; the
    // "listening on" line names the real address.
    let launch_banner = target == "rocket::launch" && metadata.level() > log::Level::Error;
    // "No matching routes" and "responding with the default catcher" for every 404 and 405, and a guard's
    // failure to parse a query, as errors and warnings under `<route's module>::_`: the access line has the
    // status.
    let routing = target.ends_with("::_");
    !launch_banner && !routing && (!framework || metadata.level() <= log::Level::Warn)
}

struct Filtered<L>(L);

impl<L: log::Log> log::Log for Filtered<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && is_wanted(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

struct StderrLogger;

/// One record, one line: errors that carry their causes on several lines (SDK and database errors) would
/// otherwise read as several records to anything that splits a log by lines.
fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    if message.contains(['\n', '\r']) {
        std::borrow::Cow::Owned(message.replace("\r\n", "\n").replace(['\n', '\r'], " \\n "))
    } else {
        std::borrow::Cow::Borrowed(message)
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let message = one_line(&record.args().to_string()).into_owned();
        let _ = writeln!(std::io::stderr().lock(), "{now} {:<5} {} {message}", record.level(), record.target());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::{forwarded_client, one_line};

    #[test]
    fn a_record_is_one_line() {
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line("outer error\ncaused by: inner\r\n"), "outer error \\n caused by: inner \\n ");
    }

    #[test]
    fn trusts_only_the_configured_number_of_hops() {
        let chain = ["203.0.113.9", "198.51.100.7", "10.0.1.23"];
        // One trusted hop (the ALB): the address the ALB saw connecting, the rightmost entry.
        assert_eq!(forwarded_client(&chain, 1), Some("10.0.1.23".parse().unwrap()));
        assert_eq!(forwarded_client(&chain, 2), Some("198.51.100.7".parse().unwrap()));
        // More hops than entries, or garbage: fall back to the peer.
        assert_eq!(forwarded_client(&chain, 4), None);
        assert_eq!(forwarded_client(&["not-an-ip"], 1), None);
    }
}
