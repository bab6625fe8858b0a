//! Content hashes of files and directories (Merkle manifests), with a stat-keyed hash cache.
//!
//! A directory's content digest is the digest of its [`Manifest`]: the sorted list of
//! `relative/path → (blob digest, size, executable)`. Two directories with the same files at the
//! same relative paths have the same digest wherever they live; mtimes, owners and the
//! directory's own name are not part of it. Symlinks are followed (the bytes a stage reads are
//! what matter); empty directories are not recorded.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::canonical::canonical_json;
use super::Digest;

/// Files at least this large are hashed with memory mapping and rayon's threads; below it the
/// thread start-up costs more than it saves.
const PARALLEL_HASH_THRESHOLD: u64 = 4 * 1024 * 1024;

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
    /// The Merkle digest of this tree (domain-separated from blob digests).
    pub fn digest(&self) -> Digest {
        let value = serde_json::to_value(self).expect("a manifest always serializes");
        let mut bytes = b"taper manifest v1\n".to_vec();
        bytes.extend_from_slice(canonical_json(&value).as_bytes());
        Digest::of_bytes(&bytes)
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
    let length = fs::metadata(path)?.len();
    let mut hasher = blake3::Hasher::new();
    if length >= PARALLEL_HASH_THRESHOLD {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut file = fs::File::open(path)?;
        let mut buffer = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
        file.read_to_end(&mut buffer)?;
        hasher.update(&buffer);
    }
    Ok(hasher.finalize().into())
}

/// Remembers file digests by `(path, device, inode, size, mtime)` so an unchanged file is never
/// rehashed.
///
/// Racy mtimes: a file written in the same clock tick as it was hashed can be modified again
/// without its mtime changing (1. taper hashes `a.csv` at 12:00:00.3; 2. a script appends to it
/// at 12:00:00.4 on a filesystem with 1 s timestamps; 3. size unchanged by an in-place edit, same
/// mtime: a stale digest would be trusted forever). So an entry is recorded only when the file's
/// mtime is at least [`RACY_WINDOW`] older than the moment it was hashed; younger files are
/// hashed again next time, by which point they are old enough to record.
#[derive(Debug, Default)]
pub struct HashCache {
    entries: Mutex<BTreeMap<PathBuf, StatEntry>>,
    dirty: Mutex<bool>,
}

/// How old a file's mtime must be before its digest is trusted on stat alone.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StatEntry {
    device: u64,
    inode: u64,
    size: u64,
    mtime_ns: i128,
    digest: Digest,
}

impl StatEntry {
    fn matches(&self, metadata: &fs::Metadata) -> bool {
        self.device == metadata.dev()
            && self.inode == metadata.ino()
            && self.size == metadata.size()
            && self.mtime_ns == mtime_ns(metadata)
    }
}

fn mtime_ns(metadata: &fs::Metadata) -> i128 {
    i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec())
}

#[derive(Serialize, Deserialize)]
struct HashCacheFile {
    version: u32,
    entries: BTreeMap<PathBuf, StatEntry>,
}

impl HashCache {
    /// Loads a saved cache; a missing, unreadable or foreign file is an empty cache (a cache
    /// fault only costs a rehash).
    pub fn load(path: &Path) -> HashCache {
        let entries = fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<HashCacheFile>(&bytes).ok())
            .filter(|file| file.version == 1)
            .map(|file| file.entries)
            .unwrap_or_default();
        HashCache {
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// Whether entries were added since loading.
    pub fn is_dirty(&self) -> bool {
        *self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bytes to save (entries for files that no longer exist are dropped).
    pub fn to_bytes(&self) -> Vec<u8> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(path, _)| path.exists())
            .map(|(path, entry)| (path.clone(), entry.clone()))
            .collect();
        serde_json::to_vec(&HashCacheFile {
            version: 1,
            entries,
        })
        .expect("the hash cache always serializes")
    }

    /// The digest of the file at `path`, from the cache when its stat is unchanged.
    pub fn hash_file(&self, path: &Path) -> io::Result<(Digest, fs::Metadata)> {
        let absolute = std::path::absolute(path)?;
        let metadata = fs::metadata(&absolute)?;
        {
            let entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(entry) = entries.get(&absolute) {
                if entry.matches(&metadata) {
                    return Ok((entry.digest, metadata));
                }
            }
        }
        let hashed_at = SystemTime::now();
        let digest = hash_file_uncached(&absolute)?;
        let after = fs::metadata(&absolute)?;
        let old_enough = metadata
            .modified()
            .ok()
            .and_then(|modified| hashed_at.duration_since(modified).ok())
            .is_some_and(|age| age >= RACY_WINDOW);
        // Recorded only if nothing changed while hashing and the mtime is not racy.
        if old_enough && mtime_ns(&after) == mtime_ns(&metadata) && after.size() == metadata.size()
        {
            let entry = StatEntry {
                device: metadata.dev(),
                inode: metadata.ino(),
                size: metadata.size(),
                mtime_ns: mtime_ns(&metadata),
                digest,
            };
            self.entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(absolute, entry);
            *self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        }
        Ok((digest, metadata))
    }

    /// The manifest of everything at `path`: a single entry `""` for a file, the tree for a
    /// directory. Files are hashed in parallel.
    pub fn manifest_of(&self, path: &Path) -> io::Result<Manifest> {
        let metadata = fs::metadata(path)?;
        if metadata.is_file() {
            let (digest, metadata) = self.hash_file(path)?;
            let mut entries = BTreeMap::new();
            entries.insert(String::new(), file_entry(digest, &metadata));
            return Ok(Manifest { entries });
        }
        let mut files = Vec::new();
        collect_files(path, String::new(), &mut files)?;
        let entries = files
            .par_iter()
            .map(|(relative, absolute)| {
                let (digest, metadata) = self.hash_file(absolute)?;
                Ok((relative.clone(), file_entry(digest, &metadata)))
            })
            .collect::<io::Result<BTreeMap<_, _>>>()?;
        Ok(Manifest { entries })
    }

    /// The content digest of a file or directory on disk.
    pub fn content_digest(&self, path: &Path) -> io::Result<ContentDigest> {
        if fs::metadata(path)?.is_file() {
            Ok(ContentDigest::File(self.hash_file(path)?.0))
        } else {
            Ok(ContentDigest::Directory(self.manifest_of(path)?.digest()))
        }
    }
}

fn file_entry(digest: Digest, metadata: &fs::Metadata) -> FileEntry {
    FileEntry {
        digest,
        size: metadata.len(),
        executable: metadata.permissions().mode() & 0o111 != 0,
    }
}

fn collect_files(dir: &Path, prefix: String, out: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let metadata = fs::metadata(&path)?;
        if metadata.is_dir() {
            collect_files(&path, relative, out)?;
        } else if metadata.is_file() {
            out.push((relative, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_digest_ignores_location_and_follows_content() {
        let temp = tempfile::tempdir().expect("temp dir");
        for name in ["one", "two"] {
            fs::create_dir_all(temp.path().join(name).join("sub")).expect("mkdir");
            fs::write(temp.path().join(name).join("a.txt"), "a").expect("write");
            fs::write(temp.path().join(name).join("sub/b.txt"), "b").expect("write");
        }
        let cache = HashCache::default();
        let one = cache.content_digest(&temp.path().join("one")).expect("hash");
        let two = cache.content_digest(&temp.path().join("two")).expect("hash");
        assert_eq!(one, two);
        fs::write(temp.path().join("two/sub/b.txt"), "B").expect("write");
        let changed = cache.content_digest(&temp.path().join("two")).expect("hash");
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
        assert!(!cache.is_dirty(), "a file younger than the racy window was recorded");
    }

    #[test]
    fn old_files_are_cached_and_survive_a_reload() {
        let temp = tempfile::tempdir().expect("temp dir");
        let path = temp.path().join("old.txt");
        fs::write(&path, "v1").expect("write");
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_modified(old))
            .expect("set mtime");
        let cache = HashCache::default();
        let (digest, _) = cache.hash_file(&path).expect("hash");
        assert!(cache.is_dirty());
        let saved = temp.path().join("cache.json");
        fs::write(&saved, cache.to_bytes()).expect("save");
        let reloaded = HashCache::load(&saved);
        assert_eq!(reloaded.hash_file(&path).expect("hash").0, digest);
        assert!(!reloaded.is_dirty(), "an unchanged file was rehashed");
    }
}
