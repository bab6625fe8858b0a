//! The ML core: a trainable BERT-family encoder on candle, classification heads, fine-tuning
//! methods (full, frozen layers, LoRA, IA3), AdamW with parameter groups, schedules, clipping,
//! gradient accumulation, checkpoints that resume bit for bit, and export for inference.
//!
//! Only this module imports candle. It may use `crate::model` (stage settings) and nothing
//! else from the crate. Everything random comes from ChaCha8 streams of `Configure::seed`.

mod classifier;
mod config;
mod encoder;
mod error;
pub mod fixtures;
mod optim;
mod rng;
mod trainer;
mod weights;

pub use classifier::{Batch, Classifier, DeviceChoice};
pub use config::{Activation, Architecture, EncoderConfig};
pub use encoder::{Ctx, Encoder};
pub use error::MlError;
pub use trainer::{StepStats, Trainer};
pub use weights::LoadReport;
