//! The interface between the scheduler and the code that runs one stage.
//!
//! Contract: a runner reads only what its [`StageContext`] gives it (the stage's resolved
//! settings, the materialized artifacts of its inputs, the pipeline root for external paths)
//! and writes its whole output under `ctx.out_dir`. It never touches the store's index or the
//! lock file: the scheduler hashes `out_dir` into the store after the runner returns `Ok`, so a
//! failed or killed stage leaves nothing visible. Because a runner needs nothing but this
//! context, a later cluster backend can run it in a separate `taper` process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::fingerprint::Digest;
use crate::model::{InputSlot, Stage};

/// Everything one stage run may read.
pub struct StageContext<'a> {
    pub stage: &'a Stage,
    /// The stage key: equal keys give equal outputs, so a runner may record it (a deploy
    /// bundle names the key it came from); names of the stage or pipeline are not in the key,
    /// so they must not reach the outputs.
    pub key: Digest,
    /// The directory of the pipeline file; relative paths in settings resolve against it.
    pub pipeline_root: &'a Path,
    /// Materialized upstream artifacts, one read-only directory per input slot.
    pub inputs: BTreeMap<InputSlot, PathBuf>,
    /// Empty directory the runner writes its outputs into.
    pub out_dir: &'a Path,
    /// Survives an interrupted attempt of the same stage key (resumable checkpoints); removed
    /// after the stage's outputs are committed.
    pub scratch_dir: &'a Path,
    /// Root of the store, for stage kinds that keep their own download caches there
    /// (`downloads-v1/`).
    pub store_root: &'a Path,
    /// Where progress lines go (a log file, mirrored to the terminal when interactive).
    pub log: &'a (dyn Fn(&str) + Sync),
}

/// What a successful run reports besides its files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageOutcome {
    /// Headline metrics, recorded in the lock file (e.g. `accuracy`).
    pub metrics: BTreeMap<String, f64>,
}

/// Runs one kind of stage.
pub trait StageRunner: Send + Sync {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError>;
}

/// A stage's failure: whatever typed diagnostic its runner raised, kept whole (code, help,
/// labels) so the CLI can render it, behind one type the scheduler can hold.
#[derive(Debug)]
pub struct StageError(Box<dyn miette::Diagnostic + Send + Sync + 'static>);

impl StageError {
    pub fn new(error: impl miette::Diagnostic + Send + Sync + 'static) -> Self {
        StageError(Box::new(error))
    }

    pub fn diagnostic(&self) -> &(dyn miette::Diagnostic + Send + Sync + 'static) {
        self.0.as_ref()
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for StageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl miette::Diagnostic for StageError {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.0.code()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.0.help()
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.0.labels()
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.0.source_code()
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        self.0.related()
    }
    fn diagnostic_source(&self) -> Option<&dyn miette::Diagnostic> {
        self.0.diagnostic_source()
    }
}
