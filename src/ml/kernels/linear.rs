//! A dense layer `y = x Wᵀ + b` as one op: the bias is the GEMM's starting value, and the
//! backward pass runs only the GEMMs whose results are needed.
//!
//! Through candle's ops the layer is a matmul plus a broadcast add, and its backward computes
//! `dW` even for a frozen `W` (candle's matmul backward always computes both operand
//! gradients), plus a broadcast-add reduction for `db`. With LoRA or frozen layers that wasted
//! GEMM was a third of the step's arithmetic.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::gelu::gelu_in_place;
use super::gemm::{gemm, Mat, MatMut, Threads};
use super::{f32_slice, view};

/// `x Wᵀ + b`, or with `gelu`, `GELU(x Wᵀ + b)` computed in place on the GEMM's output:
/// the inference form of BERT's intermediate layer, which saves a `[n, intermediate]` buffer
/// (25 MB for a MiniLM batch of 32 × 128) and a pass over it. Training keeps GELU a separate
/// op, whose backward needs the pre-activation, so the `gelu` form has no backward.
struct Linear {
    gelu: bool,
}

/// `(rows, in, out)` of `x` `[.., in]`, `w` `[out, in]` and `b` `[out]`.
fn dims(x: &Shape, w: &Shape, b: &Shape) -> candle_core::Result<(usize, usize, usize)> {
    let (out, in_dim) = w.dims2()?;
    let x_in = x.dims().last().copied().unwrap_or(0);
    if x_in != in_dim || b.elem_count() != out {
        candle_core::bail!(
            "taper linear: input {:?}, weight {:?}, bias {:?} do not fit",
            x.dims(),
            w.dims(),
            b.dims()
        )
    }
    Ok((x.elem_count() / in_dim.max(1), in_dim, out))
}

/// `x Wᵀ + b` for `x` `[rows, in]`, `w` `[out, in]`: the bias rows are the GEMM's starting
/// value, so adding it costs no pass of its own.
pub(super) fn dense(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (rows, in_dim, out_dim): (usize, usize, usize),
) -> candle_core::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(rows * out_dim);
    for _ in 0..rows {
        out.extend_from_slice(b);
    }
    gemm(
        MatMut::rows(&mut out, rows, out_dim, out_dim),
        Mat::rows(x, rows, in_dim, in_dim),
        Mat::rows(w, out_dim, in_dim, in_dim).t(),
        true,
        1.0,
        Threads::Pool,
    )?;
    Ok(out)
}

/// `dims` with the last dimension replaced by `last` (a dense layer's output shape).
pub(super) fn with_last(dims: &[usize], last: usize) -> Shape {
    let mut dims = dims.to_vec();
    if let Some(end) = dims.last_mut() {
        *end = last;
    }
    Shape::from(dims)
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "taper-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, in_dim, out_dim) = dims(x_layout.shape(), w_layout.shape(), b_layout.shape())?;
        let x = f32_slice(x, x_layout, "linear")?;
        let w = f32_slice(w, w_layout, "linear")?;
        let b = f32_slice(b, b_layout, "linear")?;
        let mut out = dense(x, w, b, (rows, in_dim, out_dim))?;
        if self.gelu {
            gelu_in_place(&mut out);
        }
        Ok((CpuStorage::F32(out), with_last(x_layout.dims(), out_dim)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.gelu {
            candle_core::bail!("taper linear: the GELU form is inference-only and has no backward")
        }
        let (rows, in_dim, out_dim) = dims(x.shape(), w.shape(), b.shape())?;
        let grad = grad.contiguous()?;
        let (x_c, w_c) = (x.contiguous()?, w.contiguous()?);
        let (grad_view, x_view, w_view) = (view(&grad), view(&x_c), view(&w_c));
        let g = Mat::rows(grad_view.slice("linear backward")?, rows, out_dim, out_dim);
        let dx = if x.track_op() {
            let mut dx = vec![0f32; rows * in_dim];
            let w = Mat::rows(w_view.slice("linear backward")?, out_dim, in_dim, in_dim);
            gemm(
                MatMut::rows(&mut dx, rows, in_dim, in_dim),
                g,
                w,
                false,
                1.0,
                Threads::Pool,
            )?;
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let mut dw = vec![0f32; out_dim * in_dim];
            let xs = Mat::rows(x_view.slice("linear backward")?, rows, in_dim, in_dim);
            gemm(
                MatMut::rows(&mut dw, out_dim, in_dim, in_dim),
                g.t(),
                xs,
                false,
                1.0,
                Threads::Pool,
            )?;
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        let db = if b.track_op() {
            // Column sums, row by row: a fixed order, so the result is thread-count independent.
            let mut db = vec![0f32; out_dim];
            let grad_rows = grad_view.slice("linear backward")?;
            for row in grad_rows.chunks_exact(out_dim.max(1)) {
                for (sum, g) in db.iter_mut().zip(row) {
                    *sum += g;
                }
            }
            Some(Tensor::from_vec(db, b.shape(), b.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `x Wᵀ + b` for `x` `[.., in]`, `w` `[out, in]`, `b` `[out]` (CPU f32; see
/// [`super::fused`]).
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear { gelu: false })
}

/// `GELU(x Wᵀ + b)` for inference: no gradient flows through it (CPU f32; see
/// [`super::fused`]).
pub(crate) fn dense_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &Linear { gelu: true })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{gradients, max_diff, ramp};
    use super::*;

    #[test]
    fn fused_linear_matches_matmul_plus_bias_values_and_gradients() {
        let x = Var::from_vec(ramp(2 * 3 * 5, 0, 0.1), (2, 3, 5), &Device::Cpu).expect("x");
        let w = Var::from_vec(ramp(4 * 5, 0, 0.05), (4, 5), &Device::Cpu).expect("w");
        let b = Var::from_vec(ramp(4, 0, 0.2), 4, &Device::Cpu).expect("b");
        let upstream = Tensor::from_vec(ramp(24, 0, 0.3), (2, 3, 4), &Device::Cpu).expect("up");
        let ours = linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).expect("fused");
        let theirs = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t().expect("t"))
            .and_then(|y| y.broadcast_add(b.as_tensor()))
            .expect("composite");
        assert_eq!(ours.dims(), &[2, 3, 4]);
        assert!(max_diff(&ours, &theirs) < 1e-5);
        let grads =
            |y: &Tensor| gradients(y, &upstream, [x.as_tensor(), w.as_tensor(), b.as_tensor()]);
        for (a, b) in grads(&ours).iter().zip(grads(&theirs).iter()) {
            assert!(max_diff(a, b) < 1e-4);
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_no_gemm() {
        let x = Var::from_vec(ramp(6, 0, 0.1), (2, 3), &Device::Cpu).expect("x");
        let w = Tensor::from_vec(ramp(6, 0, 0.1), (2, 3), &Device::Cpu).expect("w");
        let b = Tensor::from_vec(ramp(2, 0, 0.1), 2, &Device::Cpu).expect("b");
        let grads = linear(x.as_tensor(), &w, &b)
            .and_then(|y| y.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
    }
}
