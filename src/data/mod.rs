//! Data for the ML stages: where models and tables come from, how a table becomes a split,
//! tokenized dataset, and how predictions become metrics. Pure library: no candle, no exec.
//!
//! Contract:
//! - [`sources`] turns a [`crate::model::Source`] into a local path (downloads are cached
//!   under `<store_root>/downloads-v1/` and verified against their `blake3` pin).
//! - [`table`] reads CSV/TSV/JSONL (optionally `.bz2`/`.gz`), filters, cleans and maps labels,
//!   naming the file and the line of any bad row.
//! - [`split`] draws seeded, stratified splits; the same seed and input always give the same
//!   indices on every machine.
//! - [`tokenize`] encodes texts with a model's `tokenizer.json` in parallel, with the padding
//!   and truncation baked into that file replaced by ours.
//! - [`dataset`] is the on-disk dataset artifact (format documented there).
//! - [`perturb`] owns the text perturbations of augmentation and robustness evaluation.
//! - [`subword`] splits word pieces at random for `subword_dropout`.
//! - [`metrics`] computes classification metrics from labels and predicted probabilities.

pub mod batching;
pub mod dataset;
pub mod error;
pub mod metrics;
pub mod perturb;
pub mod sources;
pub mod split;
pub mod subword;
pub mod table;
pub mod tokenize;

pub use error::DataError;
