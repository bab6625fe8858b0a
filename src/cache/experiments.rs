//! `experiments-v1/<id>.json`: what each `taper run` did, for `taper exp show | diff | apply`.
//!
//! An experiment is named by a digest of what makes it what it is (pipeline, git commit,
//! overrides, every stage's key), not by when it ran: running the same thing again (a no-op
//! run, a run in another checkout of the same commit) finds the record already there and keeps
//! it, with the wall times of the run that actually computed it. Records are small JSON files
//! written atomically; one that cannot be read is skipped (a side channel is never worth failing
//! a command).
//!
//! Experiments are gc roots: `cache gc` keeps the outputs of every stage key a record names,
//! unless it is told `--ignore-experiments` (the records then stay, as history: their params,
//! metrics and overrides are in the record; `exp diff` shows less). `taper exp remove ID`
//! deletes a record, and with it the root.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::maintenance::read_json_dir;
use super::{io_error, write_atomic, CacheError, Store};
use crate::fingerprint::Digest;
use crate::model::StageKind;

/// The bucket holding the records.
pub(super) const BUCKET: &str = "experiments-v1";

/// The version of [`ExperimentRecord`]'s JSON, also the `schema` field of `taper exp show
/// --json` (docs/spec.md, "Machine-readable output").
pub const EXPERIMENT_SCHEMA: u32 = 1;

/// One recorded `taper run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    pub schema: u32,
    /// The first [`ExperimentRecord::ID_LENGTH`] hex digits of [`ExperimentRecord::digest`].
    pub id: String,
    /// The pipeline file, relative to the project root (`/`-separated).
    pub pipeline: String,
    /// The pipeline's `name:`.
    pub name: String,
    /// When the run started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// How long the whole run took.
    pub wall_ms: u64,
    /// `HEAD`'s commit when the project is in a git repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The `-S` overrides as given (`train.epochs=3`, `params.lr=1e-4`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// Every stage the run considered, by name.
    pub stages: BTreeMap<String, ExperimentStage>,
    /// The expansions of each `matrix:` (none without one): each is a row of `exp show`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<ExperimentVariant>,
}

/// What happened to one stage in the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentStage {
    pub kind: StageKind,
    /// `ran`, `cached`, `failed` or `skipped`.
    pub status: String,
    /// The stage key (absent when it failed or was skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Digest>,
    /// Wall time of the stage in this run (0 when restored from the store).
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// One variant of a `use:` with a `matrix:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentVariant {
    /// The `use:` entry it expands.
    pub entry: String,
    /// What its own stages' names end with (`lr1e-3-seed2`).
    pub label: String,
    /// The swept params' values as written.
    pub params: BTreeMap<String, String>,
    /// Its stages (shared ones included).
    pub stages: Vec<String>,
}

impl ExperimentRecord {
    /// Hex digits in an id: 8 are 4 billion names, plenty for one project's history, and
    /// short enough to type (longer prefixes and the full digest are accepted too).
    pub const ID_LENGTH: usize = 8;

    /// The digest naming the experiment: pipeline, commit, overrides and stage keys (not the
    /// times, which differ between runs of the same work).
    pub fn digest(&self) -> Digest {
        let keys: BTreeMap<&String, Option<&Digest>> = self
            .stages
            .iter()
            .map(|(name, stage)| (name, stage.key.as_ref()))
            .collect();
        let identity = serde_json::json!({
            "pipeline": self.pipeline,
            "commit": self.commit,
            "overrides": self.overrides,
            "keys": keys,
        });
        Digest::of_bytes(identity.to_string().as_bytes())
    }

    /// Sets [`ExperimentRecord::id`] from [`ExperimentRecord::digest`].
    #[must_use]
    pub fn with_id(mut self) -> ExperimentRecord {
        self.id = self.digest().to_hex()[..Self::ID_LENGTH].to_owned();
        self
    }
}

/// Whether `id` can name a record: hex digits only, so it can never name a path outside the
/// bucket (`../x`).
pub(super) fn is_experiment_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// A record another machine pushed, as `<id>.json`: used only when it parses as a record of
/// this schema whose id is `id` and is the digest of what it records (a record edited on the
/// remote to claim other stage keys would otherwise hold gc roots and show false history).
/// The problem, worded to follow "remote experiment <id>".
pub(super) fn check_pulled(id: &str, bytes: &[u8]) -> Result<ExperimentRecord, &'static str> {
    let record: ExperimentRecord =
        serde_json::from_slice(bytes).map_err(|_| "is not an experiment record")?;
    if record.schema != EXPERIMENT_SCHEMA {
        return Err("is a record format this taper does not read");
    }
    if record.id != id || record.clone().with_id().id != id {
        return Err("does not match its id");
    }
    Ok(record)
}

impl Store {
    /// Stores `record` unless an experiment with its id exists (see the module docs); returns
    /// whether it was new. A read-only store records nothing.
    pub fn record_experiment(&self, record: &ExperimentRecord) -> Result<bool, CacheError> {
        let bytes = serde_json::to_vec_pretty(record).expect("an experiment record serializes");
        self.write_experiment(&record.id, &bytes)
    }

    /// Stores a record pulled from a remote, its bytes as they were (checked by
    /// [`check_pulled`]), unless a record with its id exists; returns whether it was new.
    pub(super) fn import_experiment(&self, id: &str, bytes: &[u8]) -> Result<bool, CacheError> {
        self.writable("store a pulled experiment")?;
        self.write_experiment(id, bytes)
    }

    fn write_experiment(&self, id: &str, bytes: &[u8]) -> Result<bool, CacheError> {
        if self.read_only {
            return Ok(false);
        }
        let path = self.experiment_path(id);
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(false);
        }
        write_atomic(&self.root, &path, bytes)?;
        Ok(true)
    }

    /// Where the record `id` lives (`id` is hex: see [`is_experiment_id`]).
    pub(super) fn experiment_path(&self, id: &str) -> PathBuf {
        self.root.join(BUCKET).join(format!("{id}.json"))
    }

    /// Every readable record, oldest first.
    pub fn experiments(&self) -> Vec<ExperimentRecord> {
        let mut records: Vec<ExperimentRecord> =
            read_json_dir::<ExperimentRecord>(&self.root.join(BUCKET))
                .into_iter()
                .map(|(_, record)| record)
                .filter(|record| record.schema == EXPERIMENT_SCHEMA)
                .collect();
        records.sort_by(|left, right| {
            (left.started_at_ms, &left.id).cmp(&(right.started_at_ms, &right.id))
        });
        records
    }

    /// Deletes the record `id` (a full id); `false` when there is none.
    pub fn remove_experiment(&self, id: &str) -> Result<bool, CacheError> {
        self.writable("remove an experiment")?;
        if !is_experiment_id(id) {
            return Ok(false);
        }
        let path = self.experiment_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(io_error("remove", &path)(error)),
        }
    }

    /// The stage keys every experiment names (gc roots).
    pub(super) fn experiment_keys(&self) -> impl Iterator<Item = Digest> {
        self.experiments()
            .into_iter()
            .flat_map(|record| record.stages.into_values().filter_map(|stage| stage.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: u8) -> ExperimentRecord {
        ExperimentRecord {
            schema: EXPERIMENT_SCHEMA,
            id: String::new(),
            pipeline: "p.yaml".to_owned(),
            name: "p".to_owned(),
            started_at_ms: 1,
            wall_ms: 2,
            commit: None,
            overrides: vec!["train.epochs=3".to_owned()],
            stages: BTreeMap::from([(
                "train".to_owned(),
                ExperimentStage {
                    kind: StageKind::Train,
                    status: "ran".to_owned(),
                    key: Some(Digest::of_bytes(&[key])),
                    duration_ms: 5,
                    metrics: BTreeMap::from([("loss".to_owned(), 0.5)]),
                },
            )]),
            variants: Vec::new(),
        }
        .with_id()
    }

    #[test]
    fn the_id_names_the_work_not_the_time() {
        let first = record(1);
        let mut later = first.clone();
        later.started_at_ms = 99;
        later.wall_ms = 0;
        assert_eq!(later.with_id().id, first.id);
        assert_ne!(record(2).id, first.id);
        assert_eq!(first.id.len(), ExperimentRecord::ID_LENGTH);
    }

    #[test]
    fn a_repeated_experiment_keeps_its_first_record() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&temp.path().join("store")).expect("store");
        let first = record(1);
        assert!(store.record_experiment(&first).expect("record"));
        let mut again = first.clone();
        again.started_at_ms = 50;
        assert!(!store.record_experiment(&again).expect("record"));
        assert_eq!(store.experiments(), vec![first.clone()]);
        assert!(!store.remove_experiment("../x").expect("refused"));
        assert!(store.remove_experiment(&first.id).expect("removed"));
        assert!(store.experiments().is_empty());
    }

    /// A pulled record is stored byte for byte when it is what its name says, and refused when
    /// it is not a record, names another id, or was edited after it was named.
    #[test]
    fn a_pulled_record_must_be_what_its_name_says() {
        let record = record(1);
        let bytes = serde_json::to_vec_pretty(&record).expect("serializes");
        assert_eq!(check_pulled(&record.id, &bytes), Ok(record.clone()));
        assert_eq!(
            check_pulled(&record.id, b"{}"),
            Err("is not an experiment record")
        );
        assert_eq!(
            check_pulled("00000000", &bytes),
            Err("does not match its id")
        );
        let mut edited = record.clone();
        edited.overrides.clear();
        let edited = serde_json::to_vec(&edited).expect("serializes");
        assert_eq!(
            check_pulled(&record.id, &edited),
            Err("does not match its id")
        );
        let mut newer = record.clone();
        newer.schema = EXPERIMENT_SCHEMA + 1;
        let newer = serde_json::to_vec(&newer).expect("serializes");
        assert_eq!(
            check_pulled(&record.id, &newer),
            Err("is a record format this taper does not read")
        );

        let temp = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&temp.path().join("store")).expect("store");
        assert!(store.import_experiment(&record.id, &bytes).expect("import"));
        assert!(!store.import_experiment(&record.id, b"other").expect("kept"));
        let stored = fs::read(store.experiment_path(&record.id)).expect("stored");
        assert_eq!(stored, bytes);
        assert!(!is_experiment_id("../x") && !is_experiment_id(""));
    }
}
