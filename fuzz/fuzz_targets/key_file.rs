//! Key file decoding (repo-format.md §5). `open` runs argon2id with the
//! file's own parameters, so it is only called when they are tiny.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_engine::crypto::{KeyFile, Password};
use vault_fuzz::GOLDEN_PASSWORD;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = KeyFile::decode(data) {
        let p = file.kdf_params();
        if p.memory_kib <= 64 && p.iterations <= 1 {
            // The golden vector key file opens with this password; mutants
            // must fail cleanly.
            let _ = file.open(&Password::new(GOLDEN_PASSWORD));
        }
        KeyFile::decode(&file.encode()).expect("an encoded key file decodes");
    }
});
