//! Key management (repo-format.md §5): list, add, remove and re-password the
//! key files that wrap the master key set, and the paper export and import
//! of the master key set itself.
//!
//! Every key file wraps the same master key set, so nothing here touches any
//! object but `keys/<id>`: no data, index or snapshot is rewritten. The
//! master key set itself can never change (§5, rotation limits).

use crate::backend::{Backend, BackendError, PutMode};
use crate::crypto::{KdfParams, KeyFile, MasterKey, Password};
use crate::error::{Error, Result};
use crate::id::KeyId;
use crate::repository::{FileKind, Repository};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use zeroize::Zeroizing;

/// One key file, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    /// The key file's name (`keys/<id>`).
    pub id: KeyId,
    /// Whether this key file opened the repository in this process.
    pub current: bool,
    /// When it was added, as recorded in the file.
    pub created: String,
    /// Host that added it.
    pub hostname: String,
    /// User that added it.
    pub username: String,
    /// Its argon2id parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfParams>,
    /// Why the file cannot be used, when it does not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl KeyInfo {
    /// Whether the file decodes (a usable key, as far as can be told
    /// without its password).
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.error.is_none()
    }
}

/// Who and how for a new key file.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// argon2id parameters.
    pub kdf: KdfParams,
    /// Host recorded in the key file.
    pub hostname: String,
    /// User recorded in the key file.
    pub username: String,
}

/// Checks KDF parameters against the bounds every reader enforces (§5), so
/// a key file written with them can always be opened again.
pub fn validate_kdf(p: &KdfParams) -> Result<()> {
    const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    const MAX_ITERATIONS: u32 = 64;
    const MAX_PARALLELISM: u32 = 64;
    let fail = |what: String| {
        Err(Error::InvalidInput(format!(
            "invalid KDF parameters: {what}"
        )))
    };
    if p.parallelism == 0 || p.parallelism > MAX_PARALLELISM {
        return fail(format!("parallelism must be 1-{MAX_PARALLELISM}"));
    }
    if p.iterations == 0 || p.iterations > MAX_ITERATIONS {
        return fail(format!("iterations must be 1-{MAX_ITERATIONS}"));
    }
    let min_memory = 8 * p.parallelism;
    if p.memory_kib < min_memory || p.memory_kib > MAX_MEMORY_KIB {
        return fail(format!(
            "memory must be {min_memory} KiB to {} MiB",
            MAX_MEMORY_KIB / 1024
        ));
    }
    Ok(())
}

fn key_path(id: &KeyId) -> String {
    FileKind::Key.path(&id.to_hex())
}

/// Every object under `keys/`, with what its file says about itself.
pub fn list(repo: &Repository) -> Result<Vec<KeyInfo>> {
    let mut out = Vec::new();
    for info in repo.list(FileKind::Key)? {
        let name = info.path.rsplit('/').next().unwrap_or_default();
        let Ok(id) = name.parse::<KeyId>() else {
            tracing::warn!("ignoring {}: not a key file name", info.path);
            continue;
        };
        let bytes = match repo.backend().get(&info.path, FileKind::Key.max_len()) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => continue,
            Err(e) => return Err(Error::backend(&info.path, e)),
        };
        let current = KeyId::of_bytes(&bytes) == repo.key_id();
        out.push(match KeyFile::decode(&bytes) {
            Ok(file) => KeyInfo {
                id,
                current,
                kdf: Some(file.kdf_params()),
                created: file.created,
                hostname: file.hostname,
                username: file.username,
                error: None,
            },
            Err(e) => KeyInfo {
                id,
                current,
                created: String::new(),
                hostname: String::new(),
                username: String::new(),
                kdf: None,
                error: Some(e.to_string()),
            },
        });
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Resolves a full key id or a unique prefix of one.
pub fn resolve(repo: &Repository, prefix: &str) -> Result<KeyId> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!(
            "{prefix:?} is not a key id (hex digits, as `vault key list` shows)"
        )));
    }
    let matches: Vec<KeyId> = list(repo)?
        .into_iter()
        .map(|k| k.id)
        .filter(|id| id.to_hex().starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::NotFound {
            object: format!("key {prefix}"),
        }),
        _ => Err(Error::InvalidInput(format!(
            "key id prefix {prefix} matches {} keys; give more digits",
            matches.len()
        ))),
    }
}

/// Wraps the repository's master key set under `password` in a new key
/// file, then reads the stored file back and opens it, so a key that does
/// not work is never reported as added. Returns its id.
pub fn add(repo: &Repository, password: &Password, new: &NewKey) -> Result<KeyId> {
    add_for(repo.backend().as_ref(), repo.key(), password, new)
}

fn add_for(
    backend: &dyn Backend,
    master: &MasterKey,
    password: &Password,
    new: &NewKey,
) -> Result<KeyId> {
    if password.is_empty() {
        return Err(Error::InvalidInput("empty password refused".into()));
    }
    validate_kdf(&new.kdf)?;
    let file = KeyFile::wrap(
        master,
        password,
        new.kdf,
        &new.hostname,
        &new.username,
        jiff::Timestamp::now().to_string(),
    );
    let bytes = file.encode();
    let id = KeyId::of_bytes(&bytes);
    let path = key_path(&id);
    backend
        .put(&path, bytes.into(), PutMode::Create)
        .map_err(|e| Error::backend(&path, e))?;
    let verified = backend
        .get(&path, FileKind::Key.max_len())
        .map_err(|e| Error::backend(&path, e))
        .and_then(|stored| {
            KeyFile::decode(&stored)
                .and_then(|f| f.open(password))
                .map_err(|e| Error::corrupt(&path, e))
        });
    match verified {
        Ok(key) if *key.to_bytes() == *master.to_bytes() => Ok(id),
        Ok(_) => {
            let _ = backend.delete(&path);
            Err(Error::corrupt(&path, "read back a different master key"))
        }
        Err(e) => {
            let _ = backend.delete(&path);
            Err(e)
        }
    }
}

/// Removes a key file. Refuses the last usable key file, and the key file
/// that opened `repo` unless `force`. The caller should hold the exclusive
/// lock, so two removals cannot each leave the other's key as the last.
pub fn remove(repo: &Repository, id: &KeyId, force: bool) -> Result<()> {
    let keys = list(repo)?;
    let Some(target) = keys.iter().find(|k| k.id == *id) else {
        return Err(Error::NotFound {
            object: format!("key {}", id.short()),
        });
    };
    if target.current && !force {
        return Err(Error::InvalidInput(format!(
            "key {} is the one in use; pass --force to remove it anyway (or use `vault key passwd`)",
            id.short()
        )));
    }
    if !keys.iter().any(|k| k.id != *id && k.is_valid()) {
        return Err(Error::InvalidInput(format!(
            "key {} is the repository's last key; add another first (`vault key add`)",
            id.short()
        )));
    }
    let path = key_path(id);
    repo.backend()
        .delete(&path)
        .map_err(|e| Error::backend(path, e))
}

/// Changes the password of the key in use: adds a key file for the new
/// password, then removes the one that opened `repo`. Returns (new, removed).
/// `cancel` set by the time the new key is written takes that key back
/// ([`Error::Interrupted`]): a stopped change leaves the old password, not
/// two.
pub fn change_password(
    repo: &Repository,
    password: &Password,
    new: &NewKey,
    cancel: &AtomicBool,
) -> Result<(KeyId, KeyId)> {
    let old = repo.key_id();
    if old == KeyId([0; 32]) {
        return Err(Error::InvalidInput(
            "the repository was not opened with a key file; use `vault key add`".into(),
        ));
    }
    let added = add(repo, password, new)?;
    if cancel.load(Ordering::SeqCst) {
        remove(repo, &added, true)?;
        return Err(Error::Interrupted);
    }
    remove(repo, &old, true)?;
    Ok((added, old))
}

/// A master key set read back from its paper form.
#[derive(Debug)]
pub struct PaperKey {
    /// The master key set.
    pub key: MasterKey,
    /// The repository id the paper names.
    pub repository: String,
}

/// Opens the repository at `backend` with an imported master key set,
/// verifying it decrypts the config and belongs to the repository the paper
/// names, and writes a new key file for `password`. Works when every key
/// file is lost. Returns the repository and the new key's id.
pub fn import(
    backend: Arc<dyn Backend>,
    paper: &PaperKey,
    password: &Password,
    new: &NewKey,
) -> Result<(Repository, KeyId)> {
    let repo = Repository::open_with_key(backend, paper.key.clone()).map_err(|e| match e {
        Error::Corrupt { .. } => Error::InvalidInput(
            "the imported key does not decrypt this repository's config: it belongs to another repository (or the config is damaged)".into(),
        ),
        e => e,
    })?;
    if !repo.config().id.eq_ignore_ascii_case(&paper.repository) {
        return Err(Error::InvalidInput(format!(
            "the paper key names repository {}, but this is repository {}",
            short_repo(&paper.repository),
            short_repo(&repo.config().id)
        )));
    }
    let id = add(&repo, password, new)?;
    Ok((repo, id))
}

fn short_repo(id: &str) -> &str {
    id.get(..10).unwrap_or(id)
}

/// The printable form of the master key set (repo-format.md §5.1).
pub mod paper {
    use super::{Error, MasterKey, PaperKey, Result, Zeroizing};

    const LINE_CONTEXT: &str = "vault 2026 paper key v1 line check";
    const SUM_CONTEXT: &str = "vault 2026 paper key v1 checksum";
    const KEY_LINES: usize = 4;
    const BYTES_PER_LINE: usize = MasterKey::LEN / KEY_LINES;

    /// The 2-byte check of one line: keyed by its label, so swapped lines
    /// are caught too.
    fn line_check(label: &str, payload: &[u8]) -> [u8; 2] {
        let mut h = blake3::Hasher::new_derive_key(LINE_CONTEXT);
        h.update(label.as_bytes());
        h.update(&[0]);
        h.update(payload);
        let out = h.finalize();
        [out.as_bytes()[0], out.as_bytes()[1]]
    }

    fn checksum(repo_id: &[u8], key: &[u8]) -> [u8; 8] {
        let mut h = blake3::Hasher::new_derive_key(SUM_CONTEXT);
        h.update(repo_id);
        h.update(key);
        let mut out = [0u8; 8];
        out.copy_from_slice(&h.finalize().as_bytes()[..8]);
        out
    }

    fn grouped(bytes: &[u8], group: usize) -> String {
        bytes
            .chunks(group)
            .map(hex::encode)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The paper text for `key` of repository `repo_id` (64 hex digits).
    pub fn encode(key: &MasterKey, repo_id: &str) -> Result<Zeroizing<String>> {
        let repo = hex::decode(repo_id)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| Error::InvalidInput(format!("bad repository id {repo_id:?}")))?;
        let bytes = key.to_bytes();
        let mut out = Zeroizing::new(String::new());
        out.push_str(
            "# vault paper key, format 1\n\
             #\n\
             # The master key of the vault repository below. With this text and the\n\
             # storage, `vault key import FILE` restores access after every password\n\
             # and key file is lost. Anyone holding it who can read the storage can\n\
             # read every backup: keep it offline, like the password. Changing or\n\
             # removing passwords does not change it.\n\
             #\n\
             # Each line ends with its check in brackets; import names a mistyped\n\
             # line. Case and spacing do not matter; lines starting with # are ignored.\n\n",
        );
        let line = |label: &str, payload: &[u8], group: usize| {
            format!(
                "{label}: {}  [{}]\n",
                grouped(payload, group),
                hex::encode(line_check(label, payload))
            )
        };
        out.push_str(&line("repository", &repo, 4));
        for (i, chunk) in bytes.chunks(BYTES_PER_LINE).enumerate() {
            out.push_str(&line(&format!("key {}", i + 1), chunk, 2));
        }
        let sum = checksum(&repo, &*bytes);
        out.push_str(&format!("checksum: {}\n", grouped(&sum, 4)));
        Ok(out)
    }

    /// Reads a paper key, checking every line and the checksum.
    pub fn decode(text: &str) -> Result<PaperKey> {
        let bad = |msg: String| Error::InvalidInput(format!("paper key: {msg}"));
        let mut repo: Option<Vec<u8>> = None;
        let mut key = Zeroizing::new([0u8; MasterKey::LEN]);
        let mut have = [false; KEY_LINES];
        let mut sum: Option<Vec<u8>> = None;
        for (no, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((label, rest)) = line.split_once(':') else {
                return Err(bad(format!("line {}: expected `LABEL: DIGITS`", no + 1)));
            };
            // Canonical label (`key 2`), however it was spaced or cased.
            let squashed: String = label
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase();
            let label = match squashed.strip_prefix("key") {
                Some(n) if !n.is_empty() => format!("key {n}"),
                _ => squashed,
            };
            let digits: String = rest
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '[' && *c != ']')
                .collect();
            let payload = Zeroizing::new(hex::decode(&digits).map_err(|_| {
                bad(format!(
                    "line {} ({label}): not hex digits; check for a mistyped character",
                    no + 1
                ))
            })?);
            let checked = |len: usize| -> Result<&[u8]> {
                if payload.len() != len + 2 {
                    return Err(bad(format!(
                        "line {} ({label}): expected {} hex digits and a 4-digit check, found {} digits",
                        no + 1,
                        len * 2,
                        digits.len()
                    )));
                }
                let (body, check) = payload.split_at(len);
                if line_check(&label, body) != check {
                    return Err(bad(format!(
                        "line {} ({label}) does not match its check [{}]: a digit is mistyped",
                        no + 1,
                        hex::encode(check)
                    )));
                }
                Ok(body)
            };
            if label == "repository" {
                repo = Some(checked(32)?.to_vec());
            } else if label == "checksum" {
                if payload.len() != 8 {
                    return Err(bad(format!(
                        "line {}: checksum must be 16 hex digits",
                        no + 1
                    )));
                }
                sum = Some(payload.to_vec());
            } else if let Some(n) = label
                .strip_prefix("key ")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=KEY_LINES).contains(n))
            {
                let body = checked(BYTES_PER_LINE)?;
                let at = (n - 1) * BYTES_PER_LINE;
                key[at..at + BYTES_PER_LINE].copy_from_slice(body);
                have[n - 1] = true;
            } else {
                return Err(bad(format!("line {}: unknown label {label:?}", no + 1)));
            }
        }
        let repo = repo.ok_or_else(|| bad("the `repository:` line is missing".into()))?;
        if let Some(missing) = have.iter().position(|h| !h) {
            return Err(bad(format!("the `key {}:` line is missing", missing + 1)));
        }
        let sum = sum.ok_or_else(|| bad("the `checksum:` line is missing".into()))?;
        if checksum(&repo, &*key).as_slice() != sum.as_slice() {
            return Err(bad(
                "the checksum does not match the key lines (lines from different paper keys?)"
                    .into(),
            ));
        }
        Ok(PaperKey {
            key: MasterKey::from_bytes(&key),
            repository: hex::encode(repo),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change stopped once its new key is written takes that key back:
    /// the old password still opens the repository, and it alone.
    #[test]
    fn a_stopped_password_change_keeps_the_old_key_only() {
        let (backend, repo) = crate::test_support::memory_repo(Default::default());
        let before: Vec<String> = list(&repo).unwrap().iter().map(|k| k.id.to_hex()).collect();
        let new = NewKey {
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            hostname: "h".into(),
            username: "u".into(),
        };
        let stop = AtomicBool::new(true);
        let err = change_password(&repo, &Password::new("new"), &new, &stop).unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        let after: Vec<String> = list(&repo).unwrap().iter().map(|k| k.id.to_hex()).collect();
        assert_eq!(after, before);
        Repository::open(backend.clone(), &crate::test_support::password()).unwrap();
        assert!(Repository::open(backend, &Password::new("new")).is_err());
        // Not stopped, it changes the password.
        let (added, removed) =
            change_password(&repo, &Password::new("new"), &new, &AtomicBool::new(false)).unwrap();
        assert_eq!(removed.to_hex(), before[0]);
        assert_ne!(added.to_hex(), before[0]);
    }

    const REPO: &str = "980f9f4200000000000000000000000000000000000000000000000000ab77fc";

    #[test]
    fn paper_round_trips() {
        let key = MasterKey::generate();
        let text = paper::encode(&key, REPO).unwrap();
        let back = paper::decode(&text).unwrap();
        assert_eq!(*back.key.to_bytes(), *key.to_bytes());
        assert_eq!(back.repository, REPO);
        // Case and spacing do not matter.
        let sloppy = text.to_uppercase().replace(' ', "");
        let back = paper::decode(&sloppy).unwrap();
        assert_eq!(*back.key.to_bytes(), *key.to_bytes());
    }

    #[test]
    fn paper_names_the_mistyped_line() {
        let key = MasterKey::from_bytes(&[7; 64]);
        let text = paper::encode(&key, REPO).unwrap();
        let line = text.lines().find(|l| l.starts_with("key 3:")).unwrap();
        // "0707" → "0708" in the first group.
        let typo = line.replacen("0707", "0708", 1);
        let err = paper::decode(&text.replace(line, &typo)).unwrap_err();
        assert!(err.to_string().contains("key 3"), "{err}");
        // Swapping two key lines is caught by the per-line checks.
        let l1 = text.lines().find(|l| l.starts_with("key 1:")).unwrap();
        let swapped = text.replace(l1, &l1.replace("key 1", "key 2"));
        assert!(paper::decode(&swapped).is_err());
        let missing = text.replace(line, "");
        assert!(
            paper::decode(&missing)
                .unwrap_err()
                .to_string()
                .contains("key 3")
        );
    }

    #[test]
    fn kdf_bounds_match_readers() {
        assert!(validate_kdf(&KdfParams::default()).is_ok());
        for bad in [
            KdfParams {
                memory_kib: 0,
                ..KdfParams::default()
            },
            KdfParams {
                iterations: 65,
                ..KdfParams::default()
            },
            KdfParams {
                parallelism: 0,
                ..KdfParams::default()
            },
        ] {
            assert!(validate_kdf(&bad).is_err());
        }
    }
}
