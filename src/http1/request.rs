//! Request-head parsing and validation (RFC 9112 §2-3, §6.1-6.3): bytes in,
//! a checked head and its body framing out. Anything a backend could read
//! differently from us is rejected here, before a byte is forwarded.

use std::mem::MaybeUninit;

use super::fields::{ConnectionOptions, FramingFieldError, FramingFields, list_elements};
use super::{Version, has_bare_lf};

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: neither Content-Length nor Transfer-Encoding.
    None,
    /// Exactly this many bytes follow the head (0 kept, so it is forwarded).
    Length(u64),
    /// A chunked body, re-encoded canonically when forwarded.
    Chunked,
}

/// Why a request head was refused; each maps to one status code, and its
/// message is the body of the answer the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request head too large")]
    HeadTooLarge,
    /// The head fits, but not with the fields percore adds: forwarded, it
    /// would be over the limit percore (and a like backend) accepts.
    #[error("request head too large once forwarded (percore adds X-Forwarded-For, Via and more)")]
    ForwardedHeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("malformed request line")]
    RequestLine,
    #[error("HTTP version not supported")]
    Version,
    #[error("malformed header field")]
    HeaderField,
    #[error("bare LF in request head; lines must end with CRLF")]
    BareLf,
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    #[error("malformed or conflicting Content-Length")]
    BadContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    #[error("Transfer-Encoding must end with a single chunked")]
    NotFinallyChunked,
    #[error("transfer coding not supported")]
    UnsupportedTransferCoding,
    #[error("too many Connection options")]
    TooManyConnectionOptions,
    #[error("method not supported by this proxy")]
    MethodNotSupported,
    #[error("malformed request target")]
    BadTarget,
    #[error("malformed Max-Forwards")]
    BadMaxForwards,
}

impl RequestError {
    /// The status code a client gets for this error.
    pub fn status(self) -> u16 {
        match self {
            RequestError::HeadTooLarge
            | RequestError::ForwardedHeadTooLarge
            | RequestError::TooManyHeaders => 431,
            RequestError::Version => 505,
            RequestError::UnsupportedTransferCoding => 501,
            RequestError::MethodNotSupported => 405,
            _ => 400,
        }
    }
}

/// A parsed, validated request head borrowing from the read buffer.
pub struct RequestHead<'b, 'h> {
    pub method: &'b str,
    /// The target to send upstream, in origin-form (absolute-form converted).
    pub path: &'b str,
    pub version: Version,
    pub headers: &'h [httparse::Header<'b>],
    /// Length of the head in the buffer, including the final CRLF.
    pub head_len: usize,
    pub framing: BodyFraming,
    /// The authority: the absolute-form target's, else the Host header's.
    pub authority: Option<&'b [u8]>,
    /// Whether the client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    pub connection: ConnectionOptions<'b>,
    /// Whether the target was absolute-form, so a Host header must be replaced.
    pub absolute_form: bool,
    /// An OPTIONS request's Max-Forwards (RFC 9110 §7.6.2): at 0 percore
    /// answers itself, otherwise it forwards the value less one. `None` for
    /// other methods, which may ignore the field (TRACE is refused).
    pub max_forwards: Option<u64>,
    /// `Expect: 100-continue`: the client may wait for an interim answer
    /// before it sends the body.
    pub expect_continue: bool,
    /// A WebSocket handshake (RFC 6455 §4.1): an HTTP/1.1 GET without a
    /// body, `Connection: upgrade` and one Upgrade field naming `websocket`.
    /// Only then is the upgrade offered to the backend; other upgrades
    /// (h2c among them) are dropped as the hop-by-hop fields they are.
    pub websocket: bool,
}

impl RequestHead<'_, '_> {
    /// Requests a proxy may retry after a failure: idempotent methods (RFC
    /// 9110 §9.2.2), and others that the client marks with an
    /// `Idempotency-Key` field.
    pub fn is_idempotent(&self) -> bool {
        matches!(self.method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE")
            || self.headers.iter().any(|header| {
                header.name.len() == 15 && header.name.eq_ignore_ascii_case("idempotency-key")
            })
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: the head is incomplete; read more (the caller enforces the size cap).
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<RequestHead<'b, 'h>>, RequestError> {
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) if !is_well_formed_other_version(buf) => {
            return Err(RequestError::RequestLine);
        }
        Err(error) => return Err(map_parse_error(error, buf)),
    };
    if has_bare_lf(&buf[..head_len]) {
        return Err(RequestError::BareLf);
    }
    let method = request.method.ok_or(RequestError::RequestLine)?;
    let target = request.path.ok_or(RequestError::RequestLine)?;
    let version = Version::from_minor(request.version.ok_or(RequestError::Version)?);
    let headers: &'h [httparse::Header<'b>] = request.headers;

    // CONNECT tunnels and TRACE reflection (cross-site tracing) are not served,
    // as nginx does not serve them either.
    if method == "CONNECT" || method == "TRACE" {
        return Err(RequestError::MethodNotSupported);
    }
    let (path, target_authority) = split_target(method, target)?;

    let mut fields = FramingFields::default();
    let mut host: Option<&'b [u8]> = None;
    let mut max_forwards: Option<u64> = None;
    let mut expect_continue = false;
    let is_options = method == "OPTIONS";
    // Upgrade fields seen, and whether the last one names websocket.
    let mut upgrades = 0usize;
    let mut upgrade_websocket = false;

    for header in headers.iter() {
        let name = header.name;
        match fields.add(name, header.value) {
            // An empty element leaves the length undeterminable
            // (RFC 9112 §6.3 item 4): refused as soon as it is seen.
            Ok(true) if fields.empty_coding => return Err(RequestError::NotFinallyChunked),
            Ok(true) => continue,
            Ok(false) => {}
            Err(FramingFieldError::BadContentLength) => return Err(RequestError::BadContentLength),
            Err(FramingFieldError::TooManyConnectionOptions) => {
                return Err(RequestError::TooManyConnectionOptions);
            }
        }
        match name.len() {
            4 if name.eq_ignore_ascii_case("host") => {
                if host.is_some() {
                    return Err(RequestError::DuplicateHost);
                }
                host = Some(header.value);
            }
            6 if name.eq_ignore_ascii_case("expect") => {
                expect_continue |= header.value.eq_ignore_ascii_case(b"100-continue");
            }
            7 if name.eq_ignore_ascii_case("upgrade") => {
                upgrades += 1;
                upgrade_websocket = list_elements(header.value)
                    .any(|protocol| protocol.eq_ignore_ascii_case(b"websocket"));
            }
            12 if is_options && name.eq_ignore_ascii_case("max-forwards") => {
                // Several fields would leave the hop count in doubt.
                if max_forwards.is_some() {
                    return Err(RequestError::BadMaxForwards);
                }
                max_forwards = Some(parse_hops(header.value)?);
            }
            _ => {}
        }
    }

    let framing = body_framing(&fields, version)?;

    if version == Version::Http11 && host.is_none() {
        return Err(RequestError::MissingHost);
    }
    if host.is_some_and(|value| !valid_authority(value)) {
        return Err(RequestError::HeaderField);
    }
    let keep_alive = fields.keep_alive(version);
    let websocket = upgrades == 1
        && upgrade_websocket
        && fields.connection.upgrade
        && version == Version::Http11
        && method == "GET"
        && framing == BodyFraming::None;

    Ok(Some(RequestHead {
        method,
        path,
        version,
        headers,
        head_len,
        framing,
        authority: target_authority.or(host),
        keep_alive,
        connection: fields.connection,
        absolute_form: target_authority.is_some(),
        max_forwards,
        expect_continue,
        websocket,
    }))
}

/// The request body's framing (RFC 9112 §6.3), strictly: anything a
/// backend could read differently is refused.
#[inline]
fn body_framing(fields: &FramingFields, version: Version) -> Result<BodyFraming, RequestError> {
    if !fields.transfer_encoding {
        return Ok(fields
            .content_length
            .map_or(BodyFraming::None, BodyFraming::Length));
    }
    if version == Version::Http10 {
        return Err(RequestError::TransferEncodingInHttp10);
    }
    if fields.content_length.is_some() {
        return Err(RequestError::LengthAndTransferEncoding);
    }
    if !fields.final_chunked || fields.chunked_count != 1 {
        return Err(RequestError::NotFinallyChunked);
    }
    if fields.coding_count > fields.chunked_count {
        return Err(RequestError::UnsupportedTransferCoding);
    }
    Ok(BodyFraming::Chunked)
}

/// A Max-Forwards value: 1*DIGIT (RFC 9110 §7.6.2), saturating.
fn parse_hops(value: &[u8]) -> Result<u64, RequestError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::BadMaxForwards);
    }
    Ok(value.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// A parse error's refusal; httparse's `NewLine` also means a request line
/// with bytes after its version, which is no bare-LF matter.
fn map_parse_error(error: httparse::Error, buf: &[u8]) -> RequestError {
    match error {
        httparse::Error::TooManyHeaders => RequestError::TooManyHeaders,
        httparse::Error::Version => RequestError::Version,
        httparse::Error::HeaderName | httparse::Error::HeaderValue => RequestError::HeaderField,
        httparse::Error::NewLine if has_bare_lf(buf) => RequestError::BareLf,
        _ => RequestError::RequestLine,
    }
}

/// Whether the request line is `method SP target SP HTTP/d.d` with a version
/// other than 1.x: only that deserves 505; any other mess is a 400.
fn is_well_formed_other_version(buf: &[u8]) -> bool {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    let version = match line.iter().rposition(|&b| b == b' ') {
        Some(space) if line.iter().filter(|&&b| b == b' ').count() == 2 => &line[space + 1..],
        _ => return false,
    };
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// Splits a request target into the origin-form path to forward and, for the
/// absolute form (RFC 9112 §3.2.2), its authority, which replaces Host.
fn split_target<'b>(
    method: &str,
    target: &'b str,
) -> Result<(&'b str, Option<&'b [u8]>), RequestError> {
    // A fragment is not part of any request-target form (RFC 9112 §3.2).
    if target.as_bytes().contains(&b'#') {
        return Err(RequestError::BadTarget);
    }
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok((target, None))
        } else {
            Err(RequestError::BadTarget)
        };
    }
    let rest = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))
        .ok_or(RequestError::BadTarget)?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.is_empty() || !valid_authority(authority.as_bytes()) {
        return Err(RequestError::BadTarget);
    }
    let path = &rest[authority_end..];
    // An absolute-form target with an empty path is sent as "/" (RFC 9112 §3.2.1);
    // the caller writes "/" before a query in that case.
    Ok((path, Some(authority.as_bytes())))
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// An authority (host[:port]) made only of characters a URI allows there
/// (RFC 3986 §3.2); userinfo ("@") is refused as RFC 9110 §4.2.4 deprecates
/// it. Brackets only around an IP literal, and a port of at most 65535
/// after one colon (§3.2.2-3). One pass: it runs on every request's Host.
fn valid_authority(value: &[u8]) -> bool {
    let Some(&first) = value.first() else {
        return false;
    };
    let bracketed = first == b'[';
    let mut in_brackets = bracketed;
    // Where the port's digits start, once its colon is seen.
    let mut port_from: Option<usize> = None;
    let mut literal_end = 0;
    for (i, &b) in value.iter().enumerate().skip(usize::from(bracketed)) {
        let ok = if port_from.is_some() {
            b.is_ascii_digit()
        } else if in_brackets {
            in_brackets = b != b']';
            literal_end = i;
            b == b']' || b == b':' || is_reg_name_byte(b)
        } else if b == b':' {
            // A host comes before the port.
            port_from = Some(i + 1);
            i > 0
        } else {
            // After an IP literal only its port may follow.
            !bracketed && is_reg_name_byte(b)
        };
        if !ok {
            return false;
        }
    }
    // An IP literal is an IPv6 address (IPvFuture is not accepted).
    let literal_ok = !bracketed
        || value
            .get(1..literal_end)
            .and_then(|literal| std::str::from_utf8(literal).ok())
            .is_some_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok());
    // Five digits compare as numbers do: at most 65535.
    !in_brackets
        && literal_ok
        && port_from.is_none_or(|from| {
            let digits = &value[from..];
            digits.len() < 5 || digits.len() == 5 && digits <= &b"65535"[..]
        })
}

/// A byte of a reg-name or IP literal: unreserved, sub-delims or `%`.
fn is_reg_name_byte(b: u8) -> bool {
    REG_NAME_BYTES[usize::from(b)]
}

const REG_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%')
            || matches!(
                c,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::header_slots;

    fn parse_ok(raw: &[u8]) -> (BodyFraming, bool, usize) {
        let mut headers = header_slots();
        let head = parse(raw, &mut headers).expect("valid").expect("complete");
        (head.framing, head.keep_alive, head.head_len)
    }

    fn parse_err(raw: &[u8]) -> RequestError {
        let mut headers = header_slots();
        match parse(raw, &mut headers) {
            Err(error) => error,
            Ok(Some(_)) => panic!("accepted: {:?}", String::from_utf8_lossy(raw)),
            Ok(None) => panic!("incomplete: {:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nextra";
        assert_eq!(parse_ok(raw), (BodyFraming::None, true, raw.len() - 5));
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        let mut headers = header_slots();
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &mut headers)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!parse_ok(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").1);
        assert!(!parse_ok(b"GET / HTTP/1.0\r\n\r\n").1);
        assert!(parse_ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").1);
    }

    #[test]
    fn body_framing() {
        assert_eq!(
            parse_ok(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").0,
            BodyFraming::Length(5)
        );
        assert_eq!(
            parse_ok(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n").0,
            BodyFraming::Length(5)
        );
        assert_eq!(
            parse_ok(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").0,
            BodyFraming::Chunked
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        use RequestError::*;
        let cases: &[(&[u8], RequestError)] = &[
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", LengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", NotFinallyChunked),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", NotFinallyChunked),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", NotFinallyChunked),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", NotFinallyChunked),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferCoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingInHttp10),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                parse_err(raw),
                *expected,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn malformed_fields_are_refused() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: x\r\nFoo : bar\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nFoo: bar\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nFoo: b\0ar\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nFoo: b\rar\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\nFoo: bar\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\x01Foo: bar\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:xyz\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a]b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: []\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [foo]:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n",
            b"GET http://a:b/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for raw in cases {
            let error = parse_err(raw);
            assert_eq!(
                error.status(),
                400,
                "{:?} gave {error:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn authorities_with_ports_are_accepted() {
        for host in [
            "a:8080", "a:", "a:65535", "a:00080", "[::1]:80", "[::1]", "a.b-c_d",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            parse_ok(raw.as_bytes());
        }
    }

    #[test]
    fn bytes_after_the_version_are_not_called_a_bare_lf() {
        assert_eq!(
            parse_err(b"GET / HTTP/1.10\r\nHost: x\r\n\r\n"),
            RequestError::RequestLine
        );
        assert_eq!(
            parse_err(b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n"),
            RequestError::RequestLine
        );
        assert_eq!(
            parse_err(b"GET / HTTP/1.1\nHost: x\r\n\r\n"),
            RequestError::BareLf
        );
    }

    #[test]
    fn versions_and_methods() {
        assert_eq!(
            parse_err(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").status(),
            505
        );
        assert_eq!(
            parse_err(b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n").status(),
            405
        );
        assert_eq!(
            parse_err(b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n").status(),
            405
        );
    }

    #[test]
    fn absolute_form_takes_its_authority() {
        let mut headers = header_slots();
        let raw = b"GET http://Example.com:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let head = parse(raw, &mut headers).unwrap().unwrap();
        assert_eq!(head.path, "/p?q");
        assert_eq!(head.authority, Some(&b"Example.com:81"[..]));
        assert!(head.absolute_form);
    }
}
