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
    /// to `src`), after checking each object's fields.
    fn find(&self, args: &[&str]) -> BTreeSet<(String, String)> {
        let mut all = vec!["find", "--json"];
        all.extend_from_slice(args);
        let out = self.env.vault(&all);
        assert_success(&out);
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("invalid JSON {line:?}: {e}"));
                assert_eq!(v["message_type"], "match", "{line}");
                for key in ["type", "size", "mtime", "mode"] {
                    assert!(v.get(key).is_some(), "missing {key}: {line}");
                }
                let snapshot = v["snapshot"].as_str().unwrap().to_owned();
                assert!(snapshot == self.first || snapshot == self.second, "{line}");
                let path = v["path"].as_str().unwrap();
                let rel = path
                    .strip_prefix(&format!("{}/", self.src))
                    .unwrap_or_else(|| panic!("{path} not under {}", self.src));
                (snapshot, rel.to_owned())
            })
            .collect()
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

    // --snapshot restricts the search; so do --oldest and --newest.
    assert_eq!(
        f.find(&["--snapshot", &f.first[..8], "*.log"]),
        f.only(&f.first, &["a/deep/app.log", "top.log"])
    );
    assert_eq!(
        f.find(&["--snapshot", &f.second, "--snapshot", "latest", "new.log"]),
        f.only(&f.second, &["b/new.log"])
    );
    assert_eq!(
        f.find(&["--newest", "2026-01-09 12:00", "*.log"]),
        f.only(&f.first, &["a/deep/app.log", "top.log"])
    );
    assert_eq!(
        f.find(&["--oldest", "2026-01-09 12:00", "top.log"]),
        f.only(&f.second, &["top.log"])
    );
    assert!(f.find(&["--oldest", "2026-01-11", "*"]).is_empty());

    // JSON fields of one match.
    let out = f.env.vault(&["find", "--json", "new.log"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["type"], "file");
    assert_eq!(v["size"], 5);
    assert_eq!(v["mode"], 0o644);
    assert_eq!(v["snapshot"], f.second.as_str());
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
    assert!(out.stdout.is_empty());

    // An invalid pattern is an error.
    let out = f.env.vault(&["find", "a[b"]);
    assert!(!out.status.success());
}
