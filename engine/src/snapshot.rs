//! Snapshots (repo-format.md §10): JSON documents naming a root tree, the
//! backed-up paths and who/when. Field names follow restic's so scripts
//! that read `snapshots --json` carry over.
#![warn(clippy::indexing_slicing)]

use crate::id::{BlobId, SnapshotId};
use serde::{Deserialize, Serialize};

/// Counters recorded by the backup that made the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotSummary {
    /// When the backup started.
    pub backup_start: Option<jiff::Timestamp>,
    /// When it finished.
    pub backup_end: Option<jiff::Timestamp>,
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files whose metadata changed since the parent.
    pub files_changed: u64,
    /// Files reused from the parent without reading.
    pub files_unmodified: u64,
    /// Directories seen.
    pub dirs_total: u64,
    /// Blobs this backup added.
    pub data_blobs: u64,
    /// Tree blobs this backup added.
    pub tree_blobs: u64,
    /// Plaintext bytes of new blobs.
    pub data_added: u64,
    /// Stored (compressed, sealed) bytes of new blobs.
    pub data_added_packed: u64,
    /// Files in the snapshot.
    pub total_files_processed: u64,
    /// Logical size of the snapshot.
    pub total_bytes_processed: u64,
    /// Entries that could not be read and were skipped.
    pub errors: u64,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version of the snapshot document, 1.
    pub version: u32,
    /// When the backup was taken, with the writer's UTC offset.
    #[serde(with = "zoned_rfc3339")]
    pub time: jiff::Zoned,
    /// Root tree.
    pub tree: BlobId,
    /// Backed-up paths (absolute), or the stdin file name.
    pub paths: Vec<String>,
    /// Host name.
    pub hostname: String,
    /// User name.
    pub username: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Tags, sorted.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Snapshot used to skip unchanged files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    /// For a snapshot rewritten by `repair snapshots` or `tag`, or copied:
    /// the one it replaces or was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<SnapshotId>,
    /// Writer version.
    pub program_version: String,
    /// Whether the backup recorded inode flags (repo-format.md §9): a
    /// file node without `inode_flags` has none. Snapshots by vault before
    /// inode flags lack it, and a later backup reads the flags of files
    /// it finds unchanged since such a parent rather than take none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inode_flags: bool,
    /// Counters.
    #[serde(default)]
    pub summary: SnapshotSummary,
    /// Fields this version does not know (a newer writer's): kept, so that
    /// rewriting a snapshot (tag, repair, copy) does not drop them.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A snapshot document that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed snapshot: {0}")]
pub struct SnapshotError(String);

impl Snapshot {
    /// JSON bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshots serialise")
    }

    /// Decodes JSON bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let snap: Snapshot =
            serde_json::from_slice(bytes).map_err(|e| SnapshotError(e.to_string()))?;
        if snap.version != 1 {
            return Err(SnapshotError(format!(
                "unsupported version {}",
                snap.version
            )));
        }
        Ok(snap)
    }

    /// Logical size, for listings.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.summary.total_bytes_processed
    }
}

/// Snapshot times keep the writer's UTC offset (retention buckets by it),
/// stored as RFC 3339 with that offset, e.g. `2026-01-10T03:00:00+01:00`.
mod zoned_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(z: &jiff::Zoned, s: S) -> Result<S::Ok, S::Error> {
        let ts = z.timestamp();
        let offset = z.offset();
        s.serialize_str(&ts.display_with_offset(offset).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<jiff::Zoned, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let ts: jiff::Timestamp = s.parse().map_err(serde::de::Error::custom)?;
        let offset = parse_offset(&s).map_err(serde::de::Error::custom)?;
        Ok(ts.to_zoned(jiff::tz::TimeZone::fixed(offset)))
    }

    fn parse_offset(s: &str) -> Result<jiff::tz::Offset, String> {
        if s.ends_with('Z') || s.ends_with('z') {
            return Ok(jiff::tz::Offset::UTC);
        }
        let tail = s.get(s.len().saturating_sub(6)..).ok_or("no offset")?;
        let sign = match tail.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err("no UTC offset in time".into()),
        };
        let hours: i32 = tail
            .get(1..3)
            .ok_or("offset")?
            .parse()
            .map_err(|_| "offset")?;
        let minutes: i32 = tail
            .get(4..6)
            .ok_or("offset")?
            .parse()
            .map_err(|_| "offset")?;
        jiff::tz::Offset::from_seconds(sign * (hours * 3600 + minutes * 60))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn time_keeps_its_offset() {
        let json = r#"{"version":1,"time":"2026-01-10T03:00:00.5+01:00","tree":"0000000000000000000000000000000000000000000000000000000000000000","paths":["/x"],"hostname":"h","username":"u","uid":0,"gid":0,"program_version":"t"}"#;
        let snap = Snapshot::decode(json.as_bytes()).unwrap();
        assert_eq!(snap.time.offset().seconds(), 3600);
        let again = Snapshot::decode(&snap.encode()).unwrap();
        assert_eq!(again, snap);
        assert!(
            String::from_utf8(snap.encode())
                .unwrap()
                .contains("03:00:00.5+01:00")
        );
    }
}

/// Restricts which snapshots a command considers (`--host`, `--tag`,
/// `--path`), with restic's meaning: any of the hosts; any of the tag
/// lists, where a list `a,b` needs both tags; every given path present.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Accepted host names (empty: any).
    pub hosts: Vec<String>,
    /// Tag lists; each element is a comma-separated AND list.
    pub tags: Vec<String>,
    /// Paths that must all be among the snapshot's paths.
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    /// Whether `s` passes the filter.
    #[must_use]
    pub fn matches(&self, s: &Snapshot) -> bool {
        let host_ok = self.hosts.is_empty() || self.hosts.contains(&s.hostname);
        let tags_ok = self.tags.is_empty()
            || (self.tags.iter()).any(|list| has_tags(&s.tags, &tag_list(list)));
        let paths_ok = self
            .paths
            .iter()
            .all(|p| s.paths.iter().any(|have| have == p.trim_end_matches('/')));
        host_ok && tags_ok && paths_ok
    }
}

/// One `--tag` or `--keep-tag` value (`a,b`: both tags) as a tag list, as
/// restic reads it: each tag trimmed of surrounding white space (`a, b` is
/// `a` and `b`, never ` b`). An empty value, or one starting with a comma,
/// keeps its leading empty tag, which stands for "has no tags"
/// ([`has_tags`]); other empty parts (`a,`) are dropped, where restic would
/// keep them and match nothing.
#[must_use]
pub fn tag_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .enumerate()
        .filter(|(i, t)| *i == 0 || !t.is_empty())
        .map(|(_, t)| t.to_owned())
        .collect()
}

/// restic's tag test: a snapshot with tags `have` must have every tag in
/// `list`. An empty tag stands for "has no tags at all". It is checked in
/// order, so it only matches if it comes before any real tag the snapshot
/// lacks. Stored tags are compared trimmed: earlier versions stored
/// ` keep` from `--tag "nightly, keep"`, and `--keep-tag keep` must still
/// protect such a snapshot.
#[must_use]
pub fn has_tags(have: &[String], list: &[String]) -> bool {
    for tag in list {
        if tag.is_empty() && have.is_empty() {
            return true;
        }
        if !have.iter().any(|h| h.trim() == tag) {
            return false;
        }
    }
    true
}

/// Tags as a snapshot stores them: trimmed of surrounding white space (a
/// list typed `nightly, keep` must give `keep`, which `--keep-tag keep`
/// then protects), without empty ones, sorted, without duplicates.
#[must_use]
pub fn stored_tags<S: AsRef<str>>(tags: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut out: Vec<String> = tags
        .into_iter()
        .map(|t| t.as_ref().trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A change to snapshots' tags, as `vault tag` (and `restic tag`) takes
/// it: replace them all, or add and remove some.
#[derive(Debug, Clone, Default)]
pub struct TagChange {
    /// Replace every tag with these (`--set`); applied before add/remove.
    pub set: Option<Vec<String>>,
    /// Tags to add.
    pub add: Vec<String>,
    /// Tags to remove.
    pub remove: Vec<String>,
}

impl TagChange {
    /// The tags `tags` become, as [`stored_tags`] has them.
    #[must_use]
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let remove = stored_tags(&self.remove);
        let kept = stored_tags(self.set.as_deref().unwrap_or(tags).iter().chain(&self.add));
        kept.into_iter().filter(|t| !remove.contains(t)).collect()
    }

    /// `snapshot` (stored as `id`) with its tags changed, recording the
    /// snapshot it replaces in `original` (kept if already set, so a copy
    /// or a second change still points at the first); `None` when its tags
    /// would not change.
    #[must_use]
    pub fn rewrite(&self, id: &SnapshotId, snapshot: &Snapshot) -> Option<Snapshot> {
        let tags = self.apply(&snapshot.tags);
        if tags == snapshot.tags {
            return None;
        }
        let mut new = snapshot.clone();
        new.tags = tags;
        new.original = Some(snapshot.original.unwrap_or(*id));
        Some(new)
    }
}

/// Why no snapshot was selected.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// Nothing matched.
    #[error("no snapshot matches {0}")]
    NoMatch(String),
    /// An id prefix matched several snapshots.
    #[error("snapshot id prefix {0} is ambiguous")]
    Ambiguous(String),
    /// Snapshots of different hosts, paths or tags share the newest time
    /// (every source of one configured run does): which one was meant is
    /// unknowable, and picking one would restore, list or forget it
    /// silently in place of the others.
    #[error(
        "{what} is ambiguous: {} snapshots were taken at {time} ({}); \
         choose one by id, or by --tag, --path or --host",
        .tied.len(), .tied.join(", ")
    )]
    Tied {
        /// `latest`, or the newest at or before a time.
        what: String,
        /// Their shared time.
        time: String,
        /// Each one's short id, tags and paths.
        tied: Vec<String>,
    },
}

/// Whether `a` and `b` are snapshots of the same thing (the same group by
/// host, paths and tags, as `forget --group-by host,paths,tags` sees it),
/// so that either may stand for the newest of them.
fn same_group(a: &Snapshot, b: &Snapshot) -> bool {
    let by = crate::retention::GroupBy {
        host: true,
        paths: true,
        tags: true,
    };
    by.key(&a.hostname, &a.paths, &a.tags) == by.key(&b.hostname, &b.paths, &b.tags)
}

/// The first of `newest_first` (snapshots passing a filter, newest first),
/// unless snapshots of another group share its time.
fn newest<'a>(
    mut newest_first: impl Iterator<Item = &'a (SnapshotId, Snapshot)>,
    what: impl FnOnce() -> String,
) -> Result<Option<&'a (SnapshotId, Snapshot)>, SelectError> {
    let Some(first) = newest_first.next() else {
        return Ok(None);
    };
    let time = first.1.time.timestamp();
    let tied: Vec<_> = newest_first
        .take_while(|(_, s)| s.time.timestamp() == time)
        .collect();
    if tied.iter().all(|(_, s)| same_group(s, &first.1)) {
        return Ok(Some(first));
    }
    let describe = |(id, s): &(SnapshotId, Snapshot)| {
        let tags = if s.tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", s.tags.join(","))
        };
        format!(
            "{}{tags} {} on {}",
            id.short(),
            s.paths.join(" "),
            s.hostname
        )
    };
    Err(SelectError::Tied {
        what: what(),
        time: first.1.time.strftime("%Y-%m-%d %H:%M:%S %:z").to_string(),
        tied: std::iter::once(first).chain(tied).map(describe).collect(),
    })
}

/// Picks a snapshot by `latest` or an id prefix, among those passing the
/// filter. `snapshots` must be sorted oldest first.
pub fn select<'a>(
    snapshots: &'a [(SnapshotId, Snapshot)],
    spec: &str,
    filter: &SnapshotFilter,
) -> Result<&'a (SnapshotId, Snapshot), SelectError> {
    if spec == "latest" {
        let matching = snapshots.iter().rev().filter(|(_, s)| filter.matches(s));
        return newest(matching, || "latest".into())?
            .ok_or_else(|| SelectError::NoMatch("latest".into()));
    }
    let spec_lower = spec.to_ascii_lowercase();
    let mut found = snapshots
        .iter()
        .filter(|(id, s)| id.to_hex().starts_with(&spec_lower) && filter.matches(s));
    let first = found
        .next()
        .ok_or_else(|| SelectError::NoMatch(spec.to_owned()))?;
    if spec.is_empty() || found.next().is_some() {
        return Err(SelectError::Ambiguous(spec.to_owned()));
    }
    Ok(first)
}

/// The newest snapshot taken at or before `at`, among those passing the
/// filter; `None` if there is none. `snapshots` must be sorted oldest
/// first.
pub fn select_at<'a>(
    snapshots: &'a [(SnapshotId, Snapshot)],
    at: jiff::Timestamp,
    filter: &SnapshotFilter,
) -> Result<Option<&'a (SnapshotId, Snapshot)>, SelectError> {
    let matching = snapshots
        .iter()
        .rev()
        .filter(|(_, s)| s.time.timestamp() <= at && filter.matches(s));
    newest(matching, || {
        format!("the newest snapshot at or before {at}")
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod select_tests {
    use super::*;

    fn snap(time: &str, host: &str, tags: &[&str]) -> (SnapshotId, Snapshot) {
        let ts: jiff::Timestamp = time.parse().unwrap();
        let s = Snapshot {
            version: 1,
            time: ts.to_zoned(jiff::tz::TimeZone::UTC),
            tree: BlobId([0; 32]),
            paths: vec!["/x".into()],
            hostname: host.into(),
            username: "u".into(),
            uid: 0,
            gid: 0,
            tags: tags.iter().map(|t| (*t).to_string()).collect(),
            parent: None,
            original: None,
            program_version: "t".into(),
            inode_flags: false,
            summary: SnapshotSummary::default(),
            extra: serde_json::Map::new(),
        };
        let id = SnapshotId::of_bytes(format!("{time} {host} {tags:?}").as_bytes());
        (id, s)
    }

    #[test]
    fn select_at_picks_newest_not_after() {
        let snaps = vec![
            snap("2026-01-09T03:00:00Z", "a", &[]),
            snap("2026-01-10T03:00:00Z", "a", &[]),
            snap("2026-01-10T03:00:00Z", "b", &[]),
            snap("2026-01-11T03:00:00Z", "a", &[]),
        ];
        let at: jiff::Timestamp = "2026-01-10T03:00:00Z".parse().unwrap();
        let filter = SnapshotFilter {
            hosts: vec!["a".into()],
            ..SnapshotFilter::default()
        };
        let got = select_at(&snaps, at, &filter).unwrap().unwrap();
        assert_eq!(got.0, snaps[1].0);
        let early: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert!(select_at(&snaps, early, &filter).unwrap().is_none());
    }

    /// One configured run stores every source at the same time: without a
    /// filter naming one, `latest` and `--at` must not pick one silently.
    #[test]
    fn snapshots_of_other_groups_at_the_newest_time_are_ambiguous() {
        let snaps = vec![
            snap("2026-01-09T03:00:00Z", "a", &["db"]),
            snap("2026-01-10T03:00:00Z", "a", &["db"]),
            snap("2026-01-10T03:00:00Z", "a", &["files"]),
            snap("2026-01-11T03:00:00Z", "a", &["db"]),
        ];
        let all = SnapshotFilter::default();
        let at: jiff::Timestamp = "2026-01-10T12:00:00Z".parse().unwrap();
        let err = select_at(&snaps, at, &all).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SelectError::Tied { .. }), "{msg}");
        assert!(msg.contains(&snaps[1].0.short()) && msg.contains(&snaps[2].0.short()));
        assert!(msg.contains("[files]") && msg.contains("--tag"), "{msg}");
        let files = SnapshotFilter {
            tags: vec!["files".into()],
            ..SnapshotFilter::default()
        };
        assert_eq!(
            select_at(&snaps, at, &files).unwrap().unwrap().0,
            snaps[2].0
        );
        // Not tied: the newest is alone at its time.
        assert_eq!(select(&snaps, "latest", &all).unwrap().0, snaps[3].0);
        let tied_latest = &snaps[..3];
        assert!(matches!(
            select(tied_latest, "latest", &all),
            Err(SelectError::Tied { .. })
        ));
        // Snapshots of one group at one time: either will do, the last
        // listed is taken as before.
        let one = snap("2026-01-10T03:00:00Z", "a", &["db"]);
        let other = (SnapshotId::of_bytes(b"other"), one.1.clone());
        let same = vec![one, other];
        assert_eq!(select(&same, "latest", &all).unwrap().0, same[1].0);
    }

    #[test]
    fn tag_lists_are_and_within_or_across() {
        let (_, s) = snap("2026-01-09T03:00:00Z", "a", &["x", "y"]);
        let f = |tags: &[&str]| SnapshotFilter {
            tags: tags.iter().map(|t| (*t).to_string()).collect(),
            ..SnapshotFilter::default()
        };
        assert!(f(&["x,y"]).matches(&s));
        assert!(!f(&["x,z"]).matches(&s));
        assert!(f(&["x,z", "y"]).matches(&s));
        // As restic: white space around a tag is not part of it.
        assert!(f(&["x, y"]).matches(&s));
        assert!(f(&[" y "]).matches(&s));
        // An empty list means "no tags", not "any".
        let (_, bare) = snap("2026-01-09T03:00:00Z", "a", &[]);
        assert!(!f(&[""]).matches(&s));
        assert!(f(&[""]).matches(&bare));
        assert!(f(&["", "x"]).matches(&s));
        assert!(!f(&["x"]).matches(&bare));
        // A tag stored with a space by an earlier version still counts.
        let (_, spaced) = snap("2026-01-09T03:00:00Z", "a", &[" keep", "nightly"]);
        assert!(f(&["keep"]).matches(&spaced));
    }

    #[test]
    fn tags_are_stored_trimmed_sorted_and_without_empty_ones() {
        assert_eq!(
            stored_tags(["nightly", " keep", "", " ", "keep ", "a"]),
            ["a", "keep", "nightly"]
        );
        assert_eq!(tag_list(" a , b"), ["a", "b"]);
        assert_eq!(tag_list(""), [""]);
        assert_eq!(tag_list(", a"), ["", "a"]);
        assert_eq!(tag_list("a,"), ["a"]);
        let (_, s) = snap("2026-01-09T03:00:00Z", "a", &[" keep", "db"]);
        let change = TagChange {
            add: vec![" p".into(), "q ".into()],
            remove: vec![" db".into()],
            ..TagChange::default()
        };
        assert_eq!(change.apply(&s.tags), ["keep", "p", "q"]);
    }

    #[test]
    fn select_by_prefix_and_latest() {
        let snaps = vec![
            snap("2026-01-09T03:00:00Z", "a", &[]),
            snap("2026-01-10T03:00:00Z", "a", &[]),
        ];
        let f = SnapshotFilter::default();
        assert_eq!(select(&snaps, "latest", &f).unwrap().0, snaps[1].0);
        let prefix = &snaps[0].0.to_hex()[..8];
        assert_eq!(select(&snaps, prefix, &f).unwrap().0, snaps[0].0);
        assert!(select(&snaps, "zzzz", &f).is_err());
    }

    #[test]
    fn tag_changes_set_then_add_then_remove_and_record_the_original() {
        let (id, s) = snap("2026-01-09T03:00:00Z", "a", &["daily", "db"]);
        let add = TagChange {
            add: vec!["keep".into(), "db".into()],
            ..TagChange::default()
        };
        let new = add.rewrite(&id, &s).unwrap();
        assert_eq!(new.tags, ["daily", "db", "keep"]);
        assert_eq!(new.original, Some(id));
        assert_eq!(new.tree, s.tree);
        // A second change still points at the first snapshot.
        let (id2, _) = snap("2026-01-10T03:00:00Z", "a", &[]);
        let remove = TagChange {
            remove: vec!["daily".into()],
            ..TagChange::default()
        };
        assert_eq!(remove.rewrite(&id2, &new).unwrap().original, Some(id));
        // Nothing to change: no rewrite.
        assert!(
            remove
                .rewrite(&id, &snap("2026-01-09T03:00:00Z", "a", &["db"]).1)
                .is_none()
        );
        let set = TagChange {
            set: Some(vec!["b".into(), "a".into(), String::new()]),
            add: vec!["c".into()],
            remove: vec!["b".into()],
        };
        assert_eq!(set.apply(&s.tags), ["a", "c"]);
    }

    #[test]
    fn fields_of_a_newer_writer_survive_a_rewrite() {
        let (id, s) = snap("2026-01-09T03:00:00Z", "a", &[]);
        let mut json: serde_json::Value = serde_json::from_slice(&s.encode()).unwrap();
        json["description"] = "before the migration".into();
        json["labels"] = serde_json::json!({"team": "ops"});
        let decoded = Snapshot::decode(json.to_string().as_bytes()).unwrap();
        assert_eq!(decoded.extra.len(), 2);
        let add = TagChange {
            add: vec!["keep".into()],
            ..TagChange::default()
        };
        let rewritten = add.rewrite(&id, &decoded).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&rewritten.encode()).unwrap();
        assert_eq!(back["description"], "before the migration");
        assert_eq!(back["labels"]["team"], "ops");
        assert_eq!(back["tags"], serde_json::json!(["keep"]));
        // Without extra fields the encoding is what it always was.
        assert!(s.extra.is_empty());
        assert_eq!(Snapshot::decode(&s.encode()).unwrap().encode(), s.encode());
    }
}
