//! Content-defined chunking (repo-format.md §6): FastCDC 2020 with a gear
//! table seeded from a repository secret.
//!
//! The seed and sizes live in the encrypted repository config, so every
//! writer of a repository cuts identically (dedup across hosts) while the
//! storage provider cannot predict cut points from known content.

use serde::{Deserialize, Serialize};
use std::io::Read;

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
    /// See the README's "chunk size" note for the measurement behind them.
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

    /// Splits a stream into chunks. Memory use is bounded by `max_size`.
    pub fn chunks<R: Read>(&self, reader: R) -> Chunks<R> {
        Chunks {
            inner: fastcdc::v2020::StreamCDC::with_level_and_seed(
                reader,
                self.min_size,
                self.avg_size,
                self.max_size,
                fastcdc::v2020::Normalization::Level1,
                self.seed,
            ),
        }
    }
}

/// Iterator over the chunks of a stream.
pub struct Chunks<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(chunk) => Some(Ok(chunk.data)),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
            Err(other) => Some(Err(std::io::Error::other(other.to_string()))),
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

    proptest! {
        #[test]
        fn concatenated_chunks_equal_input(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let p = small();
            let chunks: Vec<Vec<u8>> = p.chunks(&data[..]).map(Result::unwrap).collect();
            prop_assert!(chunks.iter().all(|c| c.len() <= p.max_size as usize));
            prop_assert_eq!(chunks.concat(), data);
        }
    }

    #[test]
    fn small_insertion_keeps_most_later_chunks() {
        let mut data = vec![0u8; 200_000];
        let mut state = 1u64;
        for b in &mut data {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            *b = (state >> 33) as u8;
        }
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
