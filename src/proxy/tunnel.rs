//! A connection after its 101 (Switching Protocols) to a WebSocket offer:
//! bytes are relayed both ways unchanged, on this core and without parsing
//! the new protocol, until both sides have closed, either fails, or neither
//! sends a byte for the tunnel idle timeout. One side's close is passed on
//! as a half-close, so the other can still finish. A tunnel is not a request
//! in flight: counted as one, a backend holding many long-lived tunnels
//! would look frozen to the balancer and get no new requests.

use std::cell::Cell;
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};

use super::client::{ClientInput, ClientOutput};
use crate::buffer::{BufferPool, read_spare};
use crate::upstream::UpstreamConn;

/// What the tunnel borrows from the client connection, and what it owns.
pub(super) struct Tunnel<'a> {
    pub(super) input: &'a mut ClientInput,
    pub(super) output: &'a mut ClientOutput,
    pub(super) upstream: UpstreamConn,
    pub(super) buffers: &'a BufferPool,
    pub(super) idle_timeout: Duration,
}

/// Why a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TunnelEnd {
    /// Both sides closed their sending half.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// A read or write failed.
    Failed,
}

impl Tunnel<'_> {
    pub(super) async fn run(self) -> TunnelEnd {
        let Tunnel {
            input,
            output,
            upstream,
            buffers,
            idle_timeout,
        } = self;
        let UpstreamConn { mut rd, mut wr, .. } = upstream;
        let last_activity = Cell::new(Instant::now());
        let mut down_buf = buffers.take();
        let end = {
            let mut up = std::pin::pin!(client_to_backend(input, &mut wr, &last_activity));
            let mut down = std::pin::pin!(backend_to_client(
                &mut rd,
                output,
                &mut down_buf,
                &last_activity
            ));
            let mut idle = std::pin::pin!(idle_for(&last_activity, idle_timeout));
            let (mut up_done, mut down_done) = (false, false);
            loop {
                monoio::select! {
                    result = &mut up, if !up_done => match result {
                        Ok(()) => up_done = true,
                        Err(()) => break TunnelEnd::Failed,
                    },
                    result = &mut down, if !down_done => match result {
                        Ok(()) => down_done = true,
                        Err(()) => break TunnelEnd::Failed,
                    },
                    _ = &mut idle => break TunnelEnd::Idle,
                }
                if up_done && down_done {
                    break TunnelEnd::Closed;
                }
            }
        };
        buffers.give(down_buf);
        end
    }
}

/// Client → backend: what the client sent after its handshake first, then
/// everything it sends; its close becomes a half-close of the backend
/// connection.
async fn client_to_backend(
    input: &mut ClientInput,
    wr: &mut TcpOwnedWriteHalf,
    last_activity: &Cell<Instant>,
) -> Result<(), ()> {
    loop {
        let pending = input.pending().len();
        if pending > 0 {
            let buf = std::mem::take(&mut input.buf);
            let start = input.pos;
            let (result, slice) = wr.write_all(buf.slice(start..start + pending)).await;
            input.buf = slice.into_inner();
            result.map_err(drop)?;
            input.consume(pending);
            last_activity.set(Instant::now());
        }
        match input.read_more().await {
            Ok(0) => return wr.shutdown().await.map_err(drop),
            Ok(_) => last_activity.set(Instant::now()),
            Err(_) => return Err(()),
        }
    }
}

/// Backend → client, through one pooled buffer; the backend's close becomes
/// a half-close of the client connection.
async fn backend_to_client(
    rd: &mut TcpOwnedReadHalf,
    output: &mut ClientOutput,
    buf: &mut Vec<u8>,
    last_activity: &Cell<Instant>,
) -> Result<(), ()> {
    loop {
        buf.clear();
        let end = buf.capacity();
        match read_spare(rd, buf, end).await {
            Ok(0) => return output.shutdown().await.map_err(drop),
            Ok(n) => {
                last_activity.set(Instant::now());
                output.write_range(buf, 0..n).await.map_err(drop)?;
            }
            Err(_) => return Err(()),
        }
    }
}

/// Ends once `last_activity` is `idle_timeout` old.
async fn idle_for(last_activity: &Cell<Instant>, idle_timeout: Duration) {
    loop {
        let deadline = last_activity.get() + idle_timeout;
        monoio::time::sleep_until(deadline.into()).await;
        if last_activity.get() + idle_timeout <= Instant::now() {
            return;
        }
    }
}
