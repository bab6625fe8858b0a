//! A trained classifier as a standard HuggingFace sequence-classification checkpoint, and back.
//!
//! Why: `Trainer::export` writes taper's own layout (normalised tensor names without the
//! `bert.` prefix, a plain encoder `config.json`, the head in `taper-classifier.json`), which
//! only taper loads. [`Classifier::export_hf`] writes what `transformers`'
//! `AutoModelForSequenceClassification.from_pretrained(dir)` expects:
//! - tensors under `bert.`/`distilbert.` except the head (`classifier.*`, and DistilBERT's
//!   `pre_classifier.*`), BERT's pooler as `bert.pooler.dense.*`, adapters merged in;
//! - `config.json` = the base config plus `architectures`, `id2label`, `label2id`,
//!   `num_labels` and `problem_type`.
//!
//! Only the pooler head has a HF counterpart (`BertForSequenceClassification` runs `[CLS]` →
//! pooler dense + tanh, DistilBERT's `[CLS]` → `pre_classifier` + ReLU, which is what
//! `Pooling::Pooler` computes); a mean-pooled head would load into `transformers` with a freshly
//! initialised pooler and give other probabilities, so it is refused rather than written.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use crate::model::stages::Pooling;

use super::classifier::{Classifier, DeviceChoice};
use super::config::Architecture;
use super::error::{io_error, MlError, Result};

/// The HF class that loads a checkpoint of `architecture` (`architectures[0]` of its config).
pub fn hf_class_name(architecture: Architecture) -> &'static str {
    match architecture {
        Architecture::Bert => "BertForSequenceClassification",
        Architecture::DistilBert => "DistilBertForSequenceClassification",
    }
}

/// The HF name of a tensor that taper names `name` (its normalised name): the encoder and
/// BERT's pooler live under the base model's prefix, the classification head does not.
pub fn hf_tensor_name(architecture: Architecture, name: &str) -> String {
    if name.starts_with("classifier.") || name.starts_with("pre_classifier.") {
        return name.to_owned();
    }
    match architecture {
        Architecture::Bert => format!("bert.{name}"),
        Architecture::DistilBert => format!("distilbert.{name}"),
    }
}

/// The head fields of a HF sequence-classification `config.json`.
#[derive(Debug, Deserialize)]
struct HfHead {
    #[serde(default)]
    id2label: BTreeMap<String, String>,
    num_labels: Option<usize>,
}

/// The class names of a HF classification `config.json`, in id order (`id2label`; HF's
/// `LABEL_i` names when it only has `num_labels`).
pub fn hf_labels(config_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(config_path).map_err(io_error(config_path))?;
    let head: HfHead = serde_json::from_str(&text).map_err(|source| MlError::Json {
        path: config_path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| MlError::BadConfig {
        path: config_path.to_path_buf(),
        reason,
    };
    if head.id2label.is_empty() {
        let count = head
            .num_labels
            .ok_or_else(|| bad("it has neither `id2label` nor `num_labels`".to_owned()))?;
        return Ok((0..count).map(|id| format!("LABEL_{id}")).collect());
    }
    let count = head.id2label.len();
    let mut labels = vec![None; count];
    for (id, label) in head.id2label {
        let slot = id
            .parse::<usize>()
            .ok()
            .and_then(|index| labels.get_mut(index))
            .ok_or_else(|| bad(format!("`id2label` key `{id}` is not an id below its size")))?;
        *slot = Some(label);
    }
    let labels: Vec<String> = labels.into_iter().flatten().collect();
    if labels.len() != count {
        return Err(bad("`id2label` names one id twice".to_owned()));
    }
    if head.num_labels.is_some_and(|count| count != labels.len()) {
        return Err(bad(format!(
            "`num_labels` disagrees with the {} entries of `id2label`",
            labels.len()
        )));
    }
    Ok(labels)
}

impl Classifier {
    /// Writes `config.json` and `model.safetensors` of a HF sequence-classification checkpoint
    /// into `dir` (see the module docs); `labels` are the class names in id order.
    pub fn export_hf(&self, dir: &Path, labels: &[String]) -> Result<()> {
        let architecture = self.config().architecture;
        let refuse = |reason: String| MlError::NotExportable { reason };
        if self.pooling() != Pooling::Pooler {
            return Err(refuse(format!(
                "a `{}`-pooled head has no `{}` counterpart (train with `pooling: pooler`)",
                serde_json::to_value(self.pooling())
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                hf_class_name(architecture)
            )));
        }
        // A Houlsby adapter is `x + up(relu(down(x)))`, not a change of any weight, and
        // `transformers` would load the checkpoint without it (dropping the tensors with a
        // warning) and predict like the untrained base: refused rather than written.
        if let Some(size) = self.encoder().bottleneck_size() {
            return Err(refuse(format!(
                "its bottleneck adapters (size {size}) cannot be merged into the weights of a `{}` (the `train` output still runs in taper's `evaluate` and `explain` stages and `taper explain`; to deploy, train with `method: {{ name: lora }}` or `ia3`, which merge)",
                hf_class_name(architecture)
            )));
        }
        if labels.len() != self.num_labels() {
            return Err(refuse(format!(
                "{} label names for a {}-class head",
                labels.len(),
                self.num_labels()
            )));
        }
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let tensors: HashMap<String, Tensor> = self
            .base_tensors(true)?
            .into_iter()
            .map(|(name, tensor)| (hf_tensor_name(architecture, &name), tensor))
            .collect();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        let config_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.hf_config(labels)).map_err(|source| {
            MlError::Json {
                path: config_path.clone(),
                source,
            }
        })?;
        std::fs::write(&config_path, text + "\n").map_err(io_error(&config_path))
    }

    fn hf_config(&self, labels: &[String]) -> serde_json::Value {
        let mut config = serde_json::to_value(self.config()).unwrap_or_default();
        let id2label: BTreeMap<String, &String> = labels
            .iter()
            .enumerate()
            .map(|(id, label)| (id.to_string(), label))
            .collect();
        let label2id: BTreeMap<&String, usize> = labels
            .iter()
            .enumerate()
            .map(|(id, label)| (label, id))
            .collect();
        if let Some(fields) = config.as_object_mut() {
            fields.insert(
                "architectures".to_owned(),
                serde_json::json!([hf_class_name(self.config().architecture)]),
            );
            fields.insert("id2label".to_owned(), serde_json::json!(id2label));
            fields.insert("label2id".to_owned(), serde_json::json!(label2id));
            fields.insert("num_labels".to_owned(), serde_json::json!(labels.len()));
            fields.insert(
                "problem_type".to_owned(),
                serde_json::json!("single_label_classification"),
            );
            fields.insert("torch_dtype".to_owned(), serde_json::json!("float32"));
        }
        config
    }

    /// Loads a HF sequence-classification checkpoint written by [`Self::export_hf`] (or any
    /// BERT/DistilBERT one with a pooler head), for inference. Returns the class names too.
    pub fn load_hf(dir: &Path, device: DeviceChoice) -> Result<(Self, Vec<String>)> {
        let labels = hf_labels(&dir.join("config.json"))?;
        let classifier = Self::load_frozen(dir, labels.len(), Pooling::Pooler, None, device)?;
        Ok((classifier, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_the_base_model_but_not_the_head() {
        assert_eq!(
            hf_tensor_name(
                Architecture::Bert,
                "encoder.layer.0.attention.self.query.weight"
            ),
            "bert.encoder.layer.0.attention.self.query.weight"
        );
        assert_eq!(
            hf_tensor_name(Architecture::Bert, "pooler.dense.bias"),
            "bert.pooler.dense.bias"
        );
        assert_eq!(
            hf_tensor_name(Architecture::Bert, "classifier.weight"),
            "classifier.weight"
        );
        assert_eq!(
            hf_tensor_name(Architecture::DistilBert, "pre_classifier.weight"),
            "pre_classifier.weight"
        );
        assert_eq!(
            hf_tensor_name(Architecture::DistilBert, "embeddings.LayerNorm.weight"),
            "distilbert.embeddings.LayerNorm.weight"
        );
    }

    #[test]
    fn labels_come_in_id_order_or_as_hf_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"id2label":{"1":"pos","0":"neg"},"num_labels":2}"#,
        )
        .expect("write");
        assert_eq!(hf_labels(&path).expect("valid"), ["neg", "pos"]);
        std::fs::write(&path, r#"{"num_labels":3}"#).expect("write");
        assert_eq!(
            hf_labels(&path).expect("valid"),
            ["LABEL_0", "LABEL_1", "LABEL_2"]
        );
        std::fs::write(&path, r#"{"id2label":{"0":"a","2":"b"}}"#).expect("write");
        assert!(hf_labels(&path).is_err());
    }

    /// A LoRA-trained classifier of each architecture, exported as a HF checkpoint: the
    /// tensors carry HF names (no adapter left), and the reloaded model gives the live,
    /// unmerged model's logits.
    #[test]
    fn export_merges_adapters_and_reloads_with_the_same_logits() {
        use crate::ml::config::EncoderConfig;
        use crate::ml::fixtures::{write_random_model, NameStyle};
        use crate::ml::{Batch, Trainer};
        for (config, targets, pooler) in [
            (
                EncoderConfig::tiny_bert(),
                r#"["query","value"]"#,
                "pooler.dense",
            ),
            (
                EncoderConfig::tiny_distilbert(),
                r#"["q_lin","v_lin"]"#,
                "pre_classifier",
            ),
        ] {
            let base = tempfile::tempdir().expect("temp dir");
            write_random_model(base.path(), &config, 5, NameStyle::Plain).expect("model");
            let settings: crate::model::Configure = serde_json::from_str(&format!(
                r#"{{"method":{{"name":"lora","r":2,"alpha":4,"targets":{targets}}},
                    "learning_rate":0.05,"dropout":0.0}}"#
            ))
            .expect("settings");
            let classifier =
                Classifier::new(base.path(), 3, &settings, DeviceChoice::Cpu).expect("load");
            let batch = Batch::new(&[&[2, 7, 9, 3], &[2, 11, 3]], &[0, 2], 0).expect("batch");
            let mut trainer = Trainer::new(classifier, &settings, 4).expect("trainer");
            for _ in 0..3 {
                trainer.step(&batch).expect("step");
            }
            let live = trainer.eval_logits(&batch).expect("logits");
            let out = tempfile::tempdir().expect("temp dir");
            let labels: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
            trainer
                .classifier()
                .export_hf(out.path(), &labels)
                .expect("export");

            let names: Vec<String> = candle_core::safetensors::load(
                out.path().join("model.safetensors"),
                &candle_core::Device::Cpu,
            )
            .expect("weights")
            .into_keys()
            .collect();
            let prefix = if config.architecture == Architecture::Bert {
                "bert."
            } else {
                "distilbert."
            };
            assert!(names.iter().all(|name| name.starts_with(prefix)
                || name.starts_with("classifier.")
                || name.starts_with("pre_classifier.")));
            assert!(names.iter().all(|name| !name.contains("lora")), "{names:?}");
            let pooler_name = hf_tensor_name(config.architecture, &format!("{pooler}.weight"));
            assert!(names.contains(&pooler_name), "{pooler_name} in {names:?}");

            let (reloaded, read_labels) =
                Classifier::load_hf(out.path(), DeviceChoice::Cpu).expect("reload");
            assert_eq!(read_labels, labels);
            assert!(reloaded.load_report().unused.is_empty());
            let again = reloaded.logits(&batch).expect("logits");
            let diff = live
                .concat()
                .iter()
                .zip(again.concat())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-5,
                "{:?}: logits differ by {diff}",
                config.architecture
            );
        }
    }

    #[test]
    fn mean_pooling_is_refused() {
        use crate::ml::config::EncoderConfig;
        use crate::ml::fixtures::{write_random_model, NameStyle};
        let base = tempfile::tempdir().expect("temp dir");
        write_random_model(
            base.path(),
            &EncoderConfig::tiny_bert(),
            5,
            NameStyle::Plain,
        )
        .expect("model");
        let settings: crate::model::Configure =
            serde_json::from_str(r#"{"pooling":"mean"}"#).expect("settings");
        let classifier =
            Classifier::new(base.path(), 2, &settings, DeviceChoice::Cpu).expect("load");
        let out = tempfile::tempdir().expect("temp dir");
        let error = classifier
            .export_hf(out.path(), &["a".to_owned(), "b".to_owned()])
            .expect_err("no HF counterpart");
        assert!(error.to_string().contains("mean"), "{error}");
    }
}
