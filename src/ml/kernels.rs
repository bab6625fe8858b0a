//! Fused CPU kernels that keep a backward pass.
//!
//! candle's fused softmax has no backward (knowledge.md, trap 1), and the composite
//! `ops::softmax` costs five elementwise passes forward and about ten backward, each with a
//! fresh allocation (and, in candle 0.11, a thread-pool barrier). This softmax does one pass
//! forward and three tensor ops backward. The LayerNorm likewise runs one pass forward and one
//! kernel plus three tensor ops backward, instead of ~11 ops forward and ~20 backward for
//! `ops::layer_norm_slow`. Other devices use the composite ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, D};

fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("taper {what} expects an f32 tensor")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("taper {what} expects a contiguous tensor")
    };
    Ok(&data[start..end])
}

/// Mean and reciprocal standard deviation of one row (biased variance, as torch).
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `LayerNorm(x) · gamma + beta` over the last dimension, with a backward.
struct TrainableLayerNorm {
    eps: f32,
}

impl CustomOp3 for TrainableLayerNorm {
    fn name(&self) -> &'static str {
        "taper-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        gamma: &CpuStorage,
        gamma_layout: &Layout,
        beta: &CpuStorage,
        beta_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_data = f32_slice(x, x_layout, "layer norm")?;
        let gamma = f32_slice(gamma, gamma_layout, "layer norm")?;
        let beta = f32_slice(beta, beta_layout, "layer norm")?;
        let width = gamma.len().max(1);
        let mut out = vec![0f32; x_data.len()];
        for (row, out_row) in x_data.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let (mean, rstd) = row_stats(row, self.eps);
            for (((o, x), g), b) in out_row.iter_mut().zip(row).zip(gamma).zip(beta) {
                *o = (x - mean) * rstd * g + b;
            }
        }
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let width = gamma.dim(0)?;
        let grad = grad.contiguous()?;
        // One kernel gives `[dx | x̂]` side by side; the parameter gradients are column sums.
        let both = x.apply_op3_no_bwd(gamma, &grad, &LayerNormBackward { eps: self.eps })?;
        let rows = x.elem_count() / width;
        let both = both.reshape((rows, 2 * width))?;
        let dx = both.narrow(1, 0, width)?.reshape(x.shape())?;
        let x_hat = both.narrow(1, width, width)?;
        let grad_rows = grad.reshape((rows, width))?;
        let d_gamma = (&grad_rows * &x_hat)?.sum(0)?;
        let d_beta = grad_rows.sum(0)?;
        Ok((Some(dx), Some(d_gamma), Some(d_beta)))
    }
}

/// Backward kernel of [`TrainableLayerNorm`] on `(x, gamma, dy)`: rows of `[dx | x̂]` with
/// `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))`, `ĝ = dy ⊙ gamma`.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "taper-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        gamma: &CpuStorage,
        gamma_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_data = f32_slice(x, x_layout, "layer norm backward")?;
        let gamma = f32_slice(gamma, gamma_layout, "layer norm backward")?;
        let grad = f32_slice(grad, grad_layout, "layer norm backward")?;
        let width = gamma.len().max(1);
        let rows = x_data.len() / width;
        let mut out = vec![0f32; 2 * x_data.len()];
        let mut scaled = vec![0f32; width];
        for ((row, grad_row), out_row) in x_data
            .chunks_exact(width)
            .zip(grad.chunks_exact(width))
            .zip(out.chunks_exact_mut(2 * width))
        {
            let (mean, rstd) = row_stats(row, self.eps);
            let (dx, x_hat) = out_row.split_at_mut(width);
            let mut sum_scaled = 0f32;
            let mut sum_scaled_hat = 0f32;
            for i in 0..width {
                x_hat[i] = (row[i] - mean) * rstd;
                scaled[i] = grad_row[i] * gamma[i];
                sum_scaled += scaled[i];
                sum_scaled_hat += scaled[i] * x_hat[i];
            }
            let n = width as f32;
            let (m1, m2) = (sum_scaled / n, sum_scaled_hat / n);
            for i in 0..width {
                dx[i] = rstd * (scaled[i] - m1 - x_hat[i] * m2);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, 2 * width))))
    }
}

/// Differentiable LayerNorm over the last dimension: fused kernels on CPU f32, candle's
/// composite op elsewhere.
pub(crate) fn layer_norm(
    xs: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
        xs.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            TrainableLayerNorm { eps },
        )
    } else {
        candle_nn::ops::layer_norm_slow(xs, gamma, beta, eps)
    }
}

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
    fn fused_layer_norm_matches_composite_values_and_gradients() {
        let values: Vec<f32> = (0..48)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let weights: Vec<f32> = (0..48).map(|i| ((i * 13 % 7) as f32) - 3.0).collect();
        let x = Var::from_vec(values, (2, 3, 8), &Device::Cpu).expect("x");
        let gamma = Var::from_vec(
            (0..8).map(|i| 0.5 + i as f32 * 0.1).collect(),
            8,
            &Device::Cpu,
        )
        .expect("gamma");
        let beta = Var::from_vec((0..8).map(|i| i as f32 * 0.05).collect(), 8, &Device::Cpu)
            .expect("beta");
        let w = Tensor::from_vec(weights, (2, 3, 8), &Device::Cpu).expect("weights");
        let ours =
            layer_norm(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).expect("fused");
        let theirs = candle_nn::ops::layer_norm_slow(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            1e-5,
        )
        .expect("composite");
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff")
        };
        let diff = max_diff(&ours, &theirs);
        assert!(diff < 1e-5, "values differ by {diff}");
        let grads = |y: &Tensor| {
            let loss = (y * &w).and_then(|t| t.sum_all()).expect("loss");
            let grads = loss.backward().expect("backward");
            [x.as_tensor(), gamma.as_tensor(), beta.as_tensor()]
                .map(|v| grads.get(v).expect("every input has a gradient").clone())
        };
        for (a, b) in grads(&ours).iter().zip(grads(&theirs).iter()) {
            let diff = max_diff(a, b);
            assert!(diff < 1e-4, "gradients differ by {diff}");
        }
    }

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
