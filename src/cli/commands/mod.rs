//! One file per subcommand.

pub mod cache;
pub mod plan;
pub mod run;

use std::io::Write;
use std::path::PathBuf;

use miette::IntoDiagnostic;

use crate::cache::Store;
use crate::exec::RunOptions;
use crate::model::{Override, Pipeline};

/// Where the store lives: `--store`, else `TAPER_STORE`, else `cache/` in the current
/// directory.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The content-addressed store directory.
    #[arg(long, env = "TAPER_STORE", default_value = "cache", global = true)]
    pub store: PathBuf,
}

impl StoreArgs {
    pub fn open(&self) -> miette::Result<Store> {
        Ok(Store::open(&self.store)?)
    }
}

/// What selects and overrides stages (shared by `plan` and `run`).
#[derive(Debug, Clone, clap::Args)]
pub struct SelectionArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Bring only these stages (and what they need) up to date.
    pub stages: Vec<String>,
    /// Also every stage downstream of the given ones.
    #[arg(long)]
    pub downstream: bool,
    /// Run this stage even if it is cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Override a setting: `-S stage.key=value` (repeatable; the value is YAML).
    #[arg(short = 'S', value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<Override>,
}

impl SelectionArgs {
    pub fn load(&self) -> miette::Result<Pipeline> {
        Ok(crate::model::load_file(&self.file, &self.set)?)
    }

    pub fn options(&self, jobs: usize) -> RunOptions {
        RunOptions {
            targets: self.stages.clone(),
            downstream: self.downstream,
            force: self.force.clone(),
            jobs,
        }
    }
}

/// Data goes to stdout.
pub fn print_out(text: &str) -> miette::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).into_diagnostic()?;
    stdout.flush().into_diagnostic()
}

/// Status goes to stderr (a closed stderr is not worth failing a run for).
pub fn print_status(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
