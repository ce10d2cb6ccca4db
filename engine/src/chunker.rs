//! Content-defined chunking (repo-format.md §6): FastCDC 2020 with a gear
//! table seeded from a repository secret.
//!
//! The seed and sizes live in the encrypted repository config, so every
//! writer of a repository cuts identically (dedup across hosts) while the
//! storage provider cannot predict cut points from known content.
//!
//! Cut points are exactly those of `fastcdc::v2020::StreamCDC` (§6.3; a
//! test compares the two), but the stream is scanned incrementally: bytes are
//! read straight into the buffer that becomes the chunk, and only the bytes
//! read past a cut are copied, into the next chunk. `StreamCDC` instead
//! shifts its whole `max_size` buffer down after every chunk (about nine
//! bytes of memory traffic per input byte with the default sizes) and
//! allocates that buffer for every file, however small.

use crate::buffer::BufferPool;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::{Arc, Mutex};

/// FastCDC's gear table and its left-shifted twin, seeded.
type Gears = ([u64; 256], [u64; 256]);

/// The seeded tables, computed once per seed rather than once per file.
fn gears(seed: u64) -> Arc<Gears> {
    static LAST: Mutex<Option<(u64, Arc<Gears>)>> = Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((s, g)) = last.as_ref()
        && *s == seed
    {
        return g.clone();
    }
    let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(seed);
    let g = Arc::new((*gear, *gear_ls));
    *last = Some((seed, g.clone()));
    g
}

/// Chunk size bounds and gear seed, recorded in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk (except the last of a stream).
    pub min_size: u32,
    /// Target average chunk.
    pub avg_size: u32,
    /// Largest chunk.
    pub max_size: u32,
    /// Secret seed mixed into FastCDC's gear table.
    pub seed: u64,
}

impl ChunkerParams {
    /// Defaults: 256 KiB / 1 MiB / 8 MiB with a fresh random seed.
    /// BENCHMARKS.md ("Dump growth") has what they cost on a changed dump.
    #[must_use]
    pub fn generate() -> Self {
        Self {
            min_size: 256 * 1024,      // 256 KiB
            avg_size: 1024 * 1024,     // 1 MiB
            max_size: 8 * 1024 * 1024, // 8 MiB
            seed: rand::random(),
        }
    }

    /// Checks the sizes against FastCDC 2020's accepted ranges.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunker sizes {}/{}/{} out of FastCDC range",
                self.min_size, self.avg_size, self.max_size
            ))
        }
    }

    /// Splits a stream into chunks. Memory use is bounded by `max_size`
    /// plus one read step.
    ///
    /// # Panics
    /// If the sizes fail [`ChunkerParams::validate`] (configs are validated
    /// when a repository is opened).
    pub fn chunks<R: Read>(&self, reader: R) -> Chunks<R> {
        self.chunks_sized(reader, None)
    }

    /// Like [`ChunkerParams::chunks`], with the stream's expected length
    /// (e.g. a file's size) so small inputs get small buffers. The hint only
    /// sizes allocations; a stream longer or shorter than it is still cut
    /// correctly.
    ///
    /// # Panics
    /// As [`ChunkerParams::chunks`].
    pub fn chunks_sized<R: Read>(&self, reader: R, size_hint: Option<u64>) -> Chunks<R> {
        assert!(self.validate().is_ok(), "invalid chunker parameters");
        let bits = fastcdc::v2020::logarithm2(self.avg_size);
        // Normalization level 1 (§6.3).
        let mask_s = fastcdc::v2020::MASKS[(bits + 1) as usize];
        let mask_l = fastcdc::v2020::MASKS[(bits - 1) as usize];
        let gears = gears(self.seed);
        let (zero_hash, zero_half) = zero_hashes(&gears);
        let avg = self.avg_size as usize;
        Chunks {
            reader,
            min: self.min_size as usize,
            avg,
            max: self.max_size as usize,
            small: Masks::new(mask_s),
            large: Masks::new(mask_l),
            gears,
            zero_hash,
            zero_half,
            step: (avg / 4).clamp(1024, 1024 * 1024),
            remaining_hint: size_hint,
            pending: None,
            eof: false,
            failed: false,
            buffers: None,
        }
    }
}

/// The gear hash of a long run of zeros, and its value half way through a
/// pair: the states [`Chunks::skip_zeros`] tests the masks against.
fn zero_hashes(gears: &Gears) -> (u64, u64) {
    let (g0, g0_ls) = (gears.0[0], gears.1[0]);
    let mut hash = 0u64;
    for _ in 0..SATURATION {
        hash = (hash << 2).wrapping_add(g0_ls).wrapping_add(g0);
    }
    let half = (hash << 2).wrapping_add(g0_ls);
    debug_assert_eq!(half.wrapping_add(g0), hash, "a fixed point");
    (hash, half)
}

/// Iterator over the chunks of a stream.
pub struct Chunks<R: Read> {
    reader: R,
    min: usize,
    avg: usize,
    max: usize,
    /// The masks below `avg`, and from there to `max`.
    small: Masks,
    large: Masks,
    gears: Arc<Gears>,
    /// The gear hash over zero bytes, after [`SATURATION`] pairs and half
    /// way through a pair (see [`Chunks::skip_zeros`]).
    zero_hash: u64,
    zero_half: u64,
    /// Bytes per read call.
    step: usize,
    /// Expected bytes not yet read, if known.
    remaining_hint: Option<u64>,
    /// Bytes read past the previous cut: the start of the next chunk.
    pending: Option<Vec<u8>>,
    eof: bool,
    failed: bool,
    /// Where chunk buffers come from, if not straight from the allocator.
    buffers: Option<Arc<BufferPool>>,
}

/// Where the scan of the current chunk stands: the next byte pair to hash,
/// and the gear hash so far.
struct CutState {
    pair: usize,
    hash: u64,
    /// How many bytes the chunk starts with that are zero, as far as
    /// looked; `zeros_end` once a non-zero byte was seen.
    zeros: usize,
    zeros_end: bool,
}

impl CutState {
    fn new(pair: usize) -> Self {
        Self {
            pair,
            hash: 0,
            zeros: 0,
            zeros_end: false,
        }
    }
}

/// A mask for each byte of a pair: FastCDC 2020 tests the first byte's
/// hash, shifted left once more than the second's, with the mask shifted
/// likewise.
#[derive(Clone, Copy)]
struct Masks {
    first: u64,
    second: u64,
}

impl Masks {
    fn new(mask: u64) -> Self {
        Self {
            first: mask << 1,
            second: mask,
        }
    }
}

/// Pairs of zero bytes after which the gear hash no longer depends on what
/// came before: each pair maps `h` to `4h + c` (mod 2^64), and 4^32 = 2^64.
const SATURATION: usize = 32;

impl<R: Read> Chunks<R> {
    /// Takes chunk buffers from `pool`; whoever consumes the chunks should
    /// give them back ([`BufferPool::give`]) when done.
    #[must_use]
    pub fn with_buffers(mut self, pool: Arc<BufferPool>) -> Self {
        self.buffers = Some(pool);
        self
    }

    /// Continues FastCDC 2020's `cut_gear` over `data` (the current chunk's
    /// bytes so far) from `scan`, visiting only byte pairs fully inside
    /// `data` and inside `max`. Returns the chunk length if a cut point was
    /// found. Visiting the pairs in several calls as data arrives gives the
    /// same result as one call over the whole input: `cut_gear` uses the
    /// small mask below `avg` and the large one from there to `max`, and at
    /// the end of a stream it visits exactly the pairs that fit.
    fn find_cut(&self, data: &[u8], scan: &mut CutState) -> Option<usize> {
        let avail = data.len().min(self.max) / 2;
        let small_end = (self.avg / 2).min(avail);
        self.scan(data, scan, small_end, self.small)
            .or_else(|| self.scan(data, scan, avail, self.large))
    }

    /// Hashes the pairs from `scan.pair` to `end` with one pair of masks,
    /// skipping zero runs that provably hold no cut.
    fn scan(&self, data: &[u8], scan: &mut CutState, end: usize, masks: Masks) -> Option<usize> {
        if scan.pair >= end {
            return None;
        }
        if let Some(cut) = self.skip_zeros(data, scan, end, masks) {
            return Some(cut);
        }
        self.hash_pairs(data, scan, end, masks)
    }

    /// In a chunk that so far holds only zeros, moves `scan` to the end of
    /// the zeros (within `end`) without hashing them one by one, where that
    /// provably changes no cut: after [`SATURATION`] zero pairs the hash is
    /// the fixed `zero_hash` whatever came before, so if neither of a pair's
    /// two tests passes on it, none will until a non-zero byte. The first
    /// [`SATURATION`] pairs are hashed as usual. Only runs at a chunk's
    /// start are looked for: a chunk that enters a zero run later is cut at
    /// most `max` bytes on, and the next one starts inside the run.
    fn skip_zeros(
        &self,
        data: &[u8],
        scan: &mut CutState,
        end: usize,
        masks: Masks,
    ) -> Option<usize> {
        if scan.zeros_end || self.zero_half & masks.first == 0 || self.zero_hash & masks.second == 0
        {
            return None;
        }
        let upto = data.len().min(self.max);
        if scan.zeros < upto {
            scan.zeros += crate::zeros::zero_prefix(&data[scan.zeros..upto]);
            scan.zeros_end = scan.zeros < upto;
        }
        let zero_pairs = (scan.zeros / 2).min(end);
        let settled = scan.pair + SATURATION;
        if zero_pairs <= settled {
            return None;
        }
        if let Some(cut) = self.hash_pairs(data, scan, settled, masks) {
            return Some(cut);
        }
        debug_assert_eq!(scan.hash, self.zero_hash);
        scan.pair = zero_pairs;
        None
    }

    /// Hashes the pairs from `scan.pair` to `end`, testing each against
    /// the masks as `cut_gear` does.
    fn hash_pairs(
        &self,
        data: &[u8],
        scan: &mut CutState,
        end: usize,
        masks: Masks,
    ) -> Option<usize> {
        let gear = &self.gears.0;
        let gear_ls = &self.gears.1;
        let start = scan.pair;
        let mut hash = scan.hash;
        for (i, pair) in data[start * 2..end * 2].chunks_exact(2).enumerate() {
            hash = (hash << 2).wrapping_add(gear_ls[usize::from(pair[0])]);
            if hash & masks.first == 0 {
                return Some((start + i) * 2);
            }
            hash = hash.wrapping_add(gear[usize::from(pair[1])]);
            if hash & masks.second == 0 {
                return Some((start + i) * 2 + 1);
            }
        }
        scan.pair = end;
        scan.hash = hash;
        None
    }

    /// Appends up to `want` bytes from the reader to `buf`; marks end of
    /// stream when fewer arrive.
    fn fill(&mut self, buf: &mut Vec<u8>, want: usize) -> std::io::Result<()> {
        let before = buf.len();
        if buf.capacity() - before < want {
            // Grow geometrically, but never past the largest chunk plus one
            // read: doubling a 4 MiB buffer for an 8 MiB chunk would
            // allocate 16 MiB.
            let cap = buf.capacity();
            let target = (before + want).max((2 * cap).min(self.max + self.step));
            buf.reserve_exact(target - before);
        }
        (&mut self.reader).take(want as u64).read_to_end(buf)?;
        let got = buf.len() - before;
        if got < want {
            self.eof = true;
        } else if let Some(h) = self.remaining_hint {
            // A stream longer than announced: stop trusting the hint.
            self.remaining_hint = h.checked_sub(got as u64).filter(|&h| h > 0);
        }
        Ok(())
    }

    /// A buffer for the next chunk starting with `leftover`, with room for
    /// a typical chunk, or for the rest of the announced input if smaller,
    /// so it rarely has to grow.
    fn buffer_with(&self, leftover: &[u8]) -> Vec<u8> {
        let room = if self.eof {
            0
        } else {
            let typical = 2 * self.avg;
            match self.remaining_hint {
                Some(h) => usize::try_from(h).map_or(typical, |h| h.saturating_add(1).min(typical)),
                None => typical,
            }
            .max(self.step.min(typical))
        };
        let capacity = leftover.len() + room;
        let mut buf = match &self.buffers {
            Some(pool) => pool.take(capacity),
            None => Vec::with_capacity(capacity),
        };
        buf.extend_from_slice(leftover);
        buf
    }

    fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = match self.pending.take() {
            Some(b) => b,
            None => self.buffer_with(&[]),
        };
        let mut scan = CutState::new(self.min / 2);
        loop {
            let cut = if buf.len() > self.min
                && let Some(cut) = self.find_cut(&buf, &mut scan)
            {
                Some(cut)
            } else if buf.len() >= self.max {
                Some(self.max)
            } else {
                None
            };
            if let Some(cut) = cut {
                if cut < buf.len() || !self.eof {
                    self.pending = Some(self.buffer_with(&buf[cut..]));
                }
                buf.truncate(cut);
                return Ok(Some(buf));
            }
            if self.eof {
                return Ok((!buf.is_empty()).then_some(buf));
            }
            let want = match self.remaining_hint {
                // Read the announced rest whole, plus one byte to see its end.
                Some(h) if h < self.step as u64 => usize::try_from(h).map_or(self.step, |h| h + 1),
                _ => self.step,
            };
            self.fill(&mut buf, want)?;
        }
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_chunk() {
            Ok(chunk) => chunk.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
            seed: 42,
        }
    }

    /// The reference: what repo-format.md §6.3 specifies.
    fn reference(p: &ChunkerParams, data: &[u8]) -> Vec<usize> {
        fastcdc::v2020::StreamCDC::with_level_and_seed(
            data,
            p.min_size,
            p.avg_size,
            p.max_size,
            fastcdc::v2020::Normalization::Level1,
            p.seed,
        )
        .map(|c| c.unwrap().length)
        .collect()
    }

    /// A reader that returns at most `n` bytes per call, like a pipe.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn lcg_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 33) as u8
            })
            .collect()
    }

    /// Pseudo-random bytes with zero runs of all lengths in them.
    fn with_zero_runs(len: usize, seed: u64) -> Vec<u8> {
        let mut data = lcg_bytes(len, seed);
        let mut at = 0;
        let mut step = seed as usize % 977 + 1;
        while at < len {
            let run = (step * 131) % 9000;
            data[at..(at + run).min(len)].fill(0);
            at += run + step * 7;
            step = step * 31 % 997 + 1;
        }
        data
    }

    proptest! {
        #[test]
        fn concatenated_chunks_equal_input(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let p = small();
            let chunks: Vec<Vec<u8>> = p.chunks(&data[..]).map(Result::unwrap).collect();
            prop_assert!(chunks.iter().all(|c| c.len() <= p.max_size as usize));
            prop_assert!(chunks.iter().all(|c| !c.is_empty()));
            prop_assert_eq!(chunks.concat(), data);
        }

        #[test]
        fn cuts_match_fastcdc_stream_cdc(
            len in 0usize..40_000,
            seed in any::<u64>(),
            data_seed in any::<u64>(),
            min in 64u32..400,
            avg_extra in 0u32..2000,
            max_extra in 0u32..6000,
            trickle in 1usize..3000,
            hint_delta in -50i64..50,
            shape in 0u8..3,
        ) {
            let avg = (min + avg_extra).max(256);
            let p = ChunkerParams { min_size: min, avg_size: avg, max_size: (avg + max_extra).max(1024), seed };
            let data = match shape {
                0 => lcg_bytes(len, data_seed),
                1 => vec![0u8; len],
                _ => with_zero_runs(len, data_seed),
            };
            let want = reference(&p, &data);
            let hint = u64::try_from(len as i64 + hint_delta).ok();
            let got: Vec<usize> = p
                .chunks_sized(Trickle(&data, trickle), hint)
                .map(|c| c.unwrap().len())
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn default_sizes_match_fastcdc_stream_cdc() {
        let mut p = ChunkerParams::generate();
        p.seed = 0x0123_4567_89ab_cdef;
        // Pseudo-random data with a long run of zeros (max-size chunks).
        let mut data = lcg_bytes(12 * 1024 * 1024, 7);
        data.extend(std::iter::repeat_n(0u8, 20 * 1024 * 1024));
        data.extend(lcg_bytes(3 * 1024 * 1024 + 17, 9));
        let want = reference(&p, &data);
        assert!(want.len() > 10);
        let got: Vec<usize> = p.chunks(&data[..]).map(|c| c.unwrap().len()).collect();
        assert_eq!(got, want);
        let hinted: Vec<usize> = p
            .chunks_sized(&data[..], Some(data.len() as u64))
            .map(|c| c.unwrap().len())
            .collect();
        assert_eq!(hinted, want);
    }

    /// Whether `chunks` skips zero runs under both masks.
    fn skips<R: Read>(chunks: &Chunks<R>) -> bool {
        [chunks.small, chunks.large]
            .iter()
            .all(|m| chunks.zero_half & m.first != 0 && chunks.zero_hash & m.second != 0)
    }

    /// Zero runs are skipped only under seeds whose saturated zero hash
    /// passes no mask test; both kinds of seed must cut as the reference.
    /// With small sizes (few mask bits) about one seed in seventy does not
    /// skip; with the default sizes nearly every seed skips.
    #[test]
    fn zero_runs_cut_as_reference_under_many_seeds() {
        let mut data = with_zero_runs(30_000, 5);
        data.extend(std::iter::repeat_n(0u8, 5000));
        data.extend(lcg_bytes(3000, 6));
        let (mut skipping, mut not) = (0, 0);
        for i in 0..3000u64 {
            let mut p = small();
            // Spread over all 64 bits: the seed is mixed into the gears
            // bit for bit, and the masks test high bits.
            let seed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            p.seed = seed;
            let chunks = p.chunks(&data[..]);
            if skips(&chunks) {
                skipping += 1;
            } else {
                not += 1;
            }
            let got: Vec<usize> = chunks.map(|c| c.unwrap().len()).collect();
            assert_eq!(got, reference(&p, &data), "seed {seed}");
        }
        assert!(
            skipping > 0 && not > 0,
            "{skipping} seeds skip, {not} do not"
        );

        let mut data = lcg_bytes(300_000, 3);
        data.extend(std::iter::repeat_n(0u8, 9 * 1024 * 1024 + 11));
        data.extend(lcg_bytes(1_000_000, 4));
        data.extend(std::iter::repeat_n(0u8, 700_001));
        for i in 1..5u64 {
            let mut p = ChunkerParams::generate();
            let seed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            p.seed = seed;
            let chunks = p.chunks(&data[..]);
            assert!(skips(&chunks));
            let got: Vec<usize> = chunks.map(|c| c.unwrap().len()).collect();
            assert_eq!(got, reference(&p, &data), "seed {seed}");
        }
    }

    #[test]
    fn read_errors_end_the_stream() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let mut chunks = small().chunks(Failing);
        assert!(chunks.next().unwrap().is_err());
        assert!(chunks.next().is_none());
    }

    #[test]
    fn small_insertion_keeps_most_later_chunks() {
        let mut data = lcg_bytes(200_000, 1);
        let p = small();
        let before: std::collections::HashSet<Vec<u8>> =
            p.chunks(&data[..]).map(Result::unwrap).collect();
        data.splice(100_000..100_000, b"inserted".iter().copied());
        let after: Vec<Vec<u8>> = p.chunks(&data[..]).map(Result::unwrap).collect();
        let reused = after.iter().filter(|c| before.contains(*c)).count();
        assert!(reused * 10 >= after.len() * 9, "{reused}/{}", after.len());
    }

    #[test]
    fn seed_changes_cut_points() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let a: Vec<usize> = small()
            .chunks(&data[..])
            .map(|c| c.unwrap().len())
            .collect();
        let mut other = small();
        other.seed = 7;
        let b: Vec<usize> = other.chunks(&data[..]).map(|c| c.unwrap().len()).collect();
        assert_ne!(a, b);
    }
}
