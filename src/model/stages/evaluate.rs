use serde::{Deserialize, Serialize};

use super::SplitName;

/// `kind: evaluate`: metrics of a trained model on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    #[serde(default = "default_split")]
    pub split: SplitName,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_split() -> SplitName {
    SplitName::Test
}
fn default_batch_size() -> usize {
    32
}
