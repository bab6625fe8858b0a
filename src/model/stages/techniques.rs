//! `configure` settings for training techniques beyond plain fine-tuning (issue 13): label
//! smoothing, layer-wise learning-rate decay, R-Drop, typo consistency, adversarial training
//! (FGM, PGD) and knowledge distillation. Each is absent by default and then serializes to nothing, so the
//! stage keys of pipelines that do not use them are unchanged.

use serde::{Deserialize, Serialize};

use super::configure::{Configure, Problem};

/// `rdrop:` two dropout passes per batch; the loss is the mean cross-entropy of both plus
/// `alpha` times their symmetric KL divergence (Liang et al. 2021).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RDrop {
    pub alpha: f64,
}

/// `consistency:` each batch also runs on a copy of its texts with typos (fresh ones every
/// epoch); the loss is the mean cross-entropy of both passes plus `alpha` times their
/// symmetric KL, so the model learns to give a text with typos the prediction of the clean
/// one (R-Drop's loss, with the second pass on the perturbed copy).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    /// Each letter of the copy gets a keyboard typo with this probability (as `augment.typo`
    /// and `robustness.typo`).
    pub typo: f64,
    #[serde(default = "default_consistency_alpha")]
    pub alpha: f64,
    /// Typo copies drawn per example and batch; the one the model currently gets most wrong
    /// (highest cross-entropy) is trained on: adversarial typos, a discrete analogue of PGD.
    /// 1 (the default) trains on a random copy.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub candidates: usize,
    /// What pulls the two passes together.
    #[serde(default, skip_serializing_if = "ConsistencyTerm::is_kl")]
    pub term: ConsistencyTerm,
    /// Which passes the labels train.
    #[serde(default, skip_serializing_if = "LabelLoss::is_both")]
    pub label_loss: LabelLoss,
}

/// `consistency.label_loss`: which passes the cross-entropy with the labels is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelLoss {
    /// The mean cross-entropy of the clean and the typo pass (R-Drop's loss).
    #[default]
    Both,
    /// The clean pass only: the typo copy is pulled toward the clean prediction by the term
    /// and never toward the label (TRADES's split of accuracy and robustness). A worst-of-k
    /// copy may have lost the very word that carries the label; fitting the label on it
    /// teaches the model to read noise, which costs clean accuracy.
    Clean,
}

impl LabelLoss {
    fn is_both(&self) -> bool {
        *self == LabelLoss::Both
    }
}

/// `consistency.term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyTerm {
    /// The symmetric KL of the two passes' predictions (R-Drop's term).
    #[default]
    Kl,
    /// `1 − cos` between the typo copy's sentence vector and the clean one's, the clean one
    /// held fixed: the encoder learns to map a text with typos where the clean text goes (with
    /// two labels, matching predictions constrains one number per text; matching the sentence
    /// vector constrains all of its dimensions).
    Cosine,
}

impl ConsistencyTerm {
    fn is_kl(&self) -> bool {
        *self == ConsistencyTerm::Kl
    }
}

fn default_consistency_alpha() -> f64 {
    1.0
}
fn one() -> usize {
    1
}
fn is_one(value: &usize) -> bool {
    *value == 1
}

/// `adversarial:` a perturbation of the word embeddings (the lookup's output, before
/// positions and LayerNorm) that raises the loss, whose loss is added to the clean one.
/// One flat block, so each wrong value is reported at its own place (as `method:`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adversarial {
    pub method: AdversarialMethod,
    /// L2 bound of the perturbation of one batch's word embeddings.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// PGD's step size (required for `pgd`, refused for `fgm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// PGD's number of ascent steps (required for `pgd`, refused for `fgm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdversarialMethod {
    /// Fast Gradient Method (Miyato et al. 2017): one step of size epsilon along the gradient.
    Fgm,
    /// Projected Gradient Descent (Madry et al. 2018): `steps` steps of size `alpha`, each
    /// projected back onto the epsilon ball.
    Pgd,
}

fn default_epsilon() -> f64 {
    1.0
}

/// `distillation:` the loss is `(1 − weight) · CE(labels) + weight · T² · KL(softmax(t/T) ‖
/// softmax(s/T))` with the logits `t` of the `train` stage's `teacher` input (Hinton et al.
/// 2015).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distillation {
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_distillation_weight")]
    pub weight: f64,
}

fn default_temperature() -> f64 {
    2.0
}
fn default_distillation_weight() -> f64 {
    0.5
}

/// Pushes a [`Problem`] unless `ok`: the one way `configure`'s rules are written.
pub(super) fn check(
    problems: &mut Vec<Problem>,
    ok: bool,
    field: &str,
    message: &str,
    label: &'static str,
    help: &str,
) {
    if !ok {
        problems.push(Problem {
            field: field.to_owned(),
            message: message.to_owned(),
            label,
            help: help.to_owned(),
        });
    }
}

/// Whether `value` is a finite number above 0 (NaN fails).
fn positive(value: f64) -> bool {
    value > 0.0 && value.is_finite()
}

/// The rules of the technique settings (see [`Configure::problems`]).
pub(super) fn technique_problems(configure: &Configure, problems: &mut Vec<Problem>) {
    if let Some(smoothing) = configure.label_smoothing {
        check(
            problems,
            (0.0..1.0).contains(&smoothing),
            "label_smoothing",
            "must be in [0, 1)",
            "out of range",
            "0.1 is typical",
        );
    }
    if let Some(decay) = configure.layer_decay {
        check(
            problems,
            decay > 0.0 && decay <= 1.0,
            "layer_decay",
            "must be in (0, 1]",
            "out of range",
            "0.8 to 0.95 is typical; 1 means no decay",
        );
    }
    if let Some(rdrop) = &configure.rdrop {
        check(
            problems,
            positive(rdrop.alpha),
            "rdrop.alpha",
            "must be a finite positive number",
            "out of range",
            "the R-Drop paper uses 0.1 to 5; 1.0 is a start",
        );
        check(
            problems,
            configure.dropout > 0.0,
            "rdrop",
            "needs `dropout` above 0: with no dropout both passes are the same",
            "two identical passes",
            "set `dropout: 0.1`, or remove `rdrop`",
        );
    }
    if let Some(rate) = configure.subword_dropout {
        check(
            problems,
            rate > 0.0 && rate <= 0.5,
            "subword_dropout",
            "must be in (0, 0.5]",
            "out of range",
            "the chance that a word piece splits; BPE-dropout uses 0.1",
        );
    }
    if let Some(consistency) = &configure.consistency {
        check(
            problems,
            consistency.typo > 0.0 && consistency.typo < 0.5,
            "consistency.typo",
            "must be in (0, 0.5)",
            "out of range",
            "the share of letters with a typo; evaluate's `robustness.typo` rate (e.g. 0.05) is a start",
        );
        check(
            problems,
            positive(consistency.alpha),
            "consistency.alpha",
            "must be a finite positive number",
            "out of range",
            "the weight of the KL term; 1.0 is a start",
        );
        check(
            problems,
            (1..=16).contains(&consistency.candidates),
            "consistency.candidates",
            "must be from 1 to 16",
            "out of range",
            "each candidate costs an inference pass per batch; 4 is a start, 1 draws one copy",
        );
        check(
            problems,
            configure.rdrop.is_none(),
            "consistency",
            "cannot be combined with `rdrop`: both add a second pass to every batch",
            "second pass taken twice",
            "keep one of `rdrop` and `consistency`",
        );
    }
    if let Some(adversarial) = &configure.adversarial {
        check(
            problems,
            positive(adversarial.epsilon),
            "adversarial.epsilon",
            "must be a finite positive number",
            "out of range",
            "1.0 is the usual FGM/PGD bound on the batch's word embeddings",
        );
        match adversarial.method {
            AdversarialMethod::Fgm => {
                for (field, given) in [
                    ("adversarial.alpha", adversarial.alpha.is_some()),
                    ("adversarial.steps", adversarial.steps.is_some()),
                ] {
                    check(
                        problems,
                        !given,
                        field,
                        "is a setting of `pgd`, not of `fgm`",
                        "not a setting of fgm",
                        "remove it, or use `method: pgd`",
                    );
                }
            }
            AdversarialMethod::Pgd => {
                check(
                    problems,
                    adversarial.alpha.is_some_and(positive),
                    "adversarial.alpha",
                    "`pgd` needs a finite positive step size `alpha`",
                    "missing or out of range",
                    "e.g. `alpha: 0.3` (a third of `epsilon`)",
                );
                check(
                    problems,
                    adversarial.steps.is_some_and(|steps| steps > 0),
                    "adversarial.steps",
                    "`pgd` needs `steps` of at least 1",
                    "missing or zero",
                    "e.g. `steps: 3`",
                );
            }
        }
    }
    if let Some(distillation) = &configure.distillation {
        check(
            problems,
            positive(distillation.temperature),
            "distillation.temperature",
            "must be a finite positive number",
            "out of range",
            "1 to 4 is typical; 2.0 is a start",
        );
        check(
            problems,
            (0.0..=1.0).contains(&distillation.weight),
            "distillation.weight",
            "must be in [0, 1]",
            "out of range",
            "the share of the teacher's loss, e.g. 0.5",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Vec<String> {
        let configure: Configure = serde_json::from_str(json).expect("typed settings");
        configure
            .problems()
            .into_iter()
            .map(|problem| problem.field)
            .collect()
    }

    /// Absent techniques serialize to nothing: the stage keys of existing pipelines stay.
    #[test]
    fn unset_techniques_add_nothing_to_the_stage_key() {
        let configure: Configure = serde_json::from_str("{}").expect("defaults");
        let text = serde_json::to_string(&configure).expect("serializes");
        for key in [
            "label_smoothing",
            "layer_decay",
            "rdrop",
            "consistency",
            "subword_dropout",
            "adversarial",
            "distillation",
        ] {
            assert!(!text.contains(key), "{key} in {text}");
        }
    }

    #[test]
    fn valid_techniques_pass() {
        assert_eq!(
            fields(
                r#"{"consistency": {"typo": 0.05}, "subword_dropout": 0.1, "adversarial": {"method": "fgm"}}"#
            ),
            Vec::<String>::new()
        );
        let json = r#"{"label_smoothing": 0.1, "layer_decay": 0.9, "rdrop": {"alpha": 1.0},
            "adversarial": {"method": "pgd", "epsilon": 1.0, "alpha": 0.3, "steps": 3},
            "distillation": {"temperature": 2.0, "weight": 1.0}}"#;
        assert_eq!(fields(json), Vec::<String>::new());
        assert_eq!(
            fields(r#"{"adversarial": {"method": "fgm"}}"#),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_technique_rule_names_its_field() {
        for (json, field) in [
            (r#"{"label_smoothing": 1.0}"#, "label_smoothing"),
            (r#"{"label_smoothing": -0.1}"#, "label_smoothing"),
            (r#"{"layer_decay": 0.0}"#, "layer_decay"),
            (r#"{"subword_dropout": 0.0}"#, "subword_dropout"),
            (r#"{"subword_dropout": 0.6}"#, "subword_dropout"),
            (r#"{"layer_decay": 1.5}"#, "layer_decay"),
            (r#"{"rdrop": {"alpha": 0.0}}"#, "rdrop.alpha"),
            (r#"{"rdrop": {"alpha": 1.0}, "dropout": 0.0}"#, "rdrop"),
            (r#"{"consistency": {"typo": 0.0}}"#, "consistency.typo"),
            (r#"{"consistency": {"typo": 0.5}}"#, "consistency.typo"),
            (
                r#"{"consistency": {"typo": 0.05, "candidates": 0}}"#,
                "consistency.candidates",
            ),
            (
                r#"{"consistency": {"typo": 0.05, "alpha": -1.0}}"#,
                "consistency.alpha",
            ),
            (
                r#"{"consistency": {"typo": 0.05}, "rdrop": {"alpha": 1.0}}"#,
                "consistency",
            ),
            (
                r#"{"adversarial": {"method": "fgm", "epsilon": 0.0}}"#,
                "adversarial.epsilon",
            ),
            (
                r#"{"adversarial": {"method": "fgm", "steps": 3}}"#,
                "adversarial.steps",
            ),
            (
                r#"{"adversarial": {"method": "fgm", "alpha": 0.3}}"#,
                "adversarial.alpha",
            ),
            (
                r#"{"adversarial": {"method": "pgd", "steps": 3}}"#,
                "adversarial.alpha",
            ),
            (
                r#"{"adversarial": {"method": "pgd", "alpha": 0.3, "steps": 0}}"#,
                "adversarial.steps",
            ),
            (
                r#"{"distillation": {"temperature": 0.0}}"#,
                "distillation.temperature",
            ),
            (
                r#"{"distillation": {"weight": 1.5}}"#,
                "distillation.weight",
            ),
        ] {
            assert_eq!(fields(json), [field], "{json}");
        }
    }
}
