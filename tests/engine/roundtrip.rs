//! Round trips and deduplication: guards that `backup::backup` followed by
//! `restore::restore` gives back exactly the bytes that were backed up, and
//! that data already in the repository is not stored again.
//!
//! Fixtures: source trees are generated in temporary directories from
//! proptest-chosen specs (pseudo-random files up to 300 KB, zero-filled
//! files, copies of other files, files of one block repeated) or from fixed
//! seeds; repositories live in memory (`ObjectBackend::memory()`) or in a
//! temporary directory, with a cheap KDF and small chunks so a few hundred
//! KB produce many blobs and packs.

use crate::support::{
    MEDIUM_CHUNKER, backup_paths, backup_stream, chunk_ids, init_local, init_memory, options,
    password, random_bytes, read_files, restore_tree, restored_path, text_bytes, write_file,
};
use proptest::prelude::*;
use std::collections::HashSet;
use std::path::Path;
use vault_engine::Repository;
use vault_engine::blob::BlobKind;
use vault_engine::id::PackId;

/// How one generated file is filled.
#[derive(Debug, Clone)]
enum Content {
    Random {
        len: usize,
        seed: u64,
    },
    Zeros {
        len: usize,
    },
    /// Same bytes as an earlier file (or empty for the first).
    CopyOf(prop::sample::Index),
    /// One random block repeated.
    Repeated {
        block: usize,
        times: usize,
        seed: u64,
    },
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        3 => (0usize..300_000, any::<u64>()).prop_map(|(len, seed)| Content::Random { len, seed }),
        1 => (0usize..300_000).prop_map(|len| Content::Zeros { len }),
        1 => any::<prop::sample::Index>().prop_map(Content::CopyOf),
        1 => (1usize..5000, 1usize..60, any::<u64>())
            .prop_map(|(block, times, seed)| Content::Repeated { block, times, seed }),
    ]
}

fn materialise(specs: &[Content]) -> Vec<Vec<u8>> {
    let mut files: Vec<Vec<u8>> = Vec::new();
    for spec in specs {
        let data = match spec {
            Content::Random { len, seed } => random_bytes(*seed, *len),
            Content::Zeros { len } => vec![0; *len],
            Content::CopyOf(_) if files.is_empty() => Vec::new(),
            Content::CopyOf(i) => files[i.index(files.len())].clone(),
            Content::Repeated { block, times, seed } => random_bytes(*seed, *block).repeat(*times),
        };
        files.push(data);
    }
    files
}

/// Packs currently stored.
fn pack_ids(repo: &Repository) -> HashSet<PackId> {
    repo.backend()
        .list("data/")
        .expect("list packs")
        .iter()
        .map(|o| {
            o.path
                .rsplit('/')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("pack key ends in a pack id")
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip_restores_identical_bytes(specs in prop::collection::vec(content(), 1..6)) {
        let files = materialise(&specs);
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir(&src).expect("mkdir src");
        for (i, data) in files.iter().enumerate() {
            // Odd files go one level down, to cover subtrees.
            let name = if i % 2 == 1 { format!("sub/file-{i}") } else { format!("file-{i}") };
            write_file(&src.join(name), data);
        }
        let repo = init_memory(MEDIUM_CHUNKER, 256 * 1024);
        let report = backup_paths(&repo, &[&src], &options()).expect("backup");
        prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
        let total: usize = files.iter().map(Vec::len).sum();
        prop_assert_eq!(report.snapshot.summary.total_bytes_processed, total as u64);

        // Restore through a freshly opened handle: only what reached the
        // store counts.
        let reopened = Repository::open(repo.backend().clone(), &password()).expect("reopen");
        let target = tempfile::tempdir().expect("tempdir");
        restore_tree(&reopened, &report.snapshot.tree, target.path()).expect("restore");
        let restored = read_files(&restored_path(target.path(), &report.snapshot.paths[0]));
        let original = read_files(&src);
        prop_assert_eq!(restored.len(), original.len());
        for (path, data) in &original {
            let got = restored.get(path);
            prop_assert!(got.is_some(), "{} not restored", path.display());
            prop_assert!(got == Some(data), "{} differs after restore", path.display());
        }
    }
}

fn make_tree(root: &Path) {
    write_file(&root.join("random.bin"), &random_bytes(11, 150_000));
    write_file(&root.join("text.txt"), &text_bytes(80_000));
    write_file(&root.join("sub/zeros.bin"), &vec![0; 50_000]);
    write_file(&root.join("sub/copy.bin"), &random_bytes(11, 150_000));
}

#[test]
fn backup_of_same_data_twice_adds_no_data_blob_or_data_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    make_tree(&src);
    let repo = init_local(&dir.path().join("repo"), MEDIUM_CHUNKER, 64 * 1024);

    let first = backup_paths(&repo, &[&src], &options()).expect("first backup");
    assert!(first.snapshot.summary.data_blobs > 0);
    let packs_before = pack_ids(&repo);

    // Unchanged files are taken from the parent; a forced backup re-reads
    // and re-chunks everything. Neither may store a data blob again.
    let second = backup_paths(&repo, &[&src], &options()).expect("second backup");
    assert_eq!(
        second.snapshot.summary.data_blobs, 0,
        "{:?}",
        second.snapshot.summary
    );
    assert_eq!(second.snapshot.summary.files_unmodified, 4);
    let forced_options = vault_engine::backup::BackupOptions {
        force: true,
        ..options()
    };
    let forced = backup_paths(&repo, &[&src], &forced_options).expect("forced backup");
    assert_eq!(
        forced.snapshot.summary.data_blobs, 0,
        "{:?}",
        forced.snapshot.summary
    );

    // New packs, if any, hold tree blobs only: directory listings change
    // with atimes and with the metadata of the temporary parent directories
    // (see backup_of_unchanged_tree_reuses_its_tree_blobs).
    let index = repo.load_index().expect("index");
    let new_packs: HashSet<PackId> = pack_ids(&repo).difference(&packs_before).copied().collect();
    for (id, loc) in index.blobs() {
        if new_packs.contains(&loc.pack) {
            assert_eq!(loc.kind, BlobKind::Tree, "data blob {id} stored again");
        }
    }
    assert!(index.duplicates().is_empty(), "a blob is stored twice");

    // The same bytes as a stream: nothing new either.
    let data = random_bytes(11, 150_000);
    let reader = Box::new(std::io::Cursor::new(data));
    let streamed = backup_stream(&repo, "again.bin", reader, &options()).expect("stream backup");
    assert_eq!(streamed.snapshot.summary.data_blobs, 0);
}

#[test]
fn backup_of_unchanged_tree_reuses_its_tree_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    make_tree(&src);
    let repo = init_local(&dir.path().join("repo"), MEDIUM_CHUNKER, 64 * 1024);
    let first = backup_paths(&repo, &[&src], &options()).expect("first backup");
    let second = backup_paths(&repo, &[&src], &options()).expect("second backup");

    // The directory and everything in it is untouched between the two
    // backups, so its listing must encode to the same tree blob (tree.rs:
    // "an unchanged directory encodes to the same bytes and dedups").
    let index = repo.load_index().expect("index");
    let path = first.snapshot.paths[0].clone();
    let find = |tree| {
        vault_engine::restore::find_node(&repo, &index, tree, &path)
            .expect("source dir in snapshot")
            .subtree
    };
    assert_eq!(
        find(&first.snapshot.tree),
        find(&second.snapshot.tree),
        "unchanged directory got a new tree blob"
    );
    // Only the listings above the source (root, /tmp, the tempdir), whose
    // metadata other processes may change, may be new.
    let ancestors = Path::new(&path).components().count() as u64 - 1;
    assert!(
        second.snapshot.summary.tree_blobs <= ancestors,
        "{:?}",
        second.snapshot.summary
    );
}

#[test]
fn backup_of_large_file_with_small_edit_adds_few_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let file = src.join("large.bin");
    let mut data = random_bytes(21, 2 * 1024 * 1024);
    write_file(&file, &data);
    let repo = init_memory(MEDIUM_CHUNKER, 256 * 1024);
    let first = backup_paths(&repo, &[&src], &options()).expect("first backup");
    let chunks = chunk_ids(&repo, &data).len() as u64;
    assert_eq!(first.snapshot.summary.data_blobs, chunks);
    assert!(chunks > 100, "the file must span many chunks, got {chunks}");

    // Overwrite 8 bytes in the middle, keep the size, move the mtime on so
    // change detection cannot miss it.
    let middle = data.len() / 2;
    data[middle..middle + 8].copy_from_slice(b"CHANGED!");
    std::fs::write(&file, &data).expect("rewrite");
    let later = filetime::FileTime::from_unix_time(2_000_000_000, 0);
    filetime::set_file_mtime(&file, later).expect("set mtime");

    let second = backup_paths(&repo, &[&src], &options()).expect("second backup");
    let summary = &second.snapshot.summary;
    assert_eq!(summary.files_changed, 1, "{summary:?}");
    // The edited chunk, plus at most a neighbour or two if a cut point moved.
    assert!(
        (1..=3).contains(&summary.data_blobs),
        "a small edit added {} of {chunks} blobs",
        summary.data_blobs
    );

    let target = tempfile::tempdir().expect("tempdir");
    restore_tree(&repo, &second.snapshot.tree, target.path()).expect("restore");
    let restored =
        std::fs::read(restored_path(target.path(), &second.snapshot.paths[0]).join("large.bin"))
            .expect("read restored");
    assert!(
        restored == data,
        "restored content differs from the edited file"
    );
}

/// Restoring over an earlier restore: `always` replaces a symlink planted
/// where a file belongs instead of writing through it, and `never` accepts
/// a non-empty target as long as nothing restored is already there.
#[test]
fn overwrite_replaces_a_planted_symlink_and_never_checks_only_restored_paths() {
    use vault_engine::restore::{self, Overwrite, RestoreOptions, RestoreProgress};
    let src = tempfile::tempdir().expect("tempdir");
    write_file(&src.path().join("dir/a.txt"), b"the real contents\n");
    let repo = init_memory(MEDIUM_CHUNKER, 64 * 1024);
    let report = backup_paths(&repo, &[src.path()], &options()).expect("backup");
    let index = repo.load_index().expect("index");
    let restore_with = |target: &Path, overwrite| {
        let opts = RestoreOptions {
            target: target.to_path_buf(),
            overwrite,
            concurrency: 2,
            ..RestoreOptions::default()
        };
        restore::restore(
            &repo,
            &index,
            &report.snapshot.tree,
            &opts,
            &RestoreProgress::default(),
        )
    };

    // A target holding only unrelated files is fine with `never`.
    let target = tempfile::tempdir().expect("tempdir");
    write_file(&target.path().join("unrelated.txt"), b"keep me");
    restore_with(target.path(), Overwrite::Never).expect("restore beside other files");
    let restored = restored_path(target.path(), src.path().to_str().expect("utf-8"));
    let file = restored.join("dir/a.txt");
    assert_eq!(std::fs::read(&file).expect("read"), b"the real contents\n");
    assert_eq!(
        std::fs::read(target.path().join("unrelated.txt")).expect("read"),
        b"keep me"
    );
    // Now the restored file exists: `never` refuses.
    let err = restore_with(target.path(), Overwrite::Never).expect_err("refused");
    assert!(err.to_string().contains("already exists"), "{err}");

    // A symlink where the file belongs is replaced, not followed.
    let victim = target.path().join("victim.txt");
    write_file(&victim, b"must not change");
    std::fs::remove_file(&file).expect("remove");
    std::os::unix::fs::symlink(&victim, &file).expect("symlink");
    restore_with(target.path(), Overwrite::Always).expect("restore over it");
    let meta = std::fs::symlink_metadata(&file).expect("stat");
    assert!(meta.is_file(), "the symlink was followed or kept");
    assert_eq!(std::fs::read(&file).expect("read"), b"the real contents\n");
    assert_eq!(std::fs::read(&victim).expect("read"), b"must not change");
}

#[test]
fn restore_applies_metadata_to_files_in_one_pack_and_across_packs() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // With 64 KiB packs, 300 KB files span several packs (created up front,
    // metadata by path after all content) while small files lie in one
    // pack (created, written and finished by that pack's worker).
    let src = tempfile::tempdir().expect("tempdir");
    let root = src.path();
    let files: [(&str, Vec<u8>, u32); 6] = [
        ("small.txt", b"one pack\n".to_vec(), 0o640),
        ("readonly.txt", b"written before chmod\n".to_vec(), 0o444),
        ("zeros-small", vec![0; 3000], 0o600),
        ("big.bin", random_bytes(7, 300_000), 0o751),
        ("big-readonly.bin", random_bytes(8, 300_000), 0o400),
        (
            "big-zero-tail.bin",
            [random_bytes(9, 100_000), vec![0; 200_000]].concat(),
            0o644,
        ),
    ];
    for (name, data, _) in &files {
        write_file(&root.join(name), data);
    }
    // Hard links whose first name lies in one pack, and across packs.
    std::fs::hard_link(root.join("small.txt"), root.join("z-small-link")).expect("link");
    std::fs::hard_link(root.join("big.bin"), root.join("z-big-link")).expect("link");
    let when = filetime::FileTime::from_unix_time(1_500_000_000, 987_654_321);
    for (name, _, mode) in &files {
        let p = root.join(name);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        filetime::set_file_mtime(&p, when).expect("mtime");
    }
    let repo_dir = tempfile::tempdir().expect("tempdir");
    let repo = init_local(repo_dir.path(), MEDIUM_CHUNKER, 64 * 1024);
    let report = backup_paths(&repo, &[root], &options()).expect("backup");
    let target = tempfile::tempdir().expect("tempdir");
    restore_tree(&repo, &report.snapshot.tree, target.path()).expect("restore");
    let restored = restored_path(target.path(), root.to_str().expect("utf-8"));
    for (name, data, mode) in &files {
        let p = restored.join(name);
        let meta = std::fs::metadata(&p).expect("stat");
        assert_eq!(&std::fs::read(&p).expect("read"), data, "{name}");
        assert_eq!(meta.mode() & 0o7777, *mode, "{name} mode");
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1_500_000_000, 987_654_321),
            "{name} mtime"
        );
    }
    for (first, second) in [("small.txt", "z-small-link"), ("big.bin", "z-big-link")] {
        let a = std::fs::metadata(restored.join(first)).expect("stat");
        let b = std::fs::metadata(restored.join(second)).expect("stat");
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "{first} and {second}");
    }
}

/// Snapshots taken at the same instant list in id order, so `latest`
/// never depends on the order storage lists objects in.
#[test]
fn snapshots_at_the_same_instant_list_in_id_order() {
    // On local disk: a directory lists in no particular order.
    let dir = tempfile::tempdir().unwrap();
    let repo = init_local(dir.path(), MEDIUM_CHUNKER, 64 * 1024);
    let mut opts = options();
    opts.time = Some("2026-01-10T03:00:00+01:00[+01:00]".parse().unwrap());
    for host in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        opts.hostname = host.into();
        backup_stream(&repo, "x", Box::new(&b"same"[..]), &opts).unwrap();
    }
    let ids: Vec<_> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 8);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}
