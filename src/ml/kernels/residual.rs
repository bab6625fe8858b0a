//! The residual connection with dropout on the branch, `y = branch ⊙ D + skip`, as one pass.
//!
//! As candle ops it is a multiply and an add forward, and backward two multiplies (candle's
//! multiply backward also computes the unused gradient of the mask) plus the add's two.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, view};

const CHUNK: usize = 32 * 1024;

struct Residual {
    /// Inverted-dropout keep-mask of the branch, if training.
    mask: Option<Arc<Vec<f32>>>,
}

impl CustomOp2 for Residual {
    fn name(&self) -> &'static str {
        "taper-residual-dropout"
    }

    fn cpu_fwd(
        &self,
        branch: &CpuStorage,
        branch_layout: &Layout,
        skip: &CpuStorage,
        skip_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let branch = f32_slice(branch, branch_layout, "residual")?;
        let skip = f32_slice(skip, skip_layout, "residual")?;
        if branch.len() != skip.len() || self.mask.as_ref().is_some_and(|m| m.len() != skip.len()) {
            candle_core::bail!("taper residual: branch, skip and mask differ in size")
        }
        let mut out = vec![0f32; skip.len()];
        match &self.mask {
            Some(mask) => out
                .par_chunks_mut(CHUNK)
                .zip(branch.par_chunks(CHUNK))
                .zip(skip.par_chunks(CHUNK).zip(mask.par_chunks(CHUNK)))
                .for_each(|((out, branch), (skip, mask))| {
                    for (((o, b), s), m) in out.iter_mut().zip(branch).zip(skip).zip(mask) {
                        *o = b * m + s;
                    }
                }),
            None => out
                .par_chunks_mut(CHUNK)
                .zip(branch.par_chunks(CHUNK).zip(skip.par_chunks(CHUNK)))
                .for_each(|(out, (branch, skip))| {
                    for ((o, b), s) in out.iter_mut().zip(branch).zip(skip) {
                        *o = b + s;
                    }
                }),
        }
        Ok((CpuStorage::F32(out), branch_layout.shape().clone()))
    }

    fn bwd(
        &self,
        branch: &Tensor,
        skip: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d_branch = match (&self.mask, branch.track_op()) {
            (_, false) => None,
            (None, true) => Some(grad.clone()),
            (Some(mask), true) => {
                let grad = grad.contiguous()?;
                let grad_view = view(&grad);
                let g = grad_view.slice("residual backward")?;
                if g.len() != mask.len() {
                    candle_core::bail!("taper residual backward: gradient and mask differ in size")
                }
                let mut out = vec![0f32; g.len()];
                out.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK).zip(mask.par_chunks(CHUNK)))
                    .for_each(|(out, (g, m))| {
                        for ((o, g), m) in out.iter_mut().zip(g).zip(m) {
                            *o = g * m;
                        }
                    });
                Some(Tensor::from_vec(out, branch.shape(), branch.device())?)
            }
        };
        let d_skip = skip.track_op().then(|| grad.clone());
        Ok((d_branch, d_skip))
    }
}

/// `branch ⊙ dropout + skip` (CPU f32; see [`super::fused`]); `dropout` is the branch's
/// inverted-dropout keep-mask, `None` when not dropping.
pub(crate) fn residual_add(
    branch: &Tensor,
    skip: &Tensor,
    dropout: Option<Vec<f32>>,
) -> candle_core::Result<Tensor> {
    branch.contiguous()?.apply_op2(
        &skip.contiguous()?,
        Residual {
            mask: dropout.map(Arc::new),
        },
    )
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{gradients, ramp};
    use super::*;

    #[test]
    fn fused_residual_matches_composite_values_and_gradients() {
        let branch = Var::from_vec(ramp(40, 0, 0.1), (5, 8), &Device::Cpu).expect("branch");
        let skip = Var::from_vec(ramp(40, 1, 0.3), (5, 8), &Device::Cpu).expect("skip");
        let upstream = Tensor::from_vec(ramp(40, 2, 0.7), (5, 8), &Device::Cpu).expect("up");
        let mask: Vec<f32> = (0..40)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
            .collect();
        for dropout in [None, Some(mask.clone())] {
            let (b, s) = (branch.as_tensor(), skip.as_tensor());
            let ours = residual_add(b, s, dropout.clone()).expect("fused");
            let theirs = match &dropout {
                Some(m) => {
                    Tensor::from_slice(m, (5, 8), &Device::Cpu).and_then(|m| b.mul(&m)?.add(s))
                }
                None => b.add(s),
            }
            .expect("composite");
            let grads = |y: &Tensor| {
                gradients(y, &upstream, [b, s]).map(|g| {
                    g.flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .expect("values")
                })
            };
            assert_eq!(
                ours.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("ours"),
                theirs
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("theirs")
            );
            assert_eq!(grads(&ours), grads(&theirs));
        }
    }
}
