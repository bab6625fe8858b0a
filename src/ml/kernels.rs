//! Fused CPU kernels that keep a backward pass.
//!
//! candle's fused softmax has no backward (knowledge.md, trap 1), and the composite
//! `ops::softmax` costs five elementwise passes forward and about ten backward, each with a
//! fresh allocation (and, in candle 0.11, a thread-pool barrier). This softmax does one pass
//! forward and three tensor ops backward. Other devices use the composite op.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};

/// Softmax over the last dimension with an exact backward: `dx = y ⊙ (dy − Σ(dy ⊙ y))`.
struct TrainableSoftmax;

impl CustomOp1 for TrainableSoftmax {
    fn name(&self) -> &'static str {
        "taper-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("taper softmax expects an f32 tensor")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("taper softmax expects a contiguous input")
        };
        let input = &data[start..end];
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; input.len()];
        for (row, out_row) in input.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, x) in out_row.iter_mut().zip(row) {
                *o = (x - max).exp();
                sum += *o;
            }
            let inverse = 1.0 / sum;
            out_row.iter_mut().for_each(|o| *o *= inverse);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some(res.mul(&grad_res.broadcast_sub(&dot)?)?))
    }
}

/// Differentiable softmax over the last dimension: the fused kernel on CPU f32, candle's
/// composite op elsewhere.
pub(crate) fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
        xs.contiguous()?.apply_op1(TrainableSoftmax)
    } else {
        candle_nn::ops::softmax(xs, D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn fused_softmax_matches_composite_values_and_gradients() {
        let values: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let weights: Vec<f32> = (0..60).map(|i| ((i * 13 % 7) as f32) - 3.0).collect();
        let x = Var::from_vec(values, (3, 4, 5), &Device::Cpu).expect("var");
        let w = Tensor::from_vec(weights, (3, 4, 5), &Device::Cpu).expect("weights");
        let ours = softmax_last_dim(x.as_tensor()).expect("fused");
        let theirs = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).expect("composite");
        let diff = (&ours - &theirs)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff < 1e-6, "values differ by {diff}");
        let grad = |y: &Tensor| {
            let loss = (y * &w).and_then(|t| t.sum_all()).expect("loss");
            let grads = loss.backward().expect("backward");
            grads.get(x.as_tensor()).expect("x has a gradient").clone()
        };
        let diff = (grad(&ours) - grad(&theirs))
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff < 1e-5, "gradients differ by {diff}");
    }
}
