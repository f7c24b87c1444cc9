//! Response-head parsing and body framing (RFC 9112 §4, §6.3), for heads read
//! from a backend. A backend's framing mistakes become a 502, never a guess.
//! A bare LF line ending is accepted here (RFC 9112 §2.2 allows it): percore
//! is the only party that parses this head, and it re-serialises it with CRLF.

use std::mem::MaybeUninit;

use super::Version;
use super::fields::{ConnectionOptions, FramingFieldError, FramingFields};

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304 (item 1), or Content-Length: 0.
    None,
    Length(u64),
    Chunked,
    /// Neither Content-Length nor chunked: the body runs to the connection's close.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head from backend")]
    Malformed,
    #[error("backend response head too large")]
    HeadTooLarge,
    #[error("backend sent both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    #[error("backend sent a malformed or conflicting Content-Length")]
    BadContentLength,
    #[error("backend sent an unsupported transfer coding")]
    UnsupportedTransferCoding,
    #[error("backend switched protocols to one percore did not offer")]
    SwitchingProtocols,
}

pub struct ResponseHead<'b, 'h> {
    pub status: u16,
    pub reason: &'b str,
    pub version: Version,
    pub headers: &'h [httparse::Header<'b>],
    pub head_len: usize,
    pub framing: ResponseFraming,
    /// Whether the backend keeps the connection open after this response.
    pub keep_alive: bool,
    pub connection: ConnectionOptions<'b>,
}

impl ResponseHead<'_, '_> {
    /// 1xx responses precede the final one (RFC 9110 §15.2); a 101 ends
    /// HTTP on the connection instead, and only where an upgrade was
    /// offered (the caller's check).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// A 101 that switches to WebSocket: `Connection: upgrade` and an
    /// Upgrade field naming `websocket` (RFC 6455 §4.1), the protocol
    /// percore offers.
    pub fn switches_to_websocket(&self) -> bool {
        self.status == 101
            && self.connection.upgrade
            && self.headers.iter().any(|header| {
                header.name.eq_ignore_ascii_case("upgrade")
                    && header.value.eq_ignore_ascii_case(b"websocket")
            })
    }
}

/// Parses a response head; `request_is_head` applies RFC 9112 §6.3 item 1.
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
    request_is_head: bool,
) -> Result<Option<ResponseHead<'b, 'h>>, ResponseError> {
    let mut response = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::HeadTooLarge),
        Err(_) => return Err(ResponseError::Malformed),
    };
    let status = response.code.ok_or(ResponseError::Malformed)?;
    let version = Version::from_minor(response.version.ok_or(ResponseError::Malformed)?);
    let reason = response.reason.unwrap_or("");
    let headers: &'h [httparse::Header<'b>] = response.headers;
    // Valid status codes are 100 to 599 (RFC 9110 §15).
    if !(100..600).contains(&status) {
        return Err(ResponseError::Malformed);
    }

    let mut fields = FramingFields::default();
    for header in headers.iter() {
        fields
            .add(header.name, header.value)
            .map_err(|error| match error {
                FramingFieldError::BadContentLength => ResponseError::BadContentLength,
                FramingFieldError::TooManyConnectionOptions => ResponseError::Malformed,
            })?;
    }
    let FramingFields {
        content_length,
        transfer_encoding,
        final_chunked,
        chunked_count,
        coding_count,
        ..
    } = fields;

    let bodiless =
        request_is_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodiless {
        ResponseFraming::None
    } else if transfer_encoding {
        if content_length.is_some() {
            // RFC 9112 §6.3 item 3 lets Transfer-Encoding win, but a backend
            // sending both is broken or under attack: refuse rather than guess.
            return Err(ResponseError::LengthAndTransferEncoding);
        }
        if final_chunked && chunked_count == 1 && coding_count == 1 {
            ResponseFraming::Chunked
        } else if !final_chunked || chunked_count == 1 {
            // Item 4 would read a body without a final chunked to close, and
            // `gzip, chunked` is gzip inside chunked; but Transfer-Encoding is
            // hop-by-hop and percore decodes only chunked: relaying coded
            // bytes without their coding would corrupt them, so refuse (502),
            // as nginx does.
            return Err(ResponseError::UnsupportedTransferCoding);
        } else {
            return Err(ResponseError::Malformed);
        }
    } else {
        match content_length {
            Some(0) => ResponseFraming::None,
            Some(n) => ResponseFraming::Length(n),
            None => ResponseFraming::UntilClose,
        }
    };
    let keep_alive = framing != ResponseFraming::UntilClose && fields.keep_alive(version);
    Ok(Some(ResponseHead {
        status,
        reason,
        version,
        headers,
        head_len,
        framing,
        keep_alive,
        connection: fields.connection,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::header_slots;

    fn framing(raw: &[u8], head: bool) -> Result<ResponseFraming, ResponseError> {
        let mut headers = header_slots();
        parse(raw, &mut headers, head).map(|r| r.expect("complete").framing)
    }

    #[test]
    fn framing_rules() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Ok(ResponseFraming::Length(3))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok(ResponseFraming::None)
        );
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(ResponseFraming::None)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Ok(ResponseFraming::None)
        );
        assert_eq!(
            framing(b"HTTP/1.1 100 Continue\r\n\r\n", false),
            Ok(ResponseFraming::None)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(ResponseFraming::Chunked)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Err(ResponseError::UnsupportedTransferCoding)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Err(ResponseError::UnsupportedTransferCoding)
        );
        for status in ["000", "099", "600", "999"] {
            let raw = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(
                framing(raw.as_bytes(), false),
                Err(ResponseError::Malformed)
            );
        }
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(ResponseFraming::UntilClose)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(ResponseError::BadContentLength)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Err(ResponseError::LengthAndTransferEncoding)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Err(ResponseError::UnsupportedTransferCoding)
        );
        assert_eq!(
            framing(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Ok(ResponseFraming::None)
        );
        let mut headers = header_slots();
        let switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(
            parse(switch, &mut headers, false)
                .unwrap()
                .unwrap()
                .switches_to_websocket()
        );
        let mut headers = header_slots();
        let h2c =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
        assert!(
            !parse(h2c, &mut headers, false)
                .unwrap()
                .unwrap()
                .switches_to_websocket()
        );
        assert_eq!(
            framing(b"HTTP/1.1 2000 OK\r\n\r\n", false),
            Err(ResponseError::Malformed)
        );
    }

    #[test]
    fn keep_alive_of_backend() {
        let mut headers = header_slots();
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            &mut headers,
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!head.keep_alive);
        let mut headers = header_slots();
        let head = parse(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            &mut headers,
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!head.keep_alive);
    }
}
