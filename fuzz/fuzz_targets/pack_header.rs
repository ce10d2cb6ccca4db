//! Pack header decoding (repo-format.md §7.2).
//!
//! The input is used three ways:
//! 1. as a header plaintext for `decode_header`;
//! 2. as the tail of a stored pack for `read_header` (almost always fails
//!    authentication: this covers the trailer and length checks before it);
//! 3. sealed with the fixed key as a pack header, so `read_header` reaches
//!    the entry and offset checks behind authentication. There the result is
//!    checked against `decode_header`: a well-formed header over a pack of
//!    exactly the right size must read, one byte less must not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_engine::pack::{decode_header, read_header, tail_len};
use vault_fuzz::{key, seal, AAD_PACK_HEADER};

fuzz_target!(|data: &[u8]| {
    let key = key();
    let decoded = decode_header(data);

    // 2. Raw input as a whole pack.
    let size = data.len() as u64;
    let tail = &data[data.len() - tail_len(size) as usize..];
    if let Ok(blobs) = read_header(key, size, tail) {
        let mut end = 0u64;
        for b in &blobs {
            assert_eq!(u64::from(b.offset), end, "blobs are back to back");
            end += u64::from(b.length);
        }
        assert!(end <= size, "blobs end inside the pack");
    }

    // 3. Input as an authentic header plaintext.
    let sealed = seal(AAD_PACK_HEADER, data);
    let mut tail = sealed.clone();
    tail.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    let tail_size = tail.len() as u64;
    match decoded {
        Ok(entries) => {
            let total: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
            // Offsets are u32: a header whose blob starts lie past 4 GiB is
            // refused even when the pack is big enough.
            let mut start = 0u64;
            let mut starts_fit = true;
            for e in &entries {
                starts_fit &= start <= u64::from(u32::MAX);
                start += u64::from(e.length);
            }
            let got = read_header(key, total + tail_size, &tail);
            if starts_fit {
                let blobs = got.expect("an authentic, well-formed header over a pack of the right size reads");
                assert_eq!(blobs.len(), entries.len());
                let mut end = 0u64;
                for (b, e) in blobs.iter().zip(&entries) {
                    assert_eq!((b.kind, b.id, b.length, b.raw_len), (e.kind, e.id, e.length, e.raw_len));
                    assert_eq!(u64::from(b.offset), end);
                    end += u64::from(b.length);
                }
                assert_eq!(end, total);
            } else {
                assert!(got.is_err(), "blob offsets past 4 GiB must be refused");
            }
            if total > 0 {
                assert!(
                    read_header(key, total + tail_size - 1, &tail).is_err(),
                    "blobs reaching past the header must be refused"
                );
            }
        }
        Err(_) => {
            assert!(read_header(key, u64::MAX, &tail).is_err(), "a malformed header must not read");
        }
    }
});
