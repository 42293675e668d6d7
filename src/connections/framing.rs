//! Where each HTTP/1.1 request on a connection starts and ends, read from the client's bytes as they pass, so
//! that each part of a request can be held to its own deadline. Only the framing is read (request head,
//! `Content-Length`, chunked transfer coding, upgrades); the server behind parses every request in full and
//! answers malformed ones itself.

/// Larger heads are refused by the server (431); past this the bytes are passed on without framing.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// The methods Rocket 0.5 parses; it answers any other with 400 before routing, where 405 is due.
const SERVER_METHODS: [&str; 9] = ["GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "TRACE", "CONNECT", "PATCH"];

/// What the client is expected to send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests: nothing owed until the next one starts.
    Idle,
    /// Part of a request head has arrived.
    Head,
    /// A request body is under way; `waiting_for_continue` while the client waits for `100 Continue` and has sent none of it.
    Body { waiting_for_continue: bool },
    /// Raw bytes both ways after an upgrade (WebSocket) or a `CONNECT`, or after bytes whose framing could not
    /// be followed (the server answers those with an error and closes).
    Opaque,
    /// A request with a method the server does not know, at this path: nothing more is read or passed on.
    UnknownMethod,
    /// An upgrade request (WebSocket) was passed on; whether the server switched protocols decides what
    /// follows (`upgrade_answered`).
    AwaitingUpgrade,
}

#[derive(Debug)]
enum State {
    Idle,
    Head,
    Fixed { remaining: u64, expect_continue: bool, started: bool },
    Chunked { chunk: Chunk, expect_continue: bool, started: bool },
    Opaque,
    UnknownMethod(String),
    AwaitingUpgrade,
}

#[derive(Debug)]
enum Chunk {
    /// The chunk-size line, collected in `Framing::line`.
    Size,
    Data(u64),
    /// The CRLF after a chunk's data: how many bytes of it are left.
    DataEnd(u8),
    /// Trailer lines after the last chunk, each collected in `Framing::line`, up to an empty one.
    Trailers,
}

/// The framing of one connection's request stream. Heads are held back until complete, so the server never sees
/// a half-sent head; everything else is passed on as it arrives.
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: Vec<u8>,
    line: Vec<u8>,
}

impl Default for Framing {
    fn default() -> Self {
        Framing { state: State::Idle, head: Vec::new(), line: Vec::new() }
    }
}

impl Framing {
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Idle => Phase::Idle,
            State::Head => Phase::Head,
            State::Fixed { expect_continue, started, .. } | State::Chunked { expect_continue, started, .. } => {
                Phase::Body { waiting_for_continue: *expect_continue && !*started }
            }
            State::Opaque => Phase::Opaque,
            State::UnknownMethod(_) => Phase::UnknownMethod,
            State::AwaitingUpgrade => Phase::AwaitingUpgrade,
        }
    }

    /// The server answered an upgrade request: with 101, raw bytes follow; otherwise, more requests.
    pub fn upgrade_answered(&mut self, switched: bool) {
        if matches!(self.state, State::AwaitingUpgrade) {
            self.state = if switched { State::Opaque } else { State::Idle };
        }
    }

    /// The path of a request whose method the server does not know, once its head is complete.
    pub fn unknown_method_path(&self) -> Option<&str> {
        match &self.state {
            State::UnknownMethod(path) => Some(path),
            _ => None,
        }
    }

    /// Takes bytes the client sent; appends to `forward` those the server may have now.
    pub fn feed(&mut self, mut bytes: &[u8], forward: &mut Vec<u8>) {
        while !bytes.is_empty() {
            bytes = match &mut self.state {
                State::Idle => {
                    // Empty lines before a request line are allowed (RFC 9112, section 2.2).
                    let start = bytes.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(bytes.len());
                    forward.extend_from_slice(&bytes[..start]);
                    if start < bytes.len() {
                        self.state = State::Head;
                    }
                    &bytes[start..]
                }
                State::Head => self.feed_head(bytes, forward),
                State::Fixed { remaining, started, .. } => {
                    let take = bytes.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    forward.extend_from_slice(&bytes[..take]);
                    *remaining -= take as u64;
                    *started = true;
                    if *remaining == 0 {
                        self.state = State::Idle;
                    }
                    &bytes[take..]
                }
                State::Chunked { .. } => self.feed_chunked(bytes, forward),
                State::Opaque => {
                    forward.extend_from_slice(bytes);
                    &[]
                }
                State::UnknownMethod(_) => &[],
                // Bytes before the server's answer: only a client that already speaks the new protocol sends them.
                State::AwaitingUpgrade => {
                    self.state = State::Opaque;
                    bytes
                }
            };
        }
    }

    fn feed_head<'b>(&mut self, bytes: &'b [u8], forward: &mut Vec<u8>) -> &'b [u8] {
        let before = self.head.len();
        // Only the bytes up to the end of the head belong to it; look for that end in what is new.
        self.head.extend_from_slice(bytes);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let next = match request.parse(&self.head) {
            Ok(httparse::Status::Complete(length)) => {
                if !SERVER_METHODS.contains(&request.method.unwrap_or_default()) {
                    // Held back: the server would answer 400 for a method it cannot parse.
                    self.state = State::UnknownMethod(request.path.unwrap_or("/").to_owned());
                    self.head.clear();
                    return &[];
                }
                let next = body_state(&request);
                forward.extend_from_slice(&self.head[..length]);
                let consumed = length - before;
                self.head.clear();
                if self.head.capacity() > 4096 {
                    self.head.shrink_to(1024);
                }
                self.state = next;
                return &bytes[consumed..];
            }
            Ok(httparse::Status::Partial) if self.head.len() <= MAX_HEAD_BYTES => return &[],
            _ => State::Opaque,
        };
        forward.append(&mut self.head);
        self.state = next;
        &[]
    }

    fn feed_chunked<'b>(&mut self, bytes: &'b [u8], forward: &mut Vec<u8>) -> &'b [u8] {
        let State::Chunked { chunk, started, .. } = &mut self.state else { return bytes };
        *started = true;
        match chunk {
            Chunk::Data(remaining) => {
                let take = bytes.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                forward.extend_from_slice(&bytes[..take]);
                *remaining -= take as u64;
                if *remaining == 0 {
                    *chunk = Chunk::DataEnd(2);
                }
                return &bytes[take..];
            }
            Chunk::DataEnd(left) => {
                let take = bytes.len().min(usize::from(*left));
                forward.extend_from_slice(&bytes[..take]);
                *left -= take as u8;
                if *left == 0 {
                    *chunk = Chunk::Size;
                }
                return &bytes[take..];
            }
            Chunk::Size | Chunk::Trailers => {}
        }
        let size_line = matches!(chunk, Chunk::Size);
        let (line_done, taken) = match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => (true, end + 1),
            None => (false, bytes.len()),
        };
        self.line.extend_from_slice(&bytes[..taken]);
        forward.extend_from_slice(&bytes[..taken]);
        if self.line.len() > MAX_CHUNK_LINE_BYTES {
            self.state = State::Opaque;
        } else if line_done {
            let next = if size_line {
                match httparse::parse_chunk_size(&self.line) {
                    Ok(httparse::Status::Complete((_, 0))) => Some(Chunk::Trailers),
                    Ok(httparse::Status::Complete((_, size))) => Some(Chunk::Data(size)),
                    _ => None,
                }
            } else if self.line == b"\r\n" || self.line == b"\n" {
                // An empty line ends the trailers, and the request.
                self.state = State::Idle;
                self.line.clear();
                return &bytes[taken..];
            } else {
                Some(Chunk::Trailers)
            };
            self.line.clear();
            match (next, &mut self.state) {
                (Some(next), State::Chunked { chunk, .. }) => *chunk = next,
                _ => self.state = State::Opaque,
            }
        }
        &bytes[taken..]
    }
}

/// What follows a complete request head, by RFC 9112 section 6.3: a chunked body, a body of
/// `Content-Length` bytes, or none. Ambiguous framing is left to the server to refuse.
fn body_state(request: &httparse::Request<'_, '_>) -> State {
    let values =
        |name: &'static str| request.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let has_token = |name: &'static str, token: &str| {
        values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let upgrade = values("upgrade").next().is_some() && has_token("connection", "upgrade");
    if request.method == Some("CONNECT") {
        return State::Opaque;
    }
    if upgrade {
        return State::AwaitingUpgrade;
    }
    let expect_continue = has_token("expect", "100-continue");
    let codings: Vec<&[u8]> = values("transfer-encoding").collect();
    if !codings.is_empty() {
        let last = codings
            .iter()
            // Bytes that are not text are no coding the server knows: it refuses them.
            .map(|v| std::str::from_utf8(v).unwrap_or("?"))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rev()
            .find(|t| !t.is_empty());
        return match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => {
                State::Chunked { chunk: Chunk::Size, expect_continue, started: false }
            }
            _ => State::Opaque,
        };
    }
    let mut lengths =
        values("content-length").map(|v| std::str::from_utf8(v).ok().and_then(|v| v.trim().parse::<u64>().ok()));
    match lengths.next() {
        None => State::Idle,
        Some(Some(length)) if lengths.all(|other| other == Some(length)) => match length {
            0 => State::Idle,
            remaining => State::Fixed { remaining, expect_continue, started: false },
        },
        Some(_) => State::Opaque,
    }
}

#[cfg(test)]
mod tests {
    use super::{Framing, Phase};

    /// Feeds `input` in pieces of `step` bytes and returns what was forwarded and the phase after each piece.
    fn feed(input: &[u8], step: usize) -> (Vec<u8>, Vec<Phase>) {
        let mut framing = Framing::default();
        let mut forwarded = Vec::new();
        let phases = input
            .chunks(step)
            .map(|piece| {
                framing.feed(piece, &mut forwarded);
                framing.phase()
            })
            .collect();
        (forwarded, phases)
    }

    #[test]
    fn follows_requests_with_and_without_bodies_in_any_split() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /api/v1/images HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n\
            GET /y HTTP/1.1\r\n\r\n";
        for step in [1, 2, 3, 7, 64, stream.len()] {
            let (forwarded, phases) = feed(stream, step);
            assert_eq!(forwarded, stream, "step {step}");
            assert_eq!(phases.last(), Some(&Phase::Idle), "step {step}");
        }
    }

    #[test]
    fn holds_a_head_back_until_it_is_complete() {
        let mut framing = Framing::default();
        let mut forwarded = Vec::new();
        framing.feed(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n", &mut forwarded);
        assert_eq!(framing.phase(), Phase::Head);
        assert!(forwarded.is_empty());
        framing.feed(b"\r\nab", &mut forwarded);
        assert_eq!(framing.phase(), Phase::Body { waiting_for_continue: false });
        assert_eq!(forwarded, b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab");
        framing.feed(b"cd", &mut forwarded);
        assert_eq!(framing.phase(), Phase::Idle);
    }

    #[test]
    fn a_client_waiting_for_continue_owes_no_body_yet() {
        let mut framing = Framing::default();
        let mut forwarded = Vec::new();
        framing.feed(b"PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n", &mut forwarded);
        assert_eq!(framing.phase(), Phase::Body { waiting_for_continue: true });
        framing.feed(b"a", &mut forwarded);
        assert_eq!(framing.phase(), Phase::Body { waiting_for_continue: false });
    }

    #[test]
    fn an_upgrade_is_opaque_only_once_the_server_switches() {
        let head = b"GET /api/v1/ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        for switched in [true, false] {
            let mut framing = Framing::default();
            let mut forwarded = Vec::new();
            framing.feed(head, &mut forwarded);
            assert_eq!(framing.phase(), Phase::AwaitingUpgrade);
            framing.upgrade_answered(switched);
            framing.feed(b"GET / HTTP/1.1\r\n", &mut forwarded);
            assert_eq!(framing.phase(), if switched { Phase::Opaque } else { Phase::Head });
        }
    }

    #[test]
    fn unfollowable_framing_becomes_opaque() {
        for head in [
            &b"CONNECT a:443 HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"\x16\x03\x01 not http\r\n\r\n",
        ] {
            let (forwarded, phases) = feed(head, head.len());
            assert_eq!(forwarded, head);
            assert_eq!(phases.last(), Some(&Phase::Opaque), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn a_method_the_server_cannot_parse_is_held_back() {
        let mut framing = Framing::default();
        let mut forwarded = Vec::new();
        framing
            .feed(b"GET / HTTP/1.1\r\n\r\nQUERY /api/v1/images?x=1 HTTP/1.1\r\nHost: a\r\n\r\nGET /", &mut forwarded);
        assert_eq!(forwarded, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(framing.phase(), Phase::UnknownMethod);
        assert_eq!(framing.unknown_method_path(), Some("/api/v1/images?x=1"));
    }

    #[test]
    fn an_endless_head_is_passed_on_for_the_server_to_refuse() {
        let mut framing = Framing::default();
        let mut forwarded = Vec::new();
        framing.feed(b"GET / HTTP/1.1\r\n", &mut forwarded);
        let header =
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        while framing.phase() == Phase::Head {
            framing.feed(header, &mut forwarded);
        }
        assert_eq!(framing.phase(), Phase::Opaque);
        assert!(forwarded.starts_with(b"GET / HTTP/1.1\r\n"));
    }
}
