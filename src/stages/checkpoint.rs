//! Training's resumable state on disk and its early-stopping policy, apart from the loop that
//! uses them (`train`).
//!
//! Contract of [`Checkpoints`]: every save writes the trainer state and a [`Progress`] record
//! to `scratch_dir/checkpoint.new/`, then swaps it in by renames (`checkpoint` →
//! `checkpoint.old`, `checkpoint.new` → `checkpoint`). The sequence it guards against: 1. a
//! checkpoint exists; 2. the run is killed while writing the next one; 3. without the swap, the
//! half-written directory would be the only one. [`Checkpoints::resume`] loads the newest
//! complete directory (`checkpoint`, else `checkpoint.old`); an unreadable one means "no
//! checkpoint" (training from scratch is always correct, only slower). The best model by
//! validation loss is exported to `scratch_dir/best/` by the same write-then-rename.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ml::Trainer;
use crate::model::stages::EarlyStopping;
use crate::stages::ml_common::{write_json, MlStageError};
use crate::stages::train_log::LogRecord;

/// Where a run is, saved next to each checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Micro-batches of that epoch already trained.
    pub batch: usize,
    pub records: Vec<LogRecord>,
    pub best_validation_loss: Option<f64>,
    pub epochs_without_improvement: usize,
    pub stopped_early: bool,
}

/// What one epoch's validation loss means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The best loss so far (by more than `min_delta` under early stopping): export this model.
    Improved,
    NotImproved,
    /// Early stopping's patience ran out: stop after this epoch.
    Stop,
}

impl Progress {
    /// Records epoch-end validation `loss` under `early` (none: only the best loss is tracked,
    /// and training never stops early) and updates the counters the checkpoint persists.
    pub fn record_validation(&mut self, loss: f64, early: Option<&EarlyStopping>) -> Verdict {
        let min_delta = early.map_or(0.0, |early| early.min_delta);
        if self
            .best_validation_loss
            .is_none_or(|best| loss < best - min_delta)
        {
            self.best_validation_loss = Some(loss);
            self.epochs_without_improvement = 0;
            return Verdict::Improved;
        }
        self.epochs_without_improvement += 1;
        match early {
            Some(early) if self.epochs_without_improvement >= early.patience => {
                self.stopped_early = true;
                Verdict::Stop
            }
            _ => Verdict::NotImproved,
        }
    }
}

/// The checkpoint directories of one stage key's scratch space.
pub struct Checkpoints<'a> {
    pub scratch_dir: &'a Path,
}

impl Checkpoints<'_> {
    pub fn save(&self, trainer: &Trainer, progress: &Progress) -> Result<(), MlStageError> {
        let current = self.scratch_dir.join("checkpoint");
        let staging = self.scratch_dir.join("checkpoint.new");
        let old = self.scratch_dir.join("checkpoint.old");
        remove_dir_if_exists(&staging)?;
        trainer.save_checkpoint(&staging)?;
        write_json(&staging.join("progress.json"), progress)?;
        remove_dir_if_exists(&old)?;
        if current.is_dir() {
            rename(&current, &old)?;
        }
        rename(&staging, &current)?;
        remove_dir_if_exists(&old)
    }

    /// Restores `trainer` from the newest complete checkpoint, with its progress.
    pub fn resume(&self, trainer: &mut Trainer) -> Result<Option<Progress>, MlStageError> {
        for name in ["checkpoint", "checkpoint.old"] {
            let dir = self.scratch_dir.join(name);
            let progress_path = dir.join("progress.json");
            if !Trainer::has_checkpoint(&dir) || !progress_path.is_file() {
                continue;
            }
            let Ok(text) = fs::read_to_string(&progress_path) else {
                continue;
            };
            let Ok(progress) = serde_json::from_str::<Progress>(&text) else {
                continue;
            };
            trainer.resume(&dir)?;
            return Ok(Some(progress));
        }
        Ok(None)
    }

    /// Exports the trainer's current model as the best one so far.
    pub fn save_best(&self, trainer: &Trainer) -> Result<(), MlStageError> {
        let best = self.best_dir();
        let staging = self.scratch_dir.join("best.new");
        remove_dir_if_exists(&staging)?;
        trainer.export(&staging)?;
        remove_dir_if_exists(&best)?;
        rename(&staging, &best)
    }

    /// Where [`Self::save_best`] puts the best model (present once one was saved).
    pub fn best_dir(&self) -> PathBuf {
        self.scratch_dir.join("best")
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), MlStageError> {
    match fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(MlStageError::Write {
            path: dir.to_path_buf(),
            source: error,
        }),
        _ => Ok(()),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), MlStageError> {
    fs::rename(from, to).map_err(|source| MlStageError::Write {
        path: to.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn early(patience: usize, min_delta: f64) -> EarlyStopping {
        EarlyStopping {
            patience,
            min_delta,
        }
    }

    #[test]
    fn patience_counts_epochs_without_an_improvement_beyond_min_delta() {
        let policy = early(2, 0.1);
        let mut progress = Progress::default();
        assert_eq!(
            progress.record_validation(1.0, Some(&policy)),
            Verdict::Improved
        );
        // 0.95 is better, but not by more than min_delta.
        assert_eq!(
            progress.record_validation(0.95, Some(&policy)),
            Verdict::NotImproved
        );
        assert_eq!(
            progress.record_validation(0.85, Some(&policy)),
            Verdict::Improved
        );
        assert_eq!(progress.epochs_without_improvement, 0);
        assert_eq!(
            progress.record_validation(0.9, Some(&policy)),
            Verdict::NotImproved
        );
        assert_eq!(
            progress.record_validation(0.9, Some(&policy)),
            Verdict::Stop
        );
        assert!(progress.stopped_early);
        assert_eq!(progress.best_validation_loss, Some(0.85));
    }

    /// A resumed run writes its log and summary from the progress it read back, so that must
    /// be bit for bit what was saved. Before serde_json's exact float parsing, these two values
    /// of a real run (training seed 7 of the techniques bench) came back one ulp off, as
    /// 0.0000484 and 0.449679912343978, and the resumed stage's output digest differed from a
    /// fresh run's although its weights were identical.
    #[test]
    fn progress_comes_back_from_its_file_bit_for_bit() {
        let progress = Progress {
            epoch: 2,
            batch: 0,
            records: vec![
                LogRecord::Step {
                    step: 13,
                    epoch: 0,
                    loss: 0.6317997574806213,
                    learning_rate: 0.000048400000000000004,
                },
                LogRecord::Validation {
                    step: 125,
                    epoch: 0,
                    loss: 0.44967991234397797,
                    accuracy: 0.8,
                },
            ],
            best_validation_loss: Some(0.44967991234397797),
            epochs_without_improvement: 0,
            stopped_early: false,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("progress.json");
        write_json(&path, &progress).expect("write");
        let back: Progress =
            serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(back, progress);
        assert_eq!(
            back.best_validation_loss.map(f64::to_bits),
            progress.best_validation_loss.map(f64::to_bits)
        );
    }

    #[test]
    fn without_early_stopping_the_best_loss_is_tracked_and_training_never_stops() {
        let mut progress = Progress::default();
        for loss in [1.0, 2.0, 3.0, 4.0] {
            progress.record_validation(loss, None);
        }
        assert_eq!(progress.best_validation_loss, Some(1.0));
        assert!(!progress.stopped_early);
    }
}
