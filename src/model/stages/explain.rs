use serde::{Deserialize, Serialize};

use super::SplitName;

/// `kind: explain`: token attributions for some examples of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explain {
    #[serde(default)]
    pub method: ExplainMethod,
    #[serde(default = "default_split")]
    pub split: SplitName,
    /// How many examples to explain.
    #[serde(default = "default_examples")]
    pub examples: usize,
    /// Interpolation steps of integrated gradients.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// What integrated gradients integrates from.
    #[serde(default)]
    pub baseline: ExplainBaseline,
}

fn default_split() -> SplitName {
    SplitName::Test
}
fn default_examples() -> usize {
    20
}
fn default_steps() -> usize {
    DEFAULT_STEPS
}

/// Integrated gradients' steps when none are given (stage, `taper explain`, `POST /explain`).
pub const DEFAULT_STEPS: usize = 32;

impl Explain {
    /// Settings for explaining one given text (`taper explain`, `POST /explain`): the split
    /// and example count belong to the stage and are unused there.
    pub fn one_text(method: ExplainMethod, steps: usize, baseline: ExplainBaseline) -> Self {
        Self {
            method,
            split: SplitName::Test,
            examples: 1,
            steps,
            baseline,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ExplainMethod {
    #[default]
    IntegratedGradients,
    GradientTimesInput,
    Occlusion,
}

/// The integrated-gradients baseline at every word position (`[CLS]`/`[SEP]` stay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ExplainBaseline {
    /// The pad token's embedding (Captum's usual choice for BERT).
    #[default]
    Pad,
    /// The `[MASK]` token's embedding.
    Mask,
    /// The zero vector.
    Zero,
}
