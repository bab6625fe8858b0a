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

/// `robustness: { typo: 0.05, delete: 0.1, casing: true, seed: 3, draws: 1 }`: `draws`
/// perturbed copies of the evaluated split per kind given (`data::perturb` in this crate says
/// what each does), each made with its own RNG seeded with `seed` plus the draw's index, so
/// adding a kind leaves the others' texts unchanged.
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
    /// Copies per kind, from seeds `seed`, `seed + 1`, …; accuracy and drop are their mean.
    /// One copy's drop moves by a point or more with its seed (which words a typo hits decides
    /// much of it), so a comparison of two models on one draw can be decided by the draw.
    #[serde(default = "one_draw", skip_serializing_if = "is_one_draw")]
    pub draws: u32,
}

/// Most copies per kind `robustness.draws` takes: each is a full inference pass on the split.
pub const MAX_ROBUSTNESS_DRAWS: u32 = 32;

fn one_draw() -> u32 {
    1
}
fn is_one_draw(draws: &u32) -> bool {
    *draws == 1
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
