//! Fused CPU kernels with backward passes: the training hot path.
//!
//! Why they exist: a MiniLM-shaped training step (batch 16, length 64) spends about 350 ms in
//! the GEMMs of its linear layers, yet took 1.15 s through candle's composite ops. The rest was
//! single-threaded elementwise passes, each with a fresh allocation: LayerNorm and softmax as
//! 5–20 ops (and candle's fused versions have no backward, docs/design.md §1.1), exact GELU
//! through scalar `erff`, bias broadcasts and their reductions, head split/merge copies, gradients
//! of frozen weights computed and thrown away, a dense word-embedding gradient built three times,
//! and an AdamW of a dozen passes per parameter.
//!
//! Contract of every kernel here:
//! - CPU and f32 only; [`fused`] says whether a tensor qualifies. The callers in `encoder.rs` and
//!   `optim.rs` keep candle's composite ops for every other device (CUDA), which is also what
//!   the tests compare the kernels against, values and gradients.
//! - Inputs are made contiguous by the wrappers; outputs are fresh contiguous tensors.
//! - Results do not depend on the thread count: work is split by rows or batch elements and
//!   every reduction is summed in a fixed order, so training is bitwise reproducible.
//! - Gradients are returned only for inputs that track them (`Tensor::track_op`), so a frozen
//!   weight costs no GEMM in the backward pass (LoRA, frozen layers).

mod adam;
mod attention;
mod embedding;
mod gelu;
mod gemm;
mod int8;
mod linear;
mod lora;
mod math;
mod norm;
mod residual;
mod simd;

pub(crate) use adam::{adamw_update, sum_of_squares, AdamStep};
pub(crate) use attention::{attention, AttentionShape};
pub(crate) use embedding::scatter_rows;
pub(crate) use gelu::gelu_erf;
pub(crate) use int8::{int8_linear, Int8Linear};
pub(crate) use linear::{dense_gelu, linear};
pub(crate) use lora::{lora_linear, LoraBlock};
pub(crate) use norm::{layer_norm, softmax_last_dim};
pub(crate) use residual::residual_add;

use candle_core::{CpuStorage, Layout, Storage, Tensor};

/// Whether `xs` can go through the fused CPU kernels.
pub(crate) fn fused(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32
}

/// The f32 elements of a contiguous CPU storage, as a custom op's `cpu_fwd` receives it.
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

/// Read access to a contiguous CPU f32 tensor's elements outside a custom op (backward passes
/// that need more inputs than candle's three-argument ops can carry).
struct View<'a> {
    guard: candle_core::StorageRef<'a>,
    layout: &'a Layout,
}

impl View<'_> {
    fn slice(&self, what: &str) -> candle_core::Result<&[f32]> {
        match &*self.guard {
            Storage::Cpu(storage) => f32_slice(storage, self.layout, what),
            _ => candle_core::bail!("taper {what} expects a CPU tensor"),
        }
    }
}

/// `t` must be contiguous (callers pass the result of `.contiguous()`).
fn view(t: &Tensor) -> View<'_> {
    let (guard, layout) = t.storage_and_layout();
    View { guard, layout }
}

/// A backward pass's result for input `like`: `data` as a tensor of its shape, or `None` when
/// `like` tracks no gradient (candle would only add it to a zero tensor and drop it).
fn gradient(data: Vec<f32>, like: &Tensor) -> candle_core::Result<Option<Tensor>> {
    Ok(if like.track_op() {
        Some(Tensor::from_vec(data, like.shape(), like.device())?)
    } else {
        None
    })
}

/// Rows per parallel task for a pass over `rows` rows of `width` elements: about 32 K elements
/// per task, so a task outweighs rayon's scheduling cost, yet a [1024, 384] activation still
/// splits into a dozen tasks for two threads to share.
fn rows_per_task(width: usize) -> usize {
    (32 * 1024 / width.max(1)).max(1)
}

/// Helpers of the kernels' tests, which compare each kernel with candle's composite ops.
#[cfg(test)]
mod test_util {
    use candle_core::Tensor;

    /// `n` deterministic values in `[-14, 14] · scale`, a different sequence per `seed`.
    pub(super) fn ramp(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 37 % 29) as f32 - 14.0) * scale)
            .collect()
    }

    /// Largest absolute difference between two tensors of one shape.
    pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("difference")
    }

    /// The gradients of `Σ y ⊙ upstream` with respect to each of `wrt`.
    pub(super) fn gradients<const N: usize>(
        y: &Tensor,
        upstream: &Tensor,
        wrt: [&Tensor; N],
    ) -> [Tensor; N] {
        let grads = (y * upstream)
            .and_then(|t| t.sum_all())
            .and_then(|loss| loss.backward())
            .expect("backward");
        wrt.map(|x| grads.get(x).expect("every input has a gradient").clone())
    }
}
