//! Loading HF safetensors into trainable or frozen parameters, with an exact account of what
//! was used.
//!
//! Contract: every tensor the model asks for is either found in the file (after normalising
//! the name), freshly initialised from the seeded RNG because it is optional (a new head, an
//! adapter), or reported as missing; a load with any missing tensor fails and names them all.
//! Tensors of the file that nothing asked for are reported as unused (e.g. the MLM head, the
//! `position_ids` buffer), because a wrong name prefix would otherwise silently give random
//! weights (docs/design.md §1.5).
//!
//! Trainable parameters become `Var`s (autograd tracks them); frozen ones are plain tensors, so
//! autograd never builds a graph through frozen layers and their bytes cannot change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{MlError, Result};
use super::rng;

/// How a parameter absent from the file starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    Normal(f64),
    Uniform(f64),
    Zeros,
    Ones,
}

/// What a load did besides using the file's tensors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Parameters not in the file, initialised from the seeded RNG (a new head, adapters).
    pub freshly_initialised: Vec<String>,
    /// Tensors of the file that the model did not use, by their name in the file.
    pub unused: Vec<String>,
}

/// The tensors of one safetensors file under normalised names: no `bert.`/`distilbert.`
/// prefix, `LayerNorm.weight`/`.bias` instead of the old `gamma`/`beta`.
pub(crate) struct WeightSource {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// Normalised name → name in the file, for reporting.
    original: HashMap<String, String>,
}

pub(crate) fn normalise_name(name: &str) -> String {
    let name = name
        .strip_prefix("bert.")
        .or_else(|| name.strip_prefix("distilbert."))
        .unwrap_or(name);
    if let Some(stem) = name.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = name.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        name.to_owned()
    }
}

impl WeightSource {
    pub(crate) fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.is_file() {
            return Err(MlError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let raw = candle_core::safetensors::load(path, device)?;
        let mut tensors = HashMap::with_capacity(raw.len());
        let mut original = HashMap::with_capacity(raw.len());
        for (name, tensor) in raw {
            let normal = normalise_name(&name);
            original.insert(normal.clone(), name);
            tensors.insert(normal, tensor);
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            original,
        })
    }
}

/// Trainable parameters in name order, plus counts.
pub struct ParamStore {
    /// Sorted by name: optimizer state and checkpoints rely on a stable order (a `VarMap`
    /// iterates in HashMap order, docs/design.md §1.2).
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) total_parameters: usize,
}

impl ParamStore {
    pub fn trainable_parameters(&self) -> usize {
        self.vars.iter().map(|(_, var)| var.elem_count()).sum()
    }

    pub fn total_parameters(&self) -> usize {
        self.total_parameters
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|(name, _)| name.as_str())
    }
}

pub(crate) struct ParamBuilder {
    source: WeightSource,
    used: BTreeSet<String>,
    missing: Vec<String>,
    fresh: Vec<String>,
    rng: ChaCha8Rng,
    device: Device,
    vars: BTreeMap<String, Var>,
    total: usize,
}

impl ParamBuilder {
    pub(crate) fn new(source: WeightSource, seed: u64, device: &Device) -> Self {
        Self {
            source,
            used: BTreeSet::new(),
            missing: Vec::new(),
            fresh: Vec::new(),
            rng: rng::seeded(seed, rng::INIT_STREAM),
            device: device.clone(),
            vars: BTreeMap::new(),
            total: 0,
        }
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.source.tensors.contains_key(name)
    }

    /// A tensor the pretrained file must contain. When absent it is recorded as missing and a
    /// zero placeholder returned, so one load reports every missing name at once.
    pub(crate) fn pretrained(
        &mut self,
        name: &str,
        dims: &[usize],
        trainable: bool,
    ) -> Result<Tensor> {
        match self.take(name, dims)? {
            Some(tensor) => self.register(name, tensor, trainable),
            None => {
                self.missing.push(name.to_owned());
                Ok(Tensor::zeros(dims, DType::F32, &self.device)?)
            }
        }
    }

    /// A tensor taken from the file when present, otherwise initialised and reported as fresh.
    /// Returns whether it was fresh.
    pub(crate) fn optional(
        &mut self,
        name: &str,
        dims: &[usize],
        init: Init,
        trainable: bool,
    ) -> Result<(Tensor, bool)> {
        match self.take(name, dims)? {
            Some(tensor) => Ok((self.register(name, tensor, trainable)?, false)),
            None => Ok((self.fresh(name, dims, init, trainable)?, true)),
        }
    }

    /// A new parameter that no pretrained file has (adapters).
    pub(crate) fn fresh(
        &mut self,
        name: &str,
        dims: &[usize],
        init: Init,
        trainable: bool,
    ) -> Result<Tensor> {
        let count: usize = dims.iter().product();
        let values = match init {
            Init::Normal(std) => rng::normal(&mut self.rng, count, std),
            Init::Uniform(bound) => rng::uniform(&mut self.rng, count, bound),
            Init::Zeros => vec![0.0; count],
            Init::Ones => vec![1.0; count],
        };
        self.fresh.push(name.to_owned());
        let tensor = Tensor::from_vec(values, dims, &self.device)?;
        self.register(name, tensor, trainable)
    }

    fn take(&mut self, name: &str, dims: &[usize]) -> Result<Option<Tensor>> {
        let Some(tensor) = self.source.tensors.get(name) else {
            return Ok(None);
        };
        if tensor.dims() != dims {
            return Err(MlError::TensorShape {
                path: self.source.path.clone(),
                name: self
                    .source
                    .original
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| name.to_owned()),
                expected: dims.to_vec(),
                found: tensor.dims().to_vec(),
            });
        }
        self.used.insert(name.to_owned());
        Ok(Some(tensor.to_dtype(DType::F32)?))
    }

    fn register(&mut self, name: &str, tensor: Tensor, trainable: bool) -> Result<Tensor> {
        self.total += tensor.elem_count();
        if trainable {
            let var = Var::from_tensor(&tensor)?;
            let shared = var.as_tensor().clone();
            self.vars.insert(name.to_owned(), var);
            Ok(shared)
        } else {
            Ok(tensor)
        }
    }

    pub(crate) fn finish(self) -> Result<(ParamStore, LoadReport)> {
        if !self.missing.is_empty() {
            return Err(MlError::MissingTensors {
                path: self.source.path,
                names: self.missing,
            });
        }
        let mut unused: Vec<String> = self
            .source
            .tensors
            .keys()
            .filter(|name| !self.used.contains(*name))
            .map(|name| {
                self.source
                    .original
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| name.clone())
            })
            .collect();
        unused.sort();
        let store = ParamStore {
            vars: self.vars.into_iter().collect(),
            total_parameters: self.total,
        };
        Ok((
            store,
            LoadReport {
                freshly_initialised: self.fresh,
                unused,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_prefixes_and_old_layer_norm_names() {
        assert_eq!(
            normalise_name("bert.embeddings.LayerNorm.gamma"),
            "embeddings.LayerNorm.weight"
        );
        assert_eq!(
            normalise_name("distilbert.transformer.layer.0.sa_layer_norm.beta"),
            "transformer.layer.0.sa_layer_norm.bias"
        );
        assert_eq!(normalise_name("classifier.weight"), "classifier.weight");
    }
}
