//! Edges and key inputs: which stage produces what a stage reads, and the content digests
//! that go into its key.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path};

use super::workspace::{special_kind, WorkspaceError};
use super::ExecError;
use crate::fingerprint::{ContentDigest, HashCache, Manifest, StageHashable};
use crate::model::{stage_output_dir, InputSlot, PathIndex, Pipeline, StageId, StageSettings};

/// Where a `command` dep's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DepSource {
    /// A file or directory no stage produces (relative to the pipeline root).
    External(String),
    /// Inside the outputs of stage `producer`; `inside` is the path in its output manifest.
    Upstream { producer: usize, inside: String },
    /// A directory that holds the outputs of `producers` (and maybe other files): hashed from
    /// disk once they have finished and been materialized there.
    Containing { producers: Vec<usize> },
}

/// The pipeline's stages as a graph of direct data dependencies, indexed in file order.
#[derive(Debug, Clone)]
pub struct Dag {
    ids: Vec<StageId>,
    upstream: Vec<Vec<usize>>,
    downstream: Vec<Vec<usize>>,
    /// Per stage: typed inputs (slot name → producer).
    slots: Vec<Vec<(InputSlot, usize)>>,
    /// Per stage: its `command` deps (display path, source).
    deps: Vec<Vec<(String, DepSource)>>,
    order: Vec<usize>,
}

/// The [`normalize`](crate::model::paths::normalize)d form of `path` as a `/`-separated
/// string (`./data/` → `data`, `a/../../x` → `../x`): the engine's key for deps and outs. The
/// meaning comes from the model's one normaliser; here it is only spelled as text.
pub fn normalize(path: &Path) -> String {
    let normalized = crate::model::paths::normalize(path);
    let parts: Vec<String> = normalized
        .components()
        .map(|component| match component {
            Component::RootDir => String::new(),
            other => other.as_os_str().to_string_lossy().into_owned(),
        })
        .collect();
    let joined = parts.join("/");
    if normalized.is_absolute() && !joined.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// `path` relative to `mount` when it lies at or under it.
fn inside(path: &str, mount: &str) -> Option<String> {
    if path == mount {
        Some(String::new())
    } else {
        path.strip_prefix(mount)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(str::to_owned)
    }
}

/// Directory (relative to the pipeline root) where a non-`command` stage's outputs appear, in
/// the `/`-separated form mounts and deps are compared in.
pub fn output_dir_of(pipeline: &Pipeline, stage: &StageId) -> String {
    normalize(&stage_output_dir(&pipeline.path, stage))
}

impl Dag {
    pub fn new(pipeline: &Pipeline) -> Result<Dag, ExecError> {
        let ids: Vec<StageId> = pipeline
            .stages
            .iter()
            .map(|stage| stage.id.clone())
            .collect();
        let index_of = |id: &StageId| ids.iter().position(|known| known == id);
        let mut upstream = vec![BTreeSet::new(); ids.len()];
        let mut slots = vec![Vec::new(); ids.len()];
        let mut deps = vec![Vec::new(); ids.len()];
        let mounts = MountIndex::new(pipeline);
        for (index, stage) in pipeline.stages.iter().enumerate() {
            for (slot, producer) in &stage.inputs {
                let producer_index = index_of(producer).ok_or_else(|| ExecError::UnknownStage {
                    stage: producer.to_string(),
                    known: known_list(&ids),
                })?;
                upstream[index].insert(producer_index);
                slots[index].push((*slot, producer_index));
            }
            if let StageSettings::Command(command) = &stage.settings {
                for dep in &command.deps {
                    let path = normalize(dep);
                    let source = match mounts.producer_of(index, &path) {
                        Some((producer, inside)) => DepSource::Upstream { producer, inside },
                        None => {
                            let producers = mounts.producers_under(index, &path);
                            if producers.is_empty() {
                                DepSource::External(path.clone())
                            } else {
                                DepSource::Containing { producers }
                            }
                        }
                    };
                    match &source {
                        DepSource::Upstream { producer, .. } => {
                            upstream[index].insert(*producer);
                        }
                        DepSource::Containing { producers } => {
                            upstream[index].extend(producers.iter().copied());
                        }
                        DepSource::External(_) => {}
                    }
                    deps[index].push((path, source));
                }
            }
        }
        let upstream: Vec<Vec<usize>> = upstream.into_iter().map(Vec::from_iter).collect();
        let mut downstream = vec![Vec::new(); ids.len()];
        for (index, producers) in upstream.iter().enumerate() {
            for producer in producers {
                downstream[*producer].push(index);
            }
        }
        let order =
            topological_order(&upstream, &downstream).map_err(|stuck| ExecError::Cycle {
                stages: stuck
                    .iter()
                    .map(|index| format!("`{}`", ids[*index]))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(Dag {
            ids,
            upstream,
            downstream,
            slots,
            deps,
            order,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn id(&self, index: usize) -> &StageId {
        &self.ids[index]
    }

    pub fn index_of(&self, id: &str) -> Result<usize, ExecError> {
        self.ids
            .iter()
            .position(|known| known.as_str() == id)
            .ok_or_else(|| ExecError::UnknownStage {
                stage: id.to_owned(),
                known: known_list(&self.ids),
            })
    }

    /// Typed inputs of `index`: slot → producing stage.
    pub fn slots(&self, index: usize) -> &[(InputSlot, usize)] {
        &self.slots[index]
    }

    /// Direct upstream stages of `index`.
    pub fn upstream(&self, index: usize) -> &[usize] {
        &self.upstream[index]
    }

    /// Direct downstream stages of `index`.
    pub fn downstream(&self, index: usize) -> &[usize] {
        &self.downstream[index]
    }

    /// Stage indices with every stage after all of its upstream stages (file order among
    /// independent ones).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// `roots` and everything reachable from them along `next` (upstream or downstream).
    pub fn closure(&self, roots: &[usize], towards_downstream: bool) -> BTreeSet<usize> {
        let mut seen: BTreeSet<usize> = BTreeSet::new();
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(index) = stack.pop() {
            if seen.insert(index) {
                let next = if towards_downstream {
                    &self.downstream[index]
                } else {
                    &self.upstream[index]
                };
                stack.extend(next.iter().copied());
            }
        }
        seen
    }

    /// The key inputs of stage `index`. `upstream_output(i)` gives the output manifest of a
    /// finished stage; stages it returns `None` for are listed in the second value and left
    /// out of the hashable (the key is then incomplete: used by `plan` only).
    pub fn hashable(
        &self,
        pipeline: &Pipeline,
        index: usize,
        hash_cache: &HashCache,
        upstream_output: &dyn Fn(usize) -> Option<Manifest>,
    ) -> Result<(StageHashable, Vec<usize>), ExecError> {
        let stage = &pipeline.stages[index];
        let mut unknown = BTreeSet::new();
        let mut upstream = BTreeMap::new();
        let mut external = BTreeMap::new();
        for (slot, producer) in &self.slots[index] {
            match upstream_output(*producer) {
                Some(manifest) => {
                    upstream.insert(
                        slot.as_str().to_owned(),
                        ContentDigest::Directory(manifest.digest()),
                    );
                }
                None => {
                    unknown.insert(*producer);
                }
            }
        }
        let external_paths: Vec<String> = if self.deps[index].is_empty() {
            stage
                .external_paths()
                .iter()
                .map(|path| normalize(path))
                .collect()
        } else {
            let mut paths = Vec::new();
            for (path, source) in &self.deps[index] {
                match source {
                    DepSource::External(path) => paths.push(path.clone()),
                    DepSource::Upstream { producer, inside } => match upstream_output(*producer) {
                        Some(manifest) => {
                            let digest = manifest.content_digest_of(inside).ok_or_else(|| {
                                ExecError::DependencyNotProduced {
                                    stage: stage.id.clone(),
                                    producer: self.ids[*producer].clone(),
                                    path: path.clone(),
                                }
                            })?;
                            upstream.insert(path.clone(), digest);
                        }
                        None => {
                            unknown.insert(*producer);
                        }
                    },
                    DepSource::Containing { producers } => {
                        let missing: Vec<usize> = producers
                            .iter()
                            .copied()
                            .filter(|producer| upstream_output(*producer).is_none())
                            .collect();
                        if missing.is_empty() {
                            let digest = hash_path(pipeline, &stage.id, path, hash_cache)?;
                            upstream.insert(path.clone(), digest);
                        } else {
                            unknown.extend(missing);
                        }
                    }
                }
            }
            paths
        };
        for path in external_paths {
            let digest = hash_path(pipeline, &stage.id, &path, hash_cache)?;
            external.insert(path, digest);
        }
        Ok((
            StageHashable::new(stage, upstream, external),
            unknown.into_iter().collect(),
        ))
    }
}

fn hash_path(
    pipeline: &Pipeline,
    stage: &StageId,
    path: &str,
    hash_cache: &HashCache,
) -> Result<ContentDigest, ExecError> {
    // A FIFO dep was reported as "Not a directory (os error 20)": name what it is instead.
    if let Some(kind) = std::fs::metadata(pipeline.root.join(path))
        .ok()
        .as_ref()
        .and_then(special_kind)
    {
        return Err(WorkspaceError::NotRegular {
            path: pipeline.root.join(path),
            kind,
        }
        .into());
    }
    hash_cache
        .content_digest(&pipeline.root.join(path))
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ExecError::MissingDependency {
                    stage: stage.clone(),
                    path: path.to_owned(),
                }
            } else {
                ExecError::HashInput {
                    stage: stage.clone(),
                    path: pipeline.root.join(path),
                    source,
                }
            }
        })
}

/// Every stage's output locations, for finding who produces a dep in O(path depth) instead
/// of comparing each dep with every out (1,000 stages made that the bulk of `plan`).
struct MountIndex {
    /// Per mount path, in stage order: (mount path, stage, whether the manifest is keyed by
    /// root-relative paths). The first stage filed at a path is its producer.
    mounts: PathIndex<(String, usize, bool)>,
}

impl MountIndex {
    fn new(pipeline: &Pipeline) -> MountIndex {
        let mut mounts = PathIndex::new();
        let mut add = |mount: String, stage: usize, root_relative: bool| {
            mounts.insert(Path::new(&mount), (mount.clone(), stage, root_relative));
        };
        for (index, stage) in pipeline.stages.iter().enumerate() {
            match &stage.settings {
                StageSettings::Command(command) => {
                    for out in &command.outs {
                        add(normalize(out), index, true);
                    }
                }
                _ => add(output_dir_of(pipeline, &stage.id), index, false),
            }
        }
        MountIndex { mounts }
    }

    /// The stage (other than `consumer`) whose outputs hold `path`, and the path inside its
    /// manifest (root-relative for `command` outs, relative to the stage's output dir otherwise).
    fn producer_of(&self, consumer: usize, path: &str) -> Option<(usize, String)> {
        self.mounts
            .at_or_above(Path::new(path))
            .map(|at_mount| &at_mount[0])
            .find(|(_, stage, _)| *stage != consumer)
            .map(|(mount, stage, root_relative)| {
                let rest = inside(path, mount).unwrap_or_default();
                (
                    *stage,
                    if *root_relative {
                        path.to_owned()
                    } else {
                        rest
                    },
                )
            })
    }

    /// Stages (other than `consumer`) whose outputs lie strictly under the directory `path`.
    fn producers_under(&self, consumer: usize, path: &str) -> Vec<usize> {
        let mut producers: Vec<usize> = self
            .mounts
            .below(Path::new(path))
            .map(|at_mount| at_mount[0].1)
            .filter(|stage| *stage != consumer)
            .collect();
        producers.sort_unstable();
        producers.dedup();
        producers
    }
}

fn known_list(ids: &[StageId]) -> String {
    ids.iter()
        .map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kahn's algorithm, smallest index first; `Err` holds the stages left in a cycle.
fn topological_order(
    upstream: &[Vec<usize>],
    downstream: &[Vec<usize>],
) -> Result<Vec<usize>, Vec<usize>> {
    let mut remaining: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..upstream.len())
        .filter(|index| remaining[*index] == 0)
        .collect();
    let mut order = Vec::with_capacity(upstream.len());
    while let Some(index) = ready.pop_first() {
        order.push(index);
        for next in &downstream[index] {
            remaining[*next] -= 1;
            if remaining[*next] == 0 {
                ready.insert(*next);
            }
        }
    }
    if order.len() == upstream.len() {
        Ok(order)
    } else {
        Err((0..upstream.len())
            .filter(|index| remaining[*index] > 0)
            .collect())
    }
}
