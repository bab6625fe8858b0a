//! Subword dropout (`configure`'s `subword_dropout`): the train split's word pieces split at
//! random into smaller word pieces of the same vocabulary, fresh every epoch: BPE-dropout's
//! regularization, for WordPiece.
//!
//! Why: a typo turns a word into word pieces the model never saw it as ("gorgeous" →
//! "gorgeojs" → `gorge ##oj ##s`), and a model fine-tuned only on the tokenizer's one greedy
//! segmentation reads those pieces as noise. Trained on other segmentations of the same words
//! (`gorge ##ous`, `gor ##geous`), it learns to read a word from its fragments.
//!
//! Contract:
//! - A piece splits only into two pieces of the vocabulary that spell it: `piece` =
//!   `left` + `right` without `right`'s continuing prefix (`##`); `left` keeps the piece's own
//!   prefix. The halves may split again, each with the same probability, so the text a
//!   sequence spells never changes.
//! - Never split: a sequence's first and last token (the post-processor's `[CLS]` and
//!   `[SEP]`), the tokenizer's added and special tokens, and the unknown token.
//! - A sequence that grows past `max_length` is cut to it with its last token kept last, as
//!   the tokenizer truncates.
//! - The result is a pure function of the ids, the probability and the RNG's state: the
//!   trainer seeds one RNG per epoch, so a resumed run sees the same pieces.

use std::collections::HashMap;
use std::path::Path;

use rand::Rng;
use tokenizers::{ModelWrapper, Tokenizer};

use crate::data::DataError;

/// Every vocabulary piece's ways to split in two (`(left, right)` ids), by id.
#[derive(Debug, Clone, PartialEq)]
pub struct PieceSplits {
    splits: Vec<Vec<(u32, u32)>>,
}

impl PieceSplits {
    /// The splits of the WordPiece vocabulary of `tokenizer` (read from `path`, named in
    /// errors). A tokenizer whose model is not WordPiece has no continuing prefix to split by.
    pub fn of_tokenizer(tokenizer: &Tokenizer, path: &Path) -> Result<Self, DataError> {
        let ModelWrapper::WordPiece(wordpiece) = tokenizer.get_model() else {
            return Err(DataError::Tokenizer {
                path: path.to_owned(),
                message: "`subword_dropout` needs a WordPiece model (BERT's tokenizer); this \
                          one has another"
                    .to_owned(),
            });
        };
        let mut vocab = tokenizer.get_vocab(false);
        // Added and special tokens (`[CLS]`, `[MASK]`, …) and the unknown token are markers,
        // not spellings: leave them out so that they never split and are never produced.
        for id in tokenizer.get_added_tokens_decoder().keys() {
            vocab.retain(|_, token_id| token_id != id);
        }
        vocab.remove(&wordpiece.unk_token);
        Ok(Self::of_vocab(&vocab, &wordpiece.continuing_subword_prefix))
    }

    /// The splits of `vocab` (piece → id), whose continuing pieces start with `prefix`.
    pub fn of_vocab(vocab: &HashMap<String, u32>, prefix: &str) -> Self {
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut splits = vec![Vec::new(); size];
        let mut right = String::new();
        for (piece, &id) in vocab {
            let (own_prefix, body) = match piece.strip_prefix(prefix) {
                Some(body) if !prefix.is_empty() && !body.is_empty() => (prefix, body),
                _ => ("", piece.as_str()),
            };
            let mut left = String::from(own_prefix);
            for (at, _) in body.char_indices().skip(1) {
                left.truncate(own_prefix.len());
                left.push_str(&body[..at]);
                right.clear();
                right.push_str(prefix);
                right.push_str(&body[at..]);
                if let (Some(&l), Some(&r)) = (vocab.get(&left), vocab.get(&right)) {
                    splits[id as usize].push((l, r));
                }
            }
            // The map's order is random; the draws index into this list.
            splits[id as usize].sort_unstable();
        }
        PieceSplits { splits }
    }

    /// How many pieces have at least one split (for the training log).
    pub fn splittable(&self) -> usize {
        self.splits.iter().filter(|s| !s.is_empty()).count()
    }

    /// `ids` with every inner piece split with probability `rate` (recursively), cut to
    /// `max_length` with the last token kept.
    pub fn apply(&self, ids: &[u32], rate: f64, max_length: usize, rng: &mut impl Rng) -> Vec<u32> {
        if ids.len() < 2 {
            return ids.to_vec();
        }
        let (first, last, inner) = (ids[0], ids[ids.len() - 1], &ids[1..ids.len() - 1]);
        let mut out = Vec::with_capacity(ids.len() + ids.len() / 4);
        out.push(first);
        let mut pending = Vec::new();
        for &id in inner {
            // Depth first, left half first, so the pieces stay in reading order.
            pending.push(id);
            while let Some(piece) = pending.pop() {
                let options = self.splits.get(piece as usize).map_or(&[][..], |s| &s[..]);
                if options.is_empty() || !rng.random_bool(rate) {
                    out.push(piece);
                    continue;
                }
                let (left, right) = options[rng.random_range(0..options.len())];
                pending.push(right);
                pending.push(left);
            }
        }
        if out.len() + 1 > max_length {
            out.truncate(max_length.saturating_sub(1).max(1));
        }
        out.push(last);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The spellings of `ids` under `vocab`, continuing pieces joined to the word before them (a
    /// test oracle: a split must never change it).
    fn spelled(ids: &[u32], vocab: &HashMap<String, u32>, prefix: &str) -> Vec<String> {
        let by_id: HashMap<u32, &str> = vocab.iter().map(|(p, &id)| (id, p.as_str())).collect();
        let mut words: Vec<String> = Vec::new();
        for id in ids {
            let piece = by_id[id];
            match (piece.strip_prefix(prefix), words.last_mut()) {
                (Some(rest), Some(word)) => word.push_str(rest),
                _ => words.push(piece.to_owned()),
            }
        }
        words
    }

    /// The set of ids of `vocab` (test helper).
    fn ids_of(vocab: &HashMap<String, u32>, pieces: &[&str]) -> Vec<u32> {
        pieces.iter().map(|p| vocab[*p]).collect()
    }

    fn vocab() -> HashMap<String, u32> {
        [
            "[CLS]", "[SEP]", "gorgeous", "gorge", "##ous", "gor", "##geous", "##ge", "##o",
            "##us", "film", "fi", "##lm", "##ly", "bad", "##bad", "b", "##ad", "a",
        ]
        .iter()
        .enumerate()
        .map(|(id, p)| ((*p).to_owned(), id as u32))
        .collect()
    }

    #[test]
    fn a_piece_splits_only_into_pieces_that_spell_it() {
        let vocab = vocab();
        let splits = PieceSplits::of_vocab(&vocab, "##");
        let of = |p: &str| splits.splits[vocab[p] as usize].clone();
        let pair = |l: &str, r: &str| (vocab[l], vocab[r]);
        let mut gorgeous = vec![pair("gor", "##geous"), pair("gorge", "##ous")];
        gorgeous.sort_unstable();
        assert_eq!(of("gorgeous"), gorgeous);
        assert_eq!(of("film"), vec![pair("fi", "##lm")]);
        // A continuing piece keeps its prefix on the left half.
        assert_eq!(
            of("##bad"),
            Vec::<(u32, u32)>::new(),
            "`##b` is not in the vocabulary"
        );
        assert_eq!(of("bad"), vec![pair("b", "##ad")]);
        assert_eq!(of("[CLS]"), Vec::<(u32, u32)>::new());
        assert_eq!(
            splits.splittable(),
            6,
            "gorgeous, gorge, ##geous, ##ous, film, bad"
        );
    }

    #[test]
    fn rate_zero_changes_nothing_and_rate_one_splits_every_inner_piece_to_the_end() {
        let vocab = vocab();
        let splits = PieceSplits::of_vocab(&vocab, "##");
        let ids = ids_of(&vocab, &["[CLS]", "film", "gorgeous", "bad", "[SEP]"]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(splits.apply(&ids, 0.0, 64, &mut rng), ids);
        let all = splits.apply(&ids, 1.0, 64, &mut rng);
        // Every piece left has no split (rate 1 splits until none is left), in reading order.
        assert!(all.iter().all(|&id| splits.splits[id as usize].is_empty()));
        assert_eq!(all.first(), ids.first());
        assert_eq!(all.last(), ids.last());
        assert_eq!(spelled(&all, &vocab, "##"), spelled(&ids, &vocab, "##"));
        assert!(all.len() > ids.len());
    }

    #[test]
    fn the_first_and_last_tokens_never_split_and_a_long_result_is_cut_before_the_last() {
        let mut vocab = vocab();
        // `[CLS]` made splittable on purpose: its position alone must protect it.
        vocab.insert("[".to_owned(), 90);
        vocab.insert("##CLS]".to_owned(), 91);
        let splits = PieceSplits::of_vocab(&vocab, "##");
        let ids = ids_of(&vocab, &["[CLS]", "gorgeous", "film", "[SEP]"]);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let cut = splits.apply(&ids, 1.0, 4, &mut rng);
        assert_eq!(cut.len(), 4);
        assert_eq!(cut[0], vocab["[CLS]"]);
        assert_eq!(cut[3], vocab["[SEP]"]);
        let one = ids_of(&vocab, &["[CLS]"]);
        assert_eq!(splits.apply(&one, 1.0, 4, &mut rng), one);
    }

    #[test]
    fn a_word_piece_tokenizer_gives_its_splits_and_another_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(
            &path,
            crate::data::tokenize::wordpiece_tokenizer_json(&["film", "fi", "##lm"]),
        )
        .unwrap();
        let tokenizer = crate::data::tokenize::load_tokenizer(&path, 16).unwrap();
        let splits = PieceSplits::of_tokenizer(&tokenizer, &path).unwrap();
        assert_eq!(splits.splits[4], vec![(5, 6)]);
        assert_eq!(splits.splittable(), 1);

        let bpe = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}
        });
        std::fs::write(&path, bpe.to_string()).unwrap();
        let tokenizer = crate::data::tokenize::load_tokenizer(&path, 16).unwrap();
        let err = PieceSplits::of_tokenizer(&tokenizer, &path).unwrap_err();
        assert!(err.to_string().contains("needs a WordPiece model"), "{err}");
    }

    proptest! {
        /// Whatever the rate and seed: the same spelling, first and last token kept, within
        /// `max_length`, and the same output for the same seed.
        #[test]
        fn a_split_sequence_spells_the_same_words(
            words in proptest::collection::vec(0usize..6, 0..12),
            rate in 0.0f64..=1.0,
            seed in any::<u64>(),
        ) {
            let vocab = vocab();
            let splits = PieceSplits::of_vocab(&vocab, "##");
            let pool = ["gorgeous", "film", "bad", "a", "gorge", "##ous"];
            let mut pieces = vec!["[CLS]"];
            pieces.extend(words.iter().map(|&w| pool[w]));
            pieces.push("[SEP]");
            let ids = ids_of(&vocab, &pieces);
            let out = splits.apply(&ids, rate, 128, &mut ChaCha8Rng::seed_from_u64(seed));
            prop_assert_eq!(spelled(&out, &vocab, "##"), spelled(&ids, &vocab, "##"));
            prop_assert_eq!(out.first(), ids.first());
            prop_assert_eq!(out.last(), ids.last());
            let again = splits.apply(&ids, rate, 128, &mut ChaCha8Rng::seed_from_u64(seed));
            prop_assert_eq!(&out, &again);
            let short = splits.apply(&ids, rate, 5, &mut ChaCha8Rng::seed_from_u64(seed));
            prop_assert!(short.len() <= 5);
        }
    }
}
