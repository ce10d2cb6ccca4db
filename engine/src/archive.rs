//! A snapshot directory as a tar stream, as `restic dump` and `borg
//! export-tar` write one: to pipe a restore elsewhere (`vault dump latest
//! /srv/uploads | ssh host tar -x`) without a scratch copy.
//!
//! Entries carry their snapshot path without the leading `/`, mode, owner
//! (ids and names), mtime, symlink targets and device numbers; file content
//! is streamed blob by blob, each authenticated and re-hashed as in any
//! read. A PAX header before an entry carries what the ustar fields cannot:
//! an mtime before 1970 or with a fraction (`mtime`), and extended
//! attributes, POSIX ACLs among them (`SCHILY.xattr.NAME`, as GNU tar
//! `--xattrs` and restic's dump write them). A file's further hard links
//! (same device and inode) are link entries to its first path. Sockets are
//! left out: tar has no entry for them.

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::index::Index;
use crate::repository::Repository;
use crate::restore::walk;
use crate::tree::{Node, NodeKind};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What went into the archive.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ArchiveStats {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices and fifos.
    pub others: u64,
    /// Entries the archive cannot hold: sockets in tar; devices, fifos and
    /// sockets in zip.
    pub skipped: u64,
    /// File content bytes.
    pub bytes: u64,
}

/// Writes the directory at snapshot path `at` (bytes, as file names are)
/// and everything below it to
/// `out` as a tar archive: `node` is that directory (from
/// [`crate::restore::find_node`]), or `None` for the snapshot's root tree
/// `root`, whose entries then make up the whole archive.
pub fn write_tar(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    at: &Path,
    node: Option<&Node>,
    out: &mut dyn Write,
) -> Result<ArchiveStats> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut seen = Seen::default();
    each_entry(repo, index, root, at, node, &mut |name, node| {
        append(repo, index, &mut tar, name, node, &mut seen)
    })?;
    tar.into_inner()
        .and_then(|out| out.flush())
        .map_err(|e| Error::io("writing the archive", e))?;
    Ok(seen.stats)
}

/// Calls `add` with the archive name (the snapshot path without its
/// leading `/`) of the directory at `at` (its `node`; none for the
/// snapshot's root, `root`) and of everything below it, parents first:
/// what the tar and the zip writer both put in their archives.
fn each_entry(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    at: &Path,
    node: Option<&Node>,
    add: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    let dir = match node {
        Some(node) => {
            let Some(subtree) = node.subtree.filter(|_| node.kind == NodeKind::Dir) else {
                return Err(Error::InvalidInput(format!(
                    "{} is not a directory",
                    at.display()
                )));
            };
            add(at.strip_prefix("/").unwrap_or(at), node)?;
            subtree
        }
        None => *root,
    };
    walk(repo, index, &dir, &mut |path, node| {
        let full = at.join(path.strip_prefix("/").unwrap_or(path));
        add(full.strip_prefix("/").unwrap_or(&full), &node)?;
        Ok(true)
    })
}

/// Writes the directory at snapshot path `at` and everything below it to
/// `out` as a zip archive, as [`write_tar`] writes a tar one, streaming:
/// each entry's sizes and checksum follow its data (a data descriptor), so
/// `out` need not seek. Entries carry their path without the leading `/`
/// (a directory's with a trailing one), their mode and file type (Unix
/// external attributes), their mtime (the DOS field in local time, and
/// exactly, to the second, in an extended timestamp field), and a symlink
/// its target as its content, as restic's zip and Info-ZIP write them.
/// A name that is not UTF-8 is its exact bytes without the UTF-8 flag, a
/// directory's as a file's, as restic writes it. Zip has no owners,
/// extended attributes, hard links, devices, fifos or sockets: a further
/// hard link is a copy of the file, and the special files are left out
/// (counted as skipped), as restic's dump leaves them out (of its tar as
/// well) and Info-ZIP's zip does; an empty entry with the file type in its
/// mode would extract as an empty regular file.
pub fn write_zip(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    at: &Path,
    node: Option<&Node>,
    out: &mut dyn Write,
) -> Result<ArchiveStats> {
    let mut zip = zip::ZipWriter::new_stream(out);
    let mut stats = ArchiveStats::default();
    each_entry(repo, index, root, at, node, &mut |name, node| {
        append_zip(repo, index, &mut zip, name, node, &mut stats)
    })?;
    let out = zip
        .finish()
        .map_err(|e| zip_error("writing the archive's directory", e))?;
    out.into_inner()
        .flush()
        .map_err(|e| Error::io("writing the archive", e))?;
    Ok(stats)
}

/// A zip error as the engine's: the output's I/O error as such (a full
/// disk, a closed pipe), anything else as what the archive could not hold.
fn zip_error(what: &str, e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(io) => Error::io(what.to_owned(), io),
        other => Error::InvalidInput(format!("{what}: {other}")),
    }
}

/// The MS-DOS directory attribute, in the low byte of a zip entry's
/// external attributes.
const ZIP_DOS_DIRECTORY: u32 = 0x10;

/// The options of `node`'s zip entry: its mode and file type, its mtime.
fn zip_options(node: &Node, file_type: u32) -> zip::write::FullFileOptions<'static, 'static> {
    let mtime = node.mtime;
    let local = mtime.to_zoned(jiff::tz::TimeZone::system());
    // Before 1980 or after 2107 the DOS field cannot say it: 1980-01-01.
    let dos = (|| {
        zip::DateTime::from_date_and_time(
            u16::try_from(local.year()).ok()?,
            u8::try_from(local.month()).ok()?,
            u8::try_from(local.day()).ok()?,
            u8::try_from(local.hour()).ok()?,
            u8::try_from(local.minute()).ok()?,
            u8::try_from(local.second()).ok()?,
        )
        .ok()
    })()
    .unwrap_or_default();
    // The low byte holds MS-DOS attributes: tools that read only those
    // (Windows' own, and the ones that go by the DOS byte when the name
    // lacks a `/`) know a directory by 0x10.
    let dos_attributes = if file_type == libc::S_IFDIR {
        ZIP_DOS_DIRECTORY
    } else {
        0
    };
    let options = zip::write::SimpleFileOptions::default()
        .last_modified_time(dos)
        .external_attributes(((file_type | (node.mode & 0o7777)) << 16) | dos_attributes)
        .large_file(node.size >= u64::from(u32::MAX));
    // Unsigned 32-bit seconds: a time before 1970 or after 2106 has only
    // the DOS field.
    match u32::try_from(mtime.as_second()) {
        Ok(secs) => options
            .with_extended_timestamp(Some(secs), None, None)
            .unwrap_or_else(|_| options.into_full_options()),
        Err(_) => options.into_full_options(),
    }
}

fn append_zip(
    repo: &Repository,
    index: &Index,
    zip: &mut zip::ZipWriter<zip::write::StreamWriter<&mut dyn Write>>,
    name: &Path,
    node: &Node,
    stats: &mut ArchiveStats,
) -> Result<()> {
    let what = || format!("writing {} to the archive", name.display());
    let raw = name.as_os_str().as_bytes();
    match node.kind {
        NodeKind::File => {
            let options = zip_options(node, libc::S_IFREG)
                .compression_method(zip::CompressionMethod::Deflated)
                .name(raw);
            zip.start_file_with_options(options)
                .map_err(|e| zip_error(&what(), e))?;
            let mut content = Content {
                repo,
                index,
                ids: node.content.iter().flatten(),
                current: Vec::new(),
                at: 0,
                left: node.size,
            };
            std::io::copy(&mut content, zip).map_err(|e| content_error(name, e))?;
            stats.files += 1;
            stats.bytes += node.size;
        }
        NodeKind::Dir => {
            let options = zip_options(node, libc::S_IFDIR);
            match std::str::from_utf8(raw) {
                Ok(dir_name) => zip.add_directory(dir_name, options),
                Err(_) => add_raw_directory(zip, raw, options),
            }
            .map_err(|e| zip_error(&what(), e))?;
            stats.dirs += 1;
        }
        NodeKind::Symlink => {
            let target = node
                .usable_link_target()
                .map_err(|why| Error::corrupt(format!("entry /{}", name.display()), why))?;
            let options = zip_options(node, libc::S_IFLNK)
                .compression_method(zip::CompressionMethod::Stored)
                .name(raw);
            zip.start_file_with_options(options)
                .map_err(|e| zip_error(&what(), e))?;
            zip.write_all(target.as_bytes())
                .map_err(|e| Error::io(what(), e))?;
            stats.others += 1;
        }
        NodeKind::Dev | NodeKind::Chardev | NodeKind::Fifo | NodeKind::Socket => {
            stats.skipped += 1;
        }
    }
    Ok(())
}

/// A directory entry named by `name`'s exact bytes (and `/`), as restic's
/// zip writes one: without the UTF-8 flag, which the crate sets only for a
/// name that is UTF-8. Only `add_directory` writes a directory entry to a
/// stream without going back to fill in its header, and it takes a
/// `String`; an entry named by bytes is written whole into a small zip in
/// memory, where going back is possible, and copied from there as it is.
fn add_raw_directory(
    zip: &mut zip::ZipWriter<zip::write::StreamWriter<&mut dyn Write>>,
    name: &[u8],
    options: zip::write::FullFileOptions<'static, 'static>,
) -> zip::result::ZipResult<()> {
    let name = [name, b"/"].concat();
    let mut scratch = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    scratch.start_file_with_options(
        options
            .compression_method(zip::CompressionMethod::Stored)
            .name(&name),
    )?;
    let mut made = zip::ZipArchive::new(scratch.finish()?)?;
    zip.raw_copy_file(made.by_index_raw(0)?)
}

/// What the archive holds so far.
#[derive(Default)]
struct Seen {
    stats: ArchiveStats,
    /// The first path of each file with further hard links, by device and
    /// inode.
    linked: HashMap<(u64, u64), PathBuf>,
}

/// A time as a PAX record value: decimal seconds, with a sign and the
/// fraction when there is one (`-302443199.876543211`).
fn pax_time(t: jiff::Timestamp) -> String {
    let sign = if t.as_second() < 0 || t.subsec_nanosecond() < 0 {
        "-"
    } else {
        ""
    };
    let (second, nano) = (
        t.as_second().unsigned_abs(),
        t.subsec_nanosecond().unsigned_abs(),
    );
    if nano == 0 {
        format!("{sign}{second}")
    } else {
        format!("{sign}{second}.{nano:09}")
    }
}

/// The PAX records `node` needs beyond the ustar header, keys as bytes:
/// an attribute's name is its exact bytes, UTF-8 or not.
fn pax_records(node: &Node) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut records = Vec::new();
    if node.mtime.as_second() < 0 || node.mtime.subsec_nanosecond() != 0 {
        records.push((b"mtime".to_vec(), pax_time(node.mtime).into_bytes()));
    }
    for xattr in &node.extended_attributes {
        // A value that is not base64 is damage; the entry goes without it.
        if let Some(value) = xattr.value_bytes() {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend(pax_xattr_name(xattr.os_name().as_bytes()));
            records.push((key, value));
        }
    }
    records
}

/// An attribute name as GNU tar writes it in a `SCHILY.xattr.` keyword
/// (and decodes it on extraction): `%` and `=` percent-encoded, since a
/// record's keyword ends at its first `=`; every other byte as it is.
fn pax_xattr_name(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &b in name {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'=' => out.extend_from_slice(b"%3D"),
            b => out.push(b),
        }
    }
    out
}

/// A PAX extended header (`x`) holding `records`, each `LEN KEY=VALUE\n`
/// with LEN counting the whole record, itself included. The tar crate's
/// `append_pax_extensions` takes keys as `str` only.
fn append_pax(
    tar: &mut tar::Builder<&mut dyn Write>,
    records: &[(Vec<u8>, Vec<u8>)],
) -> std::io::Result<()> {
    let mut data = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.push(b' ');
        data.extend_from_slice(key);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_cksum();
    tar.append(&header, data.as_slice())
}

fn append(
    repo: &Repository,
    index: &Index,
    tar: &mut tar::Builder<&mut dyn Write>,
    name: &Path,
    node: &Node,
    seen: &mut Seen,
) -> Result<()> {
    let failed =
        |e: std::io::Error| Error::io(format!("writing {} to the archive", name.display()), e);
    if node.kind == NodeKind::Socket {
        seen.stats.skipped += 1;
        return Ok(());
    }
    // Before anything of the entry is written: tar cannot hold it either.
    let link_target = match node.kind {
        NodeKind::Symlink => Some(
            node.usable_link_target()
                .map_err(|why| Error::corrupt(format!("entry /{}", name.display()), why))?,
        ),
        _ => None,
    };
    let stats = &mut seen.stats;
    let records = pax_records(node);
    if !records.is_empty() {
        append_pax(tar, &records).map_err(failed)?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(node.mode & 0o7777);
    header.set_mtime(u64::try_from(node.mtime.as_second()).unwrap_or(0));
    header.set_uid(u64::from(node.uid));
    header.set_gid(u64::from(node.gid));
    // Names longer than the field are left out; the ids stay.
    let _ = header.set_username(&node.user);
    let _ = header.set_groupname(&node.group);
    header.set_size(0);
    match node.kind {
        NodeKind::File if node.links > 1 => {
            let key = (node.device_id, node.inode);
            if let Some(first) = seen.linked.get(&key) {
                header.set_entry_type(tar::EntryType::Link);
                tar.append_link(&mut header, name, first).map_err(failed)?;
                stats.others += 1;
                return Ok(());
            }
            seen.linked.insert(key, name.to_path_buf());
            append_file(repo, index, tar, header, name, node, stats)?;
        }
        NodeKind::File => append_file(repo, index, tar, header, name, node, stats)?,
        NodeKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut header, name, std::io::empty())
                .map_err(failed)?;
            stats.dirs += 1;
        }
        NodeKind::Symlink => {
            header.set_entry_type(tar::EntryType::Symlink);
            let target = link_target.unwrap_or_default();
            tar.append_link(&mut header, name, target).map_err(failed)?;
            stats.others += 1;
        }
        NodeKind::Dev | NodeKind::Chardev | NodeKind::Fifo => {
            header.set_entry_type(match node.kind {
                NodeKind::Dev => tar::EntryType::Block,
                NodeKind::Chardev => tar::EntryType::Char,
                _ => tar::EntryType::Fifo,
            });
            if let Some(rdev) = node.device {
                let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
                let major = u32::try_from(major).map_err(|_| {
                    Error::InvalidInput(format!(
                        "{}: device major {major} too large for tar",
                        name.display()
                    ))
                })?;
                let minor = u32::try_from(minor).map_err(|_| {
                    Error::InvalidInput(format!(
                        "{}: device minor {minor} too large for tar",
                        name.display()
                    ))
                })?;
                header.set_device_major(major).map_err(failed)?;
                header.set_device_minor(minor).map_err(failed)?;
            }
            tar.append_data(&mut header, name, std::io::empty())
                .map_err(failed)?;
            stats.others += 1;
        }
        NodeKind::Socket => {}
    }
    Ok(())
}

fn append_file(
    repo: &Repository,
    index: &Index,
    tar: &mut tar::Builder<&mut dyn Write>,
    mut header: tar::Header,
    name: &Path,
    node: &Node,
    stats: &mut ArchiveStats,
) -> Result<()> {
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(node.size);
    let content = Content {
        repo,
        index,
        ids: node.content.iter().flatten(),
        current: Vec::new(),
        at: 0,
        left: node.size,
    };
    tar.append_data(&mut header, name, content)
        .map_err(|e| content_error(name, e))?;
    stats.files += 1;
    stats.bytes += node.size;
    Ok(())
}

/// The error of writing a file's entry: the repository's own error when
/// reading its content failed (a damaged blob: 5, a missing pack: 4),
/// which [`Content`] hands through `io::Error`; else the output's.
fn content_error(name: &Path, e: std::io::Error) -> Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Error::io(format!("writing {} to the archive", name.display()), e);
    }
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(engine)) => *engine,
        // Checked just above.
        _ => Error::InvalidInput(format!("writing {} to the archive", name.display())),
    }
}

/// A file's content as a reader: its blobs one after another, each read
/// (and verified) when the previous one is used up. It yields exactly the
/// size the header announced, or fails: a tar entry shorter or longer than
/// its header would corrupt everything after it.
struct Content<'a, I> {
    repo: &'a Repository,
    index: &'a Index,
    ids: I,
    current: Vec<u8>,
    at: usize,
    left: u64,
}

impl<'a, I: Iterator<Item = &'a BlobId>> Read for Content<'a, I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.ids.next() {
                Some(id) => {
                    self.current = self
                        .repo
                        .read_blob(self.index, id)
                        .map_err(std::io::Error::other)?;
                    self.at = 0;
                }
                None if self.left == 0 => return Ok(0),
                None => {
                    return Err(std::io::Error::other(format!(
                        "content ends {} bytes before the recorded size",
                        self.left
                    )));
                }
            }
        }
        let available = self.current.get(self.at..).unwrap_or_default();
        let n = available.len().min(buf.len());
        if n as u64 > self.left {
            return Err(std::io::Error::other(
                "content is longer than the recorded size",
            ));
        }
        let (Some(to), Some(from)) = (buf.get_mut(..n), available.get(..n)) else {
            return Ok(0);
        };
        to.copy_from_slice(from);
        self.at += n;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::repository::InitOptions;
    use crate::test_support::{SMALL_CHUNKER, memory_repo};
    use std::sync::Arc;

    /// A repository holding one snapshot of a stream `data.bin`; its node.
    fn stored(data: &[u8]) -> (Arc<Repository>, Index, Node) {
        let (_, repo) = memory_repo(InitOptions {
            chunker: Some(SMALL_CHUNKER),
            ..InitOptions::default()
        });
        let snapshot = crate::test_support::backup_stream(&repo, "data.bin", data);
        let index = repo.load_index().unwrap();
        let node = crate::restore::find_node(&repo, &index, &snapshot.tree, "/data.bin").unwrap();
        (repo, index, node)
    }

    fn archive(repo: &Repository, index: &Index, node: &Node) -> Result<Vec<u8>> {
        let mut out: Vec<u8> = Vec::new();
        {
            let mut tar = tar::Builder::new(&mut out as &mut dyn Write);
            append(
                repo,
                index,
                &mut tar,
                Path::new("data.bin"),
                node,
                &mut Seen::default(),
            )?;
            tar.into_inner().unwrap();
        }
        Ok(out)
    }

    #[test]
    fn file_content_spans_its_blobs_and_must_match_the_recorded_size() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (repo, index, node) = stored(&data);
        assert!(node.content.as_ref().unwrap().len() > 1, "several blobs");

        let bytes = archive(&repo, &index, &node).unwrap();
        let mut tar = tar::Archive::new(bytes.as_slice());
        let mut entry = tar.entries().unwrap().next().unwrap().unwrap();
        let mut read = Vec::new();
        entry.read_to_end(&mut read).unwrap();
        assert_eq!(read, data);

        // A node whose size disagrees with its content (damage, or a
        // writer's bug) fails instead of corrupting every later entry.
        for size in [node.size - 1, node.size + 1] {
            let wrong = Node {
                size,
                ..node.clone()
            };
            assert!(archive(&repo, &index, &wrong).is_err(), "size {size}");
        }
    }

    /// Attribute names go into the archive as their exact bytes (GNU tar's
    /// `%`/`=` escapes aside), records of every length well formed.
    #[test]
    fn xattr_records_carry_the_exact_name_bytes() {
        use crate::tree::ExtendedAttribute;
        use std::ffi::OsStr;
        let (repo, index, mut node) = stored(b"x");
        let long = vec![b'v'; 95];
        node.extended_attributes = vec![
            ExtendedAttribute::new(OsStr::from_bytes(b"user.\xfe"), b"two"),
            ExtendedAttribute::new(OsStr::from_bytes(b"user.\xff"), b"one"),
            ExtendedAttribute::new(OsStr::new("user.a=b%c"), &long),
        ];
        let bytes = archive(&repo, &index, &node).unwrap();
        let mut tar = tar::Archive::new(bytes.as_slice());
        let mut entry = tar.entries().unwrap().next().unwrap().unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.key_bytes().to_vec(), r.value_bytes().to_vec())
            })
            .filter(|(k, _)| k.starts_with(b"SCHILY."))
            .collect();
        assert_eq!(
            records,
            [
                (b"SCHILY.xattr.user.\xfe".to_vec(), b"two".to_vec()),
                (b"SCHILY.xattr.user.\xff".to_vec(), b"one".to_vec()),
                (b"SCHILY.xattr.user.a%3Db%25c".to_vec(), long),
            ]
        );
        let mut read = Vec::new();
        entry.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"x");
    }
}
