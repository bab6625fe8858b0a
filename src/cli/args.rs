//! Command-line arguments (clap derive). The `///` docs are the help text.
//!
//! To add a subcommand: add a variant to [`Command`] with its `Args` struct here, a file in
//! `commands/`, and one match arm in `cli::run`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::model::stages::{ExplainBaseline, ExplainMethod, Precision};
use crate::model::Override;

/// taper: declarative, cached, reproducible fine-tuning pipelines.
#[derive(Debug, Parser)]
#[command(name = "taper", version, about, propagate_version = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How much taper says; the log level can also be set with `RUST_LOG` (which wins).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Say more: taper's debug messages and, for `run`, every stage's log lines.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Say less: errors only (no warnings; `run` prints no status lines).
    #[arg(short, long, global = true)]
    pub quiet: bool,
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
    /// Show which stages are cached and which will run, and why (old → new values).
    Plan(PlanArgs),
    /// Run the stages whose inputs changed, independent ones in parallel.
    Run(RunArgs),
    /// Inspect and maintain the content-addressed store.
    Cache(CacheArgs),
    /// Print metrics (`taper metrics out/test/metrics.json`, or a lock file or pipeline for
    /// every stage's headline metrics), or compare two of them (`taper metrics diff`).
    Metrics(MetricsArgs),
    /// Score texts with a deploy bundle, offline: one JSON line per input, each class with its
    /// score, best first.
    Predict(PredictArgs),
    /// Serve a deploy bundle over HTTP (TEI-style `POST /predict`, `/health`, `/info`,
    /// `/metrics`, `/openapi.json`) until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Show which words made a trained model predict what it did for one text (word
    /// attributions, as the `explain` stage computes them).
    Explain(ExplainArgs),
    /// Write one self-contained HTML page with the training curves of several runs overlaid
    /// (loss and validation accuracy per step, with axes, ticks and units).
    Plots(PlotsArgs),
    /// Experiments: every `taper run` is recorded; tabulate them (`show`), compare two
    /// (`diff`), write one's settings back into its pipeline file (`apply`), forget one
    /// (`remove`).
    Exp(ExpArgs),
    /// Shared spec workflows: document one (`show`), or start one (`new`).
    Spec(SpecArgs),
    /// Print a shell completion script (e.g. `taper completions bash > ~/.local/share/bash-completion/completions/taper`).
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
pub struct PlotsArgs {
    /// Pipeline files (each `train` stage's curves; a sweep's variants each), `train` stage
    /// output directories, or `train_log.jsonl` files.
    #[arg(value_name = "TARGET", required = true)]
    pub targets: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(short, long, value_name = "FILE", default_value = "plots.html")]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExpArgs {
    #[command(subcommand)]
    pub command: ExpCommand,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum ExpCommand {
    /// A table of experiments, one row per run (per variant for a sweep), oldest first:
    /// params (overrides and swept values) and metrics as columns.
    Show {
        /// Only the experiments of this pipeline file.
        #[arg(value_name = "PIPELINE")]
        pipeline: Option<PathBuf>,
        /// Order rows by this column (`test.accuracy`, `lr`, `started`, `id`).
        #[arg(long, value_name = "COLUMN")]
        sort: Option<String>,
        /// With `--sort`: largest first.
        #[arg(long, requires = "sort")]
        desc: bool,
        /// Keep rows where `COLUMN OP VALUE` holds; OP is one of `>`, `>=`, `<`, `<=`, `=`,
        /// `!=` (numbers compare as numbers). Repeatable: all must hold.
        #[arg(long, value_name = "COLUMN OP VALUE")]
        filter: Vec<String>,
        /// Only these param and metric columns (comma-separated): names, or prefixes ending
        /// in `.` or `*` (`--columns lr,seed,test.`). `--json` rows keep every value.
        #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
        columns: Vec<String>,
        /// Only the param and metric columns whose values differ between the rows shown.
        #[arg(long)]
        only_changed: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExpFormat::Table, conflicts_with_all = ["json", "csv", "md"])]
        format: ExpFormat,
        /// Same as `--format json`: `{"schema": 1, "columns": …, "rows": […]}`.
        #[arg(long)]
        json: bool,
        /// Same as `--format csv`.
        #[arg(long)]
        csv: bool,
        /// Same as `--format md` (a Markdown table).
        #[arg(long)]
        md: bool,
    },
    /// What differs between two experiments (or variant rows): params, stage settings and
    /// inputs, metrics.
    Diff {
        /// An id (or unique prefix) from `taper exp show`.
        #[arg(value_name = "A")]
        a: String,
        /// An id (or unique prefix) from `taper exp show`.
        #[arg(value_name = "B")]
        b: String,
    },
    /// Write an experiment's `-S` overrides (and, for a sweep row, its swept values) into its
    /// pipeline file, changing only those values: comments and layout stay.
    Apply {
        /// An id (or unique prefix) from `taper exp show`.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Forget experiments: their records go, and with them their hold on the store (`cache gc`).
    Remove {
        /// Ids (or unique prefixes) from `taper exp show`.
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExpFormat {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// Comma-separated values with a header row.
    Csv,
    /// A Markdown table.
    Md,
}

#[derive(Debug, clap::Args)]
pub struct SpecArgs {
    #[command(subcommand)]
    pub command: SpecCommand,
}

#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Document a spec's params (type, default, allowed values, description).
    Show {
        /// The spec file (or a published spec: `--url`, or `--pip` and `--member`, with
        /// `--blake3`).
        #[arg(value_name = "FILE", required_unless_present_any = ["url", "pip"], conflicts_with_all = ["url", "pip"])]
        file: Option<PathBuf>,
        /// A spec published at a URL (fetched once into the store, as a `use:` would).
        #[arg(long, requires = "blake3", conflicts_with = "pip")]
        url: Option<String>,
        /// A spec inside a wheel: the requirement (`team-specs==1.2.0`).
        #[arg(long, requires_all = ["member", "blake3"])]
        pip: Option<String>,
        /// The spec's path inside the `--pip` wheel.
        #[arg(long, requires = "pip")]
        member: Option<String>,
        /// The blake3 pin of a published spec's bytes.
        #[arg(long)]
        blake3: Option<String>,
        /// The store published specs are downloaded into [default: `cache/` in the project
        /// root of the current directory]
        #[arg(long, env = "TAPER_STORE", value_name = "DIR")]
        store: Option<PathBuf>,
        /// Markdown, for a team's docs.
        #[arg(long)]
        md: bool,
    },
    /// Write a commented starter spec (refuses to overwrite a file).
    New {
        /// Where to write it.
        #[arg(value_name = "FILE", default_value = "specs/my-spec.yaml")]
        file: PathBuf,
    },
}

impl Command {
    /// Whether the command may run a model (train, score, explain), and so wants the process
    /// tuned for tensor work (`ml::tune_runtime`).
    pub fn runs_models(&self) -> bool {
        match self {
            Command::Run(_) | Command::Predict(_) | Command::Serve(_) | Command::Explain(_) => true,
            Command::Validate(_)
            | Command::Dag(_)
            | Command::Schema
            | Command::Plan(_)
            | Command::Cache(_)
            | Command::Metrics(_)
            | Command::Exp(_)
            | Command::Plots(_)
            | Command::Spec(_)
            | Command::Completions { .. } => false,
        }
    }
}

/// Where the store lives: `--store`, else `TAPER_STORE`, else `cache/` in the project root
/// (see `cache::locate`).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The content-addressed store directory [default: `cache/` in the project root: the
    /// nearest directory above the pipeline file with `.taper/`, a store in `cache/`, or `.git`]
    #[arg(long, env = "TAPER_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Never write to the store: restore cached results, fail stages that are not cached (and
    /// published specs not downloaded yet).
    #[arg(long)]
    pub read_only_store: bool,
}

/// The shared cache: `--remote`, else `TAPER_REMOTE`, else `remote:` in the project's
/// `.taper/config.yaml` (see `cache::remote`).
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// A remote cache: a directory (NFS) or `s3://BUCKET/PREFIX` (credentials and endpoint
    /// from the standard AWS environment variables or profile) [default: `remote:` in the
    /// project's `.taper/config.yaml`]
    #[arg(long, env = "TAPER_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
}

/// Which stages `plan` and `run` consider, and setting overrides.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectionArgs {
    /// The pipeline file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Bring only these stages (and the stages they need) up to date.
    #[arg(value_name = "STAGE")]
    pub stages: Vec<String>,
    /// Also every stage downstream of the given ones.
    #[arg(long)]
    pub downstream: bool,
    /// Run this stage even if it is cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Override a setting before validation: `stage.key=value` or `params.name=value`.
    #[arg(short = 'S', long = "set", value_name = "STAGE.KEY=VALUE")]
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// One JSON document on stdout: `{"schema": 1, "pipeline", "stages": [{"stage", "key",
    /// "decision", "reasons"|"restore"|"error"}], "sweeps"}` (docs/spec.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Stages run at the same time, at least 1 (default: the number of CPU cores).
    #[arg(short = 'j', long, env = "TAPER_JOBS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Print the plan and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per event on stdout, newline-delimited (`started`, `finished`,
    /// `cached`, `failed`, …, `log` with `-v`), ending with a `summary` naming the recorded
    /// experiment (docs/spec.md). Diagnostics still go to stderr.
    #[arg(long)]
    pub json: bool,
    /// Where stale stages run: here, or as Slurm batch jobs (one per stage, chained by
    /// dependencies; resources from `slurm:` in `.taper/config.yaml`; needs a store every
    /// node shares).
    #[arg(long, value_enum, default_value_t = ExecutorArg::Local)]
    pub executor: ExecutorArg,
    /// With a remote, stages the local store lacks are fetched from it before they would run
    /// (read-through), and each stage's new result is pushed to it (write-through).
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorArg {
    /// In this process.
    Local,
    /// `sbatch` jobs on a Slurm cluster.
    Slurm,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CacheCommand {
    /// Rehash every object; move corrupt ones to `quarantine-v1/` (exit 1 if any).
    Verify,
    /// Delete what no registered lock file and no recent run reaches.
    Gc {
        /// How many recent runs keep their results.
        #[arg(long, default_value_t = 10, value_name = "N")]
        keep_runs: usize,
        /// Do not keep the results of recorded experiments (`taper exp show`); the records
        /// stay, as history. Without it every experiment's results survive until it is
        /// removed with `taper exp remove`.
        #[arg(long)]
        ignore_experiments: bool,
    },
    /// List cached stage results, newest first.
    Ls {
        /// One JSON document: `{"schema": 1, "results": [{"key", "stage", "kind", "files",
        /// "bytes", "duration_ms", "finished_at", "metrics"}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Disk usage per bucket.
    Du,
    /// Upload every cached result the remote lacks (objects first, then action records), then
    /// every experiment record it lacks.
    Push {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Download every result and experiment record on the remote that the local store lacks,
    /// checking each object (a local experiment record is never replaced).
    Pull {
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Pipeline files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Override a setting before validation: `stage.key=value` or `params.name=value`.
    #[arg(short = 'S', long = "set", value_name = "STAGE.KEY=VALUE")]
    pub overrides: Vec<Override>,
    /// One JSON object per file on stdout (`file`, `ok`, `pipeline`, `stages`, `errors` with
    /// code, message, help and labelled file/line/column), instead of rendered diagnostics.
    #[arg(long)]
    pub json: bool,
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

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MetricsArgs {
    #[command(subcommand)]
    pub command: Option<MetricsCommand>,
    /// A metrics file (JSON, or YAML for `.yaml`/`.yml`; nested names are flattened to
    /// `a.b.c`), a lock file (`x.lock`) or a pipeline file (its lock file is read).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// `{"schema": 1, "metrics": {"name": value}}` on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum MetricsCommand {
    /// Compare metrics: `NEW` against `OLD`, each a metrics file, a lock file or a pipeline
    /// file; `OLD` defaults to the pipeline's lock file as committed in git (`HEAD`). Shows
    /// only what changed unless `--all`.
    Diff {
        /// The new metrics.
        #[arg(value_name = "NEW")]
        new: PathBuf,
        /// The old metrics.
        #[arg(value_name = "OLD")]
        old: Option<PathBuf>,
        /// Also the metrics that did not change.
        #[arg(long)]
        all: bool,
        /// `{"schema": 1, "metrics": [{"name", "old", "new", "change"}]}` on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct PredictArgs {
    /// A bundle directory written by a `deploy` stage (e.g. `out/quickstart/deploy`).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Texts to score (or use `--input`).
    #[arg(
        value_name = "TEXT",
        required_unless_present = "input",
        conflicts_with = "input"
    )]
    pub texts: Vec<String>,
    /// A JSON-lines file: one `{"text": "..."}` object or JSON string per line.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Print logits instead of probabilities.
    #[arg(long)]
    pub raw_scores: bool,
    /// Cut inputs longer than the model's maximum length instead of refusing them.
    #[arg(long)]
    pub truncate: bool,
    /// Padded tokens per model call: inputs are sorted by length and packed under this budget.
    #[arg(long, env = "TAPER_MAX_BATCH_TOKENS", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,
    /// Arithmetic of the linear layers: `f32` or `int8` (CPU). Default: the bundle's (its
    /// deploy stage's `precision`).
    #[arg(long, env = "TAPER_PRECISION", value_name = "PRECISION", value_parser = precision)]
    pub precision: Option<Precision>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// A bundle directory written by a `deploy` stage (e.g. `out/quickstart/deploy`).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// The address to listen on.
    #[arg(long, env = "TAPER_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// The port to listen on (0: any free port, printed at start).
    #[arg(long, env = "TAPER_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Padded tokens per model call, and what a batching round collects before it runs.
    #[arg(long, env = "TAPER_MAX_BATCH_TOKENS", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,
    /// Requests admitted at once (queued or being scored); more are answered 429.
    #[arg(long, env = "TAPER_MAX_CONCURRENT", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: u32,
    /// Inputs in one request; more are answered 422.
    #[arg(long, env = "TAPER_MAX_CLIENT_BATCH_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_client_batch_size: u32,
    /// How long a batching round waits for more requests, in milliseconds. 0: a round takes
    /// what is queued when the model becomes free, so a lone request waits for nothing and
    /// requests that arrive during a round form the next one.
    #[arg(long, env = "TAPER_MAX_WAIT_MS", default_value_t = 0)]
    pub max_wait_ms: u64,
    /// Seconds a request may take from admission to answer; longer are answered 504.
    #[arg(long, env = "TAPER_REQUEST_TIMEOUT", value_name = "SECONDS", default_value = "30", value_parser = seconds)]
    pub request_timeout: std::time::Duration,
    /// Arithmetic of the linear layers: `f32` or `int8` (CPU). Default: the bundle's (its
    /// deploy stage's `precision`).
    #[arg(long, env = "TAPER_PRECISION", value_name = "PRECISION", value_parser = precision)]
    pub precision: Option<Precision>,
    /// Require `Authorization: Bearer <KEY>` on every route but `/health`.
    #[arg(
        long,
        env = "TAPER_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
}

/// A non-negative number of seconds (`0.5`, `30`).
fn precision(text: &str) -> Result<Precision, String> {
    match text {
        "f32" => Ok(Precision::F32),
        "int8" => Ok(Precision::Int8),
        _ => Err(format!("`{text}` is not a precision: use `f32` or `int8`")),
    }
}

fn seconds(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|value| std::time::Duration::try_from_secs_f64(value).ok())
        .ok_or_else(|| format!("`{text}` is not a non-negative number of seconds"))
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The model: a deploy bundle (e.g. `out/quickstart/deploy`), a `train` stage's output
    /// directory or its `model/` directory, or `PIPELINE.yaml:STAGE` naming a `train` or
    /// `deploy` stage (e.g. `quickstart.yaml:train`), read from its output directory.
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,
    /// The text to explain.
    #[arg(value_name = "TEXT")]
    pub text: String,
    /// Attribution method.
    #[arg(long, default_value = "integrated-gradients", value_parser = kebab_value::<ExplainMethod>(&["integrated-gradients", "gradient-times-input", "occlusion"]))]
    pub method: ExplainMethod,
    /// Integrated-gradients interpolation steps.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub steps: u16,
    /// Integrated-gradients baseline at word positions.
    #[arg(long, default_value = "pad", value_parser = kebab_value::<ExplainBaseline>(&["pad", "mask", "zero"]))]
    pub baseline: ExplainBaseline,
    /// Print JSON instead of bars.
    #[arg(long)]
    pub json: bool,
}

/// Parses one of `names` into the pipeline-file enum `T` it spells, so the command line and
/// pipeline files share one spelling.
fn kebab_value<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names)
        .try_map(|name| serde_json::from_value::<T>(serde_json::Value::String(name)))
}
