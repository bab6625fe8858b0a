//! Multi-head self-attention as one op on the packed projections `qkv` (`[batch · tokens,
//! 3 · hidden]`: each row holds q, k and v, heads side by side), forward and backward.
//! Packed, because the three projections are then one GEMM (`n = 3 · hidden` uses the GEMM
//! better than three of `hidden`) and the layer input feeds one node instead of three, which
//! saves candle's backward two gradient accumulations per layer.
//!
//! Per batch element and head: `S = scale · Q Kᵀ + key_bias`, `P = softmax(S)`, `O = (P ⊙ D) V`
//! with `D` the dropout keep-mask, written straight into the head's columns of the output.
//! The head split and merge are strided GEMM views, not copies, and batch elements run in
//! parallel. The backward pass recomputes `P` from `Q` and `K` instead of keeping it: at
//! BERT's lengths it costs one small GEMM per head and saves `batch · heads · t²` floats per
//! layer.
//!
//! Through candle's ops this was three `[b, t, h, d] → [b, h, t, d]` copies, a scaling pass,
//! a broadcast mask add, softmax, a dropout multiply, a transpose-back copy, batched GEMMs of
//! 64 × 32 blocks that each resynchronised the thread pool, and about twice that backward.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{gemm, Mat, MatMut, Threads};
use super::simd::wide_fn;
use super::{f32_slice, math, view};

/// The shape of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttentionShape {
    pub(crate) batch: usize,
    pub(crate) tokens: usize,
    pub(crate) heads: usize,
    pub(crate) head_size: usize,
}

impl AttentionShape {
    fn hidden(&self) -> usize {
        self.heads * self.head_size
    }

    /// Elements of one batch element's rows.
    fn block(&self) -> usize {
        self.tokens * self.hidden()
    }
}

struct Attention {
    shape: AttentionShape,
    scale: f32,
    /// `[batch · tokens]`: 0 for a token, `f32::MIN` for padding (HF's additive mask).
    key_bias: Arc<Vec<f32>>,
    /// `[batch, heads, t, t]` inverted-dropout keep-mask of the probabilities, if training.
    dropout: Option<Arc<Vec<f32>>>,
}

/// One batch element's packed projections: `[tokens, 3 · hidden]`.
struct Block<'a> {
    qkv: &'a [f32],
    key_bias: &'a [f32],
}

impl Attention {
    fn check(&self, what: &str, len: usize, width: usize) -> candle_core::Result<()> {
        let s = self.shape;
        if len != s.batch * s.tokens * width || self.key_bias.len() != s.batch * s.tokens {
            candle_core::bail!("taper attention: {what} does not match {s:?}")
        }
        if let Some(mask) = &self.dropout {
            if mask.len() != s.batch * s.heads * s.tokens * s.tokens {
                candle_core::bail!("taper attention: dropout mask does not match {s:?}")
            }
        }
        Ok(())
    }

    fn block<'a>(&'a self, index: usize, qkv: &'a [f32]) -> Block<'a> {
        let packed = 3 * self.shape.block();
        let t = self.shape.tokens;
        Block {
            qkv: &qkv[index * packed..(index + 1) * packed],
            key_bias: &self.key_bias[index * t..(index + 1) * t],
        }
    }

    /// Column offsets of head `head`'s q, k and v in a packed row.
    fn columns(&self, head: usize) -> (usize, usize, usize) {
        let (d, hidden) = (self.shape.head_size, self.shape.hidden());
        (head * d, hidden + head * d, 2 * hidden + head * d)
    }

    /// The dropout keep-mask of batch element `index`, head `head`.
    fn mask(&self, index: usize, head: usize) -> Option<&[f32]> {
        let tt = self.shape.tokens * self.shape.tokens;
        let start = (index * self.shape.heads + head) * tt;
        self.dropout.as_ref().map(|m| &m[start..start + tt])
    }

    /// `P = softmax(scale · Q_h K_hᵀ + key_bias)` into `probs` (`[t, t]`).
    fn probabilities(
        &self,
        block: &Block<'_>,
        head: usize,
        probs: &mut [f32],
    ) -> candle_core::Result<()> {
        let (t, d, packed) = (
            self.shape.tokens,
            self.shape.head_size,
            3 * self.shape.hidden(),
        );
        let (qc, kc, _) = self.columns(head);
        gemm(
            MatMut::rows(probs, t, t, t),
            Mat::rows(&block.qkv[qc..], t, d, packed),
            Mat::rows(&block.qkv[kc..], t, d, packed).t(),
            false,
            self.scale,
            Threads::Single,
        )?;
        masked_softmax_wide(probs, block.key_bias);
        Ok(())
    }

    fn forward_block(
        &self,
        index: usize,
        block: &Block<'_>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let (t, d, hidden) = (self.shape.tokens, self.shape.head_size, self.shape.hidden());
        let mut probs = vec![0f32; t * t];
        for head in 0..self.shape.heads {
            self.probabilities(block, head, &mut probs)?;
            if let Some(mask) = self.mask(index, head) {
                probs.iter_mut().zip(mask).for_each(|(p, m)| *p *= m);
            }
            let (_, _, vc) = self.columns(head);
            gemm(
                MatMut::rows(&mut out[head * d..], t, d, hidden),
                Mat::rows(&probs, t, t, t),
                Mat::rows(&block.qkv[vc..], t, d, 3 * hidden),
                false,
                1.0,
                Threads::Single,
            )?;
        }
        Ok(())
    }

    /// Gradients of one batch element into its packed row block of `d_qkv`.
    fn backward_block(
        &self,
        index: usize,
        block: &Block<'_>,
        grad: &[f32],
        d_qkv: &mut [f32],
    ) -> candle_core::Result<()> {
        let (t, d, hidden) = (self.shape.tokens, self.shape.head_size, self.shape.hidden());
        let mut probs = vec![0f32; t * t];
        let mut dropped = vec![0f32; if self.dropout.is_some() { t * t } else { 0 }];
        let mut dprobs = vec![0f32; t * t];
        let packed = 3 * hidden;
        for head in 0..self.shape.heads {
            let (qc, kc, vc) = self.columns(head);
            let grad_h = Mat::rows(&grad[head * d..], t, d, hidden);
            self.probabilities(block, head, &mut probs)?;
            let mask = self.mask(index, head);
            let used: &[f32] = match mask {
                Some(mask) => {
                    for ((o, p), m) in dropped.iter_mut().zip(&probs).zip(mask) {
                        *o = p * m;
                    }
                    &dropped
                }
                None => &probs,
            };
            // dV = (P ⊙ D)ᵀ dO
            gemm(
                MatMut::rows(&mut d_qkv[vc..], t, d, packed),
                Mat::rows(used, t, t, t).t(),
                grad_h,
                false,
                1.0,
                Threads::Single,
            )?;
            // d(P ⊙ D) = dO Vᵀ, then dP = d(P ⊙ D) ⊙ D
            gemm(
                MatMut::rows(&mut dprobs, t, t, t),
                grad_h,
                Mat::rows(&block.qkv[vc..], t, d, packed).t(),
                false,
                1.0,
                Threads::Single,
            )?;
            if let Some(mask) = mask {
                dprobs.iter_mut().zip(mask).for_each(|(g, m)| *g *= m);
            }
            // Softmax backward: dS = P ⊙ (dP − rowsum(dP ⊙ P)).
            for (drow, prow) in dprobs.chunks_exact_mut(t).zip(probs.chunks_exact(t)) {
                let dot = math::dot(drow, prow);
                for (g, p) in drow.iter_mut().zip(prow) {
                    *g = p * (*g - dot);
                }
            }
            // dQ = scale · dS K, dK = scale · dSᵀ Q
            gemm(
                MatMut::rows(&mut d_qkv[qc..], t, d, packed),
                Mat::rows(&dprobs, t, t, t),
                Mat::rows(&block.qkv[kc..], t, d, packed),
                false,
                self.scale,
                Threads::Single,
            )?;
            gemm(
                MatMut::rows(&mut d_qkv[kc..], t, d, packed),
                Mat::rows(&dprobs, t, t, t).t(),
                Mat::rows(&block.qkv[qc..], t, d, packed),
                false,
                self.scale,
                Threads::Single,
            )?;
        }
        Ok(())
    }
}

/// Adds the key biases to each row of scores and takes its softmax, in place.
#[inline(always)]
fn masked_softmax(scores: &mut [f32], key_bias: &[f32]) {
    for row in scores.chunks_exact_mut(key_bias.len().max(1)) {
        for (score, bias) in row.iter_mut().zip(key_bias) {
            *score += bias;
        }
        math::softmax_in_place(row);
    }
}

wide_fn!(fn masked_softmax_wide(scores: &mut [f32], key_bias: &[f32]) => masked_softmax);

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "taper-attention"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(qkv, layout, "attention")?;
        self.check("qkv", qkv.len(), 3 * self.shape.hidden())?;
        let mut out = vec![0f32; qkv.len() / 3];
        out.par_chunks_mut(self.shape.block().max(1))
            .enumerate()
            .try_for_each(|(index, out)| self.forward_block(index, &self.block(index, qkv), out))?;
        let rows = self.shape.batch * self.shape.tokens;
        Ok((
            CpuStorage::F32(out),
            Shape::from((rows, self.shape.hidden())),
        ))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if !qkv.track_op() {
            return Ok(None);
        }
        let grad = grad.contiguous()?;
        let qkv_c = qkv.contiguous()?;
        let (qkv_view, grad_view) = (view(&qkv_c), view(&grad));
        let what = "attention backward";
        let (packed, gs) = (qkv_view.slice(what)?, grad_view.slice(what)?);
        self.check("qkv", packed.len(), 3 * self.shape.hidden())?;
        self.check("grad", gs.len(), self.shape.hidden())?;
        let block = self.shape.block().max(1);
        let mut d_qkv = vec![0f32; packed.len()];
        d_qkv
            .par_chunks_mut(3 * block)
            .enumerate()
            .try_for_each(|(index, d_qkv)| {
                let grad = &gs[index * block..(index + 1) * block];
                self.backward_block(index, &self.block(index, packed), grad, d_qkv)
            })?;
        Ok(Some(Tensor::from_vec(d_qkv, qkv.shape(), qkv.device())?))
    }
}

/// Attention over packed projections `qkv` (`[batch · tokens, 3 · hidden]`, see the module
/// doc), returning the context `[batch · tokens, hidden]` (CPU f32; see [`super::fused`]).
/// `key_bias` holds `[batch · tokens]` additive key biases; `dropout` a `[batch, heads, t, t]`
/// keep-mask.
pub(crate) fn attention(
    qkv: &Tensor,
    shape: AttentionShape,
    key_bias: Vec<f32>,
    dropout: Option<Vec<f32>>,
) -> candle_core::Result<Tensor> {
    let op = Attention {
        shape,
        scale: 1.0 / (shape.head_size as f32).sqrt(),
        key_bias: Arc::new(key_bias),
        dropout: dropout.map(Arc::new),
    };
    qkv.contiguous()?.apply_op1(op)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::super::test_util::{gradients, max_diff, ramp};
    use super::*;

    /// The same attention through candle's ops, as the encoder wrote it before this kernel.
    fn composite(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        s: AttentionShape,
        key_bias: &[f32],
        dropout: Option<&[f32]>,
    ) -> candle_core::Result<Tensor> {
        let split = |t: &Tensor| {
            t.reshape((s.batch, s.tokens, s.heads, s.head_size))?
                .transpose(1, 2)?
                .contiguous()
        };
        let bias = Tensor::from_slice(key_bias, (s.batch, 1, 1, s.tokens), q.device())?;
        let scores = (split(q)?.matmul(&split(k)?.t()?)? / (s.head_size as f64).sqrt())?
            .broadcast_add(&bias)?;
        let mut probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        if let Some(mask) = dropout {
            probs = probs.mul(&Tensor::from_slice(mask, probs.dims(), q.device())?)?;
        }
        probs
            .matmul(&split(v)?)?
            .transpose(1, 2)?
            .reshape((s.batch * s.tokens, s.hidden()))
    }

    #[test]
    fn fused_attention_matches_composite_values_and_gradients() {
        let s = AttentionShape {
            batch: 3,
            tokens: 5,
            heads: 2,
            head_size: 4,
        };
        let n = s.batch * s.tokens * s.hidden();
        let [q, k, v] = [0, 5, 11].map(|seed| {
            Var::from_vec(
                ramp(n, seed, 0.05),
                (s.batch * s.tokens, s.hidden()),
                &Device::Cpu,
            )
            .expect("var")
        });
        // The second sequence has two padding tokens, the third one.
        let mut key_bias = vec![0f32; s.batch * s.tokens];
        for i in [8, 9, 14] {
            key_bias[i] = f32::MIN;
        }
        let mask: Vec<f32> = (0..s.batch * s.heads * s.tokens * s.tokens)
            .map(|i| if i % 7 == 3 { 0.0 } else { 1.25 })
            .collect();
        let upstream = Tensor::from_vec(
            ramp(n, 3, 0.1),
            (s.batch * s.tokens, s.hidden()),
            &Device::Cpu,
        )
        .expect("upstream");
        for dropout in [None, Some(mask.as_slice())] {
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let qkv = Tensor::cat(&[qt, kt, vt], 1).expect("packed");
            let ours =
                attention(&qkv, s, key_bias.clone(), dropout.map(<[f32]>::to_vec)).expect("fused");
            let theirs = composite(qt, kt, vt, s, &key_bias, dropout).expect("composite");
            assert!(max_diff(&ours, &theirs) < 1e-6, "values");
            let grads = |y: &Tensor| gradients(y, &upstream, [qt, kt, vt]);
            for (a, b) in grads(&ours).iter().zip(grads(&theirs).iter()) {
                assert!(
                    max_diff(a, b) < 1e-5,
                    "gradients differ by {}",
                    max_diff(a, b)
                );
            }
        }
    }
}
