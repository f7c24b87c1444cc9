//! The client connection's two halves: buffered input (idle reads in a
//! small buffer of the connection's own, request bytes in a pooled one) and
//! output with a write count the core's sweep watches.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use monoio::buf::IoBuf;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};

use crate::buffer::{BufferPool, read_spare, read_spare_cancelable};

/// Bytes read from the client; `buf[pos..]` is not consumed yet.
pub(super) struct ClientInput {
    pub(super) rd: TcpOwnedReadHalf,
    /// A pooled buffer while a request is being read or forwarded; empty
    /// (given back to the core's pool) while the connection is idle.
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    /// The connection's own small buffer for waiting between requests, so an
    /// idle keep-alive connection holds 1 KiB rather than a pooled buffer.
    pub(super) idle_buf: Vec<u8>,
}

impl ClientInput {
    pub(super) fn new(rd: TcpOwnedReadHalf) -> ClientInput {
        ClientInput {
            rd,
            buf: Vec::new(),
            pos: 0,
            idle_buf: Vec::new(),
        }
    }

    /// Idle: gives the pooled buffer back (nothing is pending in it).
    pub(super) fn release(&mut self, pool: &BufferPool) {
        pool.give(std::mem::take(&mut self.buf));
        self.pos = 0;
    }

    /// Moves what `read_idle` received into a pooled buffer.
    pub(super) fn resume(&mut self, pool: &BufferPool, n: usize) {
        self.buf = pool.take();
        self.buf.extend_from_slice(&self.idle_buf[..n]);
        self.idle_buf.clear();
    }

    /// Reads the first bytes of the next request into the small buffer,
    /// from its start (it holds nothing between requests).
    pub(super) async fn read_idle(&mut self) -> io::Result<usize> {
        let (result, idle_buf) = self.rd.read(std::mem::take(&mut self.idle_buf)).await;
        self.idle_buf = idle_buf;
        result
    }

    /// As `read_idle`, cancellable without losing bytes.
    pub(super) async fn read_idle_cancelable(&mut self, cancel: CancelHandle) -> io::Result<usize> {
        let (result, idle_buf) = self
            .rd
            .cancelable_read(std::mem::take(&mut self.idle_buf), cancel)
            .await;
        self.idle_buf = idle_buf;
        result
    }

    pub(super) fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.pos == 0 && self.buf.len() == self.buf.capacity()
    }

    /// Moves pending bytes to the front when the free tail is short.
    fn make_room(&mut self) {
        if self.pos > 0 && self.buf.capacity() - self.buf.len() < self.buf.capacity() / 4 {
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(self.buf.len() - self.pos);
            self.pos = 0;
        }
    }

    /// Reads more bytes after the pending ones; `Ok(0)` is EOF.
    pub(super) async fn read_more(&mut self) -> io::Result<usize> {
        self.make_room();
        let end = self.buf.capacity();
        read_spare(&mut self.rd, &mut self.buf, end).await
    }

    /// As `read_more`, but cancellable without losing bytes.
    pub(super) async fn read_more_cancelable(&mut self, cancel: CancelHandle) -> io::Result<usize> {
        self.make_room();
        read_spare_cancelable(&mut self.rd, &mut self.buf, cancel).await
    }
}

/// The client connection's write half. Its write count is shared with the
/// core's sweep, which resets a client that stops reading: one look a
/// second instead of a timer per write.
pub(super) struct ClientOutput {
    wr: TcpOwnedWriteHalf,
    /// Incremented as each write starts and as it ends (or is dropped):
    /// odd while one is pending.
    writes: Rc<Cell<u64>>,
}

impl ClientOutput {
    pub(super) fn new(wr: TcpOwnedWriteHalf, writes: Rc<Cell<u64>>) -> ClientOutput {
        ClientOutput { wr, writes }
    }

    /// Tells whether a write is pending, for use while the output itself
    /// is lent out. A write dropped half-way (an interim response cut by a
    /// failure) leaves the client no room for an answer of percore's own.
    pub(super) fn mid_write_probe(&self) -> impl Fn() -> bool + use<> {
        let writes = self.writes.clone();
        move || writes.get() % 2 == 1
    }

    pub(super) async fn write_all<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        struct Pending<'a>(&'a Cell<u64>);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        self.writes.set(self.writes.get() + 1);
        let _pending = Pending(&self.writes);
        self.wr.write_all(buf).await
    }

    /// Half-closes the connection (FIN): percore sends nothing more.
    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        self.wr.shutdown().await
    }

    /// Writes `buf[range]`, keeping the buffer.
    pub(super) async fn write_range(
        &mut self,
        buf: &mut Vec<u8>,
        range: std::ops::Range<usize>,
    ) -> io::Result<()> {
        let owned = std::mem::take(buf);
        let (result, slice) = self.write_all(owned.slice(range)).await;
        *buf = slice.into_inner();
        result.map(drop)
    }
}
