//! The upload half of an exchange: the request head and body go up, one
//! function per request framing, then the client is watched for a close
//! while a slow backend thinks.

use std::time::Duration;

use monoio::buf::IoBuf;
use monoio::io::{AsyncWriteRentExt, CancelHandle};
use monoio::net::tcp::TcpOwnedWriteHalf;

use super::client::ClientInput;
use super::plan::{Plan, UploadPhase, UploadProgress};
use crate::http1::chunked::{LAST_CHUNK, write_chunk_size};
use crate::http1::{BodyFraming, ChunkedDecoder, ChunkedError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadError {
    ClientGone,
    ClientTimeout,
    BadChunked,
    UpstreamWrite,
}

/// What the upload half borrows for one exchange.
pub(super) struct Upload<'a> {
    pub(super) input: &'a mut ClientInput,
    pub(super) upstream: &'a mut TcpOwnedWriteHalf,
    /// The head to send; also the staging buffer for coalesced and
    /// re-chunked body bytes.
    pub(super) up_head: &'a mut Vec<u8>,
    pub(super) plan: &'a Plan,
    pub(super) progress: &'a UploadProgress,
    /// Cancels the client watch once the response is complete.
    pub(super) watch: CancelHandle,
    /// How long the client may send no body bytes (408).
    pub(super) body_timeout: Duration,
}

impl Upload<'_> {
    /// Sends the head and the request body upstream, then watches the client.
    pub(super) async fn run(mut self) -> Result<(), UploadError> {
        self.progress
            .set_body_started(!self.input.pending().is_empty());
        self.up_head.truncate(self.plan.head_len);
        match self.plan.framing {
            BodyFraming::None | BodyFraming::Length(0) => self.send_staged().await?,
            BodyFraming::Length(length) => self.send_length(length).await?,
            BodyFraming::Chunked => self.send_chunked().await?,
        }
        self.progress.set_phase(UploadPhase::Sent);
        self.watch_client().await
    }

    /// A Content-Length body: the bytes already read go out with the head
    /// in one write, the rest straight from the client buffer.
    async fn send_length(&mut self, length: u64) -> Result<(), UploadError> {
        let mut remaining = length;
        let take = self.pending_up_to(remaining);
        self.up_head
            .extend_from_slice(&self.input.pending()[..take]);
        self.input.consume(take);
        remaining -= take as u64;
        self.progress.set_request_read(remaining == 0);
        self.send_staged().await?;
        while remaining > 0 {
            self.read_body().await?;
            let take = self.pending_up_to(remaining);
            self.progress.set_request_read(take as u64 == remaining);
            self.progress.set_phase(UploadPhase::ForwardingBody);
            let buf = std::mem::take(&mut self.input.buf);
            let start = self.input.pos;
            let (result, slice) = self
                .upstream
                .write_all(buf.slice(start..start + take))
                .await;
            self.input.buf = slice.into_inner();
            // Consumed even if the write failed: `request_read` already
            // says these bytes were read, and left in the buffer they
            // would be parsed as the client's next request.
            self.input.consume(take);
            remaining -= take as u64;
            result.map_err(|_| UploadError::UpstreamWrite)?;
            self.progress.count_upstream_write();
        }
        Ok(())
    }

    /// A chunked body, decoded strictly and re-encoded canonically
    /// (extensions and trailers dropped) through `up_head`.
    async fn send_chunked(&mut self) -> Result<(), UploadError> {
        let mut decoder = ChunkedDecoder::new();
        loop {
            decode_into(&mut decoder, self.input, self.up_head)
                .map_err(|_| UploadError::BadChunked)?;
            self.progress.set_request_read(decoder.is_done());
            if !self.up_head.is_empty() {
                self.progress.set_phase(UploadPhase::Sending);
                self.send_staged().await?;
                self.up_head.clear();
            }
            if decoder.is_done() {
                return Ok(());
            }
            self.read_body().await?;
        }
    }

    /// Writes what `up_head` holds.
    async fn send_staged(&mut self) -> Result<(), UploadError> {
        let (result, written) = self.upstream.write_all(std::mem::take(self.up_head)).await;
        *self.up_head = written;
        result.map_err(|_| UploadError::UpstreamWrite)?;
        self.progress.count_upstream_write();
        Ok(())
    }

    /// How many pending client bytes belong to a body with `remaining` left.
    fn pending_up_to(&self, remaining: u64) -> usize {
        let pending = self.input.pending().len();
        pending.min(usize::try_from(remaining).unwrap_or(usize::MAX))
    }

    /// Reads more of the request body; EOF mid-body means the client left.
    async fn read_body(&mut self) -> Result<(), UploadError> {
        self.progress.set_phase(UploadPhase::AwaitingBody);
        let result = monoio::time::timeout(self.body_timeout, self.input.read_more()).await;
        match result {
            Ok(Ok(n)) if n > 0 => {
                self.progress.set_body_started(true);
                Ok(())
            }
            Ok(_) => Err(UploadError::ClientGone),
            Err(_) => Err(UploadError::ClientTimeout),
        }
    }

    /// Once the download side says the response is late, watches the client
    /// for a close until the response completes (the watch is cancelled).
    async fn watch_client(&mut self) -> Result<(), UploadError> {
        self.progress.watch_client.raised().await;
        if self.input.buf.len() == self.input.buf.capacity() {
            // Pipelined requests fill the buffer: the client is evidently there.
            return Ok(());
        }
        self.progress.set_phase(UploadPhase::Watching);
        let result = self.input.read_more_cancelable(self.watch.clone()).await;
        self.progress.set_phase(UploadPhase::Sent);
        match result {
            Ok(0) => Err(UploadError::ClientGone),
            Ok(_) => Ok(()),
            Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => Ok(()),
            Err(_) => Err(UploadError::ClientGone),
        }
    }
}

/// Decodes the pending chunked bytes into canonical chunks appended to `out`.
fn decode_into(
    decoder: &mut ChunkedDecoder,
    input: &mut ClientInput,
    out: &mut Vec<u8>,
) -> Result<(), ChunkedError> {
    let mut consumed = 0;
    let pending = input.pending();
    while consumed < pending.len() && !decoder.is_done() {
        let step = decoder.step(&pending[consumed..])?;
        if !step.data.is_empty() {
            write_chunk_size(out, step.data.len());
            out.extend_from_slice(&pending[consumed..][step.data]);
            out.extend_from_slice(b"\r\n");
        }
        consumed += step.consumed;
    }
    if decoder.is_done() {
        out.extend_from_slice(LAST_CHUNK);
    }
    input.consume(consumed);
    Ok(())
}
