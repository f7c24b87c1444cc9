//! Per-core pool of I/O buffers, so that no request allocates: a connection
//! takes its buffers when it needs them and gives them back when it goes
//! idle or closes. Single-threaded (`RefCell`), one pool per worker core.
//!
//! The pool keeps as many buffers as a burst needed (up to `max_free`), so
//! that a burst of concurrent responses does not keep allocating, faulting
//! in and handing back large buffers; `trim` (called once a second by the
//! core's sweep) drops the buffers no one took since the last trim.

use std::cell::{Cell, RefCell};
use std::io;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, CancelHandle, CancelableAsyncReadRent};

pub struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    /// The fewest buffers that were free at any moment since the last trim:
    /// that many were not needed in the whole interval.
    low_water: Cell<usize>,
    buffer_size: usize,
    max_free: usize,
    /// Bytes a returned buffer keeps (see `keeping`).
    keep: usize,
}

impl BufferPool {
    pub fn new(buffer_size: usize, max_free: usize) -> Self {
        BufferPool::keeping(buffer_size, max_free, 0)
    }

    /// A pool whose returned buffers keep up to `keep` of their bytes, so
    /// that a user who needs that many initialised bytes in front (headroom
    /// to be overwritten) need not zero them again on every take.
    pub fn keeping(buffer_size: usize, max_free: usize, keep: usize) -> Self {
        BufferPool {
            free: RefCell::new(Vec::new()),
            low_water: Cell::new(0),
            buffer_size,
            max_free,
            keep,
        }
    }

    /// A buffer with `buffer_size` capacity, holding at most `keep` bytes
    /// from its earlier use (none for a pool made with `new`).
    pub fn take(&self) -> Vec<u8> {
        let mut free = self.free.borrow_mut();
        let buf = free.pop();
        self.low_water.set(self.low_water.get().min(free.len()));
        buf.unwrap_or_else(|| Vec::with_capacity(self.buffer_size))
    }

    /// Returns a buffer; ones of the wrong size (lost to a cancelled read and
    /// replaced by an empty Vec) or beyond `max_free` are dropped.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.buffer_size {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            buf.truncate(self.keep);
            free.push(buf);
        }
    }

    /// Frees the buffers that stayed unused since the previous call; returns
    /// the bytes freed.
    pub fn trim(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let unused = self.low_water.get().min(free.len());
        let keep = free.len() - unused;
        free.truncate(keep);
        free.shrink_to(keep);
        self.low_water.set(keep);
        unused * self.buffer_size
    }

    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }
}

/// Reads into `buf` after its bytes, up to index `end` (at most its
/// capacity). monoio reads a `Vec` from index 0 (its `IoBufMut` covers
/// `0..capacity`), so appending needs a slice of the spare capacity. The
/// buffer is put back whatever the result; only a dropped read loses it.
pub async fn read_spare<R: AsyncReadRent>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    end: usize,
) -> io::Result<usize> {
    let owned = std::mem::take(buf);
    let len = owned.len();
    let (result, slice) = rd.read(owned.slice_mut(len..end)).await;
    *buf = slice.into_inner();
    result
}

/// As `read_spare` up to the capacity, cancellable without losing bytes: a
/// cancelled read returns `ECANCELED` with the buffer (and any bytes that
/// raced in).
pub async fn read_spare_cancelable<R: CancelableAsyncReadRent>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    cancel: CancelHandle,
) -> io::Result<usize> {
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let (result, slice) = rd.cancelable_read(owned.slice_mut(len..cap), cancel).await;
    *buf = slice.into_inner();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_of_its_size() {
        let pool = BufferPool::new(64, 1);
        let mut a = pool.take();
        a.extend_from_slice(b"data");
        let pointer = a.as_ptr();
        pool.give(a);
        let b = pool.take();
        assert_eq!((b.as_ptr(), b.len(), b.capacity()), (pointer, 0, 64));
        pool.give(Vec::new());
        pool.give(b);
        pool.give(Vec::with_capacity(64)); // over max_free: dropped
        assert_eq!(pool.free.borrow().len(), 1);
    }

    #[test]
    fn a_pool_keeping_a_prefix_returns_buffers_with_at_most_that_prefix() {
        let pool = BufferPool::keeping(64, 2, 8);
        let mut long = pool.take();
        long.extend_from_slice(b"0123456789abcdef");
        let mut short = pool.take();
        short.extend_from_slice(b"abc");
        pool.give(long);
        pool.give(short);
        assert_eq!(pool.take(), b"abc");
        assert_eq!(pool.take(), b"01234567");
    }

    #[test]
    fn trim_frees_only_buffers_unused_since_the_last_trim() {
        let pool = BufferPool::new(64, 8);
        let burst: Vec<_> = (0..5).map(|_| pool.take()).collect();
        burst.into_iter().for_each(|b| pool.give(b));
        pool.trim(); // all five were in use during the interval
        assert_eq!(pool.free.borrow().len(), 5);
        let two = [pool.take(), pool.take()];
        two.into_iter().for_each(|b| pool.give(b));
        pool.trim(); // three were never taken in this interval
        assert_eq!(pool.free.borrow().len(), 2);
        pool.trim(); // none taken at all
        assert_eq!(pool.free.borrow().len(), 0);
    }
}
