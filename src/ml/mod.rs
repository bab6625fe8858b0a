//! The ML core: a trainable BERT-family encoder on candle, classification heads, fine-tuning
//! methods (full, frozen layers, LoRA, IA3, Houlsby adapters, AdaLoRA), AdamW with parameter
//! groups, schedules, clipping, gradient accumulation, checkpoints that resume bit for bit, and export for inference (taper's
//! own layout, or a standard HuggingFace sequence-classification checkpoint: `hf.rs`).
//!
//! Typical use by the train/evaluate runners (no candle types needed):
//!
//! ```no_run
//! # fn demo(settings: &taper::model::Configure) -> Result<(), taper::ml::MlError> {
//! use taper::ml::{Batch, Classifier, DeviceChoice, Trainer};
//! let dir = std::path::Path::new("model"); // config.json + model.safetensors
//! let classifier = Classifier::new(dir, 2, settings, DeviceChoice::Auto)?;
//! let report = classifier.load_report().clone(); // freshly initialised + unused names
//! let mut trainer = Trainer::new(classifier, settings, /* optimizer steps */ 100)?;
//! let batch = Batch::new(&[&[101, 2023, 102], &[101, 102]], &[1, 0], 0)?;
//! let stats = trainer.step(&batch)?; // loss, lr, grad_norm, optimizer_step_taken
//! trainer.save_checkpoint(std::path::Path::new("ckpt"))?; // between accumulation cycles
//! let logits = trainer.eval_logits(&batch)?;
//! trainer.export(std::path::Path::new("out"))?;
//! let trained = Classifier::load_trained(std::path::Path::new("out"), DeviceChoice::Auto)?;
//! # let _ = (report, stats, logits, trained); Ok(()) }
//! ```
//!
//! Only this module imports candle. It may use `crate::model` (stage settings) and nothing
//! else from the crate. Everything random comes from ChaCha8 streams of `Configure::seed`.

mod adalora;
mod classifier;
mod config;
mod encoder;
mod error;
mod explain;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod hf;
mod kernels;
mod objective;
mod optim;
mod rng;
mod runtime;
mod trainer;
mod weights;

pub use classifier::{softmax, Batch, Classifier, DeviceChoice};
pub use config::{Activation, Architecture, EncoderConfig};
pub use encoder::{Ctx, Encoder};
pub use error::MlError;
pub use explain::{edited_probabilities, explain, Attribution, Baseline, Explanation};
pub use hf::hf_class_name;
pub use runtime::tune_runtime;
pub use trainer::{StepStats, Trainer};
pub use weights::LoadReport;
