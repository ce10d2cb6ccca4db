//! Per-blob compression (repo-format.md §6).
//!
//! A blob's plaintext inside its envelope is `tag (1) || payload`. Tag 0 is
//! raw, 1 is a zstd frame, 2 is `raw_len u32 LE || LZ4 block`. A writer stores
//! raw whenever compression does not shrink the blob, so incompressible
//! media costs one byte, and no decompression time on restore.
#![warn(clippy::indexing_slicing)]

use std::fmt;
use std::str::FromStr;

/// Largest plaintext a blob may have. Chunks are at most 8 MiB; tree blobs
/// of huge directories can be bigger. Readers refuse anything above this, so
/// a hostile length can never drive an allocation.
pub const MAX_BLOB_LEN: usize = 256 * 1024 * 1024; // 256 MiB

const TAG_NONE: u8 = 0;
const TAG_ZSTD: u8 = 1;
const TAG_LZ4: u8 = 2;

/// The compression a writer applies to new blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store raw.
    None,
    /// zstd at the given level (1..=19).
    Zstd(i32),
    /// LZ4 block compression: fastest, weaker.
    Lz4,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(3)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd(level) => write!(f, "zstd,{level}"),
            Compression::Lz4 => f.write_str("lz4"),
        }
    }
}

/// An unknown compression name.
#[derive(Debug, thiserror::Error)]
#[error("unknown compression {0:?} (expected none, lz4, zstd or zstd,LEVEL with LEVEL 1-19)")]
pub struct ParseCompressionError(String);

impl FromStr for Compression {
    type Err = ParseCompressionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseCompressionError(s.to_owned());
        match s {
            "none" | "off" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" | "auto" => Ok(Compression::Zstd(3)),
            "max" => Ok(Compression::Zstd(19)),
            _ => {
                let level = s.strip_prefix("zstd,").ok_or_else(bad)?;
                let level: i32 = level.parse().map_err(|_| bad())?;
                if (1..=19).contains(&level) {
                    Ok(Compression::Zstd(level))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// Why a blob's payload could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// Empty plaintext: no tag byte.
    #[error("empty blob")]
    Empty,
    /// Tag byte not defined by the format.
    #[error("unknown compression tag {0}")]
    UnknownTag(u8),
    /// Declared or actual size above [`MAX_BLOB_LEN`] or the expected size.
    #[error("blob larger than allowed")]
    TooLarge,
    /// The compressed stream is invalid.
    #[error("invalid compressed data: {0}")]
    Invalid(String),
}

thread_local! {
    /// Each thread's zstd contexts, reused across blobs: creating one per
    /// blob (hash tables of ~1 MiB at level 3, allocated and zeroed) cost
    /// more than compressing a typical small file.
    #[allow(clippy::type_complexity)]
    static ZSTD_COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>, Vec<u8>)>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd-compresses `data` with this thread's context; returns `tag ||
/// frame` if the frame is at most `limit` bytes, `None` otherwise. The frame
/// goes to a per-thread scratch buffer first (no zeroing, no oversized
/// result), then to an exactly sized result.
fn zstd_tagged(level: i32, data: &[u8], limit: usize) -> Option<Vec<u8>> {
    ZSTD_COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?, Vec::new()));
        }
        let (_, compressor, scratch) = slot.as_mut()?;
        scratch.clear();
        scratch.reserve(limit);
        // zstd writes into the spare capacity and fails with "destination
        // too small" rather than overrun it.
        let n = compressor.compress_to_buffer(data, scratch).ok()?;
        if n > limit {
            return None;
        }
        let mut out = Vec::with_capacity(n + 1);
        out.push(TAG_ZSTD);
        out.extend_from_slice(scratch.get(..n)?);
        Some(out)
    })
}

/// Encodes `data` as `tag || payload`, falling back to raw when compression
/// does not help.
#[must_use]
pub fn encode(compression: Compression, data: &[u8]) -> Vec<u8> {
    // A zstd frame header alone is longer than this.
    const TOO_SMALL: usize = 16;
    let compressed = match compression {
        Compression::None => None,
        Compression::Zstd(_) if data.len() < TOO_SMALL => None,
        // Only a frame shorter than the input is worth keeping.
        Compression::Zstd(level) => zstd_tagged(level, data, data.len() - 1),
        Compression::Lz4 => {
            let mut out = Vec::with_capacity(data.len() / 2 + 64);
            out.push(TAG_LZ4);
            out.extend_from_slice(&lz4_flex::block::compress_prepend_size(data));
            Some(out)
        }
    };
    match compressed {
        Some(out) if out.len() < data.len() + 1 => out,
        _ => {
            let mut out = Vec::with_capacity(data.len() + 1);
            out.push(TAG_NONE);
            out.extend_from_slice(data);
            out
        }
    }
}

/// zstd-decompresses a frame of at most `cap` bytes with this thread's
/// context into `out` (cleared first; its capacity is kept, so a caller
/// reusing it allocates once, not per blob).
fn zstd_decode_into(payload: &[u8], cap: usize, out: &mut Vec<u8>) -> Result<(), DecompressError> {
    ZSTD_DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| DecompressError::Invalid(e.to_string()))?,
            );
        }
        let Some(d) = slot.as_mut() else {
            return Err(DecompressError::Invalid("no zstd context".into()));
        };
        // One-shot decompression ignores the context's window limit
        // (`ZSTD_d_windowLogMax` is only enforced when streaming), so the
        // frame headers are checked here.
        check_zstd_windows(payload)?;
        out.clear();
        // zstd writes into the capacity and fails with "destination too
        // small" rather than overrun it. A reused buffer may hold more than
        // `cap`: the caller's length check refuses what exceeds it.
        out.reserve_exact(cap);
        d.decompress_to_buffer(payload, out)
            .map_err(|e| DecompressError::Invalid(e.to_string()))?;
        Ok(())
    })
}

/// Largest zstd window a reader accepts: 16 MiB.
const MAX_WINDOW_LOG: u32 = 24;

/// zstd frame magic numbers (RFC 8878 §3.1.1, §3.1.2).
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const ZSTD_SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

/// Refuses a zstd payload any of whose frames declares a window above
/// `2^MAX_WINDOW_LOG` bytes (repo-format.md §6.1). The window is the frame
/// header's Window_Descriptor or, for a single-segment frame, its content
/// size (RFC 8878 §3.1.1.1.2). Writers at levels 1-19 never exceed 8 MiB.
fn check_zstd_windows(mut payload: &[u8]) -> Result<(), DecompressError> {
    let invalid = |what: &str| DecompressError::Invalid(format!("zstd frame: {what}"));
    while !payload.is_empty() {
        let (magic, rest) = payload
            .split_first_chunk::<4>()
            .ok_or_else(|| invalid("truncated magic"))?;
        let magic = u32::from_le_bytes(*magic);
        if magic & ZSTD_SKIPPABLE_MASK != ZSTD_SKIPPABLE_MAGIC {
            if magic != ZSTD_MAGIC {
                return Err(invalid("unknown magic"));
            }
            let window = zstd_window(rest).ok_or_else(|| invalid("truncated header"))?;
            if window > 1 << MAX_WINDOW_LOG {
                return Err(DecompressError::Invalid(format!(
                    "zstd frame declares a {window}-byte window, above the 16 MiB readers accept"
                )));
            }
        }
        let len = zstd::zstd_safe::find_frame_compressed_size(payload)
            .map_err(|code| invalid(zstd::zstd_safe::get_error_name(code)))?;
        payload = payload
            .get(len..)
            .filter(|_| len > 0)
            .ok_or_else(|| invalid("bad length"))?;
    }
    Ok(())
}

/// The window size a zstd frame header declares; `header` starts after the
/// magic number. `None` if it is truncated.
fn zstd_window(header: &[u8]) -> Option<u64> {
    let (&descriptor, rest) = header.split_first()?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        // Window_Descriptor: exponent (5 bits) and mantissa (3 bits).
        let byte = *rest.first()?;
        let log = 10 + u32::from(byte >> 3);
        let base = 1u64 << log;
        return Some(base + (base / 8) * u64::from(byte & 7));
    }
    // A single segment is its own window: the content size, after the
    // dictionary id (0, 1, 2 or 4 bytes).
    let dict_len = match descriptor & 3 {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => 4,
    };
    let fcs = rest.get(dict_len..)?;
    Some(match descriptor >> 6 {
        0 => u64::from(*fcs.first()?),
        1 => u64::from(u16::from_le_bytes(*fcs.first_chunk::<2>()?)) + 256,
        2 => u64::from(u32::from_le_bytes(*fcs.first_chunk::<4>()?)),
        _ => u64::from_le_bytes(*fcs.first_chunk::<8>()?),
    })
}

/// The size an LZ4 payload (`raw_len || block`) declares, refused when the
/// block could not possibly expand to it: the decoder allocates the declared
/// size up front, so a 4-byte prefix alone could otherwise cost 256 MiB.
/// Each block byte yields at most 255 output bytes (a run-length extension
/// byte), plus a few for the final literals.
fn lz4_declared_size(payload: &[u8]) -> Result<usize, DecompressError> {
    let (size, block) = lz4_flex::block::uncompressed_size(payload)
        .map_err(|e| DecompressError::Invalid(e.to_string()))?;
    if size > block.len().saturating_mul(255).saturating_add(64) {
        return Err(DecompressError::Invalid(format!(
            "LZ4 block of {} bytes cannot expand to the declared {size}",
            block.len()
        )));
    }
    Ok(size)
}

/// Decodes `tag || payload` back to the blob plaintext. `expected_len` is the
/// plaintext length the index promises; output may not exceed it.
pub fn decode(encoded: &[u8], expected_len: usize) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    Ok(match decode_into(encoded, expected_len, &mut out)? {
        Decoded::Stored(plain) => plain.to_vec(),
        Decoded::Buffer => out,
    })
}

/// Where [`decode_into`] left a blob's plaintext.
pub(crate) enum Decoded<'a> {
    /// Stored raw: the payload itself, not copied.
    Stored(&'a [u8]),
    /// In the caller's buffer.
    Buffer,
}

/// Like [`decode`], for a caller that decodes many blobs: a compressed
/// payload is decoded into `out` (cleared first, its allocation reused), a
/// raw one is handed back where it lies.
pub(crate) fn decode_into<'a>(
    encoded: &'a [u8],
    expected_len: usize,
    out: &mut Vec<u8>,
) -> Result<Decoded<'a>, DecompressError> {
    if expected_len > MAX_BLOB_LEN {
        return Err(DecompressError::TooLarge);
    }
    let (&tag, payload) = encoded.split_first().ok_or(DecompressError::Empty)?;
    match tag {
        TAG_NONE if payload.len() > expected_len => return Err(DecompressError::TooLarge),
        TAG_NONE => return Ok(Decoded::Stored(payload)),
        TAG_ZSTD => zstd_decode_into(payload, expected_len, out)?,
        TAG_LZ4 => {
            let size = lz4_declared_size(payload)?;
            if size > expected_len {
                return Err(DecompressError::TooLarge);
            }
            *out = lz4_flex::block::decompress_size_prepended(payload)
                .map_err(|e| DecompressError::Invalid(e.to_string()))?;
        }
        other => return Err(DecompressError::UnknownTag(other)),
    }
    if out.len() > expected_len {
        return Err(DecompressError::TooLarge);
    }
    Ok(Decoded::Buffer)
}

/// Decodes a whole stored object (index, snapshot, config): like [`decode`]
/// but with a cap instead of an exact size, and streaming so the cap is not
/// allocated up front.
pub fn decode_capped(encoded: &[u8], cap: usize) -> Result<Vec<u8>, DecompressError> {
    use std::io::Read;
    let (&tag, payload) = encoded.split_first().ok_or(DecompressError::Empty)?;
    match tag {
        TAG_ZSTD => {
            check_zstd_windows(payload)?;
            let mut decoder = zstd::stream::read::Decoder::new(payload)
                .map_err(|e| DecompressError::Invalid(e.to_string()))?;
            // The streaming decoder sizes its buffers from the window the
            // frame declares (up to 128 MiB by default) before producing a
            // byte; writers at levels 1-19 never need more than 8 MiB
            // (repo-format.md §6.1), so a larger declared window is refused.
            decoder
                .window_log_max(MAX_WINDOW_LOG)
                .map_err(|e| DecompressError::Invalid(e.to_string()))?;
            let mut out = Vec::new();
            decoder
                .take(cap as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| DecompressError::Invalid(e.to_string()))?;
            if out.len() > cap {
                return Err(DecompressError::TooLarge);
            }
            Ok(out)
        }
        TAG_LZ4 => {
            let size = lz4_declared_size(payload)?;
            decode(encoded, size.min(cap))
        }
        _ => decode(encoded, cap.min(encoded.len())),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_inverts_encode(data in proptest::collection::vec(0u8..4, 0..4096), which in 0usize..4) {
            let c = [Compression::None, Compression::Zstd(3), Compression::Lz4, Compression::Zstd(19)][which];
            let enc = encode(c, &data);
            prop_assert!(enc.len() <= data.len() + 1);
            prop_assert_eq!(decode(&enc, data.len()).unwrap(), data);
        }

        #[test]
        fn decode_into_a_reused_buffer_agrees_with_decode(data in proptest::collection::vec(0u8..4, 0..4096), which in 0usize..3, short in any::<bool>()) {
            let c = [Compression::None, Compression::Zstd(3), Compression::Lz4][which];
            let enc = encode(c, &data);
            // Left large by an earlier, bigger blob: more room than this
            // blob's length allows must not let a longer plaintext pass.
            let mut out = Vec::with_capacity(64 * 1024);
            out.extend_from_slice(b"left over");
            let expected = if short { data.len().saturating_sub(1) } else { data.len() };
            let plain = decode_into(&enc, expected, &mut out).map(|d| match d {
                Decoded::Stored(p) => p.to_vec(),
                Decoded::Buffer => out.clone(),
            });
            prop_assert_eq!(plain.ok(), decode(&enc, expected).ok());
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), cap in 0usize..100_000) {
            let _ = decode(&data, cap);
        }
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let mut data = vec![0u8; 10_000];
        rand::fill(&mut data[..]);
        assert_eq!(encode(Compression::Zstd(3), &data)[0], TAG_NONE);
    }

    #[test]
    fn decode_refuses_output_beyond_expected() {
        let enc = encode(Compression::Zstd(3), &[0u8; 5000]);
        assert!(decode(&enc, 100).is_err());
        let enc = encode(Compression::Lz4, &[0u8; 5000]);
        assert!(decode(&enc, 100).is_err());
    }

    #[test]
    fn declared_sizes_out_of_proportion_are_refused() {
        // The two fuzz findings kept in fuzz/regressions/: a zstd frame
        // declaring a 128 MiB window, an LZ4 size prefix with no block.
        let zstd_window = [1u8, 0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x88, 0x01, 0x00, 0x00];
        assert!(matches!(
            decode_capped(&zstd_window, 1 << 20),
            Err(DecompressError::Invalid(_))
        ));
        let lz4_prefix = [2u8, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode_capped(&lz4_prefix, 1 << 30),
            Err(DecompressError::Invalid(_))
        ));
        assert!(decode(&lz4_prefix, MAX_BLOB_LEN).is_err());
        // Highly compressible data at the largest level still round-trips.
        let zeros = vec![0u8; 20 << 20];
        for c in [
            Compression::Zstd(19),
            Compression::Lz4,
            Compression::Zstd(1),
        ] {
            let enc = encode(c, &zeros);
            assert_eq!(decode_capped(&enc, 1 << 30).unwrap().len(), zeros.len());
        }
    }

    /// A zstd frame holding `hi` in one raw block, with the given frame
    /// header descriptor and the header bytes after it.
    fn frame(descriptor: u8, header: &[u8]) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, descriptor];
        f.extend_from_slice(header);
        // Last block, raw, 2 bytes.
        f.extend_from_slice(&[0x11, 0x00, 0x00, b'h', b'i']);
        f
    }

    #[test]
    fn zstd_windows_above_16_mib_are_refused_in_blobs_and_objects() {
        let tagged = |frames: &[Vec<u8>]| {
            let mut t = vec![TAG_ZSTD];
            frames.iter().for_each(|f| t.extend_from_slice(f));
            t
        };
        // Window_Descriptor: exponent 14 (window log 24, 16 MiB) is the
        // largest accepted; mantissa 1 or exponent 15 is above it.
        let at_limit = frame(0x00, &[14 << 3]);
        let above = [frame(0x00, &[14 << 3 | 1]), frame(0x00, &[15 << 3])];
        // A single segment's window is its content size (4-byte field).
        let single_at_limit = frame(0xa0, &(1u32 << 24).to_le_bytes());
        let single_above = frame(0xa0, &((1u32 << 24) + 1).to_le_bytes());
        assert_eq!(
            decode(&tagged(std::slice::from_ref(&at_limit)), 2).unwrap(),
            b"hi"
        );
        assert_eq!(
            decode_capped(&tagged(std::slice::from_ref(&at_limit)), 2).unwrap(),
            b"hi"
        );
        for bad in [
            tagged(&[above[0].clone()]),
            tagged(&[above[1].clone()]),
            tagged(&[single_above]),
            // A second frame is checked too.
            tagged(&[at_limit.clone(), above[1].clone()]),
        ] {
            for result in [decode(&bad, 1 << 20), decode_capped(&bad, 1 << 20)] {
                let err = result.unwrap_err();
                assert!(err.to_string().contains("window"), "{err}");
            }
        }
        // Not refused for its window (its content size does not match).
        let err = decode(&tagged(&[single_at_limit]), 1 << 20).unwrap_err();
        assert!(!err.to_string().contains("window"), "{err}");
        // Highly compressible blobs at the largest level stay well inside.
        let zeros = vec![0u8; 20 << 20];
        let enc = encode(Compression::Zstd(19), &zeros);
        assert_eq!(enc[0], TAG_ZSTD);
        assert_eq!(decode(&enc, zeros.len()).unwrap(), zeros);
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            "zstd,7".parse::<Compression>().unwrap(),
            Compression::Zstd(7)
        );
        assert_eq!("lz4".parse::<Compression>().unwrap(), Compression::Lz4);
        assert!("zstd,40".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
    }
}
