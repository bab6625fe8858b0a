//! `<pipeline>.lock`: the committed record of what each stage last produced, and from what.
//!
//! Deterministic: maps are sorted, digests are hex, settings are the canonical resolved values,
//! so two runs that did the same work write byte-identical files and `git diff` shows exactly
//! what changed. Each entry holds the whole fingerprint of its stage, so `taper plan` can say
//! which setting changed from what to what even when the store is empty.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{write_atomic, CacheError};
use crate::fingerprint::{Digest, StageHashable};
use crate::model::StageKind;

/// The lock file of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    pub pipeline: String,
    /// The shared specs used, by `use:` entry: a changed spec shows in `git diff` of the lock
    /// file even before anything reruns. Absent for pipelines without `use:`, so their lock
    /// files are unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub specs: BTreeMap<String, LockedSpec>,
    #[serde(default)]
    pub stages: BTreeMap<String, LockedStage>,
}

/// A spec file a pipeline used, as it was when the lock file was written: from a `path`, or
/// published (`pip` + `member`, or `url`). Only the fields of its source are written, so the
/// lock files of path specs are what they were before published specs existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub spec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// blake3 of the spec file's bytes.
    pub blake3: String,
    /// Each (unswept) param's value as used, so `plan` can say which one changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

impl LockedSpec {
    pub fn of(used: &crate::spec::SpecUse) -> LockedSpec {
        use crate::spec::SpecSource;
        let (mut path, mut pip, mut member, mut url) = (None, None, None, None);
        match &used.source {
            SpecSource::Path(written) => path = Some(written.clone()),
            SpecSource::Pip {
                pip: package,
                member: file,
                ..
            } => (pip, member) = (Some(package.clone()), Some(file.clone())),
            SpecSource::Url { url: address, .. } => url = Some(address.clone()),
        }
        LockedSpec {
            path,
            pip,
            member,
            url,
            spec: used.name.clone(),
            version: used.version.clone(),
            blake3: used.blake3.clone(),
            params: used
                .params
                .iter()
                .map(|(name, (value, _))| (name.clone(), value.clone()))
                .collect(),
        }
    }
}

/// One stage's last successful result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedStage {
    pub kind: StageKind,
    pub key: Digest,
    pub key_scheme: u32,
    pub implementation_version: u32,
    pub settings_digest: Digest,
    pub settings: serde_json::Value,
    /// External files and directories: path → `file:`/`dir:` digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Content received from upstream stages: slot or dep path → digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Where the outputs are materialized → their content digest.
    pub outputs: BTreeMap<String, String>,
    /// Manifest digest of all outputs (the store object).
    pub manifest: Digest,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

impl LockedStage {
    /// The fingerprint this entry was computed from.
    pub fn hashable(&self) -> StageHashable {
        StageHashable {
            scheme: self.key_scheme,
            kind: self.kind,
            implementation_version: self.implementation_version,
            settings: self.settings.clone(),
            upstream: self.upstream.clone(),
            external: self.inputs.clone(),
            environment: self.environment.clone(),
        }
    }
}

impl LockFile {
    pub fn new(pipeline: &str) -> LockFile {
        LockFile {
            version: 1,
            pipeline: pipeline.to_owned(),
            specs: BTreeMap::new(),
            stages: BTreeMap::new(),
        }
    }

    /// `x.yaml` → `x.lock`, beside it ([`crate::model::lock_path_for`], which validation also
    /// uses to keep outs off the lock file).
    pub fn path_for(pipeline_file: &Path) -> PathBuf {
        crate::model::lock_path_for(pipeline_file)
    }

    /// Reads a lock file; a missing or unreadable one is `None` (every stage is then new: a
    /// damaged lock file costs reruns, not a failure). Only a regular file is opened: reading
    /// a FIFO put in its place would block forever.
    pub fn load(path: &Path) -> Option<LockFile> {
        if !fs::symlink_metadata(path).ok()?.is_file() {
            tracing::warn!("ignoring `{}`: not a regular file", path.display());
            return None;
        }
        let text = fs::read_to_string(path).ok()?;
        serde_yaml::from_str::<LockFile>(&text)
            .map_err(|error| tracing::warn!("ignoring unreadable `{}`: {error}", path.display()))
            .ok()
            .filter(|lock| lock.version == 1)
    }

    pub fn to_yaml(&self) -> String {
        let body = serde_yaml::to_string(self).expect("a lock file always serializes");
        format!("# generated by taper: commit it; do not edit\n{body}")
    }

    /// Writes atomically (temp file beside it, fsync, rename).
    pub fn save(&self, path: &Path, store_root: &Path) -> Result<(), LockFileError> {
        write_atomic(store_root, path, self.to_yaml().as_bytes()).map_err(|source| LockFileError {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The lock file could not be written (it is a directory, the disk is full…). A run reports it
/// as a failure: exiting 0 would let CI commit a lock file that does not match the outputs.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot write the lock file `{}`", path.display())]
#[diagnostic(
    code(taper::cache::lock_file),
    help("the stages' outputs are in the store, so the next run restores them without rerunning: make `{}` a writable file (not a directory) on a disk with free space, then run again", path.display())
)]
pub struct LockFileError {
    pub path: PathBuf,
    #[source]
    pub source: CacheError,
}
