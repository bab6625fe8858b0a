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
/// HF Trainer's `save_steps` default. A MiniLM checkpoint (weights and both AdamW moments) is
/// ~270 MB and takes ~1 s to write; at 50 steps the quickstart's 125-step epoch spent 2 s of its
/// 34 writing checkpoints. Every epoch end still writes one.
fn default_checkpoint_every() -> usize {
    500
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

impl Configure {
    /// Invalid values and combinations, as `(field, message)` pairs; empty when valid. Called
    /// at validate time, so a bad setting fails before any stage runs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &'static str, message: &str| {
            if !ok {
                problems.push((field, message.to_owned()));
            }
        };
        check(
            self.learning_rate > 0.0 && self.learning_rate < 1.0,
            "learning_rate",
            "must be in (0, 1)",
        );
        check(self.epochs > 0, "epochs", "must be at least 1");
        check(self.batch_size > 0, "batch_size", "must be at least 1");
        check(
            self.gradient_accumulation > 0,
            "gradient_accumulation",
            "must be at least 1",
        );
        check(
            (0.0..1.0).contains(&self.warmup_ratio),
            "warmup_ratio",
            "must be in [0, 1)",
        );
        check(
            self.weight_decay >= 0.0,
            "weight_decay",
            "must not be negative",
        );
        check(
            self.max_grad_norm.is_none_or(|norm| norm > 0.0),
            "max_grad_norm",
            "must be positive",
        );
        check(
            (0.0..1.0).contains(&self.dropout),
            "dropout",
            "must be in [0, 1)",
        );
        check(
            self.checkpoint_every > 0,
            "checkpoint_every",
            "must be at least 1",
        );
        if let Some(early) = &self.early_stopping {
            check(
                early.patience > 0,
                "early_stopping.patience",
                "must be at least 1",
            );
            check(
                early.min_delta >= 0.0,
                "early_stopping.min_delta",
                "must not be negative",
            );
            check(
                self.epochs > 1,
                "early_stopping",
                "needs `epochs` above 1: it acts between epochs",
            );
        }
        match &self.method {
            Method::Full | Method::Frozen { .. } => {}
            Method::Lora {
                r,
                alpha,
                dropout,
                targets,
            } => {
                check(*r > 0, "method.r", "must be at least 1");
                check(*alpha > 0.0, "method.alpha", "must be positive");
                check(
                    (0.0..1.0).contains(dropout),
                    "method.dropout",
                    "must be in [0, 1)",
                );
                check(
                    !targets.is_empty(),
                    "method.targets",
                    "must name at least one layer",
                );
            }
            Method::Ia3 { targets } => {
                check(
                    !targets.is_empty(),
                    "method.targets",
                    "must name at least one layer",
                );
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Configure {
        serde_json::from_str("{}").expect("all fields have defaults")
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(valid().problems(), Vec::new());
    }

    #[test]
    fn each_rule_names_its_field() {
        type Case = (fn(&mut Configure), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.learning_rate = 0.0, "learning_rate"),
            (|c| c.epochs = 0, "epochs"),
            (|c| c.batch_size = 0, "batch_size"),
            (|c| c.gradient_accumulation = 0, "gradient_accumulation"),
            (|c| c.warmup_ratio = 1.0, "warmup_ratio"),
            (|c| c.weight_decay = -0.1, "weight_decay"),
            (|c| c.max_grad_norm = Some(0.0), "max_grad_norm"),
            (|c| c.dropout = 1.0, "dropout"),
            (|c| c.checkpoint_every = 0, "checkpoint_every"),
            (
                |c| {
                    c.epochs = 1;
                    c.early_stopping = Some(EarlyStopping {
                        patience: 2,
                        min_delta: 0.0,
                    });
                },
                "early_stopping",
            ),
            (
                |c| {
                    c.method = Method::Lora {
                        r: 0,
                        alpha: 16.0,
                        dropout: 0.0,
                        targets: vec!["query".into()],
                    }
                },
                "method.r",
            ),
            (
                |c| c.method = Method::Ia3 { targets: vec![] },
                "method.targets",
            ),
        ];
        for (mutate, field) in cases {
            let mut config = valid();
            mutate(&mut config);
            let fields: Vec<&str> = config.problems().iter().map(|(f, _)| *f).collect();
            assert_eq!(fields, [field]);
        }
    }
}
