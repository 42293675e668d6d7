//! The public socket. Rocket 0.5 offers no cap on connections and no read timeouts, so the service listens
//! itself and passes each connection on to Rocket on a loopback port: at most `max_connections` at once (the
//! next one gets 503 `BUSY`), at most `max_connections_per_client` of them from one client address where
//! clients reach the socket directly (the next one gets 429 `TOO_MANY_REQUESTS`), and each held to deadlines
//! while it owes the server bytes (see `deadlines`).

mod deadlines;
mod framing;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::client_limits::ClientCounts;
use crate::error::ErrorCode;
use deadlines::Deadlines;
pub use deadlines::{Cut, Limits};
use framing::Framing;

/// Per direction; a thousand idle connections hold 32 MiB of buffers.
const BUFFER_BYTES: usize = 16 * 1024;
/// Connections over the cap still get an answer, up to this many at once; past that they are closed unanswered.
const REFUSALS_IN_FLIGHT: usize = 256;

/// The `Allow` header of a path, or `None` where no route is.
pub type AllowedMethods = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub open: AtomicU64,
    pub refused: AtomicU64,
    pub refused_per_client: AtomicU64,
    pub cut_header_timeout: AtomicU64,
    pub cut_slow_body: AtomicU64,
    pub cut_idle: AtomicU64,
}

impl ConnectionStats {
    pub fn snapshot(&self) -> crate::metrics::Connections {
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        crate::metrics::Connections {
            open: count(&self.open),
            refused: count(&self.refused),
            refused_per_client: count(&self.refused_per_client),
            cut: [
                (Cut::HeaderTimeout.as_str(), count(&self.cut_header_timeout)),
                (Cut::SlowBody.as_str(), count(&self.cut_slow_body)),
                (Cut::Idle.as_str(), count(&self.cut_idle)),
            ],
        }
    }

    fn count_cut(&self, cut: Cut) {
        let counter = match cut {
            Cut::HeaderTimeout => &self.cut_header_timeout,
            Cut::SlowBody => &self.cut_slow_body,
            Cut::Idle => &self.cut_idle,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The client behind each connection to Rocket, by the local port of that loopback connection: Rocket sees
/// only the loopback address.
#[derive(Debug, Default)]
pub struct Peers(Mutex<HashMap<u16, SocketAddr>>);

impl Peers {
    /// The client address of a request that Rocket saw coming from `loopback`.
    pub fn client_of(&self, loopback: SocketAddr) -> Option<SocketAddr> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&loopback.port()).copied()
    }

    fn register(self: &Arc<Self>, loopback_port: u16, client: SocketAddr) -> PeerRegistration {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(loopback_port, client);
        PeerRegistration { peers: self.clone(), port: loopback_port }
    }
}

struct PeerRegistration {
    peers: Arc<Peers>,
    port: u16,
}

impl Drop for PeerRegistration {
    fn drop(&mut self) {
        self.peers.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.port);
    }
}

/// The bound public listener, not yet accepting.
pub struct Gate {
    listener: TcpListener,
    max_connections: usize,
    per_client: Option<Arc<ClientCounts>>,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    peers: Arc<Peers>,
}

impl Gate {
    /// `per_client`: connections one client address may hold, or `None` for no such cap (behind proxies).
    pub async fn bind(
        address: SocketAddr,
        max_connections: usize,
        per_client: Option<usize>,
        limits: Limits,
    ) -> std::io::Result<Gate> {
        let listener = TcpListener::bind(address).await?;
        let per_client = per_client.map(|cap| Arc::new(ClientCounts::new(cap)));
        Ok(Gate { listener, max_connections, per_client, limits, stats: Arc::default(), peers: Arc::default() })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<ConnectionStats> {
        self.stats.clone()
    }

    pub fn peers(&self) -> Arc<Peers> {
        self.peers.clone()
    }

    /// Accepts connections and passes them to `upstream` until `stop` resolves. Connections already open
    /// run on; the server behind closes them on its shutdown.
    pub async fn run(self, upstream: SocketAddr, allowed: AllowedMethods, stop: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
        let Gate { listener, limits, stats, peers, per_client, .. } = self;
        tokio::pin!(stop);
        loop {
            let (client, address) = tokio::select! {
                _ = &mut stop => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, mostly: wait for some to close rather than spin.
                        log::error!("accepting a connection failed: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = client.set_nodelay(true);
            let client_slot = match &per_client {
                None => None,
                Some(counts) => match counts.try_enter(address.ip()) {
                    Some(slot) => Some(slot),
                    None => {
                        stats.refused_per_client.fetch_add(1, Ordering::Relaxed);
                        let message = "Too many connections from your address are open; retry in a moment.";
                        refuse_within(&refusals, client, ErrorCode::TooManyRequests, message);
                        continue;
                    }
                },
            };
            match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let (stats, peers, allowed) = (stats.clone(), peers.clone(), allowed.clone());
                    tokio::spawn(async move {
                        stats.open.fetch_add(1, Ordering::Relaxed);
                        relay(client, address, upstream, limits, &stats, &peers, allowed).await;
                        stats.open.fetch_sub(1, Ordering::Relaxed);
                        drop((slot, client_slot));
                    });
                }
                Err(_) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    let message = "Too many connections are open; retry in a moment.";
                    refuse_within(&refusals, client, ErrorCode::Busy, message);
                }
            }
        }
    }
}

/// An error answered by the socket itself, in the API's error shape, closing the connection.
fn error_response(code: ErrorCode, message: &str, extra_headers: &str) -> String {
    let request_id = crate::domain::random_token(12);
    let body = crate::error::AppError::new(code, message).body(&request_id).to_string();
    let status = code.status();
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: {request_id}\r\n\
         {extra_headers}Connection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        status.code,
        status.reason().unwrap_or(""),
        body.len()
    )
}

/// Refuses `client` on a task of its own while fewer than `REFUSALS_IN_FLIGHT` are being answered; past that
/// the connection is closed unanswered.
fn refuse_within(refusals: &Arc<Semaphore>, client: TcpStream, code: ErrorCode, message: &'static str) {
    if let Ok(permit) = refusals.clone().try_acquire_owned() {
        tokio::spawn(async move {
            refuse(client, code, message).await;
            drop(permit);
        });
    }
}

/// Answers `code` without reading the request, then closes.
async fn refuse(mut client: TcpStream, code: ErrorCode, message: &str) {
    let response = error_response(code, message, "Retry-After: 1\r\n");
    let answer = async {
        client.write_all(response.as_bytes()).await?;
        client.shutdown().await?;
        // Read what the client sent, so that closing does not reset the connection before it reads the answer.
        let mut sink = [0u8; 4096];
        while client.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// The answer to a method the server cannot parse: 405 with the path's `Allow`, or 404 for an unknown path.
fn unknown_method_response(path: &str, allowed: &AllowedMethods) -> String {
    let path = path.split('?').next().unwrap_or(path);
    match allowed(path) {
        Some(allow) => error_response(
            ErrorCode::MethodNotAllowed,
            "This method is not allowed here.",
            &format!("Allow: {allow}\r\n"),
        ),
        None => error_response(ErrorCode::NotFound, "There is nothing at this address.", ""),
    }
}

/// What one direction of a connection tells the other: when the server last sent anything (monotonic
/// milliseconds since the connection opened), and how it answered an upgrade request.
struct Clock {
    opened: Instant,
    server_active_ms: AtomicU64,
    upgrade: AtomicU8,
}

const UPGRADE_NONE: u8 = 0;
const UPGRADE_AWAITED: u8 = 1;
const UPGRADE_SWITCHED: u8 = 2;
const UPGRADE_REFUSED: u8 = 3;

impl Clock {
    fn server_active(&self) -> Option<Instant> {
        match self.server_active_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.opened + Duration::from_millis(ms)),
        }
    }

    /// Reads the server's first bytes after an upgrade request: `101 Switching Protocols` or another answer.
    fn note_response_start(&self, bytes: &[u8]) {
        if self.upgrade.load(Ordering::Acquire) == UPGRADE_AWAITED {
            let switched = bytes.starts_with(b"HTTP/1.1 101");
            self.upgrade.store(if switched { UPGRADE_SWITCHED } else { UPGRADE_REFUSED }, Ordering::Release);
        }
    }

    /// Hands the server's answer to an upgrade request to the request side's framing.
    fn apply_upgrade_answer(&self, framing: &mut Framing) {
        match self.upgrade.load(Ordering::Acquire) {
            UPGRADE_SWITCHED => framing.upgrade_answered(true),
            UPGRADE_REFUSED => framing.upgrade_answered(false),
            _ => return,
        }
        self.upgrade.store(UPGRADE_NONE, Ordering::Release);
    }

    fn mark_server_active(&self) {
        let ms = (self.opened.elapsed().as_millis() as u64).max(1);
        self.server_active_ms.store(ms, Ordering::Relaxed);
    }
}

async fn relay(
    client: TcpStream,
    address: SocketAddr,
    upstream: SocketAddr,
    limits: Limits,
    stats: &ConnectionStats,
    peers: &Arc<Peers>,
    allowed: AllowedMethods,
) {
    let server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => {
            return refuse(client, ErrorCode::NotReady, "The server is starting or stopping; retry in a moment.").await
        }
    };
    let _ = server.set_nodelay(true);
    let Ok(loopback) = server.local_addr() else { return };
    let _registration = peers.register(loopback.port(), address);
    let clock = Clock { opened: Instant::now(), server_active_ms: AtomicU64::new(0), upgrade: AtomicU8::new(0) };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();

    let unknown_method = {
        let responses = async {
            let mut buffer = vec![0u8; BUFFER_BYTES];
            loop {
                match server_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        clock.mark_server_active();
                        clock.note_response_start(&buffer[..n]);
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        clock.mark_server_active();
                    }
                }
            }
        };
        let requests = async {
            let outcome = pass_requests(&mut client_read, &mut server_write, limits, &clock).await;
            if outcome.is_ok() {
                let _ = server_write.shutdown().await;
            }
            outcome
        };
        tokio::pin!(responses, requests);
        tokio::select! {
            // The server closed: the connection is over, whatever the client still sends.
            _ = &mut responses => None,
            outcome = &mut requests => match outcome {
                // The client finished sending (or sent a method to answer here); the server may still be
                // answering what came before.
                Ok(unknown_method) => {
                    responses.await;
                    unknown_method
                }
                Err(cut) => {
                    stats.count_cut(cut);
                    log::debug!("closed the connection of {address}: {}", cut.as_str());
                    return;
                }
            },
        }
    };
    if let Some(path) = unknown_method {
        let _ = client_write.write_all(unknown_method_response(&path, &allowed).as_bytes()).await;
    }
    let _ = client_write.shutdown().await;
}

/// Copies the client's bytes to the server until the client closes its side, or a deadline passes, or a request
/// comes with a method the server cannot parse (its path is returned, for an answer from here).
async fn pass_requests(
    client: &mut tokio::net::tcp::OwnedReadHalf,
    server: &mut tokio::net::tcp::OwnedWriteHalf,
    limits: Limits,
    clock: &Clock,
) -> Result<Option<String>, Cut> {
    let mut framing = Framing::default();
    let mut deadlines = Deadlines::new(limits, clock.opened);
    let mut buffer = vec![0u8; BUFFER_BYTES];
    let mut forward = Vec::with_capacity(BUFFER_BYTES);
    loop {
        clock.apply_upgrade_answer(&mut framing);
        let phase = framing.phase();
        let waiting_since = Instant::now();
        let (deadline, cut) = deadlines.deadline(phase, clock.server_active(), waiting_since);
        let read = match tokio::time::timeout_at(deadline.into(), client.read(&mut buffer)).await {
            Ok(read) => read,
            Err(_) => {
                // The server may have been sending meanwhile, which moves an idle deadline.
                let now = Instant::now();
                deadlines.waited_in_vain(phase, now - waiting_since);
                if deadlines.deadline(phase, clock.server_active(), now).0 > now {
                    continue;
                }
                return Err(cut);
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        let now = Instant::now();
        clock.apply_upgrade_answer(&mut framing);
        forward.clear();
        framing.feed(&buffer[..n], &mut forward);
        deadlines.record(phase, framing.phase(), now - waiting_since, n as u64, now);
        if framing.phase() == framing::Phase::AwaitingUpgrade {
            clock.upgrade.store(UPGRADE_AWAITED, Ordering::Release);
        }
        if !forward.is_empty() && server.write_all(&forward).await.is_err() {
            return Ok(None);
        }
        if let Some(path) = framing.unknown_method_path() {
            return Ok(Some(path.to_owned()));
        }
    }
}
