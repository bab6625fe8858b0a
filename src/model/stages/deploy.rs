use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `kind: deploy`: write a servable bundle, gated on metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Metric name → minimum value; the stage fails when a gate is not met.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require: BTreeMap<String, f64>,
}
