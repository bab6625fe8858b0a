//! `EncoderConfig`: the architecture of a BERT-family encoder, read from a HuggingFace
//! `config.json` (BERT, MiniLM and other `bert` models, or `distilbert`).
//!
//! Both architectures are post-LayerNorm transformers with the same arithmetic; they differ in
//! tensor names and in DistilBERT having no token-type embeddings. The config is normalised
//! into one struct so the encoder code has one path; [`EncoderConfig::to_hf_json`] writes it
//! back in the architecture's own format.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{io_error, MlError, Result};

/// Which family of tensor names and head the weights use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Bert,
    DistilBert,
}

/// The feed-forward activation (`hidden_act` / `activation` in HF configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// The exact, erf-based GELU (HF `gelu`).
    Gelu,
    /// The tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

/// The normalised architecture of a BERT-family encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HfConfig", into = "HfConfig")]
pub struct EncoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    /// 0 for DistilBERT (no token-type embeddings).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub initializer_range: f64,
    /// Dropout of the pretrained model; training uses `model::Configure::dropout` instead.
    pub hidden_dropout_prob: f64,
}

impl EncoderConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        serde_json::from_str(&text).map_err(|error| MlError::BadConfig {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })
    }

    /// The HF `config.json` text of this architecture.
    pub fn to_hf_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .expect("a config of plain numbers and strings serializes")
    }

    /// Size of one attention head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// A tiny BERT for tests and demos (2 layers, hidden 32, 4 heads, vocabulary 100).
    pub fn tiny_bert() -> Self {
        Self {
            architecture: Architecture::Bert,
            vocab_size: 100,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            activation: Activation::Gelu,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            initializer_range: 0.02,
            hidden_dropout_prob: 0.1,
        }
    }

    /// The DistilBERT counterpart of [`EncoderConfig::tiny_bert`].
    pub fn tiny_distilbert() -> Self {
        Self {
            architecture: Architecture::DistilBert,
            type_vocab_size: 0,
            ..Self::tiny_bert()
        }
    }
}

/// The two on-disk shapes of a HF config; `distilbert` is recognised by its `dim`/`n_layers`
/// field names (listed first because untagged enums take the first match, and a BERT config
/// lacks those fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum HfConfig {
    DistilBert(HfDistilBert),
    Bert(HfBert),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HfBert {
    #[serde(default = "bert_type")]
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: u32,
    #[serde(default = "default_init")]
    initializer_range: f64,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HfDistilBert {
    model_type: String,
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "gelu")]
    activation: String,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: u32,
    #[serde(default = "default_init")]
    initializer_range: f64,
    #[serde(default = "default_dropout")]
    dropout: f64,
}

fn bert_type() -> String {
    "bert".to_owned()
}
fn gelu() -> String {
    "gelu".to_owned()
}
fn default_positions() -> usize {
    512
}
fn two() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init() -> f64 {
    0.02
}
fn default_dropout() -> f64 {
    0.1
}

fn activation(name: &str) -> Result<Activation, String> {
    match name {
        "gelu" => Ok(Activation::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(format!(
            "activation `{other}` is not supported (use `gelu`, `gelu_new` or `relu`)"
        )),
    }
}

fn activation_name(activation: Activation) -> String {
    match activation {
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_new",
        Activation::Relu => "relu",
    }
    .to_owned()
}

impl TryFrom<HfConfig> for EncoderConfig {
    type Error = String;

    fn try_from(raw: HfConfig) -> Result<Self, String> {
        let config = match raw {
            HfConfig::Bert(raw) => {
                if raw.model_type != "bert" {
                    return Err(format!(
                        "`model_type` is `{}`; only `bert` and `distilbert` are supported",
                        raw.model_type
                    ));
                }
                Self {
                    architecture: Architecture::Bert,
                    vocab_size: raw.vocab_size,
                    hidden_size: raw.hidden_size,
                    num_hidden_layers: raw.num_hidden_layers,
                    num_attention_heads: raw.num_attention_heads,
                    intermediate_size: raw.intermediate_size,
                    activation: activation(&raw.hidden_act)?,
                    max_position_embeddings: raw.max_position_embeddings,
                    type_vocab_size: raw.type_vocab_size,
                    layer_norm_eps: raw.layer_norm_eps,
                    pad_token_id: raw.pad_token_id,
                    initializer_range: raw.initializer_range,
                    hidden_dropout_prob: raw.hidden_dropout_prob,
                }
            }
            HfConfig::DistilBert(raw) => {
                if raw.model_type != "distilbert" {
                    return Err(format!(
                        "`model_type` is `{}` but the fields are DistilBERT's",
                        raw.model_type
                    ));
                }
                Self {
                    architecture: Architecture::DistilBert,
                    vocab_size: raw.vocab_size,
                    hidden_size: raw.dim,
                    num_hidden_layers: raw.n_layers,
                    num_attention_heads: raw.n_heads,
                    intermediate_size: raw.hidden_dim,
                    activation: activation(&raw.activation)?,
                    max_position_embeddings: raw.max_position_embeddings,
                    type_vocab_size: 0,
                    // DistilBERT hard-codes this epsilon in its LayerNorms.
                    layer_norm_eps: 1e-12,
                    pad_token_id: raw.pad_token_id,
                    initializer_range: raw.initializer_range,
                    hidden_dropout_prob: raw.dropout,
                }
            }
        };
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(format!(
                "hidden size {} is not a multiple of the {} attention heads",
                config.hidden_size, config.num_attention_heads
            ));
        }
        if config.vocab_size == 0 || config.num_hidden_layers == 0 {
            return Err("`vocab_size` and the number of layers must be positive".to_owned());
        }
        // A zero width leaves every linear layer with empty rows: the int8 kernel divides the
        // input into rows of that width, and nothing could be learned from it anyway.
        if config.hidden_size == 0 || config.intermediate_size == 0 {
            return Err("the hidden and intermediate sizes must be positive".to_owned());
        }
        Ok(config)
    }
}

impl From<EncoderConfig> for HfConfig {
    fn from(config: EncoderConfig) -> Self {
        match config.architecture {
            Architecture::Bert => HfConfig::Bert(HfBert {
                model_type: bert_type(),
                vocab_size: config.vocab_size,
                hidden_size: config.hidden_size,
                num_hidden_layers: config.num_hidden_layers,
                num_attention_heads: config.num_attention_heads,
                intermediate_size: config.intermediate_size,
                hidden_act: activation_name(config.activation),
                max_position_embeddings: config.max_position_embeddings,
                type_vocab_size: config.type_vocab_size,
                layer_norm_eps: config.layer_norm_eps,
                pad_token_id: config.pad_token_id,
                initializer_range: config.initializer_range,
                hidden_dropout_prob: config.hidden_dropout_prob,
            }),
            Architecture::DistilBert => HfConfig::DistilBert(HfDistilBert {
                model_type: "distilbert".to_owned(),
                vocab_size: config.vocab_size,
                dim: config.hidden_size,
                n_layers: config.num_hidden_layers,
                n_heads: config.num_attention_heads,
                hidden_dim: config.intermediate_size,
                activation: activation_name(config.activation),
                max_position_embeddings: config.max_position_embeddings,
                pad_token_id: config.pad_token_id,
                initializer_range: config.initializer_range,
                dropout: config.hidden_dropout_prob,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_minilm_style_bert_config() {
        let text = r#"{"architectures":["BertModel"],"attention_probs_dropout_prob":0.1,
            "hidden_act":"gelu","hidden_dropout_prob":0.1,"hidden_size":384,
            "initializer_range":0.02,"intermediate_size":1536,"layer_norm_eps":1e-12,
            "max_position_embeddings":512,"model_type":"bert","num_attention_heads":12,
            "num_hidden_layers":6,"pad_token_id":0,"type_vocab_size":2,"vocab_size":30522}"#;
        let config: EncoderConfig = serde_json::from_str(text).expect("valid config");
        assert_eq!(config.architecture, Architecture::Bert);
        assert_eq!(config.head_size(), 32);
        assert_eq!(config.activation, Activation::Gelu);
    }

    #[test]
    fn reads_distilbert_config() {
        let text = r#"{"model_type":"distilbert","vocab_size":30522,"dim":768,"n_layers":6,
            "n_heads":12,"hidden_dim":3072,"activation":"gelu","dropout":0.1}"#;
        let config: EncoderConfig = serde_json::from_str(text).expect("valid config");
        assert_eq!(config.architecture, Architecture::DistilBert);
        assert_eq!(config.hidden_size, 768);
        assert_eq!(config.type_vocab_size, 0);
    }

    #[test]
    fn round_trips_both_architectures() {
        for config in [EncoderConfig::tiny_bert(), EncoderConfig::tiny_distilbert()] {
            let back: EncoderConfig =
                serde_json::from_str(&config.to_hf_json()).expect("own output parses");
            assert_eq!(back, config);
        }
    }

    #[test]
    fn rejects_unknown_model_type_and_bad_heads() {
        let text = r#"{"model_type":"roberta","vocab_size":10,"hidden_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":8}"#;
        let error = serde_json::from_str::<EncoderConfig>(text).expect_err("roberta rejected");
        assert!(error.to_string().contains("roberta"), "{error}");
        let text = r#"{"model_type":"bert","vocab_size":10,"hidden_size":9,
            "num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":8}"#;
        let error = serde_json::from_str::<EncoderConfig>(text).expect_err("9 % 2 != 0");
        assert!(error.to_string().contains("multiple"), "{error}");
        for (hidden, intermediate) in [(0, 8), (8, 0)] {
            let text = format!(
                r#"{{"model_type":"bert","vocab_size":10,"hidden_size":{hidden},
                "num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":{intermediate}}}"#
            );
            let error = serde_json::from_str::<EncoderConfig>(&text).expect_err("zero width");
            assert!(error.to_string().contains("must be positive"), "{error}");
        }
    }
}
