//! An index of paths by component, for the "does this dep read that out" questions asked by
//! validation, [`Pipeline::dependencies`](super::Pipeline::dependencies) and the engine.
//!
//! Contract: two paths *overlap* when one contains the other, component by component (exactly
//! `a.starts_with(b) || b.starts_with(a)` for [`Path`]: `data` contains `data/clean.csv`, not
//! `data2`). Comparing every dep with every out made this O(stages²): with 1,000 `command`
//! stages it was half of `taper plan`. Here paths are keys of a sorted map of component lists,
//! so the paths at or above a path are found by one lookup per component, and the paths below
//! it are one contiguous range (every list that starts with `p` sorts right after `p`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::Bound;
use std::path::Path;

/// Values filed under paths; several values may share one path (kept in insertion order).
#[derive(Debug, Clone)]
pub struct PathIndex<T> {
    entries: BTreeMap<Vec<OsString>, Vec<T>>,
}

impl<T> Default for PathIndex<T> {
    fn default() -> Self {
        PathIndex {
            entries: BTreeMap::new(),
        }
    }
}

/// The components of `path` as map keys: the same list exactly when `Path`'s own component
/// comparison says equal (`/`, `.` and `..` cannot be the name of a normal component).
fn key(path: &Path) -> Vec<OsString> {
    path.components()
        .map(|component| component.as_os_str().to_owned())
        .collect()
}

impl<T> PathIndex<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Files `value` under `path`, after any values already there.
    pub fn insert(&mut self, path: &Path, value: T) {
        self.entries.entry(key(path)).or_default().push(value);
    }

    /// The values filed at `path` itself or at a path containing it, deepest first; each item
    /// holds the values of one path, in insertion order (never empty).
    pub fn at_or_above(&self, path: &Path) -> impl Iterator<Item = &[T]> + '_ {
        let key = key(path);
        (0..=key.len())
            .rev()
            .filter_map(move |len| self.entries.get(&key[..len]))
            .map(Vec::as_slice)
    }

    /// The values filed at paths strictly inside `path`, in path order; each item holds the
    /// values of one path, in insertion order (never empty).
    pub fn below(&self, path: &Path) -> impl Iterator<Item = &[T]> + '_ {
        let key = key(path);
        self.entries
            .range::<[OsString], _>((Bound::Excluded(key.as_slice()), Bound::Unbounded))
            .take_while(move |(other, _)| other.starts_with(&key))
            .map(|(_, values)| values.as_slice())
    }

    /// Every value filed at a path that overlaps `path` (contains it, equals it, or lies
    /// inside it), each once, grouped by path (not in insertion order).
    pub fn overlapping(&self, path: &Path) -> impl Iterator<Item = &T> + '_ {
        self.at_or_above(path)
            .chain(self.below(path))
            .flat_map(<[T]>::iter)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;

    fn index(paths: &[&str]) -> PathIndex<usize> {
        let mut index = PathIndex::new();
        for (position, path) in paths.iter().enumerate() {
            index.insert(Path::new(path), position);
        }
        index
    }

    fn sorted<'a>(values: impl Iterator<Item = &'a usize>) -> Vec<usize> {
        let mut values: Vec<usize> = values.copied().collect();
        values.sort_unstable();
        values
    }

    #[test]
    fn overlap_is_by_component_not_by_prefix_string() {
        let index = index(&["data", "data2/x", "data/clean.csv", "out/train", "/abs"]);
        assert_eq!(sorted(index.overlapping(Path::new("data"))), [0, 2]);
        assert_eq!(
            sorted(index.overlapping(Path::new("data/clean.csv/part"))),
            [0, 2]
        );
        assert_eq!(sorted(index.overlapping(Path::new("data2"))), [1]);
        assert_eq!(sorted(index.overlapping(Path::new("out"))), [3]);
        assert_eq!(sorted(index.overlapping(Path::new("/"))), [4]);
        assert_eq!(
            sorted(index.overlapping(Path::new("abs"))),
            Vec::<usize>::new()
        );
        // The empty path has no components, so every path starts with it (`Path::starts_with`
        // says the same): a dep on `.` reads every out.
        assert_eq!(sorted(index.overlapping(Path::new(""))), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn at_or_above_is_deepest_first_and_below_is_strict() {
        let index = index(&["a", "a/b", "a/b", "a/b/c", "a/bc"]);
        let above: Vec<&[usize]> = index.at_or_above(Path::new("a/b/c/d")).collect();
        assert_eq!(above, [&[3][..], &[1, 2], &[0]]);
        let below: Vec<&[usize]> = index.below(Path::new("a/b")).collect();
        assert_eq!(below, [&[3][..]]);
    }

    fn path() -> impl Strategy<Value = PathBuf> {
        (
            any::<bool>(),
            prop::collection::vec(
                prop::sample::select(vec!["a", "b", "ab", "..", "c.d"]),
                0..4,
            ),
        )
            .prop_map(|(absolute, parts)| {
                let mut path = PathBuf::from(if absolute { "/" } else { "" });
                path.extend(parts);
                path
            })
    }

    proptest! {
        /// The index answers exactly what comparing with every path answers.
        #[test]
        fn overlapping_matches_pairwise_starts_with(
            filed in prop::collection::vec(path(), 0..12),
            query in path(),
        ) {
            let mut index = PathIndex::new();
            for (position, path) in filed.iter().enumerate() {
                index.insert(path, position);
            }
            let expected: Vec<usize> = filed
                .iter()
                .enumerate()
                .filter(|(_, path)| path.starts_with(&query) || query.starts_with(path))
                .map(|(position, _)| position)
                .collect();
            prop_assert_eq!(sorted(index.overlapping(&query)), expected);
        }
    }
}
