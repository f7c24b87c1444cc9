//! The heads percore writes: the request forwarded upstream, the response
//! relayed to the client, and percore's own error responses. Hop-by-hop fields
//! are dropped (RFC 9110 §7.6.1), framing is re-stated canonically, and the
//! proxy fields (Via, X-Forwarded-*, X-Request-Id) are added.

use std::ops::Range;

use super::Version;
use super::fields::is_hop_by_hop;
use super::request::{BodyFraming, RequestHead};
use super::response::ResponseHead;

/// The hop-by-hop fields of a WebSocket handshake, restated on each hop.
const UPGRADE_WEBSOCKET: &[u8] = b"Connection: upgrade\r\nUpgrade: websocket\r\n";

/// What percore adds to a forwarded request.
pub struct ForwardFields<'a> {
    /// The client's address, already formatted.
    pub client_ip: &'a [u8],
    /// The request id sent upstream and returned to the client.
    pub request_id: &'a [u8],
    /// `host:port` of the chosen backend, the Host of a request that had none.
    pub backend_authority: &'a [u8],
}

/// How the body relayed to the client is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    /// No body; the original Content-Length is kept for HEAD and 304 (RFC 9110 §8.6).
    None,
    Length(u64),
    Chunked,
    /// Close-delimited: the connection closes after the body.
    UntilClose,
}

/// The first X-Request-Id value of a head, if any.
pub fn find_request_id<'b>(headers: &[httparse::Header<'b>]) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| {
            h.name.len() == 12 && h.name.eq_ignore_ascii_case("x-request-id") && !h.value.is_empty()
        })
        .map(|h| h.value)
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Writes the request head to send upstream, always as HTTP/1.1. Returns
/// where in `out` the backend's authority stands as the Host of a request
/// that had none, so a retry on another backend can rewrite it.
pub fn write_request_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    fields: &ForwardFields,
) -> Option<Range<usize>> {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    if head.absolute_form && !head.path.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(head.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let mut forwarded_for_seen = false;
    for header in head.headers {
        let name = header.name;
        if is_hop_by_hop(name) || head.connection.names(name) && !name.eq_ignore_ascii_case("host")
        {
            continue;
        }
        match name.len() {
            // Host is replaced by an absolute-form target's authority (RFC 9112 §3.2.2).
            4 if name.eq_ignore_ascii_case("host") && head.absolute_form => continue,
            // An HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1).
            6 if name.eq_ignore_ascii_case("expect") && head.version == Version::Http10 => {
                continue;
            }
            12 if name.eq_ignore_ascii_case("x-request-id") => continue,
            15 if name.eq_ignore_ascii_case("x-forwarded-for") => {
                forwarded_for_seen = true;
                continue;
            }
            16 if name.eq_ignore_ascii_case("x-forwarded-host") => continue,
            12 if head.max_forwards.is_some() && name.eq_ignore_ascii_case("max-forwards") => {
                continue;
            }
            17 if name.eq_ignore_ascii_case("x-forwarded-proto") => continue,
            _ => {}
        }
        push_field(out, name.as_bytes(), header.value);
    }

    let mut backend_host = None;
    match (head.absolute_form, head.authority) {
        (true, Some(authority)) => push_field(out, b"Host", authority),
        (false, None) => {
            let start = out.len() + b"Host: ".len();
            push_field(out, b"Host", fields.backend_authority);
            backend_host = Some(start..start + fields.backend_authority.len());
        }
        _ => {}
    }
    match head.framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    if head.websocket {
        out.extend_from_slice(UPGRADE_WEBSOCKET);
    }

    // X-Forwarded-For: the received list, then this client (one line, so
    // backends that read only the first or last line agree).
    out.extend_from_slice(b"X-Forwarded-For: ");
    if forwarded_for_seen {
        for header in head
            .headers
            .iter()
            .filter(|h| !h.value.is_empty() && h.name.eq_ignore_ascii_case("x-forwarded-for"))
        {
            out.extend_from_slice(header.value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fields.client_ip);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    if let Some(hops) = head.max_forwards {
        // Only 1 or more is forwarded: at 0 percore answers itself.
        out.extend_from_slice(b"Max-Forwards: ");
        push_decimal(out, hops.saturating_sub(1));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(authority) = head.authority {
        push_field(out, b"X-Forwarded-Host", authority);
    }
    push_field(out, b"X-Request-Id", fields.request_id);
    out.extend_from_slice(b"Via: ");
    out.extend_from_slice(head.version.via_token().as_bytes());
    out.extend_from_slice(b" percore\r\n\r\n");
    backend_host
}

/// Writes the response head relayed to the client.
pub fn write_response_head(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    request_id: &[u8],
    body: ClientBody,
    client_version: Version,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    // HEAD and 304 responses keep the Content-Length of the representation.
    let keep_length = body == ClientBody::None && !head.is_interim() && head.status != 204;
    let mut has_request_id = false;
    for header in head.headers {
        let name = header.name;
        if name.len() == 14 && keep_length && name.eq_ignore_ascii_case("content-length") {
            push_field(out, name.as_bytes(), header.value);
            continue;
        }
        if is_hop_by_hop(name) || head.connection.names(name) {
            continue;
        }
        has_request_id |= name.len() == 12 && name.eq_ignore_ascii_case("x-request-id");
        push_field(out, name.as_bytes(), header.value);
    }
    match body {
        ClientBody::None | ClientBody::UntilClose => {}
        ClientBody::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ClientBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    if head.switches_to_websocket() {
        out.extend_from_slice(UPGRADE_WEBSOCKET);
    }
    if !head.is_interim() {
        if !has_request_id {
            push_field(out, b"X-Request-Id", request_id);
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if client_version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"Via: ");
    out.extend_from_slice(head.version.via_token().as_bytes());
    out.extend_from_slice(b" percore\r\n\r\n");
}

/// The reason phrase percore uses for the statuses it generates: the `http`
/// crate's canonical one, or "Error" for a code it has none for.
pub fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Error")
}

/// Writes a complete response generated by percore itself (errors, mostly):
/// a one-line plain-text body naming the problem.
pub fn write_local_response(
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    request_id: &[u8],
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_decimal(out, message.len() as u64 + 1);
    out.extend_from_slice(b"\r\n");
    if !request_id.is_empty() {
        push_field(out, b"X-Request-Id", request_id);
    }
    match status {
        503 => out.extend_from_slice(b"Retry-After: 1\r\n"),
        // 405, and 200: an OPTIONS answered here (Max-Forwards: 0).
        405 | 200 => {
            out.extend_from_slice(b"Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n");
        }
        _ => {}
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(message.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(502), "Bad Gateway");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(599), "Error");
        assert_eq!(reason_phrase(1000), "Error");
    }
    use crate::http1::{header_slots, request, response};

    fn forward(raw: &[u8]) -> String {
        let mut headers = header_slots();
        let head = request::parse(raw, &mut headers).unwrap().unwrap();
        let mut out = Vec::new();
        let fields = ForwardFields {
            client_ip: b"10.0.0.9",
            request_id: b"rid-1",
            backend_authority: b"127.0.0.1:9000",
        };
        let id = find_request_id(head.headers).unwrap_or(fields.request_id);
        write_request_head(
            &mut out,
            &head,
            &ForwardFields {
                request_id: id,
                ..fields
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_hop_by_hop_removed_and_proxy_fields_added() {
        let out = forward(
            b"POST /x?y HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: a\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Secret: s\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nContent-Length: 0005\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            out,
            "POST /x?y HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nContent-Length: 5\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: example.com\r\nX-Request-Id: rid-1\r\nVia: 1.1 percore\r\n\r\n"
        );
    }

    #[test]
    fn request_id_kept_and_host_added_for_http10() {
        let out = forward(b"GET / HTTP/1.0\r\nX-Request-Id: abc\r\n\r\n");
        assert!(out.contains("X-Request-Id: abc\r\n"), "{out}");
        assert!(out.contains("Host: 127.0.0.1:9000\r\n"), "{out}");
        assert!(out.starts_with("GET / HTTP/1.1\r\n"));
        assert!(out.contains("Via: 1.0 percore\r\n"));
    }

    #[test]
    fn an_empty_forwarded_for_adds_no_empty_element() {
        let out = forward(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For:\r\n\r\n");
        assert!(out.contains("X-Forwarded-For: 10.0.0.9\r\n"), "{out}");
    }

    #[test]
    fn expect_is_dropped_only_for_http10() {
        let out = forward(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!out.to_ascii_lowercase().contains("expect"), "{out}");
        let out = forward(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(out.contains("Expect: 100-continue\r\n"), "{out}");
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let out = forward(b"GET http://a.example:8/q?z HTTP/1.1\r\nHost: ignored\r\n\r\n");
        assert!(out.starts_with("GET /q?z HTTP/1.1\r\n"), "{out}");
        assert!(
            out.contains("Host: a.example:8\r\n") && !out.contains("ignored"),
            "{out}"
        );
        let out = forward(b"GET http://a.example?z HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert!(out.starts_with("GET /?z HTTP/1.1\r\n"), "{out}");
    }

    #[test]
    fn response_head_rewritten() {
        let mut headers = header_slots();
        let raw = b"HTTP/1.1 200 Fine\r\nConnection: close, X-Internal\r\nX-Internal: 1\r\nTransfer-Encoding: chunked\r\nServer: s\r\n\r\n";
        let head = response::parse(raw, &mut headers, false).unwrap().unwrap();
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            &head,
            b"rid",
            ClientBody::Chunked,
            Version::Http11,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nServer: s\r\nTransfer-Encoding: chunked\r\nX-Request-Id: rid\r\nVia: 1.1 percore\r\n\r\n"
        );
    }

    #[test]
    fn head_response_keeps_content_length() {
        let mut headers = header_slots();
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n";
        let head = response::parse(raw, &mut headers, true).unwrap().unwrap();
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            &head,
            b"rid",
            ClientBody::None,
            Version::Http11,
            true,
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("Content-Length: 42\r\n") && out.contains("Connection: close\r\n"),
            "{out}"
        );
    }

    #[test]
    fn local_response_is_complete() {
        let mut out = Vec::new();
        write_local_response(&mut out, 503, "no backend available", b"r", false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Retry-After: 1\r\n") && text.contains("Content-Length: 21\r\n"));
        assert!(text.ends_with("\r\n\r\nno backend available\n"));
    }
}
