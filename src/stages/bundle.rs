//! A deploy bundle, read back: the HF checkpoint `deploy` writes ([`crate::stages::deploy`]),
//! verified against its `manifest.json`, with the tokenizer and the classifier loaded, and the
//! scoring both `taper predict` and `taper serve` run (so the two cannot drift apart).
//!
//! Contract: [`Bundle::open`] refuses a bundle whose files differ from the manifest (a changed,
//! missing or added file, named in the error) before loading anything from it.
//! [`Bundle::encode`] turns texts into token ids, refusing empty texts and, unless truncating,
//! texts longer than [`Bundle::max_length`]; [`Bundle::logits`] scores any number of sequences
//! in length-sorted batches under a token budget ([`token_batches`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::data::batching::token_batches;
use crate::data::tokenize::{encode_all, load_tokenizer};
use crate::data::DataError;
use crate::fingerprint::manifest::hash_file_uncached;
use crate::fingerprint::Digest;
use crate::ml::{softmax, Batch, Classifier, DeviceChoice, MlError};
use crate::model::stages::Precision;

/// The manifest's file name inside a bundle.
pub const MANIFEST: &str = "manifest.json";
/// Version of the bundle layout; a reader refuses others.
pub const BUNDLE_FORMAT: u32 = 1;

/// One file of the bundle as `deploy` wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub blake3: String,
    pub size: u64,
}

/// `manifest.json`: what the bundle is, where it came from and what every file must hash to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: u32,
    /// The key of the `deploy` stage that wrote the bundle (`taper plan` / the lock file show
    /// the same key, so a bundle can be traced to its run).
    pub stage_key: String,
    /// The HF class (`architectures[0]` of `config.json`).
    pub architecture: String,
    pub labels: Vec<String>,
    /// Longest input in tokens, `[CLS]` and `[SEP]` included.
    pub max_length: usize,
    /// The arithmetic to serve with (the deploy stage's `precision`); f32 when absent.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// The headline metrics of the `metrics` input (empty without one).
    pub metrics: BTreeMap<String, f64>,
    /// Each class's share of the evaluated split (stratified like the training split), in
    /// label order: the reference `taper serve` compares served predictions with (empty
    /// without a `metrics` input).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_shares: Vec<f64>,
    /// Every other file of the bundle, by relative path.
    pub files: BTreeMap<String, FileRecord>,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BundleError {
    #[error("`{path}` is not a readable bundle manifest: {message}")]
    #[diagnostic(
        code(taper::bundle::manifest),
        help("point at a directory written by a `deploy` stage (it holds `manifest.json`)")
    )]
    Manifest { path: PathBuf, message: String },

    #[error("bundle file `{file}` does not match the manifest: {reason}")]
    #[diagnostic(
        code(taper::bundle::tampered),
        help("the bundle was changed after `deploy` wrote it; rerun the deploy stage (`taper run --force <stage>`) or restore the file")
    )]
    Tampered { file: String, reason: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Ml(#[from] MlError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),

    #[error("input {index} is empty")]
    #[diagnostic(code(taper::bundle::empty_input), help("send non-empty texts"))]
    EmptyInput { index: usize },

    #[error("input {index} has more than {max_length} tokens")]
    #[diagnostic(
        code(taper::bundle::input_too_long),
        help("shorten it, or ask for truncation (`truncate: true`, `--truncate`)")
    )]
    InputTooLong { index: usize, max_length: usize },
}

/// One class and its score (a probability, or a raw logit when asked for).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
}

/// An opened, verified bundle, ready to score.
pub struct Bundle {
    manifest: BundleManifest,
    /// blake3 of `manifest.json`, which pins every other file: the bundle's identity.
    digest: Digest,
    /// Shared with the explainers made from the bundle ([`crate::stages::explain::Explainer`]),
    /// so `POST /explain` needs no second copy of the weights.
    classifier: Arc<Classifier>,
    tokenizer: Arc<Tokenizer>,
    tokenizer_path: PathBuf,
}

impl Bundle {
    /// Verifies `dir` against its manifest, then loads the classifier and tokenizer, at
    /// `precision` or else the manifest's (int8 applies on the CPU only).
    pub fn open(
        dir: &Path,
        device: DeviceChoice,
        precision: Option<Precision>,
    ) -> Result<Self, BundleError> {
        let (manifest, digest) = verify(dir)?;
        let (mut classifier, labels) = Classifier::load_hf(dir, device)?;
        classifier.set_precision(precision.unwrap_or(manifest.precision))?;
        if labels != manifest.labels {
            return Err(BundleError::Tampered {
                file: "config.json".to_owned(),
                reason: "its labels differ from the manifest's".to_owned(),
            });
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = load_tokenizer(&tokenizer_path, manifest.max_length)?;
        Ok(Self {
            manifest,
            digest,
            classifier: Arc::new(classifier),
            tokenizer: Arc::new(tokenizer),
            tokenizer_path,
        })
    }

    /// The loaded model, its tokenizer (truncating at [`Self::max_length`]) and the
    /// tokenizer's path (for error messages), to explain with.
    pub(crate) fn model(&self) -> (Arc<Classifier>, Arc<Tokenizer>, &Path) {
        (
            Arc::clone(&self.classifier),
            Arc::clone(&self.tokenizer),
            &self.tokenizer_path,
        )
    }

    pub fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    pub fn labels(&self) -> &[String] {
        &self.manifest.labels
    }

    pub fn max_length(&self) -> usize {
        self.manifest.max_length
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn device_name(&self) -> String {
        self.classifier.device_name()
    }

    /// The arithmetic the bundle is scored with.
    pub fn precision(&self) -> Precision {
        self.classifier.precision()
    }

    /// Token ids of `texts`, in order. Truncates to [`Self::max_length`] when `truncate`,
    /// else refuses longer texts; always refuses empty ones (they carry nothing to classify).
    pub fn encode(&self, texts: &[String], truncate: bool) -> Result<Vec<Vec<u32>>, BundleError> {
        if let Some(index) = texts.iter().position(|text| text.trim().is_empty()) {
            return Err(BundleError::EmptyInput { index });
        }
        let encoded = encode_all(&self.tokenizer, &self.tokenizer_path, texts)?;
        let mut out = Vec::with_capacity(encoded.len());
        for (index, text) in encoded.into_iter().enumerate() {
            if text.truncated && !truncate {
                return Err(BundleError::InputTooLong {
                    index,
                    max_length: self.max_length(),
                });
            }
            out.push(text.ids);
        }
        Ok(out)
    }

    /// Logits of every sequence, in order: length-sorted batches of at most `max_batch_tokens`
    /// padded tokens, scattered back.
    pub fn logits(
        &self,
        sequences: &[Vec<u32>],
        max_batch_tokens: usize,
    ) -> Result<Vec<Vec<f32>>, BundleError> {
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let pad = self.classifier.config().pad_token_id;
        let mut out = vec![Vec::new(); sequences.len()];
        for indices in token_batches(&lengths, max_batch_tokens) {
            let batch: Vec<&[u32]> = indices.iter().map(|&i| sequences[i].as_slice()).collect();
            let logits = self.classifier.logits(&Batch::new(&batch, &[], pad)?)?;
            for (&index, row) in indices.iter().zip(logits) {
                out[index] = row;
            }
        }
        Ok(out)
    }

    /// Every class with its score, best first: probabilities, or the logits when `raw`.
    pub fn predictions(&self, logits: &[f32], raw: bool) -> Vec<Prediction> {
        let scores = if raw {
            logits.to_vec()
        } else {
            softmax(logits)
        };
        let mut out: Vec<Prediction> = self
            .labels()
            .iter()
            .zip(scores)
            .map(|(label, score)| Prediction {
                label: label.clone(),
                score,
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
    }
}

/// Reads `dir`'s manifest and checks every file against it: each listed file must exist with
/// its size and blake3, and no other file may be present (an added `pytorch_model.bin` would
/// be loaded by other tools instead of the verified weights). Returns the manifest and the
/// digest of its bytes.
pub fn verify(dir: &Path) -> Result<(BundleManifest, Digest), BundleError> {
    let path = dir.join(MANIFEST);
    let manifest_error = |message: String| BundleError::Manifest {
        path: path.clone(),
        message,
    };
    let bytes = std::fs::read(&path).map_err(|error| manifest_error(error.to_string()))?;
    let manifest: BundleManifest =
        serde_json::from_slice(&bytes).map_err(|error| manifest_error(error.to_string()))?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(manifest_error(format!(
            "format {} (this taper reads {BUNDLE_FORMAT})",
            manifest.format
        )));
    }
    let tampered = |file: &str, reason: String| BundleError::Tampered {
        file: file.to_owned(),
        reason,
    };
    for (file, record) in &manifest.files {
        let file_path = dir.join(file);
        let size = std::fs::metadata(&file_path)
            .map_err(|error| tampered(file, format!("cannot read it ({error})")))?
            .len();
        if size != record.size {
            return Err(tampered(
                file,
                format!("{size} bytes instead of {}", record.size),
            ));
        }
        let digest = hash_file_uncached(&file_path)
            .map_err(|error| tampered(file, format!("cannot read it ({error})")))?;
        if digest.to_hex() != record.blake3 {
            return Err(tampered(file, "its blake3 differs".to_owned()));
        }
    }
    for file in relative_files(dir).map_err(|error| manifest_error(error.to_string()))? {
        if file != MANIFEST && !manifest.files.contains_key(&file) {
            return Err(tampered(&file, "it is not in the manifest".to_owned()));
        }
    }
    Ok((manifest, Digest::of_bytes(&bytes)))
}

/// The files under `dir`, as `/`-separated relative paths, sorted. Symbolic links are listed,
/// not followed (a link to a directory would otherwise let a bundle reach outside itself, or
/// loop).
pub fn relative_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                let parts: Vec<String> = relative
                    .components()
                    .map(|part| part.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}
