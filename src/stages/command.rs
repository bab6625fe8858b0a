//! `kind: command`: runs `sh -c <run>` in the pipeline directory.
//!
//! Contract: every dep must exist before the command starts (the scheduler hashes them into
//! the key, and reports a missing one as `taper::exec::missing_dependency`); the declared outs
//! are removed first, so an out the command forgot to write is reported as missing instead of a
//! stale file from an earlier run being recorded, and removed again when the stage fails, so a
//! partial out is never mistaken for the user's work; after a zero exit, each declared out is
//! copied into `ctx.out_dir` at its relative path, which the scheduler then hashes into the
//! store. stdout and stderr go, line by line, to the stage log.
//!
//! The removal passes the workspace [`Fence`] (the scheduler checks the full one, with the
//! pipeline file, lock file and other stages' outputs, before calling this runner; here the
//! store and the path itself are checked again, as defence in depth): never through a
//! symlinked directory, never the store, never a FIFO. The copy refuses FIFOs, sockets and
//! devices, naming them: `fs::copy` of a FIFO waits for a writer that never comes.
//!
//! The command runs in a process group of its own (`exec::interrupt`): taper forwards SIGTERM,
//! SIGINT and SIGHUP to it, and whatever it leaves running is killed when it exits or taper
//! dies. Its environment is taper's, plus `env:`, plus the `pass_env:` variables, whose values
//! are read at spawn time and never written anywhere.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use crate::data::metrics::{numeric_metrics, parse_document};
use crate::exec::interrupt::{signal_name, STAGE_PROCESSES};
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::exec::{special_kind, Fence, Role, WorkspaceError};
use crate::model::{Command, StageId, StageSettings};

/// Runs `command` stages.
pub struct CommandRunner;

/// Why a `command` stage failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CommandError {
    #[error("cannot start `sh` for stage `{stage}`")]
    #[diagnostic(
        code(taper::stages::command::spawn),
        help("taper runs commands with `sh -c`; check that `sh` is on `PATH`")
    )]
    Spawn {
        stage: StageId,
        #[source]
        source: io::Error,
    },
    #[error("command of stage `{stage}` exited with {status}: `{run}`")]
    #[diagnostic(
        code(taper::stages::command::exit_status),
        help(
            "the command's output is in the stage log; fix the command or its inputs and run again"
        )
    )]
    Failed {
        stage: StageId,
        run: String,
        status: String,
    },
    #[error("stage `{stage}` declares out `{}`, but its command did not create it", path.display())]
    #[diagnostic(
        code(taper::stages::command::missing_out),
        help("make the command write `{}`, or remove it from `outs`", path.display())
    )]
    MissingOut { stage: StageId, path: PathBuf },
    #[error("cannot {action} `{}` for stage `{stage}`", path.display())]
    #[diagnostic(
        code(taper::stages::command::io),
        help("check permissions and free space in the pipeline directory")
    )]
    Io {
        stage: StageId,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stage `{stage}` declares out `{}`, which holds the {kind} `{}`", out.display(), path.display())]
    #[diagnostic(
        code(taper::stages::command::special_file),
        help("outs hold regular files and directories only (copying a {kind} could block forever); make the command write a regular file there")
    )]
    SpecialFile {
        stage: StageId,
        out: PathBuf,
        path: PathBuf,
        kind: &'static str,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("stage `{stage}` passes `{name}` from the environment, but `{name}` is not set")]
    #[diagnostic(
        code(taper::stages::command::missing_pass_env),
        help("export `{name}` before `taper run` (its value is passed to the command, never stored), or remove it from `pass_env`")
    )]
    MissingPassEnv { stage: StageId, name: String },
    #[error("stage `{stage}` was interrupted by {signal}")]
    #[diagnostic(
        code(taper::stages::command::interrupted),
        help("nothing of this run of the stage was recorded; run again to run it")
    )]
    Interrupted { stage: StageId, signal: String },
    #[error("stage `{stage}` is not a `command` stage")]
    #[diagnostic(
        code(taper::stages::command::wrong_kind),
        help("this is a bug in taper's runner registry")
    )]
    WrongKind { stage: StageId },
}

impl StageRunner for CommandRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::Command(command) = &ctx.stage.settings else {
            return Err(StageError::new(CommandError::WrongKind {
                stage: ctx.stage.id.clone(),
            }));
        };
        run_command(ctx, command).map_err(StageError::new)?;
        Ok(StageOutcome {
            metrics: read_metrics(ctx, command),
        })
    }
}

/// The numbers of the stage's `metrics:` files, flattened to dotted names (merged, in the
/// order listed). A file that does not parse is a side channel failing: logged, and the stage
/// still succeeds, since its outputs are complete.
fn read_metrics(ctx: &StageContext<'_>, command: &Command) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    for path in &command.metrics {
        let source = ctx.out_dir.join(path);
        let parsed = fs::read_to_string(&source)
            .map_err(|error| error.to_string())
            .and_then(|text| parse_document(path, &text));
        match parsed {
            Ok(document) => metrics.extend(numeric_metrics(&document)),
            Err(reason) => {
                let line = format!("metrics file `{}` not read: {reason}", path.display());
                tracing::warn!("stage `{}`: {line}", ctx.stage.id);
                (ctx.log)(&line);
            }
        }
    }
    metrics
}

fn run_command(ctx: &StageContext<'_>, command: &Command) -> Result<(), CommandError> {
    let stage = &ctx.stage.id;
    let passed = passed_env(stage, command)?;
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CommandError::Io {
            stage: stage.clone(),
            action,
            path,
            source,
        }
    };
    let fence = Fence::new(ctx.pipeline_root, ctx.store_root)?;
    for out in &command.outs {
        fence.remove(stage, out, Role::Output)?;
        let path = ctx.pipeline_root.join(out);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
    }
    (ctx.log)(&format!("$ {}", command.run));
    let interrupted = |signal| CommandError::Interrupted {
        stage: stage.clone(),
        signal: signal_name(signal),
    };
    let mut running = STAGE_PROCESSES
        .spawn(
            Process::new("sh")
                .arg("-c")
                .arg(&command.run)
                .current_dir(ctx.pipeline_root)
                .envs(&command.env)
                .envs(passed)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .map_err(|source| match STAGE_PROCESSES.interrupted() {
            Some(signal) => interrupted(signal),
            None => CommandError::Spawn {
                stage: stage.clone(),
                source,
            },
        })?;
    let stdout = running.child.stdout.take();
    let stderr = running.child.stderr.take();
    std::thread::scope(|scope| {
        if let Some(stdout) = stdout {
            scope.spawn(|| forward_lines(stdout, ctx.log));
        }
        if let Some(stderr) = stderr {
            scope.spawn(|| forward_lines(stderr, ctx.log));
        }
    });
    let status = running
        .wait()
        .map_err(io_error("wait for the command in", ctx.pipeline_root))?;
    let copy_outs = || {
        // Many programs exit 0 on SIGTERM with their work cut short: an interrupted command's
        // outputs are never recorded, whatever its status.
        if let Some(signal) = STAGE_PROCESSES.interrupted() {
            return Err(interrupted(signal));
        }
        if !status.success() {
            return Err(CommandError::Failed {
                stage: stage.clone(),
                run: command.run.clone(),
                status: status.to_string(),
            });
        }
        for out in &command.outs {
            let source = ctx.pipeline_root.join(out);
            if !source.exists() {
                return Err(CommandError::MissingOut {
                    stage: stage.clone(),
                    path: out.clone(),
                });
            }
            let destination = ctx.out_dir.join(out);
            match copy_tree(&source, &destination) {
                Ok(None) => {}
                Ok(Some((path, kind))) => {
                    return Err(CommandError::SpecialFile {
                        stage: stage.clone(),
                        out: out.clone(),
                        path,
                        kind,
                    })
                }
                Err(error) => return Err(io_error("copy out", &source)(error)),
            }
        }
        Ok(())
    };
    let copied = copy_outs();
    if copied.is_err() {
        // The outs were removed before the command started, so what lies there now is this
        // failed attempt's partial output (or a FIFO it made). Left in place, it would be
        // refused as user content on the next run (`taper::exec::workspace::modified_output`).
        for out in &command.outs {
            if let Err(error) = fence.remove(stage, out, Role::Output) {
                (ctx.log)(&format!("partial out not removed: {error}"));
            }
        }
    }
    copied
}

/// The values of `pass_env`, read from taper's environment now, before anything is touched. A
/// missing variable is an error rather than an empty value: an empty token usually fails much
/// later, with an authentication error that does not name the variable.
fn passed_env(stage: &StageId, command: &Command) -> Result<Vec<(String, OsString)>, CommandError> {
    command
        .pass_env
        .iter()
        .map(|name| {
            std::env::var_os(name)
                .map(|value| (name.clone(), value))
                .ok_or_else(|| CommandError::MissingPassEnv {
                    stage: stage.clone(),
                    name: name.clone(),
                })
        })
        .collect()
}

fn forward_lines(stream: impl Read, log: &(dyn Fn(&str) + Sync)) {
    for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
        log(String::from_utf8_lossy(&line).trim_end_matches('\r'));
    }
}

/// Copies `source` (symlinks followed: the bytes the command made are what it declared) to
/// `destination`; stops at the first FIFO, socket or device and returns it with its kind.
fn copy_tree(source: &Path, destination: &Path) -> io::Result<Option<(PathBuf, &'static str)>> {
    if let Some(parent) = destination.parent() {
        fs::create_dir_all(parent)?;
    }
    let metadata = fs::metadata(source)?;
    if let Some(kind) = special_kind(&metadata) {
        return Ok(Some((source.to_path_buf(), kind)));
    }
    if metadata.is_dir() {
        fs::create_dir_all(destination)?;
        let mut entries = fs::read_dir(source)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        // Name order, so the file a refusal names is the same on every run.
        entries.sort();
        for name in entries {
            let special = copy_tree(&source.join(&name), &destination.join(&name))?;
            if special.is_some() {
                return Ok(special);
            }
        }
        Ok(None)
    } else {
        fs::copy(source, destination).map(|_| None)
    }
}
