//! AdamW with parameter groups and savable moments, learning-rate schedules, and global-norm
//! clipping. candle-nn's AdamW keeps its state private and applies one weight decay to every
//! variable (knowledge.md, trap 3), so it is reimplemented here with torch's arithmetic.

use candle_core::{Tensor, Var};

use crate::model::stages::Schedule;

use super::error::Result;

pub(crate) const BETA1: f64 = 0.9;
pub(crate) const BETA2: f64 = 0.999;
pub(crate) const EPS: f64 = 1e-8;

/// HF Trainer's grouping: biases and LayerNorm weights get no weight decay.
pub(crate) fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments).
pub(crate) struct AdamW {
    weight_decay: f64,
    decay: Vec<bool>,
    pub(crate) first_moments: Vec<Tensor>,
    pub(crate) second_moments: Vec<Tensor>,
}

impl AdamW {
    pub(crate) fn new(vars: &[(String, Var)], weight_decay: f64) -> Result<Self> {
        let mut first_moments = Vec::with_capacity(vars.len());
        let mut second_moments = Vec::with_capacity(vars.len());
        for (_, var) in vars {
            first_moments.push(var.as_tensor().zeros_like()?);
            second_moments.push(var.as_tensor().zeros_like()?);
        }
        Ok(Self {
            weight_decay,
            decay: vars.iter().map(|(name, _)| decays(name)).collect(),
            first_moments,
            second_moments,
        })
    }

    /// One update at 1-based step `t` with learning rate `lr`.
    pub(crate) fn step(
        &mut self,
        vars: &[(String, Var)],
        grads: &[Tensor],
        lr: f64,
        t: usize,
    ) -> Result<()> {
        let t = t as i32;
        let bias_correction1 = 1.0 - BETA1.powi(t);
        let bias_correction2_sqrt = (1.0 - BETA2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        for (index, ((_, var), grad)) in vars.iter().zip(grads).enumerate() {
            let mut param = var.as_detached_tensor();
            if self.decay[index] && self.weight_decay != 0.0 {
                param = (param * (1.0 - lr * self.weight_decay))?;
            }
            let m = ((&self.first_moments[index] * BETA1)? + (grad * (1.0 - BETA1))?)?;
            let v = ((&self.second_moments[index] * BETA2)? + (grad.sqr()? * (1.0 - BETA2))?)?;
            let denom = ((v.sqrt()? / bias_correction2_sqrt)? + EPS)?;
            let update = (m.div(&denom)? * step_size)?;
            var.set(&(param - update)?)?;
            self.first_moments[index] = m;
            self.second_moments[index] = v;
        }
        Ok(())
    }
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

/// The global L2 norm of `grads`, and the grads scaled to at most `max_norm` (torch's
/// `clip_grad_norm_`: coefficient `max / (norm + 1e-6)`, applied only when below 1).
pub(crate) fn clip(grads: Vec<Tensor>, max_norm: Option<f64>) -> Result<(Vec<Tensor>, f32)> {
    let mut squares = Vec::with_capacity(grads.len());
    for grad in &grads {
        squares.push(
            grad.sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?,
        );
    }
    let norm = squares.iter().sum::<f64>().sqrt();
    let Some(max_norm) = max_norm else {
        return Ok((grads, norm as f32));
    };
    let coefficient = max_norm / (norm + 1e-6);
    if coefficient >= 1.0 {
        return Ok((grads, norm as f32));
    }
    let clipped = grads
        .into_iter()
        .map(|g| Ok((g * coefficient)?))
        .collect::<Result<Vec<_>>>()?;
    Ok((clipped, norm as f32))
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

    #[test]
    fn clipping_scales_to_max_norm() {
        let grads = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).expect("tensor")];
        let (clipped, norm) = clip(grads, Some(1.0)).expect("clip");
        assert!((norm - 5.0).abs() < 1e-6);
        let values = clipped[0].to_vec1::<f32>().expect("values");
        assert!((values[0] - 0.6).abs() < 1e-5 && (values[1] - 0.8).abs() < 1e-5);
    }

    #[test]
    fn adamw_first_step_matches_torch() {
        // torch: p = tensor([1.0, -2.0]); AdamW([p], lr=0.1, weight_decay=0.5);
        // p.grad = tensor([0.5, -0.25]); step() -> tensor([0.8500, -1.8000])
        // (decay: p * (1 - 0.05); Adam's first step moves each weight by lr * sign(grad)).
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).expect("var");
        let vars = vec![("w.weight".to_owned(), var)];
        let mut adam = AdamW::new(&vars, 0.5).expect("adam");
        let grad = Tensor::new(&[0.5f32, -0.25], &Device::Cpu).expect("grad");
        adam.step(&vars, &[grad], 0.1, 1).expect("step");
        let values = vars[0].1.as_tensor().to_vec1::<f32>().expect("values");
        assert!((values[0] - 0.85).abs() < 1e-6, "{values:?}");
        assert!((values[1] + 1.8).abs() < 1e-6, "{values:?}");
    }
}
