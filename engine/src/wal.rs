//! PostgreSQL WAL archiving (repo-format.md §11.7): segments pushed by
//! `archive_command`, fetched by `restore_command`, listed with their gaps,
//! and trimmed by retention.
//!
//! A segment's bytes are chunked, deduplicated, compressed and sealed like
//! any file (data blobs in packs). A small sealed record at
//! `wal/<stream>/<file name>` lists its blobs; `<stream>` is the first 16 hex
//! of the keyed id of the source name, so the provider does not learn source
//! names. The record is written only after its blobs are durable and
//! indexed, so a record that exists can always be fetched.

use crate::backend::{BackendError, PutMode};
use crate::backup::{Saver, SaverStats};
use crate::blob::{self, BlobKind};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::index::IndexBuilder;
use crate::repository::{FileKind, Repository};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One archived WAL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRecord {
    /// Record version, 1.
    pub version: u32,
    /// WAL file name as PostgreSQL names it (`000000010000000000000003`,
    /// `00000002.history`, ...).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Content chunks in order.
    pub content: Vec<BlobId>,
    /// When it was pushed.
    pub pushed: jiff::Timestamp,
    /// The file's modification time when it was pushed, if known. For a
    /// `.history` file that is when PostgreSQL switched to the timeline,
    /// on the database host's clock (the clock of its commit times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<jiff::Timestamp>,
    /// Where each blob of `content` was stored by this push (same order and
    /// length), so a fetch needs no index; empty when unknown. A hint only:
    /// prune may have moved a blob since, which a reader notices when the
    /// blob fails to open there, and then looks it up in the index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<WalBlobLocation>,
}

/// Where a WAL record's blob was stored when it was pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalBlobLocation {
    /// The pack.
    pub pack: PackId,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

/// Outcome of [`push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Newly stored.
    Stored,
    /// Already archived with identical content (a retried archive_command).
    AlreadyArchived,
}

pub(crate) fn stream_dir(repo: &Repository, source: &str) -> String {
    let id = repo
        .key()
        .blob_id(format!("wal-stream:{source}").as_bytes());
    format!("wal/{}", &id.to_hex()[..16])
}

/// Whether `name` is a WAL file name PostgreSQL archives.
#[must_use]
pub fn is_valid_name(name: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let base = name.split('.').next().unwrap_or_default();
    let suffix_ok = match name.split_once('.') {
        None => name.len() == 24,
        Some((_, "history")) => base.len() == 8,
        Some((_, "partial")) => base.len() == 24,
        Some((_, rest)) => rest.ends_with("backup") && base.len() == 24,
    };
    suffix_ok && hex(base) && !base.is_empty()
}

/// Archives one WAL file (`modified`: its modification time). Returns only
/// once it is durable. Pushing the same name again succeeds when the
/// content is identical and fails otherwise.
pub fn push(
    repo: &Arc<Repository>,
    source: &str,
    name: &str,
    data: Vec<u8>,
    modified: Option<jiff::Timestamp>,
) -> Result<PushOutcome> {
    if !is_valid_name(name) {
        return Err(Error::InvalidInput(format!(
            "{name:?} is not a WAL file name"
        )));
    }
    let size = data.len() as u64;
    let path = format!("{}/{name}", stream_dir(repo, source));
    // PostgreSQL retries a push whose earlier attempt it could not confirm:
    // compare with what is archived before storing anything.
    if let Some(existing) = load(repo, source, name)? {
        let mut content = Vec::new();
        for chunk in repo.config().chunker.chunks(&data[..]) {
            let chunk = chunk.map_err(|e| Error::io(format!("chunking {name}"), e))?;
            content.push(repo.key().blob_id(&chunk));
        }
        return if existing.size == size && existing.content == content {
            Ok(PushOutcome::AlreadyArchived)
        } else {
            Err(Error::InvalidInput(format!(
                "WAL file {name} is already archived with different content; refusing to overwrite it"
            )))
        };
    }
    // The repository's index is not loaded: a push then costs the same
    // whatever the repository holds. Loading it meant reading every index
    // file, and each push adds one until the next prune, so on an object
    // store a push slowed down by one GET per segment archived since, until
    // archiving fell behind the server. The cost is deduplication against
    // other data, which WAL does not have (every page carries its LSN);
    // chunks repeated within the segment (zero padding after a forced
    // switch) are still stored once. A blob stored twice is a duplicate
    // that check accepts and prune reclaims (§11.3).
    let mut content = Vec::new();
    let saver = Saver::start_for_wal(
        repo.clone(),
        Arc::new(IndexBuilder::new().finish()),
        Arc::new(SaverStats::default()),
    );
    saver.record_packs();
    for chunk in repo.config().chunker.chunks(&data[..]) {
        let chunk = chunk.map_err(|e| Error::io(format!("chunking {name}"), e))?;
        content.push(saver.save(BlobKind::Data, chunk)?);
    }
    let packs = saver.finish_with_packs()?;
    let stored: HashMap<BlobId, WalBlobLocation> = packs
        .iter()
        .flat_map(|p| {
            p.blobs.iter().map(|b| {
                let at = WalBlobLocation {
                    pack: p.id,
                    offset: b.offset,
                    length: b.length,
                    raw_len: b.raw_len,
                };
                (b.id, at)
            })
        })
        .collect();
    // All or nothing: every blob of this push was stored by it.
    let locations = content
        .iter()
        .map(|id| stored.get(id).copied())
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    let record = WalRecord {
        version: 1,
        name: name.to_owned(),
        size,
        content,
        pushed: jiff::Timestamp::now(),
        modified,
        locations,
    };
    let sealed = repo.seal_wal(&serde_json::to_vec(&record).expect("record serialises"));
    match repo.backend().put(&path, sealed.into(), PutMode::Create) {
        Ok(()) => Ok(PushOutcome::Stored),
        Err(BackendError::AlreadyExists(_)) => {
            let existing = load(repo, source, name)?.ok_or_else(|| Error::NotFound {
                object: path.clone(),
            })?;
            if existing.content == record.content {
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(Error::InvalidInput(format!(
                    "WAL file {name} is already archived with different content"
                )))
            }
        }
        Err(e) => Err(Error::backend(path, e)),
    }
}

/// Loads the record of `name`, if archived.
pub fn load(repo: &Repository, source: &str, name: &str) -> Result<Option<WalRecord>> {
    let path = format!("{}/{name}", stream_dir(repo, source));
    let sealed = match repo.backend().get(&path, crate::repository::MAX_SEALED_LEN) {
        Ok(b) => b,
        Err(BackendError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(Error::backend(path, e)),
    };
    let body = repo.open_wal(&path, &sealed)?;
    let record: WalRecord = serde_json::from_slice(&body).map_err(|e| Error::corrupt(&path, e))?;
    if record.name != name {
        return Err(Error::corrupt(&path, "record names another WAL file"));
    }
    Ok(Some(record))
}

/// Reads a record's blobs from the locations it holds, without the index
/// (`restore_command` runs once per segment, and loading the index meant
/// reading every index file each time). `None` if the record has no
/// locations or any blob is not (or no longer) sound where it says; nothing
/// has been written then, and the caller falls back to the index.
fn read_located(repo: &Repository, record: &WalRecord) -> Option<Vec<Vec<u8>>> {
    if record.locations.len() != record.content.len() || record.content.is_empty() {
        return None;
    }
    // One ranged read per pack, over the blobs needed from it.
    let mut spans: HashMap<PackId, (u64, u64)> = HashMap::new();
    for at in &record.locations {
        let start = u64::from(at.offset);
        let end = start + u64::from(at.length);
        let span = spans.entry(at.pack).or_insert((start, end));
        span.0 = span.0.min(start);
        span.1 = span.1.max(end);
    }
    let mut fetched = HashMap::new();
    for (pack, (start, end)) in spans {
        let path = FileKind::Pack.path(&pack.to_hex());
        let bytes = repo.backend().get_range(&path, start, end - start).ok()?;
        fetched.insert(pack, (start, bytes));
    }
    record
        .content
        .iter()
        .zip(&record.locations)
        .map(|(id, at)| {
            let (start, bytes) = fetched.get(&at.pack)?;
            let from = usize::try_from(u64::from(at.offset) - start).ok()?;
            let stored = bytes.get(from..from.checked_add(at.length as usize)?)?;
            blob::open(repo.key(), BlobKind::Data, id, at.raw_len, stored).ok()
        })
        .collect()
}

/// Writes an archived WAL file's bytes (verified chunk by chunk) to `out`.
pub fn fetch(
    repo: &Repository,
    source: &str,
    name: &str,
    out: &mut dyn std::io::Write,
) -> Result<bool> {
    let Some(record) = load(repo, source, name)? else {
        return Ok(false);
    };
    write_record(repo, &record, out)?;
    Ok(true)
}

/// Writes a loaded record's bytes (verified chunk by chunk) to `out`.
fn write_record(repo: &Repository, record: &WalRecord, out: &mut dyn std::io::Write) -> Result<()> {
    let name = &record.name;
    if let Some(chunks) = read_located(repo, record) {
        for data in chunks {
            out.write_all(&data)
                .map_err(|e| Error::io(format!("writing {name}"), e))?;
        }
        return Ok(());
    }
    let index = repo.load_index()?;
    for id in &record.content {
        let data = repo.read_blob(&index, id)?;
        out.write_all(&data)
            .map_err(|e| Error::io(format!("writing {name}"), e))?;
    }
    Ok(())
}

/// Copies the WAL archive of `source` from `from` to `to`: every file `to`
/// lacks, read back verified and pushed again (its chunks are the target's
/// to make: repositories have their own keys and chunker seeds). Returns
/// how many files were copied. A base backup copied without its WAL
/// cannot even be brought to a consistent state.
pub fn copy_stream(
    from: &Repository,
    to: &Arc<Repository>,
    source: &str,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<u64> {
    let there: std::collections::HashSet<String> = list(to, source)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut copied = 0;
    for (name, _) in list(from, source)? {
        if there.contains(&name) {
            continue;
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let Some(record) = load(from, source, &name)? else {
            continue; // trimmed by retention since it was listed
        };
        let mut data = Vec::with_capacity(usize::try_from(record.size).unwrap_or(0));
        write_record(from, &record, &mut data)?;
        push(to, source, &name, data, record.modified)?;
        copied += 1;
    }
    Ok(copied)
}

/// Names of the archived WAL files of a source, sorted.
pub fn list(repo: &Repository, source: &str) -> Result<Vec<(String, u64)>> {
    let dir = stream_dir(repo, source);
    let mut out: Vec<(String, u64)> = repo
        .backend()
        .list(&format!("{dir}/"))
        .map_err(|e| Error::backend(&dir, e))?
        .into_iter()
        .filter_map(|o| {
            let name = o.path.rsplit('/').next()?.to_owned();
            is_valid_name(&name).then_some((name, o.size))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Every WAL record of every source (prune keeps their blobs alive).
pub fn all_records(repo: &Repository) -> Result<Vec<(String, WalRecord)>> {
    let mut out = Vec::new();
    for o in repo
        .backend()
        .list("wal/")
        .map_err(|e| Error::backend("wal/", e))?
    {
        let body = repo
            .backend()
            .get(&o.path, crate::repository::MAX_SEALED_LEN)
            .map_err(|e| Error::backend(&o.path, e))
            .and_then(|sealed| repo.open_wal(&o.path, &sealed))?;
        let record: WalRecord =
            serde_json::from_slice(&body).map_err(|e| Error::corrupt(&o.path, e))?;
        out.push((o.path, record));
    }
    Ok(out)
}

/// Segment position `(timeline, segment number)` of a 24-hex segment name,
/// assuming PostgreSQL's default 16 MiB segments (256 per log file).
#[must_use]
pub fn position(name: &str) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(name.get(0..8)?, 16).ok()?;
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    Some((tli, log * 256 + seg))
}

/// Missing segments between the first and last archived segment of each
/// timeline: `(timeline, first missing name, count)`.
#[must_use]
pub fn gaps(names: &[String]) -> Vec<(u32, String, u64)> {
    let mut by_tli: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for n in names {
        if let Some((tli, seg)) = position(n) {
            by_tli.entry(tli).or_default().push(seg);
        }
    }
    let mut out = Vec::new();
    for (tli, mut segs) in by_tli {
        segs.sort_unstable();
        segs.dedup();
        for w in segs.windows(2) {
            if let [a, b] = w
                && b - a > 1
            {
                let missing = a + 1;
                out.push((
                    tli,
                    format!("{tli:08X}{:08X}{:08X}", missing / 256, missing % 256),
                    b - a - 1,
                ));
            }
        }
    }
    out
}

/// What [`trim`] removed and what it had to keep.
#[derive(Debug, Default)]
pub struct Trimmed {
    /// Names removed.
    pub removed: Vec<String>,
    /// Names old enough to go but still under Object Lock retention
    /// (repo-format.md §11.8): kept, like snapshots forget keeps, until a
    /// later trim after the retention.
    pub locked: Vec<String>,
}

/// Removes archived segments older than `keep_from` (same or older
/// timelines); history files are always kept, and so are segments still
/// under Object Lock retention at `now`.
pub fn trim(
    repo: &Repository,
    source: &str,
    keep_from: &str,
    now: jiff::Timestamp,
) -> Result<Trimmed> {
    let Some((keep_tli, keep_seg)) = position(keep_from) else {
        return Err(Error::InvalidInput(format!(
            "invalid WAL segment {keep_from}"
        )));
    };
    let dir = stream_dir(repo, source);
    let lock = repo.config().object_lock;
    let mut objects = repo
        .backend()
        .list(&format!("{dir}/"))
        .map_err(|e| Error::backend(&dir, e))?;
    objects.sort_by(|a, b| a.path.cmp(&b.path));
    let mut trimmed = Trimmed::default();
    for info in objects {
        let Some(name) = info.path.rsplit('/').next().filter(|n| is_valid_name(n)) else {
            continue;
        };
        let base = name.split('.').next().unwrap_or_default();
        let Some((tli, seg)) = position(base) else {
            continue;
        };
        if tli > keep_tli || seg >= keep_seg {
            continue;
        }
        if crate::object_lock::locked_until(lock, &info, now).is_some() {
            trimmed.locked.push(name.to_owned());
            continue;
        }
        repo.backend()
            .delete(&info.path)
            .map_err(|e| Error::backend(&info.path, e))?;
        trimmed.removed.push(name.to_owned());
    }
    Ok(trimmed)
}

/// PostgreSQL's default WAL segment size, which [`position`] assumes too.
pub const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// The 24-hex name of segment `seg` (a [`position`]) on timeline `tli`.
#[must_use]
pub fn segment_name(tli: u32, seg: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", seg / 256, seg % 256)
}

/// Parses an LSN as PostgreSQL prints it (`0/5000A28`).
#[must_use]
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// One line of a timeline history file: timeline `parent` was left at
/// `switch_lsn` (the first LSN of the next timeline in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub parent: u32,
    pub switch_lsn: u64,
    /// PostgreSQL's comment, e.g. `before 2024-05-01 12:00:00.1+00`.
    pub reason: String,
}

/// Parses a `NNNNNNNN.history` file: one `parent TAB switchpoint TAB
/// reason` line per ancestor, oldest first (PostgreSQL's
/// `readTimeLineHistory`); blank lines and `#` comments are skipped.
#[must_use]
pub fn parse_history(text: &str) -> Option<Vec<HistoryEntry>> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, char::is_whitespace);
        let parent: u32 = fields.next()?.parse().ok()?;
        let switch_lsn = parse_lsn(fields.next()?.trim())?;
        let reason = fields.next().unwrap_or_default().trim().to_owned();
        // PostgreSQL rejects files whose timelines do not increase.
        if out.last().is_some_and(|p| p.parent >= parent) {
            return None;
        }
        out.push(HistoryEntry {
            parent,
            switch_lsn,
            reason,
        });
    }
    Some(out)
}

/// An archived timeline other than the first: its ancestry (from its
/// `.history` file) and when the server switched to it: the history file's
/// modification time as pushed (PostgreSQL writes it at the switch, before
/// the first commit on the new timeline), else when it was archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    pub timeline: u32,
    pub parents: Vec<HistoryEntry>,
    pub born: jiff::Timestamp,
}

impl Timeline {
    /// The timelines a server on this one has replayed, oldest first, each
    /// with the LSN where it begins.
    #[must_use]
    pub fn path(&self) -> Vec<(u32, u64)> {
        let mut out = Vec::with_capacity(self.parents.len() + 1);
        let mut begin = 0;
        for p in &self.parents {
            out.push((p.parent, begin));
            begin = p.switch_lsn;
        }
        out.push((self.timeline, begin));
        out
    }
}

/// The timelines of a source that have an archived `.history` file,
/// ordered by timeline.
pub fn timelines(repo: &Repository, source: &str) -> Result<Vec<Timeline>> {
    let mut out = Vec::new();
    for (name, _) in list(repo, source)? {
        let Some(hex) = name.strip_suffix(".history") else {
            continue;
        };
        let Ok(timeline) = u32::from_str_radix(hex, 16) else {
            continue;
        };
        let Some(record) = load(repo, source, &name)? else {
            continue;
        };
        let mut text = Vec::new();
        fetch(repo, source, &name, &mut text)?;
        let path = format!("{}/{name}", stream_dir(repo, source));
        let parents = parse_history(&String::from_utf8_lossy(&text))
            .filter(|p| p.last().is_none_or(|l| l.parent < timeline))
            .ok_or_else(|| Error::corrupt(&path, "unreadable timeline history"))?;
        out.push(Timeline {
            timeline,
            parents,
            born: record.modified.unwrap_or(record.pushed),
        });
    }
    out.sort_by_key(|t| t.timeline);
    Ok(out)
}

/// The timeline that was current at `at`: the one whose history file was
/// archived last at or before `at` (every server promoted later forked off
/// after `at`, so what the database held at `at` is on this one); without
/// `at`, the newest timeline. `None` means no archived timeline switch
/// applies: the base backup's own timeline.
#[must_use]
pub fn timeline_at(timelines: &[Timeline], at: Option<jiff::Timestamp>) -> Option<&Timeline> {
    match at {
        Some(at) => timelines
            .iter()
            .filter(|t| t.born <= at)
            .max_by_key(|t| (t.born, t.timeline)),
        None => timelines.iter().max_by_key(|t| t.timeline),
    }
}

/// What recovery along a timeline path needs from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Archived segments on the path from the start segment on.
    pub segments: u64,
    /// Missing runs before the last archived one: `(timeline, first
    /// missing name, count)`.
    pub gaps: Vec<(u32, String, u64)>,
    /// The newest archived segment on the path, where recovery runs out of
    /// WAL.
    pub last: Option<String>,
}

/// Checks the segments recovery reads when it starts at segment `start` of
/// timeline `start_tli` and follows `path` (from [`Timeline::path`], or
/// `[(tli, 0)]` without a switch). For each position PostgreSQL reads the
/// file of the newest timeline on the path that begins at or before that
/// segment, so segments of an ancestor after it was left are not needed.
/// `None` when the start is not on the path (the base backup was taken on
/// another branch, or after the path left its timeline).
#[must_use]
pub fn chain(names: &[String], path: &[(u32, u64)], start_tli: u32, start: u64) -> Option<Chain> {
    let at = path.iter().position(|(t, _)| *t == start_tli)?;
    if path[at].1 / SEGMENT_SIZE > start {
        return None;
    }
    if let Some((_, next_begin)) = path.get(at + 1)
        && start > next_begin / SEGMENT_SIZE
    {
        return None;
    }
    let expected = |seg: u64| {
        path.iter()
            .rev()
            .find(|(_, begin)| begin / SEGMENT_SIZE <= seg)
            .map_or(start_tli, |(t, _)| *t)
    };
    let on_path: std::collections::BTreeSet<u64> = names
        .iter()
        .filter_map(|n| position(n))
        .filter(|&(tli, seg)| seg >= start && expected(seg) == tli)
        .map(|(_, seg)| seg)
        .collect();
    let mut gaps: Vec<(u32, String, u64)> = Vec::new();
    let mut next = start;
    for &seg in &on_path {
        if seg > next {
            gaps.push((
                expected(next),
                segment_name(expected(next), next),
                seg - next,
            ));
        }
        next = seg + 1;
    }
    if on_path.is_empty() {
        gaps.push((start_tli, segment_name(start_tli, start), 1));
    }
    Some(Chain {
        segments: on_path.len() as u64,
        gaps,
        last: on_path.last().map(|&seg| segment_name(expected(seg), seg)),
    })
}

/// Parses `backup_label` text: the start segment and timeline.
#[must_use]
pub fn parse_backup_label(text: &str) -> Option<(String, u32)> {
    let mut start = None;
    let mut tli = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION:") {
            start = rest
                .split("(file ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("START TIMELINE:") {
            tli = rest.trim().parse().ok();
        }
    }
    Some((start?, tli?))
}

/// Finds `backup_label` in the first bytes of a base backup tar stream.
#[must_use]
pub fn backup_label_from_tar(head: &[u8]) -> Option<String> {
    let mut offset = 0usize;
    while let Some(header) = head.get(offset..offset + 512) {
        let name_end = header
            .get(..100)?
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(100);
        let name = std::str::from_utf8(header.get(..name_end)?).ok()?;
        if name.is_empty() {
            return None;
        }
        let size_field = std::str::from_utf8(header.get(124..136)?).ok()?;
        let size =
            usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .ok()?;
        let body = offset + 512;
        if name == "backup_label" || name.ends_with("/backup_label") {
            return head
                .get(body..body + size)
                .map(|b| String::from_utf8_lossy(b).into_owned());
        }
        offset = body + size.div_ceil(512) * 512;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_positions_and_gaps() {
        assert!(is_valid_name("000000010000000000000003"));
        assert!(is_valid_name("00000002.history"));
        assert!(is_valid_name("000000010000000000000003.00000028.backup"));
        assert!(is_valid_name("000000010000000000000003.partial"));
        assert!(!is_valid_name("../etc/passwd"));
        assert!(!is_valid_name("0000000100000000000000"));
        assert_eq!(position("0000000100000001000000FF"), Some((1, 511)));
        let names: Vec<String> = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000005",
            "0000000100000000000000FF",
            "000000010000000100000000",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let g = gaps(&names);
        assert_eq!(g[0], (1, "000000010000000000000003".to_owned(), 2));
        assert_eq!(g.len(), 2);
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn history_files_are_parsed_into_paths() {
        let text = "1\t0/5000A28\tbefore 2024-05-01 12:00:00.5+00\n\n# a comment\n2\t0/7000000\tno recovery target specified\n";
        let parents = parse_history(text).unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0].parent, 1);
        assert_eq!(parents[0].switch_lsn, 0x500_0A28);
        assert_eq!(parents[0].reason, "before 2024-05-01 12:00:00.5+00");
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert!(parse_history("2\t0/1\tx\n1\t0/2\ty\n").is_none());
        assert!(parse_history("1\tnot-an-lsn\tx\n").is_none());
        let tl = Timeline {
            timeline: 3,
            parents,
            born: jiff::Timestamp::UNIX_EPOCH,
        };
        assert_eq!(tl.path(), vec![(1, 0), (2, 0x500_0A28), (3, 0x700_0000)]);
    }

    #[test]
    fn the_timeline_current_at_a_time_is_the_last_one_born_before_it() {
        let at = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        let tl = |timeline, born| Timeline {
            timeline,
            parents: vec![HistoryEntry {
                parent: 1,
                switch_lsn: 0,
                reason: String::new(),
            }],
            born: at(born),
        };
        let all = [tl(2, 100), tl(3, 200)];
        assert_eq!(timeline_at(&all, Some(at(50))), None);
        assert_eq!(timeline_at(&all, Some(at(100))).unwrap().timeline, 2);
        assert_eq!(timeline_at(&all, Some(at(150))).unwrap().timeline, 2);
        assert_eq!(timeline_at(&all, Some(at(250))).unwrap().timeline, 3);
        assert_eq!(timeline_at(&all, None).unwrap().timeline, 3);
    }

    #[test]
    fn the_chain_follows_the_path_across_a_switch() {
        // Timeline 2 leaves timeline 1 inside segment 5; timeline 1 went on
        // (its 5..7 are archived but not on timeline 2's path).
        let path = [(1, 0), (2, 5 * SEGMENT_SIZE + 0x28)];
        let archived = names(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "000000010000000000000007",
            "00000002.history",
            "000000020000000000000005",
            "000000020000000000000006",
        ]);
        let c = chain(&archived, &path, 1, 3).unwrap();
        assert_eq!(c.segments, 4);
        assert!(c.gaps.is_empty(), "{c:?}");
        // Timeline 1's segment 7 is newer, but not on the path.
        assert_eq!(c.last.as_deref(), Some("000000020000000000000006"));
        // Timeline 1 alone: its own later segments count.
        assert_eq!(chain(&archived, &[(1, 0)], 1, 3).unwrap().segments, 5);
        // A base backup on timeline 1 after the switch is not on the path.
        assert!(chain(&archived, &path, 1, 6).is_none());
        assert!(chain(&archived, &path, 4, 6).is_none());
        // Missing segment 4 (before the switch) and 6 on the new timeline.
        let holes = names(&[
            "000000010000000000000003",
            "000000020000000000000005",
            "000000020000000000000007",
        ]);
        let c = chain(&holes, &path, 1, 3).unwrap();
        assert_eq!(
            c.gaps,
            vec![
                (1, "000000010000000000000004".to_owned(), 1),
                (2, "000000020000000000000006".to_owned(), 1)
            ]
        );
        // The switch segment only under the old timeline's name is a gap.
        let old_only = names(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000020000000000000006",
        ]);
        let c = chain(&old_only, &path, 1, 3).unwrap();
        assert_eq!(c.gaps, vec![(2, "000000020000000000000005".to_owned(), 1)]);
    }

    #[test]
    fn backup_label_is_parsed() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n";
        assert_eq!(
            parse_backup_label(label),
            Some(("000000010000000000000002".into(), 1))
        );
        let mut tar = vec![0u8; 512];
        tar[..12].copy_from_slice(b"backup_label");
        let size = format!("{:011o}\0", label.len());
        tar[124..136].copy_from_slice(size.as_bytes());
        tar.extend_from_slice(label.as_bytes());
        tar.resize(2048, 0);
        assert_eq!(backup_label_from_tar(&tar).as_deref(), Some(label));
    }
}
