//! Typed settings of each stage kind, one file per kind (after candle-transformers' one model
//! per file). Each struct is the *resolved* form: defaults filled in, params substituted. They
//! derive `Deserialize` (with `deny_unknown_fields`) so validation can map a `with:` block onto
//! them, and `Serialize` so the fingerprint can hash their canonical form.

mod command;
mod configure;
mod deploy;
mod evaluate;
mod explain;
mod prepare_data;
mod select_model;
mod source;
mod techniques;
mod train;

pub use command::{committed_secrets, is_env_name, looks_secret, Command, CommittedSecret};
pub use configure::{
    is_adapter_target, AdaLora, Configure, EarlyStopping, Method, Pooling, Problem, Schedule,
};
pub use deploy::{Deploy, Precision, GATE_METRICS};
pub use evaluate::{Evaluate, Robustness, MAX_ROBUSTNESS_DRAWS};
pub use explain::{
    Explain, ExplainBaseline, ExplainMethod, DEFAULT_STEPS as DEFAULT_EXPLAIN_STEPS,
};
pub use prepare_data::{
    Augment, AugmentOps, Clean, DataFormat, PrepareData, RowFilter, Split, SplitName,
    MAX_AUGMENT_COPIES,
};
pub use select_model::SelectModel;
pub use source::Source;
pub use techniques::{
    Adversarial, AdversarialMethod, Consistency, ConsistencyTerm, Distillation, LabelLoss, RDrop,
};
pub use train::Train;
