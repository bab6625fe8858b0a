//! `taper run FILE [STAGE...] [--downstream] [--force STAGE] [-S stage.key=value] [-j N]
//! [--dry-run]`: status lines on stderr as stages finish; each failure rendered with its log
//! path and last lines; exit 1 when any stage failed or the lock file could not be written,
//! 128 + signal when stopped by SIGINT, SIGTERM or SIGHUP (see `cli::signals`).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use crate::cache::locate::project_root_of;
use crate::cache::Store;
use crate::cli::args::{ExecutorArg, OutputArgs, RunArgs};
use crate::cli::json;
use crate::cli::printer::Printer;
use crate::cli::progress::RunDisplay;
use crate::cli::ExitStatus;
use crate::exec::experiment::{experiment_of, RunTiming};
use crate::exec::interrupt::{signal_name, STAGE_PROCESSES};
use crate::exec::slurm::{JobState, SlurmConfig, SlurmExecutor, SlurmRun, Submission};
use crate::exec::{
    report, Engine, Event, ExecError, Executor, LocalExecutor, RunOptions, StageStatus,
};
use crate::model::{Pipeline, StageId};

pub fn run(args: &RunArgs, output: OutputArgs, printer: &Printer) -> ExitStatus {
    let (pipeline, store) = match super::load_with_store(&args.selection, &args.store, printer) {
        Ok(loaded) => loaded,
        Err(status) => return status,
    };
    let remote = match super::open_remote(&args.remote, Some(&args.selection.file), printer) {
        Ok(remote) => remote,
        Err(status) => return status,
    };
    let local = LocalExecutor::new(crate::stages::runner_for);
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    );
    let options = RunOptions {
        targets: args.selection.stages.clone(),
        downstream: args.selection.downstream,
        force: args.selection.force.clone(),
        jobs,
    };
    let slurm = if args.executor == ExecutorArg::Slurm && !args.dry_run {
        match run_on_slurm(args, &pipeline, &store, &local, &options, output, printer) {
            Ok(outcomes) => Some(SlurmExecutor { outcomes }),
            Err(status) => return status,
        }
    } else {
        None
    };
    let executor: &dyn Executor = match &slurm {
        Some(slurm) => slurm,
        None => &local,
    };
    let engine = match Engine::new(&pipeline, &store, executor) {
        Ok(engine) => match &remote {
            Some(remote) => engine.with_remote(remote),
            None => engine,
        },
        Err(error) => {
            printer.diagnostic(error);
            return ExitStatus::Failure;
        }
    };
    if args.dry_run {
        return match engine.plan(&options) {
            Ok(plans) => {
                printer.data(&if args.json {
                    json::plan(&pipeline.name, &plans, &pipeline.specs)
                } else {
                    report::render_plan(&pipeline.name, &plans)
                });
                ExitStatus::Success
            }
            Err(error) => {
                printer.diagnostic(error);
                ExitStatus::Failure
            }
        };
    }
    if let Err(error) = crate::cli::signals::install() {
        // Without the handler a signal still stops taper, only less cleanly: not worth
        // refusing to run.
        tracing::warn!("cannot handle SIGTERM, SIGINT and SIGHUP: {error}");
    }
    let display = RunDisplay::new(printer, output);
    let started = (SystemTime::now(), Instant::now());
    let observe = |event: &Event<'_>| {
        if args.json {
            if let Some(line) = json::event(event, output.verbose) {
                printer.data(&line);
            }
        } else {
            display.event(event);
        }
    };
    let summary = match engine.run(&options, &observe) {
        Ok(summary) => summary,
        Err(error) => {
            printer.diagnostic(error);
            return ExitStatus::Failure;
        }
    };
    let timing = RunTiming {
        started: started.0,
        wall: started.1.elapsed(),
    };
    let experiment = experiment_of(&pipeline, &args.selection.overrides, &summary, timing);
    // A side channel: the run's results are stored and locked whether or not it is recorded.
    if let Err(error) = store.record_experiment(&experiment) {
        tracing::warn!("experiment not recorded: {error}");
    }
    if args.json {
        printer.data(&json::summary(&summary, &experiment));
    } else if !output.quiet {
        printer.status(&report::render_summary(&summary));
    }
    let interrupted = STAGE_PROCESSES.interrupted();
    let mut status = ExitStatus::Success;
    for (_, stage_status) in summary.stages {
        if let StageStatus::Failed(error) = stage_status {
            status = ExitStatus::Failure;
            // With `-v` the log was already mirrored line by line; after a signal, the
            // log's end shows only that the command was stopped.
            let log = match &error {
                ExecError::StageFailed { log, .. } if !output.verbose && interrupted.is_none() => {
                    Some(log.clone())
                }
                _ => None,
            };
            printer.diagnostic(error);
            if let Some(log) = log {
                match report::log_tail(&log) {
                    Ok(lines) => printer.status(&report::render_log_tail(&log, &lines)),
                    Err(error) => tracing::warn!("cannot read `{}`: {error}", log.display()),
                }
            }
        }
    }
    if let Some(error) = summary.lock_error {
        printer.diagnostic(error);
        status = ExitStatus::Failure;
    }
    if let Some(signal) = interrupted {
        printer.status(&format!(
            "{}: run stopped; finished stages are cached, run again to continue",
            signal_name(signal)
        ));
        return ExitStatus::Interrupted(signal);
    }
    status
}

/// The Slurm part of `--executor slurm`: plans, submits a job per stale stage (reattaching to
/// the jobs of an interrupted run), and waits for them; the caller's engine pass then restores
/// what they computed. Runs before the signal handler is installed, so Ctrl-C or SIGTERM stop
/// only this process: its jobs go on, and the next run reattaches to them.
fn run_on_slurm(
    args: &RunArgs,
    pipeline: &Pipeline,
    store: &Store,
    local: &LocalExecutor,
    options: &RunOptions,
    output: OutputArgs,
    printer: &Printer,
) -> Result<BTreeMap<StageId, (Submission, JobState)>, ExitStatus> {
    let failure = |error: Box<dyn miette::Diagnostic + Send + Sync>| {
        printer.status(&format!("{:?}", miette::Report::new_boxed(error)));
        ExitStatus::Failure
    };
    let plans = Engine::new(pipeline, store, local)
        .and_then(|engine| engine.plan(options))
        .map_err(|error| failure(Box::new(error)))?;
    let project_root = project_root_of(Some(&args.selection.file));
    let config = SlurmConfig::load(&project_root).map_err(|error| failure(Box::new(error)))?;
    let taper = std::env::current_exe().map_err(|source| {
        failure(Box::new(ExecError::Io {
            action: "find the taper binary",
            path: "/proc/self/exe".into(),
            source,
        }))
    })?;
    let mut job_args = vec!["--store".to_owned(), store.root().display().to_string()];
    // Jobs read and write through the same remote (credentials travel in the environment
    // sbatch exports, never on the command line).
    if let Some(remote) = &args.remote.remote {
        job_args.extend(["--remote".to_owned(), remote.clone()]);
    }
    for setting in &args.selection.overrides {
        job_args.extend(["-S".to_owned(), setting.to_string()]);
    }
    let stem = pipeline.path.file_stem().map_or_else(
        || "pipeline".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    let run = SlurmRun {
        pipeline,
        job_args,
        taper,
        state_dir: project_root.join(".taper/slurm").join(stem),
        config,
    };
    let observe = |line: &str| {
        if !output.quiet {
            printer.status(line);
        }
    };
    let submitted = run
        .submit(&plans, &observe)
        .map_err(|error| failure(Box::new(error)))?;
    let states = run
        .follow(&submitted, &observe)
        .map_err(|error| failure(Box::new(error)))?;
    Ok(submitted
        .into_iter()
        .filter_map(|(stage, submission)| {
            let state = states.get(&stage)?.clone();
            Some((stage, (submission, state)))
        })
        .collect())
}
