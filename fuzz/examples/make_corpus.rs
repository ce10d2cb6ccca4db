//! Writes the seed corpus of every fuzz target under `fuzz/corpus/<target>/`
//! from REAL repository objects.
//!
//! It builds a small directory tree, initialises an in-memory repository
//! with the fuzz targets' fixed master key (`vault_fuzz::KEY_BYTES`), runs
//! three real backups through the engine (zstd, LZ4 and no compression,
//! tiny chunks and 4 KiB packs so there are several packs), then copies out
//! what each decoder reads:
//!
//! | target           | seeds                                                        |
//! |------------------|--------------------------------------------------------------|
//! | pack_header      | stored packs (their tail is the sealed header) and header plaintexts |
//! | blob_from_pack   | stored packs, and `kind · raw_len · encoded` single blobs    |
//! | index_file       | index file plaintexts (decrypted stored index files)         |
//! | tree             | tree blob plaintexts                                          |
//! | snapshot         | snapshot plaintexts (decrypted stored snapshots)             |
//! | config           | the stored (sealed) config, and its plaintext in each compression |
//! | compress         | blob payloads as stored (`tag · payload`) in each compression |
//! | key_file         | the golden vector key file and this repository's key file    |
//!
//! Run from `fuzz/`: `cargo run --example make_corpus` (replaces the seeds).
//! Nonces and pack order are random, so a rerun gives different bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault_engine::backend::{Backend, ObjectBackend};
use vault_engine::backup::{self, BackupOptions, BackupProgress, Source};
use vault_engine::blob::BlobKind;
use vault_engine::chunker::ChunkerParams;
use vault_engine::compress::{self, Compression};
use vault_engine::crypto::{KdfParams, Password};
use vault_engine::id::{IndexId, PackId};
use vault_engine::index::IndexFile;
use vault_engine::pack;
use vault_engine::repository::InitOptions;
use vault_engine::Repository;
use vault_fuzz::{key, open, AAD_CONFIG, AAD_INDEX, AAD_SNAPSHOT};

const TARGETS: &[&str] = &[
    "pack_header",
    "index_file",
    "tree",
    "snapshot",
    "key_file",
    "compress",
    "config",
    "blob_from_pack",
];

/// Seeds per target, named by content hash.
#[derive(Default)]
struct Corpus(BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>);

impl Corpus {
    fn add(&mut self, target: &'static str, label: &str, bytes: Vec<u8>) {
        assert!(TARGETS.contains(&target));
        let name = format!("{label}-{}", &PackId::of_bytes(&bytes).to_hex()[..16]);
        self.0.entry(target).or_default().insert(name, bytes);
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

fn text(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(
            format!("line {i:05}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

fn make_tree(root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let mut rng = SplitMix(0xf022);
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("text.txt"), text(3000)).unwrap();
    std::fs::write(root.join("random.bin"), rng.bytes(2500)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("sub/zeros.bin"), vec![0u8; 1500]).unwrap();
    let mut mixed = text(700);
    mixed.extend(rng.bytes(700));
    std::fs::write(root.join("sub/mixed.txt"), mixed).unwrap();
    std::fs::write(root.join("sub/deeper/small"), b"hello\n").unwrap();
    // A name that is not UTF-8 gets `name_raw` in its tree node.
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        b"latin-1 name\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/mixed.txt", root.join("link")).unwrap();
}

fn main() {
    let fuzz_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("vault-fuzz-corpus-{}", std::process::id()));
    let src = work.join("src");
    make_tree(&src);

    let backend = Arc::new(ObjectBackend::memory());
    let repo = Repository::init(
        backend.clone(),
        &Password::new("fuzz"),
        InitOptions {
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            chunker: Some(ChunkerParams {
                min_size: 64,
                avg_size: 256,
                max_size: 1024,
                seed: 0x5eed_f022,
            }),
            pack_size: Some(4096),
            master_key: Some(key().clone()),
            hostname: "fuzz".into(),
            username: "fuzz".into(),
            object_lock: None,
        },
    )
    .expect("init");
    let repo = Arc::new(repo);

    let base = BackupOptions {
        hostname: "fuzz".into(),
        username: "fuzz".into(),
        upload_concurrency: 1,
        ..BackupOptions::default()
    };
    let run = |source, options: BackupOptions| {
        let report = backup::backup(&repo, source, &options, &BackupProgress::default())
            .expect("backup");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    };
    run(
        Source::Paths(vec![src.clone()]),
        BackupOptions {
            tags: vec!["zstd".into()],
            time: Some("2024-05-06T09:30:00+02:00[+02:00]".parse().unwrap()),
            ..base.clone()
        },
    );
    let mut rng = SplitMix(0x1234);
    let mut stream = text(1200);
    stream.extend(rng.bytes(800));
    run(
        Source::Stream {
            filename: "stream.bin".into(),
            reader: Box::new(std::io::Cursor::new(stream)),
        },
        BackupOptions {
            compression: Compression::Lz4,
            tags: vec!["lz4".into(), "stream".into()],
            time: Some("2024-05-06T10:00:00-05:30[-05:30]".parse().unwrap()),
            ..base.clone()
        },
    );
    std::fs::write(src.join("text.txt"), text(3500)).unwrap();
    std::fs::write(src.join("new.bin"), rng.bytes(1800)).unwrap();
    run(
        Source::Paths(vec![src.clone()]),
        BackupOptions {
            compression: Compression::None,
            tags: vec!["none".into()],
            time: Some("2024-05-07T09:30:00Z[UTC]".parse().unwrap()),
            ..base.clone()
        },
    );
    std::fs::remove_dir_all(&work).ok();

    let mut corpus = Corpus::default();

    // config: the stored object, and its plaintext in each compression.
    let sealed = backend.get("config", u64::MAX).expect("config");
    let plain = open(AAD_CONFIG, &sealed).expect("config opens with the fixed key");
    let json = compress::decode_capped(&plain, 1 << 20).expect("config decodes");
    corpus.add("config", "stored", sealed.to_vec());
    for (label, c) in [
        ("plain-none", Compression::None),
        ("plain-zstd", Compression::Zstd(3)),
        ("plain-lz4", Compression::Lz4),
    ] {
        corpus.add("config", label, compress::encode(c, &json));
    }

    // Snapshots and index files: the decrypted stored plaintexts.
    for info in backend.list("snapshots/").unwrap() {
        let sealed = backend.get(&info.path, u64::MAX).unwrap();
        let plain = open(AAD_SNAPSHOT, &sealed).expect("snapshot opens");
        let body = compress::decode_capped(&plain, 1 << 20).unwrap();
        corpus.add("snapshot", "stored", body);
    }
    let mut index_files = Vec::new();
    for info in backend.list("index/").unwrap() {
        let sealed = backend.get(&info.path, u64::MAX).unwrap();
        let plain = open(AAD_INDEX, &sealed).expect("index opens");
        let body = compress::decode_capped(&plain, 1 << 20).unwrap();
        index_files.push(IndexFile::decode(&body).expect("index decodes"));
        corpus.add("index_file", "stored", body);
    }
    // One that supersedes others, as prune and repair write.
    let mut merged = IndexFile::default();
    for f in &index_files {
        merged.packs.extend(f.packs.iter().cloned());
    }
    merged.supersedes = (0..index_files.len())
        .map(|i| IndexId::of_bytes(&[i as u8]))
        .collect();
    merged.marked = vec![(PackId::of_bytes(b"marked"), 1_700_000_000)];
    corpus.add("index_file", "supersedes", merged.encode());
    // Version 1 (no `marked` section) is still read: same bytes with the
    // version byte 1 and without the trailing (empty) mark count.
    if let Some(f) = index_files.iter().find(|f| f.marked.is_empty()) {
        let mut v1 = f.encode();
        assert_eq!(v1[4], 2);
        v1[4] = 1;
        v1.truncate(v1.len() - 4);
        assert_eq!(IndexFile::decode(&v1).as_ref().ok(), Some(f));
        corpus.add("index_file", "v1", v1);
    }
    corpus.add("index_file", "empty", IndexFile::default().encode());

    // Packs, their headers, and the blobs in them.
    let index = repo.load_index().expect("index");
    let mut packs: Vec<Vec<u8>> = backend
        .list("data/")
        .unwrap()
        .iter()
        .map(|info| backend.get(&info.path, u64::MAX).unwrap().to_vec())
        .collect();
    packs.sort_by_key(Vec::len);
    let mut tree_packs = 0;
    let mut data_packs = 0;
    for p in &packs {
        let size = p.len() as u64;
        let tail = &p[p.len() - pack::tail_len(size) as usize..];
        let blobs = pack::read_header(key(), size, tail).expect("pack header reads");
        // The header plaintext, per repo-format.md §7.2.
        let mut header = (blobs.len() as u32).to_le_bytes().to_vec();
        for b in &blobs {
            header.push(b.kind.to_byte());
            header.extend_from_slice(&b.length.to_le_bytes());
            header.extend_from_slice(&b.raw_len.to_le_bytes());
            header.extend_from_slice(&b.id.0);
        }
        assert!(pack::decode_header(&header).is_ok());
        corpus.add("pack_header", "header", header);
        // A few whole packs of each kind (they are ~4 KiB each).
        let is_tree = blobs.iter().all(|b| b.kind == BlobKind::Tree);
        let n = if is_tree { &mut tree_packs } else { &mut data_packs };
        if *n < 3 {
            *n += 1;
            let label = if is_tree { "tree-pack" } else { "data-pack" };
            corpus.add("pack_header", label, p.clone());
            corpus.add("blob_from_pack", label, p.clone());
        }
    }
    let mut trees = 0;
    let mut datas = 0;
    for (id, loc) in index.blobs() {
        let plain = repo.read_blob(&index, &id).expect("blob reads");
        match loc.kind {
            BlobKind::Tree => {
                trees += 1;
                corpus.add("tree", "stored", plain.clone());
            }
            BlobKind::Data => {
                datas += 1;
                if datas > 6 {
                    continue;
                }
            }
        }
        // Single blobs for blob_from_pack's second mode, and payloads for
        // compress, in each compression.
        for c in [Compression::None, Compression::Zstd(3), Compression::Lz4] {
            let encoded = compress::encode(c, &plain);
            let mut single = vec![loc.kind.to_byte()];
            single.extend_from_slice(&loc.raw_len.to_le_bytes());
            single.extend_from_slice(&encoded);
            corpus.add("blob_from_pack", "single", single);
            corpus.add("compress", "blob", encoded);
        }
    }
    assert!(trees > 0 && datas > 0);
    corpus.add("compress", "zstd19", compress::encode(Compression::Zstd(19), &text(2000)));
    corpus.add("compress", "empty-raw", compress::encode(Compression::None, b""));

    // Key files: the golden vector's (password vault_fuzz::GOLDEN_PASSWORD)
    // and this repository's.
    let golden = fuzz_dir.join("../tests/vectors/v1/repo/keys");
    for entry in std::fs::read_dir(&golden).expect("golden vector keys") {
        corpus.add("key_file", "golden", std::fs::read(entry.unwrap().path()).unwrap());
    }
    for info in backend.list("keys/").unwrap() {
        corpus.add("key_file", "repo", backend.get(&info.path, u64::MAX).unwrap().to_vec());
    }

    let mut total = 0;
    for target in TARGETS {
        let dir = fuzz_dir.join("corpus").join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let seeds = corpus.0.get(target).expect("every target has seeds");
        let bytes: usize = seeds.values().map(Vec::len).sum();
        total += bytes;
        for (name, data) in seeds {
            std::fs::write(dir.join(name), data).unwrap();
        }
        println!("{target:15} {:3} seeds {bytes:7} bytes", seeds.len());
    }
    println!("total           {total} bytes");
}
