//! `evaluate`: metrics of a trained model on one split of the dataset.
//!
//! Contract: writes `metrics.json` (the [`Metrics`] of [`crate::data::metrics`], plus the split
//! and label names) and `predictions.jsonl` (per example, in dataset order: label, predicted
//! class and probabilities), and returns the headline metrics for the lock file. Inference runs
//! on length-sorted batches padded per batch; results are scattered back to dataset order, so
//! the output does not depend on the batch size beyond float rounding.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::data::dataset::Dataset;
use crate::data::metrics::{argmax, Metrics};
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::ml::{Classifier, DeviceChoice};
use crate::model::stages::SplitName;
use crate::model::{InputSlot, StageSettings};
use crate::stages::ml_common::{
    input_dir, predict, write_bytes, write_json, wrong_runner, MlStageError,
};

/// Where `train` puts the exported model inside its artifact.
pub const TRAINED_MODEL_DIR: &str = "model";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsFile {
    pub split: SplitName,
    pub labels: Vec<String>,
    #[serde(flatten)]
    pub metrics: Metrics,
}

pub struct EvaluateRunner;

impl StageRunner for EvaluateRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::Evaluate(settings) = &ctx.stage.settings else {
            return Err(wrong_runner(ctx, "evaluate").into());
        };
        let model_dir = input_dir(ctx, InputSlot::Model)?.join(TRAINED_MODEL_DIR);
        let dataset =
            Dataset::load(&input_dir(ctx, InputSlot::Data)?).map_err(MlStageError::from)?;
        let metrics = evaluate(
            &model_dir,
            &dataset,
            settings.split,
            settings.batch_size,
            ctx.out_dir,
            ctx.log,
        )?;
        Ok(StageOutcome {
            metrics: headline(&metrics),
        })
    }
}

/// The metrics recorded in the lock file.
pub fn headline(metrics: &Metrics) -> BTreeMap<String, f64> {
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

pub fn evaluate(
    model_dir: &Path,
    dataset: &Dataset,
    split: SplitName,
    batch_size: usize,
    out_dir: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Metrics, MlStageError> {
    let data = dataset
        .splits
        .get(&split)
        .ok_or_else(|| MlStageError::MissingSplit {
            split: split.as_str().to_owned(),
        })?;
    let classifier = Classifier::load_trained(model_dir, DeviceChoice::Auto)?;
    let started = std::time::Instant::now();
    let probabilities = predict(&classifier, data, batch_size)?;
    log(&format!(
        "{} examples of `{}` in {:.1} s on {}",
        data.len(),
        split.as_str(),
        started.elapsed().as_secs_f64(),
        classifier.device_name()
    ));
    let metrics =
        Metrics::compute(&data.labels, &probabilities, &dataset.info.labels).ok_or_else(|| {
            MlStageError::InconsistentModel {
                path: model_dir.to_path_buf(),
                message: format!(
                    "the model predicts {} classes but the dataset has {} labels",
                    probabilities.first().map_or(0, Vec::len),
                    dataset.info.labels.len()
                ),
            }
        })?;
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
    write_json(
        &out_dir.join("metrics.json"),
        &MetricsFile {
            split,
            labels: dataset.info.labels.clone(),
            metrics: metrics.clone(),
        },
    )?;
    log(&format!(
        "accuracy {:.4}, macro F1 {:.4}, log loss {:.4}",
        metrics.accuracy, metrics.macro_f1, metrics.log_loss
    ));
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deploy gates are validated against `model`'s list of metrics: it must hold every
    /// headline metric (roc_auc appears for two classes only).
    #[test]
    fn gate_metrics_are_the_headline_metrics() {
        let metrics = Metrics::compute(
            &[0, 1, 1],
            &[vec![0.8, 0.2], vec![0.3, 0.7], vec![0.6, 0.4]],
            &["a".into(), "b".into()],
        )
        .expect("consistent lengths");
        let headline: Vec<String> = headline(&metrics).into_keys().collect();
        let gates: Vec<&str> = crate::model::stages::GATE_METRICS
            .iter()
            .map(|(name, _, _)| *name)
            .collect();
        assert_eq!(headline, gates);
    }
}
