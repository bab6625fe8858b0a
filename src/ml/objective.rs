//! Training objectives beyond plain cross-entropy (issue 13): label smoothing, R-Drop,
//! adversarial training on the word embeddings (FGM, PGD) and knowledge distillation.
//!
//! Contract:
//! - [`Objective::is_plain`] settings never reach this file: the trainer keeps its one-pass
//!   cross-entropy path for them, with no extra forward pass or allocation.
//! - Every term is built from differentiable candle ops on the `[batch, labels]` logits (tiny
//!   tensors), so gradients reach the encoder through the fused kernels' backward passes.
//! - Reductions follow torch: cross-entropy and KL are means over the batch (`reduction=
//!   "mean"` / `"batchmean"`).
//! - Adversarial perturbations are taken on the word rows of the batch (the lookup's output,
//!   before positions and LayerNorm), as one `[batch, t, hidden]` tensor whose L2 norm is at
//!   most `epsilon` (the FGM/PGD reference code normalizes by the norm of the whole gradient).

use candle_core::{Tensor, D};
use candle_nn::ops::log_softmax;
use rand_chacha::ChaCha8Rng;

use crate::model::stages::{Adversarial, AdversarialMethod, Configure, Distillation};

use super::classifier::{Batch, Classifier, WordLeaf};
use super::encoder::Ctx;
use super::error::{MlError, Result};

/// The loss terms a `configure` stage adds to cross-entropy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Objective {
    pub(crate) label_smoothing: f64,
    pub(crate) rdrop: Option<f64>,
    pub(crate) adversarial: Option<Adversarial>,
    pub(crate) distillation: Option<Distillation>,
}

impl Objective {
    pub(crate) fn new(configure: &Configure) -> Self {
        Self {
            label_smoothing: configure.label_smoothing.unwrap_or(0.0),
            rdrop: configure.rdrop.map(|rdrop| rdrop.alpha),
            adversarial: configure.adversarial,
            distillation: configure.distillation,
        }
    }

    /// Plain cross-entropy: the trainer's default path.
    pub(crate) fn is_plain(&self) -> bool {
        self.label_smoothing == 0.0
            && self.rdrop.is_none()
            && self.adversarial.is_none()
            && self.distillation.is_none()
    }
}

/// Mean label-smoothed cross-entropy, as torch's `cross_entropy(logits, labels,
/// label_smoothing=s)`: `(1 − s) · NLL + s · mean_k(−log p_k)`.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    let log_p = log_softmax(logits, D::Minus1)?;
    let nll = candle_nn::loss::nll(&log_p, labels)?;
    if smoothing == 0.0 {
        return Ok(nll);
    }
    let uniform = log_p.mean(D::Minus1)?.mean_all()?.neg()?;
    Ok(((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?)
}

/// `KL(p ‖ q)` from log-probabilities `[batch, labels]`, summed over labels and averaged over
/// the batch (torch's `kl_div(log_q, log_p, reduction="batchmean", log_target=True)`).
fn kl_divergence(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    let batch = log_p.dim(0)? as f64;
    Ok((log_p.exp()? * (log_p - log_q)?)?.sum_all()?.affine(1.0 / batch, 0.0)?)
}

/// R-Drop's consistency term of two passes' logits: `(KL(p₁ ‖ p₂) + KL(p₂ ‖ p₁)) / 2`, with
/// gradients through both passes (as the paper's code: neither side is detached).
pub(crate) fn symmetric_kl(first: &Tensor, second: &Tensor) -> Result<Tensor> {
    let first = log_softmax(first, D::Minus1)?;
    let second = log_softmax(second, D::Minus1)?;
    Ok(((kl_divergence(&first, &second)? + kl_divergence(&second, &first)?)? * 0.5)?)
}

/// Hinton's distillation term: `T² · KL(softmax(t/T) ‖ softmax(s/T))` of student logits `s`
/// and (constant) teacher logits `t`. T² keeps its gradient's scale independent of T.
pub(crate) fn distillation_kl(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let student = log_softmax(&(student / temperature)?, D::Minus1)?;
    let teacher = log_softmax(&(teacher.detach() / temperature)?, D::Minus1)?;
    Ok((kl_divergence(&teacher, &student)? * (temperature * temperature))?)
}

/// The loss of one pass's logits: (smoothed) cross-entropy, mixed with the distillation term
/// when a teacher's logits are given.
struct TaskLoss<'a> {
    labels: &'a Tensor,
    smoothing: f64,
    distillation: Option<(&'a Tensor, Distillation)>,
}

impl TaskLoss<'_> {
    fn of(&self, logits: &Tensor) -> Result<Tensor> {
        let Some((teacher, settings)) = self.distillation else {
            return cross_entropy(logits, self.labels, self.smoothing);
        };
        let soft = distillation_kl(logits, teacher, settings.temperature)?;
        if settings.weight >= 1.0 {
            return Ok(soft);
        }
        let hard = cross_entropy(logits, self.labels, self.smoothing)?;
        Ok(((hard * (1.0 - settings.weight))? + (soft * settings.weight)?)?)
    }
}

/// The L2 norm of a whole tensor.
fn norm(xs: &Tensor) -> Result<f64> {
    Ok(f64::from(xs.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?))
}

/// A step of L2 length `size` along `gradient` (zero where the gradient is zero).
fn ascent(gradient: &Tensor, size: f64) -> Result<Tensor> {
    let length = norm(gradient)?;
    if length > 0.0 && length.is_finite() {
        Ok((gradient * (size / length))?)
    } else {
        Ok(gradient.zeros_like()?)
    }
}

/// `delta` scaled back onto the ball of radius `epsilon` when it lies outside (PGD's
/// projection, as the reference implementation: `epsilon · r / ‖r‖`).
fn project(delta: &Tensor, epsilon: f64) -> Result<Tensor> {
    let length = norm(delta)?;
    if length > epsilon {
        Ok((delta * (epsilon / length))?)
    } else {
        Ok(delta.clone())
    }
}

/// What one batch under an [`Objective`] gives.
pub(crate) struct Output {
    /// The optimized loss: the clean objective plus the adversarial loss.
    pub(crate) loss: f32,
    /// Per-parameter gradients, in [`Classifier::params`] order.
    pub(crate) grads: Vec<Option<Tensor>>,
    /// The L2 norm of each adversarial perturbation tried (empty without `adversarial`).
    pub(crate) perturbation_norms: Vec<f64>,
}

/// Adds `more` into `sums`, slot by slot (a missing gradient contributes zero).
pub(crate) fn accumulate(sums: &mut [Option<Tensor>], more: Vec<Option<Tensor>>) -> Result<()> {
    for (slot, grad) in sums.iter_mut().zip(more) {
        if let Some(grad) = grad {
            *slot = Some(match slot.take() {
                Some(sum) => (sum + grad)?,
                None => grad,
            });
        }
    }
    Ok(())
}

/// Loss and gradients of one batch under `objective`, with training-mode dropout from `rng`.
/// `teacher` must be given when the objective distils.
pub(crate) fn loss_and_grads(
    objective: &Objective,
    classifier: &Classifier,
    teacher: Option<&Classifier>,
    rng: &mut ChaCha8Rng,
    batch: &Batch,
) -> Result<Output> {
    let labels = batch.label_tensor(classifier.device())?;
    let teacher_logits = match (objective.distillation, teacher) {
        (Some(_), Some(teacher)) => Some(teacher.forward(batch, &mut Ctx::inference())?.detach()),
        (Some(_), None) => {
            return Err(MlError::BadMethod {
                reason: "`distillation` needs a teacher model (the `teacher` input of `train`)"
                    .to_owned(),
            })
        }
        (None, _) => None,
    };
    let task = TaskLoss {
        labels: &labels,
        smoothing: objective.label_smoothing,
        distillation: teacher_logits.as_ref().zip(objective.distillation),
    };
    let dropout = classifier.dropout;
    let pass = |leaf: &WordLeaf, rng: &mut ChaCha8Rng| -> Result<Tensor> {
        let mut ctx = Ctx {
            differentiable: true,
            dropout: Some((rng, dropout)),
            attentions: None,
        };
        classifier.forward_words(batch, leaf.words.as_tensor(), &mut ctx)
    };

    let words = classifier.batch_words(batch)?;
    // Both R-Drop passes read the same leaf, so its gradient is the clean objective's.
    let leaf = classifier.word_leaf(batch, &words)?;
    let first = pass(&leaf, rng)?;
    let clean = match objective.rdrop {
        None => task.of(&first)?,
        Some(alpha) => {
            let second = pass(&leaf, rng)?;
            let both = ((task.of(&first)? + task.of(&second)?)? * 0.5)?;
            (both + (symmetric_kl(&first, &second)? * alpha)?)?
        }
    };
    let clean_grads = clean.backward()?;
    let mut output = Output {
        loss: clean.to_scalar::<f32>()?,
        grads: classifier.gradients(&clean_grads, Some(&leaf))?,
        perturbation_norms: Vec::new(),
    };
    let Some(adversarial) = objective.adversarial else {
        return Ok(output);
    };
    let mut direction = match clean_grads.get(leaf.words.as_tensor()) {
        Some(gradient) => gradient.clone(),
        None => words.zeros_like()?,
    };
    drop(clean_grads);
    let (steps, size) = match adversarial.method {
        AdversarialMethod::Fgm => (1, adversarial.epsilon),
        AdversarialMethod::Pgd => (
            adversarial.steps.unwrap_or(1),
            adversarial.alpha.unwrap_or(adversarial.epsilon),
        ),
    };
    let mut delta = words.zeros_like()?;
    for step in 0..steps {
        delta = project(&(delta + ascent(&direction, size)?)?, adversarial.epsilon)?;
        output.perturbation_norms.push(norm(&delta)?);
        let attacked = classifier.word_leaf(batch, &(&words + &delta)?)?;
        let loss = task.of(&pass(&attacked, rng)?)?;
        let grads = loss.backward()?;
        if step + 1 == steps {
            // As the reference PGD: only the last attack's gradients join the clean ones.
            output.loss += loss.to_scalar::<f32>()?;
            accumulate(&mut output.grads, classifier.gradients(&grads, Some(&attacked))?)?;
        } else if let Some(gradient) = grads.get(attacked.words.as_tensor()) {
            direction = gradient.clone();
        }
    }
    Ok(output)
}
