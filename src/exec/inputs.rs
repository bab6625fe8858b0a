//! The engine's view of the edges and a stage's key inputs: for each `command` dep, whether it
//! reads inside an upstream stage's output, holds outputs, or is an external file (from the
//! pipeline's edges, `model/edges.rs`), and the content digests that go into the key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Component, Path};

use super::workspace::{special_kind, WorkspaceError};
use super::ExecError;
use crate::fingerprint::{ContentDigest, HashCache, Manifest, StageHashable};
use crate::graph::PipelineGraph;
use crate::model::{stage_output_dir, DependencyVia, InputSlot, Pipeline, StageId, StageSettings};

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
    /// Per stage: the paths it reads, `command` deps and `path:` sources (display path,
    /// source).
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
    /// The engine's view of the pipeline's edges ([`Pipeline::dependencies`]) and of the one
    /// topological order ([`PipelineGraph`]): derived from them, never from the stages.
    pub fn new(pipeline: &Pipeline) -> Dag {
        let ids: Vec<StageId> = pipeline
            .stages
            .iter()
            .map(|stage| stage.id.clone())
            .collect();
        let index_of: HashMap<&StageId, usize> = ids
            .iter()
            .enumerate()
            .map(|(index, id)| (id, index))
            .collect();
        let mut upstream = vec![BTreeSet::new(); ids.len()];
        let mut slots = vec![Vec::new(); ids.len()];
        // Per stage and dep: the producer it reads inside, or the producers it holds.
        let mut reads: Vec<HashMap<&Path, DepSource>> = vec![HashMap::new(); ids.len()];
        for dependency in pipeline.dependencies() {
            let (Some(&producer), Some(&consumer)) = (
                index_of.get(&dependency.upstream),
                index_of.get(&dependency.downstream),
            ) else {
                continue;
            };
            upstream[consumer].insert(producer);
            match &dependency.via {
                DependencyVia::Input(slot) => slots[consumer].push((*slot, producer)),
                DependencyVia::Path(dep) => {
                    let path = normalize(dep);
                    let inside = match &pipeline.stages[producer].settings {
                        // `command` outputs are recorded by root-relative path.
                        StageSettings::Command(_) => path,
                        _ => inside(&path, &output_dir_of(pipeline, &ids[producer]))
                            .unwrap_or_default(),
                    };
                    reads[consumer]
                        .entry(dep)
                        .or_insert(DepSource::Upstream { producer, inside });
                }
                DependencyVia::Containing(dep) => {
                    let source =
                        reads[consumer]
                            .entry(dep)
                            .or_insert_with(|| DepSource::Containing {
                                producers: Vec::new(),
                            });
                    if let DepSource::Containing { producers } = source {
                        producers.push(producer);
                    }
                }
            }
        }
        let deps = pipeline
            .stages
            .iter()
            .zip(&reads)
            .map(|(stage, reads)| {
                stage
                    .settings
                    .read_paths()
                    .iter()
                    .map(|dep| {
                        let path = normalize(dep);
                        let source = reads
                            .get(dep.as_path())
                            .cloned()
                            .unwrap_or_else(|| DepSource::External(path.clone()));
                        (path, source)
                    })
                    .collect()
            })
            .collect();
        let upstream: Vec<Vec<usize>> = upstream.into_iter().map(Vec::from_iter).collect();
        let mut downstream = vec![Vec::new(); ids.len()];
        for (index, producers) in upstream.iter().enumerate() {
            for producer in producers {
                downstream[*producer].push(index);
            }
        }
        Dag {
            order: PipelineGraph::new(pipeline).topo_indices(),
            ids,
            upstream,
            downstream,
            slots,
            deps,
        }
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
        let external_paths: Vec<String> = {
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

fn known_list(ids: &[StageId]) -> String {
    ids.iter()
        .map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
