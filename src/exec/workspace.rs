//! Materialized outputs: the copies users open (`out/<file stem>/<stage>/`, a command's declared
//! outs), and the fence around every write and delete taper does in the pipeline directory.
//!
//! Copies, never links: a hard link to a blob would let `echo x >> out/train/log.txt` rewrite
//! the blob for every key and project sharing it, and a read-only symlink breaks tools that
//! rewrite files in place. Copying costs disk; correctness of the store is worth more.
//!
//! Contract: nothing outside what a stage declares is ever written or deleted. Before an out,
//! an output directory or a log is removed, created or restored, [`Fence::check`] refuses a
//! path that leaves the pipeline directory (`..`, absolute, or through a symlinked directory:
//! with `shared -> /elsewhere`, `outs: [shared/x.txt]` used to delete `/elsewhere/x.txt`), one
//! that overlaps the store, the pipeline file, its lock file or another stage's outputs or log
//! (`outs: [cache]` used to wipe the default store), and a FIFO, socket or device (opening one
//! blocks forever). An out that is itself a symlink is removed as a link, never followed. And
//! [`unsaved`] refuses, unless the stage is forced, to overwrite workspace content that exists
//! nowhere else: a file the user edited or added into an output directory.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::inputs::{normalize, output_dir_of};
use super::ExecError;
use crate::cache::{LockFile, LockedStage, ObjectStore, Store};
use crate::fingerprint::{HashCache, Manifest};
use crate::model::{stage_log_path, PathIndex, Pipeline, Stage, StageId, StageSettings};

/// Why taper refused to touch a path in the pipeline directory.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum WorkspaceError {
    #[error("`{}` lies outside the pipeline directory", path.display())]
    #[diagnostic(
        code(taper::exec::workspace::outside),
        help("outs, output directories and logs are relative paths inside the pipeline directory, without `..`")
    )]
    Outside { path: PathBuf },

    #[error("stage `{stage}` may not write or delete `{}`: it overlaps {what}", path.display())]
    #[diagnostic(
        code(taper::exec::workspace::protected),
        help("taper never writes or deletes the store, the pipeline file, its lock file, or another stage's outputs and log; give this out a path of its own")
    )]
    Protected {
        stage: StageId,
        path: PathBuf,
        what: String,
    },

    #[error("`{}` lies behind the symbolic link `{}`", path.display(), link.display())]
    #[diagnostic(
        code(taper::exec::workspace::symlink_in_path),
        help("taper does not write or delete through a symbolic link, which may lead outside the pipeline directory; replace `{}` with a real directory, or use another path", link.display())
    )]
    SymlinkInPath { path: PathBuf, link: PathBuf },

    #[error("`{}` is a {kind}, not a regular file or directory", path.display())]
    #[diagnostic(
        code(taper::exec::workspace::not_regular),
        help("taper reads and writes only regular files and directories here (a FIFO or device could block it forever, a symlink send a write elsewhere); replace `{}` with a regular file", path.display())
    )]
    NotRegular { path: PathBuf, kind: &'static str },

    #[error("`{}` {why}; stage `{stage}` would overwrite it", path.display())]
    #[diagnostic(
        code(taper::exec::workspace::modified_output),
        help("its content is neither the stage's recorded output nor in the store; move it away to keep it, or let taper replace it with `taper run --force {stage}`")
    )]
    Modified {
        stage: StageId,
        path: PathBuf,
        why: &'static str,
    },

    #[error("cannot {action} `{}`", path.display())]
    #[diagnostic(
        code(taper::exec::workspace::io),
        help("check permissions and free space in the pipeline directory")
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> WorkspaceError + use<'a> {
    move |source| WorkspaceError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a path is to a stage: its own outputs (an out, its output directory) or its own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Output,
    Log,
}

/// What lies at a path no stage may write or delete (except the stage that owns it, in that
/// role).
#[derive(Debug)]
struct Protected {
    owner: Option<(StageId, Role)>,
    what: String,
}

/// The paths of one pipeline directory that taper may touch, and those it must not.
#[derive(Debug)]
pub struct Fence {
    /// The pipeline directory as given (paths in messages are shown under it).
    root: PathBuf,
    /// The same directory, canonical: protected paths compare against it.
    canonical_root: PathBuf,
    /// By absolute path (under `canonical_root`, or the canonical store). Indexed: a list made
    /// each check O(stages), and a 1,000-stage run O(stages²).
    protected: PathIndex<Protected>,
}

impl Fence {
    /// A fence around `root` that protects the store at `store_root`.
    pub fn new(root: &Path, store_root: &Path) -> Result<Fence, WorkspaceError> {
        let canonical_root = fs::canonicalize(root).map_err(io_error("resolve", root))?;
        let store = fs::canonicalize(store_root)
            .or_else(|_| std::path::absolute(store_root))
            .map_err(io_error("resolve", store_root))?;
        let mut protected = PathIndex::new();
        protected.insert(
            &store,
            Protected {
                what: format!("the store `{}`", store_root.display()),
                owner: None,
            },
        );
        Ok(Fence {
            root: root.to_path_buf(),
            canonical_root,
            protected,
        })
    }

    /// The fence of `pipeline`: the store, the pipeline file, its lock file, and every stage's
    /// outputs and log.
    pub fn for_pipeline(pipeline: &Pipeline, store_root: &Path) -> Result<Fence, WorkspaceError> {
        let mut fence = Fence::new(&pipeline.root, store_root)?;
        let lock = LockFile::path_for(&pipeline.path);
        for (file, what) in [
            (&pipeline.path, "the pipeline file"),
            (&lock, "its lock file"),
        ] {
            if let Some(name) = file.file_name() {
                fence.protect(
                    Path::new(name),
                    None,
                    format!("{what} `{}`", file.display()),
                );
            }
        }
        for stage in &pipeline.stages {
            for (mount, _) in mounts(pipeline, stage) {
                let what = format!("the outputs of stage `{}` (`{mount}`)", stage.id);
                fence.protect(
                    Path::new(&mount),
                    Some((stage.id.clone(), Role::Output)),
                    what,
                );
            }
            let log = stage_log_path(&pipeline.path, &stage.id);
            let what = format!("the log of stage `{}` (`{}`)", stage.id, log.display());
            fence.protect(&log, Some((stage.id.clone(), Role::Log)), what);
        }
        Ok(fence)
    }

    fn protect(&mut self, relative: &Path, owner: Option<(StageId, Role)>, what: String) {
        let path = self.canonical_root.join(normalize(relative));
        self.protected.insert(&path, Protected { owner, what });
    }

    /// `relative` under the pipeline directory, as shown in messages.
    pub fn shown(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// Checks that stage `stage` may remove or write `relative` (a path under the pipeline
    /// directory) in `role`; returns the path to operate on.
    pub fn check(
        &self,
        stage: &StageId,
        relative: &Path,
        role: Role,
    ) -> Result<PathBuf, WorkspaceError> {
        let shown = self.shown(relative);
        if relative
            .components()
            .any(|part| !matches!(part, Component::Normal(_) | Component::CurDir))
        {
            return Err(WorkspaceError::Outside { path: shown });
        }
        let absolute = self.canonical_root.join(normalize(relative));
        if absolute == self.canonical_root {
            return Err(WorkspaceError::Protected {
                stage: stage.clone(),
                path: shown,
                what: "the whole pipeline directory".to_owned(),
            });
        }
        let mine = |protected: &Protected| {
            protected
                .owner
                .as_ref()
                .is_some_and(|(owner, owned_as)| owner == stage && *owned_as == role)
        };
        if let Some(protected) = self
            .protected
            .overlapping(&absolute)
            .find(|protected| !mine(protected))
        {
            return Err(WorkspaceError::Protected {
                stage: stage.clone(),
                path: shown,
                what: protected.what.clone(),
            });
        }
        // Every existing directory between the root and the path must be a real directory:
        // `create_dir_all`, `remove_dir_all` and `rename` all resolve symlinks in the middle of
        // a path, so one link there takes the write out of the project.
        let mut ancestor = self.root.clone();
        let mut parts = relative.components().peekable();
        while let Some(part) = parts.next() {
            ancestor.push(part);
            let metadata = match fs::symlink_metadata(&ancestor) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                Err(error) => return Err(io_error("inspect", &ancestor)(error)),
            };
            let last = parts.peek().is_none();
            if metadata.file_type().is_symlink() {
                // The out itself may be a link: it is removed as a link, never followed. A log
                // is written by taper, so a link there would send its lines elsewhere.
                if !last {
                    return Err(WorkspaceError::SymlinkInPath {
                        path: shown,
                        link: ancestor,
                    });
                }
                if role == Role::Log {
                    return Err(WorkspaceError::NotRegular {
                        path: ancestor,
                        kind: "symbolic link",
                    });
                }
            } else if let Some(kind) = special_kind(&metadata) {
                return Err(WorkspaceError::NotRegular {
                    path: ancestor,
                    kind,
                });
            }
        }
        Ok(self.root.join(relative))
    }

    /// Removes `relative` (a file, a directory, or a symlink as a link) after [`Fence::check`];
    /// absent is fine.
    pub fn remove(
        &self,
        stage: &StageId,
        relative: &Path,
        role: Role,
    ) -> Result<(), WorkspaceError> {
        let path = self.check(stage, relative, role)?;
        remove_path(&path)
    }
}

/// Refuses anything but a regular file at `path` (absent is fine): taper opens it to read or
/// replace it, and a FIFO there would block forever, a symlink redirect the write.
pub fn expect_regular_file(path: &Path) -> Result<(), WorkspaceError> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => Err(WorkspaceError::NotRegular {
            path: path.to_path_buf(),
            kind: "symbolic link",
        }),
        Ok(metadata) => {
            match special_kind(&metadata).or(metadata.is_dir().then_some("directory")) {
                Some(kind) => Err(WorkspaceError::NotRegular {
                    path: path.to_path_buf(),
                    kind,
                }),
                None => Ok(()),
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("inspect", path)(error)),
    }
}

/// What a path is when it is neither a regular file, a directory nor a symlink.
pub fn special_kind(metadata: &fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_fifo() {
        Some("FIFO")
    } else if kind.is_socket() {
        Some("socket")
    } else if kind.is_block_device() || kind.is_char_device() {
        Some("device")
    } else {
        None
    }
}

/// Workspace paths (relative to the root) where `stage`'s outputs appear, each with the path
/// of its content inside the output manifest.
pub fn mounts(pipeline: &Pipeline, stage: &Stage) -> Vec<(String, String)> {
    match &stage.settings {
        StageSettings::Command(command) => command
            .outs
            .iter()
            .map(|out| {
                let path = normalize(out);
                (path.clone(), path)
            })
            .collect(),
        _ => vec![(output_dir_of(pipeline, &stage.id), String::new())],
    }
}

/// Mounts whose workspace content differs from `manifest` (missing, edited, stale).
pub fn stale_mounts(
    pipeline: &Pipeline,
    stage: &Stage,
    manifest: &Manifest,
    hash_cache: &HashCache,
) -> Vec<String> {
    mounts(pipeline, stage)
        .into_iter()
        .filter(|(path, inside)| {
            let expected = manifest.content_digest_of(inside);
            let actual = hash_cache.content_digest(&pipeline.root.join(path)).ok();
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

/// What replacing a stage's workspace outputs may overwrite.
#[derive(Debug, Clone, Copy)]
pub enum Overwrite<'a> {
    /// Only content that is saved elsewhere ([`unsaved`]); `previous` is the stage's lock entry.
    Saved { previous: Option<&'a LockedStage> },
    /// Anything (`--force`, or already checked before the stage ran).
    Anything,
}

/// Everything [`materialize`] and [`unsaved`] work with.
pub struct Outputs<'a> {
    pub pipeline: &'a Pipeline,
    pub fence: &'a Fence,
    pub store: &'a Store,
    pub hash_cache: &'a HashCache,
}

/// Makes the workspace match `manifest`; returns the mounts it rewrote.
pub fn materialize(
    outputs: &Outputs<'_>,
    stage: &Stage,
    manifest: &Manifest,
    overwrite: Overwrite<'_>,
) -> Result<Vec<String>, ExecError> {
    let Outputs {
        pipeline,
        fence,
        store,
        hash_cache,
    } = outputs;
    let stale = stale_mounts(pipeline, stage, manifest, hash_cache);
    let rewrite: Vec<(String, String)> = mounts(pipeline, stage)
        .into_iter()
        .filter(|(path, _)| stale.contains(path))
        .collect();
    for (path, _) in &rewrite {
        fence.check(&stage.id, Path::new(path), Role::Output)?;
    }
    if let Overwrite::Saved { previous } = overwrite {
        unsaved(outputs, stage, &rewrite, manifest, previous)?;
    }
    for (path, inside) in rewrite {
        let target = fence.check(&stage.id, Path::new(&path), Role::Output)?;
        let parent = target.parent().unwrap_or(&pipeline.root);
        fs::create_dir_all(parent).map_err(|source| ExecError::Io {
            action: "create",
            path: parent.to_path_buf(),
            source,
        })?;
        // Built beside the target, then swapped in, so an interrupted restore never leaves a
        // half-written output under the user's path.
        let staging = tempfile::Builder::new()
            .prefix(".taper-restore-")
            .tempdir_in(parent)
            .map_err(|source| ExecError::Io {
                action: "create a temp directory in",
                path: parent.to_path_buf(),
                source,
            })?;
        let built = staging.path().join("content");
        if let Some(entry) = manifest.entries.get(&inside) {
            store.fetch_blob(&entry.digest, &built, entry.executable)?;
        } else {
            fs::create_dir_all(&built).map_err(|source| ExecError::Io {
                action: "create",
                path: built.clone(),
                source,
            })?;
            for (relative, entry) in &manifest.subtree(&inside).entries {
                store.fetch_blob(&entry.digest, &built.join(relative), entry.executable)?;
            }
        }
        remove_path(&target)?;
        fs::rename(&built, &target).map_err(|source| ExecError::Io {
            action: "move into place",
            path: target.clone(),
            source,
        })?;
    }
    Ok(stale)
}

/// Refuses when replacing `mounts` (of `stage`) with `target` would lose work: the first file
/// under them whose bytes are neither `target`'s at that path, nor the stage's previous output
/// (`previous`, the lock entry), nor a blob in the store; a symlink counts as the file it
/// points to, and one to a directory or to nothing as the user's (taper writes copies, never
/// links). Content in the store is safe to replace: it can be restored, e.g. the outputs of
/// another branch's run after a `git checkout`.
pub fn unsaved(
    outputs: &Outputs<'_>,
    stage: &Stage,
    mounts: &[(String, String)],
    target: &Manifest,
    previous: Option<&LockedStage>,
) -> Result<(), WorkspaceError> {
    let previous_manifest =
        previous.and_then(|locked| outputs.store.get_manifest(&locked.manifest));
    for (path, inside) in mounts {
        let absolute = outputs.pipeline.root.join(path);
        let recorded = previous.and_then(|locked| locked.outputs.get(path));
        // The common rerun: the workspace holds the previous run's output (symlinks a command
        // made followed, as when its outs were stored).
        if recorded.is_some_and(|recorded| {
            outputs
                .hash_cache
                .content_digest(&absolute)
                .is_ok_and(|digest| &digest.to_tagged() == recorded)
        }) {
            continue;
        }
        let known = [Some(target), previous_manifest.as_ref()]
            .into_iter()
            .flatten()
            .map(|manifest| rooted(manifest, inside))
            .collect::<Vec<_>>();
        let mut walk = Walk {
            outputs,
            known: &known,
            found: None,
        };
        walk.visit(&absolute, String::new())?;
        if let Some((path, why)) = walk.found {
            return Err(WorkspaceError::Modified {
                stage: stage.id.clone(),
                path,
                why,
            });
        }
    }
    Ok(())
}

/// The entries of `manifest` at or under `inside`, keyed relative to it (`""` for a file).
fn rooted(manifest: &Manifest, inside: &str) -> BTreeMap<String, crate::fingerprint::FileEntry> {
    match manifest.entries.get(inside) {
        Some(entry) => BTreeMap::from([(String::new(), entry.clone())]),
        None => manifest.subtree(inside).entries,
    }
}

/// A depth-first search, in name order, for the first workspace entry nothing else holds.
struct Walk<'a> {
    outputs: &'a Outputs<'a>,
    known: &'a [BTreeMap<String, crate::fingerprint::FileEntry>],
    found: Option<(PathBuf, &'static str)>,
}

impl Walk<'_> {
    fn visit(&mut self, path: &Path, relative: String) -> Result<(), WorkspaceError> {
        let metadata = match fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error("inspect", path)(error)),
        };
        let link = metadata.file_type().is_symlink();
        if link && !fs::metadata(path).is_ok_and(|target| target.is_file()) {
            self.found = Some((
                path.to_path_buf(),
                "is a symbolic link taper did not create",
            ));
        } else if metadata.is_dir() {
            let mut names = fs::read_dir(path)
                .map_err(io_error("read", path))?
                .map(|entry| entry.map(|entry| entry.file_name()))
                .collect::<io::Result<Vec<_>>>()
                .map_err(io_error("read", path))?;
            names.sort();
            for name in names {
                let child = if relative.is_empty() {
                    name.to_string_lossy().into_owned()
                } else {
                    format!("{relative}/{}", name.to_string_lossy())
                };
                self.visit(&path.join(&name), child)?;
                if self.found.is_some() {
                    break;
                }
            }
        } else if let Some(kind) = special_kind(&metadata) {
            return Err(WorkspaceError::NotRegular {
                path: path.to_path_buf(),
                kind,
            });
        } else {
            let (digest, _) = self
                .outputs
                .hash_cache
                .hash_file(path)
                .map_err(io_error("hash", path))?;
            let mut listed = false;
            for manifest in self.known {
                if let Some(entry) = manifest.get(&relative) {
                    listed = true;
                    if entry.digest == digest {
                        return Ok(());
                    }
                }
            }
            if !self.outputs.store.contains_blob(&digest) {
                let why = if link {
                    "is a symbolic link to content taper does not have"
                } else if listed {
                    "was changed outside taper"
                } else {
                    "was added outside taper"
                };
                self.found = Some((path.to_path_buf(), why));
            }
        }
        Ok(())
    }
}

/// Removes a file, a directory, or a symlink (as a link); absent is fine. Callers check the
/// path with [`Fence::check`] first.
fn remove_path(path: &Path) -> Result<(), WorkspaceError> {
    let result = match fs::symlink_metadata(path) {
        // `remove_dir_all` does not follow symlinks inside the tree.
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    result.map_err(io_error("remove", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{Digest, FileEntry};

    const PIPELINE: &str = "version: 1
name: demo
stages:
  make:
    kind: command
    run: echo a > a.txt
    outs: [a.txt]
  hparams:
    kind: configure
    with: { learning_rate: 0.001, epochs: 1, batch_size: 4, method: { name: full } }
";

    struct Setup {
        dir: tempfile::TempDir,
        pipeline: Pipeline,
        store: Store,
    }

    impl Setup {
        fn new() -> Setup {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = dir.path().join("project");
            fs::create_dir_all(dir.path().join("elsewhere")).expect("elsewhere");
            fs::create_dir_all(&root).expect("project");
            let pipeline =
                crate::model::load_str(&root.join("p.yaml"), PIPELINE, root.clone(), &[])
                    .expect("valid pipeline");
            let store = Store::open(&root.join("cache")).expect("store");
            Setup {
                dir,
                pipeline,
                store,
            }
        }

        fn fence(&self) -> Fence {
            Fence::for_pipeline(&self.pipeline, self.store.root()).expect("fence")
        }

        fn root(&self) -> &Path {
            &self.pipeline.root
        }

        fn stage(&self, name: &str) -> &Stage {
            self.pipeline
                .stage(&StageId(name.to_owned()))
                .expect("stage")
        }
    }

    fn check(fence: &Fence, stage: &str, path: &str, role: Role) -> Result<(), String> {
        fence
            .check(&StageId(stage.to_owned()), Path::new(path), role)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    #[test]
    fn the_store_the_pipeline_its_lock_and_other_stages_outputs_are_off_limits() {
        let setup = Setup::new();
        let fence = setup.fence();
        let overlaps = |path: &str, what: &str| {
            let error = check(&fence, "make", path, Role::Output).expect_err(path);
            assert!(error.contains(what), "{path}: {error}");
        };
        overlaps("cache", "the store");
        overlaps("cache/blobs-v1", "the store");
        overlaps("p.yaml", "the pipeline file");
        overlaps("p.lock", "its lock file");
        overlaps("out", "the outputs of stage `hparams`");
        overlaps(
            "out/p/hparams/config.json",
            "the outputs of stage `hparams`",
        );
        overlaps("out/p/hparams.log", "the log of stage `hparams`");
        // A stage's own log is its log, not one of its outputs.
        overlaps("out/p/make.log", "the log of stage `make`");
        overlaps(".", "the whole pipeline directory");
        let outside = check(&fence, "make", "../elsewhere/x", Role::Output).expect_err("..");
        assert!(
            outside.contains("outside the pipeline directory"),
            "{outside}"
        );

        assert_eq!(check(&fence, "make", "a.txt", Role::Output), Ok(()));
        assert_eq!(check(&fence, "make", "out/p/make.log", Role::Log), Ok(()));
        assert_eq!(
            check(&fence, "hparams", "out/p/hparams", Role::Output),
            Ok(())
        );
    }

    #[test]
    fn symlinked_directories_and_fifos_are_refused_a_symlinked_out_is_not() {
        let setup = Setup::new();
        let fence = setup.fence();
        std::os::unix::fs::symlink("../elsewhere", setup.root().join("shared")).expect("link");
        let error = check(&fence, "make", "shared/x.txt", Role::Output).expect_err("link");
        assert!(error.contains("symbolic link `"), "{error}");
        assert!(error.contains("shared`"), "{error}");
        // The out itself may be a link: it is removed as one.
        assert_eq!(check(&fence, "make", "shared", Role::Output), Ok(()));
        fence
            .remove(
                &StageId("make".to_owned()),
                Path::new("shared"),
                Role::Output,
            )
            .expect("removed");
        assert!(setup.dir.path().join("elsewhere").is_dir());
        // A log is written by taper: no link there.
        std::os::unix::fs::symlink("../elsewhere", setup.root().join("linked.log")).expect("link");
        assert!(check(&fence, "make", "linked.log", Role::Log).is_err());

        let status = std::process::Command::new("mkfifo")
            .arg(setup.root().join("pipe"))
            .status()
            .expect("mkfifo");
        assert!(status.success());
        let error = check(&fence, "make", "pipe", Role::Output).expect_err("fifo");
        assert!(error.contains("is a FIFO"), "{error}");
        let error = expect_regular_file(&setup.root().join("pipe")).expect_err("fifo");
        assert!(error.to_string().contains("is a FIFO"), "{error}");
        assert!(expect_regular_file(&setup.root().join("absent.lock")).is_ok());
    }

    /// A manifest of one file, `a.txt`.
    fn only_a_txt(digest: Digest, size: u64) -> Manifest {
        Manifest {
            entries: BTreeMap::from([(
                "a.txt".to_owned(),
                FileEntry {
                    digest,
                    size,
                    executable: false,
                },
            )]),
        }
    }

    #[test]
    fn only_content_saved_elsewhere_may_be_overwritten() {
        let setup = Setup::new();
        let fence = setup.fence();
        let hash_cache = HashCache::default();
        let outputs = Outputs {
            pipeline: &setup.pipeline,
            fence: &fence,
            store: &setup.store,
            hash_cache: &hash_cache,
        };
        let stage = setup.stage("make");
        let all = mounts(&setup.pipeline, stage);
        let path = setup.root().join("a.txt");
        let nothing = Manifest::default();
        assert!(unsaved(&outputs, stage, &all, &nothing, None).is_ok());

        fs::write(&path, "stored\n").expect("write");
        let (stored, _) = hash_cache.hash_file(&path).expect("hash");
        setup.store.put_blob(&path, &stored, false).expect("put");
        assert!(unsaved(&outputs, stage, &all, &nothing, None).is_ok());

        fs::write(&path, "mine\n").expect("write");
        let error = unsaved(&outputs, stage, &all, &nothing, None).expect_err("unsaved");
        assert!(
            error.to_string().contains("a.txt` was added outside taper"),
            "{error}"
        );
        let restoring = only_a_txt(stored, 7);
        let error = unsaved(&outputs, stage, &all, &restoring, None).expect_err("unsaved");
        assert!(
            error
                .to_string()
                .contains("a.txt` was changed outside taper"),
            "{error}"
        );
        let (mine, _) = hash_cache.hash_file(&path).expect("hash");
        let same = only_a_txt(mine, 5);
        assert!(unsaved(&outputs, stage, &all, &same, None).is_ok());
    }
}
