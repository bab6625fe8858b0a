use serde::{Deserialize, Serialize};

/// `kind: train`: runs the model core on the model, dataset and config it is wired to. The
/// hyperparameters live in the `configure` stage; these are execution settings that do not
/// change what is learned... except `max_steps`, which is hashed like everything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// Stop after this many optimizer steps (for smoke runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
}
