//! One admin connection, HTTP/1.1 over monoio-http's h1 codec:
//! `RequestDecoder` on the read half (head parsing, Content-Length and
//! chunked bodies), `GenericEncoder` on the write half (status line,
//! Content-Length, body). Admin bodies are small JSON, so the codec's
//! whole-body buffering suits them.
//!
//! The codec leaves to its user what a server exposed to scripts needs, and
//! this module adds it:
//! - size limits. The decoder buffers a head until it sees CRLF CRLF and a
//!   body until it is complete, without bound; every read here goes through
//!   `Budgeted`, which fails once the request has used its byte budget (a
//!   head over `MAX_HEAD` is 431, a body over `MAX_BODY` 413). A declared
//!   Content-Length over the limit is refused from the head alone.
//! - lingering close: after an error that ends the connection, the rest of
//!   what the client sent is read and discarded (bounded) before closing,
//!   because closing with unread data makes the kernel send a reset, which
//!   can destroy the error reply before the client has read it.
//! - timeouts: an idle keep-alive connection, a body that does not arrive, a
//!   client that does not read its reply.
//! - keep-alive rules (RFC 9112 §9.3): `Connection: close`, and HTTP/1.0
//!   without `keep-alive`, close after the reply; so does every error the
//!   HTTP layer itself answers.
//! - shutdown: a connection waiting for its next request stops at once.
//!
//! Not done: `100 Continue`. The encoder can only send whole responses, and
//! it would put `content-length: 0` on a 1xx, which RFC 9110 §8.6 forbids.
//! RFC 9110 §10.1.1 lets a server read the body without it; a client that
//! sent `Expect: 100-continue` sends the body after its own short wait
//! (curl: 1 s, and only for bodies over 1 KiB).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBufMut, IoVecBufMut};
use monoio::io::sink::{Sink, SinkExt};
use monoio::io::stream::Stream;
use monoio::io::{AsyncReadRent, Splitable};
use monoio::net::TcpStream;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio_http::common::error::HttpError;
use monoio_http::common::request::{RequestBuilder, RequestHead};
use monoio_http::common::response::{Response, ResponseBuilder};
use monoio_http::h1::codec::decoder::{DecodeError, FillPayload, RequestDecoder};
use monoio_http::h1::codec::encoder::GenericEncoder;
use monoio_http::h1::payload::{FixedPayload, Payload};

use super::AdminContext;
use super::routes::{self, ApiError, MAX_BODY, Reply};

/// The largest request head. Admin requests carry a few short headers.
const MAX_HEAD: usize = 16 * 1024;
/// Wire bytes a chunked body may use: chunk-size lines come on top of the
/// `MAX_BODY` bytes of data it may carry.
const MAX_CHUNKED_WIRE: usize = 2 * MAX_BODY;
/// A keep-alive connection waiting for (or sending) its next request head:
/// short, as a connection slot held by a client that sends nothing or
/// trickles its head is one of only `MAX_CONNECTIONS`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// From the end of a request head to the end of its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Writing a reply to a client that does not read it.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Lingering close: how much is read and discarded, and for how long.
const LINGER_BYTES: usize = 1024 * 1024;
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);

type Decoder = RequestDecoder<Budgeted>;
type Encoder = GenericEncoder<TcpOwnedWriteHalf>;

/// Serves requests on `stream` until the client closes, an error closes it,
/// or the admin API stops.
pub(super) async fn serve(stream: TcpStream, context: &AdminContext) {
    let (read_half, write_half) = stream.into_split();
    let reader = Rc::new(ReadSide {
        half: RefCell::new(Some(read_half)),
        budget: Cell::new(0),
    });
    let mut decoder: Decoder = RequestDecoder::new(Budgeted(reader.clone()));
    let mut encoder: Encoder = GenericEncoder::new(write_half);
    loop {
        reader.budget.set(MAX_HEAD);
        let request = match bounded(context, IDLE_TIMEOUT, decoder.next()).await {
            Bounded::Done(Some(Ok(request))) => request,
            // The client closed, went quiet, or the admin API is stopping.
            Bounded::Done(None) | Bounded::TimedOut | Bounded::Stopping => return,
            Bounded::Done(Some(Err(error))) => {
                let refusal = if reader.over_budget() {
                    ApiError::HeadTooLarge(MAX_HEAD)
                } else if is_connection_error(&error) {
                    return;
                } else {
                    ApiError::MalformedHttp(describe(&error))
                };
                refuse(context, &mut encoder, &reader, &refusal).await;
                return;
            }
        };
        let (head, payload) = request.into_parts();
        // Before the body is read: an unauthorized client's body is never
        // buffered, and the connection closes after the 401.
        if let Err(refusal) = authorize(context, &head).and_then(|()| check_framing(&head)) {
            refuse(context, &mut encoder, &reader, &refusal).await;
            return;
        }
        let body = match read_body(context, &mut decoder, &reader, &head, payload).await {
            Ok(body) => body,
            Err(BodyFailure::Refused(refusal)) => {
                refuse(context, &mut encoder, &reader, &refusal).await;
                return;
            }
            Err(BodyFailure::Gone) => return,
        };
        let request = routes::Request {
            method: head.method.as_str(),
            path: head.uri.path(),
            query: head.uri.query(),
            body: &body,
        };
        let reply = routes::respond(context, request).await;
        let close = !keep_alive(&head) || context.stopping.is_set();
        if !send(&mut encoder, reply, close).await || close {
            return;
        }
    }
}

/// Answers an error that ends the connection, then closes it lingering:
/// ends the reply with a FIN, and reads and discards what the client still
/// sends (bounded), so that the close does not reset the connection before
/// the client has read the reply.
async fn refuse(
    context: &AdminContext,
    encoder: &mut Encoder,
    reader: &ReadSide,
    refusal: &ApiError,
) {
    if !send(encoder, Reply::error(refusal), true).await
        || Sink::<Response>::close(encoder).await.is_err()
    {
        return;
    }
    // Taken only when no read is in flight: the decoder's last one failed.
    let Some(mut half) = reader.half.borrow_mut().take() else {
        return;
    };
    let discard = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            let (result, returned) = half.read(buf).await;
            buf = returned;
            match result {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => return,
            }
        }
    };
    let _ = bounded(context, LINGER_TIMEOUT, discard).await;
}

enum BodyFailure {
    /// Answer this, and close.
    Refused(ApiError),
    /// The client went away (or the admin API is stopping): nothing to answer.
    Gone,
}

/// Reads a whole request body of at most `MAX_BODY` bytes.
async fn read_body(
    context: &AdminContext,
    decoder: &mut Decoder,
    reader: &ReadSide,
    head: &RequestHead,
    payload: Payload,
) -> Result<Vec<u8>, BodyFailure> {
    match payload {
        Payload::None => Ok(Vec::new()),
        Payload::Fixed(mut fixed) => {
            // The decoder has already checked that Content-Length is one number.
            let length: usize = header(head, "content-length")
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(usize::MAX);
            if length > MAX_BODY {
                return Err(BodyFailure::Refused(ApiError::BodyTooLarge));
            }
            reader.budget.set(MAX_BODY + MAX_HEAD);
            fill(context, decoder, reader).await?;
            match fixed.next().await {
                Some(Ok(bytes)) => Ok(bytes.to_vec()),
                _ => Err(BodyFailure::Gone),
            }
        }
        Payload::Stream(mut chunks) => {
            reader.budget.set(MAX_CHUNKED_WIRE);
            fill(context, decoder, reader).await?;
            let mut body = Vec::new();
            // `fill` has decoded the whole body: these never wait.
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|_| BodyFailure::Gone)?;
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(BodyFailure::Refused(ApiError::BodyTooLarge));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        }
    }
}

/// Has the decoder read the current request's body, within budget and time.
async fn fill(
    context: &AdminContext,
    decoder: &mut Decoder,
    reader: &ReadSide,
) -> Result<(), BodyFailure> {
    match bounded(context, BODY_TIMEOUT, decoder.fill_payload()).await {
        Bounded::Done(Ok(())) => Ok(()),
        Bounded::Done(Err(_)) if reader.over_budget() => {
            Err(BodyFailure::Refused(ApiError::BodyTooLarge))
        }
        Bounded::Done(Err(error)) if is_connection_error(&error) => Err(BodyFailure::Gone),
        Bounded::Done(Err(error)) => Err(BodyFailure::Refused(ApiError::MalformedHttp(describe(
            &error,
        )))),
        Bounded::TimedOut => Err(BodyFailure::Refused(ApiError::BodyTimeout(BODY_TIMEOUT))),
        Bounded::Stopping => Err(BodyFailure::Gone),
    }
}

/// Sends `reply`; `false` if the client is gone or does not read.
async fn send(encoder: &mut Encoder, reply: Reply, close: bool) -> bool {
    let mut response = ResponseBuilder::new()
        .status(reply.status)
        .header("content-type", reply.content_type);
    if let Some(allow) = reply.allow {
        response = response.header("allow", allow);
    }
    if let Some(challenge) = reply.www_authenticate {
        response = response.header("www-authenticate", challenge);
    }
    if close {
        response = response.header("connection", "close");
    }
    // An empty body is `Payload::None`, which the encoder frames as
    // `content-length: 0`.
    let body = if reply.body.is_empty() {
        Payload::None
    } else {
        Payload::Fixed(FixedPayload::new(reply.body.into()))
    };
    let response: Response = response
        .body(body)
        .expect("status codes and header values here are valid");
    matches!(
        monoio::time::timeout(SEND_TIMEOUT, encoder.send_and_flush(response)).await,
        Ok(Ok(()))
    )
}

/// With an admin token configured, a request needs `Authorization: Bearer
/// <token>` (RFC 6750 §2.1; the scheme is case-insensitive, RFC 9110 §11.1).
/// The token is compared in constant time, and never logged.
fn authorize(context: &AdminContext, head: &RequestHead) -> Result<(), ApiError> {
    let Some(token) = &context.token else {
        return Ok(());
    };
    let mut values = head.headers.get_all("authorization").iter();
    let presented = match (values.next(), values.next()) {
        (Some(value), None) => value.as_bytes(),
        _ => return Err(ApiError::Unauthorized),
    };
    let credentials = presented
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|_| presented[7..].trim_ascii());
    match credentials {
        Some(credentials) if token.matches(credentials) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Refuses what the decoder lets through but a request must not have
/// (RFC 9112 §6.3): both Content-Length and Transfer-Encoding, or more than
/// one Content-Length (the decoder would use the first).
fn check_framing(head: &RequestHead) -> Result<(), ApiError> {
    let lengths = head.headers.get_all("content-length").iter().count();
    if lengths > 0 && head.headers.contains_key("transfer-encoding") {
        return Err(ApiError::MalformedHttp(
            "both Content-Length and Transfer-Encoding".into(),
        ));
    }
    if lengths > 1 {
        return Err(ApiError::MalformedHttp(
            "more than one Content-Length".into(),
        ));
    }
    Ok(())
}

/// The decoder's error as a sentence (its own texts name the wrong protocol,
/// "http2 decode error", and its internals).
fn describe(error: &HttpError) -> String {
    match error {
        HttpError::H1DecodeError(DecodeError::Parse(error)) => error.to_string(),
        HttpError::H1DecodeError(DecodeError::Header) => {
            "malformed Content-Length or unsupported Transfer-Encoding".into()
        }
        HttpError::H1DecodeError(DecodeError::Chunked) => {
            "malformed chunked body (chunk extensions are not supported)".into()
        }
        HttpError::H1DecodeError(DecodeError::Method(_)) => "invalid method".into(),
        HttpError::H1DecodeError(DecodeError::Uri(_)) => "invalid request target".into(),
        other => other.to_string(),
    }
}

/// Whether the connection stays open after this request (RFC 9112 §9.3).
fn keep_alive(head: &RequestHead) -> bool {
    let options = || {
        head.headers
            .get_all("connection")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
    };
    if options().any(|option| option.trim().eq_ignore_ascii_case("close")) {
        return false;
    }
    // percore does not depend on the `http` crate itself; a fresh builder's
    // version is its default, HTTP/1.1.
    let http11 = *RequestBuilder::new()
        .version_ref()
        .expect("a new request builder has a version");
    head.version >= http11
        || options().any(|option| option.trim().eq_ignore_ascii_case("keep-alive"))
}

fn header<'h>(head: &'h RequestHead, name: &str) -> Option<&'h str> {
    head.headers.get(name).and_then(|value| value.to_str().ok())
}

/// A read error, reset or premature end: the client is gone, nothing to answer.
fn is_connection_error(error: &HttpError) -> bool {
    matches!(
        error,
        HttpError::IOError(_)
            | HttpError::H1DecodeError(DecodeError::Io(_) | DecodeError::UnexpectedEof)
    )
}

enum Bounded<T> {
    Done(T),
    TimedOut,
    Stopping,
}

/// Runs `future` for at most `limit`, and not past the admin API's stop.
async fn bounded<F: Future>(
    context: &AdminContext,
    limit: Duration,
    future: F,
) -> Bounded<F::Output> {
    monoio::select! {
        outcome = monoio::time::timeout(limit, future) => match outcome {
            Ok(output) => Bounded::Done(output),
            Err(_) => Bounded::TimedOut,
        },
        _ = context.stopping.wait() => Bounded::Stopping,
    }
}

/// The read half and the current request's byte budget, shared by the
/// decoder's reader and `refuse`'s lingering close.
struct ReadSide {
    /// Out of its slot while a read is in flight. A read cancelled by a
    /// timeout takes it along, which only happens on the way to closing.
    half: RefCell<Option<TcpOwnedReadHalf>>,
    budget: Cell<usize>,
}

impl ReadSide {
    fn over_budget(&self) -> bool {
        self.budget.get() == 0
    }
}

/// The decoder's reader: fails once the current request has read its budget
/// of bytes, so that the decoder's buffer stays bounded. Reads are not cut
/// short: a request may overshoot its budget by one read (at most the
/// decoder's buffer capacity), which bounds memory all the same.
struct Budgeted(Rc<ReadSide>);

impl Budgeted {
    fn take_half(&self) -> io::Result<TcpOwnedReadHalf> {
        if self.0.over_budget() {
            return Err(io::Error::other("admin request over its size limit"));
        }
        self.0
            .half
            .borrow_mut()
            .take()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    fn put_back(&self, half: TcpOwnedReadHalf, read: &io::Result<usize>) {
        *self.0.half.borrow_mut() = Some(half);
        if let Ok(n) = read {
            self.0.budget.set(self.0.budget.get().saturating_sub(*n));
        }
    }
}

impl AsyncReadRent for Budgeted {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        let mut half = match self.take_half() {
            Ok(half) => half,
            Err(error) => return (Err(error), buf),
        };
        let (result, buf) = half.read(buf).await;
        self.put_back(half, &result);
        (result, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        let mut half = match self.take_half() {
            Ok(half) => half,
            Err(error) => return (Err(error), buf),
        };
        let (result, buf) = half.readv(buf).await;
        self.put_back(half, &result);
        (result, buf)
    }
}
