//! Reusable chunk buffers for the backup pipeline.
//!
//! Every byte a backup reads passes through a chunk buffer that a reader
//! thread allocates and a seal worker frees. With glibc, buffers of 1-2 MiB
//! freed on another thread go back to the allocating thread's arena, which
//! then fragments: backing up a 1.3 GB tree peaked at ~150 MiB resident
//! while the buffers actually live at any moment summed to a fraction of
//! that (with glibc forced to `mmap` every such buffer, the same backup
//! peaked at ~72 MiB, but paid a page fault per 4 KiB). Handing large
//! buffers back to a small pool keeps resident memory near what is live and
//! saves the page faults too.

use std::sync::Mutex;

/// Buffers below this capacity are left to the allocator, which serves
/// small sizes well; the pool only holds the large ones.
pub const POOLED_MIN: usize = 256 * 1024;

/// A bounded free list of large byte buffers.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    largest: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` idle buffers of at most `largest`
    /// bytes' capacity. Larger ones (grown for an unusually large chunk) go
    /// back to the allocator: kept, they would hold their pages resident
    /// while serving ordinary chunks.
    #[must_use]
    pub fn new(keep: usize, largest: usize) -> Self {
        Self {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
            largest,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes: an idle one
    /// if the request is large and one is available, else a new one.
    #[must_use]
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        if capacity >= POOLED_MIN
            && let Some(mut buf) = self.free.lock().expect("not poisoned").pop()
        {
            buf.reserve_exact(capacity);
            return buf;
        }
        Vec::with_capacity(capacity)
    }

    /// Returns a buffer for reuse; small and oversized buffers, and any
    /// beyond `keep`, are freed.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < POOLED_MIN || buf.capacity() > self.largest {
            return;
        }
        let mut free = self.free.lock().expect("not poisoned");
        if free.len() < self.keep {
            buf.clear();
            free.push(buf);
        }
    }

    /// Idle buffers held.
    #[must_use]
    pub fn idle(&self) -> usize {
        self.free.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused_and_small_ones_are_not_kept() {
        let pool = BufferPool::new(2, usize::MAX);
        let mut a = pool.take(POOLED_MIN);
        a.extend_from_slice(b"old contents");
        let ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.idle(), 1);
        let b = pool.take(POOLED_MIN);
        assert!(b.is_empty(), "a reused buffer comes back empty");
        assert_eq!(b.as_ptr(), ptr, "the idle buffer is handed out again");
        assert_eq!(pool.idle(), 0);

        pool.give(Vec::with_capacity(16));
        assert_eq!(pool.idle(), 0, "small buffers go back to the allocator");
        let small = pool.take(16);
        assert!(small.capacity() >= 16);
    }

    #[test]
    fn the_pool_is_bounded_and_grows_a_reused_buffer_on_demand() {
        let pool = BufferPool::new(2, 2 * POOLED_MIN);
        for _ in 0..5 {
            pool.give(Vec::with_capacity(POOLED_MIN));
        }
        assert_eq!(pool.idle(), 2);
        drop(pool.take(POOLED_MIN));
        pool.give(Vec::with_capacity(3 * POOLED_MIN));
        assert_eq!(pool.idle(), 1, "an oversized buffer is not kept");
        pool.give(Vec::with_capacity(POOLED_MIN));
        let big = pool.take(4 * POOLED_MIN);
        assert!(big.capacity() >= 4 * POOLED_MIN);
        assert_eq!(pool.idle(), 1);
    }
}
