//! Snapshot document decoding (repo-format.md §10).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_engine::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(snap) = Snapshot::decode(data) {
        let _ = snap.size();
        let again = Snapshot::decode(&snap.encode()).expect("an encoded snapshot decodes");
        assert_eq!(again, snap, "encode/decode round trip");
        assert_eq!(again.time.offset(), snap.time.offset(), "UTC offset survives");
    }
});
