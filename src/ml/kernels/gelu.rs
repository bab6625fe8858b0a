//! Exact (erf) GELU, forward and backward, in parallel passes over the elements.
//!
//! candle's `gelu_erf` is one scalar pass forward and, backward, six tensor ops around two
//! more scalar `erf`/`exp` passes, all on one thread.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::simd::wide_fn;
use super::{f32_slice, math};

/// Elements per parallel task: large enough to outweigh scheduling, small enough that a
/// [1024, 1536] activation splits into dozens of tasks.
const CHUNK: usize = 16 * 1024;

struct Gelu;

// The loops run 8 lanes wide where AVX2 is available (`simd.rs`).
#[inline(always)]
fn forward_chunk(out: &mut [f32], input: &[f32]) {
    for (o, x) in out.iter_mut().zip(input) {
        *o = math::gelu(*x);
    }
}

#[inline(always)]
fn backward_chunk(out: &mut [f32], x: &[f32], grad: &[f32]) {
    for ((o, x), g) in out.iter_mut().zip(x).zip(grad) {
        *o = g * math::gelu_derivative(*x);
    }
}

#[inline(always)]
fn in_place_chunk(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = math::gelu(*v);
    }
}

wide_fn!(fn forward_wide(out: &mut [f32], input: &[f32]) => forward_chunk);
wide_fn!(fn in_place_wide(values: &mut [f32]) => in_place_chunk);
wide_fn!(fn backward_wide(out: &mut [f32], x: &[f32], grad: &[f32]) => backward_chunk);

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "taper-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = f32_slice(storage, layout, "gelu")?;
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(CHUNK)
            .zip(input.par_chunks(CHUNK))
            .for_each(|(out, input)| forward_wide(out, input));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &GeluBackward,
        )?))
    }
}

/// `dx = dy · gelu'(x)` on `(x, dy)`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "taper-gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(x, x_layout, "gelu backward")?;
        let grad = f32_slice(grad, grad_layout, "gelu backward")?;
        if x.len() != grad.len() {
            candle_core::bail!("taper gelu backward: gradient shape differs from input")
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
            .for_each(|(out, (x, grad))| backward_wide(out, x, grad));
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// Exact GELU of every element, in place (the inference epilogue of [`super::dense_gelu`]).
pub(super) fn gelu_in_place(values: &mut [f32]) {
    values.par_chunks_mut(CHUNK).for_each(in_place_wide);
}

/// Exact GELU of `xs` (CPU f32; see [`super::fused`]).
pub(crate) fn gelu_erf(xs: &Tensor) -> candle_core::Result<Tensor> {
    xs.contiguous()?.apply_op1(Gelu)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{gradients, max_diff, ramp};
    use super::*;

    #[test]
    fn fused_gelu_matches_candle_values_and_gradients() {
        let values: Vec<f32> = (0..3000).map(|i| (i as f32 - 1500.0) * 0.004).collect();
        let weights: Vec<f32> = (0..3000).map(|i| ((i * 13 % 7) as f32) - 3.0).collect();
        let x = Var::from_vec(values, (30, 100), &Device::Cpu).expect("x");
        let w = Tensor::from_vec(weights, (30, 100), &Device::Cpu).expect("w");
        let ours = gelu_erf(x.as_tensor()).expect("fused");
        let theirs = x.as_tensor().gelu_erf().expect("candle");
        assert!(max_diff(&ours, &theirs) < 2e-6);
        let grad = |y: &Tensor| {
            let [g] = gradients(y, &w, [x.as_tensor()]);
            g
        };
        assert!(max_diff(&grad(&ours), &grad(&theirs)) < 2e-5);
    }

    #[test]
    fn dense_gelu_equals_linear_then_gelu() {
        let cpu = &Device::Cpu;
        let x = Tensor::from_vec(ramp(6 * 5, 0, 0.1), (2, 3, 5), cpu).expect("x");
        let w = Tensor::from_vec(ramp(4 * 5, 1, 0.2), (4, 5), cpu).expect("w");
        let b = Tensor::from_vec(ramp(4, 2, 0.3), 4, cpu).expect("b");
        let fused = super::super::dense_gelu(&x, &w, &b).expect("fused");
        let separate = super::super::linear(&x, &w, &b)
            .and_then(|h| gelu_erf(&h))
            .expect("separate");
        assert_eq!(fused.dims(), &[2, 3, 4]);
        assert_eq!(max_diff(&fused, &separate), 0.0);
    }
}
