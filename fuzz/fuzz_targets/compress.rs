//! Blob and object decompression (repo-format.md §6): `tag || payload`,
//! tag 0 raw, 1 zstd, 2 LZ4 with a u32 size prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_engine::compress::{decode, decode_capped, encode, Compression};

const CAP: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = decode(data, CAP) {
        assert!(out.len() <= CAP, "decode exceeded its expected length");
    }
    if let Ok(out) = decode_capped(data, CAP) {
        assert!(out.len() <= CAP, "decode_capped exceeded its cap");
    }
    // The input as a plaintext: what the writer encodes must decode back.
    for c in [Compression::None, Compression::Lz4] {
        let enc = encode(c, data);
        assert!(enc.len() <= data.len() + 1);
        assert_eq!(decode(&enc, data.len()).expect("encoded data decodes"), data);
    }
});
