//! `train`: fine-tune the selected model on the prepared dataset with the configured settings.
//!
//! Contract:
//! - Inputs: `model` (a `select-model` artifact), `data` (a dataset with a `train` split and
//!   optionally `validation`), `config` (a `configure` artifact's `config.json`), and, when
//!   `configure` sets `distillation`, `teacher` (another `train` stage's model, run at
//!   inference to give the soft targets).
//! - Outputs: `model/` (the exported classifier, the best one by validation loss when early
//!   stopping is on), `train_log.jsonl`, `curves.svg` and `summary.json` (deterministic fields
//!   only: wall-clock figures go to the log and the stage outcome, so a bit-identical rerun
//!   gives a bit-identical artifact and downstream stages stay fresh).
//! - Batches are length-bucketed and padded per batch ([`crate::data::batching`]), a pure
//!   function of (seed, epoch), so a resumed run replays exactly the batches it had left.
//!
//! Resuming and early stopping: [`crate::stages::checkpoint`] (every `checkpoint_every` optimizer
//! steps and at each epoch end).
//!
//! `subword_dropout`: every epoch, the train split's word pieces split at random into smaller
//! pieces ([`crate::data::subword`]), with an RNG seeded by the training seed and the epoch;
//! the batches (by the original lengths) and the labels stay. With `consistency`, only the
//! clean pass is resegmented.
//!
//! `consistency`: every epoch, the train split's texts (`train.jsonl`) get typos from
//! [`crate::data::perturb`] with an RNG seeded by the training seed and the epoch, and are
//! encoded with the model's tokenizer; each batch then also runs on its examples' copies
//! (with `candidates` above 1, per example the copy the model now gets most wrong). The copies
//! are a pure function of (seed, epoch), like the batches, and the choice among them of the
//! weights, which a checkpoint restores bit for bit, so a resumed run trains on the same ones.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use crate::data::batching::{fill_rate, lengths, train_batches};
use crate::data::dataset::{read_texts, Dataset, SplitData};
use crate::data::metrics;
use crate::data::perturb::Perturbation;
use crate::data::subword::PieceSplits;
use crate::data::tokenize::{encode_all, load_tokenizer};
use crate::data::DataError;
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::ml::{softmax, Batch, Classifier, DeviceChoice, MlError, Trainer};
use crate::model::stages::{Configure, LabelLoss, SplitName};
use crate::model::{InputSlot, StageSettings};
use crate::stages::checkpoint::{Checkpoints, Progress, Verdict};
use crate::stages::configure::ResolvedConfig;
use crate::stages::evaluate::TRAINED_MODEL_DIR;
use crate::stages::ml_common::{
    input_dir, predict, read_json, write_bytes, write_json, wrong_runner, MlStageError,
};
use crate::stages::train_log::{render_svg, to_jsonl, LogRecord};

/// `summary.json` (`deploy` reads it back for the model card).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub trainable_parameters: usize,
    pub total_parameters: usize,
    pub train_examples: usize,
    pub epochs_completed: usize,
    pub optimizer_steps: usize,
    pub stopped_early: bool,
    pub final_train_loss: Option<f64>,
    pub best_validation_loss: Option<f64>,
    /// Real tokens over padded positions in epoch 0's batches.
    pub batch_fill_rate: f64,
}

pub struct TrainRunner;

impl StageRunner for TrainRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::Train(settings) = &ctx.stage.settings else {
            return Err(wrong_runner(ctx, "train").into());
        };
        let config_path = input_dir(ctx, InputSlot::Config)?.join("config.json");
        let resolved: ResolvedConfig = read_json(&config_path)?;
        let data_dir = input_dir(ctx, InputSlot::Data)?;
        let dataset = Dataset::load(&data_dir).map_err(MlStageError::from)?;
        let run = TrainRun {
            model_dir: input_dir(ctx, InputSlot::Model)?,
            data_dir,
            teacher_dir: ctx
                .inputs
                .get(&InputSlot::Teacher)
                .map(|dir| dir.join(TRAINED_MODEL_DIR)),
            dataset: &dataset,
            config: &resolved.settings,
            max_steps: settings.max_steps,
            out_dir: ctx.out_dir,
            scratch_dir: ctx.scratch_dir,
            log: ctx.log,
        };
        Ok(run.run()?)
    }
}

pub struct TrainRun<'a> {
    pub model_dir: PathBuf,
    /// The dataset's directory (its texts, for `consistency`).
    pub data_dir: PathBuf,
    /// The exported model of the teacher, for `distillation`.
    pub teacher_dir: Option<PathBuf>,
    pub dataset: &'a Dataset,
    pub config: &'a Configure,
    pub max_steps: Option<usize>,
    pub out_dir: &'a Path,
    pub scratch_dir: &'a Path,
    pub log: &'a (dyn Fn(&str) + Sync),
}

impl TrainRun<'_> {
    pub fn run(&self) -> Result<StageOutcome, MlStageError> {
        let config = self.config;
        let log = self.log;
        let train = self.dataset.splits.get(&SplitName::Train).ok_or_else(|| {
            MlStageError::MissingSplit {
                split: "train".to_owned(),
            }
        })?;
        let validation = self.dataset.splits.get(&SplitName::Validation);
        if config.early_stopping.is_some() && validation.is_none() {
            return Err(MlStageError::MissingSplit {
                split: "validation".to_owned(),
            });
        }
        let classifier = Classifier::new(
            &self.model_dir,
            self.dataset.info.labels.len(),
            config,
            DeviceChoice::Auto,
        )?;
        let pad = classifier.config().pad_token_id;
        let trainable = classifier.trainable_parameters();
        let total = classifier.total_parameters();
        log(&format!(
            "{} trainable of {} parameters ({:.2}%) on {}",
            trainable,
            total,
            100.0 * trainable as f64 / total.max(1) as f64,
            classifier.device_name()
        ));
        let lengths = lengths(train);
        let batches_per_epoch = train.len().div_ceil(config.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(config.gradient_accumulation);
        let mut total_steps = steps_per_epoch * config.epochs;
        if let Some(max) = self.max_steps {
            total_steps = total_steps.min(max);
        }
        let mut trainer = Trainer::new(classifier, config, total_steps)?;
        if let Some(teacher_dir) = &self.teacher_dir {
            let teacher = Classifier::load_trained(teacher_dir, DeviceChoice::Auto)?;
            log(&format!(
                "distilling from a {}-layer teacher",
                teacher.config().num_hidden_layers
            ));
            trainer.set_teacher(teacher)?;
        }

        let checkpoints = Checkpoints {
            scratch_dir: self.scratch_dir,
        };
        let mut progress = checkpoints.resume(&mut trainer)?.unwrap_or_default();
        if progress != Progress::default() {
            log(&format!(
                "resuming at epoch {}, batch {} (optimizer step {})",
                progress.epoch + 1,
                progress.batch,
                trainer.optimizer_steps()
            ));
        }
        let batch_fill_rate = fill_rate(
            &lengths,
            &train_batches(&lengths, config.batch_size, config.seed, 0),
        );
        log(&format!(
            "{} examples, {} batches per epoch, {} optimizer steps, batch fill {:.0}%",
            train.len(),
            batches_per_epoch,
            total_steps,
            100.0 * batch_fill_rate
        ));

        let copies = match config.consistency {
            Some(consistency) => Some(TypoCopies {
                texts: read_texts(&self.data_dir, SplitName::Train, train.len())?,
                tokenizer_path: self.model_dir.join("tokenizer.json"),
                tokenizer: load_tokenizer(
                    &self.model_dir.join("tokenizer.json"),
                    self.dataset.info.max_length,
                )?,
                labels: &train.labels,
                rate: consistency.typo,
                candidates: consistency.candidates,
                seed: config.seed,
            }),
            None => None,
        };
        if let (Some(copies), Some(consistency)) = (&copies, config.consistency) {
            log(&format!(
                "consistency: every batch also runs on its texts with typos in {:.0}% of letters, fresh each epoch{}{}",
                100.0 * copies.rate,
                if copies.candidates > 1 {
                    format!(", the worst of {} copies per text", copies.candidates)
                } else {
                    String::new()
                },
                match consistency.label_loss {
                    LabelLoss::Both => "",
                    LabelLoss::Clean => "; the labels train the clean pass only",
                }
            ));
        }

        let subword = match config.subword_dropout {
            Some(rate) => {
                let path = self.model_dir.join("tokenizer.json");
                let tokenizer = load_tokenizer(&path, self.dataset.info.max_length)?;
                let splits = PieceSplits::of_tokenizer(&tokenizer, &path)?;
                log(&format!(
                    "subword dropout: each word piece splits with probability {rate} ({} of the vocabulary's pieces can), fresh each epoch",
                    splits.splittable()
                ));
                Some(SubwordDropout {
                    splits,
                    rate,
                    max_length: self.dataset.info.max_length,
                    seed: config.seed,
                })
            }
            None => None,
        };

        let started = Instant::now();
        let mut trained_samples = 0usize;
        let mut epoch_seconds = Vec::new();
        let log_every = (total_steps / 20).max(1);
        let mut pending_losses: Vec<f64> = Vec::new();
        let mut last_lr = config.learning_rate;
        'epochs: while progress.epoch < config.epochs && !progress.stopped_early {
            let epoch = progress.epoch;
            let epoch_started = Instant::now();
            let batches = train_batches(&lengths, config.batch_size, config.seed, epoch as u64);
            let perturbed = copies
                .as_ref()
                .map(|copies| copies.of_epoch(epoch))
                .transpose()?;
            let resegmented = subword
                .as_ref()
                .map(|subword| subword.of_epoch(train, epoch));
            let examples = resegmented.as_ref().unwrap_or(train);
            let mut window = (Instant::now(), 0usize);
            for indices in batches.iter().skip(progress.batch) {
                if trainer.optimizer_steps() >= total_steps {
                    break 'epochs;
                }
                let sequences: Vec<&[u32]> = indices.iter().map(|&i| examples.example(i)).collect();
                let labels: Vec<u32> = indices.iter().map(|&i| train.labels[i]).collect();
                let perturbed_batch = match &perturbed {
                    Some(copies) => Some(worst_copies(&trainer, copies, indices, &labels, pad)?),
                    None => None,
                };
                let stats = trainer.step_with_perturbed(
                    &Batch::new(&sequences, &labels, pad)?,
                    perturbed_batch.as_ref(),
                )?;
                progress.batch += 1;
                trained_samples += indices.len();
                window.1 += indices.len();
                pending_losses.push(f64::from(stats.loss));
                last_lr = stats.lr;
                if stats.optimizer_step_taken {
                    let step = stats.optimizer_steps;
                    let rate = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                    let loss = mean(&pending_losses);
                    pending_losses.clear();
                    progress.records.push(LogRecord::Step {
                        step,
                        epoch,
                        loss,
                        learning_rate: stats.lr,
                    });
                    if step % log_every == 0 || step == total_steps {
                        log(&format!(
                            "epoch {}/{} step {step}/{total_steps} loss {loss:.4} lr {:.2e} {rate:.1} samples/s",
                            epoch + 1,
                            config.epochs,
                            stats.lr
                        ));
                        window = (Instant::now(), 0);
                    }
                    if step % config.checkpoint_every == 0 {
                        checkpoints.save(&trainer, &progress)?;
                    }
                }
            }
            // The epoch's last accumulation cycle may be partial; apply it so that every epoch
            // ends on a clean optimizer step (checkpoints must not split a cycle).
            if trainer.flush()?.is_some() {
                progress.records.push(LogRecord::Step {
                    step: trainer.optimizer_steps(),
                    epoch,
                    loss: mean(&pending_losses),
                    learning_rate: last_lr,
                });
                pending_losses.clear();
            }
            epoch_seconds.push(epoch_started.elapsed().as_secs_f64());
            progress.epoch += 1;
            progress.batch = 0;
            if let Some(validation) = validation {
                let probabilities = predict(trainer.classifier(), validation, 64)?;
                let loss = metrics::log_loss(&validation.labels, &probabilities);
                let accuracy = metrics::accuracy(&validation.labels, &probabilities);
                progress.records.push(LogRecord::Validation {
                    step: trainer.optimizer_steps(),
                    epoch,
                    loss,
                    accuracy,
                });
                log(&format!(
                    "epoch {} validation loss {loss:.4} accuracy {accuracy:.4}",
                    epoch + 1
                ));
                match progress.record_validation(loss, config.early_stopping.as_ref()) {
                    Verdict::Improved if config.early_stopping.is_some() => {
                        checkpoints.save_best(&trainer)?;
                    }
                    Verdict::Stop => log(&format!(
                        "early stop: no improvement for {} epochs",
                        progress.epochs_without_improvement
                    )),
                    Verdict::Improved | Verdict::NotImproved => {}
                }
            }
            checkpoints.save(&trainer, &progress)?;
        }

        // AdaLoRA: where the rank budget went (none for other methods).
        let ranks = trainer.adapter_ranks()?;
        if !ranks.is_empty() {
            let listed: Vec<String> = ranks
                .iter()
                .map(|(module, rank)| format!("{module} {rank}"))
                .collect();
            log(&format!("AdaLoRA ranks: {}", listed.join(", ")));
        }
        let model_out = self.out_dir.join(TRAINED_MODEL_DIR);
        let best = checkpoints.best_dir();
        if config.early_stopping.is_some() && best.is_dir() {
            copy_dir(&best, &model_out)?;
        } else {
            trainer.export(&model_out)?;
        }
        let final_train_loss = progress.records.iter().rev().find_map(|r| match r {
            LogRecord::Step { loss, .. } => Some(*loss),
            LogRecord::Validation { .. } => None,
        });
        write_bytes(
            &self.out_dir.join("train_log.jsonl"),
            to_jsonl(&progress.records).as_bytes(),
        )?;
        write_bytes(
            &self.out_dir.join("curves.svg"),
            render_svg(&progress.records).as_bytes(),
        )?;
        let summary = TrainSummary {
            trainable_parameters: trainable,
            total_parameters: total,
            train_examples: train.len(),
            epochs_completed: progress.epoch,
            optimizer_steps: trainer.optimizer_steps(),
            stopped_early: progress.stopped_early,
            final_train_loss,
            best_validation_loss: progress.best_validation_loss,
            batch_fill_rate,
        };
        write_json(&self.out_dir.join("summary.json"), &summary)?;
        let seconds = started.elapsed().as_secs_f64();
        let per_epoch = epoch_seconds
            .first()
            .map(|first| format!(", first epoch {first:.1} s"))
            .unwrap_or_default();
        log(&format!(
            "trained {trained_samples} samples in {seconds:.1} s ({:.1} samples/s{per_epoch})",
            trained_samples as f64 / seconds.max(1e-9)
        ));
        // Timings go to the log, not to the metrics: the metrics land in the lock file, which
        // users commit, and a wall-clock figure there changed the committed
        // `quickstart.lock` on every newcomer's first run although every output was identical.
        let mut metrics = BTreeMap::from([("trainable_parameters".to_owned(), trainable as f64)]);
        if let Some(loss) = final_train_loss {
            metrics.insert("train_loss".to_owned(), loss);
        }
        if let Some(loss) = progress.best_validation_loss {
            metrics.insert("validation_loss".to_owned(), loss);
        }
        Ok(StageOutcome { metrics })
    }
}

/// `subword_dropout`: the train split with its word pieces split at random, per epoch.
struct SubwordDropout {
    splits: PieceSplits,
    rate: f64,
    max_length: usize,
    seed: u64,
}

impl SubwordDropout {
    /// The RNG streams of subword dropout start here, above `TypoCopies`'s (candidate < 16 in
    /// the high half), so that turning on both never makes the two draw the same numbers.
    const STREAM: u64 = 1 << 62;

    /// Epoch `epoch`'s resegmented train split: a pure function of the split, the seed and
    /// the epoch, so a resumed run trains on the same pieces. The batches stay those of the
    /// original lengths (a split adds a piece or two to a sequence).
    fn of_epoch(&self, train: &SplitData, epoch: usize) -> SplitData {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(Self::STREAM | epoch as u64);
        let examples: Vec<(Vec<u32>, u32)> = (0..train.len())
            .map(|i| {
                let ids = self
                    .splits
                    .apply(train.example(i), self.rate, self.max_length, &mut rng);
                (ids, train.labels[i])
            })
            .collect();
        SplitData::from_examples(&examples)
    }
}

/// The typo copies of the train split for `consistency`: `candidates` sets per epoch.
struct TypoCopies<'a> {
    texts: Vec<String>,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    labels: &'a [u32],
    rate: f64,
    candidates: usize,
    seed: u64,
}

impl TypoCopies<'_> {
    /// Epoch `epoch`'s copies, tokenized, one split per candidate: a pure function of the
    /// texts, the seed and the epoch (each (epoch, candidate) has its own RNG stream, so no
    /// two share typos; candidate 0's stream is `epoch + 1`).
    fn of_epoch(&self, epoch: usize) -> Result<Vec<SplitData>, DataError> {
        let typo = Perturbation::Typo(self.rate);
        (0..self.candidates)
            .map(|candidate| {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                rng.set_stream(((candidate as u64) << 32) | (epoch as u64 + 1));
                let texts: Vec<String> = self
                    .texts
                    .iter()
                    .map(|text| typo.apply(text, &mut rng))
                    .collect();
                let encoded = encode_all(&self.tokenizer, &self.tokenizer_path, &texts)?;
                Ok(SplitData::from_examples(
                    &encoded
                        .into_iter()
                        .zip(self.labels)
                        .map(|(encoded, &label)| (encoded.ids, label))
                        .collect::<Vec<_>>(),
                ))
            })
            .collect()
    }
}

/// The typo copies of the examples `indices` as one batch: with one candidate set its
/// copies; with several, per example the copy the model now gives the lowest probability of
/// its label (the highest loss), scored in inference mode.
fn worst_copies(
    trainer: &Trainer,
    candidates: &[SplitData],
    indices: &[usize],
    labels: &[u32],
    pad: u32,
) -> Result<Batch, MlStageError> {
    fn of<'a>(copies: &'a SplitData, indices: &[usize]) -> Vec<&'a [u32]> {
        indices.iter().map(|&i| copies.example(i)).collect()
    }
    let Some((first, others)) = candidates.split_first() else {
        return Err(MlError::BadMethod {
            reason: "`consistency` needs at least one typo copy".to_owned(),
        }
        .into());
    };
    let mut chosen = of(first, indices);
    if !others.is_empty() {
        let mut lowest = vec![f32::INFINITY; indices.len()];
        for copies in candidates {
            let sequences = of(copies, indices);
            let logits = trainer.eval_logits(&Batch::new(&sequences, &[], pad)?)?;
            for (slot, (row, &label)) in logits.iter().zip(labels).enumerate() {
                let probability = softmax(row).get(label as usize).copied().unwrap_or(0.0);
                if probability < lowest[slot] {
                    lowest[slot] = probability;
                    chosen[slot] = sequences[slot];
                }
            }
        }
    }
    Ok(Batch::new(&chosen, labels, pad)?)
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), MlStageError> {
    fs::create_dir_all(to).map_err(|source| MlStageError::Write {
        path: to.to_path_buf(),
        source,
    })?;
    let entries =
        fs::read_dir(from).map_err(|error| MlStageError::from(DataError::io(from, error)))?;
    for entry in entries {
        let entry = entry.map_err(|error| MlStageError::from(DataError::io(from, error)))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(|source| MlStageError::Write {
                path: target.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_loss_and_accuracy_hand_computed() {
        let probabilities = [vec![0.8, 0.2], vec![0.6, 0.4]];
        let loss = metrics::log_loss(&[0, 1], &probabilities);
        assert!((loss - (-(0.8f64.ln()) - 0.4f64.ln()) / 2.0).abs() < 1e-6);
        assert_eq!(metrics::accuracy(&[0, 1], &probabilities), 0.5);
    }
}
