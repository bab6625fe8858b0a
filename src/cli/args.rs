//! Command-line arguments (clap derive). The `///` docs are the help text.
//!
//! To add a subcommand: add a variant to [`Command`] with its `Args` struct here, a file in
//! `commands/`, and one match arm in `cli::run`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::model::Override;

/// taper: declarative, cached, reproducible fine-tuning pipelines.
#[derive(Debug, Parser)]
#[command(name = "taper", version, about, propagate_version = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pipeline files and report every problem at once.
    Validate(ValidateArgs),
    /// Show a pipeline's stages and edges in topological order, grouped into levels that can
    /// run in parallel.
    Dag(DagArgs),
    /// Print the JSON Schema of pipeline files (for editors; see docs/spec.md).
    Schema,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Pipeline files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Override a setting before validation: `stage.key=value` or `params.name=value`.
    #[arg(short = 'S', long = "set", value_name = "STAGE.KEY=VALUE")]
    pub overrides: Vec<Override>,
}

#[derive(Debug, clap::Args)]
pub struct DagArgs {
    /// The pipeline file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DagFormatArg::Text)]
    pub format: DagFormatArg,
    /// Override a setting before validation: `stage.key=value` or `params.name=value`.
    #[arg(short = 'S', long = "set", value_name = "STAGE.KEY=VALUE")]
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DagFormatArg {
    /// Levels and edges as indented text.
    Text,
    /// A Mermaid flowchart (renders on GitHub and in many editors).
    Mermaid,
    /// Graphviz: `taper dag FILE --format dot | dot -Tsvg > dag.svg`.
    Dot,
}
