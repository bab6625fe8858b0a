use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::model::{Command, Configure, StageId, StageSettings};

fn configure_stage(settings: Value) -> Stage {
    let configure: Configure = serde_json::from_value(settings).expect("valid configure settings");
    Stage {
        id: StageId("hparams".to_owned()),
        settings: StageSettings::Configure(Box::new(configure)),
        inputs: BTreeMap::new(),
    }
}

fn command_stage(run: &str, env: BTreeMap<String, String>) -> Stage {
    Stage {
        id: StageId("step".to_owned()),
        settings: StageSettings::Command(Command {
            run: run.to_owned(),
            deps: vec![PathBuf::from("in.txt")],
            outs: vec![PathBuf::from("out.txt")],
            env,
            pass_env: Vec::new(),
            metrics: Vec::new(),
        }),
        inputs: BTreeMap::new(),
    }
}

fn key_of(stage: &Stage) -> Digest {
    StageHashable::new(stage, BTreeMap::new(), BTreeMap::new()).key()
}

#[test]
fn equivalent_learning_rates_hash_alike() {
    let short: Value =
        serde_json::from_str(r#"{"learning_rate": 2e-5, "epochs": 3}"#).expect("valid JSON");
    let long: Value =
        serde_json::from_str(r#"{"epochs": 3, "learning_rate": 0.00002}"#).expect("valid JSON");
    assert_eq!(
        key_of(&configure_stage(short)),
        key_of(&configure_stage(long))
    );
}

#[test]
fn stage_name_is_not_hashed_but_content_is() {
    let stage = command_stage("echo a", BTreeMap::new());
    let mut renamed = stage.clone();
    renamed.id = StageId("other".to_owned());
    assert_eq!(key_of(&stage), key_of(&renamed));
    let with_input = |digest: &[u8]| {
        StageHashable::new(
            &stage,
            BTreeMap::new(),
            BTreeMap::from([(
                "in.txt".to_owned(),
                ContentDigest::File(Digest::of_bytes(digest)),
            )]),
        )
    };
    let old = with_input(b"v1");
    let new = with_input(b"v2");
    assert_ne!(old.key(), new.key());
    assert_eq!(
        compare(&old, &new),
        vec![DirtyReason::InputChanged {
            path: "in.txt".to_owned()
        }]
    );
}

#[test]
fn compare_names_the_changed_setting_with_old_and_new_values() {
    let old = StageHashable::new(
        &configure_stage(json!({"learning_rate": 5e-5})),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    let new = StageHashable::new(
        &configure_stage(json!({"learning_rate": 1e-4})),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    let reasons = compare(&old, &new);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(
        reasons[0].to_string(),
        "setting `learning_rate` changed (5e-5 → 1e-4)"
    );
}

#[test]
fn upstream_and_environment_changes_are_named() {
    let stage = command_stage("cat in.txt", BTreeMap::new());
    let digest = |bytes: &[u8]| ContentDigest::File(Digest::of_bytes(bytes));
    let old = StageHashable::new(
        &stage,
        BTreeMap::from([("in.txt".to_owned(), digest(b"1"))]),
        BTreeMap::new(),
    );
    let mut new = StageHashable::new(
        &stage,
        BTreeMap::from([("in.txt".to_owned(), digest(b"2"))]),
        BTreeMap::new(),
    );
    new.environment
        .insert("arch".to_owned(), "riscv64".to_owned());
    let reasons = compare(&old, &new);
    assert_eq!(
        reasons,
        vec![
            DirtyReason::UpstreamChanged {
                input: "in.txt".to_owned()
            },
            DirtyReason::EnvironmentChanged {
                name: "arch".to_owned(),
                old: "unset".to_owned(),
                new: "riscv64".to_owned()
            }
        ]
    );
}

/// A secret-looking `env:` value is hashed but shown as `***`, also when the whole `env` map
/// appears; other values are shown as they are.
#[test]
fn secret_env_values_are_redacted_in_reasons() {
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    };
    let hashable = |env| {
        StageHashable::new(
            &command_stage("echo a", env),
            BTreeMap::new(),
            BTreeMap::new(),
        )
    };
    let before = hashable(env(&[("HF_TOKEN", "hf_old"), ("SEED", "1")]));
    let after = hashable(env(&[("HF_TOKEN", "hf_new"), ("SEED", "2")]));
    assert_ne!(before.key(), after.key());
    let shown: Vec<String> = compare(&before, &after)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        [
            "setting `env.HF_TOKEN` changed (*** → ***)",
            "setting `env.SEED` changed (1 → 2)"
        ]
    );
    let appeared = compare(&hashable(BTreeMap::new()), &before)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    assert!(!appeared.contains("hf_old"), "{appeared}");
    assert!(appeared.contains(r#""HF_TOKEN":"***""#), "{appeared}");
}

/// `pass_env` names are part of the key; their values are read only at run time.
#[test]
fn pass_env_names_are_hashed() {
    let plain = command_stage("echo a", BTreeMap::new());
    let mut passing = plain.clone();
    if let StageSettings::Command(command) = &mut passing.settings {
        command.pass_env = vec!["HF_TOKEN".to_owned()];
    }
    assert_ne!(key_of(&plain), key_of(&passing));
    let text = StageHashable::new(&passing, BTreeMap::new(), BTreeMap::new()).canonical_text();
    assert!(text.contains(r#""pass_env":["HF_TOKEN"]"#), "{text}");
}

#[test]
fn hashable_round_trips_through_json() {
    let hashable = StageHashable::new(
        &configure_stage(json!({"learning_rate": 3e-5, "seed": 7})),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    let text = serde_json::to_string(&hashable).expect("serializes");
    let back: StageHashable = serde_json::from_str(&text).expect("parses");
    assert_eq!(back.key(), hashable.key());
    assert!(compare(&back, &hashable).is_empty());
}

// Failures here mean either spurious reruns (the same settings written differently give
// different keys) or missed reruns (a changed value keeps the old key).
proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn env_insertion_order_does_not_change_the_key(
        pairs in prop::collection::vec(("[A-Z]{1,4}", "[a-z0-9]{0,4}"), 0..6)
    ) {
        let forward: BTreeMap<String, String> = pairs.iter().cloned().collect();
        let backward: BTreeMap<String, String> = pairs.iter().rev().cloned()
            .collect::<Vec<_>>().into_iter().rev().collect();
        prop_assert_eq!(
            key_of(&command_stage("make", forward)),
            key_of(&command_stage("make", backward))
        );
    }

    #[test]
    fn json_key_order_does_not_change_the_key(
        learning_rate in 1e-7f64..1e-1, epochs in 1usize..50, seed in any::<u64>()
    ) {
        let forward = format!(
            r#"{{"learning_rate": {learning_rate:e}, "epochs": {epochs}, "seed": {seed}}}"#
        );
        let backward = format!(
            r#"{{"seed": {seed}, "epochs": {epochs}, "learning_rate": {learning_rate}}}"#
        );
        let parse = |text: &str| serde_json::from_str::<Value>(text).expect("valid JSON");
        prop_assert_eq!(
            key_of(&configure_stage(parse(&forward))),
            key_of(&configure_stage(parse(&backward)))
        );
    }

    #[test]
    fn any_changed_value_changes_the_key(
        learning_rate in 1e-7f64..1e-1, other in 1e-7f64..1e-1,
        epochs in 1usize..50, seed in any::<u64>(), other_seed in any::<u64>(),
        run in "[a-z ]{1,12}", other_run in "[a-z ]{1,12}",
    ) {
        let base = json!({"learning_rate": learning_rate, "epochs": epochs, "seed": seed});
        let base_key = key_of(&configure_stage(base));
        if other != learning_rate {
            let changed = json!({"learning_rate": other, "epochs": epochs, "seed": seed});
            prop_assert_ne!(key_of(&configure_stage(changed)), base_key);
        }
        if other_seed != seed {
            let changed = json!({"learning_rate": learning_rate, "epochs": epochs, "seed": other_seed});
            prop_assert_ne!(key_of(&configure_stage(changed)), base_key);
        }
        let changed = json!({"learning_rate": learning_rate, "epochs": epochs + 1, "seed": seed});
        prop_assert_ne!(key_of(&configure_stage(changed)), base_key);
        if run != other_run {
            prop_assert_ne!(
                key_of(&command_stage(&run, BTreeMap::new())),
                key_of(&command_stage(&other_run, BTreeMap::new()))
            );
        }
    }
}
