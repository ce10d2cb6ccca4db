//! Shared helpers for vault's fuzz targets and the corpus generator.
//!
//! Every target that needs a key uses the same fixed master key, so the seed
//! corpus (made by `examples/make_corpus.rs` with that key) authenticates.
//!
//! Random bytes almost never pass XChaCha20-Poly1305 authentication, so a
//! target fed only raw stored objects would fuzz little more than the length
//! checks in front of the AEAD. Where the code behind authentication matters
//! (pack header, config, blob), targets additionally *seal* the fuzz input
//! themselves with [`seal`], reproducing the envelope of repo-format.md §4
//! (`nonce (24) || ciphertext || tag (16)`, AAD per object kind) with the
//! same crate the engine uses, and feed the result to the real decoder.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::sync::OnceLock;
use vault_engine::blob::BlobKind;
use vault_engine::crypto::MasterKey;
use vault_engine::id::BlobId;

/// The fixed master key of every target and of the seed corpus:
/// encryption key `07 × 32`, blob-id key `07 × 32`.
pub const KEY_BYTES: [u8; 64] = [7u8; 64];

/// AAD of the config object (repo-format.md §4; `Domain::Config`).
pub const AAD_CONFIG: &[u8] = b"vault/v1/config";
/// AAD of a pack header (`Domain::PackHeader`).
pub const AAD_PACK_HEADER: &[u8] = b"vault/v1/pack-header";
/// AAD of an index file (`Domain::Index`).
pub const AAD_INDEX: &[u8] = b"vault/v1/index";
/// AAD of a snapshot (`Domain::Snapshot`).
pub const AAD_SNAPSHOT: &[u8] = b"vault/v1/snapshot";

/// Password the golden vector key file (tests/vectors/v1) opens with.
pub const GOLDEN_PASSWORD: &str = "vault-golden-vector";

/// The fixed master key (built once per process).
pub fn key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::from_bytes(&KEY_BYTES))
}

fn cipher() -> &'static XChaCha20Poly1305 {
    static CIPHER: OnceLock<XChaCha20Poly1305> = OnceLock::new();
    CIPHER.get_or_init(|| {
        let mut k = [0u8; 32];
        k.copy_from_slice(&KEY_BYTES[..32]);
        XChaCha20Poly1305::new(&k.into())
    })
}

/// Seals `plaintext` under the fixed key exactly as the engine does, with an
/// all-zero nonce so a fuzz input always maps to the same bytes.
pub fn seal(aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = [0u8; 24];
    let mut buf = plaintext.to_vec();
    let tag = cipher()
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut buf)
        .expect("XChaCha20-Poly1305 seals any fuzz input");
    let mut out = Vec::with_capacity(24 + buf.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

/// Opens an envelope sealed under the fixed key (the corpus generator uses
/// it to take real stored objects back to their plaintext).
pub fn open(aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 24 + 16 {
        return None;
    }
    let (nonce, rest) = sealed.split_at(24);
    let (ciphertext, tag) = rest.split_at(rest.len() - 16);
    let mut buf = ciphertext.to_vec();
    cipher()
        .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut buf, chacha20poly1305::Tag::from_slice(tag))
        .ok()?;
    Some(buf)
}

/// AAD of a blob in a pack: `kind || id` (repo-format.md §7).
pub fn blob_aad(kind: BlobKind, id: &BlobId) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = kind.to_byte();
    aad[1..].copy_from_slice(&id.0);
    aad
}
