//! Header-field helpers shared by request and response handling: list parsing
//! (RFC 9110 §5.6.1), Content-Length validation, the scan of the fields that
//! decide framing and persistence, and the hop-by-hop set.

use super::Version;

/// Iterates the elements of a comma-separated field value, OWS trimmed.
/// Empty elements are yielded as empty slices so callers can reject them.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

/// Trims optional whitespace (SP / HTAB) at both ends.
pub fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Parses one Content-Length field value, which may be a list of identical
/// values ("5, 5", RFC 9112 §6.3 item 5). `None` when malformed or differing.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for element in list_elements(value) {
        if element.is_empty() || element.len() > 19 || !element.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = element
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        match result {
            Some(previous) if previous != n => return None,
            _ => result = Some(n),
        }
    }
    result
}

/// Fields that describe one connection and never cross a proxy
/// (RFC 9110 §7.6.1), plus the framing fields percore always rewrites itself.
pub fn is_hop_by_hop(name: &str) -> bool {
    match name.len() {
        2 => name.eq_ignore_ascii_case("te"),
        7 => name.eq_ignore_ascii_case("trailer") || name.eq_ignore_ascii_case("upgrade"),
        10 => name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"),
        14 => name.eq_ignore_ascii_case("content-length"),
        16 => name.eq_ignore_ascii_case("proxy-connection"),
        17 => name.eq_ignore_ascii_case("transfer-encoding"),
        _ => false,
    }
}

/// The field names listed in Connection headers (RFC 9110 §7.6.1), which must
/// be removed along with Connection itself. Bounded: a head naming more than
/// `MAX` options is rejected rather than forwarded with some left in.
#[derive(Default)]
pub struct ConnectionOptions<'b> {
    names: [&'b [u8]; ConnectionOptions::MAX],
    len: usize,
    pub close: bool,
    pub keep_alive: bool,
    /// `upgrade` was listed: the sender offers (a request) or accepts (a
    /// 101 response) the protocol named in its Upgrade field.
    pub upgrade: bool,
}

impl<'b> ConnectionOptions<'b> {
    pub const MAX: usize = 16;

    /// Records the options of one Connection field value; `false` if there are too many.
    pub fn add(&mut self, value: &'b [u8]) -> bool {
        for option in list_elements(value) {
            if option.is_empty() {
                continue;
            }
            if option.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if option.eq_ignore_ascii_case(b"upgrade") {
                // Upgrade is hop-by-hop anyway: no need to list it.
                self.upgrade = true;
            } else if self.len == Self::MAX {
                return false;
            } else {
                self.names[self.len] = option;
                self.len += 1;
            }
        }
        true
    }

    /// Whether `name` was listed as a connection option.
    pub fn names(&self, name: &str) -> bool {
        self.names[..self.len]
            .iter()
            .any(|listed| listed.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// What the framing fields of one head say: Content-Length,
/// Transfer-Encoding and Connection, scanned the same way for requests and
/// responses. Each side then applies its own RFC 9112 §6.3 rules to them.
#[derive(Default)]
pub struct FramingFields<'b> {
    /// The agreed Content-Length; several fields must carry the same value.
    pub content_length: Option<u64>,
    /// Whether any Transfer-Encoding field was present.
    pub transfer_encoding: bool,
    /// Whether the last transfer coding listed is chunked.
    pub final_chunked: bool,
    /// How many times chunked was listed.
    pub chunked_count: usize,
    /// Every transfer coding listed, chunked or not, empty elements included.
    pub coding_count: usize,
    /// An empty element in a Transfer-Encoding list.
    pub empty_coding: bool,
    pub connection: ConnectionOptions<'b>,
}

/// A framing field that no side can accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingFieldError {
    /// Malformed, or differing from an earlier Content-Length.
    BadContentLength,
    /// More Connection options than `ConnectionOptions::MAX`.
    TooManyConnectionOptions,
}

impl<'b> FramingFields<'b> {
    /// Records one header field if it is a framing field (`Ok(true)`);
    /// `Ok(false)` leaves any other field to the caller. Always inlined: it
    /// runs on every field of every head, and a call kept the parsers a few
    /// percent slower in `benches/framing.rs`.
    #[inline(always)]
    pub fn add(&mut self, name: &str, value: &'b [u8]) -> Result<bool, FramingFieldError> {
        match name.len() {
            10 if name.eq_ignore_ascii_case("connection") => {
                if !self.connection.add(value) {
                    return Err(FramingFieldError::TooManyConnectionOptions);
                }
            }
            14 if name.eq_ignore_ascii_case("content-length") => {
                let n = parse_content_length(value).ok_or(FramingFieldError::BadContentLength)?;
                if self.content_length.is_some_and(|previous| previous != n) {
                    return Err(FramingFieldError::BadContentLength);
                }
                self.content_length = Some(n);
            }
            17 if name.eq_ignore_ascii_case("transfer-encoding") => {
                self.transfer_encoding = true;
                for coding in list_elements(value) {
                    self.final_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    self.chunked_count += usize::from(self.final_chunked);
                    self.coding_count += 1;
                    self.empty_coding |= coding.is_empty();
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the connection persists after this message (RFC 9112 §9.3):
    /// HTTP/1.1 unless `close`, HTTP/1.0 only with `keep-alive`.
    pub fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.connection.close,
            Version::Http10 => self.connection.keep_alive && !self.connection.close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"5, 5"), Some(5));
        assert_eq!(parse_content_length(b"5, 6"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"+5"), None);
        assert_eq!(parse_content_length(b"0x10"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(parse_content_length(b"5,"), None);
    }

    #[test]
    fn connection_options_collects_names() {
        let mut options = ConnectionOptions::default();
        assert!(options.add(b"close, X-Secret ,foo"));
        assert!(options.close);
        assert!(options.names("x-secret"));
        assert!(options.names("FOO"));
        assert!(!options.names("bar"));
    }

    #[test]
    fn framing_fields_scan() {
        let mut fields = FramingFields::default();
        for (name, value) in [
            ("Transfer-Encoding", &b"gzip, ,chunked"[..]),
            ("content-length", b"7"),
            ("Connection", b"keep-alive"),
            ("Host", b"h"),
        ] {
            assert_eq!(fields.add(name, value), Ok(name != "Host"), "{name}");
        }
        assert_eq!(fields.content_length, Some(7));
        assert!(fields.transfer_encoding && fields.final_chunked && fields.empty_coding);
        assert_eq!((fields.chunked_count, fields.coding_count), (1, 3));
        assert!(fields.keep_alive(Version::Http10) && fields.keep_alive(Version::Http11));
        assert_eq!(
            fields.add("Content-Length", b"8"),
            Err(FramingFieldError::BadContentLength)
        );
        let mut closing = FramingFields::default();
        closing.add("connection", b"close, keep-alive").unwrap();
        assert!(!closing.keep_alive(Version::Http10) && !closing.keep_alive(Version::Http11));
        assert!(!FramingFields::default().keep_alive(Version::Http10));
    }

    #[test]
    fn hop_by_hop_set() {
        for name in [
            "Connection",
            "keep-alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "Transfer-Encoding",
            "content-length",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        assert!(!is_hop_by_hop("Host"));
        assert!(!is_hop_by_hop("Trailers"));
    }
}
