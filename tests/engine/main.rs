//! Engine integration tests: one binary exercising `vault_engine` through its
//! public API only, against real repositories in temporary directories (local
//! backend) or in memory. Each module opens with what it guards and how its
//! fixtures are made:
//!
//! - `vectors`: a checked-in golden repository must stay readable;
//! - `vectors_name_raw`: so must one whose names are not UTF-8 (a file's,
//!   extended attributes');
//! - `vectors_inode_flags`: and one whose nodes carry inode flags;
//! - `roundtrip`: backup then restore gives back the same bytes, and
//!   deduplication stores repeated data once;
//! - `tamper`: a flipped byte in any stored object is detected, never
//!   silently turned into different data;
//! - `interrupt`: failing storage and cancellation leave no snapshot and a
//!   readable repository that the next backup can build on;
//! - `check`: trees shared by snapshots are read once;
//! - `concurrent`: check and prune beside a backup finishing under them;
//! - `wal`: a WAL push costs the same however much was archived before;
//! - `s3_lengths`: an S3 server whose body disagrees with its
//!   `Content-Length` gets nothing read past the announced length or the
//!   cap (a test server on loopback);
//! - `tree_reads`: re-backups and restores from an object store read trees
//!   a tree pack at a time;
//! - `hostile`: sealed objects no backup writes (zstd windows above the
//!   limit, NUL in names, over-deep or endlessly shared trees, legacy
//!   symlinks with children) are damage to every reader and to `check`.
//!
//! Run with `cargo test -p vault-engine --test engine -j2`.

mod support;

mod append_only;
mod check;
mod concurrent;
mod hostile;
mod interrupt;
mod object_lock;
mod roundtrip;
mod s3_lengths;
mod tamper;
mod tree_reads;
mod vectors;
mod vectors_inode_flags;
mod vectors_name_raw;
mod wal;
