//! A LoRA linear layer as one op: `y = x Wᵀ + b + s · ((x ⊙ D) Aᵀ) Bᵀ` with `W`, `b` frozen,
//! `A` `[r, in]` and `B` `[out, r]` trained, `D` LoRA's dropout keep-mask, `s = alpha / r`.
//!
//! Through candle's ops the adapter was a dropout multiply, two skinny matmuls, a scaling and an
//! add forward, and about twice that backward, each a single-threaded pass with its own
//! allocation, plus the frozen layer's unused `dW`. Backward here recomputes `x ⊙ D` and
//! `(x ⊙ D) Aᵀ` (`[n, r]`, cheap at LoRA ranks) instead of keeping them.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{gemm, Mat, MatMut, Threads};
use super::{f32_slice, view};

const CHUNK: usize = 32 * 1024;

struct Lora {
    /// The frozen base weight `[out, in]` and bias `[out]`.
    weight: Tensor,
    bias: Tensor,
    scale: f32,
    /// `[n, in]` inverted-dropout keep-mask of the adapter's input, if training.
    mask: Option<Arc<Vec<f32>>>,
}

/// `(rows, in, out, rank)`.
type Dims = (usize, usize, usize, usize);

impl Lora {
    fn dims(&self, x: &Shape, a: &Shape, b: &Shape) -> candle_core::Result<Dims> {
        let (out, in_dim) = self.weight.dims2()?;
        let (rank, a_in) = a.dims2()?;
        let (b_out, b_rank) = b.dims2()?;
        let x_in = x.dims().last().copied().unwrap_or(0);
        if x_in != in_dim || a_in != in_dim || b_out != out || b_rank != rank {
            candle_core::bail!(
                "taper lora: input {:?}, A {:?}, B {:?} do not fit weight {:?}",
                x.dims(),
                a.dims(),
                b.dims(),
                self.weight.dims()
            )
        }
        let rows = x.elem_count() / in_dim.max(1);
        if self.mask.as_ref().is_some_and(|m| m.len() != rows * in_dim) {
            candle_core::bail!("taper lora: dropout mask does not match the input")
        }
        Ok((rows, in_dim, out, rank))
    }

    /// `x ⊙ D` (a copy of `x` without dropout).
    fn dropped(&self, x: &[f32]) -> Vec<f32> {
        match &self.mask {
            Some(mask) => {
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK).zip(mask.par_chunks(CHUNK)))
                    .for_each(|(o, (x, m))| {
                        for ((o, x), m) in o.iter_mut().zip(x).zip(m) {
                            *o = x * m;
                        }
                    });
                out
            }
            None => x.to_vec(),
        }
    }

    /// `u = (x ⊙ D) Aᵀ`, `[rows, rank]`.
    fn down(
        &self,
        dropped: &[f32],
        a: &[f32],
        (rows, in_dim, _, rank): Dims,
    ) -> candle_core::Result<Vec<f32>> {
        let mut u = vec![0f32; rows * rank];
        gemm(
            MatMut::rows(&mut u, rows, rank, rank),
            Mat::rows(dropped, rows, in_dim, in_dim),
            Mat::rows(a, rank, in_dim, in_dim).t(),
            false,
            1.0,
            Threads::Pool,
        )?;
        Ok(u)
    }
}

impl CustomOp3 for Lora {
    fn name(&self) -> &'static str {
        "taper-lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self.dims(x_layout.shape(), a_layout.shape(), b_layout.shape())?;
        let (rows, in_dim, out_dim, rank) = dims;
        let x = f32_slice(x, x_layout, "lora")?;
        let a = f32_slice(a, a_layout, "lora")?;
        let b = f32_slice(b, b_layout, "lora")?;
        let (weight, bias) = (self.weight.contiguous()?, self.bias.contiguous()?);
        let (weight_view, bias_view) = (view(&weight), view(&bias));
        let bias = bias_view.slice("lora")?;
        let mut out = Vec::with_capacity(rows * out_dim);
        for _ in 0..rows {
            out.extend_from_slice(bias);
        }
        gemm(
            MatMut::rows(&mut out, rows, out_dim, out_dim),
            Mat::rows(x, rows, in_dim, in_dim),
            Mat::rows(weight_view.slice("lora")?, out_dim, in_dim, in_dim).t(),
            true,
            1.0,
            Threads::Pool,
        )?;
        let u = self.down(&self.dropped(x), a, dims)?;
        gemm(
            MatMut::rows(&mut out, rows, out_dim, out_dim),
            Mat::rows(&u, rows, rank, rank),
            Mat::rows(b, out_dim, rank, rank).t(),
            true,
            self.scale,
            Threads::Pool,
        )?;
        let mut shape = x_layout.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out_dim;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(x.shape(), a.shape(), b.shape())?;
        let (rows, in_dim, out_dim, rank) = dims;
        let grad = grad.contiguous()?;
        let (x_c, a_c, b_c, w_c) = (
            x.contiguous()?,
            a.contiguous()?,
            b.contiguous()?,
            self.weight.contiguous()?,
        );
        let views = [view(&grad), view(&x_c), view(&a_c), view(&b_c), view(&w_c)];
        let what = "lora backward";
        let (gs, xs, a_s, b_s, ws) = (
            views[0].slice(what)?,
            views[1].slice(what)?,
            views[2].slice(what)?,
            views[3].slice(what)?,
            views[4].slice(what)?,
        );
        let g = Mat::rows(gs, rows, out_dim, out_dim);
        let dropped = self.dropped(xs);
        // v = g B, [rows, rank]: the gradient at the adapter's bottleneck, before the scale.
        let mut v = vec![0f32; rows * rank];
        gemm(
            MatMut::rows(&mut v, rows, rank, rank),
            g,
            Mat::rows(b_s, out_dim, rank, rank),
            false,
            1.0,
            Threads::Pool,
        )?;
        let dx = if x.track_op() {
            let mut dx = vec![0f32; rows * in_dim];
            gemm(
                MatMut::rows(&mut dx, rows, in_dim, in_dim),
                g,
                Mat::rows(ws, out_dim, in_dim, in_dim),
                false,
                1.0,
                Threads::Pool,
            )?;
            let a_mat = Mat::rows(a_s, rank, in_dim, in_dim);
            match &self.mask {
                None => gemm(
                    MatMut::rows(&mut dx, rows, in_dim, in_dim),
                    Mat::rows(&v, rows, rank, rank),
                    a_mat,
                    true,
                    self.scale,
                    Threads::Pool,
                )?,
                Some(mask) => {
                    let mut d_dropped = vec![0f32; rows * in_dim];
                    gemm(
                        MatMut::rows(&mut d_dropped, rows, in_dim, in_dim),
                        Mat::rows(&v, rows, rank, rank),
                        a_mat,
                        false,
                        self.scale,
                        Threads::Pool,
                    )?;
                    dx.par_chunks_mut(CHUNK)
                        .zip(d_dropped.par_chunks(CHUNK).zip(mask.par_chunks(CHUNK)))
                        .for_each(|(dx, (dd, m))| {
                            for ((dx, dd), m) in dx.iter_mut().zip(dd).zip(m) {
                                *dx += dd * m;
                            }
                        });
                }
            }
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let da = if a.track_op() {
            // dA = s · vᵀ (x ⊙ D)
            let mut da = vec![0f32; rank * in_dim];
            gemm(
                MatMut::rows(&mut da, rank, in_dim, in_dim),
                Mat::rows(&v, rows, rank, rank).t(),
                Mat::rows(&dropped, rows, in_dim, in_dim),
                false,
                self.scale,
                Threads::Pool,
            )?;
            Some(Tensor::from_vec(da, a.shape(), a.device())?)
        } else {
            None
        };
        let db = if b.track_op() {
            // dB = s · gᵀ u
            let u = self.down(&dropped, a_s, dims)?;
            let mut db = vec![0f32; out_dim * rank];
            gemm(
                MatMut::rows(&mut db, out_dim, rank, rank),
                g.t(),
                Mat::rows(&u, rows, rank, rank),
                false,
                self.scale,
                Threads::Pool,
            )?;
            Some(Tensor::from_vec(db, b.shape(), b.device())?)
        } else {
            None
        };
        Ok((dx, da, db))
    }
}

/// The LoRA layer `x Wᵀ + b + scale · ((x ⊙ dropout) Aᵀ) Bᵀ` for a frozen `weight` and `bias`
/// (CPU f32; see [`super::fused`]). `dropout` is the `[rows, in]` keep-mask of the adapter's
/// input, `None` when not dropping.
pub(crate) fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
    dropout: Option<Vec<f32>>,
) -> candle_core::Result<Tensor> {
    if weight.track_op() || bias.track_op() {
        candle_core::bail!("taper lora: the base weight must be frozen")
    }
    let op = Lora {
        weight: weight.clone(),
        bias: bias.clone(),
        scale: scale as f32,
        mask: dropout.map(Arc::new),
    };
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn ramp(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 37 % 29) as f32 - 14.0) * scale)
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff")
    }

    #[test]
    fn fused_lora_matches_composite_values_and_gradients() {
        let (rows, in_dim, out_dim, rank) = (7, 6, 5, 2);
        let cpu = &Device::Cpu;
        let x = Var::from_vec(ramp(rows * in_dim, 1, 0.1), (rows, in_dim), cpu).expect("x");
        let w =
            Tensor::from_vec(ramp(out_dim * in_dim, 2, 0.05), (out_dim, in_dim), cpu).expect("w");
        let bias = Tensor::from_vec(ramp(out_dim, 3, 0.2), out_dim, cpu).expect("b");
        let a = Var::from_vec(ramp(rank * in_dim, 4, 0.07), (rank, in_dim), cpu).expect("a");
        let b = Var::from_vec(ramp(out_dim * rank, 5, 0.09), (out_dim, rank), cpu).expect("b");
        let upstream =
            Tensor::from_vec(ramp(rows * out_dim, 6, 0.3), (rows, out_dim), cpu).expect("up");
        let mask: Vec<f32> = (0..rows * in_dim)
            .map(|i| if i % 4 == 1 { 0.0 } else { 4.0 / 3.0 })
            .collect();
        for dropout in [None, Some(mask)] {
            let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
            let ours = lora_linear(xt, &w, &bias, (at, bt), 2.5, dropout.clone()).expect("ours");
            let dropped = match &dropout {
                Some(m) => xt
                    .mul(&Tensor::from_slice(m, (rows, in_dim), cpu).expect("mask"))
                    .expect("dropped"),
                None => xt.clone(),
            };
            let theirs = xt
                .matmul(&w.t().expect("t"))
                .and_then(|y| y.broadcast_add(&bias))
                .and_then(|y| {
                    let update = dropped.matmul(&at.t()?)?.matmul(&bt.t()?)?;
                    y + (update * 2.5)?
                })
                .expect("theirs");
            assert!(max_diff(&ours, &theirs) < 1e-5, "values");
            let grads = |y: &Tensor| {
                let grads = (y * &upstream)
                    .and_then(|t| t.sum_all())
                    .and_then(|l| l.backward())
                    .expect("backward");
                [xt, at, bt].map(|v| grads.get(v).expect("gradient").clone())
            };
            for (ours, theirs) in grads(&ours).iter().zip(grads(&theirs).iter()) {
                assert!(max_diff(ours, theirs) < 1e-4, "{}", max_diff(ours, theirs));
            }
        }
        assert!(lora_linear(
            x.as_tensor(),
            x.as_tensor(),
            &bias,
            (a.as_tensor(), b.as_tensor()),
            1.0,
            None
        )
        .is_err());
    }
}
