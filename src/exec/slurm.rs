//! `taper run --executor slurm`: every stale stage becomes one Slurm batch job that runs
//! `taper run FILE STAGE` against the shared store, chained to the jobs of its stale upstream
//! stages with `--dependency=afterok:…` and `--kill-on-invalid-dep=yes`, so Slurm itself orders
//! the stages, runs independent ones on any node, and cancels the dependents of a failed one.
//! Cached stages are never submitted.
//!
//! A job communicates only through the shared store (its `taper` stores the stage's result
//! under its key, as a local run would) and its log. When every job has ended, the scheduler
//! runs once more on the submitting machine with [`SlurmExecutor`]: finished stages are
//! restored from the store and written into the lock file; a stage whose job failed is reported
//! through the [`Executor`] interface with its job id, final state and log, and its dependents
//! are skipped.
//!
//! The jobs of a run are recorded in `.taper/slurm/<pipeline stem>/jobs.json` (job logs beside
//! it), so a `taper run` that was killed while its jobs were queued or running reattaches to
//! them when started again instead of submitting them twice.
//!
//! Job states come from `squeue --json` (finished jobs stay listed for `MinJobAge`), then
//! `sacct` when the cluster keeps accounting; a job neither knows is over, and its stage's
//! presence in the store says whether it succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::engine::{Decision, StagePlan};
use super::executor::{Executor, StageJob};
use super::inputs::Dag;
use super::runner::{StageError, StageOutcome};
use crate::model::{Pipeline, StageId};

/// How often job states are polled.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SlurmError {
    #[error("cannot run `{program}`")]
    #[diagnostic(
        code(taper::slurm::command),
        help("`--executor slurm` needs Slurm's client commands (sbatch, squeue) on PATH and a reachable controller (SLURM_CONF)")
    )]
    Command {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` failed: {stderr}")]
    #[diagnostic(
        code(taper::slurm::refused),
        help("check the Slurm settings in `.taper/config.yaml` (partition, time, cpus, mem, gpus) and that the controller is up (`sinfo`)")
    )]
    Refused {
        program: &'static str,
        stderr: String,
    },
    #[error("stage `{stage}` failed in Slurm job {job_id} ({state})")]
    #[diagnostic(
        code(taper::slurm::job_failed),
        help("the job's log is `{}`; fix the cause and run again: finished stages stay cached", log.display())
    )]
    JobFailed {
        stage: StageId,
        job_id: u64,
        state: String,
        log: PathBuf,
    },
    #[error("stage `{stage}` was not submitted to Slurm")]
    #[diagnostic(
        code(taper::slurm::not_submitted),
        help("its key could not be planned before the run; run `taper plan` to see why")
    )]
    NotSubmitted { stage: StageId },
    #[error("cannot {action} `{}`", path.display())]
    #[diagnostic(
        code(taper::slurm::io),
        help("check permissions in the project's `.taper/` directory")
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the Slurm settings in `{}`: {reason}", path.display())]
    #[diagnostic(
        code(taper::slurm::config),
        help("`slurm:` in `.taper/config.yaml` holds `defaults`, `kinds` and `stages`, each with partition, time, cpus, mem, gpus")
    )]
    Config { path: PathBuf, reason: String },
}

/// Resources of one job; unset fields fall back to the stage kind's, then the defaults, then
/// the cluster's own defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResources {
    pub partition: Option<String>,
    /// Slurm's time format (`30`, `4:00:00`, `1-00:00:00`).
    pub time: Option<String>,
    pub cpus: Option<u32>,
    /// Slurm's memory format (`4G`, `500M`).
    pub mem: Option<String>,
    pub gpus: Option<u32>,
}

impl JobResources {
    /// `self`, with its unset fields taken from `fallback`.
    fn or(&self, fallback: &JobResources) -> JobResources {
        JobResources {
            partition: self
                .partition
                .clone()
                .or_else(|| fallback.partition.clone()),
            time: self.time.clone().or_else(|| fallback.time.clone()),
            cpus: self.cpus.or(fallback.cpus),
            mem: self.mem.clone().or_else(|| fallback.mem.clone()),
            gpus: self.gpus.or(fallback.gpus),
        }
    }

    fn sbatch_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        args.extend(self.partition.iter().map(|p| format!("--partition={p}")));
        args.extend(self.time.iter().map(|t| format!("--time={t}")));
        args.extend(self.cpus.iter().map(|c| format!("--cpus-per-task={c}")));
        args.extend(self.mem.iter().map(|m| format!("--mem={m}")));
        args.extend(self.gpus.iter().map(|g| format!("--gpus={g}")));
        args
    }
}

/// `slurm:` in `.taper/config.yaml`: resources per stage (by name), per stage kind (by its
/// pipeline-file spelling, `train`), and defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    #[serde(default)]
    pub defaults: JobResources,
    #[serde(default)]
    pub kinds: BTreeMap<String, JobResources>,
    #[serde(default)]
    pub stages: BTreeMap<String, JobResources>,
}

impl SlurmConfig {
    /// Reads `slurm:` from `<project_root>/.taper/config.yaml` (empty when absent).
    pub fn load(project_root: &Path) -> Result<SlurmConfig, SlurmError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            slurm: SlurmConfig,
        }
        let path = project_root.join(".taper/config.yaml");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SlurmConfig::default())
            }
            Err(source) => {
                return Err(SlurmError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let file: File = serde_yaml::from_str(&text).map_err(|error| SlurmError::Config {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        Ok(file.slurm)
    }

    fn resources(&self, stage: &str, kind: &str) -> JobResources {
        let default = JobResources::default();
        self.stages
            .get(stage)
            .unwrap_or(&default)
            .or(self.kinds.get(kind).unwrap_or(&default))
            .or(&self.defaults)
    }
}

/// One submitted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: u64,
    /// The stage key when it was known at submission (a stage below a stale one learns its
    /// key only when its job runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub log: PathBuf,
}

/// The jobs of one pipeline's run, by stage: the reattachment record.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JobTable {
    jobs: BTreeMap<String, Submission>,
}

/// What the submitting side knows about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Queued, running or finishing.
    Active(String),
    /// Over, with Slurm's final state (`COMPLETED`, `FAILED`, `CANCELLED`, …).
    Ended(String),
    /// Neither `squeue` nor `sacct` knows it any more.
    Gone,
}

/// Submits and follows the jobs of one `taper run --executor slurm`.
pub struct SlurmRun<'a> {
    pub pipeline: &'a Pipeline,
    /// Arguments every job's `taper run` gets after the pipeline file and stage: the store,
    /// `-S` overrides.
    pub job_args: Vec<String>,
    /// The `taper` binary the jobs run (this one: nodes share its path on a cluster install).
    pub taper: PathBuf,
    /// `.taper/slurm/<pipeline stem>/`: the job table and job logs.
    pub state_dir: PathBuf,
    pub config: SlurmConfig,
}

impl SlurmRun<'_> {
    fn table_path(&self) -> PathBuf {
        self.state_dir.join("jobs.json")
    }

    fn load_table(&self) -> JobTable {
        fs::read(self.table_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_table(&self, table: &JobTable) -> Result<(), SlurmError> {
        let path = self.table_path();
        let io = |action| {
            let path = path.clone();
            move |source| SlurmError::Io {
                action,
                path,
                source,
            }
        };
        let bytes = serde_json::to_vec_pretty(table).expect("a job table always serializes");
        let temp = path.with_extension("json.tmp");
        fs::write(&temp, bytes).map_err(io("write"))?;
        fs::rename(&temp, &path).map_err(io("replace"))
    }

    /// Submits a job for every stale stage in `plans` (in dependency order, chained to its
    /// stale upstream stages' jobs), reusing jobs from an earlier, interrupted run that are
    /// still queued or running. `observe` gets one line per submission or reattachment.
    pub fn submit(
        &self,
        plans: &[StagePlan],
        observe: &dyn Fn(&str),
    ) -> Result<BTreeMap<StageId, Submission>, SlurmError> {
        fs::create_dir_all(&self.state_dir).map_err(|source| SlurmError::Io {
            action: "create",
            path: self.state_dir.clone(),
            source,
        })?;
        let dag = Dag::new(self.pipeline);
        let stale: BTreeSet<&str> = plans
            .iter()
            .filter(|plan| matches!(plan.decision, Decision::WillRun(_)))
            .map(|plan| plan.stage.as_str())
            .collect();
        let keys: BTreeMap<&str, String> = plans
            .iter()
            .filter_map(|plan| Some((plan.stage.as_str(), plan.key?.to_hex())))
            .collect();
        let mut table = self.load_table();
        let active: BTreeMap<u64, JobState> = job_states(table.jobs.values().map(|s| s.job_id))?;
        let mut submitted: BTreeMap<StageId, Submission> = BTreeMap::new();
        for &index in dag.order() {
            let stage = &self.pipeline.stages[index];
            let name = stage.id.as_str();
            if !stale.contains(name) {
                continue;
            }
            // Reattach: the same stage (same key, when known) still queued or running.
            if let Some(previous) = table.jobs.get(name) {
                let same_key = previous.key.is_none() || previous.key.as_ref() == keys.get(name);
                if same_key && matches!(active.get(&previous.job_id), Some(JobState::Active(_))) {
                    observe(&format!("attached {name} (Slurm job {})", previous.job_id));
                    submitted.insert(stage.id.clone(), previous.clone());
                    continue;
                }
            }
            let after: Vec<String> = dag
                .upstream(index)
                .iter()
                .filter_map(|&up| submitted.get(dag.id(up)))
                .map(|submission| submission.job_id.to_string())
                .collect();
            let submission = self.sbatch(stage, keys.get(name), &after)?;
            observe(&format!(
                "submitted {name} (Slurm job {})",
                submission.job_id
            ));
            table.jobs.insert(name.to_owned(), submission.clone());
            // Saved after each job: a kill right after `sbatch` must not lose the job.
            self.save_table(&table)?;
            submitted.insert(stage.id.clone(), submission);
        }
        Ok(submitted)
    }

    fn sbatch(
        &self,
        stage: &crate::model::Stage,
        key: Option<&String>,
        after: &[String],
    ) -> Result<Submission, SlurmError> {
        let name = stage.id.as_str();
        let kind = stage.kind().to_string();
        // Named after the key (what the job computes), or the stage while the key is unknown.
        let job_name = match key {
            Some(key) => format!("taper-{}", &key[..16]),
            None => format!("taper-{}-{name}", self.pipeline.name),
        };
        let log_pattern = self.state_dir.join(format!("{name}-%j.log"));
        let mut command = Command::new("sbatch");
        command
            .arg("--parsable")
            .arg(format!("--job-name={job_name}"))
            .arg(format!("--output={}", log_pattern.display()))
            .arg(format!(
                "--chdir={}",
                self.pipeline
                    .path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .display()
            ))
            .args(self.config.resources(name, &kind).sbatch_args());
        if !after.is_empty() {
            command
                .arg(format!("--dependency=afterok:{}", after.join(":")))
                .arg("--kill-on-invalid-dep=yes");
        }
        // `--wrap`: sbatch takes a positional argument for a script file, not a program.
        let mut job = vec![
            self.taper.display().to_string(),
            "run".to_owned(),
            self.pipeline.path.display().to_string(),
            name.to_owned(),
            "-j".to_owned(),
            "1".to_owned(),
        ];
        job.extend(self.job_args.iter().cloned());
        let line: Vec<String> = job.iter().map(|word| shell_quote(word)).collect();
        command.arg(format!("--wrap=exec {}", line.join(" ")));
        let output = command.output().map_err(|source| SlurmError::Command {
            program: "sbatch",
            source,
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        // `--parsable` prints `<id>` or `<id>;<cluster>`.
        let job_id = stdout
            .trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .filter(|_| output.status.success())
            .ok_or_else(|| SlurmError::Refused {
                program: "sbatch",
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })?;
        let log = self.state_dir.join(format!("{name}-{job_id}.log"));
        Ok(Submission {
            job_id,
            key: key.cloned(),
            log,
        })
    }

    /// Waits until no job in `submitted` is queued or running; `observe` gets a line when a job
    /// starts and when it ends. Returns each stage's final state.
    pub fn follow(
        &self,
        submitted: &BTreeMap<StageId, Submission>,
        observe: &dyn Fn(&str),
    ) -> Result<BTreeMap<StageId, JobState>, SlurmError> {
        let mut seen: BTreeMap<u64, JobState> = BTreeMap::new();
        loop {
            let states = job_states(submitted.values().map(|s| s.job_id))?;
            let mut active = false;
            for (stage, submission) in submitted {
                let state = states
                    .get(&submission.job_id)
                    .cloned()
                    .unwrap_or(JobState::Gone);
                active |= matches!(state, JobState::Active(_));
                if seen.get(&submission.job_id) != Some(&state) {
                    match &state {
                        JobState::Active(name) if name == "RUNNING" => {
                            observe(&format!(
                                "running  {stage} (Slurm job {})",
                                submission.job_id
                            ));
                        }
                        JobState::Ended(name) => {
                            observe(&format!(
                                "{:<8} {stage} (Slurm job {})",
                                name.to_lowercase(),
                                submission.job_id
                            ));
                        }
                        _ => {}
                    }
                    seen.insert(submission.job_id, state);
                }
            }
            if !active {
                return Ok(submitted
                    .iter()
                    .map(|(stage, submission)| {
                        let state = seen.remove(&submission.job_id).unwrap_or(JobState::Gone);
                        (stage.clone(), state)
                    })
                    .collect());
            }
            std::thread::sleep(POLL);
        }
    }
}

/// `word` as one POSIX shell word.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The states of `ids` by `squeue --json` (every state, so recently finished jobs too), then
/// `sacct` for the jobs `squeue` no longer lists; a job neither knows is absent.
fn job_states(ids: impl Iterator<Item = u64>) -> Result<BTreeMap<u64, JobState>, SlurmError> {
    let ids: Vec<String> = ids.map(|id| id.to_string()).collect();
    let mut states = BTreeMap::new();
    if ids.is_empty() {
        return Ok(states);
    }
    let output = Command::new("squeue")
        .args(["--json", "--states=all"])
        .arg(format!("--jobs={}", ids.join(",")))
        .output()
        .map_err(|source| SlurmError::Command {
            program: "squeue",
            source,
        })?;
    // squeue fails outright when none of the ids is known any more: not an error.
    if output.status.success() {
        let listing: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|error| SlurmError::Refused {
                program: "squeue",
                stderr: format!("unreadable JSON: {error}"),
            })?;
        for job in listing["jobs"].as_array().into_iter().flatten() {
            let Some(id) = job["job_id"].as_u64() else {
                continue;
            };
            // A string until Slurm 23.02, a list of flags after.
            let state = match &job["job_state"] {
                serde_json::Value::Array(flags) => flags.first().and_then(|f| f.as_str()),
                value => value.as_str(),
            }
            .unwrap_or("UNKNOWN")
            .to_owned();
            states.insert(id, classify(state));
        }
    }
    for id in &ids {
        let Ok(id_number) = id.parse::<u64>() else {
            continue;
        };
        if states.contains_key(&id_number) {
            continue;
        }
        if let Some(state) = sacct_state(id) {
            states.insert(id_number, classify(state));
        }
    }
    Ok(states)
}

/// A job's state from accounting, when the cluster keeps it.
fn sacct_state(id: &str) -> Option<String> {
    let output = Command::new("sacct")
        .args(["-n", "-X", "-P", "-o", "State", "-j", id])
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `CANCELLED by 0` → `CANCELLED`.
    text.lines()
        .next()
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

fn classify(state: String) -> JobState {
    match state.as_str() {
        "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
        | "RESIZING" | "STAGE_OUT" | "SIGNALING" | "REQUEUE_HOLD" | "REQUEUE_FED" => {
            JobState::Active(state)
        }
        _ => JobState::Ended(state),
    }
}

/// The executor of the last pass of a Slurm run: every stage Slurm computed is cached by then
/// and restored without calling it; a stage it is called for did not get a result from its
/// job, which it reports with the job id, state and log.
pub struct SlurmExecutor {
    pub outcomes: BTreeMap<StageId, (Submission, JobState)>,
}

impl Executor for SlurmExecutor {
    fn execute(&self, job: &StageJob<'_>) -> Result<StageOutcome, StageError> {
        let stage = job.stage.id.clone();
        let error = match self.outcomes.get(&stage) {
            Some((submission, state)) => SlurmError::JobFailed {
                stage,
                job_id: submission.job_id,
                state: match state {
                    JobState::Active(name) | JobState::Ended(name) => name.clone(),
                    // Ended and forgotten without storing a result.
                    JobState::Gone => "ended without a result".to_owned(),
                },
                log: submission.log.clone(),
            },
            None => SlurmError::NotSubmitted { stage },
        };
        Err(StageError::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_setting_wins_over_its_kind_then_the_defaults() {
        let config: SlurmConfig = serde_yaml::from_str(
            "defaults: {partition: cpu, time: '1:00:00', mem: 4G}\nkinds: {train: {partition: gpu, gpus: 1}}\nstages: {finetune: {time: '24:00:00'}}\n",
        )
        .expect("config");
        assert_eq!(
            config.resources("finetune", "train").sbatch_args(),
            ["--partition=gpu", "--time=24:00:00", "--mem=4G", "--gpus=1"]
        );
        assert_eq!(
            config.resources("prepare", "prepare-data").sbatch_args(),
            ["--partition=cpu", "--time=1:00:00", "--mem=4G"]
        );
    }

    #[test]
    fn job_words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn squeue_states_are_active_until_they_end() {
        assert_eq!(
            classify("PENDING".into()),
            JobState::Active("PENDING".into())
        );
        assert_eq!(classify("FAILED".into()), JobState::Ended("FAILED".into()));
    }
}
