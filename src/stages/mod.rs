//! One [`StageRunner`] per stage kind, found through [`runner_for`].

pub mod checkpoint;
pub mod command;
pub mod configure;
pub mod evaluate;
pub mod explain;
pub mod explain_report;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod ml_common;
pub mod prepare_data;
pub mod select_model;
pub mod train;
pub mod train_log;

#[cfg(test)]
mod chain_tests;

use crate::exec::runner::StageRunner;
use crate::model::StageKind;

/// The runner of `kind`, or `None` when this build cannot run that kind yet.
///
/// Adding a kind is one match arm: `StageKind::Train => Some(&train::TrainRunner),`.
pub fn runner_for(kind: StageKind) -> Option<&'static dyn StageRunner> {
    match kind {
        StageKind::Command => Some(&command::CommandRunner),
        StageKind::SelectModel => Some(&select_model::SelectModelRunner),
        StageKind::PrepareData => Some(&prepare_data::PrepareDataRunner),
        StageKind::Configure => Some(&configure::ConfigureRunner),
        StageKind::Train => Some(&train::TrainRunner),
        StageKind::Evaluate => Some(&evaluate::EvaluateRunner),
        StageKind::Explain => Some(&explain::ExplainRunner),
        // Listed, not `_`, so that a new kind fails to compile here until it is classified.
        StageKind::Deploy => None,
    }
}
