//! `Trainer`: the step-level training loop for a [`Classifier`]: seeded dropout, cross-entropy,
//! gradient accumulation, global-norm clipping, AdamW with parameter groups, warmup + decay,
//! checkpoints and export.
//!
//! Determinism: given the same seed, batches, thread count and machine, two runs produce the
//! same bytes; a run resumed from a checkpoint produces the same bytes as an uninterrupted one,
//! because a checkpoint holds everything that evolves (trainable weights, both AdamW moments,
//! the step count and the dropout RNG's stream position). The data order is the caller's.

use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::stages::{Configure, Method};

use super::adalora::{AdaLoraSchedule, RankAllocator};
use super::classifier::{Batch, Classifier};
use super::encoder::Ctx;
use super::error::{io_error, MlError, Result};
use super::objective::{self, accumulate, Objective};
use super::optim::{clip_coefficient, global_norm, AdamW, LrSchedule};
use super::rng::{self, RngState};

/// What one call to [`Trainer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepStats {
    /// The loss of this micro-batch: mean cross-entropy, or the configured objective (label
    /// smoothing, R-Drop, distillation, plus the adversarial loss).
    pub loss: f32,
    /// The learning rate of the update this micro-batch contributes to.
    pub lr: f64,
    /// Global gradient norm before clipping; `Some` when an optimizer step was taken.
    pub grad_norm: Option<f32>,
    /// Optimizer steps completed so far.
    pub optimizer_steps: usize,
    /// Whether this call completed an accumulation cycle and updated the weights.
    pub optimizer_step_taken: bool,
}

const CHECKPOINT_FORMAT: u32 = 1;
const STATE_FILE: &str = "trainer-state.json";
const PARAMS_FILE: &str = "trainable.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    format: u32,
    optimizer_steps: usize,
    schedule: LrSchedule,
    dropout_rng: RngState,
    names: Vec<String>,
}

/// Trains a [`Classifier`] one micro-batch at a time.
pub struct Trainer {
    classifier: Classifier,
    optimizer: AdamW,
    schedule: LrSchedule,
    max_grad_norm: Option<f64>,
    accumulation: usize,
    pending: Vec<Option<Tensor>>,
    pending_batches: usize,
    optimizer_steps: usize,
    rng: ChaCha8Rng,
    objective: Objective,
    /// The distillation teacher (`Trainer::set_teacher`), run at inference only.
    teacher: Option<Classifier>,
    /// AdaLoRA's penalty and rank pruning; `None` for every other method (no extra work).
    allocator: Option<RankAllocator>,
}

impl Trainer {
    /// `total_steps` is the number of optimizer steps the run will take (micro-batches divided
    /// by `configure.gradient_accumulation`); the schedule decays to zero there.
    pub fn new(classifier: Classifier, configure: &Configure, total_steps: usize) -> Result<Self> {
        if configure.gradient_accumulation == 0 {
            return Err(MlError::BadMethod {
                reason: "`gradient_accumulation` must be at least 1".to_owned(),
            });
        }
        let layer_decay = configure
            .layer_decay
            .map(|decay| (decay, classifier.config().num_hidden_layers));
        let optimizer = AdamW::new(
            &classifier.params().vars,
            configure.weight_decay,
            layer_decay,
        )?;
        let allocator = match &configure.method {
            Method::Adalora(settings) => Some(RankAllocator::new(
                &classifier.params().vars,
                AdaLoraSchedule {
                    settings: settings.clone(),
                    total_steps,
                },
            )?),
            _ => None,
        };
        let pending = vec![None; classifier.params().vars.len()];
        Ok(Self {
            optimizer,
            schedule: LrSchedule::new(
                configure.learning_rate,
                configure.schedule,
                configure.warmup_ratio,
                total_steps,
            ),
            max_grad_norm: configure.max_grad_norm,
            accumulation: configure.gradient_accumulation,
            pending,
            pending_batches: 0,
            optimizer_steps: 0,
            rng: rng::seeded(configure.seed, rng::DROPOUT_STREAM),
            objective: Objective::new(configure),
            teacher: None,
            allocator,
            classifier,
        })
    }

    /// The teacher whose logits `distillation` learns from; it must predict the same labels.
    pub fn set_teacher(&mut self, teacher: Classifier) -> Result<()> {
        if teacher.num_labels() != self.classifier.num_labels() {
            return Err(MlError::BadMethod {
                reason: format!(
                    "the teacher predicts {} labels, the student {}",
                    teacher.num_labels(),
                    self.classifier.num_labels()
                ),
            });
        }
        self.teacher = Some(teacher);
        Ok(())
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    pub fn into_classifier(self) -> Classifier {
        self.classifier
    }

    pub fn optimizer_steps(&self) -> usize {
        self.optimizer_steps
    }

    fn vars(&self) -> &[(String, Var)] {
        &self.classifier.params().vars
    }

    /// Loss and gradients of one batch with training-mode dropout (`perturbed`: see
    /// [`Trainer::step_with_perturbed`]).
    fn loss_and_grads(
        &mut self,
        batch: &Batch,
        perturbed: Option<&Batch>,
    ) -> Result<(f32, Vec<Option<Tensor>>)> {
        if !self.objective.is_plain() {
            let mut output = objective::loss_and_grads(
                &self.objective,
                &self.classifier,
                self.teacher.as_ref(),
                &mut self.rng,
                batch,
                perturbed,
            )?;
            // AdaLoRA's penalty depends on the adapter weights alone: its gradient adds to the
            // objective's (one more backward pass, only when both are on).
            if let Some(allocator) = &self.allocator {
                if let Some(penalty) = allocator.orthogonality_penalty(self.vars())? {
                    output.loss += penalty.to_scalar::<f32>()?;
                    let grads = penalty.backward()?;
                    let extra = self.classifier.gradients(&grads, &[])?;
                    accumulate(&mut output.grads, extra)?;
                }
            }
            return Ok((output.loss, output.grads));
        }
        let labels = batch.label_tensor(self.classifier.device())?;
        let dropout = self.classifier.dropout;
        let mut ctx = Ctx {
            differentiable: true,
            dropout: Some((&mut self.rng, dropout)),
            attentions: None,
        };
        let (logits, word_leaf) = self.classifier.forward_training(batch, &mut ctx)?;
        let mut loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        if let Some(allocator) = &self.allocator {
            if let Some(penalty) = allocator.orthogonality_penalty(self.vars())? {
                loss = (loss + penalty)?;
            }
        }
        let grads = loss.backward()?;
        let leaves: Vec<_> = word_leaf.iter().collect();
        let per_var = self.classifier.gradients(&grads, &leaves)?;
        Ok((loss.to_scalar::<f32>()?, per_var))
    }

    /// Forward and backward on `batch`; updates the weights after every
    /// `gradient_accumulation` calls (gradients are averaged over the cycle).
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        self.step_with_perturbed(batch, None)
    }

    /// [`Trainer::step`] with the batch's perturbed copy (the same examples, in the same
    /// order, with typos), which `consistency` needs and other settings ignore.
    pub fn step_with_perturbed(
        &mut self,
        batch: &Batch,
        perturbed: Option<&Batch>,
    ) -> Result<StepStats> {
        let (loss, grads) = self.loss_and_grads(batch, perturbed)?;
        // A parameter without a gradient (none in these models) contributes zero.
        accumulate(&mut self.pending, grads)?;
        self.pending_batches += 1;
        let lr = self.schedule.lr(self.optimizer_steps);
        let grad_norm = if self.pending_batches == self.accumulation {
            Some(self.apply()?)
        } else {
            None
        };
        Ok(StepStats {
            loss,
            lr,
            grad_norm,
            optimizer_steps: self.optimizer_steps,
            optimizer_step_taken: grad_norm.is_some(),
        })
    }

    /// Applies a partial accumulation cycle (end of an epoch); `None` when nothing is pending.
    pub fn flush(&mut self) -> Result<Option<f32>> {
        if self.pending_batches == 0 {
            return Ok(None);
        }
        self.apply().map(Some)
    }

    fn apply(&mut self) -> Result<f32> {
        // The mean over the cycle and the clipping coefficient are one factor that the
        // optimizer applies as it reads each gradient (no scaled copies).
        let scale = 1.0 / self.pending_batches as f64;
        let mut grads = Vec::with_capacity(self.pending.len());
        for ((_, var), slot) in self
            .classifier
            .params()
            .vars
            .iter()
            .zip(self.pending.iter_mut())
        {
            grads.push(match slot.take() {
                Some(sum) => sum,
                None => var.as_tensor().zeros_like()?,
            });
        }
        let norm = global_norm(&grads, scale)?;
        let grad_scale = scale * clip_coefficient(norm, self.max_grad_norm);
        let lr = self.schedule.lr(self.optimizer_steps);
        self.optimizer_steps += 1;
        self.optimizer.step(
            &self.classifier.params().vars,
            &grads,
            lr,
            self.optimizer_steps,
            grad_scale,
        )?;
        if let Some(allocator) = &mut self.allocator {
            let vars = &self.classifier.params().vars;
            allocator.update_and_allocate(vars, &grads, grad_scale, self.optimizer_steps - 1)?;
        }
        self.pending_batches = 0;
        Ok(norm)
    }

    /// Per-parameter gradient L2 norms of one batch, without changing weights, optimizer or
    /// RNG state: the check that every trainable parameter receives a gradient.
    pub fn gradient_norms(&mut self, batch: &Batch) -> Result<Vec<(String, f32)>> {
        let saved = self.rng.clone();
        let result = self.loss_and_grads(batch, None);
        self.rng = saved;
        let (_, grads) = result?;
        let mut out = Vec::with_capacity(grads.len());
        for ((name, _), grad) in self.vars().iter().zip(grads) {
            let norm = match grad {
                Some(grad) => grad.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?,
                None => 0.0,
            };
            out.push((name.clone(), norm));
        }
        Ok(out)
    }

    /// Inference logits (no dropout), one row per sequence.
    pub fn eval_logits(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        self.classifier.logits(batch)
    }

    /// Writes a resumable checkpoint into `dir` (created if needed). Must be called between
    /// accumulation cycles.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        if self.pending_batches != 0 {
            return Err(MlError::CheckpointMidAccumulation {
                pending: self.pending_batches,
                total: self.accumulation,
            });
        }
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        // The state file marks a complete checkpoint, so it is removed first and written last:
        // 1. a previous checkpoint exists in `dir`; 2. we are killed while writing tensors;
        // 3. without this, `resume` would pair new weights with the old step and moments.
        let state_path = dir.join(STATE_FILE);
        if state_path.exists() {
            std::fs::remove_file(&state_path).map_err(io_error(&state_path))?;
        }
        let mut params = std::collections::HashMap::new();
        let mut moments = std::collections::HashMap::new();
        for (index, (name, var)) in self.vars().iter().enumerate() {
            params.insert(name.clone(), var.as_detached_tensor());
            let (first, second) = self.optimizer.moment_tensors(index, var.as_tensor())?;
            moments.insert(format!("m.{name}"), first);
            moments.insert(format!("v.{name}"), second);
        }
        if let Some(allocator) = &self.allocator {
            moments.extend(allocator.state_tensors(self.vars()));
        }
        candle_core::safetensors::save(&params, dir.join(PARAMS_FILE))?;
        candle_core::safetensors::save(&moments, dir.join(OPTIMIZER_FILE))?;
        let state = CheckpointState {
            format: CHECKPOINT_FORMAT,
            optimizer_steps: self.optimizer_steps,
            schedule: self.schedule,
            dropout_rng: RngState::capture(&self.rng),
            names: self.vars().iter().map(|(name, _)| name.clone()).collect(),
        };
        let text = serde_json::to_string_pretty(&state).map_err(|source| MlError::Json {
            path: state_path.clone(),
            source,
        })?;
        std::fs::write(&state_path, text).map_err(io_error(&state_path))
    }

    /// Whether `dir` holds a complete checkpoint.
    pub fn has_checkpoint(dir: &Path) -> bool {
        dir.join(STATE_FILE).is_file()
    }

    /// Restores weights, optimizer moments, step and RNG from `dir`. The trainer must have been
    /// built like the one that saved it (same model, method, settings and total steps).
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let mismatch = |reason: String| MlError::CheckpointMismatch {
            path: dir.to_path_buf(),
            reason,
        };
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(io_error(&state_path))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(|source| MlError::Json {
                path: state_path.clone(),
                source,
            })?;
        if state.format != CHECKPOINT_FORMAT {
            return Err(mismatch(format!(
                "format {} (expected {CHECKPOINT_FORMAT})",
                state.format
            )));
        }
        if state.schedule != self.schedule {
            return Err(mismatch(format!(
                "its schedule {:?} differs from this run's {:?}",
                state.schedule, self.schedule
            )));
        }
        let names: Vec<String> = self.vars().iter().map(|(name, _)| name.clone()).collect();
        if state.names != names {
            return Err(mismatch(
                "its trainable parameters differ from this model's".to_owned(),
            ));
        }
        let rng = state
            .dropout_rng
            .restore()
            .ok_or_else(|| mismatch("its RNG position is not a number".to_owned()))?;
        let device = self.classifier.device().clone();
        let params = load_tensors(&dir.join(PARAMS_FILE), &device)?;
        let moments = load_tensors(&dir.join(OPTIMIZER_FILE), &device)?;
        let take = |map: &std::collections::HashMap<String, Tensor>,
                    key: &str,
                    like: &Tensor|
         -> Result<Tensor> {
            let tensor = map
                .get(key)
                .ok_or_else(|| mismatch(format!("tensor `{key}` is missing")))?;
            if tensor.dims() != like.dims() {
                return Err(mismatch(format!(
                    "tensor `{key}` has shape {:?}, expected {:?}",
                    tensor.dims(),
                    like.dims()
                )));
            }
            Ok(tensor.clone())
        };
        let mut restored = Vec::with_capacity(names.len());
        let mut values = Vec::with_capacity(names.len());
        for (index, (name, var)) in self.vars().iter().enumerate() {
            values.push(take(&params, name, var.as_tensor())?);
            let first = take(&moments, &format!("m.{name}"), var.as_tensor())?;
            let second = take(&moments, &format!("v.{name}"), var.as_tensor())?;
            restored.push(self.optimizer.moments_from(index, first, second)?);
        }
        // Everything was read and checked before anything is changed.
        for ((_, var), value) in self.vars().iter().zip(&values) {
            var.set(value)?;
        }
        self.optimizer.restore_moments(restored);
        if let Some(allocator) = &mut self.allocator {
            allocator.restore(&self.classifier.params().vars, &moments);
        }
        self.optimizer_steps = state.optimizer_steps;
        self.rng = rng;
        self.pending = vec![None; names.len()];
        self.pending_batches = 0;
        Ok(())
    }

    /// Under AdaLoRA, the rank each adapted module has now, by module name; empty otherwise.
    pub fn adapter_ranks(&self) -> Result<Vec<(String, usize)>> {
        match &self.allocator {
            Some(allocator) => allocator.ranks(self.vars()),
            None => Ok(Vec::new()),
        }
    }

    /// Writes the trained classifier for inference (see [`Classifier::export`]).
    pub fn export(&self, dir: &Path) -> Result<()> {
        self.classifier.export(dir)
    }
}

fn load_tensors(
    path: &PathBuf,
    device: &candle_core::Device,
) -> Result<std::collections::HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(MlError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    Ok(candle_core::safetensors::load(path, device)?)
}
