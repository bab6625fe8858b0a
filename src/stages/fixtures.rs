//! Fixtures for tests and examples of the ML stages: a tiny random BERT whose tokenizer knows a
//! small sentiment vocabulary, so a test can build a labelled table the model can learn.
//! Built for the unit tests and, through the `fixtures` feature, for the end-to-end tests in
//! `tests/`; not part of a release build.

use std::fs;
use std::path::Path;

use crate::data::tokenize::wordpiece_tokenizer_json;
use crate::data::tokenize::{encode_all, load_tokenizer};
use crate::ml::fixtures::{write_random_model, NameStyle};
use crate::ml::{Batch, Classifier, DeviceChoice, EncoderConfig, Trainer};

use super::ml_common::MlStageError;

/// Words that make a row positive.
pub const POSITIVE: &[&str] = &["good", "great", "fine", "superb", "lovely", "fun"];
/// Words that make a row negative.
pub const NEGATIVE: &[&str] = &["bad", "awful", "dull", "boring", "poor", "weak"];
/// Neutral words around them.
pub const FILLER: &[&str] = &["the", "film", "was", "a", "movie", "plot", "and", "very"];

/// Row `i` of a deterministic sentiment table: its label (`"pos"` for 3 rows in 5, else
/// `"neg"`) and its text, filler words around one or two sentiment words that decide the
/// label, ending in `i` (so no two rows are duplicates). `gap` separates the two halves of the
/// text (`" "`, or `"\n"` for a multi-line CSV field).
pub fn sentiment_row(i: usize, gap: &str) -> (&'static str, String) {
    let positive = i % 5 < 3;
    let words = if positive { POSITIVE } else { NEGATIVE };
    let second = if i.is_multiple_of(2) {
        words[(i / 2) % words.len()]
    } else {
        ""
    };
    let text = format!(
        "{} {}{gap}{} {second} {i}",
        FILLER[i % FILLER.len()],
        words[i % words.len()],
        FILLER[(i / 3) % FILLER.len()],
    );
    (if positive { "pos" } else { "neg" }, text)
}

/// Writes `EncoderConfig::tiny_bert()` with random weights (seed 7) and a WordPiece
/// `tokenizer.json` over [`POSITIVE`], [`NEGATIVE`] and [`FILLER`] into `dir`: a model
/// directory that `select-model` accepts.
pub fn write_tiny_sentiment_model(dir: &Path) -> Result<(), MlStageError> {
    write_random_model(dir, &EncoderConfig::tiny_bert(), 7, NameStyle::Plain)?;
    let words: Vec<&str> = POSITIVE
        .iter()
        .chain(NEGATIVE)
        .chain(FILLER)
        .copied()
        .collect();
    let path = dir.join("tokenizer.json");
    fs::write(&path, wordpiece_tokenizer_json(&words)).map_err(|source| MlStageError::Write {
        path: path.clone(),
        source,
    })
}

/// Writes a deploy bundle of the (untrained) tiny sentiment model into `dir`, with labels
/// `LABEL_0`/`LABEL_1` and stage key `key`: what `taper predict`/`serve` tests load. Its
/// scratch files go to `work`.
pub fn write_tiny_bundle(work: &Path, dir: &Path, key: &str) -> Result<(), MlStageError> {
    let base = work.join("tiny-model");
    write_tiny_sentiment_model(&base)?;
    let trained = work.join("trained");
    let settings: crate::model::Configure =
        serde_json::from_str("{}").map_err(|error| MlStageError::InvalidConfig {
            stage: "fixture".to_owned(),
            problems: error.to_string(),
        })?;
    crate::ml::Classifier::new(&base, 2, &settings, crate::ml::DeviceChoice::Cpu)?
        .export(&trained.join(crate::stages::evaluate::TRAINED_MODEL_DIR))?;
    fs::create_dir_all(dir).map_err(|source| MlStageError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    crate::stages::deploy::write_bundle(&crate::stages::deploy::BundleSource {
        trained: &trained,
        metrics: None,
        require: &std::collections::BTreeMap::new(),
        precision: crate::model::stages::Precision::F32,
        stage_key: key,
        out_dir: dir,
    })
}

/// Writes the tiny sentiment model (see [`write_tiny_sentiment_model`]) into `dir/base`, trains
/// a two-class classifier on it for 40 steps over 160 [`sentiment_row`]s (`neg` 0, `pos` 1;
/// about a second) and exports it as `train` does into `dir/model`: a target for
/// `taper explain` without a pipeline run.
pub fn write_tiny_trained_model(dir: &Path) -> Result<(), MlStageError> {
    let base = dir.join("base");
    write_tiny_sentiment_model(&base)?;
    let settings: crate::model::stages::Configure = serde_json::from_value(serde_json::json!({
        "learning_rate": 2e-3, "batch_size": 16, "weight_decay": 0.0, "seed": 11, "dropout": 0.0,
    }))
    .map_err(|error| MlStageError::InvalidConfig {
        stage: "fixture".to_owned(),
        problems: error.to_string(),
    })?;
    let tokenizer_path = base.join("tokenizer.json");
    let tokenizer = load_tokenizer(&tokenizer_path, 16)?;
    let rows: Vec<(&str, String)> = (0..160).map(|i| sentiment_row(i, " ")).collect();
    let texts: Vec<String> = rows.iter().map(|(_, text)| text.clone()).collect();
    let encoded = encode_all(&tokenizer, &tokenizer_path, &texts)?;
    let classifier = Classifier::new(&base, 2, &settings, DeviceChoice::Cpu)?;
    let epochs = 4;
    let batches = rows.len().div_ceil(16);
    let mut trainer = Trainer::new(classifier, &settings, epochs * batches)?;
    for _ in 0..epochs {
        for (examples, labels) in encoded.chunks(16).zip(rows.chunks(16)) {
            let ids: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
            let labels: Vec<u32> = labels.iter().map(|(l, _)| u32::from(*l == "pos")).collect();
            trainer.step(&Batch::new(&ids, &labels, 0)?)?;
        }
    }
    trainer.export(&dir.join("model"))?;
    Ok(())
}
