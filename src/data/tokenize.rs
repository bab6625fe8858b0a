//! Tokenization with a model's `tokenizer.json`.
//!
//! Contract: [`load_tokenizer`] replaces the padding and truncation baked into the file with
//! none and `max_length` (MiniLM's file pads every text to 128 tokens: kept, that would make
//! every batch 128 long and undo length bucketing). [`encode_all`] encodes in parallel (rayon)
//! and returns results in input order.

use std::path::Path;

use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationParams};

use crate::data::DataError;

/// One encoded text.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Whether tokens were cut off to fit `max_length`.
    pub truncated: bool,
}

pub fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, DataError> {
    let error = |message: String| DataError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| error(e.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..TruncationParams::default()
        }))
        .map_err(|e| error(e.to_string()))?;
    Ok(tokenizer)
}

pub fn encode_all(
    tokenizer: &Tokenizer,
    path: &Path,
    texts: &[String],
) -> Result<Vec<Encoded>, DataError> {
    texts
        .par_iter()
        .map(|text| {
            let encoding =
                tokenizer
                    .encode(text.as_str(), true)
                    .map_err(|e| DataError::Tokenizer {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?;
            Ok(Encoded {
                truncated: !encoding.get_overflowing().is_empty(),
                ids: encoding.get_ids().to_vec(),
            })
        })
        .collect()
}

/// One text encoded for explanation: its token ids and its words.
#[derive(Debug, Clone, PartialEq)]
pub struct WordPieces {
    pub ids: Vec<u32>,
    pub words: Vec<Word>,
}

/// A word of the text (as the tokenizer's pre-tokenizer splits it) and its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word as written in the text (before lowercasing or accent stripping).
    pub text: String,
    /// Its token positions in `ids`.
    pub tokens: std::ops::Range<usize>,
}

/// Encodes `text` and groups its WordPiece tokens into words, using the tokenizer's word ids
/// and byte offsets into the original text: `"Unwatchable!"` is the words `Unwatchable` (the
/// tokens `un ##watch ##able`) and `!`. Special tokens belong to no word. A word cut by
/// truncation keeps the tokens that fit.
pub fn encode_words(
    tokenizer: &Tokenizer,
    path: &Path,
    text: &str,
) -> Result<WordPieces, DataError> {
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    // Per word: its word id, its byte span in `text` and its token positions.
    let mut spans: Vec<(u32, std::ops::Range<usize>, std::ops::Range<usize>)> = Vec::new();
    for (position, (word_id, &(start, end))) in encoding
        .get_word_ids()
        .iter()
        .zip(encoding.get_offsets())
        .enumerate()
    {
        // Special tokens have no word id.
        let Some(word_id) = *word_id else {
            continue;
        };
        match spans.last_mut() {
            Some((id, bytes, tokens)) if *id == word_id && tokens.end == position => {
                bytes.end = end;
                tokens.end = position + 1;
            }
            _ => spans.push((word_id, start..end, position..position + 1)),
        }
    }
    let words = spans
        .into_iter()
        .map(|(_, bytes, tokens)| Word {
            text: text.get(bytes).unwrap_or_default().to_owned(),
            tokens,
        })
        .collect();
    Ok(WordPieces {
        ids: encoding.get_ids().to_vec(),
        words,
    })
}

/// Test helper: a WordPiece `tokenizer.json` (BERT normalizer, pre-tokenizer and
/// `[CLS] … [SEP]` post-processor) over `words`, with padding and truncation baked in, as
/// MiniLM's has. Ids: `[PAD]` 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3, then `words` in order.
pub fn wordpiece_tokenizer_json(words: &[&str]) -> String {
    let mut vocab = serde_json::Map::new();
    for (id, token) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .iter()
        .chain(words)
        .enumerate()
    {
        vocab.insert((*token).to_owned(), serde_json::json!(id));
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 128, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_baked_padding_and_truncates_with_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(
            &path,
            wordpiece_tokenizer_json(&["good", "film", "bad", "##ly"]),
        )
        .unwrap();
        let tokenizer = load_tokenizer(&path, 5).unwrap();
        let texts = vec![
            "Good film".to_owned(),
            "badly good film bad".to_owned(),
            "zzz".to_owned(),
        ];
        let encoded = encode_all(&tokenizer, &path, &texts).unwrap();
        assert_eq!(
            encoded[0],
            Encoded {
                ids: vec![2, 4, 5, 3],
                truncated: false
            }
        );
        // bad ##ly good film bad → cut to 3 tokens between [CLS] and [SEP].
        assert_eq!(
            encoded[1],
            Encoded {
                ids: vec![2, 6, 7, 4, 3],
                truncated: true
            }
        );
        assert_eq!(
            encoded[2],
            Encoded {
                ids: vec![2, 1, 3],
                truncated: false
            }
        );
    }

    #[test]
    fn word_pieces_merge_into_the_words_of_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(
            &path,
            wordpiece_tokenizer_json(&["good", "film", "bad", "##ly", "!"]),
        )
        .unwrap();
        let tokenizer = load_tokenizer(&path, 16).unwrap();
        let pieces = encode_words(&tokenizer, &path, "Badly  GOOD film!").unwrap();
        // [CLS] bad ##ly good film ! [SEP]
        assert_eq!(pieces.ids, vec![2, 6, 7, 4, 5, 8, 3]);
        let words: Vec<(&str, std::ops::Range<usize>)> = pieces
            .words
            .iter()
            .map(|word| (word.text.as_str(), word.tokens.clone()))
            .collect();
        assert_eq!(
            words,
            vec![("Badly", 1..3), ("GOOD", 3..4), ("film", 4..5), ("!", 5..6)]
        );
    }

    #[test]
    fn unreadable_tokenizer_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            load_tokenizer(&path, 8),
            Err(DataError::Tokenizer { .. })
        ));
    }
}
