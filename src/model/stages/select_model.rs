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
}
