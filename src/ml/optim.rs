//! AdamW with parameter groups and savable moments, learning-rate schedules, and global-norm
//! clipping. candle-nn's AdamW keeps its state private and applies one weight decay to every
//! variable (docs/design.md §1.3), so it is reimplemented here with torch's arithmetic.

use candle_core::{Tensor, Var};

use crate::model::stages::Schedule;

use super::error::Result;
use super::kernels::{self, AdamStep};

pub(crate) const BETA1: f64 = 0.9;
pub(crate) const BETA2: f64 = 0.999;
pub(crate) const EPS: f64 = 1e-8;

/// HF Trainer's grouping: biases and LayerNorm weights get no weight decay.
pub(crate) fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// A parameter's depth for layer-wise learning-rate decay: 0 for the embeddings, `n + 1` for
/// encoder layer `n` (its adapters included), `layers + 1` for the head (pooler, classifier).
pub(crate) fn depth(name: &str, layers: usize) -> usize {
    if name.starts_with("embeddings.") {
        return 0;
    }
    let mut parts = name.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("encoder" | "transformer"), Some("layer"), Some(index)) => {
            index.parse::<usize>().map_or(layers + 1, |index| index + 1)
        }
        _ => layers + 1,
    }
}

/// The learning-rate factor of each parameter: `decay^(layers + 1 − depth)`, so the head
/// trains at the full rate, the top layer at `decay` times it and the embeddings at
/// `decay^(layers + 1)` (BEiT's and ELECTRA's layer-wise decay); all 1 without decay.
pub(crate) fn layer_scales(names: &[&str], layer_decay: Option<(f64, usize)>) -> Vec<f64> {
    names
        .iter()
        .map(|name| match layer_decay {
            Some((decay, layers)) => {
                let below_head = (layers + 1).saturating_sub(depth(name, layers));
                decay.powi(below_head as i32)
            }
            None => 1.0,
        })
        .collect()
}

/// The two moments of one parameter.
pub(crate) enum Moments {
    /// CPU f32 parameters: vectors the fused kernel updates in the same pass as the weights.
    Host { first: Vec<f32>, second: Vec<f32> },
    /// Other devices: tensors, replaced by each composite update.
    Device { first: Tensor, second: Tensor },
}

/// `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments).
pub(crate) struct AdamW {
    weight_decay: f64,
    decay: Vec<bool>,
    /// Per-parameter learning-rate factors ([`layer_scales`]).
    lr_scales: Vec<f64>,
    moments: Vec<Moments>,
}

/// Whether `param` takes the fused in-place update.
fn fused_update(param: &Tensor) -> bool {
    kernels::fused(param) && param.is_contiguous()
}

impl AdamW {
    /// `layer_decay`: the decay factor and the encoder's layer count, for [`layer_scales`].
    pub(crate) fn new(
        vars: &[(String, Var)],
        weight_decay: f64,
        layer_decay: Option<(f64, usize)>,
    ) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(_, var)| {
                let param = var.as_tensor();
                Ok(if fused_update(param) {
                    Moments::Host {
                        first: vec![0.0; param.elem_count()],
                        second: vec![0.0; param.elem_count()],
                    }
                } else {
                    Moments::Device {
                        first: param.zeros_like()?,
                        second: param.zeros_like()?,
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            weight_decay,
            decay: vars.iter().map(|(name, _)| decays(name)).collect(),
            lr_scales: layer_scales(
                &vars
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>(),
                layer_decay,
            ),
            moments,
        })
    }

    /// Parameter `index`'s moments as tensors shaped like `like` (checkpoints).
    pub(crate) fn moment_tensors(&self, index: usize, like: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match &self.moments[index] {
            Moments::Host { first, second } => (
                Tensor::from_slice(first, like.shape(), like.device())?,
                Tensor::from_slice(second, like.shape(), like.device())?,
            ),
            Moments::Device { first, second } => (first.clone(), second.clone()),
        })
    }

    /// Moments for parameter `index` from checkpoint tensors, in this optimizer's form.
    pub(crate) fn moments_from(
        &self,
        index: usize,
        first: Tensor,
        second: Tensor,
    ) -> Result<Moments> {
        Ok(match &self.moments[index] {
            Moments::Host { .. } => Moments::Host {
                first: first.flatten_all()?.to_vec1::<f32>()?,
                second: second.flatten_all()?.to_vec1::<f32>()?,
            },
            Moments::Device { .. } => Moments::Device { first, second },
        })
    }

    /// Replaces every parameter's moments (from [`AdamW::moments_from`], in parameter order).
    pub(crate) fn restore_moments(&mut self, moments: Vec<Moments>) {
        self.moments = moments;
    }

    /// The update scalars of parameter `index` at 1-based step `t`.
    fn scalars(&self, index: usize, lr: f64, t: usize, grad_scale: f64) -> AdamStep {
        let t = t as i32;
        AdamStep {
            // A factor of exactly 1 without layer decay: the default path's bytes are unchanged.
            lr: lr * self.lr_scales[index],
            weight_decay: if self.decay[index] {
                self.weight_decay
            } else {
                0.0
            },
            beta1: BETA1,
            beta2: BETA2,
            eps: EPS,
            bias_correction1: 1.0 - BETA1.powi(t),
            bias_correction2_sqrt: (1.0 - BETA2.powi(t)).sqrt(),
            grad_scale,
        }
    }

    /// One update at 1-based step `t` with learning rate `lr`; each gradient is multiplied by
    /// `grad_scale` first (accumulation average times clipping coefficient).
    pub(crate) fn step(
        &mut self,
        vars: &[(String, Var)],
        grads: &[Tensor],
        lr: f64,
        t: usize,
        grad_scale: f64,
    ) -> Result<()> {
        for (index, ((_, var), grad)) in vars.iter().zip(grads).enumerate() {
            let step = self.scalars(index, lr, t, grad_scale);
            match &mut self.moments[index] {
                Moments::Host { first, second } => {
                    kernels::adamw_update(var.as_tensor(), grad, first, second, &step)?;
                }
                Moments::Device { first, second } => {
                    let (m, v) = composite_update(var, grad, first, second, &step)?;
                    *first = m;
                    *second = v;
                }
            }
        }
        Ok(())
    }
}

/// AdamW in candle tensor ops, for devices without the fused kernel; returns the new moments.
fn composite_update(
    var: &Var,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: &AdamStep,
) -> Result<(Tensor, Tensor)> {
    let grad = (grad * step.grad_scale)?;
    let param = (var.as_detached_tensor() * (1.0 - step.lr * step.weight_decay))?;
    let m = ((m * step.beta1)? + (&grad * (1.0 - step.beta1))?)?;
    let v = ((v * step.beta2)? + (grad.sqr()? * (1.0 - step.beta2))?)?;
    let denom = ((v.sqrt()? / step.bias_correction2_sqrt)? + step.eps)?;
    let update = (m.div(&denom)? * (step.lr / step.bias_correction1))?;
    var.set(&(param - update)?)?;
    Ok((m, v))
}

/// Learning rate per optimizer step, as HF's `get_{constant,linear,cosine}_schedule_with_warmup`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LrSchedule {
    pub(crate) base: f64,
    pub(crate) kind: Schedule,
    pub(crate) warmup_steps: usize,
    pub(crate) total_steps: usize,
}

impl LrSchedule {
    pub(crate) fn new(base: f64, kind: Schedule, warmup_ratio: f64, total_steps: usize) -> Self {
        Self {
            base,
            kind,
            // HF: math.ceil(total * warmup_ratio).
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as usize,
            total_steps,
        }
    }

    /// The rate of the update that follows `completed` updates.
    pub(crate) fn lr(&self, completed: usize) -> f64 {
        let step = completed as f64;
        if completed < self.warmup_steps {
            return self.base * step / self.warmup_steps.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps as f64) / span).clamp(0.0, 1.0);
        let factor = match self.kind {
            Schedule::Constant => 1.0,
            Schedule::Linear => 1.0 - progress,
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.base * factor
    }
}

/// The global L2 norm of `scale · grads`.
pub(crate) fn global_norm(grads: &[Tensor], scale: f64) -> Result<f32> {
    let mut squares = 0f64;
    for grad in grads {
        squares += if kernels::fused(grad) {
            kernels::sum_of_squares(grad)?
        } else {
            grad.sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?
        };
    }
    Ok((squares.sqrt() * scale) as f32)
}

/// torch's `clip_grad_norm_` coefficient for gradients of global norm `norm`: `max / (norm +
/// 1e-6)` when that is below 1, else 1 (no clipping).
pub(crate) fn clip_coefficient(norm: f32, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max_norm) => (max_norm / (f64::from(norm) + 1e-6)).min(1.0),
        None => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn linear_schedule_with_warmup_matches_hf() {
        // transformers.get_linear_schedule_with_warmup(opt, 2, 10) with lr 1.0 gives
        // [0.0, 0.5, 1.0, 0.875, 0.75, ...].
        let schedule = LrSchedule::new(1.0, Schedule::Linear, 0.2, 10);
        let lrs: Vec<f64> = (0..5).map(|s| schedule.lr(s)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.875, 0.75]);
        assert_eq!(schedule.lr(10), 0.0);
    }

    #[test]
    fn cosine_schedule_reaches_half_at_midpoint() {
        let schedule = LrSchedule::new(2.0, Schedule::Cosine, 0.0, 10);
        assert!((schedule.lr(0) - 2.0).abs() < 1e-12);
        assert!((schedule.lr(5) - 1.0).abs() < 1e-12);
        assert!(schedule.lr(10).abs() < 1e-12);
    }

    #[test]
    fn parameter_groups_exclude_bias_and_layer_norm() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(decays("encoder.layer.0.attention.self.query.lora_A.weight"));
        assert!(!decays("encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("embeddings.LayerNorm.weight"));
        assert!(!decays("transformer.layer.0.sa_layer_norm.weight"));
    }

    /// MiniLM has 6 layers: with decay 0.5 the head trains at the full rate, layer 5 at 0.5,
    /// layer 0 at 0.5⁶ and the embeddings at 0.5⁷; adapters take their layer's rate.
    #[test]
    fn layer_decay_gives_each_group_its_rate() {
        let names = [
            "classifier.weight",
            "pooler.dense.bias",
            "encoder.layer.5.output.dense.weight",
            "encoder.layer.0.attention.self.query.lora_A.weight",
            "transformer.layer.2.ffn.lin1.weight",
            "embeddings.word_embeddings.weight",
            "embeddings.LayerNorm.bias",
        ];
        let scales = layer_scales(&names, Some((0.5, 6)));
        assert_eq!(
            scales,
            [
                1.0,
                1.0,
                0.5,
                0.5f64.powi(6),
                0.5f64.powi(4),
                0.5f64.powi(7),
                0.5f64.powi(7)
            ]
        );
        assert_eq!(layer_scales(&names, None), [1.0; 7]);
    }

    /// The scaled rate is the one the update uses: Adam's first step moves each weight by
    /// exactly its learning rate.
    #[test]
    fn layer_decay_scales_the_update() {
        let vars: Vec<(String, Var)> = [
            "classifier.weight",
            "encoder.layer.1.output.dense.weight",
            "embeddings.word_embeddings.weight",
        ]
        .iter()
        .map(|name| {
            (
                (*name).to_owned(),
                Var::new(&[1.0f32], &Device::Cpu).expect("var"),
            )
        })
        .collect();
        let mut adam = AdamW::new(&vars, 0.0, Some((0.8, 2))).expect("adam");
        let grads = vec![Tensor::new(&[1.0f32], &Device::Cpu).expect("grad"); 3];
        adam.step(&vars, &grads, 0.1, 1, 1.0).expect("step");
        let moved: Vec<f32> = vars
            .iter()
            .map(|(_, var)| 1.0 - var.as_tensor().to_vec1::<f32>().expect("value")[0])
            .collect();
        for (moved, expected) in moved.iter().zip([0.1, 0.1 * 0.8, 0.1 * 0.8f32.powi(3)]) {
            assert!((moved - expected).abs() < 1e-6, "{moved} vs {expected}");
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let grads = vec![Tensor::new(&[6.0f32, 8.0], &Device::Cpu).expect("tensor")];
        // The stored gradient is the sum of two batches: the mean has norm 5.
        let norm = global_norm(&grads, 0.5).expect("norm");
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((clip_coefficient(norm, Some(1.0)) - 0.2).abs() < 1e-6);
        assert_eq!(clip_coefficient(norm, Some(10.0)), 1.0);
        assert_eq!(clip_coefficient(norm, None), 1.0);
    }

    #[test]
    fn adamw_first_step_matches_torch() {
        // torch: p = tensor([1.0, -2.0]); AdamW([p], lr=0.1, weight_decay=0.5);
        // p.grad = tensor([0.5, -0.25]); step() -> tensor([0.8500, -1.8000])
        // (decay: p * (1 - 0.05); Adam's first step moves each weight by lr * sign(grad)).
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).expect("var");
        let vars = vec![("w.weight".to_owned(), var)];
        let mut adam = AdamW::new(&vars, 0.5, None).expect("adam");
        let grad = Tensor::new(&[0.5f32, -0.25], &Device::Cpu).expect("grad");
        adam.step(&vars, &[grad], 0.1, 1, 1.0).expect("step");
        let values = vars[0].1.as_tensor().to_vec1::<f32>().expect("values");
        assert!((values[0] - 0.85).abs() < 1e-6, "{values:?}");
        assert!((values[1] + 1.8).abs() < 1e-6, "{values:?}");
    }

    #[test]
    fn fused_and_composite_updates_agree_over_steps() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1)
            .collect();
        let grad: Vec<f32> = (0..1000)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.01)
            .collect();
        let grad = Tensor::from_vec(grad, 1000, &Device::Cpu).expect("grad");
        let fused = vec![(
            "w.weight".to_owned(),
            Var::from_vec(values.clone(), 1000, &Device::Cpu).expect("var"),
        )];
        let composite = Var::from_vec(values, 1000, &Device::Cpu).expect("var");
        let mut adam = AdamW::new(&fused, 0.01, None).expect("adam");
        let mut m = grad.zeros_like().expect("m");
        let mut v = grad.zeros_like().expect("v");
        for t in 1..=5 {
            adam.step(&fused, std::slice::from_ref(&grad), 1e-2, t, 0.7)
                .expect("fused step");
            let step = adam.scalars(0, 1e-2, t, 0.7);
            (m, v) = composite_update(&composite, &grad, &m, &v, &step).expect("composite");
        }
        let diff = (fused[0].1.as_tensor() - composite.as_tensor())
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff < 1e-6, "weights differ by {diff}");
        let (_, host_v) = adam
            .moment_tensors(0, fused[0].1.as_tensor())
            .expect("moments");
        let moment_diff = (&host_v - &v)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(moment_diff < 1e-9, "second moments differ by {moment_diff}");
    }
}
