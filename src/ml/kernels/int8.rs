//! Int8 linear layers for inference (`deploy` with `precision: int8`).
//!
//! Scheme (the one PyTorch's `quantize_dynamic` uses for `nn.Linear`, with a finer activation
//! scale): each weight row (output channel) is quantized symmetrically to `[-127, 127]` with
//! its own scale, once, when the model is loaded; each activation row (one token) is quantized
//! symmetrically at call time with its own scale, then offset by 128 into `u8`, because the
//! integer dot-product instruction (`vpdpbusd`, AVX-512 VNNI) multiplies unsigned by signed
//! bytes. The offset is removed exactly with the weight rows' sums:
//! `Σ (a + 128) · w = Σ a · w + 128 · Σ w`. Accumulation is in `i32`, exact, so the VNNI
//! kernel and the portable one give bitwise the same output, and the result does not depend on
//! the thread count. Per-token activation scales matter for BERT: a few hidden dimensions carry
//! outliers tens of times larger than the rest, and one scale per tensor (PyTorch's) lets them
//! flatten every other token's values.
//!
//! Why not candle's quantized matmul: at MiniLM's shapes it was 1.4–8× slower than the f32
//! GEMM (`cargo bench --bench quant_shapes`, docs/benchmarks.md): its x86 VNNI path needs the
//! inner dimension to be a multiple of 256 (MiniLM's is 384), and the generic path quantizes to
//! 32-value blocks with a scale each, dot products one column at a time.
//!
//! Layout of the packed weights: tiles of 16 output channels; inside a tile, for each group of
//! 4 inputs, the 16 channels' 4 bytes side by side (64 bytes, one AVX-512 register), so one
//! `vpdpbusd` adds 4 products to each of 16 outputs.

use candle_core::Tensor;
use rayon::prelude::*;

use super::gelu::gelu_in_place;
use super::linear::with_last;
use super::view;

/// `layer` applied to `xs` (`[.., in_dim]`, CPU f32), then GELU when `gelu`: inference only
/// (no backward).
pub(crate) fn int8_linear(
    xs: &Tensor,
    layer: &Int8Linear,
    gelu: bool,
) -> candle_core::Result<Tensor> {
    let xs = xs.contiguous()?;
    let dims = xs.dims();
    if dims.last().copied() != Some(layer.in_dim) {
        candle_core::bail!(
            "taper int8 linear: input {dims:?} does not end in {}",
            layer.in_dim
        )
    }
    let out = {
        let input = view(&xs);
        layer.forward(input.slice("int8 linear")?, gelu)
    };
    Tensor::from_vec(out, with_last(dims, layer.out_dim), xs.device())
}

/// Output channels per tile: one AVX-512 register of `i32` accumulators.
const TILE: usize = 16;
/// Inputs per `vpdpbusd` lane.
const GROUP: usize = 4;
/// Rows computed together: each weight register loaded is used this many times.
const ROW_BLOCK: usize = 4;

/// A linear layer `x Wᵀ + b` with `W` quantized to int8 per output channel.
#[derive(Debug, Clone)]
pub(crate) struct Int8Linear {
    in_dim: usize,
    out_dim: usize,
    /// `in_dim` rounded up to a multiple of [`GROUP`]; the padding inputs are zero.
    k_pad: usize,
    /// `[tile][k_pad / GROUP][TILE][GROUP]`; padding channels are zero.
    packed: Vec<i8>,
    /// Per output channel: the weight scale (`max |w| / 127`).
    scales: Vec<f32>,
    /// Per output channel: `128 · Σ_k q[n][k]`, the offset's contribution to remove.
    offsets: Vec<i32>,
    bias: Vec<f32>,
}

impl Int8Linear {
    /// Quantizes `weight` (`[out_dim, in_dim]`, row-major) and keeps `bias` in f32.
    pub(crate) fn quantize(weight: &[f32], bias: &[f32], out_dim: usize, in_dim: usize) -> Self {
        let k_pad = in_dim.div_ceil(GROUP) * GROUP;
        let tiles = out_dim.div_ceil(TILE);
        let mut packed = vec![0i8; tiles * k_pad * TILE];
        let mut scales = Vec::with_capacity(out_dim);
        let mut offsets = Vec::with_capacity(out_dim);
        for (n, row) in weight.chunks_exact(in_dim).take(out_dim).enumerate() {
            let amax = max_abs(row);
            let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            let (tile, lane) = (n / TILE, n % TILE);
            let mut sum = 0i32;
            for (k, w) in row.iter().enumerate() {
                let q = (w / scale).round().clamp(-127.0, 127.0) as i8;
                sum += i32::from(q);
                let (group, byte) = (k / GROUP, k % GROUP);
                packed[((tile * (k_pad / GROUP) + group) * TILE + lane) * GROUP + byte] = q;
            }
            scales.push(scale);
            offsets.push(128 * sum);
        }
        Self {
            in_dim,
            out_dim,
            k_pad,
            packed,
            scales,
            offsets,
            bias: bias.to_vec(),
        }
    }

    /// `x Wᵀ + b` (then GELU in place when `gelu`) for `x` `[rows, in_dim]`, row-major.
    pub(crate) fn forward(&self, x: &[f32], gelu: bool) -> Vec<f32> {
        let rows = x.len() / self.in_dim.max(1);
        let (acts, act_scales) = self.quantize_rows(x, rows);
        let mut out = vec![0f32; rows * self.out_dim];
        // Blocks of rows per task: about 2 M multiply-adds each, so a one-sentence call (22
        // rows) stays on one thread, where rayon's hand-off would cost more than it saves.
        let macs_per_row = (self.k_pad * self.out_dim).max(1);
        let rows_per_task = ((2 << 20) / macs_per_row).max(1).div_ceil(ROW_BLOCK) * ROW_BLOCK;
        let task = |(index, chunk): (usize, &mut [f32])| {
            let first = index * rows_per_task;
            let count = chunk.len() / self.out_dim;
            self.rows_into(
                &acts[first * self.groups()..(first + count) * self.groups()],
                &act_scales[first..first + count],
                chunk,
            );
            if gelu {
                gelu_in_place(chunk);
            }
        };
        if rows > rows_per_task {
            out.par_chunks_mut(rows_per_task * self.out_dim)
                .enumerate()
                .for_each(task);
        } else {
            task((0, &mut out));
        }
        out
    }

    /// Each row of `x` as `u8` (value / scale + 128, padded with 128 = zero), four to a
    /// little-endian word (the unit `vpdpbusd` broadcasts), and its scale.
    fn quantize_rows(&self, x: &[f32], rows: usize) -> (Vec<u32>, Vec<f32>) {
        let groups = self.groups();
        let mut acts = vec![0x8080_8080u32; rows * groups];
        let mut act_scales = Vec::with_capacity(rows);
        let mut bytes = vec![128u8; self.k_pad];
        for (row, words) in x
            .chunks_exact(self.in_dim)
            .zip(acts.chunks_exact_mut(groups))
        {
            let amax = max_abs(row);
            let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            let inverse = 1.0 / scale;
            for (q, v) in bytes.iter_mut().zip(row) {
                // `v · inverse` lies in [-127, 127]; adding 128.5 and truncating rounds half
                // up without a call to `roundf` (x86-64's baseline has no rounding
                // instruction, and the call was 3% of a served request).
                *q = (v * inverse + 128.5) as u8;
            }
            for (word, four) in words.iter_mut().zip(bytes.chunks_exact(GROUP)) {
                *word = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
            }
            act_scales.push(scale);
        }
        (acts, act_scales)
    }

    /// Output rows for quantized activation rows `acts` (`[rows, groups]` words) into `out`.
    fn rows_into(&self, acts: &[u32], act_scales: &[f32], out: &mut [f32]) {
        let mut sums = vec![0i32; act_scales.len() * self.tiles() * TILE];
        dot_products(self, acts, &mut sums);
        let width = self.tiles() * TILE;
        for ((out_row, sum_row), act_scale) in out
            .chunks_exact_mut(self.out_dim)
            .zip(sums.chunks_exact(width))
            .zip(act_scales)
        {
            // Zipped, not indexed: without bounds checks the loop vectorizes.
            let per_channel = self.offsets.iter().zip(&self.scales).zip(&self.bias);
            for ((value, sum), ((offset, scale), bias)) in
                out_row.iter_mut().zip(sum_row).zip(per_channel)
            {
                *value = (sum - offset) as f32 * (act_scale * scale) + bias;
            }
        }
    }

    fn tiles(&self) -> usize {
        self.out_dim.div_ceil(TILE)
    }

    fn groups(&self) -> usize {
        self.k_pad / GROUP
    }
}

/// The largest `|v|` of `values`. Compared as bit patterns: with the sign bit cleared, a
/// non-negative float's bits order as its value, and an integer maximum vectorizes where
/// `f32::max` (which must honour NaN) does not.
fn max_abs(values: &[f32]) -> f32 {
    f32::from_bits(
        values
            .iter()
            .map(|v| v.to_bits() & 0x7fff_ffff)
            .max()
            .unwrap_or(0),
    )
}

/// `sums[r][n] = Σ_k acts[r][k] · q[n][k]` (offset not yet removed), over all padded channels.
fn dot_products(layer: &Int8Linear, acts: &[u32], sums: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if vnni::available() {
        vnni::dot_products(layer, acts, sums);
        return;
    }
    portable_dot_products(layer, acts, sums);
}

/// The same sums in plain Rust: any CPU, and the reference the VNNI kernel is tested against.
fn portable_dot_products(layer: &Int8Linear, acts: &[u32], sums: &mut [i32]) {
    let (groups, width) = (layer.groups(), layer.tiles() * TILE);
    for (act, sum_row) in acts.chunks_exact(groups).zip(sums.chunks_exact_mut(width)) {
        for (tile, tile_sums) in sum_row.chunks_exact_mut(TILE).enumerate() {
            let weights = &layer.packed[tile * groups * TILE * GROUP..][..groups * TILE * GROUP];
            for (block, word) in weights.chunks_exact(TILE * GROUP).zip(act) {
                let a = word.to_le_bytes();
                for (sum, w) in tile_sums.iter_mut().zip(block.chunks_exact(GROUP)) {
                    *sum += a
                        .iter()
                        .zip(w)
                        .map(|(a, w)| i32::from(*a) * i32::from(*w))
                        .sum::<i32>();
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    #![allow(unsafe_code)]

    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512,
        _mm512_storeu_si512,
    };

    use super::{Int8Linear, GROUP, ROW_BLOCK, TILE};

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    pub(super) fn dot_products(layer: &Int8Linear, acts: &[u32], sums: &mut [i32]) {
        // SAFETY: called only when `available()` said the CPU has these instructions.
        unsafe { dot_products_avx512(layer, acts, sums) }
    }

    /// Rows of `ROW_BLOCK` against pairs of tiles: 8 accumulators, so each weight register
    /// loaded serves 4 rows and each broadcast activation word 2 tiles, and the 8 independent
    /// `vpdpbusd` chains hide the instruction's latency.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn dot_products_avx512(layer: &Int8Linear, acts: &[u32], sums: &mut [i32]) {
        let (groups, tiles) = (layer.groups(), layer.tiles());
        let width = tiles * TILE;
        let rows = acts.len() / groups.max(1);
        let tile_bytes = groups * TILE * GROUP;
        assert!(layer.packed.len() == tiles * tile_bytes && sums.len() >= rows * width);
        let mut row = 0;
        while row < rows {
            let block = (rows - row).min(ROW_BLOCK);
            // A short last block repeats its last row; the extra results are not stored.
            let act_rows: [&[u32]; ROW_BLOCK] = std::array::from_fn(|r| {
                let r = row + r.min(block - 1);
                &acts[r * groups..(r + 1) * groups]
            });
            let mut tile = 0;
            while tile < tiles {
                let pair = (tiles - tile).min(2);
                let first = &layer.packed[tile * tile_bytes..(tile + 1) * tile_bytes];
                let second =
                    &layer.packed[(tile + pair - 1) * tile_bytes..(tile + pair) * tile_bytes];
                let mut acc = [[_mm512_setzero_si512(); 2]; ROW_BLOCK];
                for group in 0..groups {
                    let at = group * TILE * GROUP;
                    // SAFETY: `first` and `second` hold `groups` blocks of 64 bytes each, so
                    // the 64-byte unaligned loads at `at` are in bounds.
                    let w = unsafe {
                        [
                            _mm512_loadu_si512(first.as_ptr().add(at).cast()),
                            _mm512_loadu_si512(second.as_ptr().add(at).cast()),
                        ]
                    };
                    for (acc, act) in acc.iter_mut().zip(&act_rows) {
                        let a = _mm512_set1_epi32(act[group] as i32);
                        acc[0] = _mm512_dpbusd_epi32(acc[0], a, w[0]);
                        acc[1] = _mm512_dpbusd_epi32(acc[1], a, w[1]);
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(block) {
                    for (t, acc) in acc.iter().enumerate().take(pair) {
                        let at = (row + r) * width + (tile + t) * TILE;
                        let out: &mut [i32] = &mut sums[at..at + TILE];
                        // SAFETY: `out` is 16 `i32`s, exactly one 64-byte store.
                        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast::<__m512i>(), *acc) };
                    }
                }
                tile += pair;
            }
            row += block;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((((i + seed) * 37) % 29) as f32 - 14.0) * scale)
            .collect()
    }

    fn reference(x: &[f32], w: &[f32], b: &[f32], out_dim: usize, in_dim: usize) -> Vec<f32> {
        x.chunks_exact(in_dim)
            .flat_map(|row| {
                (0..out_dim).map(move |n| {
                    row.iter()
                        .zip(&w[n * in_dim..(n + 1) * in_dim])
                        .map(|(x, w)| x * w)
                        .sum::<f32>()
                        + b[n]
                })
            })
            .collect()
    }

    /// Shapes off every tile and group boundary (out 37, in 21), and MiniLM's 384.
    #[test]
    fn int8_linear_is_close_to_f32_and_exact_across_kernels() {
        for (rows, out_dim, in_dim) in [(1, 37, 21), (7, 37, 21), (22, 384, 384), (9, 50, 1536)] {
            let x = ramp(rows * in_dim, 3, 0.07);
            let w = ramp(out_dim * in_dim, 5, 0.01);
            let b = ramp(out_dim, 1, 0.1);
            let layer = Int8Linear::quantize(&w, &b, out_dim, in_dim);
            let ours = layer.forward(&x, false);
            let exact = reference(&x, &w, &b, out_dim, in_dim);
            // Each operand is off by at most half its step (max / 254), so each product by at
            // most about `2 · max|x| · max|w| / 254`.
            let bound = in_dim as f32 * 2.0 * 0.98 * 0.14 / 254.0;
            let worst = ours
                .iter()
                .zip(&exact)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < bound, "{rows}x{out_dim}x{in_dim}: {worst}");
            // Rounding errors are not all of one sign: the typical error is far below the bound.
            let rms = |v: &mut dyn Iterator<Item = f32>| {
                let (sum, n) = v.fold((0f32, 0f32), |(s, n), e| (s + e * e, n + 1.0));
                (sum / n).sqrt()
            };
            let error = rms(&mut ours.iter().zip(&exact).map(|(a, b)| a - b));
            let size = rms(&mut exact.iter().copied());
            assert!(
                error < 0.02 * size,
                "{rows}x{out_dim}x{in_dim}: rms {error} of {size}"
            );

            let (acts, _) = layer.quantize_rows(&x, rows);
            let width = layer.tiles() * TILE;
            let mut fast = vec![0; rows * width];
            let mut slow = vec![0; rows * width];
            dot_products(&layer, &acts, &mut fast);
            portable_dot_products(&layer, &acts, &mut slow);
            assert_eq!(fast, slow, "the kernels must agree exactly");
        }
    }

    #[test]
    fn threads_do_not_change_the_result_and_gelu_is_applied() {
        let (rows, out_dim, in_dim) = (300, 64, 384);
        let x = ramp(rows * in_dim, 2, 0.05);
        let w = ramp(out_dim * in_dim, 7, 0.02);
        let b = ramp(out_dim, 4, 0.1);
        let layer = Int8Linear::quantize(&w, &b, out_dim, in_dim);
        let pooled = layer.forward(&x, false);
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool")
            .install(|| layer.forward(&x, false));
        assert_eq!(pooled, single);
        let mut expected = pooled.clone();
        gelu_in_place(&mut expected);
        assert_eq!(layer.forward(&x, true), expected);
    }

    #[test]
    fn zero_rows_and_zero_weights_are_exact() {
        let layer = Int8Linear::quantize(&[0.0; 8], &[0.5, -0.5], 2, 4);
        assert_eq!(layer.forward(&[0.0; 4], false), vec![0.5, -0.5]);
        assert_eq!(layer.forward(&[1.0, 2.0, 3.0, 4.0], false), vec![0.5, -0.5]);
        assert!(layer.forward(&[], false).is_empty());
    }
}
