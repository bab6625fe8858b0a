use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::fingerprint::{HashCache, StageHashable};
use crate::model::{Command, Stage, StageId, StageSettings};

fn sample_record(store: &Store, content: &str) -> ActionRecord {
    let source = tempfile::tempdir().expect("temp dir");
    fs::write(source.path().join("out.txt"), content).expect("write");
    let manifest = HashCache::default()
        .manifest_of(source.path())
        .expect("hash");
    let outputs = store
        .put_tree(source.path(), &manifest, false)
        .expect("put");
    let stage = Stage {
        id: StageId("step".to_owned()),
        settings: StageSettings::Command(Command {
            run: format!("echo {content}"),
            deps: Vec::new(),
            outs: Vec::new(),
            env: BTreeMap::new(),
            pass_env: Vec::new(),
        }),
        inputs: BTreeMap::new(),
    };
    let fingerprint = StageHashable::new(&stage, BTreeMap::new(), BTreeMap::new());
    ActionRecord {
        version: 1,
        key: fingerprint.key(),
        stage: "step".to_owned(),
        fingerprint,
        outputs,
        metrics: BTreeMap::new(),
        duration_ms: 1,
        finished_at: 0,
        log: None,
    }
}

#[test]
fn blobs_are_read_only_and_fetched_as_writable_copies() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&temp.path().join("store")).expect("open");
    let record = sample_record(&store, "hello");
    store.put_action(&record).expect("put action");
    let manifest = store.outputs_present(&record).expect("outputs present");
    let entry = &manifest.entries["out.txt"];
    let blob = store.blob_path(&entry.digest);
    assert_eq!(
        fs::metadata(&blob).expect("blob").permissions().mode() & 0o777,
        0o444
    );
    let copy = temp.path().join("copy/out.txt");
    store
        .fetch_blob(&entry.digest, &copy, false)
        .expect("fetch");
    fs::write(&copy, "edited").expect("a materialized copy is writable");
    assert_eq!(fs::read_to_string(&blob).expect("blob"), "hello");
    assert_eq!(store.get_action(&record.key), Some(record));
}

#[test]
fn verify_quarantines_a_corrupted_blob() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&temp.path().join("store")).expect("open");
    let record = sample_record(&store, "hello");
    store.put_action(&record).expect("put action");
    let manifest = store.get_manifest(&record.outputs).expect("manifest");
    let blob = store.blob_path(&manifest.entries["out.txt"].digest);
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&blob, "bit rot").expect("corrupt");
    let report = store.verify().expect("verify");
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert_eq!(report.incomplete_actions, vec![record.key]);
    assert!(!blob.exists());
    assert!(store.outputs_present(&record).is_none());
    let clean = store.verify().expect("verify");
    assert!(clean.quarantined.is_empty());
}

#[test]
fn gc_keeps_what_lock_files_and_recent_runs_reach() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&temp.path().join("store")).expect("open");
    let locked = sample_record(&store, "locked");
    let recent = sample_record(&store, "recent");
    let garbage = sample_record(&store, "garbage");
    for record in [&locked, &recent, &garbage] {
        store.put_action(record).expect("put action");
    }
    let mut lock = LockFile::new("p");
    lock.stages.insert(
        "step".to_owned(),
        LockedStage {
            kind: crate::model::StageKind::Command,
            key: locked.key,
            key_scheme: 1,
            implementation_version: 1,
            settings_digest: locked.key,
            settings: serde_json::Value::Null,
            inputs: BTreeMap::new(),
            upstream: BTreeMap::new(),
            environment: BTreeMap::new(),
            outputs: BTreeMap::new(),
            manifest: locked.outputs,
            metrics: BTreeMap::new(),
        },
    );
    let lock_path = temp.path().join("p.lock");
    lock.save(&lock_path, store.root()).expect("save lock");
    store.register_lock_file(&lock_path).expect("register");
    store.record_run(&[garbage.key]).expect("record run");
    store.record_run(&[recent.key]).expect("record run");
    let report = store.gc(1).expect("gc");
    assert!(report.removed_objects >= 3, "{report:?}");
    assert!(store.outputs_present(&locked).is_some());
    assert!(store.outputs_present(&recent).is_some());
    assert!(store.get_action(&garbage.key).is_none());
    assert_eq!(LockFile::load(&lock_path), Some(lock));
}

#[test]
fn a_key_lock_excludes_a_second_holder_until_dropped() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = Store::open(temp.path()).expect("open");
    let key = crate::fingerprint::Digest::of_bytes(b"key");
    let first = store.try_lock_key(&key).expect("lock").expect("free");
    assert!(store.try_lock_key(&key).expect("lock").is_none());
    drop(first);
    assert!(store.try_lock_key(&key).expect("lock").is_some());
}
