//! Per-core pool of I/O buffers, so that no request allocates: a connection
//! takes its buffers when it needs them and gives them back when it goes
//! idle or closes. Single-threaded (`RefCell`), one pool per worker core.

use std::cell::RefCell;

pub struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    buffer_size: usize,
    max_free: usize,
}

impl BufferPool {
    pub fn new(buffer_size: usize, max_free: usize) -> Self {
        BufferPool {
            free: RefCell::new(Vec::new()),
            buffer_size,
            max_free,
        }
    }

    /// An empty buffer with `buffer_size` capacity.
    pub fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.buffer_size))
    }

    /// Returns a buffer; ones of the wrong size (lost to a cancelled read and
    /// replaced by an empty Vec) or beyond `max_free` are dropped.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.buffer_size {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            buf.clear();
            free.push(buf);
        }
    }

    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }
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
}
