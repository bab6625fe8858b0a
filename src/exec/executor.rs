//! How one stage is executed, behind a trait so the scheduler does not care where.
//!
//! [`LocalExecutor`] calls the kind's [`StageRunner`] in this process. The Slurm backend
//! (`slurm.rs`) runs each stale stage as a batch job of `taper run FILE STAGE` against a shared
//! store before the scheduler's pass; in that pass its [`Executor`] is called only for stages
//! whose job left no result, and reports the job. The scheduler, the store protocol and the lock
//! file stay as they are, because a job communicates only through the store (or `out_dir` and
//! its returned [`StageOutcome`] in this process).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::runner::{StageContext, StageError, StageOutcome, StageRunner};
use super::ExecError;
use crate::fingerprint::Digest;
use crate::model::{InputSlot, Stage, StageKind};

/// Finds the runner of a stage kind (`taper::stages::runner_for` in the binary).
pub type RunnerRegistry = fn(StageKind) -> Option<&'static dyn StageRunner>;

/// Everything needed to execute one stage somewhere.
pub struct StageJob<'a> {
    pub stage: &'a Stage,
    /// The stage key being computed (a remote backend names its job after it).
    pub key: Digest,
    pub pipeline_root: &'a Path,
    pub inputs: BTreeMap<InputSlot, PathBuf>,
    pub out_dir: &'a Path,
    pub scratch_dir: &'a Path,
    pub store_root: &'a Path,
    pub log: &'a (dyn Fn(&str) + Sync),
}

/// Runs one stage to completion (called from the scheduler's worker threads).
pub trait Executor: Send + Sync {
    fn execute(&self, job: &StageJob<'_>) -> Result<StageOutcome, StageError>;
}

/// Runs stages in this process with the registered runners.
pub struct LocalExecutor {
    registry: RunnerRegistry,
}

impl LocalExecutor {
    pub fn new(registry: RunnerRegistry) -> LocalExecutor {
        LocalExecutor { registry }
    }
}

impl Executor for LocalExecutor {
    fn execute(&self, job: &StageJob<'_>) -> Result<StageOutcome, StageError> {
        let kind = job.stage.kind();
        let runner = (self.registry)(kind).ok_or_else(|| {
            StageError::new(ExecError::NoRunner {
                stage: job.stage.id.clone(),
                kind: kind.to_string(),
            })
        })?;
        let context = StageContext {
            stage: job.stage,
            key: job.key,
            pipeline_root: job.pipeline_root,
            inputs: job.inputs.clone(),
            out_dir: job.out_dir,
            scratch_dir: job.scratch_dir,
            store_root: job.store_root,
            log: job.log,
        };
        runner.run(&context)
    }
}
