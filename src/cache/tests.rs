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
            metrics: Vec::new(),
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

/// A cached stage's lock-file entry takes its metrics from the action record, so they must come
/// back bit for bit: a metric one ulp off (0.9064637006182455 for 0.9064637006182457, as a
/// float parser that is not round-trip exact gives) rewrote committed lock files whenever a
/// stage was restored rather than run.
#[test]
fn metrics_come_back_from_the_action_cache_bit_for_bit() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&temp.path().join("store")).expect("open");
    let mut record = sample_record(&store, "metrics");
    let values = [
        0.9064637006182457,
        0.822 - 0.811,
        0.1 + 0.2,
        1.0 / 3.0,
        2.0f64.sqrt(),
        f64::MIN_POSITIVE,
        1e-300 / 3.0,
        123_456_789.123_456_79,
    ];
    record.metrics = values
        .iter()
        .enumerate()
        .map(|(i, &value)| (format!("m{i}"), value))
        .collect();
    store.put_action(&record).expect("put action");
    let back = store.get_action(&record.key).expect("record");
    for (name, value) in &record.metrics {
        assert_eq!(
            back.metrics[name].to_bits(),
            value.to_bits(),
            "{name}: {value:?} came back as {:?}",
            back.metrics[name]
        );
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
    let report = store.gc(1, true).expect("gc");
    assert!(report.removed_objects >= 3, "{report:?}");
    assert!(store.outputs_present(&locked).is_some());
    assert!(store.outputs_present(&recent).is_some());
    assert!(store.get_action(&garbage.key).is_none());
    assert_eq!(LockFile::load(&lock_path), Some(lock));
}

/// A no-op run repeats the previous run's keys: it must neither add a record (one file per
/// launch until the next gc) nor lose its place as the newest run.
#[test]
fn a_repeated_run_reuses_its_record_and_becomes_the_newest() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&temp.path().join("cache")).expect("open");
    let first = sample_record(&store, "first");
    let second = sample_record(&store, "second");
    for record in [&first, &second] {
        store.put_action(record).expect("put action");
    }
    store.record_run(&[first.key]).expect("record run");
    store.record_run(&[second.key]).expect("record run");
    store.record_run(&[first.key]).expect("record run");
    let records = fs::read_dir(store.root().join("runs-v1"))
        .expect("runs")
        .count();
    assert_eq!(records, 2, "a repeated run added a record");
    store.gc(1, true).expect("gc");
    assert!(
        store.get_action(&first.key).is_some(),
        "the newest run lost its outputs"
    );
    assert!(store.get_action(&second.key).is_none());
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

/// Makes a blob writable and replaces its bytes (blobs are stored read-only).
fn corrupt(path: &Path, bytes: &[u8]) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(path, bytes).expect("corrupt");
}

/// Every path under `dir` with its bytes (symlinks as their target), sorted.
fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let metadata = fs::symlink_metadata(&path).expect("stat");
        if metadata.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("link");
            found.push((path, target.into_os_string().into_encoded_bytes()));
        } else if metadata.is_dir() {
            found.push((path.clone(), Vec::new()));
            for entry in fs::read_dir(&path).expect("read dir") {
                stack.push(entry.expect("entry").path());
            }
        } else {
            found.push((path.clone(), fs::read(&path).expect("read")));
        }
    }
    found.sort();
    found
}

#[test]
fn a_restore_checks_the_bytes_it_copies_and_quarantines_a_damaged_blob() {
    for damage in [&b"HELLO"[..], &b"hel"[..], &b""[..]] {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&temp.path().join("store")).expect("open");
        let record = sample_record(&store, "hello");
        let manifest = store.get_manifest(&record.outputs).expect("manifest");
        let digest = manifest.entries["out.txt"].digest;
        corrupt(&store.blob_path(&digest), damage);
        let copy = temp.path().join("copy/out.txt");
        let error = store
            .fetch_blob(&digest, &copy, false)
            .expect_err("damaged bytes were restored");
        assert!(error.is_fault(), "{error:?}");
        assert!(!copy.exists(), "damaged bytes reached the workspace");
        assert!(
            !store.contains_blob(&digest),
            "the damaged blob stayed in place"
        );
        let quarantined = fs::read_dir(store.root().join("quarantine-v1"))
            .expect("quarantine")
            .count();
        assert_eq!(quarantined, 1);
        assert!(store.check_blobs(&manifest).is_err());
    }
}

#[test]
fn a_foreign_directory_is_refused_and_left_untouched() {
    let temp = tempfile::tempdir().expect("temp dir");
    let user = temp.path().join("home");
    fs::create_dir_all(user.join("tmp")).expect("mkdir");
    fs::write(user.join("notes.txt"), "mine").expect("write");
    fs::write(user.join("tmp/draft.txt"), "mine too").expect("write");
    let before = listing(&user);
    let error = Store::open(&user).expect_err("a user directory opened as a store");
    assert!(
        matches!(&error, CacheError::NotAStore { found, .. } if found.contains("`notes.txt`")),
        "{error:?}"
    );
    assert_eq!(
        listing(&user),
        before,
        "opening wrote into a user directory"
    );
    // Even a directory holding only a bucket name is someone's unless taper tagged it.
    fs::remove_file(user.join("notes.txt")).expect("remove");
    let error = Store::open(&user).expect_err("a lone `tmp/` opened as a store");
    assert!(matches!(error, CacheError::NotAStore { .. }), "{error:?}");
    assert!(user.join("tmp/draft.txt").exists());
}

#[test]
fn a_file_is_not_a_store() {
    let temp = tempfile::tempdir().expect("temp dir");
    let file = temp.path().join("cache");
    fs::write(&file, "data").expect("write");
    let error = Store::open(&file).expect_err("a file opened as a store");
    assert!(
        matches!(error, CacheError::NotADirectory { .. }),
        "{error:?}"
    );
    assert_eq!(fs::read_to_string(&file).expect("read"), "data");
}

#[test]
fn a_store_made_before_the_marker_is_adopted_with_its_results() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path().join("store");
    let store = Store::open(&root).expect("open");
    let record = sample_record(&store, "kept");
    store.put_action(&record).expect("put action");
    fs::write(root.join(".gitignore"), "*\n").expect("write");
    fs::remove_file(root.join(MARKER)).expect("remove marker");
    let adopted = Store::open(&root).expect("an old store is adopted");
    assert!(root.join(MARKER).is_file());
    assert!(adopted.outputs_present(&record).is_some());
    // And a store whose creation stopped before its tag (empty buckets only) is completed.
    let half = temp.path().join("half");
    fs::create_dir_all(half.join("blobs-v1")).expect("mkdir");
    Store::open(&half).expect("a half-made store is completed");
    assert!(half.join(MARKER).is_file() && half.join("CACHEDIR.TAG").is_file());
}

#[test]
fn a_read_only_store_is_opened_and_read_without_writing() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path().join("store");
    let digest = {
        let store = Store::open(&root).expect("open");
        let record = sample_record(&store, "shared");
        store.put_action(&record).expect("put action");
        store
            .get_manifest(&record.outputs)
            .expect("manifest")
            .entries["out.txt"]
            .digest
    };
    fs::remove_dir_all(root.join("tmp")).expect("a bucket gone: opening must not recreate it");
    let before = listing(&root);
    let store = Store::open_read_only(&root).expect("open read-only");
    assert!(store.is_read_only());
    let _guard = store.run_guard().expect("guard");
    let copy = temp.path().join("copy.txt");
    store.fetch_blob(&digest, &copy, false).expect("restore");
    assert_eq!(fs::read_to_string(&copy).expect("read"), "shared");
    let key = crate::fingerprint::Digest::of_bytes(b"missing");
    assert!(matches!(
        store.try_lock_key(&key),
        Err(CacheError::ReadOnly { .. })
    ));
    store.record_run(&[key]).expect("nothing to record");
    assert!(matches!(
        store.gc(0, true),
        Err(CacheError::ReadOnly { .. })
    ));
    assert_eq!(listing(&root), before, "a read-only store was written to");
    assert!(matches!(
        Store::open_read_only(&temp.path().join("none")),
        Err(CacheError::NoStore { .. })
    ));
}

/// Tests run as root, whom `chmod` does not stop: this checks the permission-bit detection
/// (`chmod -R a-w` means read-only even for root). A read-only mount (EROFS) or a non-root
/// user without write permission is caught by the temp-file probe in `is_writable`, which
/// this test cannot reach without mounting.
#[test]
fn a_store_without_write_permission_opens_read_only() {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path().join("store");
    drop(Store::open(&root).expect("open"));
    fs::set_permissions(&root, fs::Permissions::from_mode(0o555)).expect("chmod");
    let store = Store::open(&root).expect("open");
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod back");
    assert!(store.is_read_only());
}

#[test]
fn maintenance_never_follows_a_symlink_planted_in_the_store() {
    let temp = tempfile::tempdir().expect("temp dir");
    let user = temp.path().join("user");
    fs::create_dir_all(&user).expect("mkdir");
    fs::write(user.join("precious.txt"), "precious").expect("write");
    let store = Store::open(&temp.path().join("store")).expect("open");
    let root = store.root().to_path_buf();
    let named = crate::fingerprint::Digest::of_bytes(b"precious");
    let shard = root.join("blobs-v1").join(&named.to_hex()[..2]);
    fs::create_dir_all(&shard).expect("mkdir");
    // A blob name whose content would even verify, pointing outside the store.
    std::os::unix::fs::symlink(user.join("precious.txt"), shard.join(named.to_hex()))
        .expect("link");
    std::os::unix::fs::symlink(&user, root.join("blobs-v1/zz")).expect("link");
    std::os::unix::fs::symlink(&user, root.join("tmp/leftover")).expect("link");
    std::os::unix::fs::symlink(&user, root.join("scratch-v1/old")).expect("link");
    let before = listing(&user);
    assert!(
        !store.contains_blob(&named),
        "a link counts as a stored blob"
    );
    let copy = temp.path().join("copy.txt");
    assert!(store
        .fetch_blob(&named, &copy, false)
        .is_err_and(|error| error.is_fault()));
    assert!(!copy.exists());
    std::os::unix::fs::symlink(user.join("precious.txt"), shard.join(named.to_hex()))
        .expect("link again");
    let report = store.verify().expect("verify");
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    store.gc(0, true).expect("gc");
    assert_eq!(
        listing(&user),
        before,
        "maintenance changed a user directory"
    );
}

/// An experiment's stage keys are gc roots, even once no recent run reaches them; with
/// `--ignore-experiments` (`keep_experiments: false`) they are not, and the record stays.
#[test]
fn experiments_keep_their_outputs_through_gc_unless_ignored() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&temp.path().join("cache")).expect("open");
    let kept = sample_record(&store, "experiment");
    store.put_action(&kept).expect("put action");
    let experiment = ExperimentRecord {
        schema: EXPERIMENT_SCHEMA,
        id: String::new(),
        pipeline: "p.yaml".to_owned(),
        name: "p".to_owned(),
        started_at_ms: 0,
        wall_ms: 0,
        commit: None,
        overrides: Vec::new(),
        stages: BTreeMap::from([(
            "step".to_owned(),
            ExperimentStage {
                kind: crate::model::StageKind::Command,
                status: "ran".to_owned(),
                key: Some(kept.key),
                duration_ms: 1,
                metrics: BTreeMap::new(),
            },
        )]),
        variants: Vec::new(),
    }
    .with_id();
    store.record_experiment(&experiment).expect("record");
    store.gc(0, true).expect("gc");
    assert!(
        store.outputs_present(&kept).is_some(),
        "an experiment lost its outputs"
    );
    store.gc(0, false).expect("gc");
    assert!(store.get_action(&kept.key).is_none());
    assert_eq!(store.experiments(), vec![experiment]);
}
