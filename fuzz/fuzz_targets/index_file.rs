//! Index file plaintext decoding (repo-format.md §8). The binary format is
//! canonical, so whatever decodes must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_engine::index::{Index, IndexFile};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = IndexFile::decode(data) {
        assert_eq!(file.encode(), data, "decode/encode round trip");
        for p in &file.packs {
            for b in &p.blobs {
                assert!(u64::from(b.offset) + u64::from(b.length) <= p.size);
            }
        }
        // What load_index does with a decoded file.
        let mut index = Index::new();
        index.add_file(&file);
        for (id, _) in index.blobs() {
            assert!(index.get(&id).is_some());
        }
    }
});
