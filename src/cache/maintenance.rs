//! `taper cache verify | gc | ls | du`.
//!
//! None of them follows a symlink found inside the store: a link planted in a bucket (by a
//! tool, a user, an attacker) could otherwise make `gc` delete, or `verify` read, whatever it
//! points at. Such links are reported or removed as links, never traversed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::lockfile::LockFile;
use super::{
    io_error, open_blob, ActionRecord, CacheError, ObjectStore, RootRecord, RunRecord, Store,
};
use crate::fingerprint::Digest;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub blobs: usize,
    pub manifests: usize,
    pub actions: usize,
    /// Objects whose content does not match their name, and where they were moved (`None`
    /// on a read-only store, which is only checked).
    pub quarantined: Vec<(String, Option<PathBuf>)>,
    /// Action records whose outputs are no longer all present (their stages will rerun).
    pub incomplete_actions: Vec<Digest>,
}

/// What `gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    pub kept_objects: usize,
    pub removed_objects: usize,
    pub removed_bytes: u64,
}

/// Size of one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketUsage {
    pub bucket: String,
    pub files: u64,
    pub bytes: u64,
}

/// One cached stage result, for `ls`.
#[derive(Debug, Clone)]
pub struct ActionListing {
    pub record: ActionRecord,
    pub output_bytes: u64,
    pub output_files: usize,
}

impl Store {
    /// Entries of a sharded bucket with their names parsed as digests (after stripping
    /// `suffix`); foreign names and symlinked shards are skipped. A symlink with a digest name
    /// is listed: readers refuse it (`open_blob`, `get_manifest`), so `verify` moves it away
    /// and `gc` removes it, as a link.
    fn objects(&self, bucket: &str, suffix: &str) -> Vec<(Digest, PathBuf)> {
        let mut found = Vec::new();
        for shard in real_dir_entries(&self.root.join(bucket)) {
            if !shard.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            for file in real_dir_entries(&shard.path()) {
                let name = file.file_name().to_string_lossy().into_owned();
                if let Some(digest) = name
                    .strip_suffix(suffix)
                    .and_then(|hex| hex.parse::<Digest>().ok())
                {
                    found.push((digest, file.path()));
                }
            }
        }
        found.sort();
        found
    }

    /// Rehashes every blob and manifest and rereads every action record; moves corrupt objects
    /// to `quarantine-v1/` so that no run uses them again (on a read-only store it only
    /// reports them).
    pub fn verify(&self) -> Result<VerifyReport, CacheError> {
        let mut report = VerifyReport::default();
        let blobs = self.objects("blobs-v1", "");
        report.blobs = blobs.len();
        let bad_blobs: Vec<&(Digest, PathBuf)> = blobs
            .par_iter()
            .filter(|(digest, path)| {
                let Ok(mut file) = open_blob(path) else {
                    return true;
                };
                super::copy_hashing(&mut file, &mut std::io::sink())
                    .map_or(true, |actual| actual != *digest)
            })
            .collect();
        for (digest, path) in bad_blobs {
            let moved = self.quarantine(path, "blob")?;
            report.quarantined.push((format!("blob {digest}"), moved));
        }
        let manifests = self.objects("manifests-v1", ".json");
        report.manifests = manifests.len();
        for (digest, path) in &manifests {
            if self.get_manifest(digest).is_none() {
                let moved = self.quarantine(path, "manifest")?;
                report
                    .quarantined
                    .push((format!("manifest {digest}"), moved));
            }
        }
        let actions = self.objects("actions-v1", ".json");
        report.actions = actions.len();
        for (key, path) in &actions {
            match self.get_action(key) {
                None => {
                    let moved = self.quarantine(path, "action")?;
                    report.quarantined.push((format!("action {key}"), moved));
                }
                Some(record) => {
                    if self.outputs_present(&record).is_none() {
                        report.incomplete_actions.push(*key);
                    }
                }
            }
        }
        Ok(report)
    }

    /// Deletes every object that neither a registered lock file, nor one of the `keep_runs`
    /// most recent runs, nor (with `keep_experiments`) a recorded experiment reaches, and
    /// leftovers of interrupted runs. Waits for running `taper run`s to finish first (they hold
    /// `gc.lock` shared).
    pub fn gc(&self, keep_runs: usize, keep_experiments: bool) -> Result<GcReport, CacheError> {
        self.writable("collect garbage")?;
        let guard_path = self.root.join("gc.lock");
        let guard = super::open_lock_file(&guard_path)?;
        guard.lock().map_err(io_error("lock", &guard_path))?;

        let mut keys: BTreeSet<Digest> = BTreeSet::new();
        for (_, record) in read_json_dir::<RootRecord>(&self.root.join("roots-v1")) {
            if let Some(lock) = LockFile::load(&record.lock_file) {
                keys.extend(lock.stages.values().map(|stage| stage.key));
            }
        }
        if keep_experiments {
            keys.extend(self.experiment_keys());
        }
        let mut runs = read_json_dir::<RunRecord>(&self.root.join("runs-v1"));
        // Oldest first by last use (see `Store::record_run`); the name breaks ties.
        runs.sort_by_cached_key(|(path, _)| {
            let used = fs::symlink_metadata(path).and_then(|metadata| metadata.modified());
            (used.ok(), path.clone())
        });
        let expired = runs.len().saturating_sub(keep_runs);
        let mut report = GcReport::default();
        for (index, (path, record)) in runs.into_iter().enumerate() {
            if index < expired {
                remove_counted(&path, &mut report);
            } else {
                keys.extend(record.keys);
            }
        }

        let mut manifests = BTreeSet::new();
        let mut blobs = BTreeSet::new();
        for key in &keys {
            if let Some(record) = self.get_action(key) {
                manifests.insert(record.outputs);
                blobs.extend(record.log);
                if let Some(manifest) = self.get_manifest(&record.outputs) {
                    blobs.extend(manifest.entries.values().map(|entry| entry.digest));
                }
            }
        }
        for (bucket, suffix, live) in [
            ("actions-v1", ".json", &keys),
            ("manifests-v1", ".json", &manifests),
            ("blobs-v1", "", &blobs),
        ] {
            for (digest, path) in self.objects(bucket, suffix) {
                if live.contains(&digest) {
                    report.kept_objects += 1;
                } else {
                    remove_counted(&path, &mut report);
                }
            }
        }
        // No run holds the store now, so temp files and scratch space of unreachable keys are
        // leftovers of killed runs.
        for bucket in ["tmp", "scratch-v1", "locks-v1"] {
            for entry in real_dir_entries(&self.root.join(bucket)) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = name
                    .strip_suffix(".lock")
                    .unwrap_or(&name)
                    .parse::<Digest>()
                    .ok();
                if key.is_some_and(|key| keys.contains(&key)) {
                    continue;
                }
                remove_counted(&entry.path(), &mut report);
            }
        }
        drop(guard);
        Ok(report)
    }

    /// Every readable action record, newest first.
    pub fn list_actions(&self) -> Vec<ActionListing> {
        let mut listings: Vec<ActionListing> = self
            .objects("actions-v1", ".json")
            .into_iter()
            .filter_map(|(key, _)| self.get_action(&key))
            .map(|record| {
                let manifest = self.get_manifest(&record.outputs).unwrap_or_default();
                ActionListing {
                    output_bytes: manifest.total_size(),
                    output_files: manifest.entries.len(),
                    record,
                }
            })
            .collect();
        listings.sort_by(|left, right| {
            right
                .record
                .finished_at
                .cmp(&left.record.finished_at)
                .then_with(|| left.record.stage.cmp(&right.record.stage))
        });
        listings
    }

    /// Files and bytes per bucket.
    pub fn disk_usage(&self) -> Vec<BucketUsage> {
        super::BUCKETS
            .iter()
            .map(|bucket| {
                let mut usage = BucketUsage {
                    bucket: (*bucket).to_owned(),
                    files: 0,
                    bytes: 0,
                };
                add_usage(&self.root.join(bucket), &mut usage);
                usage
            })
            .collect()
    }
}

/// The entries of `dir` when it is a real directory; nothing when it is a symlink (to a user's
/// directory, say), missing or unreadable.
fn real_dir_entries(dir: &Path) -> Vec<fs::DirEntry> {
    if !fs::symlink_metadata(dir).is_ok_and(|metadata| metadata.is_dir()) {
        return Vec::new();
    }
    fs::read_dir(dir)
        .map(|entries| entries.flatten().collect())
        .unwrap_or_default()
}

fn add_usage(path: &Path, usage: &mut BucketUsage) {
    for entry in real_dir_entries(path) {
        // `DirEntry::metadata` does not follow symlinks: a link counts as a small file.
        match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => add_usage(&entry.path(), usage),
            Ok(metadata) => {
                usage.files += 1;
                usage.bytes += metadata.len();
            }
            Err(_) => {}
        }
    }
}

pub(super) fn read_json_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<(PathBuf, T)> {
    let mut found: BTreeMap<PathBuf, T> = BTreeMap::new();
    for entry in real_dir_entries(dir) {
        if entry.file_type().is_ok_and(|kind| kind.is_file()) {
            let path = entry.path();
            if let Some(value) = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            {
                found.insert(path, value);
            }
        }
    }
    found.into_iter().collect()
}

fn remove_counted(path: &Path, report: &mut GcReport) {
    let mut usage = BucketUsage {
        bucket: String::new(),
        files: 0,
        bytes: 0,
    };
    // `symlink_metadata`: a link to a directory is removed as a link, its target untouched
    // (`remove_dir_all` does not follow links inside the tree either).
    let metadata = fs::symlink_metadata(path);
    let result = if metadata.as_ref().is_ok_and(fs::Metadata::is_dir) {
        add_usage(path, &mut usage);
        fs::remove_dir_all(path)
    } else {
        usage.bytes = metadata.map(|metadata| metadata.len()).unwrap_or(0);
        usage.files = 1;
        fs::remove_file(path)
    };
    match result {
        Ok(()) => {
            report.removed_objects += usize::try_from(usage.files).unwrap_or(usize::MAX);
            report.removed_bytes += usage.bytes;
        }
        Err(error) => tracing::debug!("not removed `{}`: {error}", path.display()),
    }
}
