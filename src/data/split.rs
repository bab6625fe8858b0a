//! Seeded, stratified train/validation/test splits.
//!
//! Contract: [`split_indices`] is a pure function of the labels, the sizes, the seed and the
//! `stratify` flag (ChaCha8 is portable, unlike the thread RNG), so the same pipeline gives the
//! same splits everywhere.
//!
//! Algorithm: each class's indices are shuffled with the seeded RNG. Splits are filled in the
//! order train, validation, test; a split of size `s` takes from each class `c` a share
//! proportional to what is *left* of that class (`s · left_c / left`), rounded by largest
//! remainder (ties to the lower class id), so the quotas sum to `s` and never exceed what a class
//! has left. Examples no split asks for are left out (`train: 2000, test: 1000` of 12,752).
//! Within a split the examples are ordered by a seeded shuffle, not by class.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::DataError;
use crate::model::stages::SplitName;

/// Requested sizes: a count (≥ 1, whole) or a fraction of all examples (< 1); `train: None`
/// means "everything the other splits leave".
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SplitSizes {
    pub train: Option<f64>,
    pub validation: Option<f64>,
    pub test: Option<f64>,
}

/// Turns the requested sizes into counts for `total` examples.
pub fn resolve_sizes(
    sizes: &SplitSizes,
    total: usize,
) -> Result<BTreeMap<SplitName, usize>, DataError> {
    let count = |name: SplitName, value: f64| -> Result<usize, DataError> {
        if value.is_nan() || value <= 0.0 || !value.is_finite() {
            return Err(DataError::BadSplitSize {
                split: name.as_str().to_owned(),
                value,
            });
        }
        if value < 1.0 {
            Ok((value * total as f64).round() as usize)
        } else if value.fract() == 0.0 {
            Ok(value as usize)
        } else {
            Err(DataError::BadSplitSize {
                split: name.as_str().to_owned(),
                value,
            })
        }
    };
    let mut counts = BTreeMap::new();
    for (name, value) in [
        (SplitName::Validation, sizes.validation),
        (SplitName::Test, sizes.test),
    ] {
        if let Some(value) = value {
            counts.insert(name, count(name, value)?);
        }
    }
    let others: usize = counts.values().sum();
    let train = match sizes.train {
        Some(value) => count(SplitName::Train, value)?,
        None => total.saturating_sub(others),
    };
    counts.insert(SplitName::Train, train);
    let requested: usize = counts.values().sum();
    if requested > total {
        return Err(DataError::SplitTooLarge {
            requested,
            available: total,
        });
    }
    for (name, size) in &counts {
        if *size == 0 {
            return Err(DataError::EmptySplit {
                split: name.as_str().to_owned(),
                help: format!(
                    "{total} examples remain after cleaning; give `{}` a larger size or remove it",
                    name.as_str()
                ),
            });
        }
    }
    Ok(counts)
}

/// The example indices of each split (see the module doc).
pub fn split_indices(
    labels: &[u32],
    counts: &BTreeMap<SplitName, usize>,
    seed: u64,
    stratify: bool,
) -> BTreeMap<SplitName, Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let classes = if stratify {
        labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0)
    } else {
        1
    };
    let mut pools: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (index, &label) in labels.iter().enumerate() {
        pools[if stratify { label as usize } else { 0 }].push(index);
    }
    for pool in &mut pools {
        pool.shuffle(&mut rng);
    }
    // Taken from the front; `taken[c]` is how many of class c are used.
    let mut taken = vec![0usize; classes];
    let mut result = BTreeMap::new();
    for name in [SplitName::Train, SplitName::Validation, SplitName::Test] {
        let Some(&size) = counts.get(&name) else {
            continue;
        };
        let left: Vec<usize> = pools
            .iter()
            .zip(&taken)
            .map(|(pool, taken)| pool.len() - taken)
            .collect();
        let quotas = largest_remainder(size, &left);
        let mut indices = Vec::with_capacity(size);
        for (class, quota) in quotas.into_iter().enumerate() {
            indices.extend_from_slice(&pools[class][taken[class]..taken[class] + quota]);
            taken[class] += quota;
        }
        indices.shuffle(&mut rng);
        result.insert(name, indices);
    }
    result
}

/// Splits `size` over classes in proportion to `left`, by largest remainder; each quota is at
/// most its `left` when `size ≤ Σ left`.
fn largest_remainder(size: usize, left: &[usize]) -> Vec<usize> {
    let total: usize = left.iter().sum();
    if total == 0 {
        return vec![0; left.len()];
    }
    let size = size.min(total);
    // Exact integer arithmetic: quota = floor(size·left/total), remainder = size·left mod total.
    let mut quotas: Vec<usize> = left.iter().map(|&l| size * l / total).collect();
    let mut order: Vec<(usize, usize)> = left
        .iter()
        .enumerate()
        .map(|(class, &l)| (size * l % total, class))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let missing = size - quotas.iter().sum::<usize>();
    for &(_, class) in order.iter().take(missing) {
        quotas[class] += 1;
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sizes(train: Option<f64>, validation: Option<f64>, test: Option<f64>) -> SplitSizes {
        SplitSizes {
            train,
            validation,
            test,
        }
    }

    #[test]
    fn sizes_accept_counts_fractions_and_rest() {
        let counts = resolve_sizes(&sizes(None, Some(0.1), Some(20.0)), 100).unwrap();
        assert_eq!(
            counts,
            BTreeMap::from([
                (SplitName::Train, 70),
                (SplitName::Validation, 10),
                (SplitName::Test, 20)
            ])
        );
        let counts = resolve_sizes(&sizes(Some(2000.0), None, Some(1000.0)), 12752).unwrap();
        assert_eq!(counts[&SplitName::Train], 2000);
        assert!(!counts.contains_key(&SplitName::Validation));
        assert!(matches!(
            resolve_sizes(&sizes(Some(80.0), None, Some(30.0)), 100),
            Err(DataError::SplitTooLarge {
                requested: 110,
                available: 100
            })
        ));
        assert!(matches!(
            resolve_sizes(&sizes(None, Some(0.001), None), 100),
            Err(DataError::EmptySplit { split, .. }) if split == "validation"
        ));
        assert!(matches!(
            resolve_sizes(&sizes(Some(2.5), None, None), 100),
            Err(DataError::BadSplitSize { .. })
        ));
    }

    #[test]
    fn largest_remainder_hand_computed() {
        // 10 over [6, 3, 1] of 10: exact shares.
        assert_eq!(largest_remainder(10, &[6, 3, 1]), [6, 3, 1]);
        // 5 over [6, 3, 1]: 3.0, 1.5, 0.5 → floors 3,1,0; one left; remainders 0, 5, 5 (/10)
        // → tie between classes 1 and 2, lower id wins.
        assert_eq!(largest_remainder(5, &[6, 3, 1]), [3, 2, 0]);
        // 2 over [1, 1, 1]: shares 2/3 each → floors 0; the first two classes get one.
        assert_eq!(largest_remainder(2, &[1, 1, 1]), [1, 1, 0]);
    }

    #[test]
    fn stratified_split_keeps_class_balance_and_is_seeded() {
        // 60 of class 0, 40 of class 1.
        let labels: Vec<u32> = (0..100).map(|i| u32::from(i % 5 >= 3)).collect();
        let counts = resolve_sizes(&sizes(Some(50.0), Some(10.0), Some(20.0)), 100).unwrap();
        let splits = split_indices(&labels, &counts, 7, true);
        let class_counts = |name| {
            let mut c = [0, 0];
            for &i in &splits[&name] {
                c[labels[i] as usize] += 1;
            }
            c
        };
        assert_eq!(class_counts(SplitName::Train), [30, 20]);
        assert_eq!(class_counts(SplitName::Validation), [6, 4]);
        assert_eq!(class_counts(SplitName::Test), [12, 8]);
        assert_eq!(splits, split_indices(&labels, &counts, 7, true));
        assert_ne!(splits, split_indices(&labels, &counts, 8, true));
    }

    proptest! {
        /// A failure means two splits share an example, or a split has the wrong size.
        #[test]
        fn splits_are_disjoint_and_sized(
            labels in proptest::collection::vec(0u32..4, 1..200),
            train in 1usize..50, test in 0usize..50, seed in any::<u64>(), stratify in any::<bool>(),
        ) {
            prop_assume!(train + test <= labels.len());
            let mut counts = BTreeMap::from([(SplitName::Train, train)]);
            if test > 0 { counts.insert(SplitName::Test, test); }
            let splits = split_indices(&labels, &counts, seed, stratify);
            let mut all: Vec<usize> = splits.values().flatten().copied().collect();
            let n = all.len();
            all.sort_unstable();
            all.dedup();
            prop_assert_eq!(all.len(), n);
            for (name, size) in &counts {
                prop_assert_eq!(splits[name].len(), *size);
            }
        }
    }
}
