//! Where the default store is: `cache/` in the project root, found the same way from any
//! current directory.
//!
//! Before this, the default was `./cache` relative to the current directory, so
//! `cd pipelines && taper plan quickstart.yaml` looked into an empty `pipelines/cache/` and said
//! every stage would run (and a run recomputed everything into a second store). The project root
//! is now the nearest directory, starting at the pipeline file's own and going up, that holds
//! one of:
//!
//! - `.taper/` (an explicit marker a project can create to pin its root),
//! - `cache/` holding a taper store (its `taper-store-v1` marker, or the `CACHEDIR.TAG` of a
//!   store made before the marker),
//! - `.git` (a directory, or the file of a worktree or submodule): the repository root;
//!
//! and the pipeline file's directory when none is found. Commands without a pipeline file
//! (`taper cache …`) start from the current directory. `--store` and `TAPER_STORE` override
//! all of this (a relative path there is relative to the current directory, as given).

use std::fs;
use std::path::{Path, PathBuf};

use super::MARKER;
// One owner of the name: validation refuses outs over it (`model::validate`).
use crate::model::DEFAULT_STORE_DIR as DEFAULT_STORE;

/// The default store for a pipeline file (or, with `None`, for the current directory).
pub fn default_store_dir(pipeline_file: Option<&Path>) -> PathBuf {
    project_root_of(pipeline_file).join(DEFAULT_STORE)
}

/// The project root of `pipeline_file`, or of the current directory without one.
pub fn project_root_of(pipeline_file: Option<&Path>) -> PathBuf {
    let start = match pipeline_file {
        Some(file) => match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        },
        None => PathBuf::from("."),
    };
    project_root(&start)
}

/// The nearest directory at or above `start` that marks a project root (see the module docs),
/// as an absolute path; `start` itself when none does.
pub fn project_root(start: &Path) -> PathBuf {
    std::path::absolute(start)
        .ok()
        .and_then(|absolute| {
            absolute
                .ancestors()
                .find(|dir| is_project_root(dir))
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| start.to_path_buf())
}

fn is_project_root(dir: &Path) -> bool {
    let store = dir.join(DEFAULT_STORE);
    dir.join(".taper").is_dir()
        || fs::symlink_metadata(dir.join(".git")).is_ok()
        || store.join(MARKER).is_file()
        || fs::read_to_string(store.join("CACHEDIR.TAG"))
            .is_ok_and(|text| text.contains("created by taper"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_found_from_the_pipeline_file_not_the_current_directory() {
        let temp = tempfile::tempdir().expect("temp dir");
        let project = temp.path().join("project");
        fs::create_dir_all(project.join("pipelines/deep")).expect("mkdir");
        fs::create_dir_all(project.join(".git")).expect("mkdir");
        let found = default_store_dir(Some(&project.join("pipelines/deep/p.yaml")));
        assert_eq!(
            fs::canonicalize(found.parent().expect("parent")).expect("resolve"),
            fs::canonicalize(&project).expect("resolve")
        );
        assert!(found.ends_with("cache"), "{}", found.display());
    }

    #[test]
    fn an_existing_store_nearer_than_the_git_root_wins() {
        let temp = tempfile::tempdir().expect("temp dir");
        let project = temp.path().join("repo/sub");
        fs::create_dir_all(project.join("cache")).expect("mkdir");
        fs::create_dir_all(temp.path().join("repo/.git")).expect("mkdir");
        fs::write(project.join("cache").join(MARKER), "").expect("marker");
        fs::create_dir_all(project.join("pipelines")).expect("mkdir");
        let root = project_root(&project.join("pipelines"));
        assert_eq!(
            fs::canonicalize(root).expect("resolve"),
            fs::canonicalize(&project).expect("resolve")
        );
    }

    #[test]
    fn without_any_marker_the_pipeline_directory_is_the_root() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("plain");
        fs::create_dir_all(&dir).expect("mkdir");
        assert_eq!(project_root(&dir), dir);
    }
}
