use serde::{Deserialize, Serialize};

/// `kind: configure`: resolved training settings, validated as a whole (invalid combinations
/// are validation errors, not run-time surprises).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configure {
    #[serde(default)]
    pub method: Method,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub gradient_accumulation: usize,
    /// Fraction of the total optimizer steps spent warming up linearly from 0.
    #[serde(default)]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Global-norm gradient clipping; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    #[serde(default)]
    pub pooling: Pooling,
    /// Dropout probability of the encoder and head while training.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Save a resumable checkpoint every this many optimizer steps.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
}

fn default_learning_rate() -> f64 {
    5e-5
}
fn default_epochs() -> usize {
    1
}
fn default_batch_size() -> usize {
    16
}
fn one() -> usize {
    1
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_seed() -> u64 {
    42
}
fn default_dropout() -> f64 {
    0.1
}
fn default_checkpoint_every() -> usize {
    50
}

/// The fine-tuning method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Method {
    /// Every weight trains.
    #[default]
    Full,
    /// The bottom `layers` encoder layers (and embeddings) are frozen; all of them when absent
    /// (a linear probe: only the head trains).
    Frozen {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layers: Option<usize>,
    },
    /// LoRA with PEFT semantics: `W x + (alpha / r) · B A x`.
    Lora {
        #[serde(default = "default_rank")]
        r: usize,
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default)]
        dropout: f64,
        #[serde(default = "default_targets")]
        targets: Vec<String>,
    },
    /// IA3: learned rescaling vectors on keys, values and the feed-forward activations.
    Ia3 {
        #[serde(default = "default_ia3_targets")]
        targets: Vec<String>,
    },
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec!["query".to_owned(), "value".to_owned()]
}
fn default_ia3_targets() -> Vec<String> {
    vec![
        "key".to_owned(),
        "value".to_owned(),
        "output.dense".to_owned(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    #[default]
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// `[CLS]` → pooler dense + tanh → classifier, as HF `BertForSequenceClassification`.
    #[default]
    Pooler,
    /// Mean of the unpadded token states → classifier.
    Mean,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs without improvement of the validation loss before training stops.
    pub patience: usize,
    #[serde(default)]
    pub min_delta: f64,
}
