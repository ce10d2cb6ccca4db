//! Runs of zero bytes: preallocated database files, VM images and other
//! sparse files are mostly zeros, and chunking and hashing them byte by byte
//! cost ~70% of such a backup's CPU. The chunker skips zero runs it can
//! prove hold no cut point ([`crate::chunker`]); [`ZeroIds`] remembers the id
//! of an all-zero chunk of each length, so the pipeline hashes it once.

use crate::crypto::MasterKey;
use crate::id::BlobId;
use std::sync::Mutex;

/// Compared a block at a time: slice equality is a `memcmp`, which runs at
/// memory speed, where a byte loop with an early exit does not vectorise.
const BLOCK: usize = 4096;
static ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

/// How many bytes `data` starts with that are zero.
#[must_use]
pub fn zero_prefix(data: &[u8]) -> usize {
    let mut n = 0;
    for block in data.chunks(BLOCK) {
        if block == &ZERO_BLOCK[..block.len()] {
            n += block.len();
        } else {
            return n + block.iter().position(|&b| b != 0).unwrap_or(block.len());
        }
    }
    n
}

/// Whether every byte of `data` is zero.
#[must_use]
pub fn is_zero(data: &[u8]) -> bool {
    zero_prefix(data) == data.len()
}

/// The parts of `data`, to be written at file offset `at` into a file
/// whose unwritten ranges are holes, that must be written for the file to
/// read back as `data`: every whole block of the file's 4 KiB grid that is
/// all zeros is left out, so a restored VM image or preallocated database
/// file stays sparse even where a chunk mixes data and zeros. Partial
/// blocks at either end are always written.
#[must_use]
pub fn data_spans(data: &[u8], at: u64) -> DataSpans<'_> {
    DataSpans { data, at, pos: 0 }
}

/// The iterator [`data_spans`] returns.
#[derive(Debug)]
pub struct DataSpans<'a> {
    data: &'a [u8],
    at: u64,
    pos: usize,
}

impl DataSpans<'_> {
    /// The end of the grid block that starts (or continues) at `pos`.
    fn block_end(&self, pos: usize) -> usize {
        let into = (self.at + pos as u64) % BLOCK as u64;
        // `into` < BLOCK, so this fits.
        let left = BLOCK - into as usize;
        (pos + left).min(self.data.len())
    }

    /// Whether the block `pos..end` may stay a hole.
    fn hole(&self, pos: usize, end: usize) -> bool {
        end - pos == BLOCK && self.data[pos..end] == ZERO_BLOCK
    }
}

impl Iterator for DataSpans<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let len = self.data.len();
        while self.pos < len {
            let end = self.block_end(self.pos);
            if !self.hole(self.pos, end) {
                break;
            }
            self.pos = end;
        }
        if self.pos >= len {
            return None;
        }
        let start = self.pos;
        while self.pos < len {
            let end = self.block_end(self.pos);
            if self.hole(self.pos, end) {
                break;
            }
            self.pos = end;
        }
        Some(start..self.pos)
    }
}

/// Below this, hashing is cheaper than looking a length up.
const CACHED_MIN: usize = 64 * 1024;
/// A stream of zeros is cut into chunks of one or two lengths (the
/// chunker's cut in a zero run, and each stream's last chunk), so a few
/// entries cover a whole backup.
const CACHED_MAX: usize = 16;

/// Ids of all-zero blobs by length, computed once each.
#[derive(Debug, Default)]
pub struct ZeroIds {
    known: Mutex<Vec<(usize, BlobId)>>,
}

impl ZeroIds {
    /// The blob id of `data` under `keys`: looked up if `data` is a large
    /// run of zeros whose length was seen before, else hashed.
    pub fn blob_id(&self, keys: &MasterKey, data: &[u8]) -> BlobId {
        if data.len() < CACHED_MIN || !is_zero(data) {
            return keys.blob_id(data);
        }
        let lock = || {
            self.known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(&(_, id)) = lock().iter().find(|(len, _)| *len == data.len()) {
            return id;
        }
        let id = keys.blob_id(data);
        let mut known = lock();
        if known.len() < CACHED_MAX {
            known.push((data.len(), id));
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_counts_leading_zeros_across_blocks() {
        assert_eq!(zero_prefix(&[]), 0);
        assert_eq!(zero_prefix(&[1]), 0);
        let mut data = vec![0u8; 3 * BLOCK + 5];
        assert_eq!(zero_prefix(&data), data.len());
        assert!(is_zero(&data));
        data[2 * BLOCK + 3] = 9;
        assert_eq!(zero_prefix(&data), 2 * BLOCK + 3);
        assert!(!is_zero(&data));
        data[0] = 1;
        assert_eq!(zero_prefix(&data), 0);
    }

    #[test]
    fn data_spans_leave_out_whole_zero_blocks_of_the_file_grid() {
        let spans = |data: &[u8], at: u64| data_spans(data, at).collect::<Vec<_>>();
        assert!(spans(&[], 0).is_empty());
        assert_eq!(
            spans(&[0; 10], 0),
            vec![0..10],
            "a partial block is written"
        );
        assert!(spans(&[0; BLOCK], 0).is_empty());
        assert_eq!(spans(&[0; BLOCK], 1), vec![0..BLOCK], "no whole block");
        // Data, two zero blocks, data: written around the hole.
        let mut data = vec![0u8; 4 * BLOCK];
        data[5] = 1;
        data[3 * BLOCK + 7] = 2;
        assert_eq!(spans(&data, 0), [0..BLOCK, 3 * BLOCK..4 * BLOCK]);
        // Off the grid by 100 bytes: the blocks are the file's, not the
        // chunk's.
        assert_eq!(
            spans(&data, 100),
            [0..BLOCK - 100, 3 * BLOCK - 100..4 * BLOCK]
        );
        data[BLOCK + 50] = 3;
        assert_eq!(
            spans(&data, 100),
            [0..2 * BLOCK - 100, 3 * BLOCK - 100..4 * BLOCK]
        );
        // What is left out is zeros, what is written is everything else.
        for at in [0, 1, 4095, 4096, 12_345] {
            let mut seen = vec![0u8; data.len()];
            for r in data_spans(&data, at) {
                seen[r.clone()].copy_from_slice(&data[r]);
            }
            assert_eq!(seen, data, "{at}");
        }
    }

    #[test]
    fn cached_ids_equal_hashed_ids() {
        let keys = MasterKey::generate();
        let ids = ZeroIds::default();
        for len in [CACHED_MIN - 1, CACHED_MIN, 1 << 20, CACHED_MIN, 1 << 20] {
            let zeros = vec![0u8; len];
            assert_eq!(ids.blob_id(&keys, &zeros), keys.blob_id(&zeros), "{len}");
        }
        let mut not_zero = vec![0u8; 1 << 20];
        not_zero[(1 << 20) - 1] = 1;
        assert_eq!(ids.blob_id(&keys, &not_zero), keys.blob_id(&not_zero));
        // Two lengths were cached, the short one was not.
        assert_eq!(ids.known.lock().unwrap().len(), 2);
    }
}
