//! End-to-end tests: they run the built `vault` binary as a user or cron
//! would, against real repositories in temporary directories and in an
//! S3-compatible store (Garage), and check exit codes, output and restored
//! bytes. See `support` for how the backends are chosen.

#[macro_use]
mod support;

mod backup_restore;
mod check;
mod cli;
mod directory_symlinks;
mod failures;
mod find;
mod hostile;
mod hostile_storage;
mod hostile_target;
mod inode_flags;
mod interrupt;
mod mount;
mod object_lock;
mod pitr;
mod repo_ops;
mod restic_cli;
mod restore_in_place;
mod retention;
mod s3;
mod sources;
