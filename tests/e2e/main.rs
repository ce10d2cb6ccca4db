//! End-to-end tests: they run the built `vault` binary as a user or cron
//! would, against real repositories in temporary directories, and check
//! exit codes, output and restored bytes.

mod support;

mod backup_restore;
mod check;
mod failures;
mod interrupt;
mod pitr;
mod repo_ops;
mod retention;
