//! One [`StageRunner`] per stage kind, found through [`runner_for`].

pub mod command;

use crate::exec::runner::StageRunner;
use crate::model::StageKind;

/// The runner of `kind`, or `None` when this build cannot run that kind yet.
///
/// Adding a kind is one match arm: `StageKind::Train => Some(&train::TrainRunner),`.
pub fn runner_for(kind: StageKind) -> Option<&'static dyn StageRunner> {
    match kind {
        StageKind::Command => Some(&command::CommandRunner),
        _ => None,
    }
}
