//! `deploy` on a LoRA-trained tiny BERT from the stage chain: the gate, the HF layout of the
//! bundle (checked in Rust, without `transformers`), reloading it through [`Bundle`] with the
//! trained stage's logits, and refusing a tampered bundle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::exec::runner::StageOutcome;
use crate::ml::{Batch, Classifier, DeviceChoice};
use crate::model::stages::{Configure, Deploy, Evaluate, Precision, Robustness, SplitName};
use crate::model::{InputSlot, StageSettings};
use crate::stages::bundle::{verify, Bundle, BundleError};
use crate::stages::chain_tests::{settings, Chain};
use crate::stages::deploy::DeployRunner;
use crate::stages::evaluate::EvaluateRunner;

/// The chain through `evaluate`, trained with LoRA so that the bundle must merge adapters.
fn evaluated_chain() -> Chain {
    let mut chain = Chain::new();
    chain.prepare();
    let mut lora: Configure = settings();
    lora.method =
        serde_json::from_str(r#"{"name":"lora","r":4,"alpha":8,"targets":["query","value"]}"#)
            .unwrap();
    lora.learning_rate = 1e-2;
    chain.configure(lora);
    chain.train(&|_| {}).unwrap();
    chain.evaluate(SplitName::Test, 16, &|_| {}).unwrap();
    chain
}

fn deploy(
    chain: &mut Chain,
    require: &[(&str, f64)],
) -> Result<StageOutcome, crate::exec::runner::StageError> {
    deploy_at(chain, require, Precision::F32)
}

fn deploy_at(
    chain: &mut Chain,
    require: &[(&str, f64)],
    precision: Precision,
) -> Result<StageOutcome, crate::exec::runner::StageError> {
    chain.run(
        "deploy",
        StageSettings::Deploy(Deploy {
            require: require
                .iter()
                .map(|(name, value)| ((*name).to_owned(), *value))
                .collect(),
            precision,
        }),
        &[
            (InputSlot::Model, "train"),
            (InputSlot::Metrics, "evaluate"),
            (InputSlot::Data, "data"),
        ],
        &DeployRunner,
        &|_| {},
    )
}

/// The tensor names of `BertForSequenceClassification` with a pooler, for `layers` layers.
fn hf_bert_names(layers: usize) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias",
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    .map(str::to_owned)
    .into();
    for layer in 0..layers {
        for module in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ] {
            for part in ["weight", "bias"] {
                names.insert(format!("bert.encoder.layer.{layer}.{module}.{part}"));
            }
        }
    }
    names
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn deploy_writes_a_hf_bundle_that_reloads_with_the_trained_logits() {
    let mut chain = evaluated_chain();
    deploy(&mut chain, &[("accuracy", 0.5), ("log_loss", 5.0)]).unwrap();
    let bundle_dir = chain.outputs["deploy"].clone();
    let mut files: Vec<String> = fs::read_dir(&bundle_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "config.json",
            "manifest.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt"
        ]
    );

    // config.json: the base config plus the HF head fields.
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(bundle_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["BertForSequenceClassification"])
    );
    assert_eq!(config["model_type"], "bert");
    assert_eq!(config["num_labels"], 2);
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "neg", "1": "pos"})
    );
    assert_eq!(config["label2id"], serde_json::json!({"neg": 0, "pos": 1}));
    assert_eq!(config["hidden_size"], 32);

    // Tensor names, read with the `safetensors` crate as other tools would.
    let bytes = fs::read(bundle_dir.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: BTreeSet<String> = tensors.names().into_iter().map(str::to_owned).collect();
    assert_eq!(names, hf_bert_names(2));
    assert_eq!(
        tensors.tensor("classifier.weight").unwrap().shape(),
        &[2, 32]
    );

    // Tokenizer side files derived from tokenizer.json (the tiny model has none).
    let vocab = fs::read_to_string(bundle_dir.join("vocab.txt")).unwrap();
    assert!(
        vocab.starts_with("[PAD]\n[UNK]\n[CLS]\n[SEP]\ngood\n"),
        "{vocab}"
    );

    // The manifest pins every other file and carries the stage key and metrics.
    let (manifest, _) = verify(&bundle_dir).unwrap();
    assert_eq!(manifest.files.len(), files.len() - 1);
    assert_eq!(
        manifest.stage_key,
        crate::fingerprint::Digest::of_bytes(b"deploy").to_hex()
    );
    assert!(manifest.metrics["accuracy"] >= 0.5);
    // 16 of the 40 test rows are `neg` (stratified split): the drift reference.
    assert_eq!(manifest.label_shares, [0.4, 0.6]);

    // The model card: metrics with the per-class table, intended use, serving.
    let card = fs::read_to_string(bundle_dir.join("README.md")).unwrap();
    for needle in [
        "| class | precision | recall | F1 | support |",
        "| neg |",
        "## Intended use and limits",
        "taper serve",
        "Trained on 100 examples",
    ] {
        assert!(card.contains(needle), "`{needle}` missing from:\n{card}");
    }

    // Reloaded, the bundle gives the trained stage's logits.
    let bundle = Bundle::open(&bundle_dir, DeviceChoice::Cpu, None).unwrap();
    let trained =
        Classifier::load_trained(&chain.outputs["train"].join("model"), DeviceChoice::Cpu).unwrap();
    let texts: Vec<String> = [
        "the film was good",
        "a dull boring plot and a weak movie",
        "fun",
    ]
    .map(str::to_owned)
    .to_vec();
    let ids = bundle.encode(&texts, false).unwrap();
    let from_bundle = bundle.logits(&ids, 8).unwrap();
    for (sequence, row) in ids.iter().zip(&from_bundle) {
        let expected = trained
            .logits(&Batch::new(&[sequence], &[], 0).unwrap())
            .unwrap();
        for (a, b) in row.iter().zip(&expected[0]) {
            assert!((a - b).abs() < 1e-5, "{row:?} vs {expected:?}");
        }
    }
    let best = bundle.predictions(&from_bundle[0], false);
    assert_eq!(best.len(), 2);
    assert!((best.iter().map(|p| p.score).sum::<f32>() - 1.0).abs() < 1e-5);
    assert!(best[0].score >= best[1].score);

    // Deterministic: a rerun writes byte-identical files (the store relies on it).
    let first: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|file| (file.clone(), fs::read(bundle_dir.join(file)).unwrap()))
        .collect();
    deploy(&mut chain, &[("accuracy", 0.5), ("log_loss", 5.0)]).unwrap();
    for (file, bytes) in first {
        assert_eq!(fs::read(bundle_dir.join(&file)).unwrap(), bytes, "{file}");
    }
}

#[test]
fn a_failed_gate_names_the_metric_and_publishes_nothing() {
    let mut chain = evaluated_chain();
    let error = deploy(&mut chain, &[("accuracy", 0.999_9)]).unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("deploy gate failed: accuracy is ") && message.ends_with("≥ 0.9999"),
        "{message}"
    );
    let written = fs::read_dir(chain.root().join("out/deploy"))
        .unwrap()
        .count();
    assert_eq!(written, 0, "a failed gate must write nothing");
}

#[test]
fn a_tampered_bundle_is_refused_naming_the_file() {
    let mut chain = evaluated_chain();
    deploy(&mut chain, &[]).unwrap();
    let copy = chain.root().join("copy");
    copy_dir(&chain.outputs["deploy"], &copy);
    assert!(Bundle::open(&copy, DeviceChoice::Cpu, None).is_ok());

    let refused = |dir: &Path| match Bundle::open(dir, DeviceChoice::Cpu, None) {
        Err(BundleError::Tampered { file, reason }) => format!("{file}: {reason}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a tampered bundle was accepted"),
    };
    // One byte of the weights flipped, size unchanged.
    let weights = copy.join("model.safetensors");
    let mut bytes = fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&weights, &bytes).unwrap();
    assert_eq!(refused(&copy), "model.safetensors: its blake3 differs");
    bytes[last] ^= 1;
    fs::write(&weights, &bytes).unwrap();

    fs::write(copy.join("pytorch_model.bin"), b"planted").unwrap();
    assert_eq!(
        refused(&copy),
        "pytorch_model.bin: it is not in the manifest"
    );
    fs::remove_file(copy.join("pytorch_model.bin")).unwrap();

    std::os::unix::fs::symlink(&copy, copy.join("loop")).unwrap();
    assert_eq!(refused(&copy), "loop: it is not in the manifest");
    fs::remove_file(copy.join("loop")).unwrap();

    fs::remove_file(copy.join("vocab.txt")).unwrap();
    assert!(refused(&copy).starts_with("vocab.txt: cannot read it"));
}

/// `precision: int8`: the stage scores the quantized model on the evaluated split, gates on
/// that, records it, and the bundle (f32 weights, `precision` in the manifest) is served at
/// int8 unless told otherwise.
#[test]
fn an_int8_deploy_is_evaluated_gated_and_served_at_int8() {
    let mut chain = evaluated_chain();
    let f32_accuracy = {
        let text = fs::read_to_string(chain.outputs["evaluate"].join("metrics.json")).unwrap();
        let metrics: serde_json::Value = serde_json::from_str(&text).unwrap();
        metrics["accuracy"].as_f64().unwrap()
    };
    let outcome = deploy_at(&mut chain, &[("accuracy", 0.5)], Precision::Int8).unwrap();
    let int8_accuracy = outcome.metrics["int8_accuracy"];
    assert!(
        (outcome.metrics["accuracy_change"] - (int8_accuracy - f32_accuracy)).abs() < 1e-12,
        "{:?}",
        outcome.metrics
    );
    assert!(outcome.metrics.contains_key("int8_macro_f1"));
    let bundle_dir = chain.outputs["deploy"].clone();
    let (manifest, _) = verify(&bundle_dir).unwrap();
    assert_eq!(manifest.precision, Precision::Int8);
    assert_eq!(manifest.metrics["accuracy"], int8_accuracy);
    let card = fs::read_to_string(bundle_dir.join("README.md")).unwrap();
    assert!(card.contains("int8 model's figures"), "{card}");

    let int8 = Bundle::open(&bundle_dir, DeviceChoice::Cpu, None).unwrap();
    let f32 = Bundle::open(&bundle_dir, DeviceChoice::Cpu, Some(Precision::F32)).unwrap();
    assert_eq!(
        (int8.precision(), f32.precision()),
        (Precision::Int8, Precision::F32)
    );
    let ids = int8
        .encode(&["the film was good".to_owned()], false)
        .unwrap();
    let (a, b) = (int8.logits(&ids, 8).unwrap(), f32.logits(&ids, 8).unwrap());
    assert_ne!(a, b, "the int8 bundle must really run int8");
    for (x, y) in a[0].iter().zip(&b[0]) {
        assert!((x - y).abs() < 0.1, "{a:?} vs {b:?}");
    }

    // A gate the int8 model misses fails the stage, whatever f32 scored.
    let error = deploy_at(&mut chain, &[("accuracy", 0.999_9)], Precision::Int8).unwrap_err();
    assert!(error
        .to_string()
        .starts_with("deploy gate failed: accuracy is "));
}

/// At int8, the perturbed copies the evaluation scored are scored again (read back from its
/// `perturbed_typo.jsonl`, every draw), so a `typo_drop` gate holds for the quantized model:
/// its typo accuracy is the int8 model's on the same texts, near f32's and well under its
/// clean accuracy, and a gate below its drop fails the stage.
#[test]
fn an_int8_deploy_rescores_the_perturbed_copies_for_its_gates() {
    let mut chain = evaluated_chain();
    let evaluate = Evaluate {
        split: SplitName::Test,
        batch_size: 16,
        robustness: Some(Robustness {
            typo: Some(0.5),
            delete: None,
            casing: false,
            seed: 3,
            draws: 2,
        }),
    };
    let f32 = chain
        .run(
            "evaluate",
            StageSettings::Evaluate(evaluate),
            &[(InputSlot::Model, "train"), (InputSlot::Data, "data")],
            &EvaluateRunner,
            &|_| {},
        )
        .unwrap()
        .metrics;
    let outcome = deploy_at(&mut chain, &[("typo_drop", 1.0)], Precision::Int8).unwrap();
    let m = &outcome.metrics;
    let (accuracy, typo, drop) = (
        m["int8_accuracy"],
        m["int8_typo_accuracy"],
        m["int8_typo_drop"],
    );
    assert!((accuracy - typo - drop).abs() < 1e-12, "{m:?}");
    assert!(drop > 0.05, "the typo texts were not scored: {m:?}");
    assert!(
        (typo - f32["typo_accuracy"]).abs() < 0.1,
        "{m:?} vs {f32:?}"
    );
    let (manifest, _) = verify(&chain.outputs["deploy"]).unwrap();
    assert!(
        (manifest.metrics["typo_drop"] - drop).abs() < 1e-9,
        "{manifest:?}"
    );

    let error = deploy_at(&mut chain, &[("typo_drop", drop / 2.0)], Precision::Int8).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("deploy gate failed: typo_drop is "),
        "{error}"
    );
}
