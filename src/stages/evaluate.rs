//! `evaluate`: metrics of a trained model on one split of the dataset, and optionally on
//! perturbed copies of it and on out-of-domain data.
//!
//! Contract: writes `metrics.json` ([`MetricsFile`]: the [`Metrics`] of
//! [`crate::data::metrics`], the split and label names, and per perturbation kind and for the
//! `ood` input the accuracy and its drop against clean accuracy) and `predictions.jsonl` (per
//! example, in dataset order: label, predicted class and probabilities), and returns the
//! headline metrics for the lock file. Inference runs on length-sorted batches padded per batch;
//! results are scattered back to dataset order, so the output does not depend on the batch size
//! beyond float rounding.
//!
//! Robustness: the split's texts (`<split>.jsonl`) are perturbed by [`crate::data::perturb`]
//! (the same functions `prepare-data`'s `augment:` uses), one kind per copy, each with its own
//! RNG seeded with `robustness.seed` (plus the draw's index for `draws` above 1), and encoded
//! with the trained model's tokenizer at the dataset's `max_length`, as `prepare-data` encoded
//! the clean texts. Each kind's accuracy is the mean over its draws. Each copy's predictions go
//! to `perturbed_<kind>.jsonl` (text, label, predicted class, and the draw's seed when there
//! are several).

use std::collections::BTreeMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::dataset::{read_texts, Dataset, SplitData};
use crate::data::metrics::{argmax, Metrics};
use crate::data::perturb::Perturbation;
use crate::data::tokenize::{encode_all, load_tokenizer};
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::ml::{Classifier, DeviceChoice};
use crate::model::stages::{Evaluate, Robustness, SplitName};
use crate::model::{InputSlot, StageSettings};
use crate::stages::ml_common::{
    input_dir, predict, split_of, write_bytes, write_json, wrong_runner, MlStageError,
};

/// Where `train` puts the exported model inside its artifact.
pub const TRAINED_MODEL_DIR: &str = "model";

/// `metrics.json`; `deploy` reads it back for its gates and model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsFile {
    pub split: SplitName,
    pub labels: Vec<String>,
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Per perturbation kind (`typo`, `delete`, `casing`) and `ood`; absent without them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub robustness: BTreeMap<String, Shifted>,
}

/// The model on texts unlike the clean split: a perturbed copy of it, or out-of-domain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shifted {
    pub examples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Clean accuracy minus `accuracy`: what the shift costs (negative when it helps).
    pub drop: f64,
    /// Each draw's accuracy when `robustness.draws` is above 1 (`accuracy` is their mean).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draw_accuracies: Vec<f64>,
}

impl Shifted {
    /// The shift's metrics as the mean over its draws (`robustness.draws`; `ood` is one),
    /// against `clean_accuracy`.
    pub(crate) fn of_draws(clean_accuracy: f64, examples: usize, draws: &[Metrics]) -> Self {
        let count = draws.len().max(1) as f64;
        let accuracy = draws.iter().map(|draw| draw.accuracy).sum::<f64>() / count;
        let macro_f1 = draws.iter().map(|draw| draw.macro_f1).sum::<f64>() / count;
        let draw_accuracies = match draws {
            [_, _, ..] => draws.iter().map(|draw| draw.accuracy).collect(),
            _ => Vec::new(),
        };
        Shifted {
            examples,
            accuracy,
            macro_f1,
            drop: clean_accuracy - accuracy,
            draw_accuracies,
        }
    }

    /// One line for the stage log: accuracy, the draws' range and the drop.
    pub(crate) fn summary(&self) -> String {
        let range = match (
            self.draw_accuracies.iter().copied().reduce(f64::min),
            self.draw_accuracies.iter().copied().reduce(f64::max),
        ) {
            (Some(low), Some(high)) => format!(
                ", mean of {} draws, {low:.4} to {high:.4}",
                self.draw_accuracies.len()
            ),
            _ => String::new(),
        };
        format!(
            "accuracy {:.4}{range} (drop {:+.4})",
            self.accuracy, self.drop
        )
    }
}

impl MetricsFile {
    /// The metrics recorded in the lock file (and that deploy gates read): the clean ones and,
    /// per shift, `<kind>_accuracy` and `<kind>_drop`.
    pub fn headline(&self) -> BTreeMap<String, f64> {
        let mut out = headline(&self.metrics);
        for (kind, shifted) in &self.robustness {
            out.insert(format!("{kind}_accuracy"), shifted.accuracy);
            out.insert(format!("{kind}_drop"), shifted.drop);
        }
        out
    }
}

pub struct EvaluateRunner;

impl StageRunner for EvaluateRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::Evaluate(settings) = &ctx.stage.settings else {
            return Err(wrong_runner(ctx, "evaluate").into());
        };
        let model_dir = input_dir(ctx, InputSlot::Model)?.join(TRAINED_MODEL_DIR);
        let data_dir = input_dir(ctx, InputSlot::Data)?;
        let file = evaluate(
            &model_dir,
            &data_dir,
            ctx.inputs.get(&InputSlot::Ood).map(|dir| dir.as_path()),
            settings,
            ctx.out_dir,
            ctx.log,
        )?;
        Ok(StageOutcome {
            metrics: file.headline(),
        })
    }
}

/// The clean metrics recorded in the lock file.
fn headline(metrics: &Metrics) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::from([
        ("accuracy".to_owned(), metrics.accuracy),
        ("macro_f1".to_owned(), metrics.macro_f1),
        ("micro_f1".to_owned(), metrics.micro_f1),
        ("log_loss".to_owned(), metrics.log_loss),
        (
            "expected_calibration_error".to_owned(),
            metrics.expected_calibration_error,
        ),
    ]);
    if let Some(auc) = metrics.roc_auc {
        out.insert("roc_auc".to_owned(), auc);
    }
    out
}

/// The perturbations `robustness` asks for, in a fixed order.
fn perturbations(robustness: &Robustness) -> Vec<Perturbation> {
    let mut out = Vec::new();
    if let Some(rate) = robustness.typo {
        out.push(Perturbation::Typo(rate));
    }
    if let Some(rate) = robustness.delete {
        out.push(Perturbation::Delete(rate));
    }
    if robustness.casing {
        out.push(Perturbation::Casing);
    }
    out
}

/// Evaluates the model in `model_dir` on the dataset in `data_dir` (and the one in `ood_dir`)
/// as `settings` say, writing into `out_dir`.
pub fn evaluate(
    model_dir: &Path,
    data_dir: &Path,
    ood_dir: Option<&Path>,
    settings: &Evaluate,
    out_dir: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<MetricsFile, MlStageError> {
    let split = settings.split;
    let dataset = Dataset::load(data_dir)?;
    let data = split_of(&dataset, split)?;
    let classifier = Classifier::load_trained(model_dir, DeviceChoice::Auto)?;
    let started = std::time::Instant::now();
    let probabilities = predict(&classifier, data, settings.batch_size)?;
    log(&format!(
        "{} examples of `{}` in {:.1} s on {}",
        data.len(),
        split.as_str(),
        started.elapsed().as_secs_f64(),
        classifier.device_name()
    ));
    let metrics = compute(
        model_dir,
        &data.labels,
        &probabilities,
        &dataset.info.labels,
    )?;
    let mut predictions = String::new();
    for (label, row) in data.labels.iter().zip(&probabilities) {
        let predicted = argmax(row);
        predictions.push_str(
            &serde_json::json!({"label": label, "predicted": predicted, "probabilities": row})
                .to_string(),
        );
        predictions.push('\n');
    }
    write_bytes(&out_dir.join("predictions.jsonl"), predictions.as_bytes())?;
    log(&format!(
        "accuracy {:.4}, macro F1 {:.4}, log loss {:.4}",
        metrics.accuracy, metrics.macro_f1, metrics.log_loss
    ));
    let clean_accuracy = metrics.accuracy;
    let shifted = |examples: usize, draws: &[Metrics], what: &str| {
        let shifted = Shifted::of_draws(clean_accuracy, examples, draws);
        log(&format!("{what}: {}", shifted.summary()));
        shifted
    };
    let mut robustness = BTreeMap::new();
    if let Some(robustness_settings) = &settings.robustness {
        let texts = read_texts(data_dir, split, data.len())?;
        let tokenizer_path = model_dir.join("tokenizer.json");
        let tokenizer = load_tokenizer(&tokenizer_path, dataset.info.max_length)?;
        let several = robustness_settings.draws > 1;
        for perturbation in perturbations(robustness_settings) {
            let kind = perturbation.name();
            let mut lines = String::new();
            let mut draws = Vec::new();
            for draw in 0..robustness_settings.draws {
                let seed = robustness_settings.seed.wrapping_add(u64::from(draw));
                // Its own RNG per kind: adding `casing` leaves the typo copy's texts unchanged.
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let perturbed: Vec<String> = texts
                    .iter()
                    .map(|text| perturbation.apply(text, &mut rng))
                    .collect();
                let encoded = encode_all(&tokenizer, &tokenizer_path, &perturbed)?;
                let examples = SplitData::from_examples(
                    &encoded
                        .into_iter()
                        .zip(&data.labels)
                        .map(|(encoded, &label)| (encoded.ids, label))
                        .collect::<Vec<_>>(),
                );
                let probabilities = predict(&classifier, &examples, settings.batch_size)?;
                for ((text, label), row) in perturbed.iter().zip(&data.labels).zip(&probabilities) {
                    let mut line =
                        serde_json::json!({"text": text, "label": label, "predicted": argmax(row)});
                    // One draw keeps the file as it was before `draws` existed.
                    if several {
                        line["seed"] = seed.into();
                    }
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                }
                draws.push(compute(
                    model_dir,
                    &examples.labels,
                    &probabilities,
                    &dataset.info.labels,
                )?);
            }
            write_bytes(
                &out_dir.join(format!("perturbed_{kind}.jsonl")),
                lines.as_bytes(),
            )?;
            robustness.insert(kind.to_owned(), shifted(data.len(), &draws, kind));
        }
    }
    if let Some(ood_dir) = ood_dir {
        let ood = Dataset::load(ood_dir)?;
        if ood.info.labels != dataset.info.labels {
            return Err(MlStageError::OodLabels {
                data: format!("[{}]", dataset.info.labels.join(", ")),
                ood: format!("[{}]", ood.info.labels.join(", ")),
            });
        }
        let examples = split_of(&ood, split)?;
        let probabilities = predict(&classifier, examples, settings.batch_size)?;
        let metrics = compute(
            model_dir,
            &examples.labels,
            &probabilities,
            &dataset.info.labels,
        )?;
        robustness.insert(
            "ood".to_owned(),
            shifted(examples.len(), &[metrics], "out-of-domain"),
        );
    }
    let file = MetricsFile {
        split,
        labels: dataset.info.labels.clone(),
        metrics,
        robustness,
    };
    write_json(&out_dir.join("metrics.json"), &file)?;
    Ok(file)
}

/// Metrics of `probabilities`; an error names the model when its classes and the labels differ.
pub(crate) fn compute(
    model_dir: &Path,
    labels: &[u32],
    probabilities: &[Vec<f32>],
    names: &[String],
) -> Result<Metrics, MlStageError> {
    Metrics::compute(labels, probabilities, names).ok_or_else(|| MlStageError::InconsistentModel {
        path: model_dir.to_path_buf(),
        message: format!(
            "the model predicts {} classes but the dataset has {} labels",
            probabilities.first().map_or(0, Vec::len),
            names.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deploy gates are validated against `model`'s list of metrics: it must hold every
    /// headline metric of an evaluation with every robustness kind and an `ood` input (roc_auc
    /// appears for two classes only).
    #[test]
    fn gate_metrics_are_the_headline_metrics() {
        let metrics = Metrics::compute(
            &[0, 1, 1],
            &[vec![0.8, 0.2], vec![0.3, 0.7], vec![0.6, 0.4]],
            &["a".into(), "b".into()],
        )
        .expect("consistent lengths");
        let shifted = Shifted {
            examples: 3,
            accuracy: 0.5,
            macro_f1: 0.5,
            drop: 0.17,
            draw_accuracies: Vec::new(),
        };
        let kinds = perturbations(&Robustness {
            typo: Some(0.1),
            delete: Some(0.1),
            casing: true,
            seed: 3,
            draws: 1,
        });
        let file = MetricsFile {
            split: SplitName::Test,
            labels: vec!["a".into(), "b".into()],
            metrics,
            robustness: kinds
                .iter()
                .map(|kind| kind.name())
                .chain(["ood"])
                .map(|kind| (kind.to_owned(), shifted.clone()))
                .collect(),
        };
        let headline: Vec<String> = file.headline().into_keys().collect();
        let gates: Vec<&str> = crate::model::stages::GATE_METRICS
            .iter()
            .map(|(name, _, _)| *name)
            .collect();
        assert_eq!(headline, gates);
    }
}
