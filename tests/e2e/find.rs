//! `vault find`: name and path patterns, case, snapshot selection, text and
//! JSON output; on local disk and on S3.

use crate::support::{Backend, Env, assert_success};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

/// Two snapshots of `src`: `b/new.log` is only in the second.
struct Fixture {
    env: Env,
    /// Where `src` lands in the snapshots (its absolute path).
    src: String,
    first: String,
    second: String,
}

fn fixture(backend: Backend) -> Fixture {
    let env = Env::on(backend);
    let root = env.path("src");
    for (rel, data) in [
        ("a/x.txt", "x"),
        ("a/deep/z.txt", "z"),
        ("a/deep/app.log", "app log"),
        ("b/y.txt", "y"),
        ("b/ERR.LOG", "ERR"),
        ("b/ÄRGER.md", "grr"),
        ("top.log", "top"),
    ] {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // File times for --oldest/--newest: the rest were modified now.
    for (rel, at) in [
        ("top.log", 1_748_736_000),
        ("a/deep/app.log", 1_764_547_200),
    ] {
        // 2025-06-01 and 2025-12-01, 00:00 UTC.
        let when = filetime::FileTime::from_unix_time(at, 0);
        filetime::set_file_mtime(root.join(rel), when).unwrap();
    }
    let src = root.to_str().unwrap().to_owned();
    let backup = |time: &str| assert_success(&env.vault(&["backup", "--time", time, &src]));
    backup("2026-01-09 02:30:00");
    std::fs::write(root.join("b/new.log"), "fresh").unwrap();
    backup("2026-01-10 02:30:00");
    let snaps = env.snapshots();
    let id = |i: usize| snaps[i]["id"].as_str().unwrap().to_owned();
    let (first, second) = (id(0), id(1));
    // Paths in the snapshot are the backed-up absolute paths.
    let ls = env.vault(&["ls", "latest"]);
    assert_success(&ls);
    assert!(
        String::from_utf8_lossy(&ls.stdout)
            .lines()
            .any(|l| l == format!("{src}/a/x.txt")),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );
    Fixture {
        env,
        src,
        first,
        second,
    }
}

impl Fixture {
    /// `vault find ARGS --json`: every match as (snapshot id, path relative
    /// to `src`), after checking restic's shape: one array of snapshots
    /// with matches, each `{"matches": [...], "hits": N, "snapshot": ID}`.
    fn find(&self, args: &[&str]) -> BTreeSet<(String, String)> {
        let mut all = vec!["find", "--json"];
        all.extend_from_slice(args);
        let out = self.env.vault(&all);
        assert_success(&out);
        let text = String::from_utf8(out.stdout).unwrap();
        let groups: Vec<serde_json::Value> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not one JSON array {text:?}: {e}"));
        let mut found = BTreeSet::new();
        for group in &groups {
            let snapshot = group["snapshot"].as_str().unwrap().to_owned();
            assert!(snapshot == self.first || snapshot == self.second, "{group}");
            let matches = group["matches"].as_array().unwrap();
            assert!(!matches.is_empty(), "a snapshot without matches: {group}");
            assert_eq!(group["hits"], matches.len(), "{group}");
            for m in matches {
                for key in ["type", "size", "mtime", "mode", "permissions"] {
                    assert!(m.get(key).is_some(), "missing {key}: {m}");
                }
                let path = m["path"].as_str().unwrap();
                let rel = path
                    .strip_prefix(&format!("{}/", self.src))
                    .unwrap_or_else(|| panic!("{path} not under {}", self.src));
                assert!(found.insert((snapshot.clone(), rel.to_owned())), "{text}");
            }
        }
        found
    }

    /// The expected set: each path in each listed snapshot.
    fn both(&self, paths: &[&str]) -> BTreeSet<(String, String)> {
        let mut set = self.only(&self.first, paths);
        set.extend(self.only(&self.second, paths));
        set
    }

    fn only(&self, snapshot: &str, paths: &[&str]) -> BTreeSet<(String, String)> {
        paths
            .iter()
            .map(|p| (snapshot.to_owned(), (*p).to_owned()))
            .collect()
    }
}

backend_test!(find_matches_names_and_paths_in_snapshots);
fn find_matches_names_and_paths_in_snapshots(backend: Backend) {
    let f = fixture(backend);

    // A name pattern finds files at any depth, in both snapshots; the file
    // added later only in the second. Case matters by default.
    let mut want = f.both(&["a/deep/app.log", "top.log"]);
    want.insert((f.second.clone(), "b/new.log".into()));
    assert_eq!(f.find(&["*.log"]), want);

    // --ignore-case / -i.
    let mut want_i = want.clone();
    want_i.extend(f.both(&["b/ERR.LOG"]));
    assert_eq!(f.find(&["--ignore-case", "*.log"]), want_i);
    assert_eq!(f.find(&["-i", "*.LOG"]), want_i);
    // Beyond ASCII, as restic lower-cases both sides: the glob's own case
    // folding left `Ä` apart from `ä`.
    assert_eq!(f.find(&["-i", "ärger.*"]), f.both(&["b/ÄRGER.md"]));
    assert_eq!(f.find(&["ärger.*"]), BTreeSet::new());

    // A path pattern: `*` stays in `a`, not in `a/deep` nor `b`; a relative
    // one may match at any depth.
    let abs = format!("{}/a/*.txt", f.src);
    assert_eq!(f.find(&[&abs]), f.both(&["a/x.txt"]));
    assert_eq!(f.find(&["a/*.txt"]), f.both(&["a/x.txt"]));
    assert_eq!(
        f.find(&[&format!("{}/a/**/*.txt", f.src)]),
        f.both(&["a/deep/z.txt", "a/x.txt"])
    );
    // Case-insensitive paths too.
    assert_eq!(f.find(&["-i", &abs.to_uppercase()]), f.both(&["a/x.txt"]));
    // Several patterns: any may match; directories match too.
    assert_eq!(f.find(&["deep", "y.txt"]), f.both(&["a/deep", "b/y.txt"]));

    // --snapshot restricts the search.
    assert_eq!(
        f.find(&["--snapshot", &f.first[..8], "*.log"]),
        f.only(&f.first, &["a/deep/app.log", "top.log"])
    );
    assert_eq!(
        f.find(&["--snapshot", &f.second, "--snapshot", "latest", "new.log"]),
        f.only(&f.second, &["b/new.log"])
    );
    // --oldest/-O and --newest/-N filter entries by modification time, as
    // restic's: top.log is of 2025-06, app.log of 2025-12, new.log of now.
    // They selected snapshots by time before.
    assert_eq!(
        f.find(&["--newest", "2025-07-01", "*.log"]),
        f.both(&["top.log"])
    );
    let mut later = f.both(&["a/deep/app.log"]);
    later.insert((f.second.clone(), "b/new.log".into()));
    assert_eq!(f.find(&["--oldest", "2025-07-01", "*.log"]), later);
    assert_eq!(
        f.find(&["-O", "2025-07-01", "-N", "2026-01-01", "*.log"]),
        f.both(&["a/deep/app.log"])
    );
    assert!(f.find(&["--oldest", "2100-01-01", "*"]).is_empty());

    // JSON fields of one match, in restic's words: one snapshot, one match.
    let out = f.env.vault(&["find", "--json", "new.log"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let groups: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(groups.as_array().unwrap().len(), 1, "{text}");
    assert_eq!(groups[0]["snapshot"], f.second.as_str());
    assert_eq!(groups[0]["hits"], 1);
    assert_eq!(groups[0]["matches"].as_array().unwrap().len(), 1, "{text}");
    let v = &groups[0]["matches"][0];
    assert_eq!(v["type"], "file");
    assert_eq!(v["size"], 5);
    assert_eq!(v["mode"], 0o644);
    assert_eq!(v["permissions"], "-rw-r--r--");
    assert_eq!(v["path"], format!("{}/b/new.log", f.src));
    assert!(
        v["mtime"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "{v}"
    );

    // Text: a header per snapshot with matches, then mode, size, mtime, path.
    let out = f.env.vault(&["find", "*.log"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Found matching entries in snapshot "))
        .collect();
    assert_eq!(
        headers,
        [
            format!(
                "Found matching entries in snapshot {} from 2026-01-09 02:30:00",
                &f.first[..8]
            ),
            format!(
                "Found matching entries in snapshot {} from 2026-01-10 02:30:00",
                &f.second[..8]
            ),
        ],
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.ends_with("/b/new.log"))
        .unwrap_or_else(|| panic!("no new.log line in {text}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[0], "-rw-r--r--", "{line}");
    assert_eq!(fields[1], "5", "{line}");
    assert_eq!(
        fields.last().copied(),
        Some(format!("{}/b/new.log", f.src).as_str())
    );
    assert_eq!(text.matches("/top.log").count(), 2, "{text}");

    // No match: says so, and succeeds.
    let out = f.env.vault(&["find", "nothing-*.zzz"]);
    assert_success(&out);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "no matches\n");
    let out = f.env.vault(&["find", "--json", "nothing-*.zzz"]);
    assert_success(&out);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[]\n");

    // An invalid pattern is an error.
    let out = f.env.vault(&["find", "a[b"]);
    assert!(!out.status.success());
}

/// The ids `vault cat tree SNAPSHOT:DIR` lists for DIR's entries: their
/// content (a file's first blob) or subtree (a directory's).
fn ids_in(env: &Env, spec: &str) -> std::collections::BTreeMap<String, String> {
    env.tree_nodes(spec)
        .iter()
        .map(|n| {
            let id = n["content"][0]
                .as_str()
                .or(n["subtree"].as_str())
                .unwrap_or("");
            (n["name"].as_str().unwrap().to_owned(), id.to_owned())
        })
        .collect()
}

/// The pack the index places blob `id` in, read with `vault cat index`.
fn pack_of(env: &Env, id: &str) -> String {
    for (key, _) in env.objects() {
        let Some(index) = key.strip_prefix("index/") else {
            continue;
        };
        let out = env.vault(&["cat", "index", index]);
        assert_success(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for pack in v["packs"].as_array().unwrap() {
            if pack["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["id"] == id)
            {
                return pack["id"].as_str().unwrap().to_owned();
            }
        }
    }
    panic!("blob {id} is in no index");
}

/// restic's `find --blob`, `--tree`, `--pack` and `--show-pack-id`: where
/// objects are used, per snapshot, in restic's words and in JSON.
#[test]
fn find_tells_where_blobs_trees_and_packs_are_used() {
    let env = Env::new();
    let root = env.path("src");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("one"), "same").unwrap();
    std::fs::write(root.join("d/two"), "same").unwrap();
    std::fs::write(root.join("other"), "other").unwrap();
    let src = root.to_str().unwrap();
    assert_success(&env.vault(&["backup", "--time", "2026-01-09 02:30:00", src]));
    std::fs::write(root.join("three"), "same").unwrap();
    assert_success(&env.vault(&["backup", "--time", "2026-01-10 02:30:00", src]));
    let snaps = env.snapshots();
    let snap = |i: usize| snaps[i]["id"].as_str().unwrap().to_owned();
    let ids = ids_in(&env, &format!("latest:{src}"));
    let (same, dir) = (ids["one"].clone(), ids["d"].clone());
    let out = env.vault(&["cat", "snapshot", "latest"]);
    assert_success(&out);
    let latest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root_tree = latest["tree"].as_str().unwrap().to_owned();

    // Text, by a prefix: each file holding the blob, in each snapshot.
    let out = env.vault(&["find", "--blob", &same[..8]]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches(&format!("Found blob {same}\n")).count(),
        5,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Found blob {same}\n ... in file {src}/d/two\n     (tree {dir})\n ... in snapshot {} (",
            &snap(0)[..8]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(" ... in file {src}/three\n")),
        "{text}"
    );
    assert!(!text.contains("/other"), "{text}");

    // JSON: one array of every place, restic's fields.
    let places = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = env.vault(args);
        assert_success(&out);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not one JSON array: {e}: {out:?}"))
    };
    let lines = places(&["find", "--blob", &same, "--json"]);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["object_type"], "blob");
    assert_eq!(first["id"], same.as_str());
    assert_eq!(first["path"], format!("{src}/d/two"));
    assert_eq!(first["parent_tree"], dir.as_str());
    assert_eq!(first["snapshot"], snap(0).as_str());
    // The snapshot's time as RFC 3339, as restic writes it.
    assert_eq!(first["time"], snaps[0]["time"], "{first}");
    assert!(first.get("message_type").is_none(), "{first}");
    assert!(first.get("packs").is_none(), "{first}");
    let trees = places(&["find", "--tree", &dir, "--json"]);
    assert_eq!(trees.len(), 2, "{trees:?}");
    assert_eq!(trees[0]["object_type"], "tree");
    assert_eq!(trees[0]["path"], format!("{src}/d"));
    assert!(trees[0].get("parent_tree").is_none(), "{trees:?}");
    // Nothing found: an empty array.
    assert!(places(&["find", "--blob", "0000000000", "--json"]).is_empty());

    // A tree: where it is listed, the same directory in both snapshots;
    // a snapshot's root tree is `/`.
    let out = env.vault(&["find", "--tree", &dir, &root_tree[..12]]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches(&format!("Found tree {dir}\n ... path {src}/d\n"))
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains(&format!("Found tree {root_tree}\n ... path /\n")),
        "{text}"
    );

    // A pack: every blob the index places in it, here the small files'.
    let pack = pack_of(&env, &same);
    let paths: BTreeSet<String> = places(&["find", "--pack", &pack, "--json"])
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .collect();
    for name in ["one", "d/two", "three", "other"] {
        assert!(
            paths.contains(&format!("{src}/{name}")),
            "{name}: {paths:?}"
        );
    }

    // Where each object found is stored.
    let out = env.vault(&["find", "--blob", &same, "--show-pack-id"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "Object belongs to pack {pack}\n ... Pack {}: <Blob (data) {}, offset ",
            &pack[..8],
            &same[..8]
        )),
        "{text}"
    );
    // In JSON, each place lists the packs holding its object: restic
    // prints the text lines after its array, which is then no JSON.
    let with_packs = places(&["find", "--blob", &same, "--show-pack-id", "--json"]);
    assert_eq!(with_packs.len(), 5, "{with_packs:?}");
    for place in &with_packs {
        let packs = place["packs"].as_array().unwrap();
        assert_eq!(packs.len(), 1, "{place}");
        assert_eq!(packs[0]["pack_id"], pack.as_str(), "{place}");
        for key in ["offset", "length", "uncompressed_length"] {
            assert!(packs[0][key].is_u64(), "{key}: {place}");
        }
    }

    // Nothing found is no error; an id that is not hex is a usage error
    // (nothing opened), a pack no index lists an error.
    let out = env.vault(&["find", "--blob", "0000000000"]);
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no matches\n");
    let out = env.vault(&["find", "--blob", "not-hex"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = env.vault(&["find", "--pack", "0000000000"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pack 0000000000"),
        "{out:?}"
    );
    // --show-pack-id goes with an id flag; the id flags one at a time.
    for args in [
        &["find", "x", "--show-pack-id"][..],
        &["find", "--blob", "--tree", "00"],
    ] {
        assert_eq!(env.vault(args).status.code(), Some(2), "{args:?}");
    }
}

/// `find --json` matches carry what restic's do of the node: owner ids and
/// names, ctime (atime where recorded), inode, device, link count and a
/// symlink's target. And a search that fails midway (a later snapshot's
/// tree missing) closes the array it printed before the error goes to
/// stderr: stdout stays one JSON value, with the matches found before.
#[test]
fn find_json_carries_the_nodes_fields_and_stays_valid_when_a_search_fails() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("one.txt"), "one").unwrap();
    std::fs::hard_link(src.join("one.txt"), src.join("two.txt")).unwrap();
    std::os::unix::fs::symlink("one.txt", src.join("link.txt")).unwrap();
    let s = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", "--time", "2026-01-09 02:30:00", s]));

    let out = env.vault(&["find", "--json", "*.txt"]);
    assert_success(&out);
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let matches = groups[0]["matches"].as_array().unwrap();
    let by_name = |name: &str| {
        (matches.iter())
            .find(|m| m["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("no {name} in {groups}"))
    };
    let meta = std::fs::metadata(src.join("one.txt")).unwrap();
    let one = by_name("/one.txt");
    assert_eq!(one["uid"], meta.uid(), "{one}");
    assert_eq!(one["gid"], meta.gid(), "{one}");
    assert_eq!(one["inode"], meta.ino(), "{one}");
    assert_eq!(one["device_id"], meta.dev(), "{one}");
    assert_eq!(one["links"], 2, "{one}");
    let ctime: jiff::Timestamp = one["ctime"].as_str().unwrap().parse().unwrap();
    assert_eq!(ctime.as_second(), meta.ctime(), "{one}");
    if meta.uid() == 0 {
        assert_eq!(one["user"], "root", "{one}");
    }
    assert!(one.get("atime").is_none(), "not recorded by default: {one}");
    assert_eq!(by_name("/link.txt")["linktarget"], "one.txt");

    // A second snapshot whose trees are gone: its search fails.
    let before: std::collections::BTreeSet<String> = crate::support::packs_of_kind(&env, "tree")
        .into_iter()
        .collect();
    std::fs::create_dir(src.join("new")).unwrap();
    std::fs::write(src.join("new/three.txt"), "three").unwrap();
    assert_success(&env.vault(&["backup", "--time", "2026-01-10 02:30:00", s]));
    for pack in crate::support::packs_of_kind(&env, "tree") {
        if !before.contains(&pack) {
            env.delete_object(&pack);
        }
    }
    for args in [
        &["find", "--json", "*.txt"][..],
        &["find", "--json", "--tree", "0"],
    ] {
        let out = env.vault(args);
        assert!(!out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout.clone()).unwrap();
        let printed: Vec<serde_json::Value> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON array {text:?}: {e}"));
        assert!(!crate::support::stderr(&out).is_empty(), "{args:?}");
        if args[2] == "*.txt" {
            assert_eq!(printed.len(), 1, "the first snapshot's matches: {text}");
            assert_eq!(printed[0]["hits"], 3, "{text}");
        }
    }
}
