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
    /// Perturbed copies of the split to evaluate too; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robustness: Option<Robustness>,
}

/// `robustness: { typo: 0.05, delete: 0.1, casing: true, seed: 3 }`: one perturbed copy of the
/// evaluated split per kind given (`data::perturb` in this crate says what each does), each made with
/// its own RNG seeded with `seed`, so adding a kind leaves the others' texts unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Robustness {
    /// Probability that a letter gets a keyboard typo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typo: Option<f64>,
    /// Probability that a word is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<f64>,
    /// Each word lowercased, uppercased or capitalised at random.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub casing: bool,
    #[serde(default = "default_robustness_seed")]
    pub seed: u64,
}

fn default_split() -> SplitName {
    SplitName::Test
}
fn default_batch_size() -> usize {
    32
}
fn default_robustness_seed() -> u64 {
    3
}
