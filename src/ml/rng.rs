//! Seeded random numbers. candle's CPU RNG cannot be seeded (docs/design.md §1.2), so every
//! random tensor (initialisation, LoRA's `A`, dropout masks) is drawn here from a ChaCha8
//! stream and copied into a tensor; the stream position is part of a checkpoint.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::Result;

/// Stream ids of one seed: initialisation and dropout never share numbers, so changing the
/// dropout rate does not change the initial weights.
pub(crate) const INIT_STREAM: u64 = 0;
pub(crate) const DROPOUT_STREAM: u64 = 1;

pub(crate) fn seeded(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// The resumable position of a ChaCha8 stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RngState {
    seed: [u8; 32],
    stream: u64,
    /// A u128 as a decimal string: JSON numbers lose precision above 2^53.
    word_pos: String,
}

impl RngState {
    pub(crate) fn capture(rng: &ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub(crate) fn restore(&self) -> Option<ChaCha8Rng> {
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().ok()?);
        Some(rng)
    }
}

/// Standard normal samples by Box–Muller (rand_distr is not a dependency).
pub(crate) fn normal(rng: &mut ChaCha8Rng, count: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt() * std;
        let angle = std::f64::consts::TAU * u2;
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(count);
    out
}

pub(crate) fn uniform(rng: &mut ChaCha8Rng, count: usize, bound: f64) -> Vec<f32> {
    (0..count)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

/// An inverted-dropout mask for `dims`: each element is `0` with probability `p`, else
/// `1 / (1 - p)`, as `torch.nn.Dropout` in training mode.
pub(crate) fn dropout_mask(
    rng: &mut ChaCha8Rng,
    dims: &[usize],
    p: f64,
    device: &Device,
) -> Result<Tensor> {
    let count: usize = dims.iter().product();
    Ok(Tensor::from_vec(
        dropout_values(rng, count, p),
        dims,
        device,
    )?)
}

/// The elements of [`dropout_mask`], drawing the same numbers from `rng`.
pub(crate) fn dropout_values(rng: &mut ChaCha8Rng, count: usize, p: f64) -> Vec<f32> {
    let keep_scale = (1.0 / (1.0 - p)) as f32;
    // Compare raw 32-bit words with a threshold: one RNG word per element, no float maths.
    let threshold = (p * f64::from(u32::MAX)) as u32;
    // One bulk fill instead of a call per element: ChaCha's block function then runs on
    // whole buffers (a training step draws ~10 M words, ~25 ms one by one). `fill` takes the
    // same words in the same order as repeated `next_u32` (tested below), so streams and
    // checkpoints are unchanged.
    let mut words = vec![0u32; count];
    rng.fill(words.as_mut_slice());
    words
        .into_iter()
        .map(|word| if word >= threshold { keep_scale } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    use super::*;

    #[test]
    fn rng_state_round_trips_mid_stream() {
        let mut rng = seeded(7, DROPOUT_STREAM);
        let _ = normal(&mut rng, 13, 1.0);
        let state = RngState::capture(&rng);
        let json = serde_json::to_string(&state).expect("serializes");
        let back: RngState = serde_json::from_str(&json).expect("parses");
        let mut restored = back.restore().expect("valid word position");
        assert_eq!(rng.next_u64(), restored.next_u64());
    }

    #[test]
    fn dropout_mask_has_expected_rate_and_scale() {
        let mut rng = seeded(1, DROPOUT_STREAM);
        let mask = dropout_mask(&mut rng, &[100, 100], 0.25, &Device::Cpu)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
            .expect("mask");
        let zeros = mask.iter().filter(|v| **v == 0.0).count();
        assert!((2300..2700).contains(&zeros), "{zeros} zeros of 10000");
        assert!(mask
            .iter()
            .all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn bulk_dropout_draws_the_same_words_as_one_by_one() {
        let mut bulk = seeded(5, DROPOUT_STREAM);
        let mut single = bulk.clone();
        let _ = bulk.next_u32(); // an odd offset inside ChaCha's block buffer
        let _ = single.next_u32();
        let values = dropout_values(&mut bulk, 1001, 0.3);
        let threshold = (0.3 * f64::from(u32::MAX)) as u32;
        let expected: Vec<f32> = (0..1001)
            .map(|_| {
                if single.next_u32() >= threshold {
                    (1.0 / 0.7) as f32
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(values, expected);
        assert_eq!(bulk.get_word_pos(), single.get_word_pos());
        assert_eq!(bulk.next_u32(), single.next_u32());
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut rng = seeded(3, INIT_STREAM);
        let xs = normal(&mut rng, 20_000, 2.0);
        let mean = xs.iter().map(|x| f64::from(*x)).sum::<f64>() / xs.len() as f64;
        let var = xs
            .iter()
            .map(|x| (f64::from(*x) - mean).powi(2))
            .sum::<f64>()
            / xs.len() as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "{var}");
    }
}
