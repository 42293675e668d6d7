//! How long a connection may wait for its client, by what the client owes: the rest of a request head, the
//! rest of a body at a minimum rate, or the next request.

use std::time::{Duration, Instant};

use super::framing::Phase;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the first byte of a request head to its end.
    pub header: Duration,
    /// With nothing owed and nothing sent either way (keep-alive between requests, a quiet WebSocket).
    pub idle: Duration,
    /// A body must average at least this many bytes per second of waiting for it, once it has had `body_grace`.
    pub min_body_rate: u64,
    pub body_grace: Duration,
}

/// Why a connection was closed before its client was done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    HeaderTimeout,
    SlowBody,
    Idle,
}

impl Cut {
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::HeaderTimeout => "header_timeout",
            Cut::SlowBody => "slow_body",
            Cut::Idle => "idle",
        }
    }
}

/// The clocks of one connection. Time spent waiting for the server to take bytes is not the client's and is
/// not counted: only the time a read of the client waits.
#[derive(Debug)]
pub struct Deadlines {
    limits: Limits,
    /// When the client last sent a byte, or the connection opened.
    client_active: Instant,
    head_started: Option<Instant>,
    /// Time spent waiting for the current body, and what it brought.
    body_waited: Duration,
    body_bytes: u64,
    head_ended: Instant,
}

impl Deadlines {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Deadlines {
            limits,
            client_active: now,
            head_started: None,
            body_waited: Duration::ZERO,
            body_bytes: 0,
            head_ended: now,
        }
    }

    /// Records what a read brought after waiting `waited`: the phase before and after it, and the body bytes in it.
    pub fn record(&mut self, before: Phase, after: Phase, waited: Duration, body_bytes: u64, now: Instant) {
        self.client_active = now;
        if matches!(before, Phase::Body { waiting_for_continue: false }) {
            self.body_waited += waited;
        }
        match after {
            Phase::Head if before != Phase::Head => self.head_started = Some(now),
            Phase::Body { .. } if !matches!(before, Phase::Body { .. }) => {
                self.head_started = None;
                self.head_ended = now;
                self.body_waited = Duration::ZERO;
                self.body_bytes = 0;
            }
            _ => {}
        }
        if matches!(after, Phase::Body { .. }) {
            self.body_bytes += body_bytes;
        }
    }

    /// Counts a wait that ran out without the client sending anything, in the phase it was made in.
    pub fn waited_in_vain(&mut self, phase: Phase, waited: Duration) {
        if matches!(phase, Phase::Body { waiting_for_continue: false }) {
            self.body_waited += waited;
        }
    }

    /// When the current wait for the client must end, and why; `server_active` is when the server last sent
    /// the client anything.
    pub fn deadline(&self, phase: Phase, server_active: Option<Instant>, now: Instant) -> (Instant, Cut) {
        let last_activity = server_active.map_or(self.client_active, |s| s.max(self.client_active));
        match phase {
            Phase::Idle | Phase::Opaque | Phase::UnknownMethod | Phase::AwaitingUpgrade => {
                (last_activity + self.limits.idle, Cut::Idle)
            }
            Phase::Head => (self.head_started.unwrap_or(self.client_active) + self.limits.header, Cut::HeaderTimeout),
            Phase::Body { waiting_for_continue: true } => match server_active {
                // The server answered (100 Continue or a final status): the client owes the body's start.
                Some(answered) if answered >= self.head_ended => (answered + self.limits.header, Cut::HeaderTimeout),
                _ => (self.head_ended + self.limits.idle, Cut::Idle),
            },
            Phase::Body { waiting_for_continue: false } => {
                let earned = match self.limits.min_body_rate {
                    0 => self.limits.idle,
                    rate => Duration::from_secs_f64(self.body_bytes as f64 / rate as f64).max(self.limits.body_grace),
                };
                let left = earned.saturating_sub(self.body_waited).min(self.limits.idle);
                (now + left, Cut::SlowBody)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cut, Deadlines, Limits, Phase};
    use std::time::{Duration, Instant};

    const LIMITS: Limits = Limits {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(75),
        min_body_rate: 1000,
        body_grace: Duration::from_secs(10),
    };
    const BODY: Phase = Phase::Body { waiting_for_continue: false };

    #[test]
    fn a_head_has_its_timeout_from_its_first_byte() {
        let opened = Instant::now();
        let mut clocks = Deadlines::new(LIMITS, opened);
        assert_eq!(clocks.deadline(Phase::Idle, None, opened), (opened + LIMITS.idle, Cut::Idle));
        let first = opened + Duration::from_secs(30);
        clocks.record(Phase::Idle, Phase::Head, Duration::from_secs(30), 0, first);
        let later = first + Duration::from_secs(4);
        clocks.record(Phase::Head, Phase::Head, Duration::from_secs(4), 0, later);
        assert_eq!(clocks.deadline(Phase::Head, None, later), (first + LIMITS.header, Cut::HeaderTimeout));
    }

    #[test]
    fn a_body_must_keep_its_average_rate_after_the_grace() {
        let start = Instant::now();
        let mut clocks = Deadlines::new(LIMITS, start);
        clocks.record(Phase::Idle, BODY, Duration::ZERO, 0, start);
        // Within the grace, a stall is allowed up to the grace.
        assert_eq!(clocks.deadline(BODY, None, start), (start + LIMITS.body_grace, Cut::SlowBody));
        // 50 kB in 2 s of waiting earns 50 s at 1000 B/s: 48 left.
        let now = start + Duration::from_secs(2);
        clocks.record(BODY, BODY, Duration::from_secs(2), 50_000, now);
        assert_eq!(clocks.deadline(BODY, None, now), (now + Duration::from_secs(48), Cut::SlowBody));
        // A trickle falls behind: 12 s of waiting for 100 bytes leaves nothing.
        let mut slow = Deadlines::new(LIMITS, start);
        slow.record(Phase::Idle, BODY, Duration::ZERO, 0, start);
        let now = start + Duration::from_secs(12);
        slow.record(BODY, BODY, Duration::from_secs(12), 100, now);
        assert_eq!(slow.deadline(BODY, None, now), (now, Cut::SlowBody));
    }

    #[test]
    fn waiting_for_continue_is_the_servers_time_until_it_answers() {
        let start = Instant::now();
        let waiting = Phase::Body { waiting_for_continue: true };
        let mut clocks = Deadlines::new(LIMITS, start);
        clocks.record(Phase::Idle, waiting, Duration::ZERO, 0, start);
        assert_eq!(clocks.deadline(waiting, None, start), (start + LIMITS.idle, Cut::Idle));
        let answered = start + Duration::from_secs(1);
        assert_eq!(clocks.deadline(waiting, Some(answered), answered), (answered + LIMITS.header, Cut::HeaderTimeout));
    }

    #[test]
    fn a_response_being_sent_keeps_a_quiet_client_connected() {
        let start = Instant::now();
        let clocks = Deadlines::new(LIMITS, start);
        let sending = start + Duration::from_secs(70);
        assert_eq!(clocks.deadline(Phase::Idle, Some(sending), sending), (sending + LIMITS.idle, Cut::Idle));
    }
}
