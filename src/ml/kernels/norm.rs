//! LayerNorm and softmax over the last dimension with a backward pass (candle's fused versions
//! have none: docs/design.md §1.1), in parallel over rows.
//!
//! LayerNorm is one pass forward and one backward (`dx`, `dγ` and `dβ` together, the
//! parameter sums per task of rows, added in task order); candle's `layer_norm_slow` is ~11
//! ops forward and ~20 backward. Softmax is one pass forward and three tensor ops backward.
//! Other devices use the composite ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_slice, fused, gradient, math, rows_per_task, view};

/// Mean and reciprocal standard deviation of one row (biased variance, as torch).
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = math::sum(row) / n;
    let mut lanes = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|x| (x - mean) * (x - mean))
        .sum();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += (x - mean) * (x - mean);
        }
    }
    let var = (lanes.iter().sum::<f32>() + tail) / n;
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
        if x_data.len() % width != 0 || beta.len() != gamma.len() {
            candle_core::bail!("taper layer norm: input and parameters do not fit")
        }
        let mut out = vec![0f32; x_data.len()];
        let chunk = rows_per_task(width) * width;
        out.par_chunks_mut(chunk)
            .zip(x_data.par_chunks(chunk))
            .for_each(|(out, x)| {
                for (row, out_row) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
                    let (mean, rstd) = row_stats(row, self.eps);
                    for (((o, x), g), b) in out_row.iter_mut().zip(row).zip(gamma).zip(beta) {
                        *o = (x - mean) * rstd * g + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (x_c, gamma_c) = (x.contiguous()?, gamma.contiguous()?);
        let (x_view, gamma_view, grad_view) = (view(&x_c), view(&gamma_c), view(&grad));
        let what = "layer norm backward";
        let (xs, gs, dys) = (
            x_view.slice(what)?,
            gamma_view.slice(what)?,
            grad_view.slice(what)?,
        );
        let width = gs.len().max(1);
        if xs.len() != dys.len() || xs.len() % width != 0 {
            candle_core::bail!("taper layer norm backward: shapes do not fit")
        }
        let chunk = rows_per_task(width) * width;
        let mut dx = vec![0f32; xs.len()];
        // dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)), ĝ = dy ⊙ γ; dγ = Σ dy ⊙ x̂; dβ = Σ dy.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk).zip(dys.par_chunks(chunk)))
            .map(|(dx, (x, dy))| {
                let mut d_gamma = vec![0f32; width];
                let mut d_beta = vec![0f32; width];
                let mut x_hat = vec![0f32; width];
                let mut scaled = vec![0f32; width];
                let rows = x.chunks_exact(width).zip(dy.chunks_exact(width));
                for ((row, dy_row), dx_row) in rows.zip(dx.chunks_exact_mut(width)) {
                    let (mean, rstd) = row_stats(row, self.eps);
                    for i in 0..width {
                        x_hat[i] = (row[i] - mean) * rstd;
                        scaled[i] = dy_row[i] * gs[i];
                        d_gamma[i] += dy_row[i] * x_hat[i];
                        d_beta[i] += dy_row[i];
                    }
                    let n = width as f32;
                    let m1 = math::sum(&scaled) / n;
                    let m2 = math::dot(&scaled, &x_hat) / n;
                    for i in 0..width {
                        dx_row[i] = rstd * (scaled[i] - m1 - x_hat[i] * m2);
                    }
                }
                (d_gamma, d_beta)
            })
            .collect();
        // Task partials are added in task order: the same sums whatever the thread count.
        let mut d_gamma = vec![0f32; width];
        let mut d_beta = vec![0f32; width];
        for (pg, pb) in &partials {
            d_gamma.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
            d_beta.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        Ok((
            gradient(dx, x)?,
            gradient(d_gamma, gamma)?,
            gradient(d_beta, beta)?,
        ))
    }
}

/// Differentiable LayerNorm over the last dimension: the fused kernels on CPU f32, candle's
/// composite op elsewhere.
pub(crate) fn layer_norm(
    xs: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    if fused(xs) {
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
        let input = f32_slice(storage, layout, "softmax")?;
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = input.to_vec();
        let chunk = rows_per_task(width) * width;
        out.par_chunks_mut(chunk).for_each(|rows| {
            rows.chunks_exact_mut(width)
                .for_each(math::softmax_in_place)
        });
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
    if fused(xs) {
        xs.contiguous()?.apply_op1(TrainableSoftmax)
    } else {
        candle_nn::ops::softmax(xs, D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{gradients, max_diff};
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
        let diff = max_diff(&ours, &theirs);
        assert!(diff < 1e-5, "values differ by {diff}");
        let grads =
            |y: &Tensor| gradients(y, &w, [x.as_tensor(), gamma.as_tensor(), beta.as_tensor()]);
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
        let diff = max_diff(&ours, &theirs);
        assert!(diff < 1e-6, "values differ by {diff}");
        let grad = |y: &Tensor| {
            let [g] = gradients(y, &w, [x.as_tensor()]);
            g
        };
        let diff = max_diff(&grad(&ours), &grad(&theirs));
        assert!(diff < 1e-5, "gradients differ by {diff}");
    }
}
