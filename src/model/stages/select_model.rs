use serde::{Deserialize, Serialize};

use super::Source;

/// `kind: select-model`: resolve and check a pretrained encoder (architecture, tokenizer,
/// weights) and record what was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectModel {
    pub source: Source,
    /// Refuse pickle `.bin` weights unless this is set: unpickling runs arbitrary code.
    #[serde(default)]
    pub allow_pickle: bool,
    /// Keep only the first `layers` encoder layers: a shallower student for `distillation`
    /// (the artifact's `config.json` then says `layers`). Absent: every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
}
