//! `explain`: word attributions for the first `examples` examples of one split, and how far
//! they can be trusted.
//!
//! Contract: writes `explanations.jsonl` (per example, in dataset order: text, words, scores,
//! label, prediction and its probability, completeness gap, faithfulness), `report.html` (a
//! self-contained page: heat maps, misclassified and least confident examples first, the words
//! with the largest mean attribution per predicted class) and `metrics.json`, and returns its
//! headline metrics for the lock file:
//! - `completeness_gap` (integrated gradients only): mean over examples of
//!   `|Σ scores − (p(x) − p(baseline))| / |p(x) − p(baseline)|`; the integral's numerical error.
//! - ERASER's `comprehensiveness` (the predicted class's probability drop when the top-k words
//!   are deleted; higher is better) and `sufficiency` (its drop when only they are kept; lower
//!   is better), k = 20% of the words rounded up, and both for k random words
//!   (`*_random`, [`RANDOM_DRAWS`] draws seeded by the example's index): attributions that do
//!   not beat random ones are not worth reading.
//!
//! Texts are re-encoded with the trained model's tokenizer at the dataset's `max_length` for
//! their word offsets; the words are the pre-tokenizer's (punctuation is a word of its own).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::data::dataset::{read_texts, Dataset};
use crate::data::tokenize::{encode_words, load_tokenizer};
use crate::exec::runner::{StageContext, StageError, StageOutcome, StageRunner};
use crate::ml::{edited_probabilities, Attribution, Baseline, Classifier, DeviceChoice};
use crate::model::stages::{Explain, ExplainBaseline, ExplainMethod};
use crate::model::{InputSlot, StageSettings};
use crate::stages::bundle::{Bundle, BundleError, MANIFEST};
use crate::stages::evaluate::TRAINED_MODEL_DIR;
use crate::stages::explain_report::render_report;
use crate::stages::ml_common::{
    input_dir, split_of, write_bytes, write_json, wrong_runner, MlStageError,
};

/// Random top-k stand-ins per example for the faithfulness baselines.
pub const RANDOM_DRAWS: usize = 5;
/// The share of an example's words that faithfulness removes or keeps: one of ERASER's bins
/// (its AOPC averages 1, 5, 10, 20 and 50%), one forward pass per edit instead of five.
const TOP_FRACTION: f64 = 0.2;
/// The file `Classifier::export` writes last; its presence marks a trained model directory.
const TRAINED_MARKER: &str = "taper-classifier.json";

/// Errors of explanation that are not model or data errors.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExplainError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Stages(#[from] MlStageError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Bundle(#[from] BundleError),

    #[error("the tokenizer of `{path}` has no `[MASK]` token for the `mask` baseline")]
    #[diagnostic(
        code(taper::explain::no_mask_token),
        help("use `baseline: pad` or `baseline: zero`")
    )]
    NoMaskToken { path: PathBuf },

    #[error("`{path}` is neither a deploy bundle nor a trained model directory")]
    #[diagnostic(
        code(taper::explain::not_a_model),
        help("give a `deploy` stage's bundle (it holds `manifest.json`), a `train` stage's output directory or its `model/` directory, or `PIPELINE.yaml:STAGE` naming one of those stages")
    )]
    NotAModel { path: PathBuf },

    #[error("`{text}` has no words the tokenizer keeps")]
    #[diagnostic(
        code(taper::explain::no_words),
        help("give a text with at least one word")
    )]
    NoWords { text: String },
}

impl From<ExplainError> for StageError {
    fn from(error: ExplainError) -> Self {
        StageError::new(error)
    }
}

impl From<crate::ml::MlError> for ExplainError {
    fn from(error: crate::ml::MlError) -> Self {
        ExplainError::Stages(error.into())
    }
}

impl From<crate::data::DataError> for ExplainError {
    fn from(error: crate::data::DataError) -> Self {
        ExplainError::Stages(error.into())
    }
}

/// A trained classifier with its tokenizer and label names, ready to explain texts.
pub struct Explainer {
    classifier: Arc<Classifier>,
    tokenizer: Arc<Tokenizer>,
    tokenizer_path: PathBuf,
    pub labels: Vec<String>,
    attribution: Attribution,
}

/// One explained text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextExplanation {
    pub text: String,
    pub words: Vec<String>,
    /// One per word, in the explained class's probability.
    pub scores: Vec<f32>,
    /// The explained class (the predicted one).
    pub prediction: String,
    pub probability: f32,
    pub completeness_gap: Option<f32>,
    /// Token positions of each word (for faithfulness edits; not written).
    #[serde(skip)]
    word_tokens: Vec<Range<usize>>,
    #[serde(skip)]
    ids: Vec<u32>,
    #[serde(skip)]
    target: usize,
}

impl Explainer {
    /// Loads the trained model in `dir` with `labels` as the class names; its tokenizer
    /// truncates at `max_length` (default: the model's `max_position_embeddings`).
    pub fn load(
        dir: &Path,
        labels: Vec<String>,
        max_length: Option<usize>,
        settings: &Explain,
    ) -> Result<Self, ExplainError> {
        let classifier = Classifier::load_trained(dir, DeviceChoice::Auto)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let max_length = max_length.unwrap_or(classifier.config().max_position_embeddings);
        let tokenizer = load_tokenizer(&tokenizer_path, max_length)?;
        Self::new(
            Arc::new(classifier),
            Arc::new(tokenizer),
            tokenizer_path,
            labels,
            settings,
        )
    }

    /// Explains with an opened deploy bundle's model and label names (`id2label`), sharing
    /// its weights: cheap enough to make one per request.
    pub fn from_bundle(bundle: &Bundle, settings: &Explain) -> Result<Self, ExplainError> {
        let (classifier, tokenizer, tokenizer_path) = bundle.model();
        Self::new(
            classifier,
            tokenizer,
            tokenizer_path.to_path_buf(),
            bundle.labels().to_vec(),
            settings,
        )
    }

    fn new(
        classifier: Arc<Classifier>,
        tokenizer: Arc<Tokenizer>,
        tokenizer_path: PathBuf,
        labels: Vec<String>,
        settings: &Explain,
    ) -> Result<Self, ExplainError> {
        let baseline = match settings.baseline {
            ExplainBaseline::Pad => Baseline::Token(classifier.config().pad_token_id),
            ExplainBaseline::Mask => {
                Baseline::Token(tokenizer.token_to_id("[MASK]").ok_or_else(|| {
                    ExplainError::NoMaskToken {
                        path: tokenizer_path.clone(),
                    }
                })?)
            }
            ExplainBaseline::Zero => Baseline::Zero,
        };
        let attribution = match settings.method {
            ExplainMethod::IntegratedGradients => Attribution::IntegratedGradients {
                steps: settings.steps,
                baseline,
            },
            ExplainMethod::GradientTimesInput => Attribution::GradientTimesInput,
            ExplainMethod::Occlusion => Attribution::Occlusion,
        };
        Ok(Self {
            classifier,
            tokenizer,
            tokenizer_path,
            labels,
            attribution,
        })
    }

    /// The model at `target`: a deploy bundle (verified against its manifest first; label
    /// names from its `id2label`), or a trained model (a `train` output or its `model/`
    /// directory; label names from its `config.json`'s `id2label`, else `LABEL_i`).
    pub fn load_target(target: &Path, settings: &Explain) -> Result<Self, ExplainError> {
        if target.join(MANIFEST).is_file() {
            let bundle = Bundle::open(target, DeviceChoice::Auto, None)?;
            return Self::from_bundle(&bundle, settings);
        }
        let dir = [target.to_path_buf(), target.join(TRAINED_MODEL_DIR)]
            .into_iter()
            .find(|dir| dir.join(TRAINED_MARKER).is_file())
            .ok_or_else(|| ExplainError::NotAModel {
                path: target.to_path_buf(),
            })?;
        let config_path = dir.join("config.json");
        let config: serde_json::Value = std::fs::read_to_string(&config_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let mut explainer = Self::load(&dir, Vec::new(), None, settings)?;
        explainer.labels = (0..explainer.classifier.num_labels())
            .map(|class| {
                config["id2label"][class.to_string()]
                    .as_str()
                    .map_or_else(|| format!("LABEL_{class}"), str::to_owned)
            })
            .collect();
        Ok(explainer)
    }

    pub fn explain(&self, text: &str) -> Result<TextExplanation, ExplainError> {
        let pieces = encode_words(&self.tokenizer, &self.tokenizer_path, text)?;
        if pieces.words.is_empty() {
            return Err(ExplainError::NoWords {
                text: text.to_owned(),
            });
        }
        let word_tokens: Vec<Range<usize>> = pieces
            .words
            .iter()
            .map(|word| word.tokens.clone())
            .collect();
        let explanation = crate::ml::explain(
            &self.classifier,
            &pieces.ids,
            &word_tokens,
            None,
            self.attribution,
        )?;
        let target = explanation.target;
        Ok(TextExplanation {
            text: text.to_owned(),
            words: pieces.words.into_iter().map(|word| word.text).collect(),
            scores: explanation.scores,
            prediction: self.label(target),
            probability: explanation.probabilities[target],
            completeness_gap: explanation.completeness_gap,
            word_tokens,
            ids: pieces.ids,
            target,
        })
    }

    fn label(&self, class: usize) -> String {
        self.labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{class}"))
    }

    /// ERASER's comprehensiveness and sufficiency of `explanation`'s top-k words and of
    /// [`RANDOM_DRAWS`] random k-word sets (seeded by `seed`); `None` for fewer than 2 words
    /// (removing the only word leaves nothing to classify).
    pub fn faithfulness(
        &self,
        explanation: &TextExplanation,
        seed: u64,
    ) -> Result<Option<Faithfulness>, ExplainError> {
        let words = explanation.words.len();
        if words < 2 {
            return Ok(None);
        }
        let k = ((words as f64 * TOP_FRACTION).ceil() as usize).clamp(1, words - 1);
        let mut order: Vec<usize> = (0..words).collect();
        order.sort_by(|a, b| explanation.scores[*b].total_cmp(&explanation.scores[*a]));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut chosen = vec![order[..k].to_vec()];
        for _ in 0..RANDOM_DRAWS {
            chosen.push(rand::seq::index::sample(&mut rng, words, k).into_vec());
        }
        // Per chosen set: the input without those words, then the input with only them.
        let mut keeps = Vec::with_capacity(2 * chosen.len() + 1);
        keeps.push(vec![true; explanation.ids.len()]);
        for set in &chosen {
            let in_set = |position: usize| {
                set.iter()
                    .any(|&word| explanation.word_tokens[word].contains(&position))
            };
            let in_any_word = |position: usize| {
                explanation
                    .word_tokens
                    .iter()
                    .any(|word| word.contains(&position))
            };
            keeps.push((0..explanation.ids.len()).map(|p| !in_set(p)).collect());
            keeps.push(
                (0..explanation.ids.len())
                    .map(|p| in_set(p) || !in_any_word(p))
                    .collect(),
            );
        }
        let rows = edited_probabilities(&self.classifier, &explanation.ids, &keeps)?;
        let target = explanation.target;
        let drop = |row: usize| f64::from(rows[0][target] - rows[row][target]);
        let random = |offset: usize| {
            (1..=RANDOM_DRAWS)
                .map(|draw| drop(1 + 2 * draw + offset))
                .sum::<f64>()
                / RANDOM_DRAWS as f64
        };
        Ok(Some(Faithfulness {
            k,
            comprehensiveness: drop(1),
            sufficiency: drop(2),
            comprehensiveness_random: random(0),
            sufficiency_random: random(1),
        }))
    }
}

/// ERASER's faithfulness of one explanation (probability drops of the predicted class).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Faithfulness {
    /// How many words were removed or kept.
    pub k: usize,
    pub comprehensiveness: f64,
    pub sufficiency: f64,
    pub comprehensiveness_random: f64,
    pub sufficiency_random: f64,
}

/// One line of `explanations.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedExample {
    /// Position in the split.
    pub index: usize,
    #[serde(flatten)]
    pub explanation: TextExplanation,
    pub label: String,
    pub faithfulness: Option<Faithfulness>,
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainMetrics {
    #[serde(flatten)]
    pub settings: Explain,
    pub explained: usize,
    /// The headline metrics (also in the lock file).
    pub metrics: BTreeMap<String, f64>,
}

pub struct ExplainRunner;

impl StageRunner for ExplainRunner {
    fn run(&self, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let StageSettings::Explain(settings) = &ctx.stage.settings else {
            return Err(wrong_runner(ctx, "explain").into());
        };
        let model_dir = input_dir(ctx, InputSlot::Model)?.join(TRAINED_MODEL_DIR);
        let data_dir = input_dir(ctx, InputSlot::Data)?;
        let metrics = run_explain(&model_dir, &data_dir, settings, ctx.out_dir, ctx.log)?;
        Ok(StageOutcome { metrics })
    }
}

/// Explains the split's first `settings.examples` examples into `out_dir`; returns the
/// headline metrics.
pub fn run_explain(
    model_dir: &Path,
    data_dir: &Path,
    settings: &Explain,
    out_dir: &Path,
    log: &(dyn Fn(&str) + Sync),
) -> Result<BTreeMap<String, f64>, ExplainError> {
    let dataset = Dataset::load(data_dir)?;
    let split = settings.split;
    let data = split_of(&dataset, split)?;
    let texts = read_texts(data_dir, split, data.len())?;
    let explainer = Explainer::load(
        model_dir,
        dataset.info.labels.clone(),
        Some(dataset.info.max_length),
        settings,
    )?;
    let started = std::time::Instant::now();
    let mut examples = Vec::new();
    for (index, text) in texts.iter().take(settings.examples).enumerate() {
        let explanation = explainer.explain(text)?;
        let faithfulness = explainer.faithfulness(&explanation, index as u64)?;
        let label = data
            .labels
            .get(index)
            .map_or_else(String::new, |&label| explainer.label(label as usize));
        examples.push(ExplainedExample {
            index,
            explanation,
            label,
            faithfulness,
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    log(&format!(
        "explained {} examples of `{}` in {seconds:.1} s ({:.2} s per example)",
        examples.len(),
        split.as_str(),
        seconds / examples.len().max(1) as f64
    ));
    let metrics = headline(&examples);
    let mut jsonl = String::new();
    for example in &examples {
        jsonl.push_str(
            &serde_json::to_string(example).map_err(|error| MlStageError::Write {
                path: out_dir.join("explanations.jsonl"),
                source: std::io::Error::other(error),
            })?,
        );
        jsonl.push('\n');
    }
    write_bytes(&out_dir.join("explanations.jsonl"), jsonl.as_bytes())?;
    write_bytes(
        &out_dir.join("report.html"),
        render_report(&examples, &explainer.labels, settings, &metrics).as_bytes(),
    )?;
    write_json(
        &out_dir.join("metrics.json"),
        &ExplainMetrics {
            settings: settings.clone(),
            explained: examples.len(),
            metrics: metrics.clone(),
        },
    )?;
    log(&metrics
        .iter()
        .map(|(name, value)| format!("{name} {value:.4}"))
        .collect::<Vec<_>>()
        .join(", "));
    Ok(metrics)
}

/// Means over the examples; a metric no example has (the completeness gap of occlusion) is
/// left out rather than reported as 0.
fn headline(examples: &[ExplainedExample]) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    let mut mean = |name: &str, values: Vec<f64>| {
        if !values.is_empty() {
            metrics.insert(
                name.to_owned(),
                values.iter().sum::<f64>() / values.len() as f64,
            );
        }
    };
    mean(
        "completeness_gap",
        examples
            .iter()
            .filter_map(|e| e.explanation.completeness_gap.map(f64::from))
            .collect(),
    );
    let faithful: Vec<Faithfulness> = examples.iter().filter_map(|e| e.faithfulness).collect();
    let field = |read: fn(&Faithfulness) -> f64| faithful.iter().map(read).collect();
    mean("comprehensiveness", field(|f| f.comprehensiveness));
    mean(
        "comprehensiveness_random",
        field(|f| f.comprehensiveness_random),
    );
    mean("sufficiency", field(|f| f.sufficiency));
    mean("sufficiency_random", field(|f| f.sufficiency_random));
    metrics
}
