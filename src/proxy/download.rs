//! The download half of an exchange: the backend's response to the client.
//! Interim (1xx) heads are relayed, the final head is read once, then one
//! function per response framing relays the body (length, chunked, until
//! close) through pooled buffers, never buffering it whole.

use std::cell::Cell;
use std::io;
use std::ops::Range;
use std::time::Instant;

use monoio::io::Canceller;
use monoio::net::tcp::TcpOwnedReadHalf;

use super::client::ClientOutput;
use super::core::{CoreContext, HEADROOM};
use super::plan::{Plan, UploadProgress};
use crate::buffer::{read_spare, read_spare_cancelable};
use crate::http1::chunked::{ChunkSizeLine, LAST_CHUNK, write_chunk_size};
use crate::http1::rewrite::{self, ClientBody};
use crate::http1::{
    ChunkedDecoder, MAX_RESPONSE_FIELDS, ResponseFraming, Version, header_slots, response,
};

/// While a slow backend thinks, the client connection is watched for a close
/// (so the exchange is abandoned at once). Watching costs two io_uring
/// operations (a read and its cancellation), so it starts only once a
/// response is this late (20 to 21 ticks, 100-105 ms): responses slowed only
/// by queueing under load must not pay for it.
const WATCH_TICKS: u32 = 20;

/// Bodies up to this size are copied after the head; larger ones get the head
/// moved in front of them instead.
const COALESCE_COPY_MAX: usize = 2048;

/// A Content-Length body up to this size that is not all there with its
/// head is waited for (briefly, see `gather`), so that head and body reach
/// the client in one write: a backend that writes them separately (nginx
/// serving a file does) would otherwise cost the client an extra segment
/// and wake-up, and the proxy an extra send, for about one response in six
/// at 16 B and 4 KiB bodies. nginx holds small responses back the same way
/// (`postpone_output`).
const GATHER_MAX: usize = 16 * 1024;

/// Room before a relayed read for its chunk-size line (hex digits and CRLF).
const CHUNK_SIZE_ROOM: usize = 16;

/// 1xx responses relayed before the final one; more is a broken backend.
const MAX_INTERIM: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(super) enum DownloadError {
    #[error("backend did not answer in time")]
    Timeout,
    #[error("backend closed the connection")]
    Closed,
    /// Closed or reset before a single byte of a response: on a reused
    /// connection, the backend dropped it while idle, and a safe request
    /// can be resent.
    #[error("backend closed the connection before answering: {0}")]
    NoResponse(Box<DownloadError>),
    #[error("backend connection failed: {0}")]
    Io(io::Error),
    #[error(transparent)]
    Head(#[from] response::ResponseError),
    #[error("malformed chunked response body")]
    BadChunked,
    #[error("client connection failed")]
    Client,
}

impl DownloadError {
    pub(super) fn status(&self) -> u16 {
        match self {
            DownloadError::Timeout => 504,
            _ => 502,
        }
    }

    pub(super) fn message(&self) -> &'static str {
        match self {
            DownloadError::Timeout => "backend did not answer in time",
            DownloadError::Closed | DownloadError::Io(_) | DownloadError::NoResponse(_) => {
                "backend closed the connection"
            }
            DownloadError::Head(_) | DownloadError::BadChunked => {
                "backend sent an invalid response"
            }
            DownloadError::Client => "client connection failed",
        }
    }
}

/// A response relayed in full.
pub(super) struct Relayed {
    /// The backend honoured its framing and may take the next request.
    pub(super) upstream_reusable: bool,
    pub(super) keep_client: bool,
    /// The backend answered the WebSocket offer with a 101, which went to
    /// the client: both connections now carry the new protocol.
    pub(super) switched: bool,
    /// The final response's status, and when its head was read.
    pub(super) status: u16,
    pub(super) head_at: Instant,
}

/// What the download half borrows for one exchange.
pub(super) struct Download<'a> {
    pub(super) upstream: &'a mut TcpOwnedReadHalf,
    pub(super) client: &'a mut ClientOutput,
    /// Bytes read from the backend; a head is read after `HEADROOM` free
    /// bytes, where the client's head can be put right before the first
    /// body bytes: one write, and no copy of the body.
    pub(super) response: &'a mut Vec<u8>,
    /// What is written to the client from a copy: heads, coalesced and
    /// re-chunked bodies. Its pooled capacity bounds each step. Empty (no
    /// capacity) until the first head is parsed, which takes it from the
    /// core's pool.
    pub(super) out: &'a mut Vec<u8>,
    pub(super) plan: &'a Plan,
    pub(super) request_id: &'a [u8],
    pub(super) progress: &'a UploadProgress,
    /// Set before the first write of the final head: until then a failure
    /// can still be answered with a status of percore's own.
    pub(super) started: &'a Cell<bool>,
    /// Settings, ticker, and whether a drain has begun.
    pub(super) core: &'a CoreContext,
}

/// The final response head, read once; its client form is in `out`.
struct FinalHead {
    framing: ResponseFraming,
    /// Where the body's first bytes start in `response`.
    body_start: usize,
    client_body: ClientBody,
    upstream_keep_alive: bool,
    keep_client: bool,
    /// A 101 to the WebSocket offer: no body, a tunnel follows.
    switch: bool,
    status: u16,
}

/// A parsed head: interim or final.
struct ParsedHead {
    interim: bool,
    head: FinalHead,
}

impl Download<'_> {
    /// Reads the response from the backend and relays it to the client.
    pub(super) async fn run(mut self) -> Result<Relayed, DownloadError> {
        let head = self.read_final_head().await?;
        let head_at = Instant::now();
        if head.switch {
            self.relay_switch(&head).await?;
            return Ok(Relayed {
                upstream_reusable: false,
                keep_client: false,
                switched: true,
                status: 101,
                head_at,
            });
        }
        let clean = match head.framing {
            ResponseFraming::None => self.relay_bodiless(&head).await?,
            ResponseFraming::Length(length) => self.relay_length(&head, length).await?,
            ResponseFraming::Chunked => self.relay_chunked(&head).await?,
            ResponseFraming::UntilClose => self.relay_until_close(&head).await?,
        };
        Ok(Relayed {
            upstream_reusable: head.upstream_keep_alive && clean,
            keep_client: head.keep_client,
            switched: false,
            status: head.status,
            head_at,
        })
    }

    /// Reads heads until the final one; 1xx go to HTTP/1.1 clients only
    /// (RFC 9110 §15.2). They do not start the response: a final 502 can
    /// still follow them.
    async fn read_final_head(&mut self) -> Result<FinalHead, DownloadError> {
        let mut deadline = self.core.ticker.now() + self.core.settings().response_timeout;
        // The headroom is written before any of it is sent, so a buffer
        // that held it already (from the pool, which keeps it) is not zeroed
        // again: at a thousand connections the pool's buffers are cold and
        // zeroing 1 KiB per response missed the cache on every line.
        if self.response.len() >= HEADROOM {
            self.response.truncate(HEADROOM);
        } else {
            self.response.clear();
            self.response.resize(HEADROOM, 0);
        }
        let mut interim = 0;
        loop {
            let Some(parsed) = self.parse_head()? else {
                if self.response.len() - HEADROOM >= self.core.settings().buffer_size {
                    return Err(response::ResponseError::HeadTooLarge.into());
                }
                match self.read_head_bytes(&mut deadline).await {
                    Ok(_) => continue,
                    Err(error @ (DownloadError::Closed | DownloadError::Io(_)))
                        if self.response.len() == HEADROOM && interim == 0 =>
                    {
                        return Err(DownloadError::NoResponse(Box::new(error)));
                    }
                    Err(error) => return Err(error),
                }
            };
            if !parsed.interim {
                return Ok(parsed.head);
            }
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(response::ResponseError::Malformed.into());
            }
            if self.plan.version == Version::Http11 {
                let len = self.out.len();
                send(self.client, self.out, 0..len).await?;
            }
            self.response.drain(HEADROOM..parsed.head.body_start);
        }
    }

    /// Parses a buffered head and writes its client form into `out`.
    fn parse_head(&mut self) -> Result<Option<ParsedHead>, DownloadError> {
        if self.response.len() <= HEADROOM {
            return Ok(None);
        }
        let mut headers = header_slots();
        let slots = &mut headers[..MAX_RESPONSE_FIELDS];
        let plan = self.plan;
        let Some(head) = response::parse(&self.response[HEADROOM..], slots, plan.is_head)? else {
            return Ok(None);
        };
        let client_body = match head.framing {
            ResponseFraming::None => ClientBody::None,
            ResponseFraming::Length(n) => ClientBody::Length(n),
            // A close-delimited body is chunked for HTTP/1.1 clients, as
            // nginx does: its end (or its truncation) stays visible and the
            // client connection stays open.
            ResponseFraming::Chunked | ResponseFraming::UntilClose
                if plan.version == Version::Http11 =>
            {
                ClientBody::Chunked
            }
            ResponseFraming::Chunked | ResponseFraming::UntilClose => ClientBody::UntilClose,
        };
        // A 101 ends HTTP on both connections: only to an upgrade percore
        // offered, and never relayed as an interim response.
        let switch = head.status == 101;
        if switch && !(plan.websocket && head.switches_to_websocket()) {
            return Err(response::ResponseError::SwitchingProtocols.into());
        }
        // A drain that began while this request was in flight closes the
        // connection after its response too.
        let keep_client = plan.keep_alive
            && !self.core.is_draining()
            && !switch
            && client_body != ClientBody::UntilClose
            && self.progress.request_read();
        if self.out.capacity() == 0 {
            *self.out = self.core.buffers.take();
        }
        self.out.clear();
        rewrite::write_response_head(
            self.out,
            &head,
            self.request_id,
            client_body,
            plan.version,
            !keep_client,
        );
        Ok(Some(ParsedHead {
            interim: head.is_interim() && !switch,
            head: FinalHead {
                framing: head.framing,
                body_start: HEADROOM + head.head_len,
                client_body,
                upstream_keep_alive: head.keep_alive,
                keep_client,
                switch,
                status: head.status,
            },
        }))
    }

    /// Reads response-head bytes until `deadline` (504). A response that is
    /// `WATCH_TICKS` late has the upload side watch the client. Each time
    /// the deadline passes it moves on by a timeout if the client still
    /// owes body bytes (the upload has its own timeout, 408) or the backend
    /// took request bytes since the last look (a long upload): the backend
    /// gets one to two timeouts after the last request byte it took.
    async fn read_head_bytes(&mut self, deadline: &mut Instant) -> Result<usize, DownloadError> {
        let progress = self.progress;
        let ticker = &self.core.ticker;
        let timeout = self.core.settings().response_timeout;
        let end = self.response.capacity();
        let mut read = std::pin::pin!(read_spare(self.upstream, self.response, end));
        if !progress.watch_client.is_raised() {
            monoio::select! {
                biased;
                result = read.as_mut() => return read_outcome(result),
                _ = ticker.wait(WATCH_TICKS) => progress.watch_client.raise(),
            }
        }
        let mut mark = progress.intake_mark();
        loop {
            match monoio::time::timeout_at((*deadline).into(), read.as_mut()).await {
                Ok(result) => return read_outcome(result),
                Err(_) if progress.client_owes_body() || progress.advanced(&mut mark) => {
                    *deadline = ticker.now() + timeout;
                }
                Err(_) => return Err(DownloadError::Timeout),
            }
        }
    }

    /// The 101, with any bytes of the new protocol the backend sent after
    /// it, in one write.
    async fn relay_switch(&mut self, head: &FinalHead) -> Result<(), DownloadError> {
        self.out
            .extend_from_slice(&self.response[head.body_start..]);
        self.started.set(true);
        let len = self.out.len();
        send(self.client, self.out, 0..len).await
    }

    /// No body (HEAD, 1xx, 204, 304): the head alone. Bytes after it mean
    /// the backend is out of step, so its connection is not reused.
    async fn relay_bodiless(&mut self, head: &FinalHead) -> Result<bool, DownloadError> {
        self.started.set(true);
        let len = self.out.len();
        send(self.client, self.out, 0..len).await?;
        Ok(self.response.len() == head.body_start)
    }

    /// A Content-Length body. The head and the first body bytes go out in
    /// one write: small bodies are copied after the head, large ones get
    /// the head put in front of them.
    async fn relay_length(&mut self, head: &FinalHead, length: u64) -> Result<bool, DownloadError> {
        let body_start = head.body_start;
        if let Ok(small) = usize::try_from(length)
            && small <= GATHER_MAX
            && self.response.len() < body_start + small
            && body_start + small <= self.response.capacity()
        {
            self.gather(body_start + small).await?;
        }
        let available = self.response.len() - body_start;
        let take = available.min(usize::try_from(length).unwrap_or(usize::MAX));
        let mut clean = available <= take;
        let mut remaining = length - take as u64;
        self.started.set(true);
        if take <= COALESCE_COPY_MAX || self.out.len() > body_start {
            self.out
                .extend_from_slice(&self.response[body_start..body_start + take]);
            let len = self.out.len();
            send(self.client, self.out, 0..len).await?;
        } else {
            let head_start = body_start - self.out.len();
            self.response[head_start..body_start].copy_from_slice(self.out);
            send(self.client, self.response, head_start..body_start + take).await?;
        }
        while remaining > 0 {
            self.response.clear();
            let n = self.read_body(self.response.capacity()).await?;
            let take = n.min(usize::try_from(remaining).unwrap_or(usize::MAX));
            clean = n <= take;
            send(self.client, self.response, 0..take).await?;
            remaining -= take as u64;
        }
        Ok(clean)
    }

    /// Reads until `response` holds `end` bytes (a small body the backend
    /// wrote after its head, usually microseconds behind it), for at most
    /// one tick: a backend that stalls mid-body costs the client 5-10 ms
    /// more before the head, not the stall. Bytes read past `end` stay for
    /// the caller to judge.
    async fn gather(&mut self, end: usize) -> Result<(), DownloadError> {
        let mut tick = std::pin::pin!(self.core.ticker.wait(1));
        let mut canceller = Canceller::new();
        while self.response.len() < end {
            let result = {
                let mut read = std::pin::pin!(read_spare_cancelable(
                    self.upstream,
                    self.response,
                    canceller.handle()
                ));
                monoio::select! {
                    biased;
                    result = read.as_mut() => result,
                    _ = tick.as_mut() => {
                        canceller = std::mem::take(&mut canceller).cancel();
                        read.await
                    }
                }
            };
            match result {
                Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => return Ok(()),
                result => {
                    read_outcome(result)?;
                }
            }
        }
        Ok(())
    }

    /// A chunked body, decoded strictly and re-encoded canonically for an
    /// HTTP/1.1 client (close-delimited for an HTTP/1.0 one).
    async fn relay_chunked(&mut self, head: &FinalHead) -> Result<bool, DownloadError> {
        let mut decoder = ChunkedDecoder::new();
        let chunked_out = head.client_body == ClientBody::Chunked;
        let mut start = head.body_start;
        loop {
            let consumed = self.decode_chunks(&mut decoder, start, chunked_out)?;
            let clean = consumed == self.response.len();
            if decoder.is_done() && chunked_out {
                self.out.extend_from_slice(LAST_CHUNK);
            }
            if !self.out.is_empty() {
                // Only now: a body garbled in the head's own packet can
                // still be answered with a 502.
                self.started.set(true);
                let len = self.out.len();
                send(self.client, self.out, 0..len).await?;
                self.out.clear();
            }
            if decoder.is_done() {
                return Ok(clean);
            }
            if consumed < self.response.len() {
                start = consumed;
                continue;
            }
            self.response.clear();
            start = 0;
            self.read_body(self.response.capacity()).await?;
        }
    }

    /// Decodes `response[start..]` into `out` as far as `out`'s capacity
    /// allows (never growing it, with room kept for a chunk-size line and
    /// CRLFs); returns the index decoding stopped at.
    fn decode_chunks(
        &mut self,
        decoder: &mut ChunkedDecoder,
        start: usize,
        chunked_out: bool,
    ) -> Result<usize, DownloadError> {
        let mut consumed = start;
        while consumed < self.response.len() && !decoder.is_done() {
            let room = self.out.capacity().saturating_sub(self.out.len() + 32);
            if room == 0 {
                break;
            }
            let end = self.response.len().min(consumed + room);
            let step = decoder
                .step(&self.response[consumed..end])
                .map_err(|_| DownloadError::BadChunked)?;
            let data = &self.response[consumed..][step.data];
            if !data.is_empty() {
                if chunked_out {
                    write_chunk_size(self.out, data.len());
                }
                self.out.extend_from_slice(data);
                if chunked_out {
                    self.out.extend_from_slice(b"\r\n");
                }
            }
            consumed += step.consumed;
        }
        Ok(consumed)
    }

    /// A close-delimited body: only a clean EOF ends it; a reset or timeout
    /// is an error, and the client sees the body cut (no last chunk, or a
    /// reset). Never clean: the backend closes after it.
    async fn relay_until_close(&mut self, head: &FinalHead) -> Result<bool, DownloadError> {
        let chunked_out = head.client_body == ClientBody::Chunked;
        let first = self.response.len() - head.body_start;
        if chunked_out && first > 0 {
            write_chunk_size(self.out, first);
        }
        self.out
            .extend_from_slice(&self.response[head.body_start..]);
        if chunked_out && first > 0 {
            self.out.extend_from_slice(b"\r\n");
        }
        self.started.set(true);
        let len = self.out.len();
        send(self.client, self.out, 0..len).await?;
        // Chunked: each read lands after room for its chunk-size line and
        // leaves room for its CRLF, so it goes out in one write.
        let (prefix, suffix) = if chunked_out {
            (CHUNK_SIZE_ROOM, 2)
        } else {
            (0, 0)
        };
        loop {
            self.response.clear();
            self.response.resize(prefix, 0);
            let end = self.response.capacity() - suffix;
            match self.read_body(end).await {
                Ok(n) if chunked_out => {
                    let line = ChunkSizeLine::new(n);
                    let start = prefix - line.as_bytes().len();
                    self.response[start..prefix].copy_from_slice(line.as_bytes());
                    self.response.extend_from_slice(b"\r\n");
                    let len = self.response.len();
                    send(self.client, self.response, start..len).await?;
                }
                Ok(n) => send(self.client, self.response, 0..n).await?,
                Err(DownloadError::Closed) => break,
                Err(error) => return Err(error),
            }
        }
        if chunked_out {
            self.out.clear();
            self.out.extend_from_slice(LAST_CHUNK);
            let len = self.out.len();
            send(self.client, self.out, 0..len).await?;
        }
        Ok(false)
    }

    /// Reads body bytes after those in `response`, up to index `end`,
    /// within the response timeout; `Closed` at EOF.
    async fn read_body(&mut self, end: usize) -> Result<usize, DownloadError> {
        let timeout = self.core.settings().response_timeout;
        match monoio::time::timeout(timeout, read_spare(self.upstream, self.response, end)).await {
            Ok(result) => read_outcome(result),
            Err(_) => Err(DownloadError::Timeout),
        }
    }
}

/// Writes `buf[range]` to the client.
async fn send(
    client: &mut ClientOutput,
    buf: &mut Vec<u8>,
    range: Range<usize>,
) -> Result<(), DownloadError> {
    client
        .write_range(buf, range)
        .await
        .map_err(|_| DownloadError::Client)
}

/// A backend read's result: EOF is `Closed`.
fn read_outcome(result: io::Result<usize>) -> Result<usize, DownloadError> {
    match result {
        Ok(0) => Err(DownloadError::Closed),
        Ok(n) => Ok(n),
        Err(error) => Err(DownloadError::Io(error)),
    }
}
