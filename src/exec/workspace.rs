//! Materialized outputs: the copies users open (`out/<stage>/`, a command's declared outs).
//!
//! Copies, never links: a hard link to a blob would let `echo x >> out/train/log.txt` rewrite
//! the blob for every key and project sharing it, and a read-only symlink breaks tools that
//! rewrite files in place. Copying costs disk; correctness of the store is worth more.

use std::fs;
use std::io;
use std::path::Path;

use super::inputs::{normalize, output_dir_of};
use super::ExecError;
use crate::cache::{ObjectStore, Store};
use crate::fingerprint::{HashCache, Manifest};
use crate::model::{Stage, StageSettings};

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ExecError + use<'a> {
    move |source| ExecError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Workspace paths (relative to the root) where `stage`'s outputs appear, each with the path
/// of its content inside the output manifest.
pub fn mounts(stage: &Stage) -> Vec<(String, String)> {
    match &stage.settings {
        StageSettings::Command(command) => command
            .outs
            .iter()
            .map(|out| {
                let path = normalize(out);
                (path.clone(), path)
            })
            .collect(),
        _ => vec![(output_dir_of(&stage.id), String::new())],
    }
}

/// Mounts whose workspace content differs from `manifest` (missing, edited, stale).
pub fn stale_mounts(
    root: &Path,
    stage: &Stage,
    manifest: &Manifest,
    hash_cache: &HashCache,
) -> Vec<String> {
    mounts(stage)
        .into_iter()
        .filter(|(path, inside)| {
            let expected = manifest.content_digest_of(inside);
            let actual = hash_cache.content_digest(&root.join(path)).ok();
            match (expected, actual) {
                (Some(expected), Some(actual)) => expected != actual,
                // An output dir whose stage produced no files is fine when absent.
                (None, None) => false,
                _ => true,
            }
        })
        .map(|(path, _)| path)
        .collect()
}

/// Makes the workspace match `manifest`; returns the mounts it rewrote.
pub fn materialize(
    root: &Path,
    stage: &Stage,
    manifest: &Manifest,
    store: &Store,
    hash_cache: &HashCache,
) -> Result<Vec<String>, ExecError> {
    let stale = stale_mounts(root, stage, manifest, hash_cache);
    for (path, inside) in mounts(stage) {
        if !stale.contains(&path) {
            continue;
        }
        let target = root.join(&path);
        let parent = target.parent().unwrap_or(root);
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        // Built beside the target, then swapped in, so an interrupted restore never leaves a
        // half-written output under the user's path.
        let staging = tempfile::Builder::new()
            .prefix(".taper-restore-")
            .tempdir_in(parent)
            .map_err(io_error("create a temp directory in", parent))?;
        let built = staging.path().join("content");
        if let Some(entry) = manifest.entries.get(&inside) {
            store.fetch_blob(&entry.digest, &built, entry.executable)?;
        } else {
            fs::create_dir_all(&built).map_err(io_error("create", &built))?;
            for (relative, entry) in &manifest.subtree(&inside).entries {
                store.fetch_blob(&entry.digest, &built.join(relative), entry.executable)?;
            }
        }
        remove_path(&target)?;
        fs::rename(&built, &target).map_err(io_error("move into place", &target))?;
    }
    Ok(stale)
}

/// Removes a file or directory; absent is fine.
pub fn remove_path(path: &Path) -> Result<(), ExecError> {
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    result.map_err(io_error("remove", path))
}
