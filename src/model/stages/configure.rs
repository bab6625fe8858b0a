use serde::{Deserialize, Serialize};

use super::techniques::{check, technique_problems, Adversarial, Consistency, Distillation, RDrop};

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
    /// Training techniques (`techniques.rs`); each absent by default, so that it changes no
    /// existing stage key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_smoothing: Option<f64>,
    /// Layer-wise learning-rate decay: the head trains at the full rate, the layer below at
    /// `decay` times it, and so on down to the embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_decay: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdrop: Option<RDrop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// Subword dropout (BPE-dropout for WordPiece): every epoch each word piece of the train
    /// split splits, with this probability, into smaller pieces of the vocabulary that spell
    /// it (the `data` layer's `subword` module does the splitting, in `train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subword_dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial: Option<Adversarial>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<Distillation>,
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

/// The fine-tuning method. Serialized as a tagged block (`{ name: lora, r: 8, … }`, part of
/// the stage key); read through `MethodSettings` so that every wrong value in the block is
/// reported at its own place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(
    tag = "name",
    rename_all = "kebab-case",
    deny_unknown_fields,
    try_from = "MethodSettings"
)]
pub enum Method {
    /// Every weight trains.
    #[default]
    Full,
    /// The bottom `layers` encoder layers (and embeddings) are frozen; all of them when absent
    /// (a linear probe: only the head trains).
    Frozen {
        #[serde(skip_serializing_if = "Option::is_none")]
        layers: Option<usize>,
    },
    /// LoRA with PEFT semantics: `W x + (alpha / r) · B A x`.
    Lora {
        r: usize,
        alpha: f64,
        dropout: f64,
        targets: Vec<String>,
    },
    /// IA3: learned rescaling vectors on keys, values and the feed-forward activations.
    Ia3 { targets: Vec<String> },
    /// Houlsby bottleneck adapters: `x + up(relu(down(x)))` with `down: hidden → size`, after
    /// the attention output and after the feed-forward output of every layer; `up` starts at
    /// zero, so training starts from the base model. Only the adapters and the head train.
    Adapter { size: usize },
    /// AdaLoRA (Zhang et al. 2023, PEFT semantics): `W x + (alpha / r) · B (E ⊙ A) x` with the
    /// singular values `E` starting at zero, an orthogonality penalty on `A` and `B`, and a
    /// total rank budget pruned from `r` to `target_r` per module on a cubic schedule between
    /// `tinit` and the last `tfinal` optimizer steps, by EMA-smoothed sensitivity scores.
    Adalora(AdaLora),
}

/// The settings of [`Method::Adalora`]: one struct that `ml`'s rank allocator reads as it is
/// (a copy of these fields there drifted from this one once).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaLora {
    /// The initial rank of every module.
    pub r: usize,
    /// The average rank per module left after pruning.
    pub target_r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    /// Weight of the orthogonality penalty on `A` and `B`.
    pub orth_reg: f64,
    /// EMA factors of the sensitivity and of its uncertainty.
    pub beta1: f64,
    pub beta2: f64,
    /// Optimizer steps at the full budget before pruning starts.
    pub tinit: usize,
    /// Final optimizer steps at the target budget, with the rank pattern fixed.
    pub tfinal: usize,
    /// Optimizer steps between two budget reallocations.
    pub delta_t: usize,
}

/// `method:` as written: one flat block. serde reads an internally tagged enum by buffering
/// the block without its spans, and stops at the first wrong value, which it could then only
/// place at `method:`; read as a struct, each setting is a value of its own, and validation
/// reports every wrong one where it is written. Settings of another method are refused when
/// the block becomes a [`Method`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodSettings {
    name: MethodName,
    layers: Option<usize>,
    r: Option<usize>,
    alpha: Option<f64>,
    dropout: Option<f64>,
    targets: Option<Vec<String>>,
    size: Option<usize>,
    target_r: Option<usize>,
    orth_reg: Option<f64>,
    beta1: Option<f64>,
    beta2: Option<f64>,
    tinit: Option<usize>,
    tfinal: Option<usize>,
    delta_t: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MethodName {
    Full,
    Frozen,
    Lora,
    Ia3,
    Adapter,
    Adalora,
}

impl MethodName {
    fn as_str(self) -> &'static str {
        match self {
            MethodName::Full => "full",
            MethodName::Frozen => "frozen",
            MethodName::Lora => "lora",
            MethodName::Ia3 => "ia3",
            MethodName::Adapter => "adapter",
            MethodName::Adalora => "adalora",
        }
    }

    /// The settings this method takes besides `name`.
    fn settings(self) -> &'static [&'static str] {
        match self {
            MethodName::Full => &[],
            MethodName::Frozen => &["layers"],
            MethodName::Lora => &["r", "alpha", "dropout", "targets"],
            MethodName::Ia3 => &["targets"],
            MethodName::Adapter => &["size"],
            MethodName::Adalora => &[
                "r", "target_r", "alpha", "dropout", "targets", "orth_reg", "beta1", "beta2",
                "tinit", "tfinal", "delta_t",
            ],
        }
    }
}

impl TryFrom<MethodSettings> for Method {
    type Error = String;

    fn try_from(block: MethodSettings) -> Result<Method, String> {
        let MethodSettings {
            name,
            layers,
            r,
            alpha,
            dropout,
            targets,
            size,
            target_r,
            orth_reg,
            beta1,
            beta2,
            tinit,
            tfinal,
            delta_t,
        } = block;
        let given = [
            ("layers", layers.is_some()),
            ("r", r.is_some()),
            ("alpha", alpha.is_some()),
            ("dropout", dropout.is_some()),
            ("targets", targets.is_some()),
            ("size", size.is_some()),
            ("target_r", target_r.is_some()),
            ("orth_reg", orth_reg.is_some()),
            ("beta1", beta1.is_some()),
            ("beta2", beta2.is_some()),
            ("tinit", tinit.is_some()),
            ("tfinal", tfinal.is_some()),
            ("delta_t", delta_t.is_some()),
        ];
        let foreign: Vec<String> = given
            .iter()
            .filter(|(setting, present)| *present && !name.settings().contains(setting))
            .map(|(setting, _)| format!("`{setting}`"))
            .collect();
        if !foreign.is_empty() {
            let takes = match name.settings() {
                [] => "no other settings".to_owned(),
                settings => settings
                    .iter()
                    .map(|setting| format!("`{setting}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let what = match foreign.as_slice() {
                [one] => format!("{one} is not a setting"),
                many => format!("{} are not settings", many.join(", ")),
            };
            return Err(format!(
                "{what} of method `{}` (it takes {takes})",
                name.as_str()
            ));
        }
        Ok(match name {
            MethodName::Full => Method::Full,
            MethodName::Frozen => Method::Frozen { layers },
            MethodName::Lora => Method::Lora {
                r: r.unwrap_or_else(default_rank),
                alpha: alpha.unwrap_or_else(default_alpha),
                dropout: dropout.unwrap_or_default(),
                targets: targets.unwrap_or_else(default_targets),
            },
            MethodName::Ia3 => Method::Ia3 {
                targets: targets.unwrap_or_else(default_ia3_targets),
            },
            MethodName::Adapter => Method::Adapter {
                size: size.unwrap_or_else(default_adapter_size),
            },
            // PEFT's `AdaLoraConfig` defaults, but `alpha` as taper's LoRA (PEFT: 8).
            MethodName::Adalora => Method::Adalora(AdaLora {
                r: r.unwrap_or(12),
                target_r: target_r.unwrap_or(8),
                alpha: alpha.unwrap_or_else(default_alpha),
                dropout: dropout.unwrap_or_default(),
                targets: targets.unwrap_or_else(default_targets),
                orth_reg: orth_reg.unwrap_or(0.5),
                beta1: beta1.unwrap_or(0.85),
                beta2: beta2.unwrap_or(0.85),
                tinit: tinit.unwrap_or_default(),
                tfinal: tfinal.unwrap_or_default(),
                delta_t: delta_t.unwrap_or(1),
            }),
        })
    }
}

/// Houlsby et al. (2019) report sizes 8 to 256 on BERT-base; 64 is their usual choice.
fn default_adapter_size() -> usize {
    64
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

/// One invalid value or combination of a [`Configure`]: the setting's path under `with:`
/// (`method.targets.1`), what is wrong, a short label for the value and how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub field: String,
    pub message: String,
    pub label: &'static str,
    pub help: String,
}

/// The per-layer linear modules of the encoders taper loads, below `<prefix>.layer.<n>`: what a
/// LoRA or IA3 `targets` entry may name (a suffix of a full module name, as PEFT matches).
/// `ml::encoder` builds the same names; its tests check that every one is accepted here.
const ADAPTER_MODULES: [(&str, [&str; 6]); 2] = [
    (
        "encoder",
        [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ],
    ),
    (
        "transformer",
        [
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "ffn.lin1",
            "ffn.lin2",
        ],
    ),
];

/// Whether `target` names a linear module of some supported encoder: it equals the end of a
/// full module name (`query`, `self.query`, `encoder.layer.0.attention.self.query`), whole
/// components only, any layer number.
pub fn is_adapter_target(target: &str) -> bool {
    let wanted: Vec<&str> = target.split('.').collect();
    ADAPTER_MODULES.iter().any(|(prefix, modules)| {
        modules.iter().any(|module| {
            let full: Vec<&str> = [*prefix, "layer", "#"]
                .into_iter()
                .chain(module.split('.'))
                .collect();
            full.len() >= wanted.len()
                && full[full.len() - wanted.len()..]
                    .iter()
                    .zip(&wanted)
                    .all(|(part, given)| {
                        part == given
                            || (*part == "#"
                                && !given.is_empty()
                                && given.bytes().all(|byte| byte.is_ascii_digit()))
                    })
        })
    })
}

/// Short names for did-you-mean: the last component of every adapter module, and the last two.
fn adapter_target_names() -> Vec<String> {
    let mut names: Vec<String> = ADAPTER_MODULES
        .iter()
        .flat_map(|(_, modules)| modules.iter())
        .flat_map(|module| {
            let parts: Vec<&str> = module.split('.').collect();
            [
                parts[parts.len() - 1].to_owned(),
                parts[parts.len() - 2..].join("."),
            ]
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

impl Configure {
    /// Invalid values and combinations; empty when valid. The one owner of these rules:
    /// validation reports each at its setting (so a bad setting fails before any stage runs),
    /// and the `configure` runner refuses settings that did not go through validation.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &str, message: &str, label: &'static str, help: &str| {
            check(&mut problems, ok, field, message, label, help);
        };
        // Written so that NaN fails every check: `!(x >= 0.0)` and not `x < 0.0`.
        let fraction = |value: f64| (0.0..1.0).contains(&value);
        check(
            self.learning_rate > 0.0 && self.learning_rate < 1.0,
            "learning_rate",
            "must be in (0, 1)",
            "out of range",
            "typical values are 1e-5 to 5e-4",
        );
        for (field, value) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("gradient_accumulation", self.gradient_accumulation),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            check(
                value > 0,
                field,
                "must be at least 1",
                "zero",
                "use 1 or more",
            );
        }
        for (field, value) in [
            ("warmup_ratio", self.warmup_ratio),
            ("dropout", self.dropout),
        ] {
            check(
                fraction(value),
                field,
                "must be in [0, 1)",
                "out of range",
                "a fraction such as 0.1",
            );
        }
        check(
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            "weight_decay",
            "must be a finite number ≥ 0",
            "out of range",
            "typical values are 0 to 0.1",
        );
        check(
            self.max_grad_norm
                .is_none_or(|norm| norm > 0.0 && norm.is_finite()),
            "max_grad_norm",
            "must be a finite positive number",
            "out of range",
            "1.0 is typical; leave it out for no clipping",
        );
        if let Some(early) = &self.early_stopping {
            check(
                early.patience > 0,
                "early_stopping.patience",
                "must be at least 1",
                "zero",
                "the epochs without improvement to wait, e.g. 2",
            );
            check(
                early.min_delta >= 0.0 && early.min_delta.is_finite(),
                "early_stopping.min_delta",
                "must be a finite number ≥ 0",
                "out of range",
                "the smallest loss improvement that counts, e.g. 0.001",
            );
            check(
                self.epochs > 1,
                "early_stopping",
                "needs `epochs` above 1: it acts between epochs",
                "needs several epochs",
                "raise `epochs`, or remove `early_stopping`",
            );
        }
        let targets = match &self.method {
            Method::Full | Method::Frozen { .. } => None,
            Method::Lora {
                r,
                alpha,
                dropout,
                targets,
            } => {
                check(
                    *r > 0,
                    "method.r",
                    "the LoRA rank must be at least 1",
                    "zero rank",
                    "typical ranks are 4 to 16",
                );
                check(
                    *alpha > 0.0 && alpha.is_finite(),
                    "method.alpha",
                    "must be a finite positive number",
                    "out of range",
                    "PEFT's default is 2 × `r`, e.g. 16",
                );
                check(
                    fraction(*dropout),
                    "method.dropout",
                    "must be in [0, 1)",
                    "out of range",
                    "a fraction such as 0.05",
                );
                Some(targets)
            }
            Method::Ia3 { targets } => Some(targets),
            Method::Adalora(AdaLora {
                r,
                target_r,
                alpha,
                dropout,
                targets,
                orth_reg,
                beta1,
                beta2,
                delta_t,
                ..
            }) => {
                check(
                    *r > 0,
                    "method.r",
                    "the initial AdaLoRA rank must be at least 1",
                    "zero rank",
                    "PEFT's default is 12",
                );
                check(
                    *target_r > 0 && target_r <= r,
                    "method.target_r",
                    &format!("must be from 1 to `r` ({r})"),
                    "out of range",
                    "the average rank left per module after pruning, below `r`: e.g. `r: 12, target_r: 8`",
                );
                check(
                    *alpha > 0.0 && alpha.is_finite(),
                    "method.alpha",
                    "must be a finite positive number",
                    "out of range",
                    "the update is scaled by `alpha / r`, e.g. 16",
                );
                check(
                    fraction(*dropout),
                    "method.dropout",
                    "must be in [0, 1)",
                    "out of range",
                    "a fraction such as 0.05",
                );
                check(
                    *orth_reg >= 0.0 && orth_reg.is_finite(),
                    "method.orth_reg",
                    "must be a finite number ≥ 0",
                    "out of range",
                    "the weight of the orthogonality penalty; PEFT's default is 0.5",
                );
                for (field, beta) in [("method.beta1", beta1), ("method.beta2", beta2)] {
                    check(
                        fraction(*beta),
                        field,
                        "must be in [0, 1)",
                        "out of range",
                        "an EMA factor of the importance scores; PEFT's default is 0.85",
                    );
                }
                check(
                    *delta_t > 0,
                    "method.delta_t",
                    "must be at least 1",
                    "zero",
                    "optimizer steps between two budget reallocations, e.g. 1 or 10",
                );
                Some(targets)
            }
            Method::Adapter { size } => {
                check(
                    *size > 0,
                    "method.size",
                    "the adapter's bottleneck size must be at least 1",
                    "zero size",
                    "typical sizes are 16 to 64, below the hidden size",
                );
                None
            }
        };
        if let Some(targets) = targets {
            check(
                !targets.is_empty(),
                "method.targets",
                "must name at least one layer",
                "no targets",
                "e.g. `targets: [query, value]`",
            );
            let names = adapter_target_names();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            for (index, target) in targets.iter().enumerate() {
                check(
                    is_adapter_target(target),
                    &format!("method.targets.{index}"),
                    &format!("`{target}` is not a linear module of a supported encoder"),
                    "unknown module",
                    &crate::spec::suggestion_help(target, &names, "module"),
                );
            }
        }
        technique_problems(self, &mut problems);
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_targets_match_whole_trailing_components() {
        for known in [
            "query",
            "value",
            "self.query",
            "dense",
            "output.dense",
            "attention.output.dense",
            "encoder.layer.3.attention.self.key",
            "layer.11.output.dense",
            "q_lin",
            "ffn.lin2",
        ] {
            assert!(is_adapter_target(known), "{known}");
        }
        for unknown in [
            "quer",
            "uery",
            "",
            "layer",
            "self",
            "query.self",
            "layer.x.output.dense",
            "ffn.lin3",
        ] {
            assert!(!is_adapter_target(unknown), "{unknown}");
        }
    }

    #[test]
    fn an_unknown_target_suggests_the_closest() {
        let mut config = valid();
        config.method = Method::Lora {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec!["quer".into()],
        };
        let problems = config.problems();
        assert_eq!(problems[0].help, "did you mean `query`?");
    }

    #[test]
    fn adapter_takes_a_size_only_and_defaults_it() {
        let method = |json: &str| serde_json::from_str::<Method>(json).map_err(|e| e.to_string());
        assert_eq!(
            method(r#"{"name":"adapter"}"#),
            Ok(Method::Adapter { size: 64 })
        );
        assert_eq!(
            method(r#"{"name":"adapter","size":16}"#),
            Ok(Method::Adapter { size: 16 })
        );
        let foreign = method(r#"{"name":"adapter","r":4}"#).expect_err("`r` is LoRA's");
        assert!(
            foreign.contains("`r` is not a setting of method `adapter` (it takes `size`)"),
            "{foreign}"
        );
        assert!(method(r#"{"name":"lora","size":4}"#).is_err());
        assert!(method(r#"{"name":"lora","target_r":4}"#).is_err());
        let Ok(Method::Adalora(AdaLora {
            r,
            target_r,
            targets,
            tfinal,
            ..
        })) = method(r#"{"name":"adalora","tfinal":10}"#)
        else {
            panic!("adalora with defaults")
        };
        assert_eq!((r, target_r, tfinal), (12, 8, 10));
        assert_eq!(targets, ["query", "value"]);
    }

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
            (|c| c.weight_decay = f64::INFINITY, "weight_decay"),
            (|c| c.weight_decay = f64::NAN, "weight_decay"),
            (|c| c.learning_rate = f64::NAN, "learning_rate"),
            (|c| c.max_grad_norm = Some(f64::INFINITY), "max_grad_norm"),
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
            (|c| c.method = Method::Adapter { size: 0 }, "method.size"),
            (
                |c| {
                    c.method = Method::Adalora(AdaLora {
                        r: 4,
                        target_r: 6,
                        alpha: 16.0,
                        dropout: 0.0,
                        targets: vec!["query".into()],
                        orth_reg: 0.5,
                        beta1: 0.85,
                        beta2: 0.85,
                        tinit: 0,
                        tfinal: 0,
                        delta_t: 1,
                    })
                },
                "method.target_r",
            ),
            (
                |c| {
                    c.method = Method::Adalora(AdaLora {
                        r: 12,
                        target_r: 8,
                        alpha: 16.0,
                        dropout: 0.0,
                        targets: vec!["query".into()],
                        orth_reg: 0.5,
                        beta1: 1.0,
                        beta2: 0.85,
                        tinit: 0,
                        tfinal: 0,
                        delta_t: 1,
                    })
                },
                "method.beta1",
            ),
            (
                |c| {
                    c.method = Method::Lora {
                        r: 8,
                        alpha: f64::INFINITY,
                        dropout: 0.0,
                        targets: vec!["query".into()],
                    }
                },
                "method.alpha",
            ),
            (
                |c| {
                    c.method = Method::Lora {
                        r: 8,
                        alpha: 16.0,
                        dropout: 0.0,
                        targets: vec!["query".into(), "quer".into()],
                    }
                },
                "method.targets.1",
            ),
        ];
        for (mutate, field) in cases {
            let mut config = valid();
            mutate(&mut config);
            let problems = config.problems();
            let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
            assert_eq!(fields, [field]);
        }
    }
}
