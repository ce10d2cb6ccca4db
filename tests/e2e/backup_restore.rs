//! Backup and restore round trips through the binary: every file type,
//! metadata, dedup, stdin streams, `--at`, `--include` and overwrite rules;
//! each on local disk and on S3.

use crate::support::{
    Backend, Env, TmpfsMount, as_unprivileged, assert_code, assert_success, is_root, nest_dirs,
    pseudo_random, stderr, with_open_file_limit,
};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A tree with every kind of entry vault records.
fn make_tree(root: &Path) {
    use std::fs;
    fs::create_dir_all(root.join("docs/deep/er")).unwrap();
    fs::write(root.join("docs/readme.txt"), b"hello vault\n").unwrap();
    fs::write(
        root.join("docs/deep/er/random.bin"),
        pseudo_random(3_000_000, 1),
    )
    .unwrap();
    fs::write(root.join("zeros.img"), vec![0u8; 2_500_000]).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    let text: String = (0..50_000).map(|i| format!("row {i}\n")).collect();
    fs::write(root.join("docs/text.csv"), text).unwrap();
    std::os::unix::fs::symlink("docs/readme.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::hard_link(root.join("docs/readme.txt"), root.join("hardlink")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 name");
    fs::write(root.join(odd), b"latin-1 name").unwrap();
    fs::set_permissions(
        root.join("docs/readme.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::set_permissions(root.join("docs/deep"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(root.join("setgid-file"), b"x").unwrap();
    fs::set_permissions(root.join("setgid-file"), fs::Permissions::from_mode(0o2755)).unwrap();
    xattr::set(root.join("docs/text.csv"), "user.origin", b"e2e").unwrap();
    if is_root() {
        // A symlink's own attributes (SELinux labels live there); only
        // trusted.* and security.* are allowed on one, and only for root.
        xattr::set(root.join("link"), "trusted.label", b"on the link").unwrap();
        std::os::unix::fs::chown(root.join("docs/text.csv"), Some(1234), Some(5678)).unwrap();
        nix::sys::stat::mknod(
            &root.join("null-dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
    let when = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    for p in [
        "docs/readme.txt",
        "docs/text.csv",
        "zeros.img",
        "docs/deep/er",
        "docs",
    ] {
        filetime::set_file_mtime(root.join(p), when).unwrap();
    }
    filetime::set_symlink_file_times(root.join("link"), when, when).unwrap();
    // Before 1970, with a fraction: the seconds are negative, the
    // nanoseconds are not.
    filetime::set_file_mtime(
        root.join("empty"),
        filetime::FileTime::from_unix_time(-302_443_200, 123_456_789),
    )
    .unwrap();
}

#[derive(Debug, PartialEq)]
struct Entry {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
    xattrs: Vec<(String, Vec<u8>)>,
    rdev: u64,
}

/// Every entry below `root` with its metadata, plus hardlink groups.
fn scan(root: &Path) -> (HashMap<PathBuf, Entry>, Vec<Vec<PathBuf>>) {
    let mut out = HashMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                inodes.entry(meta.ino()).or_default().push(rel.clone());
                "file"
            } else {
                "special"
            };
            // The entry's own attributes, a symlink's too (not its target's).
            let mut xattrs: Vec<(String, Vec<u8>)> = xattr::list(&path)
                .unwrap()
                .map(|n| {
                    let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                    (n.to_string_lossy().into_owned(), v)
                })
                .collect();
            xattrs.sort();
            out.insert(
                rel,
                Entry {
                    kind: kind.into(),
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        meta.mode() & 0o7777
                    },
                    uid: meta.uid(),
                    gid: meta.gid(),
                    // Directory mtimes are restored last; symlink mtimes too.
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    size: if ft.is_file() { meta.len() } else { 0 },
                    content: ft.is_file().then(|| std::fs::read(&path).unwrap()),
                    link: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                    xattrs,
                    rdev: meta.rdev(),
                },
            );
        }
    }
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (out, groups)
}

fn restored_root(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

backend_test!(round_trip_preserves_content_and_metadata);
fn round_trip_preserves_content_and_metadata(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    make_tree(&src);
    let out = env.vault(&["backup", src.to_str().unwrap(), "--tag", "nightly"]);
    assert_success(&out);
    let target = env.path("restore");
    // --verify reads every file back (as in `restic restore --verify`), and
    // leaves the metadata compared below as the snapshot has it.
    let report = env.json(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--verify",
    ]);
    let verified = report["verified_files"].as_u64().unwrap();
    assert!(
        verified > 0 && verified <= report["files"].as_u64().unwrap(),
        "{report}"
    );
    let (want, want_links) = scan(&src);
    let (got, got_links) = scan(&restored_root(&target, &src));
    assert_eq!(want.len(), got.len(), "entry count");
    for (path, entry) in &want {
        assert_eq!(Some(entry), got.get(path), "{}", path.display());
    }
    assert_eq!(want_links, got_links, "hardlink groups");
    // All-zero chunks are restored as holes.
    let zeros = restored_root(&target, &src).join("zeros.img");
    assert!(std::fs::metadata(zeros).unwrap().blocks() * 512 < 2_500_000);
}

/// A sparse file (a VM image, a preallocated database file) stays sparse
/// where a chunk holds both data and zeros: only all-zero chunks used to be
/// left as holes, so a 512 MiB image with 128 KiB of data came back as 256
/// MiB on disk. Also when the restore finishes an interrupted one.
#[test]
fn sparse_files_stay_sparse_where_chunks_mix_data_and_zeros() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let image = src.join("image.img");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(32 << 20).unwrap();
    for i in 0..16u64 {
        std::os::unix::fs::FileExt::write_all_at(&file, b"DATA", i * (2 << 20) + 12_345).unwrap();
    }
    drop(file);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    for overwrite in ["never", "always"] {
        let target = env.path("restore");
        assert_success(&env.vault(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
            overwrite,
        ]));
        let restored = restored_root(&target, &src).join("image.img");
        assert_eq!(
            std::fs::read(&restored).unwrap(),
            std::fs::read(&image).unwrap()
        );
        // 16 blocks of 4 KiB hold the data; allow the file system some.
        assert!(
            allocated(&restored) <= 1 << 20,
            "{} bytes",
            allocated(&restored)
        );
        if overwrite == "never" {
            // Made whole again over a copy whose blocks are all allocated:
            // a file restored over is written as it is, holes and all.
            std::fs::write(&restored, vec![1u8; 32 << 20]).unwrap();
        }
    }
}

/// A socket is recorded but not recreated (its program makes it anew), and
/// restore must not then warn that it cannot chown, chmod or time a path it
/// never created.
#[test]
fn sockets_are_recorded_and_skipped_on_restore_without_warnings() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("kept"), b"kept").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(src.join("app.sock")).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let listing = env.vault(&["ls", "latest", src.to_str().unwrap()]);
    assert_success(&listing);
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("app.sock"),
        "the socket is in the snapshot"
    );
    let target = env.path("restore");
    let out = env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_success(&out);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let root = restored_root(&target, &src);
    assert_eq!(std::fs::read(root.join("kept")).unwrap(), b"kept");
    assert!(std::fs::symlink_metadata(root.join("app.sock")).is_err());
}

backend_test!(a_path_through_a_symlinked_directory_is_kept_pruned_safely_and_restored_inside);
/// `backup /x/alias/docs` where `alias` is a symlink (`/var/run` -> `/run`,
/// merged /usr): the ancestor is recorded as the directory it leads to.
/// Recorded as the symlink, prune deleted the data below it, and restore
/// recreated the symlink and wrote through it, outside the target.
fn a_path_through_a_symlinked_directory_is_kept_pruned_safely_and_restored_inside(
    backend: Backend,
) {
    let env = Env::on(backend);
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("file"), b"backed up").unwrap();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("alias")).unwrap();
    let through = src.join("alias/file");
    assert_success(&env.vault(&["backup", through.to_str().unwrap()]));
    // Changed after the backup: a restore writing through a recreated
    // symlink would put the old content back here.
    std::fs::write(outside.join("file"), b"newer").unwrap();
    assert_success(&env.vault(&["prune", "--instant-delete"]));
    let check = env.vault(&["check", "--verify"]);
    assert_success(&check);
    assert!(!stderr(&check).contains("not used"), "{}", stderr(&check));
    let target = env.path("restore");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let alias = restored_root(&target, &src).join("alias");
    assert!(std::fs::symlink_metadata(&alias).unwrap().is_dir());
    assert_eq!(std::fs::read(alias.join("file")).unwrap(), b"backed up");
    assert_eq!(std::fs::read(outside.join("file")).unwrap(), b"newer");
}

backend_test!(restore_of_many_small_files_stays_within_a_low_open_file_limit);
/// Thousands of small files share a pack; restoring it must not hold them
/// all open (a 52k-file tree failed with "Too many open files").
fn restore_of_many_small_files_stays_within_a_low_open_file_limit(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    for d in 0..4 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..150 {
            std::fs::write(
                dir.join(format!("f{f}")),
                format!("file {d}/{f}\n").repeat(f + 1),
            )
            .unwrap();
        }
    }
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("restore");
    // The same command under `ulimit -n 128`.
    let vault = env.command(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_success(&with_open_file_limit(&vault, 128).output().unwrap());
    let (want, _) = scan(&src);
    let (got, _) = scan(&restored_root(&target, &src));
    assert_eq!(want.len(), got.len(), "entry count");
    for (path, entry) in &want {
        assert_eq!(Some(entry), got.get(path), "{}", path.display());
    }
}

backend_test!(backup_twice_adds_no_data_packs_and_skips_unchanged_files);
fn backup_twice_adds_no_data_packs_and_skips_unchanged_files(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    make_tree(&src);
    let first = env.json(&["backup", src.to_str().unwrap()]);
    assert!(first["files_new"].as_u64().unwrap() >= 5);
    let packs_before = env.objects_under("data");
    let second = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(second["files_new"], 0);
    assert_eq!(second["files_changed"], 0);
    assert_eq!(second["files_unmodified"], first["files_new"]);
    assert_eq!(second["data_blobs"], 0);
    // Only tree blobs may be new (the mtime of /tmp, an ancestor of the
    // source, changes while tests run), in small tree-only packs.
    let new_pack_bytes = |before: &[String]| -> u64 {
        env.sizes_under("data")
            .iter()
            .filter(|(k, _)| !before.contains(k))
            .map(|(_, size)| size)
            .sum()
    };
    assert!(new_pack_bytes(&packs_before) < 4096);
    // --force re-reads everything and still adds no data.
    let packs_before = env.objects_under("data");
    let forced = env.json(&["backup", "--force", src.to_str().unwrap()]);
    assert_eq!(forced["data_blobs"], 0);
    assert!(new_pack_bytes(&packs_before) < 4096);
    assert_eq!(env.snapshots().len(), 3);
}

backend_test!(changed_rows_in_a_dump_add_only_a_few_chunks);
fn changed_rows_in_a_dump_add_only_a_few_chunks(backend: Backend) {
    let env = Env::on(backend);
    // Rows vary like real data: a dump whose rows repeat with a short
    // period has cut points only where the period allows, and chunks near
    // the maximum size (with some chunker seeds, three changed chunks then
    // came to more than a fifth of the dump).
    let mut dump: Vec<u8> = (0..1_200_000u64)
        .flat_map(|i| {
            format!(
                "INSERT INTO calls VALUES ({i}, 'caller-{:06x}', {});\n",
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40,
                i % 97
            )
            .into_bytes()
        })
        .collect();
    let size = dump.len() as u64;
    let first = env.vault_stdin(
        &[
            "backup",
            "--stdin",
            "--stdin-filename",
            "phone.sql",
            "--json",
        ],
        &dump,
    );
    assert_success(&first);
    // Change a few rows in the middle.
    for at in [size / 3, size / 2, 2 * size / 3] {
        let at = at as usize;
        dump[at..at + 6].copy_from_slice(b"UPDATE");
    }
    let second = env.vault_stdin(
        &[
            "backup",
            "--stdin",
            "--stdin-filename",
            "phone.sql",
            "--json",
        ],
        &dump,
    );
    assert_success(&second);
    let summary: serde_json::Value =
        serde_json::from_slice(second.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    let added = summary["data_added"].as_u64().unwrap();
    assert!(
        added * 5 < size,
        "second dump added {added} of {size} bytes"
    );
    assert!(summary["data_blobs"].as_u64().unwrap() <= 6, "{summary}");
    let restored = env.vault(&["dump", "latest", "/phone.sql"]);
    assert_success(&restored);
    assert_eq!(restored.stdout, dump);
}

backend_test!(stdin_from_command_round_trips_and_is_named);
fn stdin_from_command_round_trips_and_is_named(backend: Backend) {
    let env = Env::on(backend);
    let out = env.vault(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "db.sql",
        "--",
        "sh",
        "-c",
        "seq 1 200000",
    ]);
    assert_success(&out);
    let dumped = env.vault(&["dump", "latest", "/db.sql"]);
    assert_success(&dumped);
    let want: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(dumped.stdout).unwrap(), want);
    let snaps = env.snapshots();
    assert_eq!(snaps[0]["paths"][0], "/db.sql");
    // A path the snapshot does not hold is the caller's mistake (1), not
    // data missing from the repository (4).
    let wrong = env.vault(&["dump", "latest", "/db.sq"]);
    assert_code(&wrong, 1);
    assert!(
        stderr(&wrong).contains("holds no /db.sq"),
        "{}",
        stderr(&wrong)
    );
}

backend_test!(restore_at_picks_newest_snapshot_at_or_before_time);
fn restore_at_picks_newest_snapshot_at_or_before_time(backend: Backend) {
    let env = Env::on(backend);
    for (day, content) in [
        ("2026-01-09", "nine"),
        ("2026-01-10", "ten"),
        ("2026-01-11", "eleven"),
    ] {
        let out = env.vault_stdin(
            &[
                "backup",
                "--stdin",
                "--stdin-filename",
                "f",
                "--time",
                &format!("{day} 02:30:00"),
            ],
            content.as_bytes(),
        );
        assert_success(&out);
    }
    let target = env.path("r");
    let out = env.vault(&[
        "restore",
        "--at",
        "2026-01-10 03:00",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_success(&out);
    assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "ten");
    let out = env.vault(&[
        "restore",
        "--at",
        "2025-12-31",
        "--target",
        env.path("none").to_str().unwrap(),
    ]);
    assert_code(&out, 1);
    // The instant the date was read as, and where the history starts.
    assert!(
        stderr(&out).contains("no snapshot at or before 2025-12-31 (read as 2025-12-31 00:00:00")
            && stderr(&out).contains("the oldest is from 2026-01-09 02:30:00"),
        "{}",
        stderr(&out)
    );
    // JSON carries restic's field names and the offset-qualified time.
    let snaps = env.snapshots();
    for key in [
        "id", "short_id", "time", "hostname", "username", "paths", "tags", "tree",
    ] {
        assert!(snaps[0].get(key).is_some(), "missing {key}");
    }
    let time = snaps[0]["time"].as_str().unwrap();
    assert!(time.starts_with("2026-01-09T02:30:00"), "{time}");
    assert!(
        time.len() > 19 && (time.ends_with('Z') || time[19..].contains(['+', '-'])),
        "{time}"
    );
}

backend_test!(restore_include_and_overwrite_rules);
fn restore_include_and_overwrite_rules(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    make_tree(&src);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    // Spelt as `"$SRC/docs/$SUB"` with `SRC=/x/` and `SUB=./deep/` spells it,
    // cleaned as restic cleans it.
    let include = format!("{}//docs/./deep/", src.display());
    let out = env.vault(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        &include,
    ]);
    assert_success(&out);
    let root = restored_root(&target, &src);
    assert!(root.join("docs/deep/er/random.bin").exists());
    assert!(!root.join("docs/readme.txt").exists());
    assert!(!root.join("zeros.img").exists());

    // A second restore into the same place is refused...
    let out = env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    // ...and if-changed repairs a damaged file by rewriting only what differs.
    let file = root.join("docs/deep/er/random.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let out = env.vault(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "if-changed",
        "--json",
    ]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["bytes_skipped"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(std::fs::read(&file).unwrap(), pseudo_random(3_000_000, 1));

    // A restored file that is a hard link to one outside the target is
    // replaced, never written through: the outside file keeps its bytes.
    let outside = env.path("outside");
    std::fs::write(&outside, b"precious").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::hard_link(&outside, &file).unwrap();
    let out = env.vault(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "if-changed",
    ]);
    assert_success(&out);
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    assert_eq!(
        std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(std::fs::read(&file).unwrap(), pseudo_random(3_000_000, 1));
}

backend_test!(excludes_skip_matching_entries);
fn excludes_skip_matching_entries(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("cache")).unwrap();
    std::fs::create_dir_all(src.join("tagged")).unwrap();
    std::fs::create_dir_all(src.join("keep")).unwrap();
    std::fs::write(src.join("keep/a.txt"), b"a").unwrap();
    std::fs::write(src.join("keep/b.tmp"), b"b").unwrap();
    std::fs::write(src.join("keep/wanted.tmp"), b"w").unwrap();
    std::fs::write(src.join("cache/c"), b"c").unwrap();
    std::fs::write(
        src.join("tagged/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    std::fs::write(src.join("tagged/d"), b"d").unwrap();
    let exclude_file = env.path("excludes");
    // `!` includes again what an earlier pattern left out (restic's syntax;
    // it was taken as part of a name and matched nothing).
    std::fs::write(&exclude_file, "# comment\ncache/\n!wanted.tmp\n").unwrap();
    let out = env.vault(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude-file",
        exclude_file.to_str().unwrap(),
        "--exclude-caches",
    ]);
    assert_success(&out);
    let ls = env.vault(&["ls", "latest"]);
    let listing = String::from_utf8(ls.stdout).unwrap();
    assert!(listing.contains("keep/a.txt"));
    assert!(listing.contains("keep/wanted.tmp"));
    assert!(!listing.contains("b.tmp"));
    assert!(!listing.contains("cache/c"));
    assert!(!listing.contains("tagged/d"));
}

#[test]
fn size_case_and_marker_filters_leave_out_what_they_name() {
    let env = Env::new();
    let src = env.path("src");
    for dir in ["photos", "private", "tagged", "mistagged"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    std::fs::write(src.join("big.bin"), vec![7u8; 3000]).unwrap();
    std::fs::write(src.join("small.bin"), vec![7u8; 2048]).unwrap();
    std::fs::write(src.join("photos/IMG_1.JPG"), b"jpeg").unwrap();
    std::fs::write(src.join("photos/notes.txt"), b"keep").unwrap();
    std::fs::write(src.join("photos/trace.LOG"), b"case kept for --exclude").unwrap();
    std::fs::write(src.join("private/.nobackup"), b"").unwrap();
    std::fs::write(src.join("private/secret"), b"s").unwrap();
    std::fs::write(src.join("tagged/TAG"), b"skip-me: yes").unwrap();
    std::fs::write(src.join("tagged/t"), b"t").unwrap();
    std::fs::write(src.join("mistagged/TAG"), b"something else").unwrap();
    std::fs::write(src.join("mistagged/m"), b"m").unwrap();
    let out = env.vault(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude-larger-than",
        "2k",
        "--iexclude",
        "*.jpg",
        "--exclude",
        "*.log",
        "--exclude-if-present",
        ".nobackup",
        "--exclude-if-present",
        "TAG:skip-me",
    ]);
    assert_success(&out);
    let ls = env.vault(&["ls", "latest"]);
    let listing = String::from_utf8(ls.stdout).unwrap();
    for kept in [
        "small.bin",
        "photos/notes.txt",
        "photos/trace.LOG",
        "mistagged/m",
        "mistagged/TAG",
        // A marked directory stays with its marker only, as with
        // --exclude-caches (and as restic keeps it).
        "/private",
        "private/.nobackup",
        "/tagged",
        "tagged/TAG",
    ] {
        assert!(listing.contains(kept), "{kept} missing from:\n{listing}");
    }
    for left_out in ["big.bin", "IMG_1.JPG", "private/secret", "tagged/t"] {
        assert!(!listing.contains(left_out), "{left_out} in:\n{listing}");
    }
    // A bad size is refused before anything is read.
    let bad = env.vault(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude-larger-than",
        "2q",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid size"));
}

/// Backs up `src` with `args` and lists what the snapshot holds below
/// `src`, relative to it.
fn kept_below(env: &Env, src: &Path, args: &[&str]) -> Vec<String> {
    kept_below_with(env, src, args, &[])
}

fn kept_below_with(env: &Env, src: &Path, args: &[&str], vars: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = env.command(&["backup", src.to_str().unwrap()]);
    cmd.args(args).envs(vars.iter().copied());
    let out = cmd.output().unwrap();
    assert_success(&out);
    let ls = env.vault(&["ls", "latest"]);
    assert_success(&ls);
    let prefix = format!("{}/", src.display());
    String::from_utf8(ls.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

/// restic cleans patterns (Go's `filepath.Clean`) before matching; these
/// forms excluded nothing, silently.
#[test]
fn exclude_patterns_are_cleaned_as_restic_cleans_them() {
    let env = Env::new();
    let src = env.path("src");
    for dir in ["d1", "x", "y/z"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    for file in ["a", "b", "x/c", "e", "kept", "y/z/f"] {
        std::fs::write(src.join(file), b"-").unwrap();
    }
    let root = src.to_str().unwrap();
    let doubled = root.replacen('/', "//", 2);
    let line_args = [
        format!("{doubled}/a"),
        "./b".to_owned(),
        "x/./c".to_owned(),
        format!("{root}/d1/../e"),
    ];
    let mut args = Vec::new();
    for pattern in &line_args {
        args.extend(["--exclude", pattern.as_str()]);
    }
    let kept = kept_below(&env, &src, &args);
    assert_eq!(kept, ["d1", "kept", "x", "y", "y/z", "y/z/f"], "{kept:?}");
    // The same in an exclude file.
    let file = env.path("excludes");
    std::fs::write(&file, line_args.join("\n") + "\ny/./z/..//z/f\n").unwrap();
    let kept = kept_below(&env, &src, &["--exclude-file", file.to_str().unwrap()]);
    assert_eq!(kept, ["d1", "kept", "x", "y", "y/z"], "{kept:?}");
}

/// restic lower-cases pattern and path by Unicode's rules.
#[test]
fn iexclude_ignores_case_beyond_ascii() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("Über")).unwrap();
    std::fs::write(src.join("ÄRGER.txt"), b"-").unwrap();
    std::fs::write(src.join("Über/x"), b"-").unwrap();
    std::fs::write(src.join("kept"), b"-").unwrap();
    let kept = kept_below(
        &env,
        &src,
        &["--iexclude", "ärger.txt", "--iexclude", "über/"],
    );
    assert_eq!(kept, ["kept"], "{kept:?}");
}

/// Each list has its own `!`: an --iexclude `!` pattern does not bring
/// back what --exclude left out, nor the other way round (as restic).
#[test]
fn exclude_and_iexclude_negate_each_within_its_own_list() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for file in ["keep.tmp", "other.tmp", "b.BAK", "keep.bak", "kept"] {
        std::fs::write(src.join(file), b"-").unwrap();
    }
    let kept = kept_below(
        &env,
        &src,
        &[
            "--exclude",
            "*.tmp",
            "--iexclude",
            "!KEEP.TMP",
            "--iexclude",
            "*.bak",
            "--exclude",
            "!keep.bak",
        ],
    );
    assert_eq!(kept, ["kept"], "{kept:?}");
    // Within one list `!` still includes again.
    let kept = kept_below(
        &env,
        &src,
        &["--iexclude", "*.TMP", "--iexclude", "!KEEP.TMP"],
    );
    assert_eq!(kept, ["b.BAK", "keep.bak", "keep.tmp", "kept"], "{kept:?}");
}

/// Exclude files expand `$VAR`/`${VAR}` as restic's do (unset: empty);
/// their lines are trimmed, but a pattern on the command line is taken
/// as given.
#[test]
fn exclude_files_expand_variables_and_only_their_lines_are_trimmed() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join(".cache")).unwrap();
    for file in [".cache/x", "sp", " sp", "d$", "ab", "kept"] {
        std::fs::write(src.join(file), b"-").unwrap();
    }
    let file = env.path("excludes");
    std::fs::write(
        &file,
        "  $VAULT_TEST_HOME/.cache  \n${VAULT_TEST_UNSET}d$$\na${VAULT_TEST_B}\n",
    )
    .unwrap();
    let kept = kept_below_with(
        &env,
        &src,
        &["--exclude-file", file.to_str().unwrap(), "--exclude", " sp"],
        &[
            ("VAULT_TEST_HOME", src.to_str().unwrap()),
            ("VAULT_TEST_B", "b"),
        ],
    );
    assert_eq!(kept, ["kept", "sp"], "{kept:?}");
}

/// --iexclude-file: --exclude-file's lines, matched ignoring case.
#[test]
fn iexclude_file_reads_case_insensitive_patterns() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for file in ["A.JPG", "b.Jpg", "c.png", "kept"] {
        std::fs::write(src.join(file), b"-").unwrap();
    }
    let file = env.path("iexcludes");
    std::fs::write(&file, "# pictures\n *.jpg\n\nC.PNG\n").unwrap();
    let kept = kept_below(&env, &src, &["--iexclude-file", file.to_str().unwrap()]);
    assert_eq!(kept, ["kept"], "{kept:?}");
}

/// restic keeps CACHEDIR.TAG and the --exclude-if-present file in the
/// snapshot; without them, a tree restored after a disaster is backed up
/// whole the next time.
#[test]
fn markers_stay_in_the_snapshot_and_keep_excluding_after_a_restore() {
    let env = Env::new();
    let src = env.path("src");
    for dir in ["c/sub", "n/deep", "both"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    let signature = b"Signature: 8a477f597d28d172789f06886806bc55";
    std::fs::write(src.join("c/CACHEDIR.TAG"), signature).unwrap();
    std::fs::write(src.join("c/junk"), b"-").unwrap();
    std::fs::write(src.join("c/sub/more"), b"-").unwrap();
    std::fs::write(src.join("n/.nobackup"), b"").unwrap();
    std::fs::write(src.join("n/deep/f"), b"-").unwrap();
    std::fs::write(src.join("both/CACHEDIR.TAG"), signature).unwrap();
    std::fs::write(src.join("both/.nobackup"), b"").unwrap();
    std::fs::write(src.join("kept"), b"-").unwrap();
    let args = ["--exclude-caches", "--exclude-if-present", ".nobackup"];
    let want = ["both", "c", "c/CACHEDIR.TAG", "kept", "n", "n/.nobackup"];
    let kept = kept_below(&env, &src, &args);
    // Two markers in one directory exclude each other, as in restic.
    assert_eq!(kept, want, "{kept:?}");
    let target = env.path("target");
    let out = env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_success(&out);
    let restored = target.join(src.strip_prefix("/").unwrap());
    std::fs::write(restored.join("c/new"), b"-").unwrap();
    std::fs::write(restored.join("n/new"), b"-").unwrap();
    let kept = kept_below(&env, &restored, &args);
    let want = ["both", "c", "c/CACHEDIR.TAG", "kept", "n", "n/.nobackup"];
    assert_eq!(kept, want, "{kept:?}");
}

/// `--exclude-if-present ''` is refused, as restic refuses it: the empty
/// name was the directory itself, so every directory counted as marked and
/// the backup held no file. Also in a config source.
#[test]
fn an_empty_marker_name_is_refused() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"-").unwrap();
    let out = env.vault(&["backup", "--exclude-if-present", "", src.to_str().unwrap()]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("is no file name"), "{}", stderr(&out));
    let config = env.path("vault.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"f\"\nkind = \"files\"\npaths = [\"{}\"]\nexclude_if_present = [\"\"]\n",
            src.display()
        ),
    )
    .unwrap();
    let out = env
        .command(&["backup"])
        .env("VAULT_CONFIG", &config)
        .output()
        .unwrap();
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("exclude_if_present"),
        "{}",
        stderr(&out)
    );
    assert!(env.snapshots().is_empty());
}

/// `x/**` leaves `x` out too, as restic's `**` may match nothing.
#[test]
fn a_trailing_double_star_excludes_the_directory_itself() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("x/y")).unwrap();
    std::fs::create_dir_all(src.join("w/x")).unwrap();
    std::fs::write(src.join("x/y/f"), b"-").unwrap();
    std::fs::write(src.join("kept"), b"-").unwrap();
    let abs = format!("{}/w/**", src.display());
    let kept = kept_below(&env, &src, &["--exclude", "x/**", "--exclude", &abs]);
    assert_eq!(kept, ["kept"], "{kept:?}");
}

#[test]
fn skip_if_unchanged_saves_no_snapshot_until_something_changes() {
    let env = Env::new();
    // Every directory above the source is part of the snapshot, and the
    // system temporary directory's mtime moves whenever another test creates
    // something in it; this one's ancestors stay still.
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = base.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"first").unwrap();
    let src = src.to_str().unwrap();
    let first = env.json(&["backup", src, "--skip-if-unchanged"]);
    assert_eq!(first["snapshot_skipped"], false);
    let again = env.json(&["backup", src, "--skip-if-unchanged"]);
    assert_eq!(again["snapshot_skipped"], true, "{again}");
    assert_eq!(again["snapshot_id"], first["snapshot_id"]);
    assert_eq!(env.snapshots().len(), 1);
    let text = env.vault(&["backup", src, "--skip-if-unchanged"]);
    assert_success(&text);
    assert!(String::from_utf8_lossy(&text.stdout).contains("no snapshot saved"));
    // Without the flag an unchanged backup is still recorded.
    env.json(&["backup", src]);
    assert_eq!(env.snapshots().len(), 2);
    std::fs::write(std::path::Path::new(src).join("a.txt"), b"second").unwrap();
    let changed = env.json(&["backup", src, "--skip-if-unchanged"]);
    assert_eq!(changed["snapshot_skipped"], false);
    assert_eq!(changed["files_changed"], 1);
    assert_eq!(env.snapshots().len(), 3);
}

#[test]
fn ignore_inode_reuses_files_whose_inode_alone_changed() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("data.bin");
    std::fs::write(&file, vec![1u8; 10_000]).unwrap();
    env.json(&["backup", src.to_str().unwrap()]);
    // Same content, size and mtime under a new inode (what a file system
    // that renumbers inodes on mount looks like).
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&file).unwrap());
    let copy = src.join("data.new");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::rename(&copy, &file).unwrap();
    filetime::set_file_mtime(&file, mtime).unwrap();
    let strict = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(strict["files_changed"], 1, "{strict}");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::rename(&copy, &file).unwrap();
    filetime::set_file_mtime(&file, mtime).unwrap();
    let lax = env.json(&[
        "backup",
        src.to_str().unwrap(),
        "--ignore-inode",
        "--ignore-ctime",
    ]);
    assert_eq!(lax["files_changed"], 0, "{lax}");
    assert_eq!(lax["files_unmodified"], 1, "{lax}");
}

/// `--limit-upload` and `--limit-download` hold transfers to their rates.
/// Only lower bounds are asserted: a slow machine adds time, never removes it.
#[test]
fn bandwidth_limits_hold_backup_and_restore_to_their_rates() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Incompressible, so at least this much is stored and read back.
    std::fs::write(src.join("data"), pseudo_random(1 << 20, 4)).unwrap();
    let started = std::time::Instant::now();
    assert_success(&env.vault(&["backup", src.to_str().unwrap(), "--limit-upload", "256"]));
    let upload = started.elapsed();
    assert!(
        upload.as_secs_f64() >= 3.5,
        "1 MiB at 256 KiB/s took {upload:?}"
    );
    let target = env.path("r");
    let started = std::time::Instant::now();
    assert_success(&env.vault(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--limit-download",
        "512",
    ]));
    let download = started.elapsed();
    assert!(
        download.as_secs_f64() >= 1.8,
        "1 MiB at 512 KiB/s took {download:?}"
    );
    let restored = restored_root(&target, &src).join("data");
    assert_eq!(std::fs::read(restored).unwrap(), pseudo_random(1 << 20, 4));
    // 0 is no limit, as restic's (restic_cli.rs tests it).
    assert_success(&env.vault(&["snapshots", "--limit-upload", "0"]));
}

backend_test!(restore_delete_makes_the_target_what_the_snapshot_was);
fn restore_delete_makes_the_target_what_the_snapshot_was(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("keep.txt"), b"keep").unwrap();
    std::fs::write(src.join("sub/a"), b"a").unwrap();
    std::fs::write(src.join("sub/b"), b"b").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    let t = target.to_str().unwrap();
    assert_success(&env.vault(&["restore", "latest", "--target", t]));
    let root = restored_root(&target, &src);
    // What ransomware or a bad deploy leaves behind.
    std::fs::write(root.join("README-decrypt.txt"), b"pay").unwrap();
    std::fs::write(root.join("sub/c"), b"c").unwrap();
    std::fs::create_dir_all(root.join("new/deep")).unwrap();
    std::fs::write(root.join("new/deep/f"), b"f").unwrap();
    std::fs::write(root.join("sub/a"), b"encrypted").unwrap();
    std::fs::write(root.join("app.log"), b"excluded, so kept").unwrap();
    // Beside the backed-up directory, above it: not the snapshot's business.
    let sibling = root.parent().unwrap().join("sibling");
    std::fs::write(&sibling, b"not backed up").unwrap();
    let refused = env.vault(&["restore", "latest", "--target", t, "--delete"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--overwrite"),
        "{}",
        stderr(&refused)
    );
    let restore_deleting = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            "if-changed",
        ];
        args.push("--delete");
        args.extend_from_slice(extra);
        env.json(&args)
    };
    // A dry run tells what would change, and changes nothing.
    let dry = restore_deleting(&["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["deleted"], 4, "{dry}");
    let listed = dry["deleted_paths"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|p| p.as_str().unwrap().ends_with("README-decrypt.txt"))
    );
    assert_eq!(dry["bytes_written"], 1, "only sub/a differs: {dry}");
    assert_eq!(std::fs::read(root.join("sub/a")).unwrap(), b"encrypted");
    assert!(root.join("sub/c").exists() && root.join("new/deep/f").exists());
    let fresh = env.path("fresh");
    let dry = env.json(&[
        "restore",
        "latest",
        "--target",
        fresh.to_str().unwrap(),
        "-n",
    ]);
    assert_eq!(
        (dry["files"].as_u64(), dry["bytes_written"].as_u64()),
        (Some(3), Some(6))
    );
    assert!(!fresh.exists());
    // --include limits where anything is deleted.
    let sub = format!("{}/sub", src.display());
    let out = restore_deleting(&["--include", &sub]);
    assert_eq!(out["deleted"], 1, "{out}");
    assert!(!root.join("sub/c").exists());
    assert!(root.join("README-decrypt.txt").exists());
    let out = restore_deleting(&["--exclude", "*.log"]);
    assert_eq!(out["deleted"], 2, "{out}");
    for gone in ["README-decrypt.txt", "new"] {
        assert!(!root.join(gone).exists(), "{gone} survived");
    }
    assert_eq!(std::fs::read(root.join("sub/a")).unwrap(), b"a");
    assert_eq!(std::fs::read(root.join("sub/b")).unwrap(), b"b");
    assert_eq!(std::fs::read(root.join("keep.txt")).unwrap(), b"keep");
    assert!(root.join("app.log").exists());
    assert!(sibling.exists());
}

/// The runbooks' `restic restore latest --target T --include "sgos-phone"`:
/// an include without a leading `/` matches at any depth, the directories
/// above what it selects come back with their own metadata, and one that
/// matches nothing fails instead of restoring nothing.
#[test]
fn relative_includes_match_at_any_depth_and_an_unmatched_one_fails() {
    let env = Env::new();
    let src = env.path("staging");
    std::fs::create_dir_all(src.join("sgos-phone/voicemails")).unwrap();
    std::fs::create_dir_all(src.join("other")).unwrap();
    std::fs::write(src.join("sgos-phone/voicemails/m1.wav"), b"hello").unwrap();
    std::fs::write(src.join("sgos-phone/database.sql"), b"dump").unwrap();
    std::fs::write(src.join("other/x"), b"x").unwrap();
    std::fs::set_permissions(src.join("sgos-phone"), PermissionsExt::from_mode(0o750)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let restore = |include: &str| {
        let target = env.path(&format!("r-{}", include.replace('/', "_")));
        let out = env.vault(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--include",
            include,
        ]);
        (out, restored_root(&target, &src))
    };
    let (out, root) = restore("sgos-phone");
    assert_success(&out);
    assert_eq!(
        std::fs::read(root.join("sgos-phone/voicemails/m1.wav")).unwrap(),
        b"hello"
    );
    assert!(root.join("sgos-phone/database.sql").exists());
    assert!(!root.join("other").exists());
    let (out, root) = restore("sgos-phone/database.sql");
    assert_success(&out);
    assert!(root.join("sgos-phone/database.sql").exists());
    assert!(!root.join("sgos-phone/voicemails").exists());
    let mode = std::fs::metadata(root.join("sgos-phone"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o7777,
        0o750,
        "the directory above keeps its own mode"
    );
    let (out, root) = restore("voicemail");
    assert_code(&out, 1);
    assert!(stderr(&out).contains("matches nothing"), "{}", stderr(&out));
    assert!(!root.exists());
}

backend_test!(files_from_lists_the_paths_to_back_up);
fn files_from_lists_the_paths_to_back_up(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    for dir in ["etc", "srv/uploads", "srv/scratch"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    std::fs::write(src.join("etc/app.conf"), b"conf").unwrap();
    std::fs::write(src.join("srv/uploads/u1"), b"upload").unwrap();
    std::fs::write(src.join("srv/scratch/s1"), b"scratch").unwrap();
    let list = env.path("list");
    std::fs::write(
        &list,
        format!(
            "# what to back up\n{}\n\n{}\r\n",
            src.join("etc").display(),
            src.join("srv/uploads").display()
        ),
    )
    .unwrap();
    let out = env.vault(&["backup", "--files-from", list.to_str().unwrap()]);
    assert_success(&out);
    let snaps = env.snapshots();
    let mut paths: Vec<&str> = snaps[0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    paths.sort_unstable();
    let (etc, uploads) = (src.join("etc"), src.join("srv/uploads"));
    assert_eq!(paths, [etc.to_str().unwrap(), uploads.to_str().unwrap()]);
    let listing = String::from_utf8(env.vault(&["ls", "latest", "--recursive"]).stdout).unwrap();
    assert!(listing.contains("etc/app.conf"), "{listing}");
    assert!(listing.contains("uploads/u1"), "{listing}");
    assert!(!listing.contains("scratch"), "{listing}");

    // Positional paths add to the list; a list from standard input works.
    let input = format!("{}\n", src.join("etc").display());
    let out = env.vault_stdin(
        &[
            "backup",
            "--files-from",
            "-",
            src.join("srv/scratch").to_str().unwrap(),
        ],
        input.as_bytes(),
    );
    assert_success(&out);
    let listing = String::from_utf8(env.vault(&["ls", "latest", "--recursive"]).stdout).unwrap();
    assert!(
        listing.contains("scratch/s1") && listing.contains("app.conf"),
        "{listing}"
    );
    assert!(!listing.contains("uploads"), "{listing}");

    // A missing or empty list is an error, and nothing is saved.
    let out = env.vault(&["backup", "--files-from", env.path("nope").to_str().unwrap()]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("reading --files-from"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&list, "# nothing\n\n").unwrap();
    let out = env.vault(&["backup", "--files-from", list.to_str().unwrap()]);
    assert!(stderr(&out).contains("lists no paths"), "{}", stderr(&out));
    assert_eq!(env.snapshots().len(), 2);
}

/// The paths of a snapshot, sorted, as bytes (names need not be UTF-8).
fn snapshot_paths(env: &Env) -> Vec<String> {
    let snaps = env.snapshots();
    let mut paths: Vec<String> = (snaps.last().unwrap()["paths"].as_array().unwrap().iter())
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    paths.sort_unstable();
    paths
}

/// `--files-from` trims lines, expands globs and takes names that are not
/// UTF-8; `--files-from-verbatim` takes each line as it is and
/// `--files-from-raw` NUL-separated names, newlines and all (restic's
/// three flags).
#[test]
fn files_from_variants_take_patterns_verbatim_and_raw_names() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let odd = src.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    for name in ["size_1", "size_2", "other", " edge ", "new\nline"] {
        std::fs::write(src.join(name), name).unwrap();
    }
    std::fs::write(&odd, b"latin-1").unwrap();
    let s = src.to_str().unwrap();
    let list = env.path("list");
    let mut text = format!("  {s}/size_*  \n# {s}/other\n{s}/nothing_*\n").into_bytes();
    text.extend_from_slice(odd.as_os_str().as_bytes());
    text.push(b'\n');
    std::fs::write(&list, text).unwrap();
    let out = env.vault(&["backup", "--files-from", list.to_str().unwrap()]);
    assert_success(&out);
    assert!(stderr(&out).contains("matches nothing"), "{}", stderr(&out));
    assert_eq!(
        snapshot_paths(&env),
        [
            format!("{s}/caf\u{fffd}"),
            format!("{s}/size_1"),
            format!("{s}/size_2")
        ]
    );

    std::fs::write(&list, format!("{s}/ edge \n\n{s}/size_*\n")).unwrap();
    let out = env.vault(&["backup", "--files-from-verbatim", list.to_str().unwrap()]);
    // The literal name `size_*` does not exist: exit 3, the rest saved.
    assert_code(&out, 3);
    assert_eq!(
        snapshot_paths(&env),
        [format!("{s}/ edge "), format!("{s}/size_*")]
    );

    std::fs::write(&list, format!("{s}/new\nline\0{s}/other\0")).unwrap();
    let out = env.vault(&["backup", "--files-from-raw", list.to_str().unwrap()]);
    assert_success(&out);
    assert_eq!(
        snapshot_paths(&env),
        [format!("{s}/new\nline"), format!("{s}/other")]
    );
}

backend_test!(dump_of_a_directory_is_a_tar_stream_that_extracts_to_the_same_tree);
fn dump_of_a_directory_is_a_tar_stream_that_extracts_to_the_same_tree(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("uploads/2026/11")).unwrap();
    std::fs::write(
        src.join("uploads/2026/11/big.bin"),
        pseudo_random(3_000_000, 5),
    )
    .unwrap();
    std::fs::write(src.join("uploads/empty"), b"").unwrap();
    std::fs::write(src.join("uploads/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        src.join("uploads/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("2026/11/big.bin", src.join("uploads/latest")).unwrap();
    std::fs::write(src.join("other.txt"), b"not in the dump\n").unwrap();
    // What ustar fields cannot hold: a time before 1970 with a fraction,
    // an extended attribute; and a hard link.
    let old = src.join("uploads/1960.txt");
    std::fs::write(&old, b"old\n").unwrap();
    xattr::set(&old, "user.origin", b"scanner 7").unwrap();
    filetime::set_file_mtime(
        &old,
        filetime::FileTime::from_unix_time(-302_443_200, 123_456_789),
    )
    .unwrap();
    std::fs::hard_link(&old, src.join("uploads/2026/1960-link.txt")).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));

    let uploads = src.join("uploads");
    let out = env.vault(&["dump", "latest", uploads.to_str().unwrap()]);
    assert_success(&out);
    let tar = env.path("uploads.tar");
    std::fs::write(&tar, &out.stdout).unwrap();
    let into = env.path("extracted");
    std::fs::create_dir_all(&into).unwrap();
    let extracted = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xf"])
        .arg(&tar)
        .arg("-C")
        .arg(&into)
        .output()
        .unwrap();
    assert_success(&extracted);
    let got = into.join(uploads.strip_prefix("/").unwrap());
    let (want, _) = scan(&uploads);
    let (have, _) = scan(&got);
    let keys =
        |m: &HashMap<PathBuf, Entry>| m.keys().cloned().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(keys(&have), keys(&want));
    for (path, entry) in &want {
        assert_eq!(have[path].content, entry.content, "{}", path.display());
        assert_eq!(have[path].mode, entry.mode, "{}", path.display());
        assert_eq!(have[path].link, entry.link, "{}", path.display());
    }
    assert!(!got.parent().unwrap().join("other.txt").exists());
    let old_got = got.join("1960.txt");
    let meta = std::fs::metadata(&old_got).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (-302_443_200, 123_456_789),
        "mtime before 1970 with its fraction"
    );
    assert_eq!(
        xattr::get(&old_got, "user.origin").unwrap().as_deref(),
        Some(&b"scanner 7"[..])
    );
    assert_eq!(
        std::fs::metadata(got.join("2026/1960-link.txt"))
            .unwrap()
            .ino(),
        meta.ino(),
        "hard links stay one file"
    );

    // The whole snapshot with `/`; a file is still written as itself.
    let all = env.vault(&["dump", "latest", "/"]);
    assert_success(&all);
    std::fs::write(&tar, &all.stdout).unwrap();
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .unwrap();
    let names = String::from_utf8(listed.stdout).unwrap();
    assert!(
        names.contains("other.txt") && names.contains("uploads/run.sh"),
        "{names}"
    );
    let file = env.vault(&["dump", "latest", src.join("other.txt").to_str().unwrap()]);
    assert_eq!(file.stdout, b"not in the dump\n");
    let missing = env.vault(&["dump", "latest", src.join("nope").to_str().unwrap()]);
    assert_code(&missing, 1);
    assert!(
        stderr(&missing).contains("holds no"),
        "{}",
        stderr(&missing)
    );
}

backend_test!(commands_run_for_a_backup_do_not_inherit_vaults_secrets);
/// A command source that prints its environment (or a dump tool that logs
/// it) must not put the repository password or the store's secret key
/// into the backup.
fn commands_run_for_a_backup_do_not_inherit_vaults_secrets(backend: Backend) {
    let env = Env::on(backend);
    let password = std::fs::read_to_string(&env.password_file).unwrap();
    let password = password.trim_end().to_owned();
    assert!(!password.is_empty());
    let out = env
        .command(&[
            "backup",
            "--stdin-from-command",
            "--stdin-filename",
            "env.txt",
            "--",
            "env",
        ])
        .env("VAULT_PASSWORD", &password)
        .env_remove("VAULT_PASSWORD_FILE")
        .env("VAULT_TEST_MARKER", "kept")
        .env("VAULT_TO_PASSWORD", "copy-target-secret")
        .output()
        .unwrap();
    assert_success(&out);
    let dumped = env.vault(&["dump", "latest", "/env.txt"]);
    assert_success(&dumped);
    let text = String::from_utf8_lossy(&dumped.stdout);
    assert!(text.contains("VAULT_TEST_MARKER=kept"), "{text}");
    assert!(!text.contains("VAULT_PASSWORD="), "{text}");
    assert!(!text.contains("VAULT_TO_PASSWORD="), "{text}");
    assert!(!text.contains("AWS_SECRET_ACCESS_KEY="), "{text}");

    // Nor a password command, which often holds a token itself.
    let out = env
        .command(&[
            "backup",
            "--stdin-from-command",
            "--stdin-filename",
            "env2.txt",
            "--",
            "env",
        ])
        .env_remove("VAULT_PASSWORD_FILE")
        .env(
            "VAULT_PASSWORD_COMMAND",
            format!("echo '{password}' # token-in-command"),
        )
        .env("VAULT_TO_PASSWORD_COMMAND", "echo token-of-target")
        .env("VAULT_FROM_PASSWORD_COMMAND", "echo token-of-source")
        .output()
        .unwrap();
    assert_success(&out);
    let dumped = env.vault(&["dump", "latest", "/env2.txt"]);
    assert_success(&dumped);
    let text = String::from_utf8_lossy(&dumped.stdout);
    assert!(text.contains("PATH="), "{text}");
    assert!(!text.contains("token-"), "{text}");

    // A password command sees neither this repository's nor another's
    // password (`copy`'s target).
    let seen = env.path("password-command-env.txt");
    let out = env
        .command(&["snapshots"])
        .env_remove("VAULT_PASSWORD_FILE")
        .env("VAULT_TO_PASSWORD", "copy-target-secret")
        .env(
            "VAULT_PASSWORD_COMMAND",
            format!("env > '{}'; echo '{password}'", seen.display()),
        )
        .output()
        .unwrap();
    assert_success(&out);
    let text = std::fs::read_to_string(&seen).unwrap();
    assert!(!text.contains("copy-target-secret"), "{text}");
}

/// A URL with a scheme other than s3: is refused, not taken for a local
/// directory named after it (the backups would never leave the host).
#[test]
fn an_https_repository_url_is_refused_not_made_a_local_directory() {
    let env = Env::uninitialised();
    let url = "https://AKIAUSER:UrlSecretPw9@s3.example.com/bucket/p";
    let out = env.command(&["init", "--repo", url]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("s3:https://"), "{err}");
    assert!(!err.contains("UrlSecretPw9"), "{err}");
    assert!(!env.path("https:").exists() && !std::path::Path::new("https:").exists());
}

/// `ls -l` reads like `ls -l`: permission string and symlink targets;
/// `--json` carries them too; a path the snapshot lacks is an error, not
/// an empty listing.
#[test]
fn ls_long_shows_permissions_and_link_targets_and_missing_paths_fail() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let out = env.vault(&["ls", "-l", "latest", src.to_str().unwrap()]);
    assert_success(&out);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(name) || l.contains(&format!("{name} -> ")))
            .unwrap_or_else(|| panic!("{name} in {listing}"))
            .to_owned()
    };
    assert!(
        line("/link").ends_with("/link -> docs/readme.txt"),
        "{listing}"
    );
    assert!(line("/link").starts_with("lrwxrwxrwx"), "{listing}");
    assert!(line("/setgid-file").starts_with("-rwxr-sr-x"), "{listing}");
    assert!(line("/docs").starts_with("drwx"), "{listing}");

    let out = env.vault(&["ls", "latest", src.to_str().unwrap(), "--json"]);
    assert_success(&out);
    let nodes: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let link = nodes.iter().find(|n| n["name"] == "link").unwrap();
    assert_eq!(link["linktarget"], "docs/readme.txt");
    assert_eq!(link["permissions"], "lrwxrwxrwx");
    let readme = nodes.iter().find(|n| n["name"] == "hardlink").unwrap();
    assert_eq!(readme["links"], 2);
    assert!(readme.get("linktarget").is_none());

    let missing = src.join("no/such/dir");
    let out = env.vault(&["ls", "latest", missing.to_str().unwrap()]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("holds no"), "{}", stderr(&out));
}

/// A dry run announces the bytes the restore then writes: a hard-linked
/// file's second name is linked, not written, and counts once.
#[test]
fn restore_dry_run_counts_what_the_restore_writes() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("a"), pseudo_random(300_000, 3)).unwrap();
    std::fs::hard_link(src.join("a"), src.join("b/a-again")).unwrap();
    std::fs::write(src.join("b/c"), pseudo_random(1000, 4)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    let written = |extra: &[&str]| -> u64 {
        let mut args = vec![
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = env.vault(&args);
        assert_success(&out);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["bytes_written"].as_u64().unwrap()
    };
    let planned = written(&["--dry-run"]);
    assert!(!target.exists(), "a dry run creates nothing");
    assert_eq!(planned, 301_000);
    assert_eq!(written(&[]), planned);
    // Over the restored tree, if-changed keeps what is right, the
    // hard-linked file too: its only other name is the one the restore
    // links to it. The dry run says so too.
    let again = ["--overwrite", "if-changed"];
    let dry_again = [&again[..], &["--dry-run"]].concat();
    let (a, a_again) = (
        restored_root(&target, &src).join("a"),
        restored_root(&target, &src).join("b/a-again"),
    );
    let inode = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    let before = inode(&a);
    for _ in 0..2 {
        assert_eq!(written(&dry_again), 0);
        assert_eq!(written(&again), 0);
        assert_eq!(std::fs::read(&a).unwrap(), pseudo_random(300_000, 3));
        assert_eq!((inode(&a), inode(&a_again)), (before, before));
        assert_eq!(std::fs::metadata(&a).unwrap().nlink(), 2);
    }
    // A name outside the target linked to it makes it a file the restore
    // does not own alone: made anew, never written through, the outside
    // name keeps its bytes; the snapshot's second name is linked to the
    // new file.
    let outside = env.path("outside");
    std::fs::hard_link(&a, &outside).unwrap();
    std::fs::write(&outside, b"changed outside").unwrap();
    assert_eq!(written(&dry_again), 300_000);
    assert_eq!(written(&again), 300_000);
    assert_eq!(std::fs::read(&outside).unwrap(), b"changed outside");
    assert_eq!(std::fs::read(&a).unwrap(), pseudo_random(300_000, 3));
    assert_eq!(inode(&a), inode(&a_again));
    assert_ne!(inode(&a), inode(&outside));
    assert_eq!(std::fs::metadata(&a).unwrap().nlink(), 2);
    // The same with the outside name linked to the second name.
    std::fs::remove_file(&outside).unwrap();
    std::fs::hard_link(&a_again, &outside).unwrap();
    std::fs::write(&outside, b"changed outside").unwrap();
    assert_eq!(written(&again), 300_000);
    assert_eq!(std::fs::read(&outside).unwrap(), b"changed outside");
    assert_eq!(std::fs::read(&a_again).unwrap(), pseudo_random(300_000, 3));
    assert_eq!(inode(&a), inode(&a_again));
}

/// A file written to while the backup reads it is saved as read, with a
/// warning naming it; the backup still succeeds, and the next one reads
/// the file again (its recorded metadata is from before the read).
#[test]
fn a_file_changing_while_read_is_reported_and_read_again_next_time() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let log = src.join("app.log");
    std::fs::write(&log, pseudo_random(40_000_000, 9)).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                f.write_all(b"x").unwrap();
            }
        })
    };
    let out = env.vault(&["backup", src.to_str().unwrap(), "--compression", "none"]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_success(&out);
    assert!(
        stderr(&out).contains("app.log: changed while it was read"),
        "{}",
        stderr(&out)
    );
    let out = env.vault(&["backup", src.to_str().unwrap(), "--json"]);
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["files_changed"], 1, "{summary}");
    assert!(!stderr(&out).contains("changed while"), "{}", stderr(&out));
}

/// Restoring over an existing tree leaves each entry's extended attributes
/// exactly the snapshot's: one added since (a stale ACL would grant access
/// the snapshot does not) is removed, a changed one set back.
#[test]
fn restore_over_a_tree_removes_attributes_the_snapshot_lacks() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let root = restored_root(&target, &src);
    for overwrite in ["always", "if-changed"] {
        for p in ["docs/text.csv", "docs"] {
            xattr::set(root.join(p), "user.stale", b"added later").unwrap();
        }
        xattr::set(root.join("docs/text.csv"), "user.origin", b"changed").unwrap();
        let out = env.vault(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
            overwrite,
        ]);
        assert_success(&out);
        for p in ["docs/text.csv", "docs"] {
            assert_eq!(
                xattr::get(root.join(p), "user.stale").unwrap(),
                None,
                "{overwrite}: {p}"
            );
        }
        assert_eq!(
            xattr::get(root.join("docs/text.csv"), "user.origin")
                .unwrap()
                .as_deref(),
            Some(&b"e2e"[..]),
            "{overwrite}"
        );
    }
}

/// A tree as deep as Linux paths allow (2 000 levels) restores: the walk
/// recursed on 2 MiB pool stacks and overflowed at ~1 200 levels, aborting
/// a restore of anything holding such a tree.
#[test]
fn a_tree_2000_levels_deep_restores() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    nest_dirs(&src, 2000);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    // Threads without an explicit stack size get RUST_MIN_STACK: small
    // here, so the test fails in any build unless the walk's threads ask
    // for their own.
    let out = env
        .command(&["restore", "latest", "--target", target.to_str().unwrap()])
        .env("RUST_MIN_STACK", "131072")
        .output()
        .unwrap();
    assert_success(&out);
    let found = std::process::Command::new("find")
        .arg(&target)
        .args(["-name", "b", "-type", "f"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&found.stdout).lines().count(), 1);
}

backend_test!(backup_dry_run_of_new_data_reports_it_and_writes_nothing);
/// `backup --dry-run` reports what a backup would add and writes nothing,
/// also when the data is new (every pack it "uploads" is confirmed with a
/// HEAD before it is indexed; a dry run must not take its own discarded
/// packs for ones a prune deleted).
fn backup_dry_run_of_new_data_reports_it_and_writes_nothing(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("random.bin"), pseudo_random(3_000_000, 7)).unwrap();
    let src = src.to_str().unwrap();
    let before = env.objects();
    let dry = env.json(&["backup", "--dry-run", src]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(dry["snapshot_id"].is_null(), "no snapshot was saved: {dry}");
    assert_eq!(dry["files_new"], 1, "{dry}");
    assert!(dry["data_added"].as_u64().unwrap() >= 3_000_000, "{dry}");
    assert_eq!(env.objects(), before, "a dry run writes nothing");
    assert!(env.snapshots().is_empty());

    // After a real backup, a dry run over a change reports only it.
    assert_success(&env.vault(&["backup", src]));
    std::fs::write(Path::new(src).join("more.bin"), pseudo_random(500_000, 8)).unwrap();
    let before = env.objects();
    let dry = env.json(&["backup", "--dry-run", src]);
    assert_eq!(
        (dry["files_new"].as_u64(), dry["files_unmodified"].as_u64()),
        (Some(1), Some(1)),
        "{dry}"
    );
    assert_eq!(env.objects(), before, "a dry run writes nothing");
    assert_eq!(env.snapshots().len(), 1);
}

/// `--one-file-system` stays on the device of each given path, as restic
/// does: a mount point named among the paths is backed up with its
/// content (`-x / /home`), whatever the order; one not named stays empty.
#[test]
fn one_file_system_keeps_mount_points_that_are_given_paths() {
    if !is_root() {
        eprintln!("NOTICE: skipping: mounting a tmpfs needs root");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("top"), b"top").unwrap();
    let given = TmpfsMount::new(&src.join("given"));
    let other = TmpfsMount::new(&src.join("other"));
    std::fs::write(given.0.join("f"), b"in the given mount").unwrap();
    std::fs::write(other.0.join("g"), b"in another mount").unwrap();
    let (top, inner) = (src.to_str().unwrap(), given.0.to_str().unwrap());
    let listing = |args: &[&str]| {
        let mut full = vec!["backup", "--json"];
        full.extend_from_slice(args);
        assert_success(&env.vault(&full));
        let out = env.vault(&["ls", "latest", "--recursive"]);
        assert_success(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for args in [["-x", top, inner], ["-x", inner, top]] {
        let ls = listing(&args);
        assert!(ls.contains("/given/f"), "{args:?}: {ls}");
        assert!(ls.contains("/src/top"), "{args:?}: {ls}");
        assert!(ls.contains("/src/other\n"), "{args:?}: {ls}");
        assert!(!ls.contains("/other/g"), "{args:?}: not a given path: {ls}");
    }
    let ls = listing(&[top]);
    assert!(ls.contains("/given/f") && ls.contains("/other/g"), "{ls}");
}

/// A stream's file name is one name at the snapshot's root: a path or `.`
/// is refused with the reason, and nothing is saved.
#[test]
fn stdin_filename_with_a_directory_is_refused_with_the_reason() {
    let env = Env::new();
    for name in ["db/z.sql", ".", ".."] {
        let out = env.vault_stdin(&["backup", "--stdin", "--stdin-filename", name], b"data");
        assert_code(&out, 1);
        assert!(
            stderr(&out).contains("without `/`"),
            "{name}: {}",
            stderr(&out)
        );
    }
    assert!(env.snapshots().is_empty());
}

/// `backup -vv` names each file as new, modified or unchanged (restic's
/// `-vv`), so a nightly log says what changed.
#[test]
fn backup_very_verbose_names_each_file_with_its_change() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("kept"), b"kept").unwrap();
    std::fs::write(src.join("edited"), b"first").unwrap();
    let s = src.to_str().unwrap();
    let out = env.vault(&["backup", "-vv", s]);
    assert_success(&out);
    let log = stderr(&out);
    assert!(log.contains(&format!("new       {s}/kept")), "{log}");
    std::fs::write(src.join("edited"), b"second").unwrap();
    std::fs::write(src.join("added"), b"added").unwrap();
    let out = env.vault(&["backup", "-vv", s]);
    assert_success(&out);
    let log = stderr(&out);
    for line in [
        format!("unchanged {s}/kept"),
        format!("modified  {s}/edited"),
        format!("new       {s}/added"),
    ] {
        assert!(log.contains(&line), "{line}: {log}");
    }
    // Without -vv, no line per file.
    std::fs::write(src.join("added"), b"again").unwrap();
    let out = env.vault(&["backup", s]);
    assert!(!stderr(&out).contains("modified"), "{}", stderr(&out));
}

/// A missing path is named as given, with where the way to it ends, not
/// as its first missing directory.
#[test]
fn a_missing_deep_path_is_named_as_given() {
    let env = Env::new();
    let kept = env.path("kept");
    std::fs::write(&kept, b"kept").unwrap();
    let missing = env.path("gone/x/y/z");
    let out = env.vault(&["backup", missing.to_str().unwrap(), kept.to_str().unwrap()]);
    assert_code(&out, 3);
    let gone = env.path("gone");
    let expected = format!("{}: No such file or directory", missing.display());
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("(at {})", gone.display())),
        "{}",
        stderr(&out)
    );
}

/// Files made immutable (`chattr +i`) for a test, made mutable again when
/// dropped: otherwise the test's temporary directory could not be removed.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// `None`, with a note, where chattr cannot (not root, or a file system
    /// without the flag such as tmpfs or overlay).
    fn set(paths: &[PathBuf]) -> Option<Self> {
        let mut done = Immutable(Vec::new());
        for p in paths {
            let ok = std::process::Command::new("chattr")
                .arg("+i")
                .arg(p)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "NOTICE: skipping: `chattr +i {}` failed (needs root and a file system with the flag)",
                    p.display()
                );
                return None;
            }
            done.0.push(p.clone());
        }
        Some(done)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(p)
                .status();
        }
    }
}

/// `vault ARGS --json`: the exit code, the report, stderr.
fn restore_json(cmd: &mut std::process::Command) -> (Option<i32>, serde_json::Value, String) {
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    (out.status.code(), report, stderr(&out))
}

/// `vault restore latest --target TARGET --json EXTRA` as the
/// unprivileged user: the exit code, the report, stderr.
fn restore_unprivileged(
    env: &Env,
    target: &Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec![
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut cmd = env.command(&args);
    as_unprivileged(env, &mut cmd);
    restore_json(&mut cmd)
}

/// The `failed_entries` of a restore report: path -> (error, entries below).
fn failed_entries(report: &serde_json::Value) -> HashMap<String, (String, u64)> {
    (report["failed_entries"].as_array().into_iter().flatten())
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                (
                    f["error"].as_str().unwrap().to_owned(),
                    f["entries_below"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// A restore in place over a damaged tree holding entries it cannot replace
/// (an immutable file; an immutable file where the snapshot has a
/// directory): those are named, everything else is repaired (content and
/// modes), and the exit code is 3. The first such entry aborted the
/// restore, leaving the rest of the damage in place.
#[test]
fn a_restore_in_place_repairs_all_it_can_past_entries_it_cannot_replace() {
    let env = Env::new();
    let src = env.path("src");
    for d in ["a", "b", "c", "d"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        std::fs::write(src.join(d).join("f"), d).unwrap();
    }
    std::fs::write(src.join("d/g"), b"g").unwrap();
    std::fs::write(src.join("c/big"), pseudo_random(3_000_000, 5)).unwrap();
    std::fs::set_permissions(src.join("c"), PermissionsExt::from_mode(0o750)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let root = restored_root(&target, &src);
    // Where the snapshot has the directory d, a file that cannot go; and
    // b/f differs (an identical one is kept, needing no write).
    std::fs::remove_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("d"), b"in the way").unwrap();
    std::fs::write(root.join("b/f"), b"changed").unwrap();
    let Some(_immutable) = Immutable::set(&[root.join("b/f"), root.join("d")]) else {
        return;
    };
    for overwrite in ["always", "if-changed"] {
        for f in ["a/f", "c/f", "c/big"] {
            std::fs::write(root.join(f), b"CORRUPT").unwrap();
        }
        std::fs::set_permissions(root.join("c"), PermissionsExt::from_mode(0o700)).unwrap();
        let (code, report, err) = restore_json(&mut env.command(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
            overwrite,
            "--json",
        ]));
        assert_eq!(code, Some(3), "{overwrite}: {err}");
        let failed = failed_entries(&report);
        let (b, d) = (
            root.join("b/f").display().to_string(),
            root.join("d").display().to_string(),
        );
        assert_eq!(failed.len(), 2, "{overwrite}: {report}");
        assert!(
            failed[&b].0.contains("Operation not permitted"),
            "{overwrite}: {report}"
        );
        // d's two files are counted with it, not listed.
        assert_eq!(failed[&d].1, 2, "{overwrite}: {report}");
        assert!(
            err.contains(&format!("vault: error: {b}: "))
                && err.contains(&format!("vault: error: {d}: "))
                && err.contains("nor the 2 entries below it")
                && err.contains("4 entries could not be restored"),
            "{overwrite}: {err}"
        );
        for f in ["a/f", "c/f"] {
            assert_eq!(
                std::fs::read(root.join(f)).unwrap(),
                &f.as_bytes()[..1],
                "{overwrite}"
            );
        }
        assert!(
            std::fs::read(root.join("c/big")).unwrap() == pseudo_random(3_000_000, 5),
            "{overwrite}"
        );
        let mode = std::fs::metadata(root.join("c"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750, "{overwrite}");
        assert_eq!(std::fs::read(root.join("b/f")).unwrap(), b"changed");
    }
}

/// As non-root: a device node and a `trusted.*` attribute the kernel
/// refuses are each named, the rest restored, and the exit code is 3 (a
/// device node and an attribute were only warnings, exit 0). A file in a
/// read-only (0500) directory restored before is replaced (that directory
/// is this user's: opened up for the restore, its mode given back after).
/// Owners the user cannot give are not an error.
#[test]
fn a_restore_as_non_root_names_what_it_cannot_make_and_exits_3() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("ro500")).unwrap();
    std::fs::create_dir_all(src.join("ok")).unwrap();
    std::fs::write(src.join("ro500/inside"), b"inside").unwrap();
    std::fs::write(src.join("ok/f"), b"ok").unwrap();
    std::fs::set_permissions(src.join("ro500"), PermissionsExt::from_mode(0o500)).unwrap();
    // Only root can make these, and only a non-root restore is refused them.
    let root_only = is_root();
    if root_only {
        nix::sys::stat::mknod(
            &src.join("null-dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        std::fs::write(src.join("ok/labelled"), b"l").unwrap();
        xattr::set(src.join("ok/labelled"), "trusted.label", b"root's").unwrap();
    }
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let parent = env.path("targets");
    std::fs::create_dir_all(&parent).unwrap();
    if root_only {
        std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
    }
    let target = parent.join("r");
    let root = restored_root(&target, &src);
    let restore = |extra: &[&str]| restore_unprivileged(&env, &target, extra);
    let (code, report, err) = restore(&[]);
    let failed = failed_entries(&report);
    if root_only {
        assert_eq!(code, Some(3), "{err}");
        assert_eq!(failed.len(), 2, "{report}");
        let dev = &failed[&root.join("null-dev").display().to_string()].0;
        assert!(dev.contains("device node"), "{report}");
        let attr = &failed[&root.join("ok/labelled").display().to_string()].0;
        assert!(attr.contains("trusted.label"), "{report}");
        assert!(err.contains("2 entries could not be restored"), "{err}");
    } else {
        assert_eq!(code, Some(0), "{err}");
    }
    assert_eq!(std::fs::read(root.join("ro500/inside")).unwrap(), b"inside");

    std::fs::write(root.join("ok/f"), b"CORRUPT").unwrap();
    let (code, report, err) = restore(&["--overwrite", "always"]);
    assert_eq!(code, Some(if root_only { 3 } else { 0 }), "{err}");
    let failed = failed_entries(&report);
    assert_eq!(failed.len(), if root_only { 2 } else { 0 }, "{report}");
    assert_eq!(std::fs::read(root.join("ok/f")).unwrap(), b"ok");
    assert_eq!(std::fs::read(root.join("ro500/inside")).unwrap(), b"inside");
    let mode = std::fs::metadata(root.join("ro500")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o500);
    // Let the temporary directory go.
    std::fs::set_permissions(root.join("ro500"), PermissionsExt::from_mode(0o700)).unwrap();
}

/// `--overwrite if-changed` keeps a file identical to the snapshot that it
/// cannot open for writing: immutable (`chattr +i`), or as non-root a 0444
/// file in a 0555 directory someone else owns. It is read and compared
/// read-only and skipped (`bytes_skipped`), and its metadata, matching
/// already, is left alone: exit 0. Such files were made anew, which the
/// target refused: exit 3. Metadata that differs is still applied, and an
/// immutable file refusing it is named.
#[test]
fn an_if_changed_restore_keeps_identical_files_it_cannot_write() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (chattr, another user's directory)");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("locked")).unwrap();
    std::fs::write(src.join("same"), pseudo_random(300_000, 3)).unwrap();
    std::fs::write(src.join("mode-differs"), b"content matches").unwrap();
    std::fs::write(src.join("locked/f"), b"read-only, in root's directory").unwrap();
    xattr::set(src.join("same"), "user.kept", b"as is").unwrap();
    std::fs::set_permissions(src.join("locked/f"), PermissionsExt::from_mode(0o444)).unwrap();
    std::fs::set_permissions(src.join("locked"), PermissionsExt::from_mode(0o555)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    let root = restored_root(&target, &src);
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    std::fs::set_permissions(root.join("mode-differs"), PermissionsExt::from_mode(0o600)).unwrap();
    let Some(_immutable) = Immutable::set(&[root.join("same"), root.join("mode-differs")]) else {
        return;
    };
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
            "if-changed",
            "--include",
            "same",
            "--include",
            "mode-differs",
            "--json",
        ];
        args.extend_from_slice(extra);
        restore_json(&mut env.command(&args))
    };
    let (code, report, err) = restore(&["--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(report["bytes_written"], 0, "{report}");
    assert_eq!(report["bytes_skipped"], 300_000 + 15, "{report}");
    let (code, report, err) = restore(&[]);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(report["bytes_written"], 0, "{report}");
    assert_eq!(report["bytes_skipped"], 300_000 + 15, "{report}");
    // Only the mode that differs, which the immutable file refuses.
    let failed = failed_entries(&report);
    assert_eq!(failed.len(), 1, "{report}");
    let refused = &failed[&root.join("mode-differs").display().to_string()].0;
    assert!(refused.contains("mode (chmod)"), "{report}");
    assert!(std::fs::read(root.join("same")).unwrap() == pseudo_random(300_000, 3));
    drop(_immutable);
    std::fs::set_permissions(root.join("mode-differs"), PermissionsExt::from_mode(0o644)).unwrap();
    let (code, report, err) = restore(&[]);
    assert_eq!(code, Some(0), "{err}\n{report}");

    // As non-root: the whole restore again, after root took the
    // directory; its file stays the restoring user's.
    std::fs::remove_dir_all(&target).unwrap();
    let parent = env.path("targets");
    std::fs::create_dir_all(&parent).unwrap();
    give_to_unprivileged(&parent);
    let target = parent.join("r");
    let root = restored_root(&target, &src);
    let unprivileged = |extra: &[&str]| restore_unprivileged(&env, &target, extra);
    let (code, _, err) = unprivileged(&[]);
    assert_eq!(code, Some(0), "{err}");
    std::os::unix::fs::chown(root.join("locked"), Some(0), Some(0)).unwrap();
    let (code, report, err) = unprivileged(&["--overwrite", "if-changed"]);
    assert_eq!(code, Some(0), "{err}\n{report}");
    assert_eq!(report["bytes_written"], 0, "{report}");
    assert_eq!(
        std::fs::read(root.join("locked/f")).unwrap(),
        b"read-only, in root's directory"
    );
    let locked = std::fs::metadata(root.join("locked")).unwrap();
    assert_eq!((locked.uid(), locked.mode() & 0o7777), (0, 0o555));
    std::fs::set_permissions(root.join("locked"), PermissionsExt::from_mode(0o700)).unwrap();
}

/// A read-only bind mount of a directory over itself, unmounted when
/// dropped.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    /// `None`, with a note, where mounting is not permitted.
    fn over(dir: &Path) -> Option<Self> {
        let mount = |args: &[&str]| {
            std::process::Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !is_root() || !mount(&["--bind"]) {
            eprintln!("NOTICE: skipping: a read-only bind mount needs root and mount");
            return None;
        }
        let mounted = ReadOnlyMount(dir.to_owned());
        mount(&["-o", "remount,ro,bind"]).then_some(mounted)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `--overwrite if-changed` over a read-only bind mount holding files
/// identical to the snapshot: read, compared and skipped, exit 0 (they
/// were made anew, which the mount refused: exit 3). A file there that
/// differs is named.
#[test]
fn an_if_changed_restore_keeps_identical_files_on_a_read_only_mount() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("ro")).unwrap();
    std::fs::write(src.join("ro/f"), pseudo_random(100_000, 9)).unwrap();
    std::fs::write(src.join("ro/g"), b"g").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    let t = target.to_str().unwrap();
    assert_success(&env.vault(&["restore", "latest", "--target", t]));
    let root = restored_root(&target, &src);
    let Some(_mounted) = ReadOnlyMount::over(&root.join("ro")) else {
        return;
    };
    let again = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            "if-changed",
            "--json",
        ];
        args.extend_from_slice(extra);
        restore_json(&mut env.command(&args))
    };
    for extra in [&["--dry-run"][..], &[]] {
        let (code, report, err) = again(extra);
        assert_eq!(code, Some(0), "{extra:?}: {err}\n{report}");
        assert_eq!(report["bytes_written"], 0, "{extra:?}: {report}");
        assert_eq!(report["bytes_skipped"], 100_001, "{extra:?}: {report}");
    }
    drop(_mounted);
    std::fs::write(root.join("ro/g"), b"G").unwrap();
    let Some(_mounted) = ReadOnlyMount::over(&root.join("ro")) else {
        return;
    };
    let (code, report, err) = again(&[]);
    assert_eq!(code, Some(3), "{err}");
    let failed = failed_entries(&report);
    assert_eq!(failed.len(), 1, "{report}");
    assert!(
        failed[&root.join("ro/g").display().to_string()]
            .0
            .contains("Read-only file system"),
        "{report}"
    );
}

/// `chown -R nobody PATH` when the tests run as root, so that what a test
/// made for a restore run by [`as_unprivileged`] is that user's own.
fn give_to_unprivileged(path: &Path) {
    if is_root() {
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Writes `data` over the file at `path` whatever its mode (0444), and
/// gives the mode back.
fn overwrite_read_only(path: &Path, data: &[u8]) {
    let mode = std::fs::metadata(path).unwrap().permissions();
    std::fs::set_permissions(path, PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, mode).unwrap();
}

/// As non-root, a restore again over a tree holding a directory of
/// another user it may enter but not list (root's 0711, as the snapshot
/// has it): nothing there differs, so nothing is changed and it exits 0.
/// The restore through descriptors opened that directory to read its
/// metadata first, was refused, and exited 3.
#[test]
fn a_restore_again_as_non_root_passes_a_directory_it_cannot_list() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (another user's directory)");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("locked")).unwrap();
    std::fs::write(src.join("locked/f"), b"f").unwrap();
    give_to_unprivileged(&src);
    std::os::unix::fs::chown(src.join("locked"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(src.join("locked"), PermissionsExt::from_mode(0o711)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let parent = env.path("targets");
    std::fs::create_dir_all(&parent).unwrap();
    give_to_unprivileged(&parent);
    let target = parent.join("r");
    assert_success(&env.vault(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--allow-unsafe-target",
    ]));
    let (code, report, err) = restore_unprivileged(&env, &target, &["--overwrite", "if-changed"]);
    assert_eq!(code, Some(0), "{err}\n{report}");
    let locked = restored_root(&target, &src).join("locked");
    let meta = std::fs::symlink_metadata(&locked).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o711));
    assert_eq!(std::fs::read(locked.join("f")).unwrap(), b"f");
}

/// As non-root, a restore again over the user's own earlier restore, whose
/// read-only directories (0555, 0500) hold read-only files: with
/// `--overwrite always`, `--overwrite if-changed` and `--delete` it
/// replaces what differs below them (and removes what the snapshot does
/// not hold, a read-only directory included), and gives them their mode
/// back: as a restore into an empty target. Inside them every replacement
/// failed with EACCES, exit 3.
#[test]
fn a_restore_again_as_non_root_writes_inside_its_read_only_directories() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("ro555/sub500")).unwrap();
    std::fs::write(src.join("ro555/f"), b"f of the snapshot").unwrap();
    std::fs::write(src.join("ro555/sub500/g"), pseudo_random(200_000, 7)).unwrap();
    std::os::unix::fs::symlink("f", src.join("ro555/link")).unwrap();
    std::fs::set_permissions(src.join("ro555/f"), PermissionsExt::from_mode(0o444)).unwrap();
    std::fs::set_permissions(src.join("ro555/sub500"), PermissionsExt::from_mode(0o500)).unwrap();
    std::fs::set_permissions(src.join("ro555"), PermissionsExt::from_mode(0o555)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let parent = env.path("targets");
    std::fs::create_dir_all(&parent).unwrap();
    give_to_unprivileged(&parent);
    let target = parent.join("r");
    let root = restored_root(&target, &src);
    let restore = |extra: &[&str]| restore_unprivileged(&env, &target, extra);
    let (code, report, err) = restore(&[]);
    assert_eq!(code, Some(0), "{err}\n{report}");
    let as_snapshot = |what: &str| {
        assert_eq!(
            std::fs::read(root.join("ro555/f")).unwrap(),
            b"f of the snapshot",
            "{what}"
        );
        assert!(
            std::fs::read(root.join("ro555/sub500/g")).unwrap() == pseudo_random(200_000, 7),
            "{what}"
        );
        assert_eq!(
            std::fs::read_link(root.join("ro555/link")).unwrap(),
            Path::new("f"),
            "{what}"
        );
        for (path, mode) in [
            ("ro555", 0o555),
            ("ro555/sub500", 0o500),
            ("ro555/f", 0o444),
        ] {
            let got = std::fs::symlink_metadata(root.join(path)).unwrap().mode() & 0o7777;
            assert_eq!(got, mode, "{what}: {path} is {got:o}");
        }
    };
    as_snapshot("first restore");
    for extra in [
        &["--overwrite", "always"][..],
        &["--overwrite", "if-changed"],
        &["--overwrite", "always", "--delete"],
        &["--overwrite", "if-changed", "--delete"],
    ] {
        overwrite_read_only(&root.join("ro555/f"), b"CORRUPT");
        overwrite_read_only(&root.join("ro555/sub500/g"), b"CORRUPT too");
        let deleting = extra.contains(&"--delete");
        if deleting {
            // What the snapshot does not hold, in the read-only directories
            // (as root, made in them and given to the restoring user).
            let opened = |d: &str, mode| {
                std::fs::set_permissions(root.join(d), PermissionsExt::from_mode(mode)).unwrap();
            };
            opened("ro555", 0o755);
            opened("ro555/sub500", 0o700);
            std::fs::write(root.join("ro555/sub500/stray"), b"stray").unwrap();
            std::fs::create_dir_all(root.join("ro555/extra/deeper")).unwrap();
            std::fs::write(root.join("ro555/extra/deeper/x"), b"x").unwrap();
            std::fs::set_permissions(
                root.join("ro555/extra/deeper"),
                PermissionsExt::from_mode(0o555),
            )
            .unwrap();
            std::fs::set_permissions(root.join("ro555/extra"), PermissionsExt::from_mode(0o500))
                .unwrap();
            opened("ro555/sub500", 0o500);
            opened("ro555", 0o555);
            give_to_unprivileged(&root.join("ro555"));
        }
        let (code, report, err) = restore(extra);
        assert_eq!(code, Some(0), "{extra:?}: {err}\n{report}");
        as_snapshot(&format!("{extra:?}"));
        if deleting {
            assert!(!root.join("ro555/sub500/stray").exists(), "{extra:?}");
            assert!(!root.join("ro555/extra").exists(), "{extra:?}");
            assert_eq!(report["deleted"], 2, "{extra:?}: {report}");
        }
    }
    // Let the temporary directory go.
    for d in ["ro555", "ro555/sub500"] {
        std::fs::set_permissions(root.join(d), PermissionsExt::from_mode(0o700)).unwrap();
    }
}

/// An include that names a path --exclude removes says so, rather than
/// "matches nothing in the snapshot" about a path the snapshot holds.
#[test]
fn an_include_emptied_by_an_exclude_says_so() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("hl/a")).unwrap();
    std::fs::write(src.join("hl/a/f1"), b"f1").unwrap();
    std::fs::write(src.join("other"), b"o").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    let f1 = src.join("hl/a/f1");
    let out = env.vault(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--exclude",
        "hl",
        "--include",
        f1.to_str().unwrap(),
    ]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("selects only what --exclude removes")
            && err.contains(&format!("{} is excluded", src.join("hl").display())),
        "{err}"
    );
    assert!(!err.contains("matches nothing in the snapshot"), "{err}");
}

/// Extended attribute names need not be UTF-8 (the kernel takes any bytes
/// but NUL). Two names differing only in such bytes were stored under one
/// lossy name: restore set that wrong name, once, with the last value, and
/// exited 0. Restore, `dump` and `diff --metadata` use the exact bytes.
#[test]
fn xattr_names_that_are_not_utf8_keep_their_bytes() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = src.join("f");
    std::fs::write(&f, b"x\n").unwrap();
    let ff = std::ffi::OsStr::from_bytes(b"user.\xff");
    let fe = std::ffi::OsStr::from_bytes(b"user.\xfe");
    if let Err(e) = xattr::set(&f, ff, b"one") {
        eprintln!("NOTICE: skipping: user xattrs not supported here: {e}");
        return;
    }
    xattr::set(&f, fe, b"two").unwrap();
    xattr::set(&f, "user.plain=%", b"three").unwrap();
    let xattrs = |p: &Path| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all: Vec<_> = xattr::list(p)
            .unwrap()
            .filter(|n| n.as_bytes().starts_with(b"user."))
            .map(|n| (n.as_bytes().to_vec(), xattr::get(p, &n).unwrap().unwrap()))
            .collect();
        all.sort();
        all
    };
    let want = vec![
        (b"user.plain=%".to_vec(), b"three".to_vec()),
        (b"user.\xfe".to_vec(), b"two".to_vec()),
        (b"user.\xff".to_vec(), b"one".to_vec()),
    ];
    assert_eq!(xattrs(&f), want);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));

    let target = env.path("restored");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let restored = target.join(f.strip_prefix("/").unwrap());
    assert_eq!(xattrs(&restored), want, "restored");

    // dump: GNU tar extracts the same names (it decodes its `%3D`).
    let out = env.vault(&["dump", "latest", src.to_str().unwrap()]);
    assert_success(&out);
    let tar = env.path("src.tar");
    std::fs::write(&tar, &out.stdout).unwrap();
    let into = env.path("extracted");
    std::fs::create_dir_all(&into).unwrap();
    assert_success(
        &std::process::Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-xf"])
            .arg(&tar)
            .arg("-C")
            .arg(&into)
            .output()
            .unwrap(),
    );
    let extracted = into.join(f.strip_prefix("/").unwrap());
    assert_eq!(xattrs(&extracted), want, "extracted from the dump");

    // diff: a name that changed only in its non-UTF-8 byte is a change.
    xattr::remove(&f, ff).unwrap();
    xattr::remove(&f, fe).unwrap();
    xattr::set(&f, std::ffi::OsStr::from_bytes(b"user.\xfd"), b"one").unwrap();
    xattr::set(&f, fe, b"two").unwrap();
    let first = env.snapshots()[0]["id"].as_str().unwrap().to_owned();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let out = env.vault(&["diff", "--metadata", &first, "latest"]);
    assert_success(&out);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('U') && l.ends_with(&format!("{}", f.display()))),
        "{listing}"
    );
}

/// A file time beyond what a snapshot holds (years -9999 to 9999; tmpfs
/// takes later ones) was stored as 1970, silently, exit 0. It is stored as
/// the nearest time the format holds, with a warning naming the file and
/// its real time, and the backup counts it as an entry it could not save
/// whole (exit 3), as one whose extended attributes it could not read.
#[test]
fn a_time_beyond_year_9999_is_stored_as_the_nearest_one_with_a_warning() {
    let env = Env::new();
    let dir = tempfile::Builder::new()
        .prefix("vault-e2e-times")
        .tempdir_in("/dev/shm")
        .unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let (late, early, plain) = (src.join("late"), src.join("early"), src.join("plain"));
    for f in [&late, &early, &plain] {
        std::fs::write(f, b"x\n").unwrap();
    }
    let set = |f: &Path, secs: i64, nanos: u32| {
        let t = filetime::FileTime::from_unix_time(secs, nanos);
        filetime::set_file_times(f, t, t)
            .ok()
            .and_then(|()| std::fs::metadata(f).ok())
            .is_some_and(|m| m.mtime() == secs)
    };
    if !set(&late, 569_000_000_000, 5) || !set(&early, -569_000_000_000, 0) {
        eprintln!("NOTICE: skipping: /dev/shm does not take times beyond year 9999");
        return;
    }
    let out = env.vault(&["backup", src.to_str().unwrap()]);
    assert_code(&out, 3);
    let err = stderr(&out);
    let warned = |f: &Path, real: &str, stored: &str| {
        err.lines().any(|l| {
            l.contains("warning")
                && l.contains(&f.display().to_string())
                && l.contains(&format!("mtime {real} "))
                && l.contains(stored)
        })
    };
    assert!(
        warned(
            &late,
            "+20000-11-22T03:33:20.000000005Z",
            "stored as 9999-12-30T22:00:00.999999999Z"
        ),
        "{err}"
    );
    assert!(
        warned(
            &early,
            "-16061-02-09T20:26:40Z",
            "stored as -009999-01-02T01:59:59Z"
        ),
        "{err}"
    );
    assert!(!err.contains(&plain.display().to_string()), "{err}");

    // Restored on tmpfs too: ext4 holds times up to 2446 only.
    let target = dir.path().join("restored");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let mtime = |f: &Path| {
        let m = std::fs::metadata(target.join(f.strip_prefix("/").unwrap())).unwrap();
        m.mtime()
    };
    assert_eq!(
        mtime(&late),
        253_402_207_200,
        "9999-12-30T22:00:00Z, not 1970"
    );
    assert_eq!(mtime(&early), -377_705_023_201, "-9999-01-02T01:59:59Z");
    assert_eq!(
        mtime(&plain),
        std::fs::metadata(&plain).unwrap().mtime(),
        "the rest as it was"
    );
}

/// As root, a restore into a directory another user controls is refused:
/// restoring works by path, so that user could swap a directory the
/// restore just made for a symlink to /etc between its mkdir and the
/// files created in it. Refused when the target or a directory on the way
/// is theirs or writable by others; `--allow-unsafe-target` restores
/// anyway (a symlink put in the way beforehand is still replaced, not
/// followed). A target that is a symlink root made is followed, and a
/// sticky directory everyone may write (/tmp) is no danger on the way.
#[test]
fn root_refuses_a_restore_target_another_user_controls() {
    if !is_root() {
        eprintln!("NOTICE: skipping: the check is root's");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/file"), b"restored").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let nobody = |path: &Path| std::os::unix::fs::lchown(path, Some(65534), Some(65534)).unwrap();
    let restore = |target: &Path, extra: &[&str]| {
        let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        args.extend_from_slice(extra);
        env.vault(&args)
    };
    // Where the snapshot's first directory lands in a target.
    let first = |target: &Path| {
        let rel = src.strip_prefix("/").unwrap();
        target.join(rel.components().next().unwrap())
    };
    let victim = env.path("victim");
    std::fs::create_dir_all(&victim).unwrap();

    // Owned by nobody, who put a symlink where the restore makes a
    // directory.
    let target = env.path("restore-into-nobodys");
    std::fs::create_dir_all(&target).unwrap();
    nobody(&target);
    std::os::unix::fs::symlink(&victim, first(&target)).unwrap();
    nobody(&first(&target));
    for extra in [&[][..], &["--overwrite", "always"]] {
        let out = restore(&target, extra);
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "not restoring as root into {}: {} is owned by uid 65534",
                target.display(),
                target.display()
            )) && err.contains("--allow-unsafe-target"),
            "{err}"
        );
    }
    assert!(
        std::fs::symlink_metadata(first(&target))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    // A target root makes in nobody's directory: nobody can still rename it.
    let home = env.path("home-of-nobody");
    std::fs::create_dir_all(&home).unwrap();
    nobody(&home);
    let made = home.join("made-by-root");
    let out = restore(&made, &[]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains(&format!("{} is owned by uid 65534", home.display())),
        "{}",
        stderr(&out)
    );
    // Made (empty) before the check, so that what is checked is what the
    // restore would use; nothing restored into it.
    assert_eq!(std::fs::read_dir(&made).unwrap().count(), 0);
    // Writable by all (without the sticky bit): refused too.
    let open = env.path("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = restore(&open, &[]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("is writable by every user"),
        "{}",
        stderr(&out)
    );
    // Overridden: the symlink put in the way is replaced, never followed.
    let out = restore(&target, &["--overwrite", "always", "--allow-unsafe-target"]);
    assert_success(&out);
    let rel = src.strip_prefix("/").unwrap();
    assert_eq!(
        std::fs::read(target.join(rel).join("dir/file")).unwrap(),
        b"restored"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);

    // Root's own: a target in a sticky directory all may write, and a
    // target that is a symlink root made, followed.
    let shared = env.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert_success(&restore(&shared.join("restore"), &[]));
    let real = env.path("real");
    std::fs::create_dir_all(&real).unwrap();
    let link = env.path("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_success(&restore(&link, &[]));
    assert_eq!(
        std::fs::read(real.join(rel).join("dir/file")).unwrap(),
        b"restored"
    );
}

/// `dump --archive zip` (restic's `-a zip`): a directory as a zip stream
/// on standard output (no seeking: data descriptors), with modes, file
/// types and mtimes, symlinks as restic writes them (the target as the
/// content), non-UTF-8 names as their bytes, a directory's too (its own
/// entry, as restic writes it); what zip cannot hold (a fifo) left out, as
/// restic leaves it out. A file is still written as it is.
#[test]
fn dump_writes_a_directory_as_a_zip_stream() {
    use std::io::Read;
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let data = pseudo_random(300_000, 11);
    std::fs::write(src.join("big"), &data).unwrap();
    std::fs::write(src.join("d/small"), b"small\n").unwrap();
    std::fs::write(src.join("d/empty"), b"").unwrap();
    std::fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
        b"latin-1",
    )
    .unwrap();
    let latin_dir = src.join(std::ffi::OsStr::from_bytes(b"d\xe9p\xf4t"));
    std::fs::create_dir(&latin_dir).unwrap();
    std::fs::write(latin_dir.join("in"), b"inside").unwrap();
    std::fs::set_permissions(&latin_dir, std::fs::Permissions::from_mode(0o710)).unwrap();
    std::os::unix::fs::symlink("big", src.join("link")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::set_permissions(src.join("big"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    std::fs::set_permissions(src.join("d"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(src.join("d/small"), std::fs::Permissions::from_mode(0o644)).unwrap();
    // 2020-05-06 07:08:10 UTC.
    let mtime = 1_588_748_890;
    filetime::set_file_mtime(
        src.join("d/small"),
        filetime::FileTime::from_unix_time(mtime, 0),
    )
    .unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));

    let out = env.vault(&["dump", "latest", src.to_str().unwrap(), "--archive", "zip"]);
    assert_success(&out);
    let archive = out.stdout;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive.clone())).unwrap();
    let prefix = src.to_str().unwrap().trim_start_matches('/').to_owned();
    let mut names: Vec<Vec<u8>> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name_raw().to_vec())
        .collect();
    names.sort();
    let mut expected: Vec<Vec<u8>> = ["/", "/big", "/d/", "/d/empty", "/d/small", "/link"]
        .iter()
        .map(|rel| format!("{prefix}{rel}").into_bytes())
        .collect();
    expected.push([prefix.as_bytes(), b"/caf\xe9"].concat());
    let latin_name = [prefix.as_bytes(), b"/d\xe9p\xf4t/"].concat();
    expected.push(latin_name.clone());
    expected.push([&latin_name[..], b"in"].concat());
    expected.sort();
    assert_eq!(
        names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>(),
        "the fifo is left out"
    );
    let mut entry = |rel: &str| -> (u32, Vec<u8>, Option<u32>) {
        let mut f = zip.by_name(&format!("{prefix}{rel}")).unwrap();
        let stamp = f.extra_data_fields().find_map(|e| match e {
            zip::ExtraField::ExtendedTimestamp(t) => t.mod_time(),
            _ => None,
        });
        // The Unix mode as written: the reader's `unix_mode` clears the
        // setuid, setgid and sticky bits.
        let mode = f.external_attributes() >> 16;
        let mut content = Vec::new();
        f.read_to_end(&mut content).unwrap();
        (mode, content, stamp)
    };
    let (mode, content, _) = entry("/big");
    assert_eq!(mode, 0o104_751, "{mode:o}");
    assert!(content == data, "big: content differs");
    let (mode, content, stamp) = entry("/d/small");
    assert_eq!(
        (mode, content.as_slice()),
        (0o100_644, &b"small\n"[..]),
        "{mode:o}"
    );
    assert_eq!(stamp, Some(u32::try_from(mtime).unwrap()));
    let (mode, _, _) = entry("/d/");
    assert_eq!(mode, 0o040_750, "{mode:o}");
    let (mode, target, _) = entry("/link");
    assert_eq!(
        (mode & 0o170_000, target.as_slice()),
        (0o120_000, &b"big"[..]),
        "{mode:o}"
    );
    // The MS-DOS attributes (the low byte, as the central directory gives
    // it): 0x10 marks a directory for the tools that go by them.
    for (rel, want) in [("/", 0x10), ("/d/", 0x10), ("/d/small", 0), ("/link", 0)] {
        let attributes = zip
            .by_name(&format!("{prefix}{rel}"))
            .unwrap()
            .external_attributes();
        assert_eq!(attributes & 0xff, want, "{rel}: {attributes:#x}");
    }

    // The directory whose name is not UTF-8: an entry of its own, a
    // directory with its mode, the name's bytes without the UTF-8 flag (bit
    // 11 of the flags, 6 bytes into the local header that ends 30 bytes
    // after its start, where the name follows).
    let index = (0..zip.len())
        .find(|&i| zip.by_index(i).unwrap().name_raw() == latin_name)
        .unwrap();
    let dir = zip.by_index(index).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.external_attributes() >> 16, 0o040_710);
    assert_eq!(dir.external_attributes() & 0xff, 0x10);
    let stamp = dir.extra_data_fields().find_map(|e| match e {
        zip::ExtraField::ExtendedTimestamp(t) => t.mod_time(),
        _ => None,
    });
    assert!(stamp.is_some(), "the directory's mtime");
    drop(dir);
    let at = archive
        .windows(latin_name.len())
        .position(|w| w == latin_name)
        .unwrap();
    let flags = u16::from_le_bytes([archive[at - 30 + 6], archive[at - 30 + 7]]);
    assert_eq!(flags & 0x800, 0, "UTF-8 flag set: {flags:#x}");

    // A file is its content, archive or not.
    let small = format!("{}/d/small", src.display());
    let out = env.vault(&["dump", "-a", "zip", "latest", &small]);
    assert_success(&out);
    assert_eq!(out.stdout, b"small\n");
}
