//! The content-addressed store (default `cache/` in the project root, see [`locate`];
//! `--store` / `TAPER_STORE` to move it).
//!
//! Contract: every object is immutable, named by its blake3, and becomes visible only by an
//! atomic rename of a fully written, fsynced temp file, so a crash or `kill -9` at any point
//! leaves either the whole object or nothing. An action record (stage key → outputs) is written
//! last, after every blob and manifest it references, so a visible record always has its
//! outputs. Readers treat an unreadable object as absent (a cache fault costs a rerun, never a
//! failure), and every blob copied out of the store is hashed on the way: bytes that no longer
//! match their name are never handed to a stage or a user (the object is quarantined and the
//! stage reruns).
//!
//! Ownership: only a directory taper created is a store. Its marker `taper-store-v1` is written
//! last when a store is created, so a half-made store (buckets, no marker) is recognisable and
//! completed, and a directory holding anything else (a user's home, a project) is refused
//! instead of being filled with buckets or garbage-collected. Stores made before the marker
//! existed (buckets and a `CACHEDIR.TAG` "created by taper") are adopted by writing it.
//! Maintenance never follows a symlink found inside the store.
//!
//! Read-only stores (a shared cache on a read-only mount, `chmod -R a-w`, or
//! `--read-only-store`): opening writes nothing; cached results are restored; a stage that is not
//! cached fails with [`CacheError::ReadOnly`], naming the store and the fix. Run records, the
//! hash cache and gc roots are simply not written.
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
//! runs-v1/<digest>.json           the keys recent runs used, by digest of the key set; the
//!                                 mtime says when last used (gc keeps the newest as roots)
//! roots-v1/<digest>.json          lock files that used this store (gc roots)
//! experiments-v1/<id>.json        what each `taper run` did, for `taper exp` (gc roots unless
//!                                 `cache gc --ignore-experiments`; see [`experiments`])
//! downloads-v1/                   reserved for source fetchers
//! quarantine-v1/                  objects `taper cache verify` found corrupt
//! tmp/                            temp files, renamed into place when complete
//! hashcache-v5.bin                (path, stat) → blake3, (dir, stat fingerprint) → manifest digest
//! gc.lock                         shared by runs, exclusive for gc
//! CACHEDIR.TAG                    tells backup tools to skip the store
//! taper-store-v1                  the marker: this directory is a taper store (written last)
//! ```
//!
//! [`ObjectStore`] is the content-addressed part; [`remote`] shares it (blobs, manifests and
//! action records, same names) through a directory or S3-compatible storage, while locks,
//! scratch space and the hash cache stay local.

mod experiments;
pub mod locate;
mod lockfile;
mod maintenance;
pub mod remote;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fingerprint::{Digest, HashCache, Manifest, StageHashable};

pub use experiments::{ExperimentRecord, ExperimentStage, ExperimentVariant, EXPERIMENT_SCHEMA};
pub use lockfile::{LockFile, LockFileError, LockedSpec, LockedStage};
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
    #[error("the store path `{path}` is not a directory")]
    #[diagnostic(
        code(taper::cache::not_a_directory),
        help("point `--store` (or `TAPER_STORE`) at a directory, or at a path that does not exist yet")
    )]
    NotADirectory { path: PathBuf },
    #[error("`{path}` is not a taper store: it holds {found}")]
    #[diagnostic(
        code(taper::cache::not_a_store),
        help("taper only uses (and only garbage-collects) directories it created as stores, marked by a `taper-store-v1` file; give `--store` a new or empty directory")
    )]
    NotAStore { path: PathBuf, found: String },
    #[error("there is no store at `{path}` to open read-only")]
    #[diagnostic(
        code(taper::cache::no_store),
        help("fill the store with a writable run first, or point `--store` at an existing store")
    )]
    NoStore { path: PathBuf },
    #[error("the store at `{path}` is read-only: cannot {action}")]
    #[diagnostic(
        code(taper::cache::read_only),
        help("results already in the store are restored, but new ones cannot be stored: run with a writable store (`--store DIR`), or make the store writable")
    )]
    ReadOnly { path: PathBuf, action: &'static str },
    /// A cache fault, not a failure: the engine turns it into a rerun of the stage.
    #[error("stored {object} {problem}")]
    #[diagnostic(
        code(taper::cache::corrupt),
        help("the stage is recomputed; `taper cache verify` checks the rest of the store")
    )]
    Corrupt {
        object: String,
        path: PathBuf,
        problem: &'static str,
        /// Where it was moved (`None` when the store is read-only).
        quarantined: Option<PathBuf>,
    },
}

impl CacheError {
    /// Whether this is a damaged or vanished store object (which costs a rerun, never a
    /// failure) rather than a problem with the store itself.
    pub fn is_fault(&self) -> bool {
        matches!(self, CacheError::Corrupt { .. })
    }
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
    /// Writes blob `digest` to `destination` (a writable copy, replacing what is there), or
    /// a [`CacheError::Corrupt`] fault, writing nothing, when the stored bytes are not `digest`.
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
    read_only: bool,
}

/// The file that makes a directory a taper store.
pub const MARKER: &str = "taper-store-v1";

/// The text of `CACHEDIR.TAG`; "created by taper" identifies stores made before [`MARKER`].
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# created by taper\n";

/// Files taper itself keeps at the top of a store (besides the buckets).
const OWN_FILES: [&str; 8] = [
    "CACHEDIR.TAG",
    "gc.lock",
    "hashcache-v1.json",
    "hashcache-v2.bin",
    "hashcache-v3.bin",
    "hashcache-v4.bin",
    "hashcache-v5.bin",
    MARKER,
];

/// Files a project may keep in its store directory (`cache/.gitignore` in this repository).
const TOLERATED_FILES: [&str; 2] = [".gitignore", ".gitkeep"];

const BUCKETS: [&str; 11] = [
    "blobs-v1",
    "manifests-v1",
    "actions-v1",
    "locks-v1",
    "scratch-v1",
    "runs-v1",
    "roots-v1",
    experiments::BUCKET,
    "downloads-v1",
    "quarantine-v1",
    "tmp",
];

impl Store {
    /// Opens the store at `root`, creating it when `root` does not exist (or is an empty
    /// directory). A store that cannot be written to is opened read-only (see the module docs).
    pub fn open(root: &Path) -> Result<Store, CacheError> {
        Store::open_with(root, false)
    }

    /// Opens an existing store without ever writing to it.
    pub fn open_read_only(root: &Path) -> Result<Store, CacheError> {
        Store::open_with(root, true)
    }

    fn open_with(root: &Path, read_only: bool) -> Result<Store, CacheError> {
        match fs::metadata(root) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(CacheError::NotADirectory {
                    path: root.to_path_buf(),
                })
            }
            // Nothing at all there (not even a dangling link): a new store.
            Err(error)
                if error.kind() == io::ErrorKind::NotFound
                    && fs::symlink_metadata(root).is_err() =>
            {
                if read_only {
                    return Err(CacheError::NoStore {
                        path: root.to_path_buf(),
                    });
                }
                fs::create_dir_all(root).map_err(io_error("create", root))?;
            }
            // A symlink loop, a dangling link, a directory we may not search.
            Err(error) => return Err(io_error("open the store", root)(error)),
        }
        // Two runs creating one store at once: the second waits on the directory's lock, then
        // finds the marker, instead of taking the first one's half-made buckets for user files.
        let _creating = if read_only || is_regular_file(&root.join(MARKER)) {
            None
        } else {
            let dir = fs::File::open(root).map_err(io_error("open", root))?;
            dir.lock().map_err(io_error("lock", root))?;
            Some(dir)
        };
        let marked = is_regular_file(&root.join(MARKER));
        if !marked {
            check_adoptable(root)?;
        }
        let read_only = read_only || !is_writable(root);
        if !read_only {
            // Buckets first, marker last: a crash in between leaves a store `check_adoptable`
            // recognises and completes next time.
            for bucket in BUCKETS {
                let path = root.join(bucket);
                fs::create_dir_all(&path).map_err(io_error("create", &path))?;
            }
            if !marked {
                let tag = root.join("CACHEDIR.TAG");
                if !tag.exists() {
                    // Tells backup tools to skip the store; losing it only costs recomputation.
                    write_atomic(root, &tag, CACHEDIR_TAG.as_bytes())?;
                }
                write_atomic(root, &root.join(MARKER), b"taper store, layout v1\n")?;
            }
        }
        let root = fs::canonicalize(root).map_err(io_error("resolve", root))?;
        Ok(Store { root, read_only })
    }

    /// Whether results can be added (see the module docs on read-only stores).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// `Err` naming `action` when the store is read-only.
    fn writable(&self, action: &'static str) -> Result<(), CacheError> {
        if self.read_only {
            Err(CacheError::ReadOnly {
                path: self.root.clone(),
                action,
            })
        } else {
            Ok(())
        }
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
        self.root.join("hashcache-v5.bin")
    }

    pub fn load_hash_cache(&self) -> HashCache {
        HashCache::load(&self.hash_cache_path())
    }

    /// Saves the hash cache if it gained entries (a failure only costs rehashing later).
    pub fn save_hash_cache(&self, cache: &HashCache) {
        if cache.is_dirty() && !self.read_only {
            if let Err(error) = write_atomic(&self.root, &self.hash_cache_path(), &cache.to_bytes())
            {
                tracing::debug!("hash cache not saved: {error}");
            }
        }
    }

    /// A fresh, empty directory under `tmp/` (same filesystem as the buckets, so its files
    /// can be renamed into them).
    pub fn temp_dir(&self, label: &str) -> Result<tempfile::TempDir, CacheError> {
        self.writable("create a temp directory")?;
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&tmp)
            .map_err(io_error("create a temp directory in", &tmp))
    }

    /// Checkpoint space of one stage key; it survives an interrupted run of that key.
    pub fn scratch_dir(&self, key: &Digest) -> Result<PathBuf, CacheError> {
        self.writable("create checkpoint space")?;
        let path = self.root.join("scratch-v1").join(key.to_hex());
        fs::create_dir_all(&path).map_err(io_error("create", &path))?;
        Ok(path)
    }

    /// Whether an earlier attempt at `key` left its checkpoint space: that attempt was
    /// interrupted (it is removed when the key is recorded).
    pub fn has_scratch_dir(&self, key: &Digest) -> bool {
        self.root.join("scratch-v1").join(key.to_hex()).is_dir()
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
    /// Only a run that is about to compute `key` takes it, so a read-only store refuses here,
    /// before the stage starts.
    pub fn try_lock_key(&self, key: &Digest) -> Result<Option<KeyLock>, CacheError> {
        self.writable("store the result of a stage that is not cached in it")?;
        let path = self
            .root
            .join("locks-v1")
            .join(format!("{}.lock", key.to_hex()));
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: Some(file) })),
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
        self.writable("store the result of a stage that is not cached in it")?;
        let path = self
            .root
            .join("locks-v1")
            .join(format!("{}.lock", key.to_hex()));
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_error("lock", &path))?;
        Ok(KeyLock { _file: Some(file) })
    }

    /// Held for a whole run: runs share it, `gc` takes it exclusively. On a read-only store
    /// only an existing `gc.lock` is locked (a lock needs no write access to the file); without
    /// one there is no gc to exclude.
    pub fn run_guard(&self) -> Result<KeyLock, CacheError> {
        let path = self.root.join("gc.lock");
        let file = if self.read_only {
            match fs::File::open(&path) {
                Ok(file) => file,
                Err(_) => return Ok(KeyLock { _file: None }),
            }
        } else {
            open_lock_file(&path)?
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(KeyLock { _file: Some(file) }),
            Err(fs::TryLockError::WouldBlock) => Err(CacheError::GcRunning { path }),
            Err(fs::TryLockError::Error(source)) => Err(CacheError::Io {
                action: "lock",
                path,
                source,
            }),
        }
    }

    /// Records the keys a run used, so `gc` keeps them for a while.
    ///
    /// The record is named by the digest of its key set and its mtime says when it was last
    /// used: a run that repeats an earlier one (every no-op run) only sets that mtime, with no
    /// new file and no `fsync`. A time-named file per run would grow `runs-v1/` by one file per
    /// no-op launch until the next `gc`, and cost two `fsync`s on the path that must be fastest.
    /// The mtime is set explicitly (nanoseconds, not the filesystem's coarse clock), so two runs
    /// in one clock tick still order; losing an mtime update in a crash only ages a gc root.
    pub fn record_run(&self, keys: &[Digest]) -> Result<(), CacheError> {
        if self.read_only {
            return Ok(());
        }
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let bytes = serde_json::to_vec(&RunRecord { keys: sorted })
            .expect("a run record always serializes");
        let path = self
            .root
            .join("runs-v1")
            .join(format!("{}.json", Digest::of_bytes(&bytes).to_hex()));
        let now = std::time::SystemTime::now();
        let touched = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|file| file.set_modified(now));
        if touched.is_err() {
            write_atomic(&self.root, &path, &bytes)?;
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open", &path))?;
            file.set_modified(now)
                .map_err(io_error("set the time of", &path))?;
        }
        Ok(())
    }

    /// Remembers a lock file as a gc root.
    pub fn register_lock_file(&self, lock_file: &Path) -> Result<(), CacheError> {
        if self.read_only {
            return Ok(());
        }
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

    /// Rehashes every blob of `manifest` without copying or moving anything: the first one
    /// that no longer matches its name, as a [`CacheError::Corrupt`] (for `plan`, which must
    /// not promise a restore the run would refuse).
    pub fn check_blobs(&self, manifest: &Manifest) -> Result<(), CacheError> {
        for entry in manifest.entries.values() {
            let path = self.blob_path(&entry.digest);
            let problem = match open_blob(&path) {
                Ok(mut file) => match copy_hashing(&mut file, &mut io::sink()) {
                    Ok(actual) if actual == entry.digest => continue,
                    Ok(_) => "does not match its hash",
                    Err(_) => "cannot be read",
                },
                Err(problem) => problem,
            };
            return Err(CacheError::Corrupt {
                object: format!("blob {}", entry.digest.short()),
                path,
                problem,
                quarantined: None,
            });
        }
        Ok(())
    }

    /// Moves a corrupt object out of its bucket (a symlink is moved as a link, its target
    /// untouched) so no later run reads it again; `None` on a read-only store.
    fn quarantine(&self, path: &Path, label: &str) -> Result<Option<PathBuf>, CacheError> {
        if self.read_only {
            return Ok(None);
        }
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let destination = self
            .root
            .join("quarantine-v1")
            .join(format!("{label}-{name}"));
        fs::rename(path, &destination).map_err(io_error("quarantine", path))?;
        Ok(Some(destination))
    }
}

/// Opens (creating) a lock file without truncating it and without following a symlink: a link
/// planted at `gc.lock` must not let taper clobber the file it points at.
fn open_lock_file(path: &Path) -> Result<fs::File, CacheError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_error("open the lock file", path))
}

/// Whether `path` is a regular file itself (not a link to one).
fn is_regular_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_file())
}

/// Whether a directory without [`MARKER`] may become a store: empty, or holding only what
/// taper writes (a store made before the marker, or one whose creation was interrupted).
/// Anything else is someone's data, which `gc` would delete.
fn check_adoptable(root: &Path) -> Result<(), CacheError> {
    let entries = fs::read_dir(root).map_err(io_error("read", root))?;
    let mut foreign = Vec::new();
    let mut tagged = false;
    let mut filled_buckets = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("read", root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(io_error("read", &entry.path()))?;
        if BUCKETS.contains(&name.as_str()) && kind.is_dir() {
            let empty = fs::read_dir(entry.path())
                .map(|mut inside| inside.next().is_none())
                .unwrap_or(false);
            if !empty {
                filled_buckets.push(format!("{name}/"));
            }
        } else if name == "CACHEDIR.TAG" && kind.is_file() {
            tagged = fs::read_to_string(entry.path())
                .is_ok_and(|text| text.contains("created by taper"));
            if !tagged {
                foreign.push(name);
            }
        } else if !((OWN_FILES.contains(&name.as_str())
            || TOLERATED_FILES.contains(&name.as_str()))
            && kind.is_file())
        {
            foreign.push(name);
        }
    }
    // Filled buckets without taper's tag: a user directory that happens to have a `tmp/`.
    if !tagged {
        foreign.extend(filled_buckets);
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown: Vec<String> = foreign
        .iter()
        .take(3)
        .map(|name| format!("`{name}`"))
        .collect();
    let more = foreign.len() - shown.len();
    let found = if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    };
    Err(CacheError::NotAStore {
        path: root.to_path_buf(),
        found,
    })
}

/// Whether taper may write to the store at `root`. A store directory without any write bit
/// (`chmod -R a-w`) is read-only even for root, who could write anyway: its owner said "do not
/// write". Otherwise a nameless temp file is tried, which catches read-only mounts (EROFS) and
/// missing permissions (EACCES) without leaving anything behind.
fn is_writable(root: &Path) -> bool {
    let Ok(metadata) = fs::metadata(root) else {
        return false;
    };
    if metadata.permissions().mode() & 0o222 == 0 {
        return false;
    }
    match tempfile::tempfile_in(root) {
        Ok(_) => true,
        Err(error) => !matches!(
            error.kind(),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
        ),
    }
}

/// Opens a blob for reading, refusing anything but a regular file: a symlink planted in the
/// store must not make taper read (and hand to a stage) a file outside it.
fn open_blob(path: &Path) -> Result<fs::File, &'static str> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_file() => fs::File::open(path).map_err(|_| "cannot be read"),
        Ok(_) => Err("is not a regular file"),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err("is missing"),
        Err(_) => Err("cannot be read"),
    }
}

/// Which side of a copy failed: reading the blob (its fault) or writing the copy.
enum CopyError {
    Read,
    Write(io::Error),
}

/// Copies `input` to `output` and returns the blake3 of the bytes copied: one read serves both,
/// so a restore costs no second pass over a large model.
fn copy_hashing(input: &mut impl io::Read, output: &mut impl Write) -> Result<Digest, CopyError> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(CopyError::Read),
        };
        hasher.update(&buffer[..read]);
        output
            .write_all(&buffer[..read])
            .map_err(CopyError::Write)?;
    }
    Ok(hasher.finalize().into())
}

/// A held file lock, released on drop (and by the OS when the process dies, so a killed run
/// never leaves a key locked).
#[derive(Debug)]
pub struct KeyLock {
    _file: Option<fs::File>,
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
        is_regular_file(&self.blob_path(digest))
    }

    fn put_blob(&self, source: &Path, digest: &Digest, owned: bool) -> Result<(), CacheError> {
        self.writable("add a blob")?;
        let destination = self.blob_path(digest);
        if is_regular_file(&destination) {
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
        let fault = |problem: &'static str| -> CacheError {
            let quarantined = if fs::symlink_metadata(&source).is_ok() {
                self.quarantine(&source, "blob").unwrap_or_else(|error| {
                    tracing::warn!("{error}");
                    None
                })
            } else {
                None
            };
            CacheError::Corrupt {
                object: format!("blob {}", digest.short()),
                path: source.clone(),
                problem,
                quarantined,
            }
        };
        let mut input = open_blob(&source).map_err(fault)?;
        let parent = destination.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        let mut temp = tempfile::NamedTempFile::new_in(parent)
            .map_err(io_error("create a temp file in", parent))?;
        // A read error is the blob's fault (a rerun fixes it); a write error is the workspace's
        // (a full disk, permissions), which a rerun would not fix.
        let actual = copy_hashing(&mut input, temp.as_file_mut()).map_err(|error| match error {
            CopyError::Read => fault("cannot be read"),
            CopyError::Write(source) => CacheError::Io {
                action: "write",
                path: destination.to_path_buf(),
                source,
            },
        })?;
        if actual != *digest {
            return Err(fault("does not match its hash"));
        }
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
        // A damaged copy under this name is replaced, or every run would miss it again.
        if self.get_manifest(&digest).is_none() {
            self.writable("add a manifest")?;
            let bytes = serde_json::to_vec(manifest).expect("a manifest always serializes");
            write_atomic(&self.root, &path, &bytes)?;
        }
        Ok(digest)
    }

    fn get_manifest(&self, digest: &Digest) -> Option<Manifest> {
        let path = self.manifest_path(digest);
        if !is_regular_file(&path) {
            return None;
        }
        let bytes = fs::read(&path).ok()?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|error| tracing::debug!("unreadable manifest `{}`: {error}", path.display()))
            .ok()?;
        (manifest.digest() == *digest).then_some(manifest)
    }

    fn put_action(&self, record: &ActionRecord) -> Result<(), CacheError> {
        self.writable("add an action record")?;
        let bytes = serde_json::to_vec_pretty(record).expect("an action record always serializes");
        write_atomic(&self.root, &self.action_path(&record.key), &bytes)
    }

    fn get_action(&self, key: &Digest) -> Option<ActionRecord> {
        let path = self.action_path(key);
        if !is_regular_file(&path) {
            return None;
        }
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
