use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Source;

/// `kind: prepare-data`: read a table, clean it, map labels, split, tokenize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareData {
    pub source: Source,
    /// Inferred from the file name when absent (`.csv`, `.tsv`, `.jsonl`, optionally `.bz2`/`.gz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// Column holding the text.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// Column holding the label.
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Rows kept only when every filter matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<RowFilter>,
    /// Label names in id order (`[rotten, fresh]` → rotten = 0). When absent, the sorted set
    /// of labels found in the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub clean: Clean,
    pub split: Split,
    /// Tokens per example after truncation (overrides what tokenizer.json bakes in).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Seeded, EDA-style copies of the training split; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
}

fn default_text_column() -> String {
    "text".to_owned()
}
fn default_label_column() -> String {
    "label".to_owned()
}
fn default_max_length() -> usize {
    128
}

/// `augment: { copies: 1, seed: 7, ops: { delete: 0.1, swap: 0.1, insert: 0.1, typo: 0.05 } }`:
/// every training example gains `copies` perturbed copies, each made by one of the ops with a
/// rate above 0, drawn by the seeded RNG (EDA applies one operation per augmented sentence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    #[serde(default = "default_copies")]
    pub copies: usize,
    #[serde(default = "default_augment_seed")]
    pub seed: u64,
    pub ops: AugmentOps,
}

/// Rates of the augmentation ops (`data::perturb` in this crate says what each does); 0 (the
/// default) leaves an op out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentOps {
    #[serde(default)]
    pub delete: f64,
    #[serde(default)]
    pub swap: f64,
    #[serde(default)]
    pub insert: f64,
    #[serde(default)]
    pub typo: f64,
}

impl AugmentOps {
    /// `(name, rate)` of every op, in a fixed order.
    pub fn rates(&self) -> [(&'static str, f64); 4] {
        [
            ("delete", self.delete),
            ("swap", self.swap),
            ("insert", self.insert),
            ("typo", self.typo),
        ]
    }
}

/// Largest `copies`: each copy grows the training split (and every epoch) by its size.
pub const MAX_AUGMENT_COPIES: usize = 16;

fn default_copies() -> usize {
    1
}
fn default_augment_seed() -> u64 {
    7
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Csv,
    Tsv,
    Jsonl,
}

/// `{ column: category, not_in: [plot] }` or `{ column: category, in: [fresh, rotten] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFilter {
    pub column: String,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub is_in: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clean {
    #[serde(default = "yes")]
    pub trim: bool,
    #[serde(default = "yes")]
    pub collapse_whitespace: bool,
    #[serde(default = "yes")]
    pub drop_empty: bool,
    #[serde(default = "yes")]
    pub dedupe: bool,
}

fn yes() -> bool {
    true
}

impl Default for Clean {
    fn default() -> Self {
        Clean {
            trim: true,
            collapse_whitespace: true,
            drop_empty: true,
            dedupe: true,
        }
    }
}

/// How to split: seeded, stratified sizes (counts, or fractions when below 1), or given files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<f64>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "yes")]
    pub stratify: bool,
    /// Pre-split files instead of sizes: split name → path (same format as `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<std::collections::BTreeMap<SplitName, PathBuf>>,
}

impl Split {
    /// The splits this produces: those with a file, or else `train` and those given a size.
    pub fn made(&self) -> Vec<SplitName> {
        match &self.files {
            Some(files) => files.keys().copied().collect(),
            None => [
                (SplitName::Train, true),
                (SplitName::Validation, self.validation.is_some()),
                (SplitName::Test, self.test.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, made)| made.then_some(name))
            .collect(),
        }
    }
}

fn default_seed() -> u64 {
    42
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    Train,
    Validation,
    Test,
}

impl SplitName {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Validation => "validation",
            SplitName::Test => "test",
        }
    }
}
