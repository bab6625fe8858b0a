//! LoRA linear layers as one op: `y = x Wᵀ + b + s · ((x ⊙ D) Aᵀ) Bᵀ` with `W`, `b` frozen,
//! `A` `[r, in]` and `B` `[out, r]` trained, `D` LoRA's dropout keep-mask, `s = alpha / r`.
//!
//! Several layers reading the same input (attention's q, k, v) run as one op: `W` is their
//! weights stacked, one GEMM computes every base output, and each adapter adds into its own
//! column block ([`LoraBlock`]). Their `A`s and `B`s arrive stacked too (`A` `[k · r, in]`,
//! `B` `[Σ out, r]`), so the op has three inputs whatever the number of adapters.
//!
//! Through candle's ops an adapter was a dropout multiply, two skinny matmuls, a scaling and an
//! add forward, and about twice that backward, each a single-threaded pass with its own
//! allocation, plus the frozen layer's unused `dW`. Backward here recomputes `x ⊙ D` and
//! `(x ⊙ D) Aᵀ` (`[n, r]`, cheap at LoRA ranks) instead of keeping them.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{gemm, Mat, MatMut, Threads};
use super::linear::{dense, with_last};
use super::{f32_slice, gradient, view};

const CHUNK: usize = 32 * 1024;

/// One adapter: the output columns it adds to, and its dropout keep-mask (`[n, in]`, `None`
/// when not dropping).
#[derive(Debug, Clone)]
pub(crate) struct LoraBlock {
    pub(crate) columns: std::ops::Range<usize>,
    pub(crate) mask: Option<Vec<f32>>,
}

struct Block {
    columns: std::ops::Range<usize>,
    mask: Option<Arc<Vec<f32>>>,
}

struct Lora {
    /// The frozen base weight `[out, in]` and bias `[out]`.
    weight: Tensor,
    bias: Tensor,
    scale: f32,
    blocks: Vec<Block>,
}

/// `(rows, in, out, rank)`.
type Dims = (usize, usize, usize, usize);

impl Lora {
    fn dims(&self, x: &Shape, a: &Shape, b: &Shape) -> candle_core::Result<Dims> {
        let (out, in_dim) = self.weight.dims2()?;
        let (a_rows, a_in) = a.dims2()?;
        let (b_rows, rank) = b.dims2()?;
        let x_in = x.dims().last().copied().unwrap_or(0);
        let rows = x.elem_count() / in_dim.max(1);
        let widths: usize = self.blocks.iter().map(|b| b.columns.len()).sum();
        let fits = x_in == in_dim
            && a_in == in_dim
            && a_rows == rank * self.blocks.len()
            && b_rows == widths
            && self.blocks.iter().all(|block| {
                block.columns.end <= out
                    && block.mask.as_ref().is_none_or(|m| m.len() == rows * in_dim)
            });
        if !fits {
            candle_core::bail!(
                "taper lora: input {:?}, A {:?}, B {:?} and {} adapters do not fit weight {:?}",
                x.dims(),
                a.dims(),
                b.dims(),
                self.blocks.len(),
                self.weight.dims()
            )
        }
        Ok((rows, in_dim, out, rank))
    }

    /// Row offsets of block `index` in the stacked `A` and `B`.
    fn offsets(&self, index: usize, rank: usize) -> (usize, usize) {
        let b_offset = self.blocks[..index].iter().map(|b| b.columns.len()).sum();
        (index * rank, b_offset)
    }

    /// `x ⊙ D` (a copy of `x` without dropout).
    fn dropped(x: &[f32], mask: Option<&[f32]>) -> Vec<f32> {
        match mask {
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

    /// `u = (x ⊙ D) Aᵀ`, `[rows, rank]`, for block `a` (`[rank, in]`).
    fn down(
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
        let weight = weight_view.slice("lora")?;
        let mut out = dense(x, weight, bias, (rows, in_dim, out_dim))?;
        for (index, block) in self.blocks.iter().enumerate() {
            let (a_off, b_off) = self.offsets(index, rank);
            let width = block.columns.len();
            let dropped = Self::dropped(x, block.mask.as_deref().map(Vec::as_slice));
            let u = Self::down(&dropped, &a[a_off * in_dim..(a_off + rank) * in_dim], dims)?;
            gemm(
                MatMut::rows(&mut out[block.columns.start..], rows, width, out_dim),
                Mat::rows(&u, rows, rank, rank),
                Mat::rows(&b[b_off * rank..(b_off + width) * rank], width, rank, rank).t(),
                true,
                self.scale,
                Threads::Pool,
            )?;
        }
        Ok((CpuStorage::F32(out), with_last(x_layout.dims(), out_dim)))
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
        let mut dx = vec![0f32; if x.track_op() { rows * in_dim } else { 0 }];
        if x.track_op() {
            gemm(
                MatMut::rows(&mut dx, rows, in_dim, in_dim),
                Mat::rows(gs, rows, out_dim, out_dim),
                Mat::rows(ws, out_dim, in_dim, in_dim),
                false,
                1.0,
                Threads::Pool,
            )?;
        }
        let mut da = vec![0f32; a_s.len()];
        let mut db = vec![0f32; b_s.len()];
        for (index, block) in self.blocks.iter().enumerate() {
            let (a_off, b_off) = self.offsets(index, rank);
            let width = block.columns.len();
            let mask = block.mask.as_deref().map(Vec::as_slice);
            let a_block = &a_s[a_off * in_dim..(a_off + rank) * in_dim];
            let b_block = &b_s[b_off * rank..(b_off + width) * rank];
            // This adapter's output gradient: its columns of `grad`.
            let g = Mat::rows(&gs[block.columns.start..], rows, width, out_dim);
            let dropped = Self::dropped(xs, mask);
            // v = g B, [rows, rank]: the gradient at the bottleneck, before the scale.
            let mut v = vec![0f32; rows * rank];
            gemm(
                MatMut::rows(&mut v, rows, rank, rank),
                g,
                Mat::rows(b_block, width, rank, rank),
                false,
                1.0,
                Threads::Pool,
            )?;
            if x.track_op() {
                let a_mat = Mat::rows(a_block, rank, in_dim, in_dim);
                let v_mat = Mat::rows(&v, rows, rank, rank);
                match mask {
                    None => gemm(
                        MatMut::rows(&mut dx, rows, in_dim, in_dim),
                        v_mat,
                        a_mat,
                        true,
                        self.scale,
                        Threads::Pool,
                    )?,
                    Some(mask) => {
                        let mut d_dropped = vec![0f32; rows * in_dim];
                        gemm(
                            MatMut::rows(&mut d_dropped, rows, in_dim, in_dim),
                            v_mat,
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
            }
            // dA = s · vᵀ (x ⊙ D), dB = s · gᵀ u
            gemm(
                MatMut::rows(&mut da[a_off * in_dim..], rank, in_dim, in_dim),
                Mat::rows(&v, rows, rank, rank).t(),
                Mat::rows(&dropped, rows, in_dim, in_dim),
                false,
                self.scale,
                Threads::Pool,
            )?;
            let u = Self::down(&dropped, a_block, dims)?;
            gemm(
                MatMut::rows(&mut db[b_off * rank..], width, rank, rank),
                g.t(),
                Mat::rows(&u, rows, rank, rank),
                false,
                self.scale,
                Threads::Pool,
            )?;
        }
        Ok((gradient(dx, x)?, gradient(da, a)?, gradient(db, b)?))
    }
}

/// LoRA layers `x Wᵀ + b` plus, for each block, `scale · ((x ⊙ mask) Aᵢᵀ) Bᵢᵀ` added to the
/// block's columns, for a frozen `weight` `[out, in]` and `bias` (CPU f32; see
/// [`super::fused`]). `a` stacks the blocks' `A`s (`[blocks · r, in]`), `b` their `B`s (`[Σ
/// block widths, r]`), in block order.
pub(crate) fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
    blocks: Vec<LoraBlock>,
) -> candle_core::Result<Tensor> {
    if weight.track_op() || bias.track_op() {
        candle_core::bail!("taper lora: the base weight must be frozen")
    }
    let op = Lora {
        weight: weight.clone(),
        bias: bias.clone(),
        scale: scale as f32,
        blocks: blocks
            .into_iter()
            .map(|block| Block {
                columns: block.columns,
                mask: block.mask.map(Arc::new),
            })
            .collect(),
    };
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{gradients, max_diff, ramp};
    use super::*;

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
            let block = LoraBlock {
                columns: 0..out_dim,
                mask: dropout.clone(),
            };
            let ours = lora_linear(xt, &w, &bias, (at, bt), 2.5, vec![block]).expect("ours");
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
            let grads = |y: &Tensor| gradients(y, &upstream, [xt, at, bt]);
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
            Vec::new()
        )
        .is_err());
    }

    #[test]
    fn stacked_adapters_equal_separate_layers() {
        // Three layers of width 2 over one input (as q, k, v); adapters on the first and last,
        // each with its own dropout mask.
        let (rows, in_dim, width, rank) = (5, 4, 2, 3);
        let cpu = &Device::Cpu;
        let x = Var::from_vec(ramp(rows * in_dim, 1, 0.1), (rows, in_dim), cpu).expect("x");
        let w = Tensor::from_vec(ramp(3 * width * in_dim, 2, 0.05), (3 * width, in_dim), cpu)
            .expect("w");
        let bias = Tensor::from_vec(ramp(3 * width, 3, 0.2), 3 * width, cpu).expect("b");
        let a =
            Var::from_vec(ramp(2 * rank * in_dim, 4, 0.07), (2 * rank, in_dim), cpu).expect("a");
        let b = Var::from_vec(ramp(2 * width * rank, 5, 0.09), (2 * width, rank), cpu).expect("b");
        let masks: Vec<Vec<f32>> = (0..2)
            .map(|k| {
                (0..rows * in_dim)
                    .map(|i| if (i + k) % 3 == 0 { 0.0 } else { 1.5 })
                    .collect()
            })
            .collect();
        let blocks = vec![
            LoraBlock {
                columns: 0..width,
                mask: Some(masks[0].clone()),
            },
            LoraBlock {
                columns: 2 * width..3 * width,
                mask: Some(masks[1].clone()),
            },
        ];
        let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
        let stacked = lora_linear(xt, &w, &bias, (at, bt), 0.5, blocks).expect("stacked");
        let layer = |i: usize| -> Tensor {
            let wi = w.narrow(0, i * width, width).expect("w");
            let bi = bias.narrow(0, i * width, width).expect("b");
            let mut blocks = Vec::new();
            let (ai, b_i) = match i {
                1 => (
                    at.narrow(0, 0, 0).expect("a"),
                    bt.narrow(0, 0, 0).expect("b"),
                ),
                _ => {
                    let k = i / 2;
                    blocks.push(LoraBlock {
                        columns: 0..width,
                        mask: Some(masks[k].clone()),
                    });
                    (
                        at.narrow(0, k * rank, rank).expect("a"),
                        bt.narrow(0, k * width, width).expect("b"),
                    )
                }
            };
            lora_linear(xt, &wi, &bi, (&ai, &b_i), 0.5, blocks).expect("layer")
        };
        let separate = Tensor::cat(&[layer(0), layer(1), layer(2)], 1).expect("cat");
        assert!(max_diff(&stacked, &separate) < 1e-6);
        let upstream =
            Tensor::from_vec(ramp(rows * 3 * width, 6, 0.3), (rows, 3 * width), cpu).expect("up");
        let grads = |y: &Tensor| gradients(y, &upstream, [xt, at, bt]);
        for (ours, theirs) in grads(&stacked).iter().zip(grads(&separate).iter()) {
            assert!(max_diff(ours, theirs) < 1e-5, "{}", max_diff(ours, theirs));
        }
    }
}
