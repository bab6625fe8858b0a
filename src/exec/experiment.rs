//! The experiment a finished run records (`cache::ExperimentRecord`): what it ran, with which
//! overrides, at which git commit, and what came out.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{RunSummary, StageStatus};
use crate::cache::locate::project_root_of;
use crate::cache::{ExperimentRecord, ExperimentStage, ExperimentVariant, EXPERIMENT_SCHEMA};
use crate::model::{Override, Pipeline};

/// When and how long a run ran.
#[derive(Debug, Clone, Copy)]
pub struct RunTiming {
    pub started: SystemTime,
    pub wall: Duration,
}

/// The record of `summary`, a run of `pipeline` with `overrides`.
pub fn experiment_of(
    pipeline: &Pipeline,
    overrides: &[Override],
    summary: &RunSummary,
    timing: RunTiming,
) -> ExperimentRecord {
    let root = project_root_of(Some(&pipeline.path));
    let stages = summary
        .stages
        .iter()
        .filter_map(|(id, status)| {
            let stage = pipeline.stage(id)?;
            let locked = summary.locked.get(id);
            let (name, duration) = match status {
                StageStatus::Cached { .. } => ("cached", Duration::ZERO),
                StageStatus::Ran { duration, .. } => ("ran", *duration),
                StageStatus::Failed(_) => ("failed", Duration::ZERO),
                StageStatus::Skipped { .. } => ("skipped", Duration::ZERO),
            };
            Some((
                id.to_string(),
                ExperimentStage {
                    kind: stage.kind(),
                    status: name.to_owned(),
                    key: locked.map(|locked| locked.key),
                    duration_ms: millis(duration),
                    metrics: locked
                        .map(|locked| locked.metrics.clone())
                        .unwrap_or_default(),
                },
            ))
        })
        .collect();
    // A `use:` without `matrix:` has one variant with no params: not a row of its own.
    let variants = pipeline
        .specs
        .iter()
        .flat_map(|used| {
            used.variants
                .iter()
                .filter(|variant| !variant.params.is_empty())
                .map(|variant| ExperimentVariant {
                    entry: used.entry.clone(),
                    label: variant.label.clone(),
                    params: variant.params.clone(),
                    stages: variant.stages.clone(),
                })
        })
        .collect();
    ExperimentRecord {
        schema: EXPERIMENT_SCHEMA,
        id: String::new(),
        pipeline: relative_to(&pipeline.path, &root),
        name: pipeline.name.clone(),
        started_at_ms: millis(
            timing
                .started
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        ),
        wall_ms: millis(timing.wall),
        commit: git_commit(&root),
        overrides: overrides.iter().map(ToString::to_string).collect(),
        stages,
        variants,
    }
    .with_id()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `path` relative to `root`, `/`-separated, as experiments name pipelines; `path` as given
/// when it is not under `root`.
pub fn relative_to(path: &Path, root: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let relative = absolute
        .strip_prefix(root)
        .map_or(absolute.as_path(), |relative| relative);
    relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The commit `HEAD` points at in the git repository holding `dir`, read from the files
/// (`.git/HEAD`, loose refs, `packed-refs`; worktrees and submodules, whose `.git` is a file,
/// included), so recording it costs no `git` process and works without git installed.
/// `None` outside a repository, or when anything is unreadable (an unborn branch, say).
pub fn git_commit(dir: &Path) -> Option<String> {
    let absolute = std::path::absolute(dir).ok()?;
    let dot_git = absolute
        .ancestors()
        .map(|ancestor| ancestor.join(".git"))
        .find(|candidate| fs::symlink_metadata(candidate).is_ok())?;
    let git_dir = if dot_git.is_file() {
        let text = fs::read_to_string(&dot_git).ok()?;
        let target = PathBuf::from(text.strip_prefix("gitdir:")?.trim());
        dot_git.parent()?.join(target)
    } else {
        dot_git
    };
    // A worktree's own dir holds `HEAD`; its refs live in the main repository's.
    let common = fs::read_to_string(git_dir.join("commondir"))
        .map(|text| git_dir.join(text.trim()))
        .unwrap_or_else(|_| git_dir.clone());
    let head = fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return is_object_name(head).then(|| head.to_owned());
    };
    for dir in [&git_dir, &common] {
        if let Ok(text) = fs::read_to_string(dir.join(reference)) {
            let commit = text.trim();
            return is_object_name(commit).then(|| commit.to_owned());
        }
    }
    let packed = fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (commit, name) = line.split_once(' ')?;
        (name == reference && is_object_name(commit)).then(|| commit.to_owned())
    })
}

/// A SHA-1 or SHA-256 object name in hex.
fn is_object_name(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn no_repository_is_no_commit() {
        let temp = tempfile::tempdir().expect("temp dir");
        assert_eq!(git_commit(temp.path()), None);
    }

    #[test]
    fn a_branch_resolves_through_loose_then_packed_refs() {
        let temp = tempfile::tempdir().expect("temp dir");
        let git = temp.path().join(".git");
        fs::create_dir_all(git.join("refs/heads")).expect("mkdir");
        fs::write(git.join("HEAD"), "ref: refs/heads/main\n").expect("write");
        fs::write(
            git.join("packed-refs"),
            format!("# pack-refs\n{COMMIT} refs/heads/main\n"),
        )
        .expect("write");
        fs::create_dir_all(temp.path().join("sub")).expect("mkdir");
        assert_eq!(
            git_commit(&temp.path().join("sub")),
            Some(COMMIT.to_owned())
        );
        let loose = COMMIT.replace('0', "f");
        fs::write(git.join("refs/heads/main"), format!("{loose}\n")).expect("write");
        assert_eq!(git_commit(temp.path()), Some(loose));
    }

    #[test]
    fn a_worktree_reads_its_head_and_the_main_refs() {
        let temp = tempfile::tempdir().expect("temp dir");
        let main = temp.path().join("main/.git");
        let own = main.join("worktrees/wt");
        fs::create_dir_all(main.join("refs/heads")).expect("mkdir");
        fs::create_dir_all(&own).expect("mkdir");
        fs::write(main.join("refs/heads/topic"), COMMIT).expect("write");
        fs::write(own.join("HEAD"), "ref: refs/heads/topic\n").expect("write");
        fs::write(own.join("commondir"), "../..\n").expect("write");
        let worktree = temp.path().join("wt");
        fs::create_dir_all(&worktree).expect("mkdir");
        fs::write(
            worktree.join(".git"),
            format!("gitdir: {}\n", own.display()),
        )
        .expect("write");
        assert_eq!(git_commit(&worktree), Some(COMMIT.to_owned()));
        fs::write(own.join("HEAD"), "not a commit\n").expect("write");
        assert_eq!(git_commit(&worktree), None);
    }
}
