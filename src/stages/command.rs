//! `kind: command`: runs `sh -c <run>` in the pipeline directory.
//!
//! Contract: every dep must exist before the command starts (the scheduler hashes them into
//! the key, and reports a missing one as `taper::exec::missing_dependency`); the declared outs
//! are removed first, so an out the command forgot to write is reported as missing instead of a
//! stale file from an earlier run being recorded; after a zero exit, each declared out is
//! copied into `ctx.out_dir` at its relative path, which the scheduler then hashes into the
//! store. stdout and stderr go, line by line, to the stage log.
//!
//! The command runs in a process group of its own (`exec::interrupt`): taper forwards SIGTERM,
//! SIGINT and SIGHUP to it, and whatever it leaves running is killed when it exits or taper
//! dies. Its environment is taper's, plus `env:`, plus the `pass_env:` variables, whose values
//! are read at spawn time and never written anywhere.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use crate::exec::interrupt::{signal_name, STAGE_PROCESSES};
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
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
        Ok(StageOutcome::default())
    }
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
    for out in &command.outs {
        let path = ctx.pipeline_root.join(out);
        remove_path(&path).map_err(io_error("remove the previous", &path))?;
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
        copy_tree(&source, &ctx.out_dir.join(out)).map_err(io_error("copy out", &source))?;
    }
    Ok(())
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

fn remove_path(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn copy_tree(source: &Path, destination: &Path) -> io::Result<()> {
    if let Some(parent) = destination.parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::metadata(source)?.is_dir() {
        fs::create_dir_all(destination)?;
        for entry in fs::read_dir(source)? {
            let entry = entry?;
            copy_tree(&entry.path(), &destination.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(source, destination).map(|_| ())
    }
}
