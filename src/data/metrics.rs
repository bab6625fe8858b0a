//! Classification metrics from true labels and predicted probabilities.
//!
//! Contract: [`Metrics::compute`] takes one probability row per example (`classes` values,
//! summing to about 1) and the true label ids. The prediction is the arg-max (ties to the lower
//! id). Definitions follow scikit-learn:
//! - precision/recall/F1 of a class with no predictions / no support are 0 (its
//!   `zero_division=0`);
//! - macro F1 is the unweighted mean over classes; micro F1 (single-label) equals accuracy;
//! - ROC-AUC (binary only) is the Mann–Whitney statistic of the class-1 probability, ties
//!   counted one half; absent when only one class is present;
//! - log loss clips probabilities to `[1e-15, 1 − 1e-15]`, natural log, mean;
//! - ECE uses 15 equal-width confidence bins `(k/15, (k+1)/15]` (0 in the first), weighting each
//!   bin's |accuracy − mean confidence| by its share of examples.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A metrics file's text as a JSON value: YAML for `.yaml`/`.yml`, JSON otherwise (YAML is a
/// superset of JSON, but JSON's own parser gives the better error for a broken `.json`).
pub fn parse_document(path: &std::path::Path, text: &str) -> Result<serde_json::Value, String> {
    match path.extension().and_then(|extension| extension.to_str()) {
        Some("yaml" | "yml") => serde_yaml::from_str(text).map_err(|error| error.to_string()),
        _ => serde_json::from_str(text).map_err(|error| error.to_string()),
    }
}

/// Every scalar leaf of a JSON document under a dotted name: `{"a": {"b": 1}, "c": [2]}` →
/// `a.b`, `c.0`. Items of a list of objects that each have a string `label` are named by it
/// (`per_class.neg.f1`, not `per_class.0.f1`), so names stay stable when classes are reordered.
pub fn flatten(value: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    fn walk(
        prefix: &str,
        value: &serde_json::Value,
        out: &mut BTreeMap<String, serde_json::Value>,
    ) {
        let join = |key: &str| {
            if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            }
        };
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    walk(&join(key), child, out);
                }
            }
            serde_json::Value::Array(items) => {
                let labels: Option<Vec<&str>> = items
                    .iter()
                    .map(|item| item.get("label").and_then(serde_json::Value::as_str))
                    .collect();
                for (index, child) in items.iter().enumerate() {
                    let name = labels
                        .as_ref()
                        .map_or_else(|| index.to_string(), |labels| labels[index].to_owned());
                    walk(&join(&name), child, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// The numbers of a metrics document, flattened ([`flatten`]). Lists of plain values (a
/// confusion matrix, a per-epoch series) are not headline metrics and are left out.
pub fn numeric_metrics(value: &serde_json::Value) -> BTreeMap<String, f64> {
    fn is_series(value: &serde_json::Value) -> bool {
        value.as_array().is_some_and(|items| {
            items.is_empty()
                || !items
                    .iter()
                    .all(|item| item.get("label").is_some_and(serde_json::Value::is_string))
        })
    }
    fn strip(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => serde_json::Value::Object(
                map.iter()
                    .filter(|(_, child)| !is_series(child))
                    .map(|(key, child)| (key.clone(), strip(child)))
                    .collect(),
            ),
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(strip).collect())
            }
            leaf => leaf.clone(),
        }
    }
    flatten(&strip(value))
        .into_iter()
        .filter_map(|(name, leaf)| leaf.as_f64().map(|number| (name, number)))
        .collect()
}

pub const ECE_BINS: usize = 15;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub examples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub micro_f1: f64,
    pub log_loss: f64,
    pub expected_calibration_error: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

impl Metrics {
    /// `probabilities[i]` is example `i`'s row; `labels[i] < names.len()`. Panics on mismatched
    /// lengths are prevented by returning `None`.
    pub fn compute(labels: &[u32], probabilities: &[Vec<f32>], names: &[String]) -> Option<Self> {
        let classes = names.len();
        if labels.len() != probabilities.len()
            || labels.is_empty()
            || probabilities.iter().any(|row| row.len() != classes)
            || labels.iter().any(|&l| l as usize >= classes)
        {
            return None;
        }
        let n = labels.len();
        let predictions: Vec<usize> = probabilities.iter().map(|row| argmax(row)).collect();
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&label, &predicted) in labels.iter().zip(&predictions) {
            confusion[label as usize][predicted] += 1;
        }
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let accuracy = correct as f64 / n as f64;
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassMetrics> = (0..classes)
            .map(|c| {
                let true_positive = confusion[c][c];
                let predicted: usize = (0..classes).map(|t| confusion[t][c]).sum();
                let support: usize = confusion[c].iter().sum();
                let precision = ratio(true_positive, predicted);
                let recall = ratio(true_positive, support);
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassMetrics {
                    label: names[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / classes as f64;
        let log_loss = log_loss(labels, probabilities);
        let roc_auc = if classes == 2 {
            let scores: Vec<f64> = probabilities.iter().map(|row| f64::from(row[1])).collect();
            roc_auc(labels, &scores)
        } else {
            None
        };
        Some(Metrics {
            examples: n,
            accuracy,
            macro_f1,
            micro_f1: accuracy,
            log_loss,
            expected_calibration_error: expected_calibration_error(labels, probabilities),
            roc_auc,
            per_class,
            confusion,
        })
    }
}

/// Mean cross-entropy of the true labels, probabilities clipped to `[1e-15, 1 − 1e-15]` (so a
/// confidently wrong 0 gives a finite loss); 0 for no examples. Training's validation loss and
/// evaluation's log loss are both this function.
pub fn log_loss(labels: &[u32], probabilities: &[Vec<f32>]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    labels
        .iter()
        .zip(probabilities)
        .map(|(&label, row)| {
            -f64::from(row[label as usize])
                .clamp(1e-15, 1.0 - 1e-15)
                .ln()
        })
        .sum::<f64>()
        / labels.len() as f64
}

/// Share of examples whose arg-max prediction is the true label; 0 for no examples.
pub fn accuracy(labels: &[u32], probabilities: &[Vec<f32>]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let correct = labels
        .iter()
        .zip(probabilities)
        .filter(|(&label, row)| argmax(row) == label as usize)
        .count();
    correct as f64 / labels.len() as f64
}

/// The predicted class: the index of the largest probability, ties to the lower index.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (index, value) in row.iter().enumerate() {
        if *value > row[best] {
            best = index;
        }
    }
    best
}

/// Mann–Whitney AUC: the probability that a random positive scores above a random negative.
pub fn roc_auc(labels: &[u32], scores: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties (1-based).
    let mut ranks = vec![0.0; scores.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let rank = (start + 1 + end) as f64 / 2.0;
        for &index in &order[start..end] {
            ranks[index] = rank;
        }
        start = end;
    }
    let positives = labels.iter().filter(|&&l| l == 1).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let rank_sum: f64 = labels
        .iter()
        .zip(&ranks)
        .filter(|(&l, _)| l == 1)
        .map(|(_, &r)| r)
        .sum();
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

pub fn expected_calibration_error(labels: &[u32], probabilities: &[Vec<f32>]) -> f64 {
    let mut count = [0usize; ECE_BINS];
    let mut confidence = [0.0f64; ECE_BINS];
    let mut correct = [0usize; ECE_BINS];
    for (&label, row) in labels.iter().zip(probabilities) {
        let predicted = argmax(row);
        let p = f64::from(row[predicted]);
        let bin = ((p * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        count[bin] += 1;
        confidence[bin] += p;
        correct[bin] += usize::from(predicted == label as usize);
    }
    let n = labels.len() as f64;
    (0..ECE_BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let c = count[b] as f64;
            (c / n) * (correct[b] as f64 / c - confidence[b] / c).abs()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    /// Hand check (scikit-learn gives the same):
    /// ```python
    /// y = [0, 0, 1, 1, 1]; p1 = [0.2, 0.6, 0.7, 0.4, 0.9]
    /// accuracy_score(y, [0,1,1,0,1]) = 0.6; roc_auc_score(y, p1) = 5/6
    /// log_loss(y, p1) = -(ln .8 + ln .4 + ln .7 + ln .4 + ln .9)/5
    /// ```
    #[test]
    fn binary_hand_computed() {
        let labels = [0, 0, 1, 1, 1];
        let p1 = [0.2f32, 0.6, 0.7, 0.4, 0.9];
        let probabilities: Vec<Vec<f32>> = p1.iter().map(|&p| vec![1.0 - p, p]).collect();
        let m = Metrics::compute(&labels, &probabilities, &names(2)).unwrap();
        assert_eq!(m.confusion, vec![vec![1, 1], vec![1, 2]]);
        close(m.accuracy, 0.6);
        // class 0: tp 1, predicted 2, support 2 → P .5 R .5 F .5
        // class 1: tp 2, predicted 3, support 3 → P 2/3 R 2/3 F 2/3
        close(m.per_class[0].f1, 0.5);
        close(m.per_class[1].precision, 2.0 / 3.0);
        close(m.macro_f1, (0.5 + 2.0 / 3.0) / 2.0);
        close(m.micro_f1, 0.6);
        // pairs (pos > neg): .7>.2 .7>.6 .4>.2 .9>.2 .9>.6 = 5 of 6
        close(m.roc_auc.unwrap(), 5.0 / 6.0);
        let expected_loss =
            -(0.8f64.ln() + 0.4f64.ln() + 0.7f64.ln() + 0.4f64.ln() + 0.9f64.ln()) / 5.0;
        assert!((m.log_loss - expected_loss).abs() < 1e-6);
        // confidences .8 .6 .7 .6 .9 → bins (12/15..13/15]: .8 ok; (8/15..9/15]: .6 wrong,
        // .6 wrong; (10/15..11/15]: .7 ok; (13/15..14/15]: .9 ok
        // ECE = 1/5·|1−.8| + 2/5·|0−.6| + 1/5·|1−.7| + 1/5·|1−.9| = (.2 + 1.2 + .3 + .1)/5 = .36
        assert!((m.expected_calibration_error - 0.36).abs() < 1e-6);
    }

    #[test]
    fn multiclass_zero_division_and_no_auc() {
        // Nobody predicts class 2, and class 2 has support 1.
        let labels = [0, 1, 2, 1];
        let probabilities = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.1, 0.8, 0.1],
            vec![0.5, 0.4, 0.1],
            vec![0.6, 0.3, 0.1],
        ];
        let m = Metrics::compute(&labels, &probabilities, &names(3)).unwrap();
        assert_eq!(
            m.confusion,
            vec![vec![1, 0, 0], vec![1, 1, 0], vec![1, 0, 0]]
        );
        close(m.accuracy, 0.5);
        assert_eq!(m.per_class[2].f1, 0.0);
        // class 0: P 1/3 R 1 F .5; class 1: P 1 R .5 F 2/3
        close(m.macro_f1, (0.5 + 2.0 / 3.0 + 0.0) / 3.0);
        assert_eq!(m.roc_auc, None);
    }

    #[test]
    fn auc_ties_count_half_and_one_class_has_none() {
        close(roc_auc(&[0, 1], &[0.5, 0.5]).unwrap(), 0.5);
        assert_eq!(roc_auc(&[1, 1], &[0.1, 0.9]), None);
    }

    /// A confidently wrong prediction (probability 0 for the true class) costs -ln(1e-15), not
    /// infinity; training's validation loss and evaluation's log loss both come from here.
    #[test]
    fn log_loss_clips_and_accuracy_uses_argmax_ties_low() {
        let loss = log_loss(&[0], &[vec![0.0, 1.0]]);
        assert!((loss - (-(1e-15f64).ln())).abs() < 1e-9, "{loss}");
        assert_eq!(log_loss(&[], &[]), 0.0);
        assert_eq!(accuracy(&[0, 1], &[vec![0.5, 0.5], vec![0.5, 0.5]]), 0.5);
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
    }

    #[test]
    fn mismatched_inputs_give_none() {
        assert!(Metrics::compute(&[0], &[vec![1.0]], &names(2)).is_none());
        assert!(Metrics::compute(&[2], &[vec![0.5, 0.5]], &names(2)).is_none());
        assert!(Metrics::compute(&[], &[], &names(2)).is_none());
    }

    #[test]
    fn nested_metrics_flatten_to_dotted_names_without_series() {
        let document = serde_json::json!({
            "accuracy": 0.8,
            "eval": {"loss": 0.4, "split": "test", "by_length": {"short": 0.9}},
            "per_class": [{"label": "neg", "f1": 0.7}, {"label": "pos", "f1": 0.75}],
            "confusion": [[8, 2], [1, 9]],
            "history": [0.9, 0.5]
        });
        let numbers = numeric_metrics(&document);
        let names: Vec<&str> = numbers.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "accuracy",
                "eval.by_length.short",
                "eval.loss",
                "per_class.neg.f1",
                "per_class.pos.f1"
            ]
        );
        assert_eq!(flatten(&document)["confusion.1.0"], serde_json::json!(1));
        assert_eq!(flatten(&document)["eval.split"], serde_json::json!("test"));
    }
}
