//! The scheduler: plan, then run stale stages in dependency order, in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::executor::{Executor, StageJob};
use super::inputs::{output_dir_of, Dag};
use super::interrupt::STAGE_PROCESSES;
use super::runner::{StageError, StageOutcome};
use super::workspace::{
    expect_regular_file, materialize, mounts, stale_mounts, unsaved, Fence, Outputs, Overwrite,
    Role,
};
use super::ExecError;
use crate::cache::remote::{Remote, RemoteError, TransferReport};
use crate::cache::{
    ActionRecord, LockFile, LockFileError, LockedSpec, LockedStage, ObjectStore, Store,
};
use crate::fingerprint::{
    compare, settings_digest, Digest, DirtyReason, HashCache, Manifest, StageHashable,
};
use crate::model::{stage_log_path, Pipeline, StageId};

/// Which stages to consider and how.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages to bring up to date (with their upstream stages); all when empty.
    pub targets: Vec<String>,
    /// Also every stage downstream of the targets.
    pub downstream: bool,
    /// Stages to run even when cached.
    pub force: Vec<String>,
    /// Stages run at the same time (at least 1).
    pub jobs: usize,
}

/// What `plan` expects a stage to do.
#[derive(Debug)]
pub enum Decision {
    /// Up to date; `restore` lists outputs to copy back from the store.
    Cached {
        restore: Vec<String>,
    },
    WillRun(Vec<DirtyReason>),
    /// Its key cannot be computed (a missing dep, say).
    Error(ExecError),
}

#[derive(Debug)]
pub struct StagePlan {
    pub stage: StageId,
    /// `None` while an upstream stage still has to run.
    pub key: Option<Digest>,
    pub decision: Decision,
}

/// What happened to a stage in a run.
#[derive(Debug)]
pub enum StageStatus {
    Cached {
        restored: Vec<String>,
    },
    Ran {
        reasons: Vec<DirtyReason>,
        duration: Duration,
        /// Byte-identical to the previous outputs: dependents stay cached.
        outputs_unchanged: bool,
    },
    Failed(ExecError),
    /// Not run because upstream stage `upstream` failed.
    Skipped {
        upstream: StageId,
    },
}

/// Progress reports, in the order things happen (from several threads).
#[derive(Debug)]
pub enum Event<'a> {
    Cached {
        stage: &'a StageId,
        restored: &'a [String],
    },
    /// Another `taper run` holds this stage's key; this one waits for it.
    Waiting {
        stage: &'a StageId,
    },
    Started {
        stage: &'a StageId,
        reasons: &'a [DirtyReason],
    },
    Log {
        stage: &'a StageId,
        line: &'a str,
    },
    Finished {
        stage: &'a StageId,
        duration: Duration,
        outputs_unchanged: bool,
    },
    Failed {
        stage: &'a StageId,
        error: &'a ExecError,
    },
    Skipped {
        stage: &'a StageId,
        upstream: &'a StageId,
    },
}

/// The outcome of every selected stage, in topological order.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub stages: Vec<(StageId, StageStatus)>,
    /// The lock file could not be written at the end of the run (the outputs are stored).
    pub lock_error: Option<ExecError>,
    /// The lock entry of every stage this run ran or restored (key, settings, metrics): what
    /// an experiment record keeps of the run (`exec::experiment`).
    pub locked: BTreeMap<StageId, LockedStage>,
}

impl RunSummary {
    pub fn failed(&self) -> bool {
        self.lock_error.is_some()
            || self
                .stages
                .iter()
                .any(|(_, status)| matches!(status, StageStatus::Failed(_)))
    }

    /// Stages that actually executed.
    pub fn executed(&self) -> Vec<&StageId> {
        self.stages
            .iter()
            .filter(|(_, status)| matches!(status, StageStatus::Ran { .. }))
            .map(|(id, _)| id)
            .collect()
    }
}

/// Reports what a read-through or write-through transfer could not do, as warnings: the
/// stage reruns or its result stays local, and the run goes on.
fn warn_remote_failures(result: Result<TransferReport, RemoteError>) {
    let failures = match result {
        Ok(report) => report.failures,
        Err(error) => vec![error],
    };
    for failure in failures {
        tracing::warn!("{:?}", miette::Report::new(failure));
    }
}

/// Plans and runs one pipeline against one store.
pub struct Engine<'a> {
    pipeline: &'a Pipeline,
    dag: Dag,
    store: &'a Store,
    /// The shared cache, read through on a local miss and written through after each stage.
    remote: Option<&'a Remote>,
    executor: &'a dyn Executor,
    hash_cache: HashCache,
    lock_path: PathBuf,
    lock: Mutex<LockFile>,
    /// What a stage may write or delete in the pipeline directory.
    fence: Fence,
    /// When the lock file was last written, and whether entries changed since.
    lock_written: Mutex<(Option<Instant>, bool)>,
}

/// The lock file is rewritten at most this often during a run (and always at its end). Every
/// finished stage is already durable in the store, so a crash between writes costs no rerun,
/// only lock entries the next run rewrites; writing it after each of 1,000 stages would cost
/// O(stages²) serialization.
const LOCK_WRITE_INTERVAL: Duration = Duration::from_millis(200);

/// What a cache lookup in `process` decided.
enum Cached {
    /// Done without running: restored, or failed while restoring.
    Done(Box<Finished>),
    /// Not usable; with the reason when a stored object turned out damaged.
    Miss(Option<DirtyReason>),
}

/// A stage's result as the worker hands it back.
struct Finished {
    status: StageStatus,
    key: Option<Digest>,
    manifest: Option<Manifest>,
    locked: Option<LockedStage>,
}

impl<'a> Engine<'a> {
    pub fn new(
        pipeline: &'a Pipeline,
        store: &'a Store,
        executor: &'a dyn Executor,
    ) -> Result<Engine<'a>, ExecError> {
        let dag = Dag::new(pipeline);
        let lock_path = LockFile::path_for(&pipeline.path);
        // A FIFO there would block the read forever; a symlink would be replaced by the write.
        expect_regular_file(&lock_path)?;
        let fence = Fence::for_pipeline(pipeline, store.root())?;
        let mut lock = LockFile::load(&lock_path).unwrap_or_else(|| LockFile::new(&pipeline.name));
        // Entries of stages that left the pipeline would otherwise linger forever. Dropping
        // one makes the lock file due for a write even when every stage left is cached: a
        // user who deleted a stage and reran would otherwise keep committing its entry.
        let listed = lock.stages.len();
        lock.stages.retain(|name, _| {
            pipeline
                .stages
                .iter()
                .any(|stage| stage.id.as_str() == name)
        });
        let dropped = lock.stages.len() != listed;
        lock.pipeline.clone_from(&pipeline.name);
        lock.specs = pipeline
            .specs
            .iter()
            .map(|used| (used.entry.clone(), LockedSpec::of(used)))
            .collect();
        Ok(Engine {
            pipeline,
            dag,
            hash_cache: store.load_hash_cache(),
            store,
            remote: None,
            executor,
            lock_path,
            lock: Mutex::new(lock),
            fence,
            lock_written: Mutex::new((None, dropped)),
        })
    }

    /// Uses `remote` as the shared cache (see [`Remote`]): a stage the local store lacks is
    /// pulled from it before it would run, and each new result is pushed to it. A remote that
    /// fails costs a rerun or a missed upload (warned about), never the run.
    pub fn with_remote(mut self, remote: &'a Remote) -> Engine<'a> {
        self.remote = Some(remote);
        self
    }

    /// Read-through: fetches the result of `key` from the remote into the local store.
    fn pull_from_remote(&self, key: &Digest) {
        let Some(remote) = self.remote else {
            return;
        };
        warn_remote_failures(remote.pull(self.store, Some(&[*key]), &|_| {}));
    }

    /// Write-through: uploads the result of `key` (just stored locally) to the remote.
    fn push_to_remote(&self, key: &Digest) {
        let Some(remote) = self.remote else {
            return;
        };
        warn_remote_failures(remote.push(self.store, Some(&[*key]), &|_| {}));
    }

    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Stage indices the options select, with every upstream stage they need.
    fn selection(&self, options: &RunOptions) -> Result<BTreeSet<usize>, ExecError> {
        if options.targets.is_empty() {
            return Ok((0..self.dag.len()).collect());
        }
        let roots = options
            .targets
            .iter()
            .map(|name| self.dag.index_of(name))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted: Vec<usize> = if options.downstream {
            self.dag.closure(&roots, true).into_iter().collect()
        } else {
            roots
        };
        Ok(self.dag.closure(&wanted, false))
    }

    fn forced(&self, options: &RunOptions) -> Result<BTreeSet<usize>, ExecError> {
        options
            .force
            .iter()
            .map(|name| self.dag.index_of(name))
            .collect()
    }

    /// The stored outputs of `key`, when complete.
    fn lookup(&self, key: &Digest) -> Option<Manifest> {
        let record = self.store.get_action(key)?;
        self.store.outputs_present(&record)
    }

    /// `plan`'s view of a cached stage: restoring `restore` (non-empty) from `manifest` would
    /// hit a damaged blob, so the run will recompute the stage instead. Only checked when
    /// something is to be restored, because only a restore reads blobs.
    fn restore_fault(&self, manifest: &Manifest, restore: &[String]) -> Option<DirtyReason> {
        if restore.is_empty() {
            return None;
        }
        let error = self.store.check_blobs(manifest).err()?;
        Some(DirtyReason::StoreFault {
            problem: error.to_string(),
        })
    }

    fn locked(&self, index: usize) -> Option<LockedStage> {
        let lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        lock.stages.get(self.dag.id(index).as_str()).cloned()
    }

    /// Why stage `index` with fingerprint `hashable` is not cached.
    fn reasons(&self, index: usize, hashable: &StageHashable, forced: bool) -> Vec<DirtyReason> {
        if forced {
            return vec![DirtyReason::Forced];
        }
        match self.locked(index) {
            None => vec![DirtyReason::NewStage],
            Some(previous) => {
                let reasons = compare(&previous.hashable(), hashable);
                if reasons.is_empty() {
                    vec![DirtyReason::OutputMissing]
                } else {
                    reasons
                }
            }
        }
    }

    /// Decides every selected stage without running anything.
    pub fn plan(&self, options: &RunOptions) -> Result<Vec<StagePlan>, ExecError> {
        let selected = self.selection(options)?;
        let forced = self.forced(options)?;
        let mut outputs: BTreeMap<usize, Manifest> = BTreeMap::new();
        let mut plans = Vec::new();
        for &index in self.dag.order() {
            if !selected.contains(&index) {
                continue;
            }
            let stage = &self.pipeline.stages[index];
            let computed = self
                .dag
                .hashable(self.pipeline, index, &self.hash_cache, &|i| {
                    outputs.get(&i).cloned()
                });
            let (mut hashable, unknown) = match computed {
                Ok(found) => found,
                Err(error) => {
                    plans.push(StagePlan {
                        stage: stage.id.clone(),
                        key: None,
                        decision: Decision::Error(error),
                    });
                    continue;
                }
            };
            if let Some(&first) = unknown.first() {
                // The key waits for upstream outputs; still report what else changed, comparing
                // against the previous upstream content so it is not counted as a change.
                let mut reasons = vec![DirtyReason::UpstreamWillRun {
                    stage: self.dag.id(first).to_string(),
                }];
                if let Some(previous) = self.locked(index) {
                    for (name, digest) in &previous.upstream {
                        hashable
                            .upstream
                            .entry(name.clone())
                            .or_insert_with(|| digest.clone());
                    }
                    reasons.extend(compare(&previous.hashable(), &hashable));
                }
                if forced.contains(&index) {
                    reasons.insert(0, DirtyReason::Forced);
                }
                plans.push(StagePlan {
                    stage: stage.id.clone(),
                    key: None,
                    decision: Decision::WillRun(reasons),
                });
                continue;
            }
            let key = hashable.key();
            let is_forced = forced.contains(&index);
            let decision = match self.lookup(&key).filter(|_| !is_forced) {
                Some(manifest) => {
                    let restore = stale_mounts(self.pipeline, stage, &manifest, &self.hash_cache);
                    match self.restore_fault(&manifest, &restore) {
                        Some(fault) => Decision::WillRun(vec![fault]),
                        None => {
                            outputs.insert(index, manifest);
                            Decision::Cached { restore }
                        }
                    }
                }
                None => Decision::WillRun(self.reasons(index, &hashable, is_forced)),
            };
            plans.push(StagePlan {
                stage: stage.id.clone(),
                key: Some(key),
                decision,
            });
        }
        self.store.save_hash_cache(&self.hash_cache);
        Ok(plans)
    }

    /// Runs every stale selected stage; returns when all have finished, failed or been skipped.
    pub fn run(
        &self,
        options: &RunOptions,
        observe: &(dyn Fn(&Event<'_>) + Sync),
    ) -> Result<RunSummary, ExecError> {
        let _guard = self.store.run_guard()?;
        let selected = self.selection(options)?;
        let forced = self.forced(options)?;
        let jobs = options.jobs.max(1);
        let mut remaining: BTreeMap<usize, usize> = selected
            .iter()
            .map(|&index| (index, self.dag.upstream(index).len()))
            .collect();
        let mut ready: BTreeSet<usize> = remaining
            .iter()
            .filter(|(_, count)| **count == 0)
            .map(|(index, _)| *index)
            .collect();
        let mut outputs: BTreeMap<usize, Manifest> = BTreeMap::new();
        let mut statuses: BTreeMap<usize, StageStatus> = BTreeMap::new();
        let mut keys = Vec::new();
        let mut locked_stages = BTreeMap::new();
        let (sender, receiver) = mpsc::channel::<(usize, Finished)>();

        std::thread::scope(|scope| {
            let mut running = 0usize;
            loop {
                // Once taper is interrupted, stages already running finish (their commands got
                // the signal); nothing new starts.
                while running < jobs && STAGE_PROCESSES.interrupted().is_none() {
                    let Some(index) = ready.pop_first() else {
                        break;
                    };
                    let upstream: BTreeMap<usize, Manifest> = self
                        .dag
                        .upstream(index)
                        .iter()
                        .filter_map(|i| outputs.get(i).map(|manifest| (*i, manifest.clone())))
                        .collect();
                    let is_forced = forced.contains(&index);
                    let sender = sender.clone();
                    scope.spawn(move || {
                        let finished =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                self.process(index, &upstream, is_forced, observe)
                            }))
                            .unwrap_or_else(|_| Finished {
                                status: StageStatus::Failed(ExecError::StageFailed {
                                    stage: self.dag.id(index).clone(),
                                    log: self.log_path(index),
                                    source: StageError::new(ExecError::Io {
                                        action: "run (the runner panicked)",
                                        path: self.pipeline.path.clone(),
                                        source: std::io::Error::other("panic in stage runner"),
                                    }),
                                }),
                                key: None,
                                manifest: None,
                                locked: None,
                            });
                        // The receiver lives until every worker has reported.
                        let _ = sender.send((index, finished));
                    });
                    running += 1;
                }
                if running == 0 {
                    break;
                }
                let Ok((index, finished)) = receiver.recv() else {
                    break;
                };
                running -= 1;
                keys.extend(finished.key);
                if let Some(locked) = finished.locked {
                    locked_stages.insert(self.dag.id(index).clone(), locked.clone());
                    self.update_lock(index, locked);
                }
                match finished.manifest {
                    Some(manifest) => {
                        outputs.insert(index, manifest);
                        for &next in self.dag.downstream(index) {
                            if let Some(count) = remaining.get_mut(&next) {
                                *count -= 1;
                                if *count == 0 {
                                    ready.insert(next);
                                }
                            }
                        }
                    }
                    None => {
                        let failed = self.dag.id(index);
                        for next in self.dag.closure(&[index], true) {
                            if next != index
                                && selected.contains(&next)
                                && !statuses.contains_key(&next)
                            {
                                observe(&Event::Skipped {
                                    stage: self.dag.id(next),
                                    upstream: failed,
                                });
                                statuses.insert(
                                    next,
                                    StageStatus::Skipped {
                                        upstream: failed.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
                statuses.insert(index, finished.status);
            }
        });

        let lock_error = self.flush_lock().err().map(ExecError::from);
        self.store.save_hash_cache(&self.hash_cache);
        if let Err(error) = self.store.record_run(&keys) {
            tracing::debug!("run record not written: {error}");
        }
        let stages = self
            .dag
            .order()
            .iter()
            .filter_map(|index| {
                statuses
                    .remove(index)
                    .map(|status| (self.dag.id(*index).clone(), status))
            })
            .collect();
        Ok(RunSummary {
            stages,
            lock_error,
            locked: locked_stages,
        })
    }

    fn update_lock(&self, index: usize, locked: LockedStage) {
        let name = self.dag.id(index).to_string();
        {
            let mut lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            if lock.stages.get(&name) == Some(&locked) && self.lock_path.exists() {
                return;
            }
            lock.stages.insert(name, locked);
        }
        let due = {
            let mut written = self
                .lock_written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            written.1 = true;
            written
                .0
                .is_none_or(|last| last.elapsed() >= LOCK_WRITE_INTERVAL)
        };
        if due {
            // A failed write keeps the entries pending; the flush at the end of the run
            // retries it and reports the failure.
            if let Err(error) = self.flush_lock() {
                tracing::debug!("{error}; retrying at the end of the run");
            }
        }
    }

    /// Writes the lock file if entries changed since the last write. On failure the entries
    /// stay pending, so the next flush tries again.
    fn flush_lock(&self) -> Result<(), LockFileError> {
        let mut written = self
            .lock_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !written.1 {
            return Ok(());
        }
        let lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let saved = lock.save(&self.lock_path, self.store.root());
        *written = (Some(Instant::now()), saved.is_err());
        saved?;
        if let Err(error) = self.store.register_lock_file(&self.lock_path) {
            tracing::debug!("lock file not registered for gc: {error}");
        }
        Ok(())
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.fence
            .shown(&stage_log_path(&self.pipeline.path, self.dag.id(index)))
    }

    fn outputs(&self) -> Outputs<'_> {
        Outputs {
            pipeline: self.pipeline,
            fence: &self.fence,
            store: self.store,
            hash_cache: &self.hash_cache,
        }
    }

    /// One stage, on a worker thread: key, cache lookup, key lock, execution, ingestion.
    fn process(
        &self,
        index: usize,
        upstream: &BTreeMap<usize, Manifest>,
        forced: bool,
        observe: &(dyn Fn(&Event<'_>) + Sync),
    ) -> Finished {
        let stage_id = self.dag.id(index);
        let fail = |error: ExecError, key: Option<Digest>| {
            observe(&Event::Failed {
                stage: stage_id,
                error: &error,
            });
            Finished {
                status: StageStatus::Failed(error),
                key,
                manifest: None,
                locked: None,
            }
        };
        let computed = self
            .dag
            .hashable(self.pipeline, index, &self.hash_cache, &|i| {
                upstream.get(&i).cloned()
            });
        let hashable = match computed {
            Ok((hashable, _)) => hashable,
            Err(error) => return fail(error, None),
        };
        let key = hashable.key();
        let mut fault = None;
        if !forced {
            match self.try_cached(index, &hashable, &key, observe) {
                Cached::Done(finished) => return *finished,
                Cached::Miss(found) => fault = found,
            }
        }
        let reasons = match fault {
            Some(fault) => vec![fault],
            None => self.reasons(index, &hashable, forced),
        };
        let lock = match self.store.try_lock_key(&key) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                observe(&Event::Waiting { stage: stage_id });
                match self.store.lock_key(&key) {
                    Ok(lock) => lock,
                    Err(error) => return fail(error.into(), Some(key)),
                }
            }
            Err(error) => return fail(error.into(), Some(key)),
        };
        // Another run may have computed this key while we waited for its lock.
        if !forced {
            if let Cached::Done(finished) = self.try_cached(index, &hashable, &key, observe) {
                return *finished;
            }
        }
        observe(&Event::Started {
            stage: stage_id,
            reasons: &reasons,
        });
        let started = Instant::now();
        let result = self.execute(index, &hashable, &key, forced, observe);
        drop(lock);
        match result {
            Ok((manifest, locked)) => {
                let duration = started.elapsed();
                let previous = self.locked(index).map(|previous| previous.manifest);
                let outputs_unchanged = previous == Some(locked.manifest);
                observe(&Event::Finished {
                    stage: stage_id,
                    duration,
                    outputs_unchanged,
                });
                Finished {
                    status: StageStatus::Ran {
                        reasons,
                        duration,
                        outputs_unchanged,
                    },
                    key: Some(key),
                    manifest: Some(manifest),
                    locked: Some(locked),
                }
            }
            Err(error) => fail(error, Some(key)),
        }
    }

    /// Restores the cached outputs of `key` into the workspace. Every restored byte is checked
    /// against its blake3 on the way (`fetch_blob`), so a damaged store object becomes a miss
    /// with its reason (and is quarantined), never a stage "cached" with wrong bytes that its
    /// dependents would then read under a key claiming the right ones.
    fn try_cached(
        &self,
        index: usize,
        hashable: &StageHashable,
        key: &Digest,
        observe: &(dyn Fn(&Event<'_>) + Sync),
    ) -> Cached {
        if self.remote.is_some() && self.lookup(key).is_none() {
            self.pull_from_remote(key);
        }
        let Some(record) = self.store.get_action(key) else {
            return Cached::Miss(None);
        };
        let Some(manifest) = self.store.outputs_present(&record) else {
            return Cached::Miss(None);
        };
        let stage = &self.pipeline.stages[index];
        let previous = self.locked(index);
        let overwrite = Overwrite::Saved {
            previous: previous.as_ref(),
        };
        let restored = match materialize(&self.outputs(), stage, &manifest, overwrite) {
            Ok(restored) => restored,
            Err(ExecError::Cache(fault)) if fault.is_fault() => {
                tracing::debug!("stage `{}`: {fault}", stage.id);
                return Cached::Miss(Some(DirtyReason::StoreFault {
                    problem: fault.to_string(),
                }));
            }
            Err(error) => {
                observe(&Event::Failed {
                    stage: &stage.id,
                    error: &error,
                });
                return Cached::Done(Box::new(Finished {
                    status: StageStatus::Failed(error),
                    key: Some(*key),
                    manifest: None,
                    locked: None,
                }));
            }
        };
        observe(&Event::Cached {
            stage: &stage.id,
            restored: &restored,
        });
        let locked = self.locked_stage(index, hashable, key, &manifest, &record.metrics);
        Cached::Done(Box::new(Finished {
            status: StageStatus::Cached { restored },
            key: Some(*key),
            manifest: Some(manifest),
            locked: Some(locked),
        }))
    }

    fn locked_stage(
        &self,
        index: usize,
        hashable: &StageHashable,
        key: &Digest,
        manifest: &Manifest,
        metrics: &BTreeMap<String, f64>,
    ) -> LockedStage {
        let stage = &self.pipeline.stages[index];
        let outputs = mounts(self.pipeline, stage)
            .into_iter()
            .filter_map(|(path, inside)| {
                manifest
                    .content_digest_of(&inside)
                    .map(|digest| (path, digest.to_tagged()))
            })
            .collect();
        LockedStage {
            kind: hashable.kind,
            key: *key,
            key_scheme: hashable.scheme,
            implementation_version: hashable.implementation_version,
            settings_digest: settings_digest(&hashable.settings),
            settings: hashable.settings.clone(),
            inputs: hashable.external.clone(),
            upstream: hashable.upstream.clone(),
            environment: hashable.environment.clone(),
            outputs,
            manifest: manifest.digest(),
            metrics: metrics.clone(),
        }
    }

    /// Runs the stage into a temp dir, then commits: blobs, manifest, action record (last),
    /// workspace copy. Nothing is visible under the key until the record's rename.
    ///
    /// Before anything runs, the stage's outputs and log must pass the fence, and, unless
    /// `forced`, hold nothing the user would lose: a `command` stage deletes its outs before
    /// its command starts, and an hour of training must not end in a refused copy.
    fn execute(
        &self,
        index: usize,
        hashable: &StageHashable,
        key: &Digest,
        forced: bool,
        observe: &(dyn Fn(&Event<'_>) + Sync),
    ) -> Result<(Manifest, LockedStage), ExecError> {
        let stage = &self.pipeline.stages[index];
        let root = &self.pipeline.root;
        let stage_mounts = mounts(self.pipeline, stage);
        for (path, _) in &stage_mounts {
            self.fence.check(&stage.id, Path::new(path), Role::Output)?;
        }
        // An interrupted attempt at this very key leaves its scratch space behind, and its
        // outs are that attempt's partial output, not the user's work. Without this: 1. taper
        // is killed (`kill -9`, power cut) after the command wrote `first.txt`; 2. nothing was
        // recorded, so the rerun finds `first.txt` in no lock entry and no manifest; 3. it
        // refuses to overwrite it as "added outside taper", and only `--force` gets out.
        if !forced && !self.store.has_scratch_dir(key) {
            let previous = self.locked(index);
            unsaved(
                &self.outputs(),
                stage,
                &stage_mounts,
                &Manifest::default(),
                previous.as_ref(),
            )?;
        }
        let log_relative = stage_log_path(&self.pipeline.path, &stage.id);
        self.fence.check(&stage.id, &log_relative, Role::Log)?;
        let temp = self.store.temp_dir("run")?;
        let out_dir = temp.path().join("out");
        fs::create_dir_all(&out_dir).map_err(|source| ExecError::Io {
            action: "create",
            path: out_dir.clone(),
            source,
        })?;
        let scratch_dir = self.store.scratch_dir(key)?;
        let log_path = self.log_path(index);
        if let Some(parent) = log_path.parent() {
            fs::create_dir_all(parent).map_err(|source| ExecError::Io {
                action: "create",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let log_file = fs::File::create(&log_path).map_err(|source| ExecError::Io {
            action: "create",
            path: log_path.clone(),
            source,
        })?;
        let log_file = Mutex::new(log_file);
        let log = |line: &str| {
            let mut file = log_file.lock().unwrap_or_else(PoisonError::into_inner);
            // A log line that cannot be written must not fail the stage.
            let _ = writeln!(file, "{line}");
            observe(&Event::Log {
                stage: &stage.id,
                line,
            });
        };
        let inputs = self
            .dag
            .slots(index)
            .iter()
            .map(|(slot, producer)| {
                let dir = output_dir_of(self.pipeline, self.dag.id(*producer));
                (*slot, root.join(dir))
            })
            .collect();
        let job = StageJob {
            stage,
            key: *key,
            pipeline_root: root,
            inputs,
            out_dir: &out_dir,
            scratch_dir: &scratch_dir,
            store_root: self.store.root(),
            log: &log,
        };
        let started = Instant::now();
        let outcome: StageOutcome =
            self.executor
                .execute(&job)
                .map_err(|source| ExecError::StageFailed {
                    stage: stage.id.clone(),
                    log: log_path.clone(),
                    source,
                })?;
        let duration = started.elapsed();
        drop(log_file);

        let manifest =
            self.hash_cache
                .manifest_of(&out_dir)
                .map_err(|source| ExecError::HashInput {
                    stage: stage.id.clone(),
                    path: out_dir.clone(),
                    source,
                })?;
        let outputs = self.store.put_tree(&out_dir, &manifest, true)?;
        let log_digest = self
            .hash_cache
            .hash_file(&log_path)
            .ok()
            .map(|(digest, _)| digest)
            .filter(|digest| self.store.put_blob(&log_path, digest, false).is_ok());
        let record = ActionRecord {
            version: 1,
            key: *key,
            stage: stage.id.to_string(),
            fingerprint: hashable.clone(),
            outputs,
            metrics: outcome.metrics.clone(),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            finished_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(0),
            log: log_digest,
        };
        self.store.put_action(&record)?;
        self.push_to_remote(key);
        // Checked before the stage ran; what is there now is what was there then.
        materialize(&self.outputs(), stage, &manifest, Overwrite::Anything)?;
        self.store.remove_scratch_dir(key);
        let locked = self.locked_stage(index, hashable, key, &manifest, &outcome.metrics);
        Ok((manifest, locked))
    }
}
