//! Header-field helpers shared by request and response handling: list parsing
//! (RFC 9110 §5.6.1), Content-Length validation and the hop-by-hop set.

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
