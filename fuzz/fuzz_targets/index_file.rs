//! Index file plaintext decoding (repo-format.md §8). Version 2 (written
//! now) is canonical: whatever decodes must encode back to the same bytes.
//! Version 1 (no `marked` section, still read) encodes as version 2, which
//! must decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_engine::index::{Index, IndexBuilder, IndexFile};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = IndexFile::decode(data) {
        let encoded = file.encode();
        if data.get(4) == Some(&2) {
            assert_eq!(encoded, data, "v2 decode/encode round trip");
        } else {
            let again = IndexFile::decode(&encoded).expect("an encoded index decodes");
            assert_eq!(again, file, "v1 decode, v2 encode/decode round trip");
        }
        for p in &file.packs {
            for b in &p.blobs {
                assert!(u64::from(b.offset) + u64::from(b.length) <= p.size);
            }
        }
        // What load_index does with decoded files.
        let index = Index::from_files([&file]);
        for (id, loc) in index.blobs() {
            assert_eq!(index.get(&id), Some(loc));
        }
        let mut builder = IndexBuilder::new();
        builder.add_file(&file);
        builder.add_file(&file);
        let twice = builder.finish();
        assert_eq!(twice.len(), index.len());
        let _ = twice.marks().count();
    }
});
