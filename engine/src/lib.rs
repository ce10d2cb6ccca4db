//! vault's engine: an encrypted, deduplicated backup repository.
//!
//! Data flow of a backup: a [`backup::Source`] is read and cut into chunks
//! by the [`chunker`] (FastCDC); each chunk is named by a keyed BLAKE3 hash
//! ([`id::BlobId`]), looked up in the [`index::Index`], and if new,
//! compressed ([`compress`]), sealed with XChaCha20-Poly1305 ([`crypto`]) and
//! collected into a [`pack`]. Packs go to a [`backend::Backend`] (local disk
//! or S3); index files record where each blob landed; directory listings are
//! [`tree`] blobs; a [`snapshot`] names the root tree. Restore walks the same
//! structures back.
//!
//! Glossary: *blob* a chunk of content or a tree; *pack* a stored object of
//! many blobs; *index* the blob → pack map; *snapshot* one backup.
//! The on-storage format is specified in `repo-format.md`.

pub mod archive;
pub mod backend;
pub mod backup;
pub mod blob;
pub mod buffer;
pub mod cache;
mod cancel;
pub mod check;
pub mod chunker;
pub mod compress;
pub mod copy;
pub mod crypto;
pub mod diff;
pub mod error;
pub mod find;
pub mod id;
pub mod index;
pub mod key;
pub mod lock;
pub mod mount;
pub mod object_lock;
pub mod pack;
mod pattern;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod rewrite;
pub mod snapshot;
pub mod stats;
#[cfg(test)]
mod test_support;
pub mod tree;
mod tree_reader;
pub mod wal;
mod zeros;

pub use error::{Error, ErrorKind, Result};
pub use repository::Repository;
