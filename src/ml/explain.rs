//! Attributions of a classifier's prediction to the words of one input: integrated gradients
//! and gradient × input on the word embeddings, and occlusion (leave one word out), plus the
//! probabilities of edited inputs that faithfulness checks (ERASER) need.
//!
//! Contract:
//! - The caller groups token positions into words (`words`: one token range per word, from the
//!   tokenizer's offsets); tokens outside every word (`[CLS]`, `[SEP]`) are never attributed,
//!   keep their embedding in the baseline and are never removed.
//! - The explained quantity is the probability of the target class (the predicted one unless
//!   given), so integrated gradients' attributions add up to `p(x) − p(baseline)` and occlusion
//!   reads as a probability drop: the three methods are on one scale.
//! - Gradients run through a differentiable `Ctx` without dropout: candle's fused LayerNorm and
//!   softmax have no backward pass and would silently give zero gradients (docs/design.md §1.1).
//! - A trained LoRA/IA3 model is explained as exported: its adapters are merged into the weights.

use std::ops::Range;

use candle_core::{DType, Tensor, Var, D};

use super::classifier::{Batch, Classifier};
use super::encoder::Ctx;
use super::error::{MlError, Result};

/// Rows × tokens per forward pass: the interpolation steps of one example, or the edited
/// copies of one input, are batched up to this many tokens (bounded memory, full GEMMs).
const TOKEN_BUDGET: usize = 4096;

/// The input integrated gradients integrates from, at every word position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The embedding of this token (the pad or mask token).
    Token(u32),
    /// The zero vector.
    Zero,
}

/// How to attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// Midpoint Riemann sum over `steps` points of the straight path from the baseline.
    IntegratedGradients {
        steps: usize,
        baseline: Baseline,
    },
    GradientTimesInput,
    /// The target probability's drop when the word is removed from the input.
    Occlusion,
}

/// One input's attributions.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// One score per word, in the target probability's units.
    pub scores: Vec<f32>,
    /// Class probabilities of the unedited input.
    pub probabilities: Vec<f32>,
    /// The explained class.
    pub target: usize,
    /// Integrated gradients only: `|Σ scores − (p(x) − p(baseline))| / |p(x) − p(baseline)|`;
    /// `None` for the other methods, or when the baseline's probability is within 1e-4 of the
    /// input's (the ratio would only measure rounding).
    pub completeness_gap: Option<f32>,
}

/// Attributes `classifier`'s probability of `target` (default: the predicted class) for the
/// token sequence `ids` to its `words`.
pub fn explain(
    classifier: &Classifier,
    ids: &[u32],
    words: &[Range<usize>],
    target: Option<usize>,
    method: Attribution,
) -> Result<Explanation> {
    check_input(classifier, ids, words)?;
    let device = classifier.device();
    let input_ids = Tensor::from_slice(ids, (1, ids.len()), device)?;
    let input = classifier.encoder().word_embeddings(&input_ids)?.detach();
    let probabilities = probabilities_of(classifier, &input)?.remove(0);
    let target = match target {
        Some(class) if class >= probabilities.len() => {
            return Err(MlError::BadBatch {
                reason: format!(
                    "class {class} does not exist: the model has {} classes",
                    probabilities.len()
                ),
            })
        }
        Some(class) => class,
        None => argmax(&probabilities),
    };
    let (token_scores, completeness_gap) = match method {
        Attribution::IntegratedGradients { steps, baseline } => {
            let start = baseline_embeddings(classifier, ids, words, &input, baseline)?;
            let scores = integrated_gradients(classifier, &input, &start, target, steps)?;
            let delta = probabilities[target] - probabilities_of(classifier, &start)?[0][target];
            let sum: f32 = scores.iter().sum();
            let gap = (delta.abs() >= 1e-4).then(|| (sum - delta).abs() / delta.abs());
            (scores, gap)
        }
        Attribution::GradientTimesInput => {
            let gradient = target_gradient(classifier, &input, target)?;
            (per_token(&(gradient * &input)?)?, None)
        }
        Attribution::Occlusion => {
            let keeps: Vec<Vec<bool>> = words
                .iter()
                .map(|word| (0..ids.len()).map(|i| !word.contains(&i)).collect())
                .collect();
            let edited = edited_probabilities(classifier, ids, &keeps)?;
            let scores = edited
                .iter()
                .map(|row| probabilities[target] - row[target])
                .collect();
            return Ok(Explanation {
                scores,
                probabilities,
                target,
                completeness_gap: None,
            });
        }
    };
    let scores = words
        .iter()
        .map(|word| token_scores[word.clone()].iter().sum())
        .collect();
    Ok(Explanation {
        scores,
        probabilities,
        target,
        completeness_gap,
    })
}

/// Class probabilities of copies of `ids` that keep only the tokens whose `keeps` entry is
/// true (one row per mask, in order): removed tokens are deleted, not masked, as ERASER's
/// comprehensiveness and sufficiency do. Each mask must keep at least one token.
pub fn edited_probabilities(
    classifier: &Classifier,
    ids: &[u32],
    keeps: &[Vec<bool>],
) -> Result<Vec<Vec<f32>>> {
    let sequences: Vec<Vec<u32>> = keeps
        .iter()
        .map(|keep| {
            ids.iter()
                .zip(keep)
                .filter(|(_, kept)| **kept)
                .map(|(id, _)| *id)
                .collect()
        })
        .collect();
    let pad = classifier.config().pad_token_id;
    let rows = (TOKEN_BUDGET / ids.len().max(1)).max(1);
    let mut out = Vec::with_capacity(sequences.len());
    for chunk in sequences.chunks(rows) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        out.extend(classifier.probabilities(&Batch::new(&refs, &[], pad)?)?);
    }
    Ok(out)
}

fn check_input(classifier: &Classifier, ids: &[u32], words: &[Range<usize>]) -> Result<()> {
    let vocab = classifier.config().vocab_size;
    let problem = if ids.is_empty() {
        Some("the input has no tokens".to_owned())
    } else if let Some(id) = ids.iter().find(|id| **id as usize >= vocab) {
        Some(format!(
            "token id {id} is outside the vocabulary of {vocab}"
        ))
    } else {
        words
            .iter()
            .find(|word| word.is_empty() || word.end > ids.len())
            .map(|word| format!("word tokens {word:?} are outside the {} tokens", ids.len()))
    };
    match problem {
        Some(reason) => Err(MlError::BadBatch { reason }),
        None => Ok(()),
    }
}

/// `input` `[1, t, hidden]` with every word position replaced by the baseline's vector.
fn baseline_embeddings(
    classifier: &Classifier,
    ids: &[u32],
    words: &[Range<usize>],
    input: &Tensor,
    baseline: Baseline,
) -> Result<Tensor> {
    let device = classifier.device();
    let in_word: Vec<f32> = (0..ids.len())
        .map(|i| f32::from(u8::from(words.iter().any(|word| word.contains(&i)))))
        .collect();
    let in_word = Tensor::from_vec(in_word, (1, ids.len(), 1), device)?;
    let replacement = match baseline {
        Baseline::Token(id) => {
            let filled = Tensor::from_vec(vec![id; ids.len()], (1, ids.len()), device)?;
            classifier.encoder().word_embeddings(&filled)?.detach()
        }
        Baseline::Zero => input.zeros_like()?,
    };
    // input + in_word · (replacement − input): special tokens keep their embedding.
    Ok((input + (replacement - input)?.broadcast_mul(&in_word)?)?)
}

/// Per-token integrated gradients: the path-averaged gradient · (input − start), summed over
/// the hidden dimension. The steps are batched, `TOKEN_BUDGET` tokens per backward pass.
fn integrated_gradients(
    classifier: &Classifier,
    input: &Tensor,
    start: &Tensor,
    target: usize,
    steps: usize,
) -> Result<Vec<f32>> {
    let steps = steps.max(1);
    let (_, tokens, hidden) = input.dims3()?;
    let difference = (input - start)?;
    let rows = (TOKEN_BUDGET / tokens).clamp(1, steps);
    let mut gradient_sum = Tensor::zeros((tokens, hidden), DType::F32, classifier.device())?;
    for first in (0..steps).step_by(rows) {
        let count = rows.min(steps - first);
        let alphas: Vec<f32> = (first..first + count)
            .map(|k| (k as f32 + 0.5) / steps as f32)
            .collect();
        let alphas = Tensor::from_vec(alphas, (count, 1, 1), classifier.device())?;
        let points = start.broadcast_add(&difference.broadcast_mul(&alphas)?)?;
        gradient_sum = (gradient_sum + target_gradient(classifier, &points, target)?.sum(0)?)?;
    }
    let mean = (gradient_sum / steps as f64)?;
    per_token(&mean.unsqueeze(0)?.mul(&difference)?)
}

/// `[1, t, hidden]` → the `t` sums over the hidden dimension.
fn per_token(products: &Tensor) -> Result<Vec<f32>> {
    Ok(products.sum(D::Minus1)?.squeeze(0)?.to_vec1::<f32>()?)
}

/// The gradient of `Σ_rows p(target)` w.r.t. word embeddings `[rows, t, hidden]`: each row's
/// gradient of its own probability, since the rows do not interact.
fn target_gradient(classifier: &Classifier, words: &Tensor, target: usize) -> Result<Tensor> {
    let leaf = Var::from_tensor(words)?;
    let probabilities = forward_words(classifier, leaf.as_tensor())?;
    let objective = probabilities.narrow(1, target, 1)?.sum_all()?;
    let gradients = objective.backward()?;
    match gradients.get(leaf.as_tensor()) {
        Some(gradient) => Ok(gradient.clone()),
        // No path from the words to the output (a degenerate model): every gradient is zero.
        None => Ok(words.zeros_like()?),
    }
}

/// Class probabilities `[rows, classes]` of word embeddings `[rows, t, hidden]` (no padding).
fn forward_words(classifier: &Classifier, words: &Tensor) -> Result<Tensor> {
    let (rows, tokens, _) = words.dims3()?;
    let mut ctx = Ctx {
        differentiable: true,
        dropout: None,
        attentions: None,
    };
    let mask = Tensor::ones((rows, tokens), DType::F32, words.device())?;
    let embeddings = classifier.encoder().embed_words(words, &mut ctx)?;
    let logits = classifier.forward_embeddings(&embeddings, &mask, &mut ctx)?;
    Ok(candle_nn::ops::softmax(&logits, D::Minus1)?)
}

fn probabilities_of(classifier: &Classifier, words: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(forward_words(classifier, words)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(index, _)| index)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::ml::config::EncoderConfig;
    use crate::ml::fixtures::{write_random_model, NameStyle};
    use crate::ml::{DeviceChoice, Trainer};
    use crate::model::stages::Configure;

    /// The key token: present in a sequence of the positive class, [`NEGATIVE`] in the others.
    const POSITIVE: u32 = 40;
    const NEGATIVE: u32 = 41;

    /// `[CLS]`, four filler tokens (10..30) with the key token at position `1 + i % 4`, `[SEP]`.
    fn sequence(i: usize, key: u32) -> Vec<u32> {
        let mut ids = vec![2];
        for j in 0..4 {
            ids.push(10 + ((i * 7 + j * 13) % 20) as u32);
        }
        ids[1 + i % 4] = key;
        ids.push(3);
        ids
    }

    fn single_token_words(ids: &[u32]) -> Vec<Range<usize>> {
        (1..ids.len() - 1).map(|i| i..i + 1).collect()
    }

    fn configure() -> Configure {
        serde_json::from_value(serde_json::json!({
            "learning_rate": 3e-3, "epochs": 1, "batch_size": 16, "weight_decay": 0.0,
            "seed": 5, "dropout": 0.0, "warmup_ratio": 0.0,
        }))
        .expect("valid settings")
    }

    /// A tiny BERT trained until only the key token decides the class, exported as `train`
    /// does; trained once for all tests (a second or two).
    fn key_token_model() -> &'static std::path::Path {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let base = dir.path().join("base");
            write_random_model(&base, &EncoderConfig::tiny_bert(), 3, NameStyle::Plain)
                .expect("random model");
            let classifier =
                Classifier::new(&base, 2, &configure(), DeviceChoice::Cpu).expect("classifier");
            let steps = 60;
            let mut trainer = Trainer::new(classifier, &configure(), steps).expect("trainer");
            for step in 0..steps {
                let examples: Vec<(Vec<u32>, u32)> = (0..16)
                    .map(|row| {
                        let i = step * 16 + row;
                        let label = u32::from(i % 2 == 0);
                        (
                            sequence(i, if label == 1 { POSITIVE } else { NEGATIVE }),
                            label,
                        )
                    })
                    .collect();
                let ids: Vec<&[u32]> = examples.iter().map(|(ids, _)| ids.as_slice()).collect();
                let labels: Vec<u32> = examples.iter().map(|(_, label)| *label).collect();
                trainer
                    .step(&Batch::new(&ids, &labels, 0).expect("batch"))
                    .expect("step");
            }
            trainer.export(&dir.path().join("trained")).expect("export");
            dir
        })
        .path()
    }

    fn trained() -> Classifier {
        Classifier::load_trained(&key_token_model().join("trained"), DeviceChoice::Cpu)
            .expect("trained model")
    }

    #[test]
    fn integrated_gradients_are_complete_within_5_percent_at_64_steps() {
        let classifier = trained();
        for i in 0..4 {
            let ids = sequence(i, if i % 2 == 0 { POSITIVE } else { NEGATIVE });
            let explanation = explain(
                &classifier,
                &ids,
                &single_token_words(&ids),
                None,
                Attribution::IntegratedGradients {
                    steps: 64,
                    baseline: Baseline::Token(0),
                },
            )
            .expect("explanation");
            let gap = explanation.completeness_gap.expect("p(x) ≠ p(baseline)");
            assert!(gap < 0.05, "example {i}: completeness gap {gap}");
        }
    }

    /// Only the key token decides the class: every method ranks it first, and occlusion and
    /// gradient × input agree on its sign (it supports the predicted class).
    #[test]
    fn the_token_that_decides_gets_the_largest_attribution() {
        let classifier = trained();
        for i in 0..4 {
            let ids = sequence(i, POSITIVE);
            let words = single_token_words(&ids);
            let key = i % 4;
            let mut signs = Vec::new();
            for method in [
                Attribution::IntegratedGradients {
                    steps: 32,
                    baseline: Baseline::Zero,
                },
                Attribution::GradientTimesInput,
                Attribution::Occlusion,
            ] {
                let explanation = explain(&classifier, &ids, &words, None, method).expect("runs");
                assert_eq!(explanation.target, 1, "the model learned the task");
                let top = argmax(
                    &explanation
                        .scores
                        .iter()
                        .map(|s| s.abs())
                        .collect::<Vec<_>>(),
                );
                assert_eq!(top, key, "{method:?}: {:?}", explanation.scores);
                signs.push(explanation.scores[key] > 0.0);
            }
            assert_eq!(
                signs[1], signs[2],
                "gradient × input and occlusion disagree"
            );
        }
    }

    /// A LoRA model is explained as trained: the exported model (adapters merged) gives the
    /// attributions of the in-memory one (adapters applied in the forward pass).
    #[test]
    fn lora_models_are_explained_as_trained() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("base");
        write_random_model(&base, &EncoderConfig::tiny_bert(), 4, NameStyle::Plain)
            .expect("random model");
        let mut settings = configure();
        settings.method = crate::model::stages::Method::Lora {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec!["query".to_owned(), "value".to_owned()],
        };
        let classifier = Classifier::new(&base, 2, &settings, DeviceChoice::Cpu).expect("LoRA");
        let mut trainer = Trainer::new(classifier, &settings, 10).expect("trainer");
        let ids: Vec<Vec<u32>> = (0..8)
            .map(|i| sequence(i, POSITIVE + (i % 2) as u32))
            .collect();
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let labels: Vec<u32> = (0..8).map(|i| (i % 2) as u32).collect();
        for _ in 0..10 {
            trainer
                .step(&Batch::new(&refs, &labels, 0).expect("batch"))
                .expect("step");
        }
        // The adapters moved away from their zero start, so merging them matters.
        let lora_b = trainer
            .classifier()
            .trainable_tensors()
            .expect("tensors")
            .into_iter()
            .filter(|(name, _)| name.contains("lora_B"))
            .map(|(_, tensor)| tensor.abs()?.max_all()?.to_scalar::<f32>())
            .collect::<candle_core::Result<Vec<f32>>>()
            .expect("values");
        assert!(lora_b.iter().any(|m| *m > 1e-3), "{lora_b:?}");
        trainer.export(&dir.path().join("trained")).expect("export");
        let exported = Classifier::load_trained(&dir.path().join("trained"), DeviceChoice::Cpu)
            .expect("trained model");
        let method = Attribution::IntegratedGradients {
            steps: 16,
            baseline: Baseline::Token(0),
        };
        let words = single_token_words(&ids[0]);
        let live = explain(trainer.classifier(), &ids[0], &words, Some(1), method).expect("runs");
        let merged = explain(&exported, &ids[0], &words, Some(1), method).expect("runs");
        for (a, b) in live.scores.iter().zip(&merged.scores) {
            assert!(
                (a - b).abs() < 1e-4,
                "{:?} vs {:?}",
                live.scores,
                merged.scores
            );
        }
    }

    #[test]
    fn edits_delete_tokens_and_bad_input_is_an_error() {
        let classifier = trained();
        let ids = sequence(0, POSITIVE);
        let all = vec![true; ids.len()];
        let mut without_key = all.clone();
        without_key[1] = false;
        let rows = edited_probabilities(&classifier, &ids, &[all, without_key]).expect("runs");
        let direct = classifier
            .probabilities(&Batch::new(&[&ids], &[], 0).expect("batch"))
            .expect("runs");
        assert!((rows[0][1] - direct[0][1]).abs() < 1e-5);
        assert!(rows[1][1] < rows[0][1], "removing the key lowers p(pos)");
        let words = single_token_words(&ids);
        assert!(explain(&classifier, &ids, &words, Some(2), Attribution::Occlusion).is_err());
        let past_the_end = vec![Range { start: 0, end: 9 }];
        assert!(explain(
            &classifier,
            &ids,
            &past_the_end,
            None,
            Attribution::Occlusion
        )
        .is_err());
        assert!(explain(&classifier, &[2, 500, 3], &[], None, Attribution::Occlusion).is_err());
    }
}
