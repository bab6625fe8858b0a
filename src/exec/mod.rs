//! Runs the pipeline graph incrementally and in parallel, and says why each stage ran.
//!
//! Contract: [`Engine::plan`] decides, for every selected stage, `cached` or `will run` with
//! its [`DirtyReason`]s, without running anything. [`Engine::run`] executes the stale stages:
//! a stage starts once every upstream stage has finished (at most `jobs` at a time); its key is
//! computed from the *content* of its upstream outputs at that moment, so a stage that reruns
//! but produces identical bytes leaves its dependents cached (early cutoff). A failing stage
//! stops only its dependents; independent stages finish. Each stage's key is locked in the store
//! while it runs, so two `taper run`s on one store never compute the same key twice: the second
//! waits, then finds the result cached. Outputs become visible (action record, lock-file entry,
//! workspace copy) only after they are complete in the store, so a killed run leaves no partial
//! entry and the next run resumes after the last finished stage.
//!
//! Edges: a stage depends on the stages its typed `inputs` name and on the stage whose outputs
//! hold one of its `command` deps (a declared out of a `command` stage, or
//! `out/<file stem>/<stage>/…` of another kind). The engine derives them from the same rule it
//! uses to hash a dep's content, so the order in which stages run and the content their keys
//! include can never disagree.
//!
//! Where outputs are materialized (copies, never links, so editing one cannot corrupt a blob
//! shared with other keys or projects): a `command` stage's declared `outs` at their paths; any
//! other kind's output directory at `out/<file stem>/<stage>/`, one output root per pipeline
//! file ([`crate::model::output_root`]). Logs go to `out/<file stem>/<stage>.log` and, as a
//! blob, into the stage's action record. Every write and delete there passes the workspace
//! fence (`workspace.rs`): inside the pipeline directory, never through a symlink, never over
//! the store, the pipeline file, its lock file or another stage's outputs, never over a file
//! the user edited unless the stage is forced.

mod engine;
mod executor;
pub mod experiment;
mod inputs;
pub mod interrupt;
pub mod report;
pub mod runner;
pub mod slurm;
mod workspace;

use std::path::PathBuf;

pub use engine::{Decision, Engine, Event, RunOptions, RunSummary, StagePlan, StageStatus};
pub use executor::{Executor, LocalExecutor, RunnerRegistry, StageJob};
pub use inputs::Dag;
pub use workspace::{expect_regular_file, special_kind, Fence, Role, WorkspaceError};

use crate::cache::{CacheError, LockFileError};
use crate::fingerprint::DirtyReason;
use crate::model::StageId;

/// Why the engine could not plan or run a stage.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExecError {
    #[error("dependency `{path}` of stage `{stage}` does not exist")]
    #[diagnostic(
        code(taper::exec::missing_dependency),
        help("create `{path}`, fix the path in `deps` (it is relative to the pipeline file), or add the stage that produces it")
    )]
    MissingDependency { stage: StageId, path: String },

    #[error("stage `{stage}` depends on `{path}`, but stage `{producer}` did not produce it")]
    #[diagnostic(
        code(taper::exec::dependency_not_produced),
        help("list `{path}` in the `outs` of `{producer}`, or fix the dep of `{stage}`")
    )]
    DependencyNotProduced {
        stage: StageId,
        producer: StageId,
        path: String,
    },

    #[error("cannot hash `{path}` for stage `{stage}`")]
    #[diagnostic(code(taper::exec::hash_input), help("check that the file is readable"))]
    HashInput {
        stage: StageId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no runner is registered for stage kind `{kind}` (stage `{stage}`)")]
    #[diagnostic(
        code(taper::exec::no_runner),
        help("this build of taper cannot run `{kind}` stages yet")
    )]
    NoRunner { stage: StageId, kind: String },

    #[error("stage `{stage}` failed (log: `{}`)", log.display())]
    #[diagnostic(
        code(taper::exec::stage_failed),
        help("read the log, fix the cause, and run again: finished stages stay cached")
    )]
    StageFailed {
        stage: StageId,
        log: PathBuf,
        #[source]
        #[diagnostic_source]
        source: crate::exec::runner::StageError,
    },

    #[error("cannot {action} `{}`", path.display())]
    #[diagnostic(
        code(taper::exec::io),
        help("check permissions and free space in the pipeline directory")
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unknown stage `{stage}`")]
    #[diagnostic(
        code(taper::exec::unknown_stage),
        help("stages of this pipeline: {known}")
    )]
    UnknownStage { stage: String, known: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Cache(#[from] CacheError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Workspace(#[from] WorkspaceError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    LockFile(#[from] LockFileError),
}

/// Short text of the reasons, for one line of `plan` output.
pub fn describe_reasons(reasons: &[DirtyReason]) -> String {
    reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
