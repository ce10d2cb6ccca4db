//! The whole "read a blob from a pack" path with the fixed key.
//!
//! 1. The input is a stored pack: `read_header` over its tail, then
//!    `blob::open` on each slice the header points at (tree blobs are then
//!    decoded, as `Repository::read_tree` does). Mutated packs fail
//!    authentication; this covers the slicing and length handling around it.
//! 2. The input is `kind (1) || raw_len u32 LE || encoded payload`: the
//!    payload is sealed as a blob with the fixed key, packed with the real
//!    `PackWriter` and read back through the same path, so `blob::open`'s
//!    decompression, length and id checks run on fuzzed data. The result is
//!    checked against `compress::decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_engine::blob::{self, BlobKind};
use vault_engine::compress;
use vault_engine::id::BlobId;
use vault_engine::pack::{read_header, tail_len, PackWriter, PackedBlob};
use vault_engine::tree::Tree;
use vault_fuzz::{blob_aad, key, seal};

/// Reads every blob of `pack`; returns the outcome of each.
fn read_pack(pack: &[u8]) -> Option<Vec<(PackedBlob, Result<Vec<u8>, blob::BlobError>)>> {
    let key = key();
    let size = pack.len() as u64;
    let tail = pack.get(pack.len() - tail_len(size) as usize..)?;
    let blobs = read_header(key, size, tail).ok()?;
    let mut out = Vec::with_capacity(blobs.len());
    for b in blobs {
        let start = b.offset as usize;
        let end = start.checked_add(b.length as usize);
        let stored = end
            .and_then(|end| pack.get(start..end))
            .expect("read_header only returns blobs inside the pack");
        let res = blob::open(key, b.kind, &b.id, b.raw_len, stored);
        if let Ok(plain) = &res {
            assert_eq!(plain.len(), b.raw_len as usize);
            assert_eq!(key.blob_id(plain), b.id);
            if b.kind == BlobKind::Tree {
                let _ = Tree::decode(plain);
            }
        }
        out.push((b, res));
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    // 1. Input as a stored pack.
    let _ = read_pack(data);

    // 2. Input as one blob, sealed and packed by the harness.
    let Some((&kind, rest)) = data.split_first() else { return };
    let Some((raw_len, encoded)) = rest.split_first_chunk::<4>() else { return };
    let kind = if kind & 1 == 0 { BlobKind::Data } else { BlobKind::Tree };
    let raw_len = u32::from_le_bytes(*raw_len) % (1 << 20);
    let decoded = compress::decode(encoded, raw_len as usize).ok();
    let id = decoded.as_ref().map_or(BlobId([0; 32]), |p| key().blob_id(p));
    let mut writer = PackWriter::new();
    writer.add(kind, id, raw_len, seal(&blob_aad(kind, &id), encoded));
    let pack = writer.finish(key());
    let read = read_pack(&pack.bytes).expect("a pack from PackWriter reads");
    assert_eq!(read.len(), 1);
    let (b, res) = &read[0];
    assert_eq!((b.kind, b.id, b.raw_len), (kind, id, raw_len));
    let expect_ok = decoded.as_ref().is_some_and(|p| p.len() == raw_len as usize);
    match res {
        Ok(plain) => {
            assert!(expect_ok, "blob::open accepted what compress::decode did not");
            assert_eq!(Some(plain), decoded.as_ref());
        }
        Err(e) => assert!(!expect_ok, "blob::open refused a valid blob: {e}"),
    }
});
