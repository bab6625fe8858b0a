//! taper: a declarative, cached, reproducible pipeline engine for fine-tuning foundation models.
//!
//! Data flows one way through the modules, and no module imports one listed after it:
//!
//! `spec` (YAML → spanned raw AST) → `model` (validated, typed pipeline) → `graph` (petgraph DAG)
//! → `fingerprint` / `cache` (stage keys, content-addressed store) → `exec` (scheduler) →
//! `stages` (one runner per stage kind, and the deploy bundle) → `serve` (HTTP) → `cli`.
//!
//! `data` (sources, tables, splits, tokenization, metrics) and `ml` (candle encoder, PEFT,
//! optimizer) are libraries that know only `model`; the stage runners call them.
//! `tests/it/layering.rs` enforces the direction.
//!
//! Only `ml` imports candle; a stage never parses YAML; spans stop at validation.

pub mod cache;
pub mod cli;
pub mod data;
pub mod exec;
pub mod fingerprint;
pub mod graph;
pub mod ml;
pub mod model;
pub mod serve;
pub mod spec;
pub mod stages;
