//! The content-addressed store (default `cache/`, `--store` / `TAPER_STORE` to move it).
//!
//! Contract: every object is immutable, named by its blake3, and becomes visible only by an
//! atomic rename of a fully written, fsynced temp file, so a crash or `kill -9` at any point
//! leaves either the whole object or nothing. An action record (stage key → outputs) is written
//! last, after every blob and manifest it references, so a visible record always has its
//! outputs. Readers treat an unreadable object as absent (a cache fault costs a rerun, never a
//! failure).
//!
//! Layout (each bucket versioned; a format change bumps the bucket instead of migrating):
//!
//! ```text
//! blobs-v1/ab/<blake3>            file contents, read-only
//! manifests-v1/ab/<digest>.json   directory trees: relative path → blob, size, executable
//! actions-v1/ab/<stage key>.json  stage key → output manifest, metrics, timings, log blob,
//!                                 and the hashed fingerprint (for "why did it rerun")
//! locks-v1/<stage key>.lock       held while a run computes that key (one run per key)
//! scratch-v1/<stage key>/         checkpoints of an interrupted attempt of that key
//! runs-v1/<time>-<pid>.json       the keys each recent run used (gc roots)
//! roots-v1/<digest>.json          lock files that used this store (gc roots)
//! downloads-v1/                   reserved for source fetchers
//! quarantine-v1/                  objects `taper cache verify` found corrupt
//! tmp/                            temp files, renamed into place when complete
//! hashcache-v1.json               (path, device, inode, size, mtime) → blake3
//! gc.lock                         shared by runs, exclusive for gc
//! ```
//!
//! [`ObjectStore`] is the part a remote store (S3 and the like) would implement; locks,
//! scratch space and the hash cache stay local.

mod lockfile;
mod maintenance;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fingerprint::{Digest, HashCache, Manifest, StageHashable};

pub use lockfile::{LockFile, LockFileError, LockedStage};
pub use maintenance::{ActionListing, BucketUsage, GcReport, VerifyReport};

/// Failures of the store itself (permissions, a full disk), never cache misses.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CacheError {
    #[error("cannot {action} `{path}`")]
    #[diagnostic(
        code(taper::cache::io),
        help("check that the store directory is writable and the disk is not full (move the store with `--store` or `TAPER_STORE`)")
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the store at `{path}` is locked by a running `taper cache gc`")]
    #[diagnostic(
        code(taper::cache::gc_running),
        help("wait for the garbage collection to finish, then run again")
    )]
    GcRunning { path: PathBuf },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CacheError + use<'a> {
    move |source| CacheError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a stage run produced, under its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub version: u32,
    pub key: Digest,
    /// The stage's name when it ran (informational: names are not part of the key).
    pub stage: String,
    /// Exactly what was hashed into `key`.
    pub fingerprint: StageHashable,
    /// Manifest digest of the outputs.
    pub outputs: Digest,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    pub duration_ms: u64,
    /// Seconds since the Unix epoch.
    pub finished_at: u64,
    /// Blob of the stage's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Digest>,
}

/// The content-addressed part of a store: what a remote backend would implement.
pub trait ObjectStore: Send + Sync {
    fn contains_blob(&self, digest: &Digest) -> bool;
    /// Adds the file at `source`, whose blake3 is `digest`. With `owned`, the store may move the
    /// file instead of copying it.
    fn put_blob(&self, source: &Path, digest: &Digest, owned: bool) -> Result<(), CacheError>;
    /// Writes blob `digest` to `destination` (a writable copy, replacing what is there).
    fn fetch_blob(
        &self,
        digest: &Digest,
        destination: &Path,
        executable: bool,
    ) -> Result<(), CacheError>;
    fn put_manifest(&self, manifest: &Manifest) -> Result<Digest, CacheError>;
    fn get_manifest(&self, digest: &Digest) -> Option<Manifest>;
    fn put_action(&self, record: &ActionRecord) -> Result<(), CacheError>;
    fn get_action(&self, key: &Digest) -> Option<ActionRecord>;
}

/// A store on the local disk.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

const BUCKETS: [&str; 10] = [
    "blobs-v1",
    "manifests-v1",
    "actions-v1",
    "locks-v1",
    "scratch-v1",
    "runs-v1",
    "roots-v1",
    "downloads-v1",
    "quarantine-v1",
    "tmp",
];

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store, CacheError> {
        for bucket in BUCKETS {
            let path = root.join(bucket);
            fs::create_dir_all(&path).map_err(io_error("create", &path))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            // Tells backup tools to skip the store; losing it only costs recomputation.
            let text = "Signature: 8a477f597d28d172789f06886806bc55\n# created by taper\n";
            write_atomic(root, &tag, text.as_bytes())?;
        }
        let root = fs::canonicalize(root).map_err(io_error("resolve", root))?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sharded(&self, bucket: &str, digest: &Digest, suffix: &str) -> PathBuf {
        let hex = digest.to_hex();
        self.root
            .join(bucket)
            .join(&hex[..2])
            .join(format!("{hex}{suffix}"))
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.sharded("blobs-v1", digest, "")
    }

    pub fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.sharded("manifests-v1", digest, ".json")
    }

    pub fn action_path(&self, key: &Digest) -> PathBuf {
        self.sharded("actions-v1", key, ".json")
    }

    pub fn hash_cache_path(&self) -> PathBuf {
        self.root.join("hashcache-v1.json")
    }

    pub fn load_hash_cache(&self) -> HashCache {
        HashCache::load(&self.hash_cache_path())
    }

    /// Saves the hash cache if it gained entries (a failure only costs rehashing later).
    pub fn save_hash_cache(&self, cache: &HashCache) {
        if cache.is_dirty() {
            if let Err(error) = write_atomic(&self.root, &self.hash_cache_path(), &cache.to_bytes())
            {
                tracing::debug!("hash cache not saved: {error}");
            }
        }
    }

    /// A fresh, empty directory under `tmp/` (same filesystem as the buckets, so its files
    /// can be renamed into them).
    pub fn temp_dir(&self, label: &str) -> Result<tempfile::TempDir, CacheError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&tmp)
            .map_err(io_error("create a temp directory in", &tmp))
    }

    /// Checkpoint space of one stage key; it survives an interrupted run of that key.
    pub fn scratch_dir(&self, key: &Digest) -> Result<PathBuf, CacheError> {
        let path = self.root.join("scratch-v1").join(key.to_hex());
        fs::create_dir_all(&path).map_err(io_error("create", &path))?;
        Ok(path)
    }

    pub fn remove_scratch_dir(&self, key: &Digest) {
        let path = self.root.join("scratch-v1").join(key.to_hex());
        if let Err(error) = fs::remove_dir_all(&path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::debug!("scratch `{}` not removed: {error}", path.display());
            }
        }
    }

    /// Takes the lock of stage key `key` without waiting; `None` when another run holds it.
    pub fn try_lock_key(&self, key: &Digest) -> Result<Option<KeyLock>, CacheError> {
        let path = self
            .root
            .join("locks-v1")
            .join(format!("{}.lock", key.to_hex()));
        let file = fs::File::create(&path).map_err(io_error("create", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(source)) => Err(CacheError::Io {
                action: "lock",
                path,
                source,
            }),
        }
    }

    /// Takes the lock of stage key `key`, waiting for another run to release it.
    pub fn lock_key(&self, key: &Digest) -> Result<KeyLock, CacheError> {
        let path = self
            .root
            .join("locks-v1")
            .join(format!("{}.lock", key.to_hex()));
        let file = fs::File::create(&path).map_err(io_error("create", &path))?;
        file.lock().map_err(io_error("lock", &path))?;
        Ok(KeyLock { _file: file })
    }

    /// Held for a whole run: runs share it, `gc` takes it exclusively.
    pub fn run_guard(&self) -> Result<KeyLock, CacheError> {
        let path = self.root.join("gc.lock");
        let file = fs::File::create(&path).map_err(io_error("create", &path))?;
        match file.try_lock_shared() {
            Ok(()) => Ok(KeyLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(CacheError::GcRunning { path }),
            Err(fs::TryLockError::Error(source)) => Err(CacheError::Io {
                action: "lock",
                path,
                source,
            }),
        }
    }

    /// Records the keys a run used, so `gc` keeps them for a while.
    pub fn record_run(&self, keys: &[Digest]) -> Result<(), CacheError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!("{:020}-{}.json", now.as_nanos(), std::process::id());
        let path = self.root.join("runs-v1").join(name);
        let bytes = serde_json::to_vec(&RunRecord {
            keys: keys.to_vec(),
        })
        .expect("a run record always serializes");
        write_atomic(&self.root, &path, &bytes)
    }

    /// Remembers a lock file as a gc root.
    pub fn register_lock_file(&self, lock_file: &Path) -> Result<(), CacheError> {
        let absolute = std::path::absolute(lock_file).map_err(io_error("resolve", lock_file))?;
        let digest = Digest::of_bytes(absolute.to_string_lossy().as_bytes());
        let path = self
            .root
            .join("roots-v1")
            .join(format!("{}.json", digest.to_hex()));
        if path.exists() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&RootRecord {
            lock_file: absolute,
        })
        .expect("a root record always serializes");
        write_atomic(&self.root, &path, &bytes)
    }

    /// Stores every file of `dir` (already hashed into `manifest`) and the manifest itself.
    /// With `owned`, files are moved out of `dir`.
    pub fn put_tree(
        &self,
        dir: &Path,
        manifest: &Manifest,
        owned: bool,
    ) -> Result<Digest, CacheError> {
        for (relative, entry) in &manifest.entries {
            let source = if relative.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(relative)
            };
            self.put_blob(&source, &entry.digest, owned)?;
        }
        self.put_manifest(manifest)
    }

    /// Whether the outputs of `record` are all present.
    pub fn outputs_present(&self, record: &ActionRecord) -> Option<Manifest> {
        let manifest = self.get_manifest(&record.outputs)?;
        manifest
            .entries
            .values()
            .all(|entry| self.contains_blob(&entry.digest))
            .then_some(manifest)
    }
}

/// A held file lock, released on drop (and by the OS when the process dies, so a killed run
/// never leaves a key locked).
#[derive(Debug)]
pub struct KeyLock {
    _file: fs::File,
}

#[derive(Serialize, Deserialize)]
struct RunRecord {
    keys: Vec<Digest>,
}

#[derive(Serialize, Deserialize)]
struct RootRecord {
    lock_file: PathBuf,
}

impl ObjectStore for Store {
    fn contains_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    fn put_blob(&self, source: &Path, digest: &Digest, owned: bool) -> Result<(), CacheError> {
        let destination = self.blob_path(digest);
        if destination.is_file() {
            return Ok(());
        }
        let parent = destination
            .parent()
            .expect("a sharded blob path has a parent");
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        let tmp = self.root.join("tmp");
        let staged = if owned {
            // Renamed in place: the runner's output is already a complete file on this
            // filesystem, so copying it would double the I/O of every large output.
            let file = fs::File::open(source).map_err(io_error("open", source))?;
            file.sync_all().map_err(io_error("sync", source))?;
            source.to_path_buf()
        } else {
            let mut temp = tempfile::NamedTempFile::new_in(&tmp)
                .map_err(io_error("create a temp file in", &tmp))?;
            let mut input = fs::File::open(source).map_err(io_error("open", source))?;
            io::copy(&mut input, temp.as_file_mut()).map_err(io_error("copy", source))?;
            temp.as_file().sync_all().map_err(io_error("sync", &tmp))?;
            let (_, path) = temp.keep().map_err(|error| CacheError::Io {
                action: "keep",
                path: tmp.clone(),
                source: error.error,
            })?;
            path
        };
        // Read-only, so a stray write through a hard link or a buggy tool cannot change a
        // blob behind its name.
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o444))
            .map_err(io_error("set permissions of", &staged))?;
        fs::rename(&staged, &destination).map_err(io_error("rename into", &destination))?;
        sync_dir(parent);
        Ok(())
    }

    fn fetch_blob(
        &self,
        digest: &Digest,
        destination: &Path,
        executable: bool,
    ) -> Result<(), CacheError> {
        let source = self.blob_path(digest);
        let parent = destination.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        let mut temp = tempfile::NamedTempFile::new_in(parent)
            .map_err(io_error("create a temp file in", parent))?;
        let mut input = fs::File::open(&source).map_err(io_error("open", &source))?;
        io::copy(&mut input, temp.as_file_mut()).map_err(io_error("copy", &source))?;
        let mode = if executable { 0o755 } else { 0o644 };
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(mode))
            .map_err(io_error("set permissions of", destination))?;
        if destination.is_dir() {
            fs::remove_dir_all(destination).map_err(io_error("remove", destination))?;
        }
        temp.persist(destination).map_err(|error| CacheError::Io {
            action: "write",
            path: destination.to_path_buf(),
            source: error.error,
        })?;
        Ok(())
    }

    fn put_manifest(&self, manifest: &Manifest) -> Result<Digest, CacheError> {
        let digest = manifest.digest();
        let path = self.manifest_path(&digest);
        if !path.is_file() {
            let bytes = serde_json::to_vec(manifest).expect("a manifest always serializes");
            write_atomic(&self.root, &path, &bytes)?;
        }
        Ok(digest)
    }

    fn get_manifest(&self, digest: &Digest) -> Option<Manifest> {
        let path = self.manifest_path(digest);
        let bytes = fs::read(&path).ok()?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|error| tracing::debug!("unreadable manifest `{}`: {error}", path.display()))
            .ok()?;
        (manifest.digest() == *digest).then_some(manifest)
    }

    fn put_action(&self, record: &ActionRecord) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec_pretty(record).expect("an action record always serializes");
        write_atomic(&self.root, &self.action_path(&record.key), &bytes)
    }

    fn get_action(&self, key: &Digest) -> Option<ActionRecord> {
        let path = self.action_path(key);
        let bytes = fs::read(&path).ok()?;
        let record: ActionRecord = serde_json::from_slice(&bytes)
            .map_err(|error| tracing::debug!("unreadable action `{}`: {error}", path.display()))
            .ok()?;
        (record.key == *key && record.version == 1).then_some(record)
    }
}

/// Writes `bytes` to `path` so that readers see the old content or the new one, never a mix:
/// a temp file in `<store>/tmp` (or beside `path` when `path` is outside the store), fsynced,
/// then renamed over `path`, then the directory fsynced so the rename survives a power cut.
pub fn write_atomic(store_root: &Path, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    let tmp = store_root.join("tmp");
    let temp_dir = if path.starts_with(store_root) && tmp.is_dir() {
        tmp
    } else {
        parent.to_path_buf()
    };
    let mut temp = tempfile::NamedTempFile::new_in(&temp_dir)
        .map_err(io_error("create a temp file in", &temp_dir))?;
    temp.write_all(bytes).map_err(io_error("write", path))?;
    temp.as_file().sync_all().map_err(io_error("sync", path))?;
    temp.persist(path).map_err(|error| CacheError::Io {
        action: "rename into",
        path: path.to_path_buf(),
        source: error.error,
    })?;
    sync_dir(parent);
    Ok(())
}

/// Best effort: some filesystems refuse to fsync a directory; the rename is still atomic.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests;
