//! Text perturbations: the one owner of what a "typo", a "word deletion" or a "casing change"
//! does to a text, shared by training-data augmentation (`prepare-data`'s `augment:`) and
//! robustness evaluation (`evaluate`'s `robustness:`), so a model is tested against exactly the
//! noise it may have been trained with.
//!
//! Contract:
//! - Every function is a pure function of the text, its rate and the RNG it is given. Callers
//!   seed a [`ChaCha8Rng`] (portable: the same seed gives the same stream on every machine,
//!   unlike the thread RNG), so the same seed always gives the same bytes.
//! - A perturbation never empties a text that has a non-whitespace character: a deletion
//!   that would remove every word keeps one, and a dropped character is skipped when it is the
//!   last one left.
//! - Word operations split on whitespace and join with one space (EDA's convention, Wei & Zou
//!   2019); character operations keep the text's whitespace.
//!
//! The word operations follow EDA with `alpha` = the rate: deletion removes each word with
//! probability `rate`; swap and insertion each do `max(1, round(rate · words))` operations.
//! Insertion draws its words from the same text (EDA inserts synonyms; taper has no synonym
//! dictionary, and a repeated word is a perturbation of the same kind). The typo operation
//! picks each letter with probability `rate` and applies one of four edits, each equally
//! likely: swap with the next character, drop, duplicate, or replace with a neighbouring key on
//! a QWERTY keyboard.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::stages::Augment;

/// One kind of perturbation with its rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Perturbation {
    /// Each word is deleted with this probability.
    Delete(f64),
    /// `max(1, round(rate · words))` swaps of two random words.
    Swap(f64),
    /// `max(1, round(rate · words))` insertions of a word of the text at a random place.
    Insert(f64),
    /// Each letter gets a keyboard typo with this probability.
    Typo(f64),
    /// Each word is lowercased, uppercased or capitalised, each equally likely.
    Casing,
}

impl Perturbation {
    /// The name used in settings and metric names (`typo` → `typo_accuracy`).
    pub fn name(self) -> &'static str {
        match self {
            Perturbation::Delete(_) => "delete",
            Perturbation::Swap(_) => "swap",
            Perturbation::Insert(_) => "insert",
            Perturbation::Typo(_) => "typo",
            Perturbation::Casing => "casing",
        }
    }

    pub fn apply(self, text: &str, rng: &mut ChaCha8Rng) -> String {
        match self {
            Perturbation::Delete(rate) => delete_words(text, rate, rng),
            Perturbation::Swap(rate) => swap_words(text, rate, rng),
            Perturbation::Insert(rate) => insert_words(text, rate, rng),
            Perturbation::Typo(rate) => typos(text, rate, rng),
            Perturbation::Casing => change_casing(text, rng),
        }
    }
}

/// One augmented copy of a training text.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentedText {
    /// Position of the original in the split.
    pub original: usize,
    /// 1 for the first copy of every text, 2 for the second, ….
    pub copy: usize,
    pub text: String,
}

/// The augmented copies of `texts`: `settings.copies` rounds over the texts in order; in each,
/// every text gets one copy made by one of the ops with a rate above 0, drawn by the RNG. One
/// RNG seeded with `settings.seed` serves the whole split, so the copies are a pure function of
/// the texts, their order and the settings (no ops: no copies).
pub fn augment(texts: &[&str], settings: &Augment) -> Vec<AugmentedText> {
    let rates = &settings.ops;
    let ops: Vec<Perturbation> = [
        (rates.delete, Perturbation::Delete(rates.delete)),
        (rates.swap, Perturbation::Swap(rates.swap)),
        (rates.insert, Perturbation::Insert(rates.insert)),
        (rates.typo, Perturbation::Typo(rates.typo)),
    ]
    .into_iter()
    .filter(|(rate, _)| *rate > 0.0)
    .map(|(_, op)| op)
    .collect();
    if ops.is_empty() {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut out = Vec::with_capacity(settings.copies * texts.len());
    for copy in 1..=settings.copies {
        for (original, text) in texts.iter().enumerate() {
            let op = ops[rng.random_range(0..ops.len())];
            out.push(AugmentedText {
                original,
                copy,
                text: op.apply(text, &mut rng),
            });
        }
    }
    out
}

/// EDA's operation count: at least one, `rate · words` rounded.
fn operations(rate: f64, words: usize) -> usize {
    ((rate * words as f64).round() as usize).max(1)
}

pub fn delete_words(text: &str, rate: f64, rng: &mut ChaCha8Rng) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() <= 1 {
        return words.join(" ");
    }
    let kept: Vec<&str> = words
        .iter()
        .copied()
        .filter(|_| !rng.random_bool(rate))
        .collect();
    if kept.is_empty() {
        // Never an empty text: keep one word, as EDA does.
        return words[rng.random_range(0..words.len())].to_owned();
    }
    kept.join(" ")
}

pub fn swap_words(text: &str, rate: f64, rng: &mut ChaCha8Rng) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if words.len() >= 2 {
        for _ in 0..operations(rate, words.len()) {
            let first = rng.random_range(0..words.len());
            // A different position, so every swap changes the order of two words.
            let second = (first + rng.random_range(1..words.len())) % words.len();
            words.swap(first, second);
        }
    }
    words.join(" ")
}

pub fn insert_words(text: &str, rate: f64, rng: &mut ChaCha8Rng) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return String::new();
    }
    for _ in 0..operations(rate, words.len()) {
        let word = words[rng.random_range(0..words.len())];
        let at = rng.random_range(0..=words.len());
        words.insert(at, word);
    }
    words.join(" ")
}

/// QWERTY neighbours of each lowercase letter (same row and the rows above and below).
fn neighbours(letter: char) -> &'static str {
    match letter {
        'q' => "wa",
        'w' => "qeas",
        'e' => "wrsd",
        'r' => "etdf",
        't' => "ryfg",
        'y' => "tugh",
        'u' => "yihj",
        'i' => "uojk",
        'o' => "ipkl",
        'p' => "ol",
        'a' => "qwsz",
        's' => "weadzx",
        'd' => "erfsxc",
        'f' => "rtdgcv",
        'g' => "tyfhvb",
        'h' => "yugjbn",
        'j' => "uihknm",
        'k' => "iojlm",
        'l' => "opk",
        'z' => "asx",
        'x' => "zsdc",
        'c' => "xdfv",
        'v' => "cfgb",
        'b' => "vghn",
        'n' => "bhjm",
        'm' => "njk",
        _ => "",
    }
}

pub fn typos(text: &str, rate: f64, rng: &mut ChaCha8Rng) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = Vec::with_capacity(chars.len() + 4);
    let mut visible = chars.iter().filter(|c| !c.is_whitespace()).count();
    let mut index = 0;
    while index < chars.len() {
        let current = chars[index];
        if !current.is_alphabetic() || !rng.random_bool(rate) {
            out.push(current);
            index += 1;
            continue;
        }
        match rng.random_range(0..4) {
            // Swap with the next character (when there is one that is not a space).
            0 => match chars.get(index + 1) {
                Some(&next) if !next.is_whitespace() => {
                    out.push(next);
                    out.push(current);
                    index += 1;
                }
                _ => out.push(current),
            },
            // Drop, unless it is the last visible character.
            1 if visible > 1 => visible -= 1,
            1 => out.push(current),
            2 => {
                out.push(current);
                out.push(current);
            }
            _ => {
                let lower = current.to_ascii_lowercase();
                let keys: Vec<char> = neighbours(lower).chars().collect();
                if keys.is_empty() {
                    out.push(current);
                } else {
                    let key = keys[rng.random_range(0..keys.len())];
                    out.push(if current.is_uppercase() {
                        key.to_ascii_uppercase()
                    } else {
                        key
                    });
                }
            }
        }
        index += 1;
    }
    out.into_iter().collect()
}

pub fn change_casing(text: &str, rng: &mut ChaCha8Rng) -> String {
    text.split_whitespace()
        .map(|word| match rng.random_range(0..3) {
            0 => word.to_lowercase(),
            1 => word.to_uppercase(),
            _ => {
                let mut chars = word.chars();
                chars.next().map_or_else(String::new, |first| {
                    first
                        .to_uppercase()
                        .chain(chars.flat_map(char::to_lowercase))
                        .collect()
                })
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stages::AugmentOps;

    const SENTENCE: &str = "a gorgeous witty seductive movie that never drags";

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn sorted_words(text: &str) -> Vec<&str> {
        let mut words: Vec<&str> = text.split_whitespace().collect();
        words.sort_unstable();
        words
    }

    #[test]
    fn deletion_keeps_a_subsequence_of_the_words() {
        let out = delete_words(SENTENCE, 0.3, &mut rng(1));
        let words: Vec<&str> = SENTENCE.split_whitespace().collect();
        let kept: Vec<&str> = out.split_whitespace().collect();
        assert!(kept.len() < words.len(), "{out}");
        let mut rest = words.iter();
        assert!(kept.iter().all(|word| rest.any(|w| w == word)), "{out}");
    }

    #[test]
    fn swap_keeps_the_words_and_changes_their_order() {
        let out = swap_words(SENTENCE, 0.1, &mut rng(2));
        assert_ne!(out, SENTENCE);
        assert_eq!(sorted_words(&out), sorted_words(SENTENCE));
    }

    #[test]
    fn insertion_adds_words_of_the_text() {
        // 8 words at rate 0.25: two insertions.
        let out = insert_words(SENTENCE, 0.25, &mut rng(3));
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words.len(), 10, "{out}");
        assert!(words
            .iter()
            .all(|word| SENTENCE.split(' ').any(|w| w == *word)));
    }

    #[test]
    fn typos_change_letters_only_locally() {
        // At rate 1 every letter is hit; the words keep their places and stay close in length.
        let out = typos("good movie", 1.0, &mut rng(4));
        assert_ne!(out, "good movie");
        assert_eq!(out.split(' ').count(), 2, "{out}");
        for (typo, word) in out.split(' ').zip(["good", "movie"]) {
            assert!(typo.len().abs_diff(word.len()) <= word.len(), "{out}");
        }
        // Rate 0 leaves the text alone.
        assert_eq!(typos("good movie", 0.0, &mut rng(4)), "good movie");
    }

    #[test]
    fn each_typo_edit_does_what_it_says() {
        // Over many seeds, a one-letter-hit text shows all four edits of `ab`.
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let out = typos("ab", 0.5, &mut rng(seed));
            seen.insert(out);
        }
        // swap, drop (one of two), duplicate, neighbouring key of `a` (q w s z) or `b` (v g h n).
        assert!(seen.contains("ba"), "{seen:?}");
        assert!(seen.contains("a") || seen.contains("b"), "{seen:?}");
        assert!(seen.contains("aab") || seen.contains("abb"), "{seen:?}");
        assert!(
            ["qb", "wb", "sb", "zb", "av", "ag", "ah", "an"]
                .iter()
                .any(|typo| seen.contains(*typo)),
            "{seen:?}"
        );
        assert!(seen.iter().all(|out| !out.is_empty()));
    }

    #[test]
    fn casing_changes_case_only() {
        let out = change_casing("A Gorgeous witty MOVIE", &mut rng(5));
        assert_eq!(out.to_lowercase(), "a gorgeous witty movie");
    }

    #[test]
    fn perturbations_never_empty_a_text() {
        let all = [
            Perturbation::Delete(1.0),
            Perturbation::Swap(1.0),
            Perturbation::Insert(1.0),
            Perturbation::Typo(1.0),
            Perturbation::Casing,
        ];
        for text in ["a", "ok", "x y", "  z  ", SENTENCE] {
            for perturbation in all {
                for seed in 0..50 {
                    let out = perturbation.apply(text, &mut rng(seed));
                    assert!(
                        !out.trim().is_empty(),
                        "{} emptied {text:?} (seed {seed})",
                        perturbation.name()
                    );
                }
            }
        }
    }

    fn settings(seed: u64, copies: usize) -> Augment {
        Augment {
            copies,
            seed,
            ops: AugmentOps {
                delete: 0.1,
                swap: 0.1,
                insert: 0.1,
                typo: 0.05,
            },
        }
    }

    #[test]
    fn augmentation_is_deterministic_for_a_seed_and_differs_for_another() {
        let texts = [SENTENCE, "an utterly joyless remake", "fine", "two words"];
        let first = augment(&texts, &settings(7, 2));
        assert_eq!(first, augment(&texts, &settings(7, 2)));
        assert_ne!(first, augment(&texts, &settings(8, 2)));
        // Two rounds over the texts, in order.
        let order: Vec<(usize, usize)> = first.iter().map(|a| (a.copy, a.original)).collect();
        assert_eq!(
            order,
            [
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3),
                (2, 0),
                (2, 1),
                (2, 2),
                (2, 3)
            ]
        );
        assert!(first.iter().all(|a| !a.text.trim().is_empty()));
    }

    #[test]
    fn augmentation_uses_only_the_ops_given() {
        let only_swap = Augment {
            ops: AugmentOps {
                delete: 0.0,
                swap: 0.2,
                insert: 0.0,
                typo: 0.0,
            },
            ..settings(1, 3)
        };
        for copy in augment(&[SENTENCE], &only_swap) {
            assert_eq!(sorted_words(&copy.text), sorted_words(SENTENCE));
        }
        let none = Augment {
            ops: AugmentOps {
                delete: 0.0,
                swap: 0.0,
                insert: 0.0,
                typo: 0.0,
            },
            ..settings(1, 3)
        };
        assert!(augment(&[SENTENCE], &none).is_empty());
    }

    #[test]
    fn the_same_seed_gives_the_same_text() {
        for perturbation in [Perturbation::Delete(0.3), Perturbation::Typo(0.2)] {
            let first = perturbation.apply(SENTENCE, &mut rng(7));
            assert_eq!(first, perturbation.apply(SENTENCE, &mut rng(7)));
            assert_ne!(first, perturbation.apply(SENTENCE, &mut rng(8)));
        }
    }
}
