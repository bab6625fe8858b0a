//! Training objectives beyond plain cross-entropy (issue 13): label smoothing, R-Drop, typo
//! consistency, adversarial training on the word embeddings (FGM, PGD) and knowledge
//! distillation.
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

use crate::model::stages::{
    Adversarial, AdversarialMethod, Configure, Consistency, ConsistencyTerm, Distillation,
    LabelLoss,
};

use super::classifier::{Batch, Classifier, WordLeaf};
use super::encoder::Ctx;
use super::error::{MlError, Result};

/// The loss terms a `configure` stage adds to cross-entropy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Objective {
    pub(crate) label_smoothing: f64,
    pub(crate) rdrop: Option<f64>,
    /// The clean/perturbed consistency term; the perturbed batch is the caller's.
    pub(crate) consistency: Option<Consistency>,
    pub(crate) adversarial: Option<Adversarial>,
    pub(crate) distillation: Option<Distillation>,
}

impl Objective {
    pub(crate) fn new(configure: &Configure) -> Self {
        Self {
            label_smoothing: configure.label_smoothing.unwrap_or(0.0),
            rdrop: configure.rdrop.map(|rdrop| rdrop.alpha),
            consistency: configure.consistency,
            adversarial: configure.adversarial,
            distillation: configure.distillation,
        }
    }

    /// Plain cross-entropy: the trainer's default path.
    pub(crate) fn is_plain(&self) -> bool {
        self.label_smoothing == 0.0
            && self.rdrop.is_none()
            && self.consistency.is_none()
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
    Ok((log_p.exp()? * (log_p - log_q)?)?
        .sum_all()?
        .affine(1.0 / batch, 0.0)?)
}

/// R-Drop's consistency term of two passes' logits: `(KL(p₁ ‖ p₂) + KL(p₂ ‖ p₁)) / 2`, with
/// gradients through both passes (as the paper's code: neither side is detached).
pub(crate) fn symmetric_kl(first: &Tensor, second: &Tensor) -> Result<Tensor> {
    let first = log_softmax(first, D::Minus1)?;
    let second = log_softmax(second, D::Minus1)?;
    Ok(((kl_divergence(&first, &second)? + kl_divergence(&second, &first)?)? * 0.5)?)
}

/// `mean over the batch of 1 − cos(anchor, other)` of sentence vectors `[batch, hidden]`,
/// with `anchor` held fixed (no gradient).
pub(crate) fn cosine_distance(anchor: &Tensor, other: &Tensor) -> Result<Tensor> {
    let anchor = anchor.detach();
    let dot = (&anchor * other)?.sum(D::Minus1)?;
    let norms = (anchor.sqr()?.sum(D::Minus1)?.sqrt()? * other.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    let cosine = (dot / (norms + 1e-8)?)?;
    Ok(cosine.affine(-1.0, 1.0)?.mean_all()?)
}

/// Hinton's distillation term: `T² · KL(softmax(t/T) ‖ softmax(s/T))` of student logits `s`
/// and (constant) teacher logits `t`. T² keeps its gradient's scale independent of T.
pub(crate) fn distillation_kl(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
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
/// `teacher` must be given when the objective distils, and `perturbed` (the same examples with
/// typos, in the same order) when it asks for consistency.
pub(crate) fn loss_and_grads(
    objective: &Objective,
    classifier: &Classifier,
    teacher: Option<&Classifier>,
    rng: &mut ChaCha8Rng,
    batch: &Batch,
    perturbed: Option<&Batch>,
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
    let pass_on = |batch: &Batch, leaf: &WordLeaf, rng: &mut ChaCha8Rng| -> Result<Tensor> {
        let mut ctx = Ctx {
            differentiable: true,
            dropout: Some((rng, dropout)),
            attentions: None,
        };
        classifier.forward_words(batch, leaf.words.as_tensor(), &mut ctx)
    };
    let pass = |leaf: &WordLeaf, rng: &mut ChaCha8Rng| pass_on(batch, leaf, rng);
    // Sentence vectors and logits, for the cosine term.
    let pass_pooled =
        |batch: &Batch, leaf: &WordLeaf, rng: &mut ChaCha8Rng| -> Result<(Tensor, Tensor)> {
            let mut ctx = Ctx {
                differentiable: true,
                dropout: Some((rng, dropout)),
                attentions: None,
            };
            classifier.forward_words_pooled(batch, leaf.words.as_tensor(), &mut ctx)
        };
    let cosine = objective
        .consistency
        .is_some_and(|consistency| consistency.term == ConsistencyTerm::Cosine);

    let words = classifier.batch_words(batch)?;
    // Both R-Drop passes read the same leaf, so its gradient is the clean objective's.
    let leaf = classifier.word_leaf(batch, &words)?;
    let (first_pooled, first) = if cosine {
        let (pooled, logits) = pass_pooled(batch, &leaf, rng)?;
        (Some(pooled), logits)
    } else {
        (None, pass(&leaf, rng)?)
    };
    // The second pass of R-Drop or consistency (its logits and consistency term), with the
    // leaf it read from.
    let second = match (objective.rdrop, objective.consistency, perturbed) {
        (Some(alpha), _, _) => {
            let second = pass(&leaf, rng)?;
            let term = (symmetric_kl(&first, &second)? * alpha)?;
            Some((second, term, None))
        }
        (None, Some(consistency), Some(perturbed)) => {
            if perturbed.labels() != batch.labels() {
                return Err(MlError::BadMethod {
                    reason: "the perturbed batch of `consistency` must hold the same examples"
                        .to_owned(),
                });
            }
            let perturbed_leaf =
                classifier.word_leaf(perturbed, &classifier.batch_words(perturbed)?)?;
            let (logits, term) = match &first_pooled {
                Some(first_pooled) => {
                    let (pooled, logits) = pass_pooled(perturbed, &perturbed_leaf, rng)?;
                    (logits, cosine_distance(first_pooled, &pooled)?)
                }
                None => {
                    let logits = pass_on(perturbed, &perturbed_leaf, rng)?;
                    let term = symmetric_kl(&first, &logits)?;
                    (logits, term)
                }
            };
            Some((logits, (term * consistency.alpha)?, Some(perturbed_leaf)))
        }
        (None, Some(_), None) => {
            return Err(MlError::BadMethod {
                reason: "`consistency` needs the perturbed copy of each batch".to_owned(),
            })
        }
        (None, None, _) => None,
    };
    let clean_only = objective
        .consistency
        .is_some_and(|consistency| consistency.label_loss == LabelLoss::Clean);
    let clean = match &second {
        None => task.of(&first)?,
        Some((_, term, _)) if clean_only => (task.of(&first)? + term)?,
        Some((second, term, _)) => {
            let both = ((task.of(&first)? + task.of(second)?)? * 0.5)?;
            (both + term)?
        }
    };
    let clean_grads = clean.backward()?;
    let mut leaves = vec![&leaf];
    leaves.extend(second.as_ref().and_then(|(_, _, leaf)| leaf.as_ref()));
    let mut output = Output {
        loss: clean.to_scalar::<f32>()?,
        grads: classifier.gradients(&clean_grads, &leaves)?,
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
            accumulate(
                &mut output.grads,
                classifier.gradients(&grads, &[&attacked])?,
            )?;
        } else if let Some(gradient) = grads.get(attacked.words.as_tensor()) {
            direction = gradient.clone();
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ml::config::EncoderConfig;
    use crate::ml::fixtures::{write_random_model, NameStyle};
    use crate::ml::{rng, DeviceChoice, Trainer};

    fn tensor(rows: &[[f32; 3]; 2]) -> Tensor {
        Tensor::new(rows, &Device::Cpu).expect("tensor")
    }

    fn scalar(xs: &Tensor) -> f64 {
        f64::from(xs.to_scalar::<f32>().expect("scalar"))
    }

    fn configure(json: &str) -> Configure {
        serde_json::from_str(json).expect("test settings")
    }

    /// A tiny random BERT classifier with 3 labels, and a batch of two sequences.
    fn tiny(dir: &std::path::Path, seed: u64, settings: &Configure) -> (Classifier, Batch) {
        write_random_model(dir, &EncoderConfig::tiny_bert(), seed, NameStyle::Plain)
            .expect("tiny model");
        let classifier =
            Classifier::new(dir, 3, settings, DeviceChoice::Cpu).expect("tiny classifier");
        let batch = Batch::new(&[&[1, 17, 42, 9, 2], &[1, 66, 2]], &[2, 0], 0).expect("batch");
        (classifier, batch)
    }

    // Reference (plain Python, torch's documented formula for `label_smoothing`):
    //   rows = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]]; labels = [2, 0]
    //   lp = [[x - math.log(sum(math.exp(y) for y in r)) for x in r] for r in rows]
    //   nll = -(lp[0][2] + lp[1][0]) / 2                      # 2.42026
    //   0.9 * nll + 0.1 * -sum(map(sum, lp)) / 6              # 2.36026
    #[test]
    fn label_smoothing_matches_torch() {
        let logits = tensor(&[[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]]);
        let labels = Tensor::new(&[2u32, 0], &Device::Cpu).expect("labels");
        // By hand: log p of each row, then (1 − s) · NLL + s · mean(−log p).
        let rows = [[1.0f64, 2.0, 0.5], [0.2, -1.0, 3.0]];
        let log_p: Vec<Vec<f64>> = rows
            .iter()
            .map(|row| {
                let z = row.iter().map(|x| x.exp()).sum::<f64>().ln();
                row.iter().map(|x| x - z).collect()
            })
            .collect();
        let nll = -(log_p[0][2] + log_p[1][0]) / 2.0;
        let uniform = -log_p.iter().flatten().sum::<f64>() / 6.0;
        let expected = 0.9 * nll + 0.1 * uniform;
        let plain = scalar(&cross_entropy(&logits, &labels, 0.0).expect("ce"));
        let smoothed = scalar(&cross_entropy(&logits, &labels, 0.1).expect("ce"));
        assert!((plain - nll).abs() < 1e-5, "{plain} vs {nll}");
        assert!((plain - 2.42026).abs() < 1e-4, "{plain}");
        assert!(
            (smoothed - expected).abs() < 1e-5,
            "{smoothed} vs {expected}"
        );
        assert!((smoothed - 2.36026).abs() < 1e-4, "{smoothed}");
    }

    fn softmax64(row: &[f64]) -> Vec<f64> {
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        row.iter().map(|x| x.exp() / z).collect()
    }

    fn kl64(p: &[f64], q: &[f64]) -> f64 {
        p.iter().zip(q).map(|(p, q)| p * (p / q).ln()).sum()
    }

    // Reference (the definition; torch would give it as, with p = softmax(a), q = softmax(b)):
    //   0.5 * (F.kl_div(q.log(), p, reduction="batchmean") + F.kl_div(p.log(), q, reduction="batchmean"))
    #[test]
    fn symmetric_kl_is_the_mean_of_both_directions() {
        let a = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]];
        let b = [[0.0, 2.5, 0.5], [1.2, -0.5, 2.0]];
        let mut expected = 0.0;
        for (ra, rb) in a.iter().zip(&b) {
            let to64 = |r: &[f32; 3]| r.iter().map(|x| f64::from(*x)).collect::<Vec<_>>();
            let (p, q) = (softmax64(&to64(ra)), softmax64(&to64(rb)));
            expected += 0.5 * (kl64(&p, &q) + kl64(&q, &p)) / 2.0;
        }
        let ours = scalar(&symmetric_kl(&tensor(&a), &tensor(&b)).expect("kl"));
        assert!((ours - expected).abs() < 1e-6, "{ours} vs {expected}");
        let same = scalar(&symmetric_kl(&tensor(&a), &tensor(&a)).expect("kl"));
        assert!(same.abs() < 1e-7, "{same}");
    }

    /// `T² · KL(softmax(t/T) ‖ softmax(s/T))` by hand, and its gradient w.r.t. the student's
    /// logits, `T · (softmax(s/T) − softmax(t/T)) / batch`, zero when the student equals the
    /// teacher: the minimum is the teacher's soft targets.
    #[test]
    fn distillation_term_and_gradient_match_hand_computation() {
        let teacher = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]];
        let student = [[0.0, 2.5, 0.5], [1.2, -0.5, 2.0]];
        let temperature = 2.0;
        let to64 = |r: &[f32; 3]| {
            r.iter()
                .map(|x| f64::from(*x) / temperature)
                .collect::<Vec<_>>()
        };
        let mut expected = 0.0;
        let mut expected_grad = Vec::new();
        for (t, s) in teacher.iter().zip(&student) {
            let (p, q) = (softmax64(&to64(t)), softmax64(&to64(s)));
            expected += temperature * temperature * kl64(&p, &q) / 2.0;
            expected_grad.extend(q.iter().zip(&p).map(|(q, p)| temperature * (q - p) / 2.0));
        }
        let student_var = Var::from_tensor(&tensor(&student)).expect("var");
        let loss =
            distillation_kl(student_var.as_tensor(), &tensor(&teacher), temperature).expect("kd");
        assert!((scalar(&loss) - expected).abs() < 1e-6);
        let grads = loss.backward().expect("backward");
        let grad = grads
            .get(student_var.as_tensor())
            .expect("gradient")
            .flatten_all()
            .and_then(|g| g.to_vec1::<f32>())
            .expect("values");
        for (ours, theirs) in grad.iter().zip(&expected_grad) {
            assert!(
                (f64::from(*ours) - theirs).abs() < 1e-6,
                "{grad:?} vs {expected_grad:?}"
            );
        }
        let at_teacher = Var::from_tensor(&tensor(&teacher)).expect("var");
        let loss =
            distillation_kl(at_teacher.as_tensor(), &tensor(&teacher), temperature).expect("kd");
        assert!(scalar(&loss).abs() < 1e-6);
        let grads = loss.backward().expect("backward");
        let largest = grads
            .get(at_teacher.as_tensor())
            .expect("gradient")
            .abs()
            .and_then(|g| g.max_all())
            .expect("max");
        assert!(scalar(&largest) < 1e-6);
    }

    /// On a tiny model with dropout off (so the training pass gives the inference logits), the
    /// loss a step reports is the hand-computed smoothed cross-entropy of those logits.
    #[test]
    fn trainer_loss_with_label_smoothing_is_the_hand_computed_one() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = configure(r#"{"dropout": 0.0, "label_smoothing": 0.2}"#);
        let (classifier, batch) = tiny(dir.path(), 5, &settings);
        let logits = classifier.logits(&batch).expect("logits");
        let mut expected = 0.0;
        for (row, label) in logits.iter().zip(batch.labels()) {
            let row: Vec<f64> = row.iter().map(|x| f64::from(*x)).collect();
            let p = softmax64(&row);
            let nll = -p[*label as usize].ln();
            let uniform = -p.iter().map(|p| p.ln()).sum::<f64>() / 3.0;
            expected += (0.8 * nll + 0.2 * uniform) / 2.0;
        }
        let mut trainer = Trainer::new(classifier, &settings, 10).expect("trainer");
        let loss = f64::from(trainer.step(&batch).expect("step").loss);
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }

    /// Distillation on a tiny model, dropout off: the reported loss is `(1 − w) · CE + w · T² ·
    /// KL` of the student's and the teacher's inference logits.
    #[test]
    fn trainer_loss_with_distillation_is_the_hand_computed_one() {
        let dir = tempfile::tempdir().expect("dir");
        let teacher_dir = tempfile::tempdir().expect("dir");
        let settings =
            configure(r#"{"dropout": 0.0, "distillation": {"temperature": 3.0, "weight": 0.25}}"#);
        let (student, batch) = tiny(dir.path(), 5, &settings);
        let (teacher, _) = tiny(teacher_dir.path(), 6, &configure(r#"{"seed": 9}"#));
        let (s, t) = (
            student.logits(&batch).expect("logits"),
            teacher.logits(&batch).expect("logits"),
        );
        let mut expected = 0.0;
        for ((s, t), label) in s.iter().zip(&t).zip(batch.labels()) {
            let s: Vec<f64> = s.iter().map(|x| f64::from(*x)).collect();
            let t: Vec<f64> = t.iter().map(|x| f64::from(*x)).collect();
            let ce = -softmax64(&s)[*label as usize].ln();
            let scaled = |r: &[f64]| softmax64(&r.iter().map(|x| x / 3.0).collect::<Vec<_>>());
            let kd = 9.0 * kl64(&scaled(&t), &scaled(&s));
            expected += (0.75 * ce + 0.25 * kd) / 2.0;
        }
        let mut trainer = Trainer::new(student, &settings, 10).expect("trainer");
        assert!(
            trainer.step(&batch).is_err(),
            "distillation without a teacher is refused"
        );
        trainer.set_teacher(teacher).expect("same labels");
        let loss = f64::from(trainer.step(&batch).expect("step").loss);
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }

    /// `1 − cos` by hand, averaged over the batch; the anchor gets no gradient, the other
    /// side does.
    #[test]
    fn cosine_distance_matches_hand_computation() {
        let anchor = Var::from_tensor(&tensor(&[[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]])).expect("var");
        let other = Var::from_tensor(&tensor(&[[2.0, 1.0, 0.0], [0.2, -1.0, 3.0]])).expect("var");
        let distance =
            cosine_distance(anchor.as_tensor(), other.as_tensor()).expect("cosine distance");
        let cos0 = (2.0 + 2.0) / ((1.0f64 + 4.0 + 0.25).sqrt() * 5.0f64.sqrt());
        let expected = ((1.0 - cos0) + 0.0) / 2.0;
        assert!(
            (scalar(&distance) - expected).abs() < 1e-6,
            "{} vs {expected}",
            scalar(&distance)
        );
        let grads = distance.backward().expect("backward");
        assert!(
            grads.get(anchor.as_tensor()).is_none(),
            "the anchor is held fixed"
        );
        assert!(norm(grads.get(other.as_tensor()).expect("gradient")).expect("norm") > 0.0);
    }

    /// Consistency on a tiny model, dropout off: the reported loss is the mean cross-entropy
    /// of the clean and the perturbed batch (`label_loss: both`) or the clean one's alone
    /// (`clean`) plus `alpha` times the symmetric KL of their logits; the word table learns
    /// from both batches' tokens; a missing or mismatched perturbed batch is refused.
    #[test]
    fn trainer_loss_with_consistency_is_the_hand_computed_one() {
        for label_loss in ["both", "clean"] {
            consistency_loss_matches_hand_computation(label_loss);
        }
    }

    fn consistency_loss_matches_hand_computation(label_loss: &str) {
        let dir = tempfile::tempdir().expect("dir");
        let settings = configure(&format!(
            r#"{{"dropout": 0.0, "consistency": {{"typo": 0.05, "alpha": 0.5, "label_loss": "{label_loss}"}}}}"#
        ));
        let (classifier, batch) = tiny(dir.path(), 5, &settings);
        // Token 43 and 70 are only in the perturbed copy.
        let perturbed =
            Batch::new(&[&[1, 17, 43, 9, 2], &[1, 66, 70, 2]], &[2, 0], 0).expect("batch");
        let clean = classifier.logits(&batch).expect("logits");
        let noisy = classifier.logits(&perturbed).expect("logits");
        let mut expected = 0.0;
        for ((c, n), label) in clean.iter().zip(&noisy).zip(batch.labels()) {
            let c = softmax64(&c.iter().map(|x| f64::from(*x)).collect::<Vec<_>>());
            let n = softmax64(&n.iter().map(|x| f64::from(*x)).collect::<Vec<_>>());
            let ce = match label_loss {
                "both" => -(c[*label as usize].ln() + n[*label as usize].ln()) / 2.0,
                _ => -c[*label as usize].ln(),
            };
            let kl = (kl64(&c, &n) + kl64(&n, &c)) / 2.0;
            expected += (ce + 0.5 * kl) / 2.0;
        }

        let objective = Objective::new(&settings);
        let mut rng = rng::seeded(1, rng::DROPOUT_STREAM);
        let output = loss_and_grads(
            &objective,
            &classifier,
            None,
            &mut rng,
            &batch,
            Some(&perturbed),
        )
        .expect("loss");
        let table = classifier
            .params()
            .vars
            .iter()
            .position(|(name, _)| name == "embeddings.word_embeddings.weight")
            .expect("the word table trains under `full`");
        let rows = output.grads[table].as_ref().expect("a table gradient");
        // Under `clean` the copy's own tokens still learn, through the term.
        for token in [17, 43, 66, 70] {
            let row = rows.get(token).expect("row");
            assert!(
                norm(&row).expect("norm") > 0.0,
                "{label_loss}: token {token} got no gradient"
            );
        }

        let mut trainer = Trainer::new(classifier, &settings, 10).expect("trainer");
        assert!(trainer.step(&batch).is_err(), "no perturbed batch");
        let other_labels =
            Batch::new(&[&[1, 17, 43, 9, 2], &[1, 66, 70, 2]], &[0, 0], 0).expect("batch");
        assert!(trainer
            .step_with_perturbed(&batch, Some(&other_labels))
            .is_err());
        let loss = f64::from(
            trainer
                .step_with_perturbed(&batch, Some(&perturbed))
                .expect("step")
                .loss,
        );
        assert!(
            (loss - expected).abs() < 1e-5,
            "{label_loss}: {loss} vs {expected}"
        );
    }

    /// With temperature T and weight 1, training drives the student's tempered probabilities
    /// to the teacher's soft targets (not to the labels, which here disagree with the teacher).
    #[test]
    fn distillation_with_weight_one_reproduces_the_teacher_soft_targets() {
        let dir = tempfile::tempdir().expect("dir");
        let teacher_dir = tempfile::tempdir().expect("dir");
        let settings = configure(
            r#"{"dropout": 0.0, "learning_rate": 0.01, "schedule": "constant", "weight_decay": 0.0,
                "distillation": {"temperature": 2.0, "weight": 1.0}}"#,
        );
        let (student, batch) = tiny(dir.path(), 5, &settings);
        // A confident teacher: its head is trained on the labels first.
        let teacher_settings = configure(
            r#"{"dropout": 0.0, "learning_rate": 0.01, "schedule": "constant", "seed": 9}"#,
        );
        let (teacher, _) = tiny(teacher_dir.path(), 6, &teacher_settings);
        let flipped = Batch::new(&[&[1, 17, 42, 9, 2], &[1, 66, 2]], &[0, 1], 0).expect("batch");
        let mut teacher_trainer = Trainer::new(teacher, &teacher_settings, 40).expect("trainer");
        for _ in 0..40 {
            teacher_trainer.step(&flipped).expect("teacher step");
        }
        let teacher = teacher_trainer.into_classifier();
        let tempered = |logits: Vec<Vec<f32>>| -> Vec<Vec<f64>> {
            logits
                .iter()
                .map(|row| softmax64(&row.iter().map(|x| f64::from(*x) / 2.0).collect::<Vec<_>>()))
                .collect()
        };
        let targets = tempered(teacher.logits(&batch).expect("logits"));
        assert!(targets[0][0] > 0.6, "the teacher is confident: {targets:?}");
        let mut trainer = Trainer::new(student, &settings, 200).expect("trainer");
        trainer.set_teacher(teacher).expect("same labels");
        let gap = |trainer: &Trainer| -> f64 {
            let ours = tempered(trainer.eval_logits(&batch).expect("logits"));
            ours.iter()
                .flatten()
                .zip(targets.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        let before = gap(&trainer);
        for _ in 0..150 {
            trainer.step(&batch).expect("step");
        }
        let after = gap(&trainer);
        assert!(before > 0.2, "the student starts elsewhere: {before}");
        assert!(after < 0.01, "soft targets reproduced within 0.01: {after}");
    }

    /// FGM's perturbation has norm epsilon, PGD's never leaves the epsilon ball, over steps
    /// and batches of a tiny model.
    #[test]
    fn adversarial_perturbations_stay_within_epsilon() {
        for (json, steps) in [
            (r#"{"method": "fgm", "epsilon": 0.5}"#, 1),
            (
                r#"{"method": "pgd", "epsilon": 0.5, "alpha": 0.3, "steps": 4}"#,
                4,
            ),
        ] {
            let dir = tempfile::tempdir().expect("dir");
            let settings = configure(&format!(r#"{{"adversarial": {json}}}"#));
            let (classifier, batch) = tiny(dir.path(), 5, &settings);
            let objective = Objective::new(&settings);
            let mut rng = rng::seeded(1, rng::DROPOUT_STREAM);
            let output = loss_and_grads(&objective, &classifier, None, &mut rng, &batch, None)
                .expect("adversarial step");
            assert_eq!(output.perturbation_norms.len(), steps);
            for norm in &output.perturbation_norms {
                assert!(*norm <= 0.5 * (1.0 + 1e-6), "{json}: {norm}");
            }
            // FGM steps to the sphere; PGD's steps of 0.3 reach it by the second.
            assert!((output.perturbation_norms[steps - 1] - 0.5).abs() < 1e-5);
            if steps > 1 {
                assert!((output.perturbation_norms[0] - 0.3).abs() < 1e-5);
            }
        }
    }

    /// Dropout off: the adversarial loss is added to the clean one. A vanishing epsilon gives
    /// twice the clean loss; a real one gives more (the perturbation ascends the loss).
    #[test]
    fn adversarial_loss_is_added_to_the_clean_loss() {
        let dir = tempfile::tempdir().expect("dir");
        let plain = configure(r#"{"dropout": 0.0}"#);
        let (classifier, batch) = tiny(dir.path(), 5, &plain);
        let mut rng = rng::seeded(1, rng::DROPOUT_STREAM);
        let clean = loss_and_grads(
            &Objective::new(&plain),
            &classifier,
            None,
            &mut rng,
            &batch,
            None,
        )
        .expect("clean")
        .loss;
        let loss_at = |epsilon: f64, rng: &mut ChaCha8Rng| {
            let settings = configure(&format!(
                r#"{{"dropout": 0.0, "adversarial": {{"method": "fgm", "epsilon": {epsilon}}}}}"#
            ));
            loss_and_grads(
                &Objective::new(&settings),
                &classifier,
                None,
                rng,
                &batch,
                None,
            )
            .expect("adversarial")
            .loss
        };
        let tiny_step = loss_at(1e-6, &mut rng);
        assert!(
            (tiny_step - 2.0 * clean).abs() < 1e-4,
            "{tiny_step} vs 2 × {clean}"
        );
        let real_step = loss_at(5.0, &mut rng);
        assert!(real_step > 2.0 * clean + 1e-3, "{real_step} vs 2 × {clean}");
    }

    /// The L2 norm of one named parameter's gradient from `loss` on the classifier.
    fn encoder_gradient(classifier: &Classifier, grads: &candle_core::backprop::GradStore) -> f64 {
        let (_, var) = classifier
            .params()
            .vars
            .iter()
            .find(|(name, _)| name == "encoder.layer.0.attention.self.query.weight")
            .expect("layer 0 query trains under `full`");
        let grad = grads
            .get(var.as_tensor())
            .expect("a gradient reaches layer 0");
        norm(grad).expect("norm")
    }

    /// The R-Drop and distillation terms alone move the encoder, not just the head: each
    /// gives layer 0 a non-zero gradient through the fused kernels' backward passes.
    #[test]
    fn consistency_and_distillation_terms_reach_the_encoder() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = configure(r#"{"dropout": 0.3}"#);
        let (classifier, batch) = tiny(dir.path(), 5, &settings);
        let mut rng = rng::seeded(1, rng::DROPOUT_STREAM);
        let mut pass = || {
            let mut ctx = Ctx {
                differentiable: true,
                dropout: Some((&mut rng, 0.3)),
                attentions: None,
            };
            let words = classifier.batch_words(&batch).expect("words");
            classifier
                .forward_words(&batch, &words, &mut ctx)
                .expect("pass")
        };
        let (first, second) = (pass(), pass());
        let rdrop = symmetric_kl(&first, &second).expect("kl");
        assert!(scalar(&rdrop) > 0.0, "dropout makes the passes differ");
        let grads = rdrop.backward().expect("backward");
        assert!(encoder_gradient(&classifier, &grads) > 1e-8);

        let teacher = tensor(&[[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]]);
        let kd = distillation_kl(&pass(), &teacher, 2.0).expect("kd");
        let grads = kd.backward().expect("backward");
        assert!(encoder_gradient(&classifier, &grads) > 1e-8);
    }
}
