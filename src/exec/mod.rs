//! Runs the pipeline graph: for each stage in topological order, compute its key, then skip it
//! (cached) or run it through a [`runner::StageRunner`] and record its outputs.

pub mod runner;
