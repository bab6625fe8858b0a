//! `Classifier`: an encoder plus a sequence-classification head, with the fine-tuning method
//! applied, and `Batch`, the padded input it runs on.
//!
//! Heads follow HF: `Pooling::Pooler` is `BertForSequenceClassification` (`[CLS]` → pooler
//! dense + tanh → dropout → classifier) or, for DistilBERT, `DistilBertForSequenceClassification`
//! (`[CLS]` → `pre_classifier` + ReLU → dropout → classifier); `Pooling::Mean` averages the
//! unpadded token states → dropout → classifier.
//!
//! Which parameters train (`model::Method`):
//! - `full`: everything.
//! - `frozen { layers: n }`: embeddings and the bottom `n` layers are frozen (all layers when
//!   `n` is absent: a linear probe, where only pooler and classifier train).
//! - `lora` / `ia3`: the whole base model is frozen; the adapters and the classifier train, as
//!   in PEFT's `SEQ_CLS` task (`modules_to_save = ["classifier"]`). A pooler that the
//!   checkpoint lacks is new, so it trains too.

use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use crate::model::stages::{AdaLora, Configure, Method, Pooling, Precision};

use super::config::{Architecture, EncoderConfig};
use super::encoder::{
    linear_module_names, matches_target, Adapter, AdapterSpec, BottleneckSpec, Ctx, Encoder,
    EncoderPlan, Linear,
};
use super::error::{io_error, MlError, Result};
use super::kernels;
use super::weights::{Init, LoadReport, ParamBuilder, ParamStore, WeightSource};

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA GPU when compiled with the `cuda` feature and one is present, else CPU.
    #[default]
    Auto,
    Cpu,
}

impl DeviceChoice {
    pub(crate) fn device(self) -> Device {
        match self {
            DeviceChoice::Cpu => Device::Cpu,
            // `cuda_if_available` returns the CPU when the feature is off or no GPU answers.
            DeviceChoice::Auto => Device::cuda_if_available(0).unwrap_or(Device::Cpu),
        }
    }
}

/// A batch of token-id sequences padded to the longest one, with optional labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    input_ids: Vec<u32>,
    mask: Vec<u8>,
    labels: Vec<u32>,
    size: usize,
    tokens: usize,
}

impl Batch {
    /// Pads `sequences` with `pad_id` to the longest one. `labels` is empty (inference) or
    /// holds one label per sequence.
    pub fn new(sequences: &[&[u32]], labels: &[u32], pad_id: u32) -> Result<Self> {
        if sequences.is_empty() {
            return Err(MlError::BadBatch {
                reason: "the batch has no sequences".to_owned(),
            });
        }
        if !labels.is_empty() && labels.len() != sequences.len() {
            return Err(MlError::BadBatch {
                reason: format!("{} labels for {} sequences", labels.len(), sequences.len()),
            });
        }
        if let Some(index) = sequences.iter().position(|s| s.is_empty()) {
            return Err(MlError::BadBatch {
                reason: format!("sequence {index} is empty"),
            });
        }
        let tokens = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(sequences.len() * tokens);
        let mut mask = Vec::with_capacity(sequences.len() * tokens);
        for sequence in sequences {
            input_ids.extend_from_slice(sequence);
            input_ids.extend(std::iter::repeat_n(pad_id, tokens - sequence.len()));
            mask.extend(std::iter::repeat_n(1u8, sequence.len()));
            mask.extend(std::iter::repeat_n(0u8, tokens - sequence.len()));
        }
        Ok(Self {
            input_ids,
            mask,
            labels: labels.to_vec(),
            size: sequences.len(),
            tokens,
        })
    }

    pub fn len(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Padded length.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    pub(crate) fn input_ids(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.input_ids,
            (self.size, self.tokens),
            device,
        )?)
    }

    pub(crate) fn attention_mask(&self, device: &Device) -> Result<Tensor> {
        let mask: Vec<f32> = self.mask.iter().map(|m| f32::from(*m)).collect();
        Ok(Tensor::from_vec(mask, (self.size, self.tokens), device)?)
    }

    pub(crate) fn label_tensor(&self, device: &Device) -> Result<Tensor> {
        if self.labels.is_empty() {
            return Err(MlError::BadBatch {
                reason: "training needs labels".to_owned(),
            });
        }
        Ok(Tensor::from_slice(&self.labels, self.size, device)?)
    }
}

#[derive(Debug, Clone)]
struct Head {
    pooling: Pooling,
    /// BERT's `pooler.dense` (tanh) or DistilBERT's `pre_classifier` (ReLU); absent for mean
    /// pooling.
    pooler: Option<Linear>,
    classifier: Linear,
    architecture: Architecture,
}

fn head_linear(
    builder: &mut ParamBuilder,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    std: f64,
    trainable_if_loaded: Option<bool>,
) -> Result<Linear> {
    // `None`: the tensors must be in the file and stay frozen (a trained export).
    let (weight, bias) = match trainable_if_loaded {
        None => (
            builder.pretrained(&format!("{name}.weight"), &[out_dim, in_dim], false)?,
            builder.pretrained(&format!("{name}.bias"), &[out_dim], false)?,
        ),
        Some(trainable) => {
            let trainable = trainable || !builder.has(&format!("{name}.weight"));
            let (weight, _) = builder.optional(
                &format!("{name}.weight"),
                &[out_dim, in_dim],
                Init::Normal(std),
                trainable,
            )?;
            let (bias, _) =
                builder.optional(&format!("{name}.bias"), &[out_dim], Init::Zeros, trainable)?;
            (weight, bias)
        }
    };
    Ok(Linear {
        name: name.to_owned(),
        weight,
        bias,
        adapter: Adapter::None,
    })
}

impl Head {
    fn pooler_name(architecture: Architecture) -> &'static str {
        match architecture {
            Architecture::Bert => "pooler.dense",
            Architecture::DistilBert => "pre_classifier",
        }
    }

    fn forward(&self, hidden: &Tensor, mask: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let pooled = self.pool(hidden, mask, ctx)?;
        self.classify(&pooled, ctx)
    }

    /// The sentence vector `[batch, hidden]` the classifier reads (before its dropout).
    fn pool(&self, hidden: &Tensor, mask: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        Ok(match (self.pooling, &self.pooler) {
            (Pooling::Pooler, Some(pooler)) => {
                let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
                let dense = pooler.forward(&cls, ctx)?;
                match self.architecture {
                    Architecture::Bert => dense.tanh()?,
                    Architecture::DistilBert => dense.relu()?,
                }
            }
            _ => {
                let summed = hidden.broadcast_mul(&mask.unsqueeze(D::Minus1)?)?.sum(1)?;
                summed.broadcast_div(&mask.sum_keepdim(1)?)?
            }
        })
    }

    fn classify(&self, pooled: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let pooled = ctx.dropout(pooled)?;
        self.classifier.forward(&pooled, ctx)
    }
}

/// The metadata `Trainer::export` writes next to the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExportInfo {
    format: u32,
    num_labels: usize,
    pooling: Pooling,
    /// The size of the Houlsby adapters the weights carry (they cannot be merged); absent for
    /// every other method, so other exports keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adapter_size: Option<usize>,
}

const EXPORT_INFO: &str = "taper-classifier.json";
const EXPORT_FORMAT: u32 = 1;

/// The word rows of one training batch as a graph leaf, and where their gradient goes.
pub(crate) struct WordLeaf {
    ids: Vec<u32>,
    pub(crate) words: Var,
    vocab: usize,
    /// Index of the word-embedding table in [`ParamStore::vars`]; `None` when it is frozen.
    param_index: Option<usize>,
}

impl WordLeaf {
    /// The table's gradient `[vocab, hidden]` from the leaf's, if the leaf received one.
    fn table_gradient(&self, grads: &GradStore) -> Result<Option<Tensor>> {
        let Some(rows) = grads.get(self.words.as_tensor()) else {
            return Ok(None);
        };
        if kernels::fused(rows) {
            return Ok(Some(kernels::scatter_rows(&self.ids, rows, self.vocab)?));
        }
        // Other devices: candle's own scatter (what `index_select`'s backward does).
        let hidden = rows.dim(D::Minus1)?;
        let rows = rows.reshape(((), hidden))?;
        let ids = Tensor::from_slice(&self.ids, self.ids.len(), rows.device())?;
        Ok(Some(
            Tensor::zeros((self.vocab, hidden), rows.dtype(), rows.device())?
                .index_add(&ids, &rows, 0)?,
        ))
    }
}

/// An encoder with a classification head and the fine-tuning method applied.
pub struct Classifier {
    encoder: Encoder,
    head: Head,
    params: ParamStore,
    report: LoadReport,
    num_labels: usize,
    device: Device,
    /// Dropout while training (`Configure::dropout`).
    pub(crate) dropout: f64,
    /// The pretrained directory, whose tokenizer files an export copies.
    source_dir: PathBuf,
}

impl Classifier {
    /// Builds a classifier from a pretrained directory (`config.json` + `model.safetensors`),
    /// applying `configure.method`, `pooling` and `dropout`; new parameters (the head,
    /// adapters) are initialised from `configure.seed`.
    pub fn new(
        pretrained_dir: &Path,
        num_labels: usize,
        configure: &Configure,
        device: DeviceChoice,
    ) -> Result<Self> {
        if num_labels == 0 {
            return Err(MlError::BadMethod {
                reason: "a classifier needs at least one label".to_owned(),
            });
        }
        let config = EncoderConfig::from_file(&pretrained_dir.join("config.json"))?;
        let device = device.device();
        let source = WeightSource::load(&pretrained_dir.join("model.safetensors"), &device)?;
        let (plan, pooler_trainable) = plan_for(&config, &configure.method)?;
        let mut builder = ParamBuilder::new(source, configure.seed, &device);
        let encoder = Encoder::new(&config, &mut builder, &plan)?;
        let head = build_head(
            &config,
            &mut builder,
            configure.pooling,
            num_labels,
            Some(pooler_trainable),
        )?;
        let (params, report) = builder.finish()?;
        Ok(Self {
            encoder,
            head,
            params,
            report,
            num_labels,
            device,
            dropout: configure.dropout,
            source_dir: pretrained_dir.to_path_buf(),
        })
    }

    /// Rebuilds, for inference, a classifier written by `Trainer::export` / [`Classifier::export`].
    pub fn load_trained(dir: &Path, device: DeviceChoice) -> Result<Self> {
        let info_path = dir.join(EXPORT_INFO);
        let text = std::fs::read_to_string(&info_path).map_err(io_error(&info_path))?;
        let info: ExportInfo = serde_json::from_str(&text).map_err(|source| MlError::Json {
            path: info_path.clone(),
            source,
        })?;
        if info.format != EXPORT_FORMAT {
            return Err(MlError::BadExport {
                path: dir.to_path_buf(),
                reason: format!("format {} (this taper reads {EXPORT_FORMAT})", info.format),
            });
        }
        Self::load_frozen(
            dir,
            info.num_labels,
            info.pooling,
            info.adapter_size,
            device,
        )
    }

    /// A frozen, inference-only classifier from `dir`'s `config.json` and `model.safetensors`
    /// (tensor names normalised, so both taper's export and a HF checkpoint load), with Houlsby
    /// adapters of `adapter_size` from the same file: the one loading path of
    /// [`Self::load_trained`] and [`Self::load_hf`].
    pub(crate) fn load_frozen(
        dir: &Path,
        num_labels: usize,
        pooling: Pooling,
        adapter_size: Option<usize>,
        device: DeviceChoice,
    ) -> Result<Self> {
        let config = EncoderConfig::from_file(&dir.join("config.json"))?;
        let device = device.device();
        let source = WeightSource::load(&dir.join("model.safetensors"), &device)?;
        let plan = EncoderPlan {
            embeddings_trainable: false,
            layers_trainable: vec![false; config.num_hidden_layers],
            adapter: AdapterSpec::None,
            bottleneck: adapter_size.map(|size| BottleneckSpec { size, train: false }),
        };
        let mut builder = ParamBuilder::new(source, 0, &device);
        let encoder = Encoder::new(&config, &mut builder, &plan)?;
        let head = build_head(&config, &mut builder, pooling, num_labels, None)?;
        let (params, report) = builder.finish()?;
        Ok(Self {
            encoder,
            head,
            params,
            report,
            num_labels,
            device,
            dropout: 0.0,
            source_dir: dir.to_path_buf(),
        })
    }

    /// How the head pools the encoder's states.
    pub fn pooling(&self) -> Pooling {
        self.head.pooling
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    pub fn config(&self) -> &EncoderConfig {
        self.encoder.config()
    }

    pub fn trainable_parameters(&self) -> usize {
        self.params.trainable_parameters()
    }

    pub fn total_parameters(&self) -> usize {
        self.params.total_parameters()
    }

    /// Names of the trainable parameters, sorted.
    pub fn trainable_names(&self) -> Vec<String> {
        self.params.names().map(str::to_owned).collect()
    }

    /// Copies of the current values of the trainable parameters, sorted by name. Copies,
    /// because the optimizer updates weights in place: a view taken before a step would show
    /// the weights after it.
    pub fn trainable_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.params
            .vars
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_detached_tensor().copy()?)))
            .collect()
    }

    /// What the load initialised freshly and which tensors of the file went unused.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// `"cpu"` or `"cuda:N"`.
    pub fn device_name(&self) -> String {
        match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    pub(crate) fn params(&self) -> &ParamStore {
        &self.params
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Sets the inference arithmetic. `Int8` applies on the CPU only (the int8 kernels are
    /// CPU kernels); returns whether the classifier now runs at `precision`.
    pub fn set_precision(&mut self, precision: Precision) -> Result<bool> {
        match precision {
            Precision::F32 => {
                self.encoder.drop_int8();
                Ok(true)
            }
            Precision::Int8 if self.device.is_cpu() => {
                self.encoder.quantize_int8()?;
                Ok(true)
            }
            Precision::Int8 => Ok(false),
        }
    }

    /// The inference arithmetic in use.
    pub fn precision(&self) -> Precision {
        if self.encoder.is_int8() {
            Precision::Int8
        } else {
            Precision::F32
        }
    }

    fn check_ids(&self, batch: &Batch) -> Result<()> {
        let vocab = self.encoder.config.vocab_size;
        if let Some(id) = batch.input_ids.iter().find(|id| **id as usize >= vocab) {
            return Err(MlError::BadBatch {
                reason: format!("token id {id} is outside the vocabulary of {vocab}"),
            });
        }
        Ok(())
    }

    /// Logits `[batch, num_labels]` as a tensor.
    pub fn forward(&self, batch: &Batch, ctx: &mut Ctx) -> Result<Tensor> {
        self.check_ids(batch)?;
        let input_ids = batch.input_ids(&self.device)?;
        let mask = batch.attention_mask(&self.device)?;
        let embeddings = self.encoder.embed(&input_ids, ctx)?;
        self.forward_embeddings(&embeddings, &mask, ctx)
    }

    /// The training forward pass. When the word embeddings train on a fused device, their
    /// rows are looked up outside the graph and made a leaf ([`WordLeaf`]): the caller turns
    /// the leaf's gradient into the table's (see `kernels/embedding.rs` for why).
    pub(crate) fn forward_training(
        &self,
        batch: &Batch,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Option<WordLeaf>)> {
        if self.word_table_index().is_none() || !kernels::fused(self.encoder.word_table()) {
            return Ok((self.forward(batch, ctx)?, None));
        }
        let leaf = self.word_leaf(batch, &self.batch_words(batch)?)?;
        let logits = self.forward_words(batch, leaf.words.as_tensor(), ctx)?;
        Ok((logits, Some(leaf)))
    }

    /// Index of the word-embedding table in the trainable parameters, when it trains.
    fn word_table_index(&self) -> Option<usize> {
        let table = self.encoder.word_table();
        self.params
            .vars
            .iter()
            .position(|(_, var)| var.as_tensor().id() == table.id())
    }

    /// The word rows `[batch, t, hidden]` of `batch`, outside the graph: what adversarial
    /// training perturbs.
    pub(crate) fn batch_words(&self, batch: &Batch) -> Result<Tensor> {
        self.check_ids(batch)?;
        Ok(self
            .encoder
            .word_embeddings(&batch.input_ids(&self.device)?)?
            .detach())
    }

    /// `words` (rows of `batch`, possibly perturbed) as a graph leaf.
    pub(crate) fn word_leaf(&self, batch: &Batch, words: &Tensor) -> Result<WordLeaf> {
        Ok(WordLeaf {
            ids: batch.input_ids.clone(),
            words: Var::from_tensor(words)?,
            vocab: self.encoder.config.vocab_size,
            param_index: self.word_table_index(),
        })
    }

    /// Logits of `batch` from its word rows `words` `[batch, t, hidden]`.
    pub(crate) fn forward_words(
        &self,
        batch: &Batch,
        words: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let mask = batch.attention_mask(&self.device)?;
        let embeddings = self.encoder.embed_words(words, ctx)?;
        self.forward_embeddings(&embeddings, &mask, ctx)
    }

    /// [`Classifier::forward_words`] that also gives the sentence vectors `[batch, hidden]`
    /// the head classified (what `consistency` with `term: cosine` compares).
    pub(crate) fn forward_words_pooled(
        &self,
        batch: &Batch,
        words: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Tensor)> {
        let mask = batch.attention_mask(&self.device)?;
        let embeddings = self.encoder.embed_words(words, ctx)?;
        let hidden = self.encoder.forward_embeddings(&embeddings, &mask, ctx)?;
        let pooled = self.head.pool(&hidden, &mask, ctx)?;
        let logits = self.head.classify(&pooled, ctx)?;
        Ok((pooled, logits))
    }

    /// Per-parameter gradients (in [`ParamStore::vars`] order) from one backward pass; the
    /// word table's is the sum of what `leaves` received, for a pass that read its words from
    /// leaves (two with `consistency`: the clean batch's and the perturbed batch's).
    pub(crate) fn gradients(
        &self,
        grads: &GradStore,
        leaves: &[&WordLeaf],
    ) -> Result<Vec<Option<Tensor>>> {
        let mut per_var: Vec<Option<Tensor>> = self
            .params
            .vars
            .iter()
            .map(|(_, var)| grads.get(var.as_tensor()).cloned())
            .collect();
        // (the table's index, the sum so far), once a leaf of a trainable table was seen.
        let mut table: Option<(usize, Option<Tensor>)> = None;
        for leaf in leaves {
            let Some(index) = leaf.param_index else {
                continue;
            };
            let gradient = leaf.table_gradient(grads)?;
            let sum = match (table.take().and_then(|(_, sum)| sum), gradient) {
                (Some(sum), Some(gradient)) => Some((sum + gradient)?),
                (sum, gradient) => sum.or(gradient),
            };
            table = Some((index, sum));
        }
        if let Some((index, sum)) = table {
            if let Some(slot) = per_var.get_mut(index) {
                *slot = sum;
            }
        }
        Ok(per_var)
    }

    /// The rest of the model from token embeddings `[batch, t, hidden]` (see
    /// [`Encoder::embed`]) and a mask `[batch, t]`: logits `[batch, num_labels]`. For
    /// gradients w.r.t. the embeddings, wrap them in a `Var` and pass a differentiable `Ctx`.
    pub fn forward_embeddings(
        &self,
        embeddings: &Tensor,
        mask: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let hidden = self.encoder.forward_embeddings(embeddings, mask, ctx)?;
        self.head.forward(&hidden, mask, ctx)
    }

    /// Inference logits, one row per sequence.
    pub fn logits(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let logits = self.forward(batch, &mut Ctx::inference())?;
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// Inference class probabilities (softmax of [`Self::logits`]), one row per sequence: the
    /// one definition `train`'s validation, `evaluate` and any later consumer share.
    pub fn probabilities(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        Ok(self.logits(batch)?.iter().map(|row| softmax(row)).collect())
    }

    /// Inference logits plus each layer's attention probabilities `[batch, heads, t, t]`.
    pub fn logits_with_attentions(&self, batch: &Batch) -> Result<(Vec<Vec<f32>>, Vec<Tensor>)> {
        let mut ctx = Ctx {
            attentions: Some(Vec::new()),
            ..Ctx::inference()
        };
        let logits = self.forward(batch, &mut ctx)?;
        Ok((logits.to_vec2::<f32>()?, ctx.attentions.unwrap_or_default()))
    }

    /// Every tensor of encoder and head under its HF name, without adapters (with `merge`,
    /// adapters are folded in). Tests use it to check that frozen weights keep their bytes.
    /// Trainable ones are views of live weights, which the optimizer updates in place: read
    /// them before the next training step.
    pub fn base_tensors(&self, merge: bool) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = self.encoder.base_tensors(merge)?;
        for linear in self.head.pooler.iter().chain([&self.head.classifier]) {
            tensors.push((format!("{}.weight", linear.name), linear.weight.detach()));
            tensors.push((format!("{}.bias", linear.name), linear.bias.detach()));
        }
        Ok(tensors)
    }

    /// Writes plain weights (adapters merged in), `config.json`, the head metadata and the
    /// pretrained directory's tokenizer files into `dir`, for [`Classifier::load_trained`].
    pub fn export(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let map: std::collections::HashMap<String, Tensor> = self
            .base_tensors(true)?
            .into_iter()
            .chain(self.encoder.bottleneck_tensors())
            .collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, self.encoder.config.to_hf_json())
            .map_err(io_error(&config_path))?;
        for name in [
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            let from = self.source_dir.join(name);
            if from.is_file() && self.source_dir != dir {
                let to = dir.join(name);
                std::fs::copy(&from, &to).map_err(io_error(&to))?;
            }
        }
        // Written last: its presence marks a complete export.
        let info = ExportInfo {
            format: EXPORT_FORMAT,
            num_labels: self.num_labels,
            pooling: self.head.pooling,
            adapter_size: self.encoder.bottleneck_size(),
        };
        let info_path = dir.join(EXPORT_INFO);
        let text = serde_json::to_string_pretty(&info).map_err(|source| MlError::Json {
            path: info_path.clone(),
            source,
        })?;
        std::fs::write(&info_path, text).map_err(io_error(&info_path))
    }
}

fn build_head(
    config: &EncoderConfig,
    builder: &mut ParamBuilder,
    pooling: Pooling,
    num_labels: usize,
    pooler_trainable: Option<bool>,
) -> Result<Head> {
    let h = config.hidden_size;
    let std = config.initializer_range;
    let pooler = match pooling {
        Pooling::Pooler => Some(head_linear(
            builder,
            Head::pooler_name(config.architecture),
            h,
            h,
            std,
            pooler_trainable,
        )?),
        Pooling::Mean => None,
    };
    // The classifier always trains when it is being fine-tuned.
    let classifier = head_linear(
        builder,
        "classifier",
        h,
        num_labels,
        std,
        pooler_trainable.map(|_| true),
    )?;
    Ok(Head {
        pooling,
        pooler,
        classifier,
        architecture: config.architecture,
    })
}

/// The encoder plan of a method, and whether a pretrained pooler trains.
fn plan_for(config: &EncoderConfig, method: &Method) -> Result<(EncoderPlan, bool)> {
    let layers = config.num_hidden_layers;
    let check_targets = |targets: &[String]| -> Result<()> {
        if targets.is_empty() {
            return Err(MlError::BadMethod {
                reason: "the adapter has no target modules".to_owned(),
            });
        }
        let modules = linear_module_names(config);
        for target in targets {
            if !modules.iter().any(|m| matches_target(m, target)) {
                let mut available: Vec<String> = modules
                    .iter()
                    .filter_map(|m| m.splitn(4, '.').nth(3).map(str::to_owned))
                    .collect();
                available.sort();
                available.dedup();
                return Err(MlError::UnmatchedTarget {
                    target: target.clone(),
                    available: available.join(", "),
                });
            }
        }
        Ok(())
    };
    // The parameter-efficient methods: the encoder and a pretrained pooler stay frozen; only
    // the method's adapters and the classifier train.
    let frozen_with = |adapter: AdapterSpec, bottleneck: Option<BottleneckSpec>| {
        (
            EncoderPlan {
                embeddings_trainable: false,
                layers_trainable: vec![false; layers],
                adapter,
                bottleneck,
            },
            false,
        )
    };
    Ok(match method {
        Method::Full => (
            EncoderPlan {
                embeddings_trainable: true,
                layers_trainable: vec![true; layers],
                adapter: AdapterSpec::None,
                bottleneck: None,
            },
            true,
        ),
        Method::Frozen { layers: frozen } => {
            let frozen = frozen.unwrap_or(layers);
            if frozen > layers {
                return Err(MlError::BadMethod {
                    reason: format!("cannot freeze {frozen} layers of a {layers}-layer encoder"),
                });
            }
            (
                EncoderPlan {
                    embeddings_trainable: false,
                    layers_trainable: (0..layers).map(|i| i >= frozen).collect(),
                    adapter: AdapterSpec::None,
                    bottleneck: None,
                },
                true,
            )
        }
        Method::Lora {
            r,
            alpha,
            dropout,
            targets,
        } => {
            if *r == 0 {
                return Err(MlError::BadMethod {
                    reason: "LoRA rank `r` must be positive".to_owned(),
                });
            }
            check_targets(targets)?;
            frozen_with(
                AdapterSpec::Lora {
                    r: *r,
                    alpha: *alpha,
                    dropout: *dropout,
                    targets: targets.clone(),
                },
                None,
            )
        }
        Method::Ia3 { targets } => {
            check_targets(targets)?;
            frozen_with(
                AdapterSpec::Ia3 {
                    targets: targets.clone(),
                },
                None,
            )
        }
        Method::Adalora(AdaLora {
            r,
            target_r,
            alpha,
            dropout,
            targets,
            ..
        }) => {
            if *r == 0 || *target_r == 0 || target_r > r {
                return Err(MlError::BadMethod {
                    reason: format!("AdaLoRA needs 1 ≤ `target_r` ≤ `r`, not {target_r} and {r}"),
                });
            }
            check_targets(targets)?;
            frozen_with(
                AdapterSpec::AdaLora {
                    r: *r,
                    alpha: *alpha,
                    dropout: *dropout,
                    targets: targets.clone(),
                },
                None,
            )
        }
        Method::Adapter { size } => {
            if *size == 0 {
                return Err(MlError::BadMethod {
                    reason: "the adapter `size` must be positive".to_owned(),
                });
            }
            frozen_with(
                AdapterSpec::None,
                Some(BottleneckSpec {
                    size: *size,
                    train: true,
                }),
            )
        }
    })
}

/// Numerically stable softmax of one row of logits (the max is subtracted first, so logits of
/// 1,000 do not overflow `exp`).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_normalized() {
        // Without subtracting the maximum, exp(1000) overflows to infinity and gives NaN.
        // 1000 + ln 2 rounds to the f32 grid (spacing 6e-5 there), hence the tolerance.
        let p = softmax(&[1000.0, 1000.0 + 2f32.ln()]);
        assert!(
            (p[0] - 1.0 / 3.0).abs() < 1e-4 && (p[1] - 2.0 / 3.0).abs() < 1e-4,
            "{p:?}"
        );
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn batch_pads_to_longest_and_masks_padding() {
        let batch = Batch::new(&[&[5, 6, 7], &[8]], &[1, 0], 0).expect("valid batch");
        assert_eq!(batch.tokens(), 3);
        assert_eq!(batch.input_ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(batch.mask, vec![1, 1, 1, 1, 0, 0]);
    }

    /// Validation accepts adapter targets from `model`'s list of module names; every module
    /// the encoders really have must be on it, under its full name and its last component.
    #[test]
    fn validation_knows_every_linear_module() {
        for config in [EncoderConfig::tiny_bert(), EncoderConfig::tiny_distilbert()] {
            for module in crate::ml::encoder::linear_module_names(&config) {
                let last = module.rsplit('.').next().unwrap_or_default();
                assert!(crate::model::stages::is_adapter_target(&module), "{module}");
                assert!(crate::model::stages::is_adapter_target(last), "{last}");
            }
        }
    }

    #[test]
    fn batch_rejects_bad_input() {
        assert!(Batch::new(&[], &[], 0).is_err());
        assert!(Batch::new(&[&[1]], &[1, 2], 0).is_err());
        assert!(Batch::new(&[&[1], &[]], &[], 0).is_err());
    }

    /// Int8 inference of both architectures, with LoRA adapters left unmerged: the logits stay
    /// within a few percent of f32's, switching back restores f32 exactly, and gradients
    /// (explanations) still flow through the f32 weights.
    #[test]
    fn int8_inference_is_close_to_f32_and_reversible() {
        use crate::ml::fixtures::{write_random_model, NameStyle};
        for (config, targets) in [
            (EncoderConfig::tiny_bert(), r#"["query","value"]"#),
            (EncoderConfig::tiny_distilbert(), r#"["q_lin","v_lin"]"#),
        ] {
            let base = tempfile::tempdir().expect("temp dir");
            write_random_model(base.path(), &config, 6, NameStyle::Plain).expect("model");
            let settings: Configure = serde_json::from_str(&format!(
                r#"{{"method":{{"name":"lora","r":2,"alpha":4,"targets":{targets}}}}}"#
            ))
            .expect("settings");
            let mut classifier =
                Classifier::new(base.path(), 3, &settings, DeviceChoice::Cpu).expect("load");
            let batch = Batch::new(&[&[2, 7, 9, 3], &[2, 11, 3]], &[], 0).expect("batch");
            let differentiable = |classifier: &Classifier| {
                let mut ctx = Ctx {
                    differentiable: true,
                    ..Ctx::inference()
                };
                let logits = classifier.forward(&batch, &mut ctx).expect("forward");
                logits
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("values")
            };
            let f32_logits = classifier.logits(&batch).expect("f32").concat();
            let f32_differentiable = differentiable(&classifier);
            assert!(classifier.set_precision(Precision::Int8).expect("quantize"));
            assert_eq!(classifier.precision(), Precision::Int8);
            let int8_logits = classifier.logits(&batch).expect("int8").concat();
            let scale = f32_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = f32_logits
                .iter()
                .zip(&int8_logits)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff > 0.0, "int8 must really run");
            assert!(
                diff < 0.05 * scale,
                "int8 logits off by {diff} (scale {scale})"
            );
            assert_eq!(
                differentiable(&classifier),
                f32_differentiable,
                "gradients take the f32 path"
            );
            classifier.set_precision(Precision::F32).expect("f32");
            assert_eq!(classifier.logits(&batch).expect("f32").concat(), f32_logits);
        }
    }
}
