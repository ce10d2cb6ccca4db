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
    // A zstd payload whose (first) frame declares a window above 16 MiB
    // (Window_Descriptor above exponent 14, mantissa 0) is refused by both.
    if let [1, 0x28, 0xb5, 0x2f, 0xfd, descriptor, window, ..] = *data {
        if descriptor & 0x20 == 0 && window > 14 << 3 {
            assert!(decode(data, CAP).is_err(), "zstd window above 16 MiB decoded");
            assert!(decode_capped(data, CAP).is_err(), "zstd window above 16 MiB decoded");
        }
    }
    // The input as a plaintext: what the writer encodes must decode back.
    for c in [Compression::None, Compression::Lz4] {
        let enc = encode(c, data);
        assert!(enc.len() <= data.len() + 1);
        assert_eq!(decode(&enc, data.len()).expect("encoded data decodes"), data);
    }
});
