//! One [`StageRunner`] per stage kind, found through [`runner_for`].

pub mod bundle;
pub mod checkpoint;
pub mod command;
pub mod configure;
pub mod deploy;
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
#[cfg(test)]
mod deploy_tests;

use crate::exec::runner::StageRunner;
use crate::model::StageKind;

/// The runner of `kind`. Every kind has one; the `Option` is the executor's registry shape,
/// where a test registry may leave kinds out (`taper::exec::no_runner`).
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
        StageKind::Deploy => Some(&deploy::DeployRunner),
    }
}
