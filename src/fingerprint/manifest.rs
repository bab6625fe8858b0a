//! Content hashes of files and directories (Merkle manifests), with a stat-keyed hash cache.
//!
//! This is taper's one content-digest scheme: stage keys, output manifests and source pins
//! (`data::sources::hash_path`) all hash through it, so a directory has one digest everywhere.
//!
//! A file's content digest is the blake3 of its bytes. A directory's is the digest of its
//! [`Manifest`]: the sorted list of `relative/path → (blob digest, size, executable)`. Two
//! directories with the same files at the same relative paths have the same digest wherever they
//! live; mtimes, owners and the directory's own name are not part of it. Symlinks are followed
//! (the bytes a stage reads are what matter); empty directories are not recorded.
//!
//! What a directory walk does with odd entries:
//! - FIFOs, sockets and devices are skipped: they hold no content, and opening a FIFO blocks
//!   until a writer comes, so hashing one would hang the run;
//! - refused with an error naming the entry: a file name that is not UTF-8 (manifests key files
//!   by text; two such names would collapse into one lossy spelling and an edit to one of them
//!   would go unseen), a symlink that loops or dangles, and a directory symlink that leads back
//!   to a directory containing it (the walk would never end).
//!
//! # The hash cache
//!
//! [`HashCache`] remembers a file's digest under its stat (device, inode, size, mtime, ctime,
//! mode), and a directory's digest under a fingerprint of the stat of every file in it, so a
//! no-op run over a directory of 10,000 files costs one `stat` per file and no reads. The ctime
//! is there because an edit that restores the size and the mtime (`touch -r`, `rsync -t`,
//! `File::set_modified`) still moves the ctime, which no user call can set.
//!
//! Racy timestamps: a file written in the same clock tick as it was hashed can be modified again
//! without its mtime or ctime changing (1. taper hashes `a.csv` at 12:00:00.3; 2. a script
//! rewrites it at 12:00:00.4 on a filesystem with 1 s timestamps; 3. same size, same times: a
//! stale digest would be trusted forever). So an entry is recorded only when the file's mtime
//! and ctime are at least [`RACY_WINDOW`] older than the moment it was hashed, and a directory
//! summary only when every file in it was; younger files are hashed again next time, by which
//! point they are old enough to record.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, Statx, StatxFlags, CWD};
use serde::{Deserialize, Serialize};

use super::Digest;

/// Files at least this large are hashed with memory mapping and rayon's threads; below it the
/// thread start-up costs more than it saves.
const PARALLEL_HASH_THRESHOLD: u64 = 4 * 1024 * 1024;

/// How old a file's mtime and ctime must be before its digest is trusted on stat alone.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// A directory tree by content: relative paths (always `/`-separated) to file entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// The Merkle digest of this tree (domain-separated from blob digests): blake3 of
    /// `"taper manifest v1\n"` and the canonical JSON of the manifest
    /// (`{"entries":{"<path>":{"digest":"<hex>","executable":true,"size":<n>},…}}`, keys sorted,
    /// `executable` only when true). Streamed into the hasher rather than built as a JSON value:
    /// that cost 10,000 maps and strings per no-op run over a 10,000-file dep.
    pub fn digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"taper manifest v1\n{\"entries\":{");
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            if index > 0 {
                hasher.update(b",");
            }
            update_json_string(&mut hasher, path);
            hasher.update(b":{\"digest\":\"");
            hasher.update(entry.digest.to_hex().as_bytes());
            hasher.update(b"\",");
            if entry.executable {
                hasher.update(b"\"executable\":true,");
            }
            hasher.update(b"\"size\":");
            hasher.update(entry.size.to_string().as_bytes());
            hasher.update(b"}");
        }
        hasher.update(b"}}");
        hasher.finalize().into()
    }

    pub fn total_size(&self) -> u64 {
        self.entries.values().map(|entry| entry.size).sum()
    }

    /// The content digest of `path` inside this tree: a file's own digest, or the manifest
    /// digest of the entries under a directory prefix, re-rooted there. `None` when nothing lies
    /// at or under `path`.
    pub fn content_digest_of(&self, path: &str) -> Option<ContentDigest> {
        let path = path.trim_end_matches('/');
        if let Some(entry) = self.entries.get(path) {
            return Some(ContentDigest::File(entry.digest));
        }
        let sub = self.subtree(path);
        if sub.entries.is_empty() {
            None
        } else {
            Some(ContentDigest::Directory(sub.digest()))
        }
    }

    /// The entries under the directory `prefix`, with the prefix removed.
    pub fn subtree(&self, prefix: &str) -> Manifest {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return self.clone();
        }
        let start = format!("{prefix}/");
        let entries = self
            .entries
            .range(start.clone()..)
            .take_while(|(path, _)| path.starts_with(&start))
            .map(|(path, entry)| (path[start.len()..].to_owned(), entry.clone()))
            .collect();
        Manifest { entries }
    }
}

/// `text` as a JSON string, escaped the way `serde_json` (and so `canonical_json`) escapes it.
fn update_json_string(hasher: &mut blake3::Hasher, text: &str) {
    let plain = text
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\');
    if plain {
        hasher.update(b"\"");
        hasher.update(text.as_bytes());
        hasher.update(b"\"");
    } else {
        let quoted = serde_json::to_string(text).expect("serializing a str to JSON cannot fail");
        hasher.update(quoted.as_bytes());
    }
}

/// What a path holds, by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentDigest {
    File(Digest),
    Directory(Digest),
}

impl ContentDigest {
    pub fn digest(&self) -> Digest {
        match self {
            ContentDigest::File(digest) | ContentDigest::Directory(digest) => *digest,
        }
    }

    /// `file:<hex>` or `dir:<hex>`: the spelling used in keys and lock files.
    pub fn to_tagged(&self) -> String {
        match self {
            ContentDigest::File(digest) => format!("file:{digest}"),
            ContentDigest::Directory(digest) => format!("dir:{digest}"),
        }
    }
}

/// blake3 of a file's bytes: memory-mapped and multi-threaded for large files.
pub fn hash_file_uncached(path: &Path) -> io::Result<Digest> {
    hash_regular_file(path).map(|(digest, _)| digest)
}

/// The digest of the regular file at `path` and its stat once read (to tell whether it changed
/// while being hashed). Opened non-blocking and checked before reading: a FIFO put where a file
/// was would otherwise block the run until some writer came.
fn hash_regular_file(path: &Path) -> io::Result<(Digest, fs::Metadata)> {
    let mut file = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(not_content(path, &metadata));
    }
    let mut hasher = blake3::Hasher::new();
    if metadata.len() >= PARALLEL_HASH_THRESHOLD {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut buffer = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
        file.read_to_end(&mut buffer)?;
        hasher.update(&buffer);
    }
    let after = file.metadata()?;
    Ok((hasher.finalize().into(), after))
}

/// A failure at one entry inside a walked directory, naming it: the caller only knows the
/// directory it asked for.
#[derive(Debug, thiserror::Error)]
#[error("`{}`: {reason}", .path.display())]
struct EntryError {
    path: PathBuf,
    reason: io::Error,
}

/// `reason` at `path`, as an error of kind `Other`: a missing file deep inside a dep is not a
/// missing dep, and callers map `NotFound` to exactly that.
fn at(path: &Path, reason: io::Error) -> io::Error {
    io::Error::other(EntryError {
        path: path.to_path_buf(),
        reason,
    })
}

/// A path spelled with its non-UTF-8 bytes escaped (`caf\xe9.csv`), so the user can find it.
fn escaped(path: &Path) -> String {
    path.as_os_str().as_bytes().escape_ascii().to_string()
}

fn not_content(path: &Path, metadata: &fs::Metadata) -> io::Error {
    let file_type = metadata.file_type();
    let what = if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "of an unknown type"
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "`{}` is {what}, not a file or directory: only file contents can be hashed",
            escaped(path)
        ),
    )
}

/// The stat a cached digest is valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    device: u64,
    inode: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    mode: u32,
}

/// Bytes of [`Stat::encode`].
const STAT_BYTES: usize = 8 * 3 + 16 * 2 + 4;

impl Stat {
    fn of(metadata: &fs::Metadata) -> Stat {
        Stat {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
            mode: metadata.mode(),
        }
    }

    /// The stat of a `statx` result, equal to [`Stat::of`] of the same file's `Metadata` (std
    /// fills `st_dev` with the same `makedev` of the major and minor numbers).
    fn of_statx(statx: &Statx) -> Stat {
        let nanos = |time: &rustix::fs::StatxTimestamp| {
            i128::from(time.tv_sec) * 1_000_000_000 + i128::from(time.tv_nsec)
        };
        Stat {
            device: rustix::fs::makedev(statx.stx_dev_major, statx.stx_dev_minor),
            inode: statx.stx_ino,
            size: statx.stx_size,
            mtime_ns: nanos(&statx.stx_mtime),
            ctime_ns: nanos(&statx.stx_ctime),
            mode: u32::from(statx.stx_mode),
        }
    }

    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    fn executable(&self) -> bool {
        self.mode & 0o111 != 0
    }

    /// Whether the file's times are old enough, at `now`, to trust its digest on stat alone
    /// (see the module doc). A time in the future is never settled.
    fn settled(&self, now: SystemTime, window: Duration) -> bool {
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let newest = self.mtime_ns.max(self.ctime_ns);
        match (
            i128::try_from(now.as_nanos()),
            i128::try_from(window.as_nanos()),
        ) {
            (Ok(now), Ok(window)) => now - newest >= window,
            _ => false,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.device.to_le_bytes());
        out.extend_from_slice(&self.inode.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Option<Stat> {
        Some(Stat {
            device: u64::from_le_bytes(reader.array()?),
            inode: u64::from_le_bytes(reader.array()?),
            size: u64::from_le_bytes(reader.array()?),
            mtime_ns: i128::from_le_bytes(reader.array()?),
            ctime_ns: i128::from_le_bytes(reader.array()?),
            mode: u32::from_le_bytes(reader.array()?),
        })
    }
}

/// A file's digest, valid while its stat is `stat`.
#[derive(Debug, Clone, Copy)]
struct FileRecord {
    stat: Stat,
    digest: Digest,
}

/// A directory's content digest, valid while the walk yields the same names and stats.
#[derive(Debug, Clone, Copy)]
struct DirRecord {
    fingerprint: Digest,
    digest: Digest,
}

/// The regular files under a directory, in walk order (names sorted at each level), each with
/// its stat. The relative paths sit back to back in one string: a no-op run over a 10,000-file
/// dep never needs a path, and allocating two paths and a full `Metadata` per file was a
/// quarter of its time (page faults and copies).
#[derive(Debug)]
struct Walk {
    root: PathBuf,
    paths: String,
    files: Vec<Walked>,
}

/// One file of a [`Walk`]: its relative path is `paths[start..end]`.
#[derive(Debug)]
struct Walked {
    start: usize,
    end: usize,
    stat: Stat,
}

impl Walk {
    fn relative(&self, file: &Walked) -> &str {
        &self.paths[file.start..file.end]
    }
}

/// Remembers file and directory digests by stat so that unchanged content is never rehashed
/// (see the module doc for what is trusted when). Saved by the store as `hashcache-v5.bin`.
#[derive(Debug)]
pub struct HashCache {
    /// Where the loaded cache's file records are, read when one is first needed: a no-op run
    /// over a directory dep is answered by its directory record alone, and reading and
    /// checking 10,000 file records it would not use was a tenth of such a run.
    source: Option<SavedSource>,
    /// The file records of the loaded cache, one per [`FileSection`], searched in place.
    saved: [OnceLock<SavedFiles>; 2],
    /// File records made since loading; they take precedence over `saved`.
    files: RwLock<HashMap<PathBuf, FileRecord>>,
    dirs: RwLock<HashMap<PathBuf, DirRecord>>,
    dirty: AtomicBool,
    racy_window: Duration,
}

impl Default for HashCache {
    fn default() -> Self {
        HashCache::with_racy_window(RACY_WINDOW)
    }
}

/// First bytes of a saved hash cache; the version is in it (a format change bumps it, and an
/// old file then reads as an empty cache). The layout: `MAGIC`, the byte lengths of the
/// directory section and of the two file sections (u64 each), the directory section, the
/// blake3 of everything before it, then each file section followed by its blake3, in
/// [`FileSection`] order. Each section is checked when it is read.
const MAGIC: &[u8] = b"taper hash cache v5\n";

/// Bytes before the directory section.
const HEADER_BYTES: usize = MAGIC.len() + 24;

/// The saved file records are split in two sections so that a lookup reads only the one it
/// needs. A pipeline whose dep is a 10,000-file directory also has small files (its outs, a
/// config): in one section, checking `count.txt` on a no-op run read and checksummed the
/// 1.2 MB of the directory's records that the directory record had just made unnecessary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileSection {
    /// Files under no recorded directory.
    Loose = 0,
    /// Files under a recorded directory: read only when that directory changed.
    Members = 1,
}

/// A section of the saved file, still on disk.
#[derive(Debug, Clone, Copy)]
struct SectionAt {
    offset: u64,
    length: usize,
}

/// The file sections of a saved cache, still on disk. The open handle keeps reading the file
/// that was loaded even if another run saves a new one meanwhile (saves replace by rename).
#[derive(Debug)]
struct SavedSource {
    file: fs::File,
    sections: [SectionAt; 2],
}

impl SavedSource {
    /// The file records of one section, or `None` when it is unreadable or damaged.
    fn read(&self, section: FileSection) -> Option<SavedFiles> {
        let SectionAt { offset, length } = self.sections[section as usize];
        let mut bytes = vec![0; length.checked_add(32)?];
        self.file.read_exact_at(&mut bytes, offset).ok()?;
        let (body, checksum) = bytes.split_at(length);
        if Digest::of_bytes(body).0.as_slice() != checksum {
            return None;
        }
        bytes.truncate(length);
        decode_files(bytes)
    }
}

/// Reads the saved format; every read is bounds-checked, so a truncated file is `None`.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn count(&mut self) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(self.array()?)).ok()
    }

    fn path(&mut self) -> Option<PathBuf> {
        let length = self.count()?;
        let bytes = self.take(length)?;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
}

fn encode_path(path: &Path, out: &mut Vec<u8>) {
    let bytes = path.as_os_str().as_bytes();
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl HashCache {
    fn with_racy_window(racy_window: Duration) -> HashCache {
        HashCache {
            source: None,
            saved: [OnceLock::new(), OnceLock::new()],
            files: RwLock::default(),
            dirs: RwLock::default(),
            dirty: AtomicBool::new(false),
            racy_window,
        }
    }

    /// Loads a saved cache's directory records, and where its file records are; a missing,
    /// unreadable, truncated, corrupt or foreign file (or section) is an empty one (a cache
    /// fault only costs a rehash). The blake3 of each section guards against a damaged file,
    /// which could otherwise pair a stat with a wrong digest and have a changed input pass as
    /// unchanged.
    pub fn load(path: &Path) -> HashCache {
        let mut cache = HashCache::default();
        if let Some((dirs, source)) = open_saved(path) {
            *write(&cache.dirs) = dirs;
            cache.source = Some(source);
        }
        cache
    }

    /// One section of the loaded cache's file records, read on first use.
    fn saved(&self, section: FileSection) -> &SavedFiles {
        self.saved[section as usize].get_or_init(|| {
            self.source
                .as_ref()
                .and_then(|source| source.read(section))
                .unwrap_or_default()
        })
    }

    /// Every saved file record, loose ones first.
    fn saved_records(&self) -> impl Iterator<Item = (PathBuf, FileRecord)> + '_ {
        let loose = self.saved(FileSection::Loose).iter();
        loose.chain(self.saved(FileSection::Members).iter())
    }

    /// The record of the file at `absolute`, newest first. A path is saved in one section
    /// only, so the loose one (small) is searched first and the members only on a miss.
    fn file_record(&self, absolute: &Path) -> Option<FileRecord> {
        let added = read(&self.files).get(absolute).copied();
        added
            .or_else(|| self.saved(FileSection::Loose).get(absolute))
            .or_else(|| self.saved(FileSection::Members).get(absolute))
    }

    /// Whether entries were added since loading.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    /// The bytes to save (entries for paths that no longer exist are dropped). Only called when
    /// [`HashCache::is_dirty`], so a no-op run neither stats every entry nor rewrites the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let added = read(&self.files);
        let dirs = read(&self.dirs);
        let mut live_files: Vec<(PathBuf, FileRecord)> = self
            .saved_records()
            .filter(|(path, _)| !added.contains_key(path))
            .chain(added.iter().map(|(path, record)| (path.clone(), *record)))
            .filter(|(path, _)| path.exists())
            .collect();
        // Sorted by bytes, as `SavedFiles::get` searches them.
        live_files.sort_unstable_by(|(left, _), (right, _)| {
            left.as_os_str()
                .as_bytes()
                .cmp(right.as_os_str().as_bytes())
        });
        let live_dirs: Vec<_> = dirs.iter().filter(|(path, _)| path.is_dir()).collect();
        let under_a_dir = |path: &Path| {
            path.ancestors()
                .skip(1)
                .any(|ancestor| dirs.contains_key(ancestor))
        };
        let (members, loose): (Vec<_>, Vec<_>) =
            live_files.iter().partition(|(path, _)| under_a_dir(path));
        let file_sections = [loose, members].map(|records| {
            let mut section = (records.len() as u64).to_le_bytes().to_vec();
            for (path, record) in records {
                encode_path(path, &mut section);
                record.stat.encode(&mut section);
                section.extend_from_slice(&record.digest.0);
            }
            section
        });
        let mut dirs_section = (live_dirs.len() as u64).to_le_bytes().to_vec();
        for (path, record) in live_dirs {
            encode_path(path, &mut dirs_section);
            dirs_section.extend_from_slice(&record.fingerprint.0);
            dirs_section.extend_from_slice(&record.digest.0);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(dirs_section.len() as u64).to_le_bytes());
        for section in &file_sections {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        }
        out.extend_from_slice(&dirs_section);
        let checksum = Digest::of_bytes(&out);
        out.extend_from_slice(&checksum.0);
        for section in &file_sections {
            out.extend_from_slice(section);
            out.extend_from_slice(&Digest::of_bytes(section).0);
        }
        out
    }

    /// The digest of the regular file at `path`, from the cache when its stat is unchanged.
    pub fn hash_file(&self, path: &Path) -> io::Result<(Digest, fs::Metadata)> {
        let absolute = std::path::absolute(path)?;
        let metadata = fs::metadata(&absolute)?;
        if !metadata.is_file() {
            return Err(not_content(&absolute, &metadata));
        }
        let (digest, _) = self.file_digest(&absolute, Stat::of(&metadata))?;
        Ok((digest, metadata))
    }

    /// The digest of the file at `absolute` whose stat was `metadata`, and whether it is
    /// trusted: served from the cache, or hashed and recorded (old enough, unchanged while
    /// read).
    fn file_digest(&self, absolute: &Path, stat: Stat) -> io::Result<(Digest, bool)> {
        if let Some(record) = self.file_record(absolute) {
            if record.stat == stat {
                return Ok((record.digest, true));
            }
        }
        let hashed_at = SystemTime::now();
        let (digest, after) = hash_regular_file(absolute)?;
        let trusted = stat.settled(hashed_at, self.racy_window) && Stat::of(&after) == stat;
        if trusted {
            write(&self.files).insert(absolute.to_path_buf(), FileRecord { stat, digest });
            self.dirty.store(true, Ordering::Relaxed);
        }
        Ok((digest, trusted))
    }

    /// The manifest of everything at `path`: a single entry `""` for a file, the tree for a
    /// directory. Files are hashed in parallel.
    pub fn manifest_of(&self, path: &Path) -> io::Result<Manifest> {
        let absolute = std::path::absolute(path)?;
        let metadata = fs::metadata(&absolute)?;
        if metadata.is_file() {
            let stat = Stat::of(&metadata);
            let (digest, _) = self.file_digest(&absolute, stat)?;
            let entries = BTreeMap::from([(String::new(), file_entry(digest, &stat))]);
            return Ok(Manifest { entries });
        }
        if !metadata.is_dir() {
            return Err(not_content(&absolute, &metadata));
        }
        let walk = walk(&absolute, &Stat::of(&metadata))?;
        Ok(self.hash_walked(&walk)?.0)
    }

    /// The content digest of a file or directory on disk. For a directory whose files all kept
    /// their stat since it was last recorded, this reads no file: one walk, one `stat` each.
    pub fn content_digest(&self, path: &Path) -> io::Result<ContentDigest> {
        let absolute = std::path::absolute(path)?;
        let metadata = fs::metadata(&absolute)?;
        if metadata.is_file() {
            let (digest, _) = self.file_digest(&absolute, Stat::of(&metadata))?;
            return Ok(ContentDigest::File(digest));
        }
        if !metadata.is_dir() {
            return Err(not_content(&absolute, &metadata));
        }
        let walk = walk(&absolute, &Stat::of(&metadata))?;
        let fingerprint = fingerprint(&walk);
        if let Some(record) = read(&self.dirs).get(&absolute) {
            if record.fingerprint == fingerprint {
                return Ok(ContentDigest::Directory(record.digest));
            }
        }
        let (manifest, trusted) = self.hash_walked(&walk)?;
        let digest = manifest.digest();
        if trusted {
            write(&self.dirs).insert(
                absolute,
                DirRecord {
                    fingerprint,
                    digest,
                },
            );
            self.dirty.store(true, Ordering::Relaxed);
        }
        Ok(ContentDigest::Directory(digest))
    }

    /// The manifest of walked files (hashed in parallel, cache first), and whether every digest
    /// in it is trusted.
    fn hash_walked(&self, walk: &Walk) -> io::Result<(Manifest, bool)> {
        let hashed = walk
            .files
            .par_iter()
            .map(|file| {
                let absolute = walk.root.join(walk.relative(file));
                let (digest, trusted) = self
                    .file_digest(&absolute, file.stat)
                    .map_err(|error| at(&absolute, error))?;
                Ok((file_entry(digest, &file.stat), trusted))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let trusted = hashed.iter().all(|(_, trusted)| *trusted);
        let entries = walk
            .files
            .iter()
            .zip(hashed)
            .map(|(file, (entry, _))| (walk.relative(file).to_owned(), entry))
            .collect();
        Ok((Manifest { entries }, trusted))
    }
}

/// The file records of a loaded cache file, sorted by path bytes, kept as the file's bytes with
/// the offset of each record: a lookup is a binary search, and loading allocates no path and
/// builds no map (for 10,000 files that map was a fifth of a no-op run).
#[derive(Debug, Default)]
struct SavedFiles {
    bytes: Vec<u8>,
    /// Where each record (path length, path, stat, digest) starts in `bytes`.
    offsets: Vec<usize>,
}

impl SavedFiles {
    fn record_at(&self, offset: usize) -> Option<(&[u8], FileRecord)> {
        let mut reader = Reader {
            bytes: self.bytes.get(offset..)?,
        };
        let length = reader.count()?;
        let path = reader.take(length)?;
        let stat = Stat::decode(&mut reader)?;
        let digest = Digest(reader.array()?);
        Some((path, FileRecord { stat, digest }))
    }

    fn get(&self, path: &Path) -> Option<FileRecord> {
        let wanted = path.as_os_str().as_bytes();
        let index = self
            .offsets
            .binary_search_by(|&offset| {
                let found = self.record_at(offset).map_or(&[][..], |(path, _)| path);
                found.cmp(wanted)
            })
            .ok()?;
        self.record_at(self.offsets[index])
            .map(|(_, record)| record)
    }

    fn iter(&self) -> impl Iterator<Item = (PathBuf, FileRecord)> + '_ {
        self.offsets.iter().filter_map(|&offset| {
            let (path, record) = self.record_at(offset)?;
            Some((PathBuf::from(std::ffi::OsStr::from_bytes(path)), record))
        })
    }
}

/// A saved cache's directory records and where its file section is, or `None` when the file
/// is not a complete cache with an intact directory section.
fn open_saved(path: &Path) -> Option<(HashMap<PathBuf, DirRecord>, SavedSource)> {
    let file = fs::File::open(path).ok()?;
    let mut header = [0; HEADER_BYTES];
    file.read_exact_at(&mut header, 0).ok()?;
    let mut reader = Reader { bytes: &header };
    if reader.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let dirs_length = reader.count()?;
    let loose_length = reader.count()?;
    let members_length = reader.count()?;
    // Checked against the file's size before anything is allocated, so a corrupt length
    // cannot reserve gigabytes.
    let expected = HEADER_BYTES
        .checked_add(dirs_length)?
        .checked_add(loose_length)?
        .checked_add(members_length)?
        .checked_add(3 * 32)?;
    if u64::try_from(expected).ok()? != file.metadata().ok()?.len() {
        return None;
    }
    let mut section = vec![0; dirs_length + 32];
    file.read_exact_at(&mut section, HEADER_BYTES as u64).ok()?;
    let (body, checksum) = section.split_at(dirs_length);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&header);
    hasher.update(body);
    if hasher.finalize().as_bytes().as_slice() != checksum {
        return None;
    }
    let dirs = decode_dirs(body)?;
    let loose = SectionAt {
        offset: u64::try_from(HEADER_BYTES + dirs_length + 32).ok()?,
        length: loose_length,
    };
    let members = SectionAt {
        offset: loose.offset + u64::try_from(loose_length + 32).ok()?,
        length: members_length,
    };
    let source = SavedSource {
        file,
        sections: [loose, members],
    };
    Some((dirs, source))
}

fn decode_dirs(body: &[u8]) -> Option<HashMap<PathBuf, DirRecord>> {
    let mut reader = Reader { bytes: body };
    let dir_count = reader.count()?;
    let mut dirs = HashMap::with_capacity(dir_count.min(body.len() / 72));
    for _ in 0..dir_count {
        let path = reader.path()?;
        let fingerprint = Digest(reader.array()?);
        let digest = Digest(reader.array()?);
        dirs.insert(
            path,
            DirRecord {
                fingerprint,
                digest,
            },
        );
    }
    reader.bytes.is_empty().then_some(dirs)
}

/// The file records of a checked file section, or `None` when its structure is broken (records
/// must be in strictly increasing path order, as the binary search needs).
fn decode_files(bytes: Vec<u8>) -> Option<SavedFiles> {
    let mut reader = Reader { bytes: &bytes };
    let file_count = reader.count()?;
    // Bounded by what the bytes can hold, so a corrupt count cannot reserve gigabytes.
    let mut offsets = Vec::with_capacity(file_count.min(bytes.len() / (8 + STAT_BYTES + 32)));
    let mut previous: Option<&[u8]> = None;
    for _ in 0..file_count {
        offsets.push(bytes.len() - reader.bytes.len());
        let length = reader.count()?;
        let path = reader.take(length)?;
        if previous.is_some_and(|previous| previous >= path) {
            return None;
        }
        previous = Some(path);
        reader.take(STAT_BYTES + 32)?;
    }
    if !reader.bytes.is_empty() {
        return None;
    }
    Some(SavedFiles { bytes, offsets })
}

fn file_entry(digest: Digest, stat: &Stat) -> FileEntry {
    FileEntry {
        digest,
        size: stat.size,
        executable: stat.executable(),
    }
}

/// The stat of every walked file, in walk order, with its relative path: equal fingerprints
/// mean the same names with the same stats, so the same content (see the module doc).
fn fingerprint(walk: &Walk) -> Digest {
    // Fed to blake3 in large pieces: 10,000 small `update` calls compress one 64-byte block at
    // a time, while a 16 KiB piece is hashed 16 chunks at once (SIMD); this was a tenth of a
    // no-op run over a 10,000-file directory.
    const PIECE: usize = 16 * 1024;
    let mut hasher = blake3::Hasher::new();
    let mut piece = Vec::with_capacity(PIECE + 512);
    piece.extend_from_slice(b"taper directory stat v1\n");
    for file in &walk.files {
        piece.extend_from_slice(walk.relative(file).as_bytes());
        piece.push(0);
        file.stat.encode(&mut piece);
        if piece.len() >= PIECE {
            hasher.update(&piece);
            piece.clear();
        }
    }
    hasher.update(&piece);
    hasher.finalize().into()
}

/// The regular files under the directory `root` (whose stat is `stat`), in a fixed order
/// (names sorted at each level), symlinks followed.
fn walk(root: &Path, stat: &Stat) -> io::Result<Walk> {
    let mut walk = Walk {
        root: root.to_path_buf(),
        paths: String::new(),
        files: Vec::new(),
    };
    let mut ancestors = vec![(stat.device, stat.inode)];
    let fd = open_dir(CWD, root).map_err(|error| at(root, error.into()))?;
    walk_dir(fd, root, "", &mut ancestors, &mut walk)?;
    Ok(walk)
}

/// Opens a directory for reading its entries, following a symlink (the walk follows links).
fn open_dir<P: rustix::path::Arg>(parent: impl AsFd, path: P) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Bytes of the `getdents` buffer: about 250 entries of short names, the unit of work the
/// walk hands to a thread (see [`walk_dir`]).
const GETDENTS_BYTES: usize = 8 * 1024;

/// The entries of one `getdents` call: their names back to back, each with its NUL (so each
/// is a `CStr` for `statx`), where each starts and ends (without the NUL), and, once
/// [`Batch::stat`] ran, each one's stat in the same order.
#[derive(Default)]
struct Batch {
    names: Vec<u8>,
    bounds: Vec<(usize, usize)>,
    stats: Vec<rustix::io::Result<Stat>>,
}

impl Batch {
    fn name(&self, index: usize) -> &[u8] {
        let (start, end) = self.bounds[index];
        &self.names[start..end]
    }

    fn c_name(&self, index: usize) -> rustix::io::Result<&CStr> {
        let (start, end) = self.bounds[index];
        CStr::from_bytes_with_nul(&self.names[start..=end]).map_err(|_| rustix::io::Errno::INVAL)
    }

    /// `statx`es every entry relative to the open directory (no path lookup from the root).
    fn stat(mut self, dir: BorrowedFd<'_>) -> Batch {
        let stats = (0..self.bounds.len())
            .map(|index| {
                let statx = rustix::fs::statx(
                    dir,
                    self.c_name(index)?,
                    AtFlags::SYMLINK_NOFOLLOW,
                    StatxFlags::BASIC_STATS,
                )?;
                Ok(Stat::of_statx(&statx))
            })
            .collect();
        self.stats = stats;
        self
    }
}

/// A directory's entries, one [`Batch`] per `getdents` call, `.` and `..` left out.
struct Batches<'buf> {
    entries: RawDir<'buf, BorrowedFd<'buf>>,
    done: bool,
}

impl Iterator for Batches<'_> {
    type Item = rustix::io::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut batch = Batch::default();
        while !self.done {
            match self.entries.next() {
                None => self.done = true,
                Some(Err(error)) => {
                    self.done = true;
                    return Some(Err(error));
                }
                Some(Ok(entry)) => {
                    let name = entry.file_name().to_bytes_with_nul();
                    if name != b".\0" && name != b"..\0" {
                        let start = batch.names.len();
                        batch.bounds.push((start, start + name.len() - 1));
                        batch.names.extend_from_slice(name);
                    }
                }
            }
            if self.entries.is_buffer_empty() && !batch.bounds.is_empty() {
                break;
            }
        }
        (!batch.bounds.is_empty()).then_some(Ok(batch))
    }
}

/// Walks the open directory `fd` (at `dir`, whose files' relative paths start with `prefix`).
/// Its entries are read one `getdents` call at a time and each call's entries `statx`ed by
/// whichever thread is free, so reading the names overlaps stating them: for a 10,000-file
/// directory the `statx` calls are most of a no-op run and `getdents` a fifth of the rest.
/// The entries are then visited in name order.
fn walk_dir(
    fd: OwnedFd,
    dir: &Path,
    prefix: &str,
    ancestors: &mut Vec<(u64, u64)>,
    walk: &mut Walk,
) -> io::Result<()> {
    let dir_fd = fd.as_fd();
    let mut buffer = Vec::with_capacity(GETDENTS_BYTES);
    let batches = Batches {
        entries: RawDir::new(dir_fd, buffer.spare_capacity_mut()),
        done: false,
    };
    let batches: Vec<Batch> = batches
        .par_bridge()
        .map(|batch| batch.map(|batch| batch.stat(dir_fd)))
        .collect::<rustix::io::Result<_>>()
        .map_err(|error| at(dir, error.into()))?;
    // Name order, compared on the first 8 bytes as one number first (names of one directory
    // mostly differ there; comparing slices was a twentieth of a no-op run). Zero padding
    // keeps byte order: a name holds no NUL.
    let mut order: Vec<(u64, u32, u32)> = Vec::new();
    for (batch_index, batch) in batches.iter().enumerate() {
        for index in 0..batch.bounds.len() {
            let mut head = [0u8; 8];
            let name = batch.name(index);
            let length = name.len().min(8);
            head[..length].copy_from_slice(&name[..length]);
            let (Ok(batch_index), Ok(index)) = (u32::try_from(batch_index), u32::try_from(index))
            else {
                return Err(io::Error::other(format!(
                    "`{}` has more entries than taper can walk",
                    escaped(dir)
                )));
            };
            order.push((u64::from_be_bytes(head), batch_index, index));
        }
    }
    let name_of =
        |&(_, batch, index): &(u64, u32, u32)| batches[batch as usize].name(index as usize);
    order.sort_unstable_by(|left, right| {
        left.0
            .cmp(&right.0)
            .then_with(|| name_of(left).cmp(name_of(right)))
    });
    walk.files.reserve(order.len());
    for entry in &order {
        let batch = &batches[entry.1 as usize];
        let index = entry.2 as usize;
        let name = batch.name(index);
        let path = || dir.join(std::ffi::OsStr::from_bytes(name));
        let Ok(name) = std::str::from_utf8(name) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the name of `{}` is not valid UTF-8: taper records file names as text; rename the file",
                    escaped(&path())
                ),
            ));
        };
        let mut stat = batch.stats[index].map_err(|error| at(&path(), error.into()))?;
        // A link is followed by path, so its target is what gets hashed.
        if stat.file_type() == FileType::Symlink {
            let statx = rustix::fs::statx(
                dir_fd,
                batch.c_name(index)?,
                AtFlags::empty(),
                StatxFlags::BASIC_STATS,
            )
            .map_err(|error| symlink_error(&path(), error.into()))?;
            stat = Stat::of_statx(&statx);
        }
        match stat.file_type() {
            FileType::Directory => {
                let path = path();
                let id = (stat.device, stat.inode);
                if ancestors.contains(&id) {
                    return Err(io::Error::other(format!(
                        "`{}` leads back to a directory that contains it (a symlink loop): remove the link or point it elsewhere",
                        escaped(&path)
                    )));
                }
                let relative = if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}/{name}")
                };
                let sub = open_dir(dir_fd, batch.c_name(index)?)
                    .map_err(|error| at(&path, error.into()))?;
                ancestors.push(id);
                walk_dir(sub, &path, &relative, ancestors, walk)?;
                ancestors.pop();
            }
            FileType::RegularFile => {
                let start = walk.paths.len();
                if !prefix.is_empty() {
                    walk.paths.push_str(prefix);
                    walk.paths.push('/');
                }
                walk.paths.push_str(name);
                walk.files.push(Walked {
                    start,
                    end: walk.paths.len(),
                    stat,
                });
            }
            // FIFOs, sockets and devices hold no content (see the module doc).
            _ => {}
        }
    }
    Ok(())
}

/// A symlink that cannot be followed, said as such (a bare "no such file" for a path that
/// `ls` shows would send the user looking for the wrong thing).
fn symlink_error(path: &Path, error: io::Error) -> io::Error {
    if error.kind() != io::ErrorKind::NotFound {
        return at(path, error);
    }
    let target = fs::read_link(path)
        .map(|target| format!(" `{}`", escaped(&target)))
        .unwrap_or_default();
    io::Error::other(format!(
        "`{}` is a symlink to{target}, which does not exist: fix or remove the link",
        escaped(path)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::fingerprint::canonical::canonical_json;

    /// The digest as first specified: canonical JSON of the serialized manifest.
    fn reference_digest(manifest: &Manifest) -> Digest {
        let value = serde_json::to_value(manifest).expect("a manifest serializes");
        let mut bytes = b"taper manifest v1\n".to_vec();
        bytes.extend_from_slice(canonical_json(&value).as_bytes());
        Digest::of_bytes(&bytes)
    }

    fn set_mtime(path: &Path, mtime: SystemTime) {
        fs::File::options()
            .write(true)
            .open(path)
            .and_then(|file| file.set_modified(mtime))
            .expect("set mtime");
    }

    /// Saved and loaded again, as the next run sees it.
    fn reloaded(cache: &HashCache, dir: &Path) -> HashCache {
        let saved = dir.join("hashcache.bin");
        fs::write(&saved, cache.to_bytes()).expect("save");
        HashCache::load(&saved)
    }

    #[test]
    fn directory_digest_ignores_location_and_follows_content() {
        let temp = tempfile::tempdir().expect("temp dir");
        for name in ["one", "two"] {
            fs::create_dir_all(temp.path().join(name).join("sub")).expect("mkdir");
            fs::write(temp.path().join(name).join("a.txt"), "a").expect("write");
            fs::write(temp.path().join(name).join("sub/b.txt"), "b").expect("write");
        }
        let cache = HashCache::default();
        let one = cache
            .content_digest(&temp.path().join("one"))
            .expect("hash");
        let two = cache
            .content_digest(&temp.path().join("two"))
            .expect("hash");
        assert_eq!(one, two);
        fs::write(temp.path().join("two/sub/b.txt"), "B").expect("write");
        let changed = cache
            .content_digest(&temp.path().join("two"))
            .expect("hash");
        assert_ne!(one, changed);
    }

    #[test]
    fn subtree_matches_hashing_the_directory_itself() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(temp.path().join("data/raw")).expect("mkdir");
        fs::write(temp.path().join("data/raw/x.csv"), "1,2").expect("write");
        fs::write(temp.path().join("data/y.csv"), "3").expect("write");
        let cache = HashCache::default();
        let whole = cache.manifest_of(temp.path()).expect("hash");
        let direct = cache
            .content_digest(&temp.path().join("data/raw"))
            .expect("hash");
        assert_eq!(whole.content_digest_of("data/raw"), Some(direct));
        let file = cache
            .content_digest(&temp.path().join("data/y.csv"))
            .expect("hash");
        assert_eq!(whole.content_digest_of("data/y.csv"), Some(file));
        assert_eq!(whole.content_digest_of("data/nothing"), None);
    }

    #[test]
    fn fresh_files_are_not_trusted_on_stat() {
        let temp = tempfile::tempdir().expect("temp dir");
        let path = temp.path().join("young.txt");
        fs::write(&path, "v1").expect("write");
        let cache = HashCache::default();
        cache.hash_file(&path).expect("hash");
        cache.content_digest(temp.path()).expect("hash");
        assert!(
            !cache.is_dirty(),
            "a file younger than the racy window was recorded"
        );
    }

    #[test]
    fn settled_files_are_cached_and_survive_a_reload() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::create_dir(temp.path().join("data")).expect("mkdir");
        let path = temp.path().join("data/old.txt");
        fs::write(&path, "v1").expect("write");
        let cache = HashCache::with_racy_window(Duration::ZERO);
        let (digest, _) = cache.hash_file(&path).expect("hash");
        let tree = cache
            .content_digest(&temp.path().join("data"))
            .expect("hash");
        assert!(cache.is_dirty());
        let reloaded = reloaded(&cache, temp.path());
        assert_eq!(reloaded.hash_file(&path).expect("hash").0, digest);
        assert_eq!(
            reloaded
                .content_digest(&temp.path().join("data"))
                .expect("hash"),
            tree
        );
        assert!(!reloaded.is_dirty(), "unchanged content was rehashed");
    }

    /// The racy case: a same-size edit in the same second as the cache was written, with the
    /// mtime put back, is still seen (the young entry was never trusted).
    #[test]
    fn racy_same_size_edit_with_mtime_restored_is_seen() {
        let temp = tempfile::tempdir().expect("temp dir");
        let data = temp.path().join("data");
        fs::create_dir(&data).expect("mkdir");
        fs::write(data.join("a.csv"), "1,2\n").expect("write");
        fs::write(data.join("b.csv"), "3,4\n").expect("write");
        let cache = HashCache::default();
        let before = cache.content_digest(&data).expect("hash");
        let file_before = cache.hash_file(&data.join("a.csv")).expect("hash").0;
        let reloaded = reloaded(&cache, temp.path());
        let mtime = fs::metadata(data.join("a.csv"))
            .and_then(|metadata| metadata.modified())
            .expect("mtime");
        fs::write(data.join("a.csv"), "9,9\n").expect("edit");
        set_mtime(&data.join("a.csv"), mtime);
        assert_ne!(reloaded.content_digest(&data).expect("hash"), before);
        assert_ne!(
            reloaded.hash_file(&data.join("a.csv")).expect("hash").0,
            file_before
        );
    }

    /// An old file, trusted on stat, edited in place with its size and mtime restored (`touch
    /// -r`, `rsync -t`): only the ctime tells. The sleep lets the ctime leave the racy window,
    /// as it has for any file that sat untouched for a few seconds.
    #[test]
    fn settled_edit_with_size_and_mtime_restored_is_seen() {
        let temp = tempfile::tempdir().expect("temp dir");
        let data = temp.path().join("data");
        fs::create_dir(&data).expect("mkdir");
        let path = data.join("a.csv");
        fs::write(&path, "1,2\n").expect("write");
        let old = SystemTime::now() - Duration::from_secs(60);
        set_mtime(&path, old);
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        let cache = HashCache::default();
        let (file_before, _) = cache.hash_file(&path).expect("hash");
        let before = cache.content_digest(&data).expect("hash");
        assert!(cache.is_dirty(), "a settled file was not recorded");
        let reloaded = reloaded(&cache, temp.path());
        fs::write(&path, "9,9\n").expect("edit");
        set_mtime(&path, old);
        assert_ne!(reloaded.hash_file(&path).expect("hash").0, file_before);
        assert_ne!(reloaded.content_digest(&data).expect("hash"), before);
    }

    #[test]
    fn adding_or_removing_a_file_is_seen_on_the_fast_path() {
        let temp = tempfile::tempdir().expect("temp dir");
        let data = temp.path().join("data");
        fs::create_dir_all(data.join("sub")).expect("mkdir");
        fs::write(data.join("sub/a"), "a").expect("write");
        let cache = HashCache::with_racy_window(Duration::ZERO);
        let one = cache.content_digest(&data).expect("hash");
        assert_eq!(read(&cache.dirs).len(), 1, "the summary was not recorded");
        fs::write(data.join("sub/b"), "").expect("add");
        let two = cache.content_digest(&data).expect("hash");
        assert_ne!(one, two);
        fs::remove_file(data.join("sub/b")).expect("remove");
        assert_eq!(cache.content_digest(&data).expect("hash"), one);
        fs::remove_file(data.join("sub/a")).expect("remove");
        assert_ne!(cache.content_digest(&data).expect("hash"), one);
    }

    /// Reloaded records are found by binary search in the saved bytes: every saved file is
    /// found with its digest, a path that was never saved is not, and a record made after the
    /// reload wins over the saved one and survives the next save.
    #[test]
    fn saved_records_are_found_in_place_and_newer_ones_win() {
        let temp = tempfile::tempdir().expect("temp dir");
        let cache = HashCache::with_racy_window(Duration::ZERO);
        let names: Vec<String> = (0..40)
            .rev()
            .map(|i| format!("f{}.txt", i * 7 % 40))
            .collect();
        let mut digests = BTreeMap::new();
        for name in &names {
            let path = temp.path().join(name);
            fs::write(&path, name).expect("write");
            digests.insert(path.clone(), cache.hash_file(&path).expect("hash").0);
        }
        let mut reloaded = reloaded(&cache, temp.path());
        reloaded.racy_window = Duration::ZERO;
        assert_eq!(
            reloaded.saved(FileSection::Loose).offsets.len(),
            digests.len()
        );
        for (path, digest) in &digests {
            let record = reloaded
                .saved(FileSection::Loose)
                .get(path)
                .expect("saved record");
            assert_eq!(&record.digest, digest, "{}", path.display());
        }
        assert!(reloaded
            .saved(FileSection::Loose)
            .get(&temp.path().join("f.txt"))
            .is_none());

        let edited = temp.path().join("f3.txt");
        fs::write(&edited, "a longer text").expect("edit");
        let (digest, _) = reloaded.hash_file(&edited).expect("hash");
        assert_eq!(digest, Digest::of_bytes(b"a longer text"));
        let again = super::tests::reloaded(&reloaded, temp.path());
        assert_eq!(
            again
                .saved(FileSection::Loose)
                .get(&edited)
                .expect("record")
                .digest,
            digest
        );
        assert_eq!(again.saved(FileSection::Loose).offsets.len(), digests.len());
    }

    /// The walk's `statx` gives the stat std's `Metadata` gives (device numbers included), so
    /// a walked file and the same file hashed by path share one cache record.
    #[test]
    fn a_walk_stats_files_as_std_does() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(temp.path().join("sub")).expect("mkdir");
        fs::write(temp.path().join("a"), "a").expect("write");
        fs::write(temp.path().join("sub/b"), "bb").expect("write");
        std::os::unix::fs::symlink("a", temp.path().join("link")).expect("symlink");
        assert_eq!(walked_with_std_stats(temp.path()), ["a", "link", "sub/b"]);
    }

    /// The relative paths of a walk of `dir`, after checking each file's stat against std's.
    fn walked_with_std_stats(dir: &Path) -> Vec<String> {
        let root = fs::metadata(dir).expect("stat");
        let walked = walk(dir, &Stat::of(&root)).expect("walk");
        for file in &walked.files {
            let path = dir.join(walked.relative(file));
            assert_eq!(file.stat, Stat::of(&fs::metadata(&path).expect("stat")));
        }
        walked
            .files
            .iter()
            .map(|f| walked.relative(f).to_owned())
            .collect()
    }

    /// A directory read in several `getdents` batches and stated by several threads still
    /// comes out in byte order of names (names sharing their first 8 bytes, shorter than 8,
    /// and upper case included), each file with its own stat.
    #[test]
    fn a_large_directory_is_walked_in_name_order() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut names: Vec<String> = (0..1500)
            .map(|i| format!("shared-prefix-{}", i * 7919 % 1500))
            .collect();
        names.extend(
            ["a", "ab", "b", "Z", "shared-p", "shared-prefiy", "shared-"].map(String::from),
        );
        for name in &names {
            fs::write(temp.path().join(name), name).expect("write");
        }
        names.sort();
        assert_eq!(walked_with_std_stats(temp.path()), names);
    }

    /// A no-op over a directory is answered by its directory record: the saved file records
    /// are not even read (see `HashCache::source`), a file outside it (an out) is found
    /// without reading the directory's records (see `FileSection`), and an edit is still seen.
    #[test]
    fn a_directory_hit_reads_no_file_record() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("data");
        fs::create_dir_all(dir.join("sub")).expect("mkdir");
        for name in ["a", "b", "sub/c"] {
            fs::write(dir.join(name), name).expect("write");
        }
        let out = temp.path().join("count.txt");
        fs::write(&out, "3").expect("write");
        let cache = HashCache::with_racy_window(Duration::ZERO);
        let first = cache.content_digest(&dir).expect("hash");
        let out_digest = cache.hash_file(&out).expect("hash").0;
        let reloaded = super::tests::reloaded(&cache, temp.path());
        assert_eq!(reloaded.content_digest(&dir).expect("hash"), first);
        assert!(
            reloaded.saved.iter().all(|section| section.get().is_none()),
            "file records were read"
        );
        assert_eq!(reloaded.hash_file(&out).expect("hash").0, out_digest);
        assert_eq!(reloaded.saved(FileSection::Loose).offsets.len(), 1);
        assert!(
            reloaded.saved[FileSection::Members as usize]
                .get()
                .is_none(),
            "the directory's records were read for a file outside it"
        );
        fs::write(dir.join("sub/c"), "edited").expect("edit");
        assert_ne!(reloaded.content_digest(&dir).expect("hash"), first);
        assert_eq!(reloaded.saved(FileSection::Members).offsets.len(), 3);
        // Saved again, every record is kept, each in its section.
        let again = super::tests::reloaded(&reloaded, temp.path());
        assert_eq!(again.saved(FileSection::Loose).offsets.len(), 1);
        assert_eq!(again.saved(FileSection::Members).offsets.len(), 3);
    }

    #[test]
    fn a_damaged_cache_file_is_an_empty_cache() {
        let temp = tempfile::tempdir().expect("temp dir");
        let path = temp.path().join("a");
        fs::write(&path, "a").expect("write");
        let cache = HashCache::with_racy_window(Duration::ZERO);
        cache.hash_file(&path).expect("hash");
        let mut bytes = cache.to_bytes();
        let saved = temp.path().join("hashcache.bin");
        fs::write(&saved, &bytes).expect("save");
        assert_eq!(
            HashCache::load(&saved)
                .saved(FileSection::Loose)
                .offsets
                .len(),
            1
        );
        // A flipped bit in a stored digest would otherwise be trusted.
        let flipped = HEADER_BYTES + 8 + 32 + 8 + 8 + path.as_os_str().len() + STAT_BYTES;
        bytes[flipped] ^= 1;
        fs::write(&saved, &bytes).expect("save");
        assert!(HashCache::load(&saved)
            .saved(FileSection::Loose)
            .offsets
            .is_empty());
        fs::write(&saved, &bytes[..bytes.len() / 2]).expect("save");
        assert!(HashCache::load(&saved)
            .saved(FileSection::Loose)
            .offsets
            .is_empty());
    }

    #[test]
    fn fifos_are_skipped_and_refused_as_a_path() {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::write(temp.path().join("a"), "a").expect("write");
        let status = std::process::Command::new("mkfifo")
            .arg(temp.path().join("pipe"))
            .status()
            .expect("run mkfifo");
        assert!(status.success());
        let cache = HashCache::default();
        let manifest = cache.manifest_of(temp.path()).expect("hash");
        assert_eq!(manifest.entries.keys().collect::<Vec<_>>(), ["a"]);
        let error = cache
            .content_digest(&temp.path().join("pipe"))
            .expect_err("a FIFO has no content");
        assert!(error.to_string().contains("is a FIFO"), "{error}");
    }

    #[test]
    fn non_utf8_names_and_symlink_loops_are_errors_naming_the_entry() {
        let temp = tempfile::tempdir().expect("temp dir");
        let names = temp.path().join("names");
        fs::create_dir(&names).expect("mkdir");
        // Two names that the old lossy spelling collapsed into one `\u{fffd}` entry.
        fs::write(names.join(std::ffi::OsStr::from_bytes(b"\xff")), "1").expect("write");
        fs::write(names.join(std::ffi::OsStr::from_bytes(b"\xfe")), "2").expect("write");
        let cache = HashCache::default();
        let error = cache.content_digest(&names).expect_err("non-UTF-8 name");
        assert!(error.to_string().contains("names/\\xfe"), "{error}");

        let looped = temp.path().join("looped");
        fs::create_dir(&looped).expect("mkdir");
        std::os::unix::fs::symlink("../looped", looped.join("up")).expect("symlink");
        let error = cache.content_digest(&looped).expect_err("directory loop");
        assert!(
            error.to_string().contains("looped/up` leads back"),
            "{error}"
        );

        let dangling = temp.path().join("dangling");
        fs::create_dir(&dangling).expect("mkdir");
        std::os::unix::fs::symlink("nowhere", dangling.join("gone")).expect("symlink");
        let error = cache.content_digest(&dangling).expect_err("dangling link");
        assert_ne!(
            error.kind(),
            io::ErrorKind::NotFound,
            "read as a missing dep"
        );
        assert!(
            error
                .to_string()
                .contains("`nowhere`, which does not exist"),
            "{error}"
        );
    }

    fn arbitrary_manifest() -> impl Strategy<Value = Manifest> {
        let entry = (any::<[u8; 32]>(), any::<u64>(), any::<bool>()).prop_map(
            |(digest, size, executable)| FileEntry {
                digest: Digest(digest),
                size,
                executable,
            },
        );
        prop::collection::btree_map("[a-z\"\\\\/\u{1}\n é.-]{0,12}", entry, 0..8)
            .prop_map(|entries| Manifest { entries })
    }

    /// A small random tree: relative paths (1–3 levels) to contents and executable bits.
    fn arbitrary_tree() -> impl Strategy<Value = BTreeMap<String, (Vec<u8>, bool)>> {
        let path = prop::collection::vec("[a-c]{1,2}", 1..4).prop_map(|parts| parts.join("/"));
        prop::collection::btree_map(
            path,
            (prop::collection::vec(any::<u8>(), 0..64), any::<bool>()),
            1..12,
        )
    }

    /// Writes `tree` under `root`; a path that lies under another file's path is skipped.
    fn write_tree(root: &Path, tree: &BTreeMap<String, (Vec<u8>, bool)>) {
        for (relative, (bytes, executable)) in tree {
            let path = root.join(relative);
            if path.ancestors().skip(1).any(Path::is_file) || path.is_dir() {
                continue;
            }
            fs::create_dir_all(path.parent().expect("under root")).expect("mkdir");
            fs::write(&path, bytes).expect("write");
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn streamed_digest_is_the_canonical_json_digest(manifest in arbitrary_manifest()) {
            prop_assert_eq!(manifest.digest(), reference_digest(&manifest));
        }

        /// The fast path (directory summary from a reloaded cache) and a full rehash agree,
        /// before and after an edit to one file.
        #[test]
        fn fast_path_equals_full_rehash(tree in arbitrary_tree(), edit in any::<prop::sample::Index>()) {
            let temp = tempfile::tempdir().expect("temp dir");
            let root = temp.path().join("tree");
            fs::create_dir(&root).expect("mkdir");
            write_tree(&root, &tree);
            let warm = HashCache::with_racy_window(Duration::ZERO);
            let first = warm.content_digest(&root).expect("hash");
            let warm = reloaded(&warm, temp.path());
            let full = HashCache::default();
            prop_assert_eq!(warm.content_digest(&root).expect("hash"), first);
            prop_assert_eq!(full.content_digest(&root).expect("hash"), first);
            prop_assert_eq!(
                ContentDigest::Directory(reference_digest(&full.manifest_of(&root).expect("hash"))),
                first
            );
            prop_assert!(!warm.is_dirty(), "the fast path rehashed");

            let manifest = full.manifest_of(&root).expect("hash");
            let victim = edit.get(&manifest.entries.keys().collect::<Vec<_>>()).to_owned();
            let mut bytes = fs::read(root.join(victim)).expect("read");
            bytes.push(b'!');
            fs::write(root.join(victim), bytes).expect("edit");
            let edited = warm.content_digest(&root).expect("hash");
            prop_assert_ne!(edited, first);
            prop_assert_eq!(HashCache::default().content_digest(&root).expect("hash"), edited);
        }
    }
}
