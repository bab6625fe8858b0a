//! AdamW's update in place: three parallel passes per parameter (first moment, second moment,
//! weights) instead of about twelve tensor ops, each allocating a parameter-sized buffer.
//! For MiniLM (22.7 M parameters, 11.7 M of them in the word embeddings, which get a dense
//! gradient as in torch) that was 80 ms of every optimizer step.
//!
//! The gradient is scaled on the fly (`grad_scale`: the accumulation average times the
//! clipping coefficient), so the scaled copy of every gradient is never materialised.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

use super::{f32_slice, view};

/// Elements per parallel task.
const CHUNK: usize = 64 * 1024;

fn f32_slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("taper {what} expects an f32 tensor")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("taper {what} expects a contiguous tensor")
    };
    Ok(&mut data[start..end])
}

/// The scalars of one AdamW update of one parameter (torch's arithmetic).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamStep {
    pub(crate) lr: f64,
    /// 0 for parameters outside the decay group.
    pub(crate) weight_decay: f64,
    pub(crate) beta1: f64,
    pub(crate) beta2: f64,
    pub(crate) eps: f64,
    /// `1 - beta1^t`.
    pub(crate) bias_correction1: f64,
    /// `sqrt(1 - beta2^t)`.
    pub(crate) bias_correction2_sqrt: f64,
    /// Multiplies the stored gradient before use.
    pub(crate) grad_scale: f64,
}

/// `m = beta · m + (1 - beta) · f(scale · g)` with `f` the identity or the square.
struct Moment {
    beta: f32,
    scale: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "taper-adam-moment"
    }

    fn cpu_fwd(
        &self,
        m: &mut CpuStorage,
        m_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<()> {
        let m = f32_slice_mut(m, m_layout, "adam")?;
        let g = f32_slice(g, g_layout, "adam")?;
        if m.len() != g.len() {
            candle_core::bail!("taper adam: moment and gradient differ in size")
        }
        let (beta, rest, scale) = (self.beta, 1.0 - self.beta, self.scale);
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                if self.square {
                    for (m, g) in m.iter_mut().zip(g) {
                        let g = g * scale;
                        *m = *m * beta + g * g * rest;
                    }
                } else {
                    for (m, g) in m.iter_mut().zip(g) {
                        *m = *m * beta + g * scale * rest;
                    }
                }
            });
        Ok(())
    }
}

/// `p = p · (1 - lr · wd) - step_size · m / (sqrt(v) / bc2 + eps)`.
struct Apply {
    decay: f32,
    step_size: f32,
    inverse_bc2: f32,
    eps: f32,
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "taper-adam-apply"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        p_layout: &Layout,
        m: &CpuStorage,
        m_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<()> {
        let p = f32_slice_mut(p, p_layout, "adam")?;
        let m = f32_slice(m, m_layout, "adam")?;
        let v = f32_slice(v, v_layout, "adam")?;
        if p.len() != m.len() || p.len() != v.len() {
            candle_core::bail!("taper adam: parameter and moments differ in size")
        }
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, m), v) in p.iter_mut().zip(m).zip(v) {
                    let denom = v.sqrt() * self.inverse_bc2 + self.eps;
                    *p = *p * self.decay - self.step_size * (m / denom);
                }
            });
        Ok(())
    }
}

/// One AdamW update of `param` in place, with moments `m` and `v` updated in place (all CPU
/// f32 and contiguous; see [`super::fused`]).
pub(crate) fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: &AdamStep,
) -> candle_core::Result<()> {
    let grad = grad.contiguous()?;
    let scale = step.grad_scale as f32;
    m.inplace_op2(
        &grad,
        &Moment {
            beta: step.beta1 as f32,
            scale,
            square: false,
        },
    )?;
    v.inplace_op2(
        &grad,
        &Moment {
            beta: step.beta2 as f32,
            scale,
            square: true,
        },
    )?;
    param.inplace_op3(
        m,
        v,
        &Apply {
            decay: (1.0 - step.lr * step.weight_decay) as f32,
            step_size: (step.lr / step.bias_correction1) as f32,
            inverse_bc2: (1.0 / step.bias_correction2_sqrt) as f32,
            eps: step.eps as f32,
        },
    )
}

/// Σ x² of a CPU f32 tensor, in f64, summed per task then in task order (reproducible).
pub(crate) fn sum_of_squares(xs: &Tensor) -> candle_core::Result<f64> {
    let xs = xs.contiguous()?;
    let xs_view = view(&xs);
    let data = xs_view.slice("sum of squares")?;
    let partials: Vec<f64> = data
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut lanes = [0f64; 4];
            let chunks = chunk.chunks_exact(4);
            let tail: f64 = chunks.remainder().iter().map(|x| f64::from(x * x)).sum();
            for c in chunks {
                for (lane, x) in lanes.iter_mut().zip(c) {
                    *lane += f64::from(x * x);
                }
            }
            lanes.iter().sum::<f64>() + tail
        })
        .collect();
    Ok(partials.iter().sum())
}
