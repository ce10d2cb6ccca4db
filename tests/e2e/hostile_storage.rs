//! Storage that someone else can write (a share from untrusted storage:
//! the provider of the threat model, repo-format.md §12): symlinks inside
//! the repository, names that are not the repository's, objects far larger
//! than their kind may be. vault, run as root, must not follow the
//! symlinks (deleting or writing where they point), must not delete what
//! is not its own, and must not read an oversized object whole. And a
//! repository URL whose query would have become part of the prefix.

use crate::support::{Env, assert_code, stderr};

/// A query or fragment in an S3 URL became part of the prefix (a
/// directory `p?token=X` in the bucket), and was echoed in messages.
#[test]
fn s3_urls_with_a_query_or_fragment_are_refused_without_echoing_it() {
    let env = Env::uninitialised();
    for url in [
        "s3:http://127.0.0.1:9/bucket/p?token=SeCrEt",
        "s3:http://127.0.0.1:9/bucket/p#SeCrEt",
        "s3://bucket/p?X-Amz-Security-Token=SeCrEt",
    ] {
        let out = env
            .command(&["snapshots"])
            .env("VAULT_REPOSITORY", url)
            .output()
            .unwrap();
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("invalid S3 URL"), "{url}: {err}");
        assert!(
            err.contains("query") || err.contains("fragment"),
            "{url}: {err}"
        );
        assert!(!err.contains("SeCrEt"), "{url}: {err}");
    }
}
