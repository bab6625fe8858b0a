use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `kind: deploy`: write a servable bundle, gated on metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Metric name → minimum value; the stage fails when a gate is not met.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require: BTreeMap<String, f64>,
    /// The arithmetic the bundle is served with; `int8` is evaluated again on the `data`
    /// input's evaluated split, and the gates apply to that evaluation.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// Inference arithmetic of a deployed model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// The trained weights as they are.
    #[default]
    F32,
    /// Linear layers in int8 (weights per output channel, activations per token); the bundle
    /// still holds the f32 weights, which `taper serve`/`predict` quantize when they load it.
    Int8,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// The metrics a gate may name, each with the range its values lie in: the headline metrics an
/// `evaluate` stage reports (`stages::evaluate::MetricsFile::headline`, whose tests check this
/// list). The `_accuracy`/`_drop` pairs come from `robustness:` and the `ood` input; a drop
/// (clean accuracy minus perturbed accuracy) lies in [-1, 1].
pub const GATE_METRICS: [(&str, f64, f64); 14] = [
    ("accuracy", 0.0, 1.0),
    ("casing_accuracy", 0.0, 1.0),
    ("casing_drop", -1.0, 1.0),
    ("delete_accuracy", 0.0, 1.0),
    ("delete_drop", -1.0, 1.0),
    ("expected_calibration_error", 0.0, 1.0),
    ("log_loss", 0.0, f64::INFINITY),
    ("macro_f1", 0.0, 1.0),
    ("micro_f1", 0.0, 1.0),
    ("ood_accuracy", 0.0, 1.0),
    ("ood_drop", -1.0, 1.0),
    ("roc_auc", 0.0, 1.0),
    ("typo_accuracy", 0.0, 1.0),
    ("typo_drop", -1.0, 1.0),
];
