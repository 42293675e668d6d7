//! Logging, request ids and request spans: journald when started by systemd, plain stderr otherwise; one
//! access line per request; an `X-Request-Id` and a W3C `traceparent` on every response; every route's
//! handler run inside its request's span (`traces`), and log lines written there tagged with its ids.

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

/// The request's span and trace, opened by `RequestLog` when the request arrives.
fn request_trace<'r>(req: &'r Request<'_>) -> &'r crate::traces::RequestTrace {
    req.local_cache(|| {
        let headers = req.headers();
        crate::traces::start_request(
            req.method().as_str(),
            RequestId::of(req),
            headers.get_one("traceparent"),
            headers.get_one("tracestate"),
        )
    })
}

/// Assigns request ids, opens each request's span, echoes both in the response and writes the access log.
pub struct RequestLog;

#[rocket::async_trait]
impl Fairing for RequestLog {
    fn info(&self) -> Info {
        Info { name: "request id and access log", kind: Kind::Request | Kind::Response }
    }

    async fn on_request(&self, req: &mut Request<'_>, _: &mut Data<'_>) {
        req.local_cache(|| RequestStart(Instant::now()));
        request_trace(req);
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        let request_id = RequestId::of(req);
        res.set_header(Header::new("X-Request-Id", request_id.to_owned()));
        let trace = request_trace(req);
        res.set_header(Header::new("traceparent", trace.traceparent()));
        let trace_id = trace.trace_id();
        let elapsed = req.local_cache(|| RequestStart(Instant::now())).0.elapsed();
        let route = route_of(req).unwrap_or_else(|| "-".to_owned());
        let status = res.status().code;
        trace.span.record("http.response.status_code", status);
        if status >= 500 {
            trace.span.record("otel.status_code", "ERROR");
        }
        let state = req.rocket().state::<crate::state::AppState>();
        let hops = state.map_or(0, |s| s.app.config.settings.web.trusted_proxy_hops);
        if let Some(state) = state {
            state.app.metrics.observe_request(req.method().as_str(), &route, res.status().code, elapsed.as_secs_f64());
        }
        let client = client_ip(req, hops).map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        log::info!(
            target: "upshot::access",
            "request_id={request_id} trace_id={trace_id} client={client} method={} route={route} status={status} \
             latency_ms={:.1}",
            req.method(),
            elapsed.as_secs_f64() * 1000.0,
        );
    }
}

/// The template of the route that serves `req`, not its path: raw paths and queries may carry tokens.
fn route_of(req: &Request<'_>) -> Option<String> {
    req.route().map(|route| route.uri.origin.path().to_string())
}

/// Runs every route's handler (its guards, its body) inside the request's span, so the spans of what it
/// does become children of the request's.
pub fn traced(routes: Vec<rocket::Route>) -> Vec<rocket::Route> {
    routes
        .into_iter()
        .map(|mut route| {
            route.handler = Box::new(Traced(route.handler));
            route
        })
        .collect()
}

/// The same for the error catchers, so the lines they log carry the request's ids.
pub fn traced_catchers(catchers: Vec<rocket::Catcher>) -> Vec<rocket::Catcher> {
    catchers
        .into_iter()
        .map(|mut catcher| {
            catcher.handler = Box::new(TracedCatcher(catcher.handler));
            catcher
        })
        .collect()
}

#[derive(Clone)]
struct TracedCatcher(Box<dyn rocket::catcher::Handler>);

#[rocket::async_trait]
impl rocket::catcher::Handler for TracedCatcher {
    async fn handle<'r>(&self, status: rocket::http::Status, req: &'r Request<'_>) -> rocket::catcher::Result<'r> {
        use tracing::Instrument;
        let trace = request_trace(req);
        trace.trace_id();
        self.0.handle(status, req).instrument(trace.span.clone()).await
    }
}

#[derive(Clone)]
struct Traced(Box<dyn rocket::route::Handler>);

#[rocket::async_trait]
impl rocket::route::Handler for Traced {
    async fn handle<'r>(&self, req: &'r Request<'_>, data: Data<'r>) -> rocket::route::Outcome<'r> {
        use tracing::Instrument;
        let trace = request_trace(req);
        if let Some(route) = route_of(req) {
            trace.name_route(req.method().as_str(), &route);
        }
        trace.trace_id();
        self.0.handle(req, data).instrument(trace.span.clone()).await
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
        if !self.enabled(record.metadata()) {
            return;
        }
        // Written inside a request's (or a background run's) span: tagged with its ids.
        match crate::traces::current_log_fields() {
            Some(fields) => {
                let (request_id, trace_id) =
                    (fields.request_id.as_deref().unwrap_or("-"), fields.trace_id.as_deref().unwrap_or("-"));
                self.0.log(
                    &log::Record::builder()
                        .args(format_args!("request_id={request_id} trace_id={trace_id} {}", record.args()))
                        .metadata(record.metadata().clone())
                        .module_path(record.module_path())
                        .file(record.file())
                        .line(record.line())
                        .build(),
                );
            }
            None => self.0.log(record),
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
