//! HTTP/1.1 framing, pure and I/O-free: request and response heads in, framing
//! decisions and rewritten heads out. Nothing here touches a socket, so all of it
//! is unit-tested, fuzzable and benched directly (`benches/framing.rs`).

pub mod chunked;
pub mod fields;
pub mod request;
pub mod response;
pub mod rewrite;

pub use chunked::{ChunkedDecoder, ChunkedError};
pub use request::{BodyFraming, RequestError, RequestHead};
pub use response::{ResponseError, ResponseFraming, ResponseHead};

/// Most header fields accepted in one head; more is answered with 431 (requests)
/// or 502 (responses). nginx and HAProxy both cap at about a hundred.
pub const MAX_HEADERS: usize = 100;

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
/// stack. Uninitialised on purpose: an initialised array is 3.2 KB that
/// would be written on every parse (measured: the largest user-space cost
/// per request before this).
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
