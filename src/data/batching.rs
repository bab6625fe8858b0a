//! Length-bucketed, dynamically padded batches.
//!
//! Why: the Rotten Tomatoes snippets average about 25 tokens; padding every batch to
//! `max_length` 64 spends more than half of each matmul on padding. Sorting by length inside
//! shuffled chunks keeps batches of similar lengths (little padding) while the chunk shuffle and
//! the batch-order shuffle keep the gradient noise of random batches.
//!
//! Contract: [`train_batches`] is a pure function of (lengths, batch size, seed, epoch): a
//! resumed run replays the same batches in the same order, so a checkpoint's "batches done"
//! counter identifies exactly where to continue. Every index appears in exactly one batch.
//! [`eval_batches`] sorts by length only (no randomness); callers scatter results back by index.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::dataset::SplitData;

/// Batches per sorting chunk: large enough that lengths group well, small enough that a chunk
/// is still a random sample of the data.
pub const CHUNK_BATCHES: usize = 50;

pub fn train_batches(lengths: &[usize], batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    // Mixing the epoch into the seed gives each epoch its own order, reproducibly.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for chunk in order.chunks_mut(batch_size * CHUNK_BATCHES) {
        chunk.sort_by_key(|&index| lengths[index]);
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

pub fn eval_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&index| lengths[index]);
    order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// One padded batch, row-major `rows × columns`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    pub ids: Vec<u32>,
    /// 1 for a real token, 0 for padding.
    pub mask: Vec<u32>,
    pub labels: Vec<u32>,
    pub rows: usize,
    pub columns: usize,
}

impl PaddedBatch {
    pub fn new(split: &SplitData, indices: &[usize], pad_id: u32) -> Self {
        let columns = indices
            .iter()
            .map(|&i| split.offsets[i + 1] - split.offsets[i])
            .max()
            .unwrap_or(0);
        let mut ids = vec![pad_id; indices.len() * columns];
        let mut mask = vec![0; indices.len() * columns];
        for (row, &index) in indices.iter().enumerate() {
            let example = split.example(index);
            ids[row * columns..row * columns + example.len()].copy_from_slice(example);
            mask[row * columns..row * columns + example.len()].fill(1);
        }
        PaddedBatch {
            ids,
            mask,
            labels: indices.iter().map(|&i| split.labels[i]).collect(),
            rows: indices.len(),
            columns,
        }
    }

    /// Real tokens over all positions.
    pub fn fill_rate(&self) -> f64 {
        if self.mask.is_empty() {
            return 1.0;
        }
        self.mask.iter().map(|&m| f64::from(m)).sum::<f64>() / self.mask.len() as f64
    }
}

pub fn lengths(split: &SplitData) -> Vec<usize> {
    split.offsets.windows(2).map(|w| w[1] - w[0]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_index_once_and_replay_exactly() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 64 + 3).collect();
        let batches = train_batches(&lengths, 16, 42, 0);
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(batches, train_batches(&lengths, 16, 42, 0));
        assert_ne!(batches, train_batches(&lengths, 16, 42, 1));
    }

    #[test]
    fn bucketing_cuts_padding_on_skewed_lengths() {
        // Lengths like the snippets: mostly short, a long tail.
        let lengths: Vec<usize> = (0..2000).map(|i| 8 + (i * 7919) % 24 + if i % 10 == 0 { 30 } else { 0 }).collect();
        let tokens: usize = lengths.iter().sum();
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
                .sum()
        };
        let bucketed = padded(&train_batches(&lengths, 16, 1, 0));
        let random: Vec<Vec<usize>> = (0..2000).collect::<Vec<_>>().chunks(16).map(<[usize]>::to_vec).collect();
        assert!(bucketed < padded(&random), "{bucketed} vs {}", padded(&random));
        assert!((tokens as f64 / bucketed as f64) > 0.9, "fill {}", tokens as f64 / bucketed as f64);
    }

    #[test]
    fn padded_batch_hand_built() {
        let split = SplitData::from_examples(&[(vec![2, 9, 3], 1), (vec![2, 3], 0)]);
        let batch = PaddedBatch::new(&split, &[1, 0], 0);
        assert_eq!(batch.ids, [2, 3, 0, 2, 9, 3]);
        assert_eq!(batch.mask, [1, 1, 0, 1, 1, 1]);
        assert_eq!(batch.labels, [0, 1]);
        assert_eq!((batch.rows, batch.columns), (2, 3));
        assert!((batch.fill_rate() - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(eval_batches(&lengths(&split), 1), vec![vec![1], vec![0]]);
    }
}
