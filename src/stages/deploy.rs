//! `deploy`: gate a trained model on its metrics and write it as a servable bundle.
//!
//! Contract:
//! - Inputs: `model` (a `train` artifact), `metrics` (optional: an `evaluate` artifact).
//! - Gates (`require`) are checked first, against the metrics input's headline metrics: a
//!   metric where higher is better must reach its threshold, `log_loss` and
//!   `expected_calibration_error` must not exceed theirs. A failed gate fails the stage before
//!   anything is written (and a failed stage publishes nothing in any case).
//! - Output, a standard HuggingFace checkpoint ([`crate::ml::Classifier::export_hf`]) that
//!   `taper predict`/`serve` and `transformers` load: `config.json`, `model.safetensors`, the
//!   tokenizer files (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`,
//!   `vocab.txt`; copied from the trained model, the last three derived from `tokenizer.json`
//!   when the base model had none), a `README.md` model card and `manifest.json` (blake3 and
//!   size of every other file, the stage key, labels, metrics and the evaluated split's class
//!   shares, the reference of `taper serve`'s drift gauge; [`crate::stages::bundle`]).
//! - Labels are the metrics input's class names; without one, HF's `LABEL_i`.
//! - The lock file gets no metrics from this stage at `precision: f32`: they are `evaluate`'s,
//!   recorded there. At `precision: int8` the stage evaluates the quantized model again on the
//!   `data` input's split that the metrics input evaluated, and on the perturbed copies of it
//!   that evaluation scored (read back from its `perturbed_<kind>.jsonl`; `ood` is not
//!   rescored, as deploy has no out-of-domain input); the gates, the manifest's metrics
//!   and the model card are that evaluation's, and the lock file gets its headline metrics
//!   prefixed `int8_` plus `accuracy_change` (int8 minus f32). The bundle's weights stay f32
//!   (a standard checkpoint); its manifest says `precision: int8`, and `taper serve`/`predict`
//!   quantize when they load it.
//!
//! The bundle holds nothing outside the stage key (no pipeline or stage name, no clock), so
//! equal keys give byte-identical bundles, as the store requires.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::data::dataset::{Dataset, SplitData};
use crate::data::tokenize::{encode_all, load_tokenizer};
use crate::data::DataError;
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::fingerprint::manifest::hash_file_uncached;
use crate::ml::{hf_class_name, Classifier, DeviceChoice};
use crate::model::stages::Precision;
use crate::model::{InputSlot, StageSettings};
use crate::stages::bundle::{relative_files, BundleManifest, FileRecord, BUNDLE_FORMAT, MANIFEST};
use crate::stages::evaluate::{compute, MetricsFile, Shifted, TRAINED_MODEL_DIR};
use crate::stages::ml_common::{
    input_dir, link_or_copy, predict, read_json, split_of, write_bytes, write_json, wrong_runner,
    MlStageError,
};
use crate::stages::train::TrainSummary;

/// Metrics where lower is better: their gate is a maximum.
const LOWER_IS_BETTER: [&str; 6] = [
    "log_loss",
    "expected_calibration_error",
    "typo_drop",
    "delete_drop",
    "casing_drop",
    "ood_drop",
];

pub struct DeployRunner;

impl StageRunner for DeployRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::Deploy(settings) = &ctx.stage.settings else {
            return Err(wrong_runner(ctx, "deploy").into());
        };
        let trained = input_dir(ctx, InputSlot::Model)?;
        let metrics_dir = ctx.inputs.get(&InputSlot::Metrics);
        let metrics: Option<MetricsFile> = metrics_dir
            .map(|dir| read_json(&dir.join("metrics.json")))
            .transpose()?;
        let mut outcome = StageOutcome::default();
        let metrics = match (settings.precision, metrics_dir, metrics) {
            (Precision::Int8, Some(evaluated), Some(f32_metrics)) => {
                let dataset =
                    Dataset::load(&input_dir(ctx, InputSlot::Data)?).map_err(MlStageError::from)?;
                let int8 = evaluate_int8(&trained, &dataset, evaluated, &f32_metrics, ctx.log)?;
                let change = int8.metrics.accuracy - f32_metrics.metrics.accuracy;
                (ctx.log)(&format!(
                    "int8 on `{}`: accuracy {:.4} (f32 {:.4}, change {change:+.4})",
                    int8.split.as_str(),
                    int8.metrics.accuracy,
                    f32_metrics.metrics.accuracy
                ));
                outcome.metrics = int8
                    .headline()
                    .into_iter()
                    .map(|(name, value)| (format!("int8_{name}"), value))
                    .collect();
                outcome.metrics.insert("accuracy_change".to_owned(), change);
                Some(int8)
            }
            (Precision::Int8, _, _) => return Err(MlStageError::Int8WithoutMetrics.into()),
            (Precision::F32, _, metrics) => metrics,
        };
        let headline = metrics
            .as_ref()
            .map(MetricsFile::headline)
            .unwrap_or_default();
        check_gates(&settings.require, &headline)?;
        for (metric, threshold) in &settings.require {
            if let Some(value) = headline.get(metric) {
                (ctx.log)(&format!(
                    "gate {metric}: {value:.4} (threshold {threshold})"
                ));
            }
        }
        write_bundle(&BundleSource {
            trained: &trained,
            metrics: metrics.as_ref(),
            require: &settings.require,
            precision: settings.precision,
            stage_key: &ctx.key.to_hex(),
            out_dir: ctx.out_dir,
        })?;
        (ctx.log)("bundle written: HF checkpoint, tokenizer files, model card, manifest");
        Ok(outcome)
    }
}

/// The trained model's metrics at int8, on the split `f32_metrics` evaluated and on the
/// perturbed copies of it that the evaluation in `evaluated` scored, as `metrics.json` would
/// hold them.
fn evaluate_int8(
    trained: &Path,
    dataset: &Dataset,
    evaluated: &Path,
    f32_metrics: &MetricsFile,
    log: &(dyn Fn(&str) + Sync),
) -> Result<MetricsFile, MlStageError> {
    let split = f32_metrics.split;
    let data = split_of(dataset, split)?;
    let model_dir = trained.join(TRAINED_MODEL_DIR);
    // The CPU: int8 is a CPU kernel, and the bundle must not depend on a GPU being there.
    let mut classifier = Classifier::load_trained(&model_dir, DeviceChoice::Cpu)?;
    classifier.set_precision(Precision::Int8)?;
    let started = std::time::Instant::now();
    let probabilities = predict(&classifier, data, 32)?;
    log(&format!(
        "{} examples of `{}` at int8 in {:.1} s",
        data.len(),
        split.as_str(),
        started.elapsed().as_secs_f64()
    ));
    let metrics = compute(
        &model_dir,
        &data.labels,
        &probabilities,
        &dataset.info.labels,
    )?;
    // The perturbed copies are scored again from the texts the evaluation wrote, so a gate on
    // `typo_drop` holds for the model that ships: quantization can move a perturbed text's
    // prediction where it leaves the clean one. `ood` needs the out-of-domain data, which
    // deploy does not take: its gate is refused at int8 as a missing metric.
    let tokenizer_path = model_dir.join("tokenizer.json");
    let tokenizer = load_tokenizer(&tokenizer_path, dataset.info.max_length)?;
    let mut robustness = BTreeMap::new();
    for kind in f32_metrics.robustness.keys().filter(|kind| *kind != "ood") {
        let path = evaluated.join(format!("perturbed_{kind}.jsonl"));
        let mut draws = Vec::new();
        let mut examples = 0;
        for Draw { texts, labels, .. } in perturbed_draws(&path)? {
            let encoded = encode_all(&tokenizer, &tokenizer_path, &texts)?;
            let copy = SplitData::from_examples(
                &encoded
                    .into_iter()
                    .zip(&labels)
                    .map(|(encoded, &label)| (encoded.ids, label))
                    .collect::<Vec<_>>(),
            );
            let probabilities = predict(&classifier, &copy, 32)?;
            draws.push(compute(
                &model_dir,
                &labels,
                &probabilities,
                &dataset.info.labels,
            )?);
            examples = labels.len();
        }
        let shifted = Shifted::of_draws(metrics.accuracy, examples, &draws);
        log(&format!("{kind} at int8: {}", shifted.summary()));
        robustness.insert(kind.clone(), shifted);
    }
    Ok(MetricsFile {
        split,
        labels: f32_metrics.labels.clone(),
        metrics,
        robustness,
    })
}

/// One line of `evaluate`'s `perturbed_<kind>.jsonl`.
#[derive(serde::Deserialize)]
struct PerturbedLine {
    text: String,
    label: u32,
    /// The draw's seed, written when `robustness.draws` is above 1.
    #[serde(default)]
    seed: Option<u64>,
}

/// One perturbed copy of the evaluated split: its texts and their labels.
struct Draw {
    seed: Option<u64>,
    texts: Vec<String>,
    labels: Vec<u32>,
}

/// The draws in `path`, in the file's order (a draw is a run of lines with one seed).
fn perturbed_draws(path: &Path) -> Result<Vec<Draw>, MlStageError> {
    let malformed = |message: String| {
        MlStageError::from(DataError::Malformed {
            path: path.to_path_buf(),
            message,
        })
    };
    let text = std::fs::read_to_string(path).map_err(|error| DataError::io(path, error))?;
    let mut draws: Vec<Draw> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line: PerturbedLine = serde_json::from_str(line)
            .map_err(|error| malformed(format!("line {}: {error}", index + 1)))?;
        match draws.last_mut() {
            Some(draw) if draw.seed == line.seed => {
                draw.texts.push(line.text);
                draw.labels.push(line.label);
            }
            _ => draws.push(Draw {
                seed: line.seed,
                texts: vec![line.text],
                labels: vec![line.label],
            }),
        }
    }
    if draws.is_empty() {
        return Err(malformed("no perturbed example".to_owned()));
    }
    Ok(draws)
}

/// Checks every gate; the error names the first failing metric, its value and threshold.
pub fn check_gates(
    require: &BTreeMap<String, f64>,
    metrics: &BTreeMap<String, f64>,
) -> Result<(), MlStageError> {
    for (metric, &threshold) in require {
        let value = *metrics
            .get(metric)
            .ok_or_else(|| MlStageError::GateMetricMissing {
                metric: metric.clone(),
            })?;
        let lower_is_better = LOWER_IS_BETTER.contains(&metric.as_str());
        let passes = if lower_is_better {
            value <= threshold
        } else {
            value >= threshold
        };
        if !passes {
            return Err(MlStageError::GateFailed {
                metric: metric.clone(),
                value,
                threshold,
                direction: if lower_is_better { "≤" } else { "≥" },
            });
        }
    }
    Ok(())
}

/// What a bundle is made from.
pub struct BundleSource<'a> {
    /// The `train` artifact (its `model/` and `summary.json`).
    pub trained: &'a Path,
    pub metrics: Option<&'a MetricsFile>,
    pub require: &'a BTreeMap<String, f64>,
    pub precision: Precision,
    pub stage_key: &'a str,
    pub out_dir: &'a Path,
}

/// Writes the bundle (see the module docs) into `source.out_dir`.
pub fn write_bundle(source: &BundleSource<'_>) -> Result<(), MlStageError> {
    let model_dir = source.trained.join(TRAINED_MODEL_DIR);
    // The CPU: the export only copies weights out, and must not depend on a GPU being there.
    let classifier = Classifier::load_trained(&model_dir, DeviceChoice::Cpu)?;
    let labels: Vec<String> = match source.metrics {
        Some(metrics) => metrics.labels.clone(),
        None => (0..classifier.num_labels())
            .map(|id| format!("LABEL_{id}"))
            .collect(),
    };
    let out = source.out_dir;
    classifier.export_hf(out, &labels)?;
    let max_length = classifier.config().max_position_embeddings;
    let architecture = hf_class_name(classifier.config().architecture);
    write_tokenizer_files(&model_dir, out, architecture, max_length)?;
    let summary: Option<TrainSummary> = {
        let path = source.trained.join("summary.json");
        path.is_file().then(|| read_json(&path)).transpose()?
    };
    let card = model_card(&CardFacts {
        architecture,
        labels: &labels,
        metrics: source.metrics,
        summary: summary.as_ref(),
        require: source.require,
        precision: source.precision,
        max_length,
        stage_key: source.stage_key,
    });
    write_bytes(&out.join("README.md"), card.as_bytes())?;
    let mut files = BTreeMap::new();
    let listed = relative_files(out).map_err(|error| DataError::io(out, error))?;
    for file in listed {
        let path = out.join(&file);
        let size = std::fs::metadata(&path)
            .map_err(|error| DataError::io(&path, error))?
            .len();
        let digest = hash_file_uncached(&path).map_err(|error| DataError::io(&path, error))?;
        files.insert(
            file,
            FileRecord {
                blake3: digest.to_hex(),
                size,
            },
        );
    }
    write_json(
        &out.join(MANIFEST),
        &BundleManifest {
            format: BUNDLE_FORMAT,
            stage_key: source.stage_key.to_owned(),
            architecture: architecture.to_owned(),
            labels,
            max_length,
            precision: source.precision,
            metrics: source
                .metrics
                .map(MetricsFile::headline)
                .unwrap_or_default(),
            label_shares: source
                .metrics
                .map(|file| {
                    let examples = file.metrics.examples.max(1) as f64;
                    file.metrics
                        .per_class
                        .iter()
                        .map(|class| class.support as f64 / examples)
                        .collect()
                })
                .unwrap_or_default(),
            files,
        },
    )
}

/// The BERT special tokens, which every WordPiece tokenizer taper trains with uses.
const SPECIAL_TOKENS: [(&str, &str); 5] = [
    ("cls_token", "[CLS]"),
    ("mask_token", "[MASK]"),
    ("pad_token", "[PAD]"),
    ("sep_token", "[SEP]"),
    ("unk_token", "[UNK]"),
];

/// Copies the trained model's tokenizer files; those the base model lacked are derived from
/// `tokenizer.json` (HF's slow tokenizer and older tools read `vocab.txt` and the two JSON
/// files, not `tokenizer.json`).
fn write_tokenizer_files(
    model_dir: &Path,
    out: &Path,
    architecture: &str,
    max_length: usize,
) -> Result<(), MlStageError> {
    let tokenizer_path = model_dir.join("tokenizer.json");
    link_or_copy(&tokenizer_path, &out.join("tokenizer.json"))?;
    let tokenizer: serde_json::Value = read_json(&tokenizer_path)?;
    let special: BTreeMap<&str, &str> = SPECIAL_TOKENS.into_iter().collect();
    for name in [
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let from = model_dir.join(name);
        let to = out.join(name);
        if from.is_file() {
            link_or_copy(&from, &to)?;
            continue;
        }
        match name {
            "vocab.txt" => write_bytes(
                &to,
                wordpiece_vocab(&tokenizer_path, &tokenizer)?.as_bytes(),
            )?,
            "special_tokens_map.json" => write_json(&to, &special)?,
            _ => {
                let lowercase = tokenizer["normalizer"]["lowercase"]
                    .as_bool()
                    .unwrap_or(true);
                let mut config = serde_json::json!({
                    "tokenizer_class": architecture.replace("ForSequenceClassification", "TokenizerFast"),
                    "do_lower_case": lowercase,
                    "model_max_length": max_length,
                });
                for (key, token) in &special {
                    config[*key] = serde_json::json!(token);
                }
                write_json(&to, &config)?;
            }
        }
    }
    Ok(())
}

/// `vocab.txt`: the WordPiece vocabulary of `tokenizer.json`, one token per line in id order.
fn wordpiece_vocab(path: &Path, tokenizer: &serde_json::Value) -> Result<String, MlStageError> {
    let malformed = |message: &str| {
        MlStageError::from(DataError::Malformed {
            path: path.to_path_buf(),
            message: message.to_owned(),
        })
    };
    let vocab = tokenizer["model"]["vocab"]
        .as_object()
        .ok_or_else(|| malformed("no WordPiece `model.vocab` to derive `vocab.txt` from"))?;
    let mut tokens = vec![None; vocab.len()];
    for (token, id) in vocab {
        let slot = id
            .as_u64()
            .and_then(|id| usize::try_from(id).ok())
            .and_then(|id| tokens.get_mut(id))
            .ok_or_else(|| malformed("`model.vocab` ids are not 0..size"))?;
        *slot = Some(token.as_str());
    }
    let mut text = String::new();
    for token in tokens {
        text.push_str(token.ok_or_else(|| malformed("`model.vocab` ids are not 0..size"))?);
        text.push('\n');
    }
    Ok(text)
}

/// What the model card states.
struct CardFacts<'a> {
    architecture: &'a str,
    labels: &'a [String],
    metrics: Option<&'a MetricsFile>,
    summary: Option<&'a TrainSummary>,
    require: &'a BTreeMap<String, f64>,
    precision: Precision,
    max_length: usize,
    stage_key: &'a str,
}

/// `README.md`: a model card (after HF's and Mitchell et al.'s "Model Cards for Model
/// Reporting"): what the model is, the data and settings it came from, its measured quality,
/// what it is for and not for, and how to serve it.
fn model_card(facts: &CardFacts<'_>) -> String {
    let mut card = String::new();
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        card,
        "# Text classifier ({})\n\nA fine-tuned `{}` written by taper's `deploy` stage (stage key \
         `{}`). Classes, in id order: {}.\n",
        facts.labels.join(", "),
        facts.architecture,
        facts.stage_key,
        facts
            .labels
            .iter()
            .map(|label| format!("`{label}`"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    card.push_str("## Data and training\n\n");
    match facts.summary {
        Some(summary) => {
            let _ = writeln!(
                card,
                "- Trained on {} examples for {} epoch(s), {} optimizer steps{}.\n- {} of {} \
                 parameters trained (adapters, if any, are merged into the weights).",
                summary.train_examples,
                summary.epochs_completed,
                summary.optimizer_steps,
                if summary.stopped_early {
                    ", stopped early on the validation loss"
                } else {
                    ""
                },
                summary.trainable_parameters,
                summary.total_parameters,
            );
            if let Some(loss) = summary.best_validation_loss {
                let _ = writeln!(card, "- Best validation loss: {loss:.4}.");
            }
        }
        None => card.push_str("- The training summary was not available.\n"),
    }
    let _ = writeln!(
        card,
        "- Inputs up to {} tokens (`[CLS]` and `[SEP]` included).\n\nThe full settings are in \
         the pipeline's lock file, under the stage key above.\n",
        facts.max_length
    );
    card.push_str("## Metrics\n\n");
    match facts.metrics {
        Some(file) => {
            let m = &file.metrics;
            let _ = writeln!(
                card,
                "On the `{}` split ({} examples):\n\n| metric | value |\n|---|---|\n| accuracy | \
                 {:.4} |\n| macro F1 | {:.4} |\n| micro F1 | {:.4} |\n| log loss | {:.4} |\n| \
                 expected calibration error | {:.4} |",
                file.split.as_str(),
                m.examples,
                m.accuracy,
                m.macro_f1,
                m.micro_f1,
                m.log_loss,
                m.expected_calibration_error,
            );
            if let Some(auc) = m.roc_auc {
                let _ = writeln!(card, "| ROC AUC | {auc:.4} |");
            }
            if facts.precision == Precision::Int8 {
                card.push_str(
                    "\nThese are the int8 model's figures: `taper serve` and `taper predict` run \
                     its linear layers in int8 (weights per output channel, activations per \
                     token); the checkpoint itself holds the f32 weights.\n",
                );
            }
            card.push_str(
                "\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n",
            );
            for class in &m.per_class {
                let _ = writeln!(
                    card,
                    "| {} | {:.4} | {:.4} | {:.4} | {} |",
                    class.label, class.precision, class.recall, class.f1, class.support
                );
            }
            card.push('\n');
        }
        None => card.push_str("No evaluation was wired into the deploy stage.\n\n"),
    }
    if !facts.require.is_empty() {
        let gates: Vec<String> = facts
            .require
            .iter()
            .map(|(metric, threshold)| format!("`{metric}` {threshold}"))
            .collect();
        let _ = writeln!(card, "Deploy gates passed: {}.\n", gates.join(", "));
    }
    card.push_str(
        "## Intended use and limits\n\n\
         - Classifying short texts like those of the training data into the classes above. \
         Scores are softmax probabilities; check the calibration error above before reading \
         them as confidences.\n\
         - Not evaluated on other domains, languages or text lengths than the training data's; \
         longer inputs are refused or truncated. It inherits the biases of its base model and \
         data; do not use it for decisions about people without a review of its errors.\n\n\
         ## How to serve it\n\n\
         ```sh\n\
         taper serve .                      # HTTP on 127.0.0.1:8080\n\
         curl -s localhost:8080/predict -H 'content-type: application/json' \\\n  \
           -d '{\"inputs\": \"a warm, funny film\"}'\n\
         taper predict . \"a warm, funny film\"   # offline, JSON lines\n\
         ```\n\n\
         It is a standard HuggingFace checkpoint: \
         `AutoModelForSequenceClassification.from_pretrained(dir)` and \
         `AutoTokenizer.from_pretrained(dir)` load it. `manifest.json` lists the blake3 of every \
         file; `taper serve` and `taper predict` refuse a bundle that does not match it.\n",
    );
    card
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_name_metric_value_and_threshold() {
        let metrics = BTreeMap::from([("accuracy".to_owned(), 0.75), ("log_loss".to_owned(), 0.4)]);
        let pass = BTreeMap::from([("accuracy".to_owned(), 0.7), ("log_loss".to_owned(), 0.5)]);
        assert!(check_gates(&pass, &metrics).is_ok());
        let error = check_gates(&BTreeMap::from([("accuracy".to_owned(), 0.78)]), &metrics)
            .expect_err("0.75 < 0.78");
        assert_eq!(
            error.to_string(),
            "deploy gate failed: accuracy is 0.7500, the gate requires ≥ 0.78"
        );
        // Lower is better for log loss: its gate is a maximum.
        let error = check_gates(&BTreeMap::from([("log_loss".to_owned(), 0.3)]), &metrics)
            .expect_err("0.4 > 0.3");
        assert!(error.to_string().contains("log_loss is 0.4000"), "{error}");
        assert!(error.to_string().contains("≤ 0.3"), "{error}");
        let error = check_gates(&BTreeMap::from([("roc_auc".to_owned(), 0.5)]), &metrics)
            .expect_err("absent");
        assert!(error.to_string().contains("roc_auc"), "{error}");
    }

    #[test]
    fn vocab_txt_lists_tokens_in_id_order() {
        let tokenizer = serde_json::json!({"model": {"vocab": {"b": 1, "[PAD]": 0, "c": 2}}});
        assert_eq!(
            wordpiece_vocab(Path::new("t.json"), &tokenizer).expect("valid"),
            "[PAD]\nb\nc\n"
        );
        let gap = serde_json::json!({"model": {"vocab": {"a": 0, "b": 2}}});
        assert!(wordpiece_vocab(Path::new("t.json"), &gap).is_err());
    }
}
