//! A local copy of a repository's snapshots, index files and tree packs.
//!
//! Without it every command against an object store downloads every
//! snapshot and index file again: a GET each, paid for per request and, on
//! some providers, per byte; and every backup, `ls`, `find` or restore
//! walks trees, whose packs (written apart from data) it downloads whole.
//! All three are write-once and named by the
//! BLAKE3 of their stored bytes (repo-format.md §2), so a cached copy never
//! goes stale: it is either the object or, if damaged or tampered with, not
//! (its hash no longer matches its name, and it is fetched again). Reads stay
//! driven by the store's listing (for packs: the index, itself from a
//! listing), so an object deleted in the store is never resurrected from
//! here; the listing and the index also tell which copies to drop.
//!
//! Files are the sealed objects as stored: the cache reveals nothing the
//! store does not.
//!
//! The cache may sit in a directory others can write (`--cache-dir` under
//! `/tmp`, a shared home). So its directories must be real directories
//! owned by the user running vault, never symlinks: otherwise whoever made
//! them could point `index/` at any directory, and dropping stale copies
//! would delete that directory's files. The cache is an optimisation only: when it cannot be
//! written (full disk, permissions) it turns itself off and the command goes
//! on without it.

use crate::repository::FileKind;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// CACHEDIR.TAG (bford.info/cachedir): backup tools, vault's own
/// `--exclude-caches` among them, skip the directory.
const CACHEDIR_TAG: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by vault.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// The object kinds kept here. Packs are only ever tree packs (written by
/// the tree reader and by the backup's uploader), under `trees/<id>`.
const KINDS: [FileKind; 3] = [FileKind::Snapshot, FileKind::Index, FileKind::Pack];

/// The directory of `kind` inside a repository's cache.
fn subdir(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Pack => "trees",
        other => other.prefix().trim_end_matches('/'),
    }
}

/// One repository's cache directory.
#[derive(Debug)]
pub struct Cache {
    base: PathBuf,
    dir: PathBuf,
    off: AtomicBool,
}

/// Whether `name` can be the name of a copy: an id in its canonical
/// spelling.
fn is_canonical(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Fails unless `dir` is a directory (not a symlink to one) owned by the
/// user running vault.
fn check_own_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    own_dir(
        dir,
        meta.file_type().is_symlink(),
        meta.is_dir(),
        meta.uid(),
    )
}

fn own_dir(dir: &Path, symlink: bool, is_dir: bool, uid: u32) -> std::io::Result<()> {
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        ))
    };
    let me = nix::unistd::geteuid().as_raw();
    if symlink {
        refuse("is a symlink; a cache directory must be a directory of its own".into())
    } else if !is_dir {
        refuse("is not a directory".into())
    } else if uid != me {
        refuse(format!(
            "is owned by uid {uid}, not by this user (uid {me}): another user could change what it holds"
        ))
    } else {
        Ok(())
    }
}

/// Opens directory `name` in `parent` (or the working directory) without
/// following a symlink, and checks it is the user's own.
fn open_own_dir(
    parent: Option<&std::os::fd::OwnedFd>,
    name: &Path,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match parent {
        Some(parent) => rustix::fs::openat(parent, name, flags, Mode::empty()),
        None => rustix::fs::openat(rustix::fs::CWD, name, flags, Mode::empty()),
    }
    .map_err(|e| {
        std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("{}: {e}", name.display()),
        )
    })?;
    let st = rustix::fs::fstat(&fd)?;
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    own_dir(name, false, is_dir, st.st_uid)?;
    Ok(fd)
}

impl Cache {
    /// Opens, creating it if needed, the cache of the repository with id
    /// `repo_id` (its config's `id`) under `base`: `base/<repo_id>/`.
    pub fn open(base: &Path, repo_id: &str) -> std::io::Result<Self> {
        if repo_id.len() != 64 || !repo_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "repository id is not 64 hex digits",
            ));
        }
        create_private_dir(base)?;
        check_own_dir(base)?;
        let tag = base.join("CACHEDIR.TAG");
        if !tag.exists() {
            write_atomically(&tag, CACHEDIR_TAG)?;
        }
        let dir = base.join(repo_id);
        create_private_dir(&dir)?;
        check_own_dir(&dir)?;
        // Its mtime says when it was last used (`vault cache --cleanup`).
        let _ = filetime::set_file_mtime(&dir, filetime::FileTime::now());
        for kind in KINDS {
            create_private_dir(&dir.join(subdir(kind)))?;
            check_own_dir(&dir.join(subdir(kind)))?;
        }
        Ok(Self {
            base: base.to_owned(),
            dir,
            off: AtomicBool::new(false),
        })
    }

    /// The directory holding this repository's copies.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether objects of `kind` are kept here.
    pub(crate) fn keeps(kind: FileKind) -> bool {
        KINDS.contains(&kind)
    }

    fn file(&self, kind: FileKind, hex: &str) -> Option<PathBuf> {
        // Only canonical ids become file names: nothing read from the store
        // can name a path outside the cache.
        (Self::keeps(kind) && is_canonical(hex) && !self.off.load(Ordering::Relaxed))
            .then(|| self.dir.join(subdir(kind)).join(hex))
    }

    /// The cached object `kind/hex`, if present and intact.
    pub(crate) fn read(&self, kind: FileKind, hex: &str) -> Option<Vec<u8>> {
        let path = self.file(kind, hex)?;
        let bytes = std::fs::read(&path).ok()?;
        if blake3::hash(&bytes).to_hex().as_str() == hex {
            Some(bytes)
        } else {
            tracing::warn!("cache: {} is damaged; fetching it again", path.display());
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Bytes `offset..offset + len` of the cached object `kind/hex`, not
    /// checked against its name (that would hash the whole object for one
    /// blob): the caller authenticates what it reads, and calls
    /// [`Cache::remove`] if that fails.
    pub(crate) fn read_range(
        &self,
        kind: FileKind,
        hex: &str,
        offset: u64,
        len: u64,
    ) -> Option<Vec<u8>> {
        use std::io::{Read, Seek};
        let mut file = std::fs::File::open(self.file(kind, hex)?).ok()?;
        file.seek(std::io::SeekFrom::Start(offset)).ok()?;
        let mut out = vec![0; usize::try_from(len).ok()?];
        file.read_exact(&mut out).ok()?;
        Some(out)
    }

    /// Keeps a copy of `kind/hex` (already verified against its name).
    pub(crate) fn write(&self, kind: FileKind, hex: &str, bytes: &[u8]) {
        let Some(path) = self.file(kind, hex) else {
            return;
        };
        if let Err(e) = write_atomically(&path, bytes) {
            self.turn_off(&e);
        }
    }

    /// Drops the copy of `kind/hex`.
    pub(crate) fn remove(&self, kind: FileKind, hex: &str) {
        if let Some(path) = self.file(kind, hex) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Drops every copy of `kind` whose id the store no longer lists.
    ///
    /// Walks down from the base again, by descriptors that never follow a
    /// symlink and each checked to be the user's own: the directories were
    /// checked when the cache was opened, but whoever can write the base's
    /// parent could have swapped them since. Only files named as copies
    /// are ever removed.
    pub(crate) fn retain(&self, kind: FileKind, listed: &HashSet<String>) {
        if !Self::keeps(kind) || self.off.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.retain_in(kind, listed) {
            tracing::warn!(
                "cache {}: not dropping stale copies: {e}",
                self.dir.display()
            );
        }
    }

    fn retain_in(&self, kind: FileKind, listed: &HashSet<String>) -> std::io::Result<()> {
        use rustix::fs::{AtFlags, FileType};
        let base = open_own_dir(None, &self.base)?;
        let repo = open_own_dir(
            Some(&base),
            self.dir.file_name().map_or(Path::new(""), Path::new),
        )?;
        let dir = open_own_dir(Some(&repo), Path::new(subdir(kind)))?;
        for entry in rustix::fs::Dir::read_from(&dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            // Not a copy: another process's write in progress (`.tmp-`),
            // or something vault never wrote, left alone.
            if !is_canonical(name) || listed.contains(name) {
                continue;
            }
            let regular = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
            if regular {
                let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
            }
        }
        Ok(())
    }

    fn turn_off(&self, e: &std::io::Error) {
        if !self.off.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cache {} cannot be written ({e}); going on without it",
                self.dir.display()
            );
        }
    }
}

/// One repository's cache directory, as `vault cache` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheDir {
    /// The repository's id (its config's `id`).
    pub repository_id: String,
    /// The directory.
    pub path: PathBuf,
    /// Bytes of the files in it.
    pub bytes: u64,
    /// When a command last opened it.
    pub last_used: Option<jiff::Timestamp>,
}

/// Every repository cache under `base`, least recently used first. As
/// [`Cache::open`], a base that is a symlink or another user's is refused,
/// and so not emptied by `--cleanup`; so is (skipped) a repository's
/// directory of another user.
pub fn list(base: &Path) -> std::io::Result<Vec<CacheDir>> {
    use std::os::unix::fs::MetadataExt;
    match check_own_dir(base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let entries = match std::fs::read_dir(base) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Not following a symlink: a symlink is not a directory here.
        let meta = entry.metadata()?;
        if !meta.is_dir() || name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if meta.uid() != me {
            tracing::warn!(
                "ignoring {}: owned by uid {}, not by this user",
                entry.path().display(),
                meta.uid()
            );
            continue;
        }
        let last_used = meta
            .modified()
            .ok()
            .and_then(|t| jiff::Timestamp::try_from(t).ok());
        out.push(CacheDir {
            repository_id: name,
            bytes: size_of_tree(&entry.path()),
            path: entry.path(),
            last_used,
        });
    }
    out.sort_by_key(|d| d.last_used);
    Ok(out)
}

/// Removes a repository's cache directory.
pub fn remove(dir: &CacheDir) -> std::io::Result<()> {
    std::fs::remove_dir_all(&dir.path)
}

fn size_of_tree(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_of_tree(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes through a temporary name and renames, so a reader (another vault
/// process) sees the whole file or none; a crash leaves at most a temporary
/// file, which no id ever names.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

    fn named(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    #[test]
    fn copies_come_back_only_while_intact() {
        let base = tempfile::tempdir().unwrap();
        let cache = Cache::open(base.path(), REPO).unwrap();
        let bytes = b"sealed snapshot".to_vec();
        let hex = named(&bytes);
        assert_eq!(cache.read(FileKind::Snapshot, &hex), None);
        cache.write(FileKind::Snapshot, &hex, &bytes);
        assert_eq!(cache.read(FileKind::Snapshot, &hex), Some(bytes.clone()));
        // Another kind, same name: a different file.
        assert_eq!(cache.read(FileKind::Index, &hex), None);
        let file = cache.dir().join("snapshots").join(&hex);
        std::fs::write(&file, b"tampered").unwrap();
        assert_eq!(cache.read(FileKind::Snapshot, &hex), None);
        assert!(!file.exists(), "a damaged copy is dropped");
        assert!(base.path().join("CACHEDIR.TAG").exists());
    }

    #[test]
    fn only_canonical_names_of_kept_kinds_become_files() {
        let base = tempfile::tempdir().unwrap();
        let cache = Cache::open(base.path(), REPO).unwrap();
        cache.write(FileKind::Snapshot, "../../escape", b"x");
        cache.write(FileKind::Key, &named(b"k"), b"k");
        cache.write(FileKind::Snapshot, &named(b"s").to_uppercase(), b"s");
        let mut files = Vec::new();
        for entry in walk(base.path()) {
            files.push(entry);
        }
        assert_eq!(files, vec![base.path().join("CACHEDIR.TAG")]);
        assert!(Cache::open(base.path(), "../x").is_err());
    }

    #[test]
    fn listing_shows_each_repository_with_its_size_and_last_use() {
        let base = tempfile::tempdir().unwrap();
        let other = "cd".repeat(32);
        let old = Cache::open(base.path(), &other).unwrap();
        old.write(FileKind::Index, &named(b"12345"), b"12345");
        let past = filetime::FileTime::from_unix_time(1_000_000_000, 0);
        filetime::set_file_mtime(old.dir(), past).unwrap();
        let cache = Cache::open(base.path(), REPO).unwrap();
        cache.write(FileKind::Snapshot, &named(b"abc"), b"abc");
        std::fs::create_dir(base.path().join("not-a-repository")).unwrap();
        let dirs = list(base.path()).unwrap();
        let ids: Vec<&str> = dirs.iter().map(|d| d.repository_id.as_str()).collect();
        assert_eq!(ids, [other.as_str(), REPO], "least recently used first");
        assert_eq!((dirs[0].bytes, dirs[1].bytes), (5, 3));
        assert_eq!(dirs[0].last_used.unwrap().as_second(), 1_000_000_000);
        remove(&dirs[0]).unwrap();
        assert_eq!(list(base.path()).unwrap().len(), 1);
        assert!(list(&base.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn retain_drops_what_the_store_no_longer_lists() {
        let base = tempfile::tempdir().unwrap();
        let cache = Cache::open(base.path(), REPO).unwrap();
        let (a, b) = (named(b"a"), named(b"b"));
        cache.write(FileKind::Index, &a, b"a");
        cache.write(FileKind::Index, &b, b"b");
        cache.retain(FileKind::Index, &HashSet::from([a.clone()]));
        assert!(cache.read(FileKind::Index, &a).is_some());
        assert!(cache.read(FileKind::Index, &b).is_none());
    }

    /// A cache under a directory others can write (`--cache-dir` in
    /// /tmp): they could make its directories symlinks to any directory,
    /// whose files dropping stale copies then deleted.
    #[test]
    fn symlinked_cache_directories_are_refused_and_never_emptied() {
        use std::os::unix::fs::symlink;
        let shared = tempfile::tempdir().unwrap();
        let victim = shared.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let precious = ["passwd", &named(b"p"), ".tmp-0000000000000000"];
        let keep = || {
            for name in precious {
                std::fs::write(victim.join(name), b"precious").unwrap();
            }
        };
        let kept = || precious.iter().all(|name| victim.join(name).exists());
        keep();
        // The base itself, the repository's directory, one of its kinds.
        symlink(&victim, shared.path().join("base")).unwrap();
        let err = Cache::open(&shared.path().join("base"), REPO).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let base = shared.path().join("vc");
        std::fs::create_dir(&base).unwrap();
        symlink(&victim, base.join(REPO)).unwrap();
        assert!(Cache::open(&base, REPO).is_err());
        std::fs::remove_file(base.join(REPO)).unwrap();
        std::fs::create_dir(base.join(REPO)).unwrap();
        symlink(&victim, base.join(REPO).join("index")).unwrap();
        assert!(Cache::open(&base, REPO).is_err());
        assert!(kept());
        // Swapped for a symlink after the cache was opened: retain looks
        // again, and deletes nothing there.
        std::fs::remove_file(base.join(REPO).join("index")).unwrap();
        let cache = Cache::open(&base, REPO).unwrap();
        std::fs::remove_dir(base.join(REPO).join("index")).unwrap();
        symlink(&victim, base.join(REPO).join("index")).unwrap();
        cache.retain(FileKind::Index, &HashSet::new());
        assert!(kept());
        // In its own directory, only names of copies are dropped.
        std::fs::remove_file(base.join(REPO).join("index")).unwrap();
        std::fs::create_dir(base.join(REPO).join("index")).unwrap();
        let own = base.join(REPO).join("index");
        std::fs::write(own.join("notes"), b"mine").unwrap();
        symlink(victim.join("passwd"), own.join(named(b"l"))).unwrap();
        cache.write(FileKind::Index, &named(b"i"), b"i");
        cache.retain(FileKind::Index, &HashSet::new());
        assert!(own.join("notes").exists());
        assert!(own.join(named(b"l")).symlink_metadata().is_ok());
        assert!(!own.join(named(b"i")).exists());
        assert!(kept());
    }

    /// A cache directory another user made (and so can change at will) is
    /// not used.
    #[test]
    fn a_cache_directory_of_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let base = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        if me != 0 {
            // Only root can give a directory away; as anyone else the
            // check is the same code, exercised by the symlink test.
            return;
        }
        let dir = base.path().join(REPO);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().uid(), 65534);
        let err = Cache::open(base.path(), REPO).unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }

    /// `vault cache --cleanup` removes what the listing shows: never a
    /// directory reached through a symlinked base, nor another user's.
    #[test]
    fn the_listing_refuses_a_symlinked_base_and_skips_other_users_caches() {
        use std::os::unix::fs::symlink;
        let shared = tempfile::tempdir().unwrap();
        let real = shared.path().join("real");
        Cache::open(&real, REPO).unwrap();
        assert_eq!(list(&real).unwrap().len(), 1);
        symlink(&real, shared.path().join("link")).unwrap();
        let err = list(&shared.path().join("link")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        if nix::unistd::geteuid().is_root() {
            let theirs = real.join(named(b"theirs"));
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let listed = list(&real).unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].repository_id, REPO);
            std::os::unix::fs::chown(&real, Some(65534), Some(65534)).unwrap();
            let err = list(&real).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        }
    }

    #[test]
    fn an_unwritable_cache_turns_itself_off() {
        let base = tempfile::tempdir().unwrap();
        let cache = Cache::open(base.path(), REPO).unwrap();
        std::fs::remove_dir_all(cache.dir().join("index")).unwrap();
        std::fs::write(cache.dir().join("index"), b"not a directory").unwrap();
        let hex = named(b"i");
        cache.write(FileKind::Index, &hex, b"i");
        assert!(cache.off.load(Ordering::Relaxed));
        assert_eq!(cache.read(FileKind::Index, &hex), None);
    }

    #[test]
    fn a_cached_repository_reads_snapshots_and_index_files_from_the_store_once() {
        use crate::repository::{InitOptions, Repository};
        use crate::test_support::{backup_stream, memory_repo, password};
        let (backend, repo) = memory_repo(InitOptions::default());
        backup_stream(&repo, "dump.sql", &[5u8; 10_000]);
        let base = tempfile::tempdir().unwrap();
        let open = || {
            let mut repo = Repository::open(backend.clone(), &password()).unwrap();
            let cache = Cache::open(base.path(), &repo.config().id).unwrap();
            repo.set_cache(cache);
            repo
        };
        let gets = || backend.requests().unwrap().get;
        let first = open();
        let before = gets();
        let (id, snap) = first.snapshots().unwrap().pop().unwrap();
        let index = first.load_index().unwrap();
        assert!(gets() >= before + 2);
        let second = open();
        let before = gets();
        let (id2, snap2) = second.snapshots().unwrap().pop().unwrap();
        let index2 = second.load_index().unwrap();
        assert_eq!(gets(), before, "everything came from the cache");
        assert_eq!((id, snap.tree), (id2, snap2.tree));
        assert_eq!(index.len(), index2.len());
        // A snapshot deleted in the store (forget from another machine) is
        // not served from the cache, and its copy goes.
        backend
            .delete(&FileKind::Snapshot.path(&id.to_hex()))
            .unwrap();
        assert!(second.snapshots().unwrap().is_empty());
        let copy = Path::new(&second.config().id).join(format!("snapshots/{id}"));
        assert!(!base.path().join(copy).exists());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
