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

pub fn train_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
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
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Inference batches under a token budget, for serving and offline scoring: indices sorted by
/// length and packed greedily while `examples × longest` (the padded size the model computes
/// on) stays within `max_tokens`. A sequence longer than the budget gets a batch of its own.
/// Sorting first keeps padding low, as [`eval_batches`] does for a fixed batch size.
pub fn token_batches(lengths: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&index| lengths[index]);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for index in order {
        // Sorted ascending, so this example is the longest of the batch it joins.
        if !current.is_empty() && (current.len() + 1) * lengths[index] > max_tokens {
            batches.push(std::mem::take(&mut current));
        }
        current.push(index);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Real tokens over all positions once every batch is padded to its longest example: 1.0 means
/// no padding. Logged by `train` to show what bucketing saves.
pub fn fill_rate(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let mut real = 0usize;
    let mut padded = 0usize;
    for batch in batches {
        let longest = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        real += batch.iter().map(|&i| lengths[i]).sum::<usize>();
        padded += longest * batch.len();
    }
    if padded == 0 {
        1.0
    } else {
        real as f64 / padded as f64
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
        let lengths: Vec<usize> = (0..2000)
            .map(|i| 8 + (i * 7919) % 24 + if i % 10 == 0 { 30 } else { 0 })
            .collect();
        let bucketed = fill_rate(&lengths, &train_batches(&lengths, 16, 1, 0));
        let in_order: Vec<Vec<usize>> = (0..2000)
            .collect::<Vec<_>>()
            .chunks(16)
            .map(<[usize]>::to_vec)
            .collect();
        let random = fill_rate(&lengths, &in_order);
        assert!(random < 0.6, "unbucketed fill {random}");
        assert!(bucketed > 0.9, "bucketed fill {bucketed}");
    }

    #[test]
    fn fill_rate_and_eval_order_hand_built() {
        let split = SplitData::from_examples(&[(vec![2, 9, 3], 1), (vec![2, 3], 0)]);
        let lengths = lengths(&split);
        assert_eq!(lengths, [3, 2]);
        // one batch of both: 5 real tokens in 2 × 3 positions.
        assert!((fill_rate(&lengths, &[vec![1, 0]]) - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(fill_rate(&lengths, &[vec![0], vec![1]]), 1.0);
        assert_eq!(eval_batches(&lengths, 1), vec![vec![1], vec![0]]);
    }

    #[test]
    fn token_batches_respect_the_budget_and_cover_every_index() {
        let lengths = [5, 30, 7, 7, 100, 6, 12];
        let batches = token_batches(&lengths, 28);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &batches {
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            // Over budget only alone: the 30- and 100-token sequences.
            assert!(batch.len() * longest <= 28 || batch.len() == 1, "{batch:?}");
        }
        assert_eq!(batches[0], vec![0, 5, 2, 3]);
    }
}
