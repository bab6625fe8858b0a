//! Paths as a pipeline writes them: the one lexical normaliser ([`normalize`]) that validation
//! and the engine share, and an index of paths by component, for the "does this dep read that
//! out" questions asked by the edge rule (`model/edges.rs`) and by validation's output checks.
//!
//! Normalisation contract: `.` components and trailing slashes go, and `name/..` pairs cancel;
//! a `..` that climbs above where the path starts is kept (`a/../../x` → `../x`), never dropped.
//! Dropping it made `../../secret.txt` into `secret.txt`: validation accepted a dep outside the
//! pipeline directory and the key hashed a different file from the one the command reads. The
//! result names the same file as the OS resolves whenever no component is a symlink (a
//! property test checks this against a real directory tree); through a symlinked directory
//! `link/..` is lexically its container, not the link target's parent, as in DVC and Bazel.
//! Where paths may point: deps may leave the pipeline directory (`../vocab/words.txt`): they
//! are only read, hashed from the file they name, and kept as `../…` in the lock file. Outs
//! never may: they are deleted before a run and restored from the store (see
//! `model/validate/outs.rs`).
//!
//! Contract: two paths *overlap* when one contains the other, component by component (exactly
//! `a.starts_with(b) || b.starts_with(a)` for [`Path`]: `data` contains `data/clean.csv`, not
//! `data2`). Comparing every dep with every out made this O(stages²): with 1,000 `command`
//! stages it was half of `taper plan`. Here paths are keys of a sorted map of component lists,
//! so the paths at or above a path are found by one lookup per component, and the paths below
//! it are one contiguous range (every list that starts with `p` sorts right after `p`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Lexically normalises a path (`./a/../b/` → `b`, `a/../../x` → `../x`, `/..` → `/`), so
/// `deps` and `outs` compare by meaning and hash alike however they were spelled. The empty
/// path stands for the directory the path is relative to (`.` and `a/..` normalise to it).
pub fn normalize(path: &Path) -> PathBuf {
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match normalized.components().next_back() {
                Some(Component::Normal(_)) => {
                    normalized.pop();
                }
                // The root is its own parent.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                // Nothing left to cancel (empty, or already climbing): keep climbing.
                Some(Component::ParentDir | Component::CurDir) | None => normalized.push(".."),
            },
            other => normalized.push(other),
        }
    }
    normalized
}

/// Whether a [`normalize`]d path names something strictly inside the directory it is relative
/// to: relative, not climbing out with `..`, and not that directory itself.
pub fn is_strictly_inside(normalized: &Path) -> bool {
    !normalized.is_absolute()
        && !normalized.as_os_str().is_empty()
        && !normalized.starts_with(Component::ParentDir)
}

/// Values filed under paths; several values may share one path (kept in insertion order).
///
/// A path's key is its components joined by NUL, a byte no name holds and smaller than any
/// byte a name holds: byte order of keys is then component order, the paths inside `p` are
/// the keys right after `p`'s that start with `p` and a NUL (one range scan), and `p`'s
/// ancestors are the prefixes of its key that end before a NUL. One allocation per path, and
/// comparisons are `memcmp`: a key per component cost an allocation per component (30 MB on a
/// 50,000-stage file), and `PathBuf` keys spent a third of its validation parsing components
/// on every comparison.
#[derive(Debug, Clone)]
pub struct PathIndex<T> {
    entries: BTreeMap<Vec<u8>, Vec<T>>,
}

impl<T> Default for PathIndex<T> {
    fn default() -> Self {
        PathIndex {
            entries: BTreeMap::new(),
        }
    }
}

/// See [`PathIndex`]: the components of `path`, NUL-separated.
fn key(path: &Path) -> Vec<u8> {
    let mut key = Vec::with_capacity(path.as_os_str().len());
    for (index, component) in path.components().enumerate() {
        if index > 0 {
            key.push(0);
        }
        key.extend_from_slice(component.as_os_str().as_bytes());
    }
    key
}

impl<T> PathIndex<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Files `value` under `path`, after any values already there.
    pub fn insert(&mut self, path: &Path, value: T) {
        // `vec![value]`, not `or_default().push`: a first push reserves room for four.
        match self.entries.entry(key(path)) {
            std::collections::btree_map::Entry::Occupied(mut values) => {
                values.get_mut().push(value)
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(vec![value]);
            }
        }
    }

    /// The values filed at `path` itself or at a path containing it, deepest first; each item
    /// holds the values of one path, in insertion order (never empty).
    pub fn at_or_above(&self, path: &Path) -> impl Iterator<Item = &[T]> + '_ {
        let key = key(path);
        // Prefix lengths, deepest first: the whole key, each cut before a NUL, and the empty
        // path (which `Path::starts_with` counts as a prefix of every path).
        let mut cuts = vec![key.len()];
        cuts.extend((0..key.len()).rev().filter(|&index| key[index] == 0));
        if !key.is_empty() {
            cuts.push(0);
        }
        cuts.into_iter()
            .filter_map(move |cut| self.entries.get(&key[..cut]))
            .map(Vec::as_slice)
    }

    /// The values filed at paths strictly inside `path`, in path order; each item holds the
    /// values of one path, in insertion order (never empty).
    pub fn below(&self, path: &Path) -> impl Iterator<Item = &[T]> + '_ {
        let mut prefix = key(path);
        let range = self
            .entries
            .range::<[u8], _>((Bound::Excluded(prefix.as_slice()), Bound::Unbounded));
        // Everything is inside the empty path; inside `p` is `p` and a NUL.
        if !prefix.is_empty() {
            prefix.push(0);
        }
        range
            .take_while(move |(other, _)| other.starts_with(&prefix))
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

    #[test]
    fn normalize_cancels_names_but_keeps_leading_parents() {
        for (raw, expected) in [
            ("./data/../raw.csv", "raw.csv"),
            ("out.d/", "out.d"),
            ("../../secret.txt", "../../secret.txt"),
            ("a/../../x", "../x"),
            ("a/b/../../..", ".."),
            ("../a/../b", "../b"),
            (".", ""),
            ("a/..", ""),
            ("/../etc", "/etc"),
            ("/a/./b/", "/a/b"),
            ("données/./é.csv", "données/é.csv"),
        ] {
            assert_eq!(normalize(Path::new(raw)), Path::new(expected), "{raw}");
        }
    }

    #[test]
    fn strictly_inside_means_relative_below_the_start() {
        for (path, inside) in [
            ("a", true),
            ("a/b", true),
            ("", false),
            ("..", false),
            ("../a", false),
            ("/a", false),
            ("..a", true),
        ] {
            assert_eq!(is_strictly_inside(Path::new(path)), inside, "{path}");
        }
    }

    /// A directory tree for resolving paths through the OS: a chain `a/a/…/a` 12 deep, with a
    /// directory `b` holding a file `f` beside every `a`. Paths start 6 deep, so at most 6
    /// components never climb out of the tree or below its bottom.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let directory = tempfile::tempdir().expect("temp dir");
        let mut level = directory.path().join("t");
        let mut start = None;
        for depth in 0..12 {
            std::fs::create_dir_all(level.join("b")).expect("create b");
            std::fs::write(level.join("b").join("f"), "f").expect("write f");
            if depth == 6 {
                start = Some(level.clone());
            }
            level.push("a");
        }
        std::fs::create_dir_all(&level).expect("create bottom");
        (directory, start.expect("the chain is deeper than 6"))
    }

    fn relative_path() -> impl Strategy<Value = PathBuf> {
        prop::collection::vec(prop::sample::select(vec![".", "..", "a", "b", "f"]), 0..=6)
            .prop_map(|parts| parts.iter().collect())
    }

    proptest! {
        /// Lexical normalisation agrees with the OS: whenever the OS resolves a path (no
        /// symlinks in the tree), the normalised path resolves to the same file.
        #[test]
        fn normalize_names_the_file_the_os_resolves(raw in relative_path()) {
            let (_directory, start) = tree();
            if let Ok(resolved) = std::fs::canonicalize(start.join(&raw)) {
                let normalized = std::fs::canonicalize(start.join(normalize(&raw)));
                prop_assert_eq!(normalized.ok(), Some(resolved));
            }
        }
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
