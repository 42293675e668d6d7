//! What one client may take of the public intake: a token bucket of requests per client address (governor) on
//! every route that takes an image or makes one (uploads, classification, WebSocket messages, direct-upload
//! sessions and completions), a cap on its intake requests in flight and on its open WebSockets (within a cap
//! on all of them), and the per-client connection count the public socket keeps (`ClientCounts`).
//!
//! The limiter's own memory is bounded: clients whose bucket is full again are forgotten once `CLIENTS_KEPT`
//! are remembered, and if that many are still active (an attacker rotating addresses), every client beyond them
//! shares one overflow bucket until the crowd thins out. IPv6 clients are counted by their /64, which one
//! subscriber usually holds whole.

use crate::config::ClientSettings;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Clients remembered at once, at about 64 bytes each.
const CLIENTS_KEPT: usize = 100_000;
/// The overflow bucket's allowance, in clients' allowances.
const OVERFLOW_SHARE: u32 = 10;
/// The clients remembered are swept for forgettable ones at most this often: a sweep walks all of them.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct ClientLimits {
    intake: DefaultKeyedRateLimiter<IpAddr>,
    overflow: DefaultDirectRateLimiter,
    websockets: Mutex<OpenWebSockets>,
    in_flight: Arc<ClientCounts>,
    config: ClientSettings,
    created: Instant,
    /// Milliseconds after `created` of the last sweep.
    last_sweep_ms: AtomicU64,
}

#[derive(Default)]
struct OpenWebSockets {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Why a WebSocket was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum WebSocketRefusal {
    /// This client has `max_websockets_per_client` open.
    ClientFull,
    /// The server has `max_websockets` open.
    ServerFull,
}

impl ClientLimits {
    pub fn new(config: ClientSettings) -> Self {
        let quota = |per_minute: u32, burst: u32| {
            let per_minute = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
            Quota::per_minute(per_minute).allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"))
        };
        ClientLimits {
            intake: RateLimiter::keyed(quota(config.client_requests_per_minute, config.client_request_burst)),
            overflow: RateLimiter::direct(quota(
                config.client_requests_per_minute.saturating_mul(OVERFLOW_SHARE),
                config.client_request_burst.saturating_mul(OVERFLOW_SHARE),
            )),
            websockets: Mutex::default(),
            in_flight: Arc::new(ClientCounts::new(config.max_intake_in_flight_per_client)),
            config,
            created: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    /// Takes one intake request from `client`'s allowance; when it is used up, the seconds until the next.
    pub fn take_intake(&self, client: IpAddr) -> Result<(), u32> {
        if self.intake.len() >= CLIENTS_KEPT && self.sweep_due() {
            self.intake.retain_recent();
            self.intake.shrink_to_fit();
        }
        let outcome = if self.intake.len() < CLIENTS_KEPT {
            self.intake.check_key(&client_key(client))
        } else {
            self.overflow.check()
        };
        outcome.map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs_f64().ceil().max(1.0) as u32
        })
    }

    /// True for one caller per `SWEEP_INTERVAL`.
    fn sweep_due(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64;
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= SWEEP_INTERVAL.as_millis() as u64
            && self.last_sweep_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// One intake request of `client` in flight until the slot is dropped; `None` when it has
    /// `max_in_flight_per_client` already (behind a load balancer, the socket's per-connection cap sees only the
    /// balancer, so this is what stops one client from holding every upload slot).
    pub fn enter_intake(&self, client: IpAddr) -> Option<ClientSlot> {
        self.in_flight.try_enter(client)
    }

    /// Clients the limiter remembers now.
    pub fn clients_remembered(&self) -> usize {
        self.intake.len()
    }

    /// A slot for one WebSocket of `client`, given back when the slot is dropped.
    pub fn open_websocket(self: &Arc<Self>, client: IpAddr) -> Result<WebSocketSlot, WebSocketRefusal> {
        let key = client_key(client);
        let mut open = self.websockets.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.config.max_websockets {
            return Err(WebSocketRefusal::ServerFull);
        }
        let of_client = open.per_client.entry(key).or_default();
        if *of_client >= self.config.max_websockets_per_client {
            return Err(WebSocketRefusal::ClientFull);
        }
        *of_client += 1;
        open.total += 1;
        Ok(WebSocketSlot { limits: self.clone(), client: key })
    }
}

/// One open WebSocket, counted until dropped.
pub struct WebSocketSlot {
    limits: Arc<ClientLimits>,
    client: IpAddr,
}

impl Drop for WebSocketSlot {
    fn drop(&mut self) {
        let mut open = self.limits.websockets.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(count) = open.per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

/// How many of something (connections, requests in flight) each client holds, each capped at `cap`. Only
/// clients holding some are remembered, so memory follows what is open, not how many addresses came.
pub struct ClientCounts {
    cap: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientCounts {
    pub fn new(cap: usize) -> Self {
        ClientCounts { cap, held: Mutex::default() }
    }

    /// One more for `client`, counted until the slot is dropped; `None` when it holds `cap` already.
    pub fn try_enter(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let key = client_key(client);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(key).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot { counts: self.clone(), client: key })
    }

    /// Clients holding at least one now.
    pub fn clients(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One of a client's counted things, given back when dropped.
pub struct ClientSlot {
    counts: Arc<ClientCounts>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.counts.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.client);
            }
        }
    }
}

/// The key a client is counted under: its IPv4 address, or the /64 of its IPv6 address.
pub fn client_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::from(segments)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u32, burst: u32) -> Arc<ClientLimits> {
        Arc::new(ClientLimits::new(ClientSettings {
            client_requests_per_minute: per_minute,
            client_request_burst: burst,
            max_websockets: 3,
            max_websockets_per_client: 2,
            max_intake_in_flight_per_client: 2,
            ..Default::default()
        }))
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_while_another_is_untouched() {
        let limits = limits(6, 3);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            limits.take_intake(a).unwrap();
        }
        let wait = limits.take_intake(a).unwrap_err();
        assert!((1..=10).contains(&wait), "{wait}");
        limits.take_intake(b).unwrap();
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let limits = limits(60, 1);
        limits.take_intake("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(limits.take_intake("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        limits.take_intake("2001:db8:1:3::1".parse().unwrap()).unwrap();
        // An IPv4 client on an IPv6 socket is its IPv4 address.
        limits.take_intake("::ffff:192.0.2.7".parse().unwrap()).unwrap();
        assert!(limits.take_intake("192.0.2.7".parse().unwrap()).is_err());
    }

    #[test]
    fn websockets_are_capped_per_client_and_in_all_and_given_back() {
        let limits = limits(60, 60);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap(), "192.0.2.3".parse().unwrap());
        let first = limits.open_websocket(a).unwrap();
        let _second = limits.open_websocket(a).unwrap();
        assert_eq!(limits.open_websocket(a).err(), Some(WebSocketRefusal::ClientFull));
        let _third = limits.open_websocket(b).unwrap();
        assert_eq!(limits.open_websocket(c).err(), Some(WebSocketRefusal::ServerFull));
        drop(first);
        limits.open_websocket(c).unwrap();
    }

    #[test]
    fn counts_are_capped_per_client_and_forgotten_at_zero() {
        let counts = Arc::new(ClientCounts::new(2));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let first = counts.try_enter(a).unwrap();
        let second = counts.try_enter(a).unwrap();
        assert!(counts.try_enter(a).is_none());
        let _other = counts.try_enter(b).unwrap();
        assert!(counts.try_enter("2001:db8::2".parse().unwrap()).is_some(), "dropped at once: a slot of its own");
        drop(first);
        let _again = counts.try_enter(a).unwrap();
        drop((second, _again));
        assert_eq!(counts.clients(), 1, "only b is remembered");
    }

    #[test]
    fn memory_stays_bounded_when_addresses_rotate() {
        let limits = limits(1, 1);
        for i in 0..(CLIENTS_KEPT as u32 + 5_000) {
            let _ = limits.take_intake(IpAddr::from(i.to_be_bytes()));
        }
        assert!(limits.clients_remembered() <= CLIENTS_KEPT, "{}", limits.clients_remembered());
    }
}
