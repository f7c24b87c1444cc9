//! HTTP/1.1 framing, pure and I/O-free: request and response heads in, framing
//! decisions and rewritten heads out. Nothing here touches a socket, so all of it
//! is unit-tested, fuzzable and benched directly (`benches/framing.rs`).

pub mod chunked;
pub mod fields;
pub mod request;
pub mod response;
pub mod rewrite;
#[cfg(any(test, feature = "fuzzing"))]
pub mod roundtrip;

pub use chunked::{ChunkedDecoder, ChunkedError};
pub use request::{BodyFraming, RequestError, RequestHead};
pub use response::{ResponseError, ResponseFraming, ResponseHead};

/// Most header fields in any head percore parses or writes. nginx and HAProxy
/// both cap at about a hundred (HAProxy's `tune.http.maxhdr`: 101).
pub const MAX_HEADERS: usize = 100;

/// Most fields percore adds to a request it forwards: Host, Content-Length
/// or Transfer-Encoding, Connection and Upgrade (WebSocket), X-Forwarded-For,
/// -Proto and -Host, Max-Forwards, X-Request-Id and Via.
pub const FIELDS_ADDED_UPSTREAM: usize = 10;

/// Most fields percore adds to a response it relays: Content-Length or
/// Transfer-Encoding, Connection and Upgrade, X-Request-Id and Via.
pub const FIELDS_ADDED_DOWNSTREAM: usize = 5;

/// Most fields accepted in a client's request head (more: 431), so that the
/// head percore forwards stays within `MAX_HEADERS`, a limit a backend may
/// have too: a request percore accepted must not be one it sends in a form
/// that it, or an HAProxy behind it, would refuse.
pub const MAX_REQUEST_FIELDS: usize = MAX_HEADERS - FIELDS_ADDED_UPSTREAM;

/// Most fields accepted in a backend's response head (more: 502), for the
/// same reason on the way back.
pub const MAX_RESPONSE_FIELDS: usize = MAX_HEADERS - FIELDS_ADDED_DOWNSTREAM;

/// The protocol version of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    fn from_minor(minor: u8) -> Version {
        if minor == 0 {
            Version::Http10
        } else {
            Version::Http11
        }
    }

    /// The `received-protocol` of a `Via` entry (RFC 9110 §7.6.3).
    pub fn via_token(self) -> &'static str {
        match self {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
        }
    }
}

/// Uninitialised slots for the fields of one head, kept on the caller's
/// stack. Uninitialised on purpose: initialising them would write 3.2 KB on
/// every parse, a large share of the user-space cost of a request.
pub type HeaderSlots<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Fresh header slots; costs nothing.
#[inline]
pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Checks that every LF in a request head is part of a CRLF. RFC 9112 §2.2
/// lets a recipient accept a bare LF, but a backend that does not would see
/// different field boundaries than we do, so percore rejects it. memchr jumps
/// from line to line: a byte-by-byte scan cost a quarter of the proxy's
/// user-space instructions per request.
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r')
}

/// Mutation fuzzing of the framing code with a fixed seed: bounded, so it
/// runs with the unit tests. Whatever the bytes, parsing must not panic, and
/// the properties in `roundtrip` must hold.
#[cfg(test)]
mod fuzz {
    use super::*;

    const SEEDS: &[&[u8]] = &[
        b"GET /a?b HTTP/1.1\r\nHost: h:80\r\nConnection: keep-alive, x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        b"POST http://a:8/p HTTP/1.1\r\nHost: [::1]:9\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
        b"OPTIONS * HTTP/1.0\r\nMax-Forwards: 3\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\nhello",
        b"HTTP/1.0 304 Not Modified\r\nKeep-Alive: 5\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
    ];
    const INTERESTING: &[u8] = b"\r\n\0 \t:;,#[]%\x7f\x80\xffaZ09-";

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn mutate(rng: &mut XorShift, input: &mut Vec<u8>) {
        for _ in 0..=rng.below(4) {
            let at = rng.below(input.len() + 1);
            match rng.below(5) {
                0 if at < input.len() => {
                    input[at] = INTERESTING[rng.below(INTERESTING.len())];
                }
                1 if at < input.len() => {
                    input.remove(at);
                }
                2 => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                3 => {
                    // Repeat a slice: long lines, many fields, huge numbers.
                    let start = rng.below(input.len());
                    let end = (start + rng.below(16)).min(input.len());
                    let piece = input[start..end].repeat(1 + rng.below(64));
                    input.splice(at..at, piece);
                }
                _ => input.truncate(at),
            }
        }
    }

    /// `PERCORE_FUZZ_ROUNDS` and `PERCORE_FUZZ_SEED` make a longer or other
    /// run: `PERCORE_FUZZ_ROUNDS=10000000 cargo test --release --lib fuzz`.
    fn from_env(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    #[test]
    fn framing_survives_mutated_input() {
        let mut rng = XorShift(from_env("PERCORE_FUZZ_SEED", 0x9e37_79b9_7f4a_7c15).max(1));
        let (mut requests, mut responses, mut bodies) = (0, 0, 0);
        for round in 0..from_env("PERCORE_FUZZ_ROUNDS", 30_000) as usize {
            let mut input = SEEDS[round % SEEDS.len()].to_vec();
            mutate(&mut rng, &mut input);
            requests += usize::from(roundtrip::check_request(&input).unwrap());
            responses += usize::from(roundtrip::check_response(&input, round % 7 == 0).unwrap());
            // The chunked decoder gets what follows the head, if anything does.
            let body =
                memchr::memmem::find(&input, b"\r\n\r\n").map_or(&input[..], |at| &input[at + 4..]);
            let cuts = rng.next().to_le_bytes();
            bodies += usize::from(roundtrip::check_chunked(body, &cuts).unwrap());
        }
        // The mutations must leave enough valid heads and bodies to reach
        // the rewriting and the end of the decoding.
        assert!(
            requests > 1_000 && responses > 1_000 && bodies > 1_000,
            "{requests} {responses} {bodies}"
        );
    }
}
