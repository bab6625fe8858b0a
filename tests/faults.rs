//! Fault injection (issue 9, "Engine integrity"): the real binary on small `command` pipelines
//! in temp dirs, hit by `kill -9` and SIGTERM at several points, damaged or missing store
//! objects, a read-only store, a full disk and a concurrent run. After each fault:
//! `taper cache verify` exits 0, the lock file parses, a rerun reproduces the reference outputs
//! byte for byte, and nothing in the project outside the declared outs changed.
//!
//! No timing assertions: every wait polls with a deadline and kills what it waited for.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use taper::cache::LockFile;

mod common;
use common::{finish, wait_bounded, Project, WAIT};
use taper::fingerprint::Digest;

/// `SLOW_<stage>` set in the environment makes that stage signal (touch the file it names) and
/// then hang. The process environment is not part of a `command`'s key, so the slow and the
/// normal run share keys; a hung stage exits 1 when it wakes, so an orphan left by a killed
/// taper writes nothing.
const PIPELINE: &str = r#"version: 1
name: faults
stages:
  first:
    kind: command
    run: if [ -n "$SLOW_first" ]; then touch "$SLOW_first"; sleep 30; exit 1; fi; cat in.txt in.txt > first.txt
    deps: [in.txt]
    outs: [first.txt]
  second:
    kind: command
    run: if [ -n "$SLOW_second" ]; then touch "$SLOW_second"; sleep 30; exit 1; fi; tr a-z A-Z < first.txt > second.txt
    deps: [first.txt]
    outs: [second.txt]
  third:
    kind: command
    run: wc -c < second.txt > third.txt
    deps: [second.txt]
    outs: [third.txt]
"#;

const OUTS: [&str; 3] = ["first.txt", "second.txt", "third.txt"];

/// The outputs a clean run produces.
fn reference() -> BTreeMap<String, Vec<u8>> {
    let mut expected = BTreeMap::new();
    let first = "hello world\n".repeat(2);
    expected.insert("first.txt".to_owned(), first.clone().into_bytes());
    expected.insert("second.txt".to_owned(), first.to_uppercase().into_bytes());
    expected.insert(
        "third.txt".to_owned(),
        format!("{}\n", first.len()).into_bytes(),
    );
    expected
}

/// `<temp>/project/` holding [`PIPELINE`] and its input, beside `<temp>/outside/`.
fn new_project() -> Project {
    let project = Project::beside_outside();
    project.write("p.yaml", PIPELINE);
    project.write("in.txt", "hello world\n");
    project
}

/// What the fault tests need of a project beyond the shared helpers.
trait Faults {
    fn store(&self) -> PathBuf;
    fn signal(&self, name: &str) -> PathBuf;
    fn spawn_slow(&self, slow: &str) -> Child;
    fn untouchable(&self) -> BTreeMap<PathBuf, Vec<u8>>;
    fn outputs(&self) -> BTreeMap<String, Vec<u8>>;
    fn remove_outputs(&self);
    fn assert_recovers(&self, before: &BTreeMap<PathBuf, Vec<u8>>, context: &str);
}

impl Faults for Project {
    fn store(&self) -> PathBuf {
        self.path("cache")
    }

    /// A signal file outside the project (a stage touching it must not count as a change).
    fn signal(&self, name: &str) -> PathBuf {
        self.temp().join(format!("signal-{name}"))
    }

    /// Starts a run whose stage `slow` hangs after touching its signal file.
    fn spawn_slow(&self, slow: &str) -> Child {
        self.command(&["run", "p.yaml", "-j", "1"])
            .env(format!("SLOW_{slow}"), self.signal(slow))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn taper")
    }

    /// Every file of the project except the store, the lock file, stage logs and the declared
    /// outs, with its bytes; and `outside/`.
    fn untouchable(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut found = BTreeMap::new();
        collect(self.temp(), self.temp(), &mut found);
        found.retain(|path, _| {
            let inside = path.strip_prefix("project").ok();
            match inside.and_then(Path::to_str) {
                Some(relative) => {
                    !(relative.starts_with("cache/")
                        || relative == "cache"
                        || relative == "p.lock"
                        || (relative.starts_with("out/") && relative.ends_with(".log"))
                        || relative == "out"
                        || relative == "out/p"
                        || OUTS.contains(&relative))
                }
                None => !path.to_string_lossy().starts_with("signal-"),
            }
        });
        found
    }

    fn outputs(&self) -> BTreeMap<String, Vec<u8>> {
        OUTS.iter()
            .filter_map(|name| {
                fs::read(self.path(name))
                    .ok()
                    .map(|bytes| ((*name).to_owned(), bytes))
            })
            .collect()
    }

    fn remove_outputs(&self) {
        for name in OUTS {
            let _ = fs::remove_file(self.path(name));
        }
    }

    /// The checks every fault must pass once it is over.
    fn assert_recovers(&self, before: &BTreeMap<PathBuf, Vec<u8>>, context: &str) {
        let verify = self.taper(&["cache", "verify"]);
        assert!(
            verify.status.success(),
            "{context}: the store does not verify clean\n{}",
            show(&verify)
        );
        let lock_path = self.path("p.lock");
        if lock_path.exists() {
            assert!(
                LockFile::load(&lock_path).is_some(),
                "{context}: the lock file does not parse:\n{}",
                fs::read_to_string(&lock_path).unwrap_or_default()
            );
        }
        let rerun = self.taper(&["run", "p.yaml"]);
        assert!(
            rerun.status.success(),
            "{context}: the rerun failed\n{}",
            show(&rerun)
        );
        assert_eq!(self.outputs(), reference(), "{context}: outputs differ");
        assert!(
            LockFile::load(&lock_path).is_some(),
            "{context}: no lock file after the rerun"
        );
        assert_eq!(
            &self.untouchable(),
            before,
            "{context}: files outside the declared outs changed"
        );
        let again = self.taper(&["run", "p.yaml"]);
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("3 stages: 0 ran, 3 cached"),
            "{context}: a second rerun was not fully cached\n{}",
            show(&again)
        );
    }
}

fn collect(root: &Path, dir: &Path, found: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let relative = path.strip_prefix(root).expect("under root").to_path_buf();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.insert(relative, b"<dir>".to_vec());
            collect(root, &path, found);
        } else {
            found.insert(relative, fs::read(&path).unwrap_or_default());
        }
    }
}

/// Waits for `child` (bounded), collecting its output.
/// Polls until `path` exists; kills `child` and fails the test at the deadline.
fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{}` never appeared", path.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn show(output: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

#[test]
fn kill_9_during_a_slow_stage() {
    for slow in ["first", "second"] {
        let project = new_project();
        let before = project.untouchable();
        let mut child = project.spawn_slow(slow);
        wait_for(&project.signal(slow), &mut child);
        signal(&child, "KILL");
        wait_bounded(&mut child);
        project.assert_recovers(&before, &format!("kill -9 during `{slow}`"));
    }
}

#[test]
fn kill_9_right_after_a_stage_finished() {
    for finished in ["first.txt", "second.txt"] {
        let project = new_project();
        let before = project.untouchable();
        // Nothing hangs: the kill lands wherever the run is once the output appeared.
        let mut child = project.spawn_slow("none");
        wait_for(&project.path(finished), &mut child);
        signal(&child, "KILL");
        wait_bounded(&mut child);
        project.assert_recovers(&before, &format!("kill -9 once `{finished}` appeared"));
    }
}

#[test]
fn sigterm_during_a_slow_stage() {
    let project = new_project();
    let before = project.untouchable();
    let mut child = project.spawn_slow("second");
    wait_for(&project.signal("second"), &mut child);
    signal(&child, "TERM");
    wait_bounded(&mut child);
    project.assert_recovers(&before, "SIGTERM during `second`");
}

/// Ways to damage a stored object.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
    Empty,
    Missing,
}

fn damage(path: &Path, how: Damage) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut bytes = fs::read(path).expect("read object");
    match how {
        Damage::Flip => {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
        }
        Damage::Truncate => bytes.truncate(bytes.len() / 2),
        Damage::Empty => bytes.clear(),
        Damage::Missing => {
            fs::remove_file(path).expect("remove object");
            return;
        }
    }
    fs::write(path, bytes).expect("damage object");
}

fn files_in(bucket: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for shard in fs::read_dir(bucket).expect("bucket").flatten() {
        for file in fs::read_dir(shard.path()).expect("shard").flatten() {
            found.push(file.path());
        }
    }
    found
}

const DAMAGES: [Damage; 4] = [
    Damage::Flip,
    Damage::Truncate,
    Damage::Empty,
    Damage::Missing,
];

/// A damaged blob is never restored: the run notices while copying, quarantines it and reruns
/// the stage (saying why), and its dependents see the right bytes.
#[test]
fn a_damaged_blob_is_recomputed_not_restored() {
    for how in DAMAGES {
        let project = new_project();
        assert!(project.taper(&["run", "p.yaml"]).status.success());
        let before = project.untouchable();
        let first = &reference()["first.txt"];
        let hex = Digest::of_bytes(first).to_hex();
        let blob = project.store().join("blobs-v1").join(&hex[..2]).join(&hex);
        damage(&blob, how);
        project.remove_outputs();
        let run = project.taper(&["run", "p.yaml"]);
        assert!(run.status.success(), "{how:?}\n{}", show(&run));
        assert_eq!(project.outputs(), reference(), "{how:?}\n{}", show(&run));
        let stderr = String::from_utf8_lossy(&run.stderr);
        let expected = match how {
            Damage::Missing => "running  first: output missing from the store",
            _ => "running  first: cached output unusable: stored blob",
        };
        assert!(stderr.contains(expected), "{how:?}\n{}", show(&run));
        project.assert_recovers(&before, &format!("{how:?} blob"));
    }
}

/// `plan` does not promise a restore the run would refuse.
#[test]
fn plan_reports_a_damaged_blob_it_would_restore() {
    let project = new_project();
    assert!(project.taper(&["run", "p.yaml"]).status.success());
    let hex = Digest::of_bytes(&reference()["first.txt"]).to_hex();
    damage(
        &project.store().join("blobs-v1").join(&hex[..2]).join(&hex),
        Damage::Flip,
    );
    fs::remove_file(project.path("first.txt")).expect("remove");
    let plan = project.taper(&["plan", "p.yaml"]);
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert!(
        stdout.contains("first   will run  cached output unusable: stored blob")
            && stdout.contains("does not match its hash"),
        "{}",
        show(&plan)
    );
}

/// Damaged or missing manifests and action records cost a rerun, never a failure or a wrong
/// output, and are replaced.
#[test]
fn damaged_manifests_and_action_records_are_recomputed() {
    for bucket in ["manifests-v1", "actions-v1"] {
        for how in DAMAGES {
            let project = new_project();
            assert!(project.taper(&["run", "p.yaml"]).status.success());
            let before = project.untouchable();
            for object in files_in(&project.store().join(bucket)) {
                damage(&object, how);
            }
            project.remove_outputs();
            let run = project.taper(&["run", "p.yaml"]);
            let context = format!("{how:?} {bucket}");
            assert!(run.status.success(), "{context}\n{}", show(&run));
            assert_eq!(project.outputs(), reference(), "{context}\n{}", show(&run));
            project.assert_recovers(&before, &context);
        }
    }
}

/// Every file under `dir` with its bytes and permission bits.
fn store_state(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    collect(dir, dir, &mut files);
    files
        .into_iter()
        .map(|(path, bytes)| {
            let mode = fs::symlink_metadata(dir.join(&path))
                .map(|metadata| metadata.permissions().mode())
                .unwrap_or(0);
            (path, (bytes, mode))
        })
        .collect()
}

fn set_tree_writable(dir: &Path, writable: bool) {
    let mode = if writable { "u+w" } else { "a-w" };
    let status = Command::new("chmod")
        .args(["-R", mode])
        .arg(dir)
        .status()
        .expect("chmod");
    assert!(status.success());
}

/// A read-only store (`--read-only-store`, or `chmod -R a-w`, which is honoured even for root,
/// whom it does not stop): `plan` works, a fully cached run restores and exits 0, nothing in the
/// store changes, and a stage that is not cached fails naming the store and the fix.
/// As root, what this covers is the explicit flag and the permission-bit detection; the EROFS /
/// EACCES probe for read-only mounts is not reachable here without mounting.
#[test]
fn a_read_only_store_serves_cached_results() {
    for chmod in [false, true] {
        let project = new_project();
        assert!(project.taper(&["run", "p.yaml"]).status.success());
        let before = project.untouchable();
        project.remove_outputs();
        if chmod {
            set_tree_writable(&project.store(), false);
        }
        let store_before = store_state(&project.store());
        let flag: &[&str] = if chmod { &[] } else { &["--read-only-store"] };
        let plan = project.taper(&[&["plan", "p.yaml"][..], flag].concat());
        assert!(plan.status.success(), "{}", show(&plan));
        let run = project.taper(&[&["run", "p.yaml"][..], flag].concat());
        assert!(run.status.success(), "chmod: {chmod}\n{}", show(&run));
        assert_eq!(project.outputs(), reference());
        assert_eq!(
            store_state(&project.store()),
            store_before,
            "chmod: {chmod}"
        );
        assert_eq!(project.untouchable(), before);

        fs::write(project.path("in.txt"), "changed\n").expect("edit input");
        let miss = project.taper(&[&["run", "p.yaml"][..], flag].concat());
        assert_eq!(miss.status.code(), Some(1), "{}", show(&miss));
        let stderr = String::from_utf8_lossy(&miss.stderr);
        assert!(
            stderr.contains("is read-only: cannot store the result of a stage")
                && stderr.contains("taper::cache::read_only"),
            "{}",
            show(&miss)
        );
        assert_eq!(
            store_state(&project.store()),
            store_before,
            "chmod: {chmod}"
        );
        if chmod {
            set_tree_writable(&project.store(), true);
        }
        fs::write(project.path("in.txt"), "hello world\n").expect("restore input");
        project.assert_recovers(&before, &format!("read-only store (chmod: {chmod})"));
    }
}

/// Two runs of one pipeline at once share the store without damage.
#[test]
fn two_concurrent_runs() {
    let project = new_project();
    let before = project.untouchable();
    let children: Vec<Child> = (0..2)
        .map(|_| {
            project
                .command(&["run", "p.yaml"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn taper")
        })
        .collect();
    for child in children {
        let output = finish(child);
        assert!(output.status.success(), "{}", show(&output));
    }
    assert_eq!(project.outputs(), reference());
    project.assert_recovers(&before, "two concurrent runs");
}

/// A full disk. Making one needs a small filesystem (a tmpfs or loop mount, i.e. root tricks),
/// so this runs only when `TAPER_TEST_FULL_DIR` names a directory on a filesystem with less than
/// 64 MiB free; otherwise it says so and passes without checking anything.
#[test]
#[allow(clippy::print_stderr)] // a skipped check must say so in the test output
fn a_full_disk_fails_cleanly() {
    let Some(full) = std::env::var_os("TAPER_TEST_FULL_DIR") else {
        eprintln!("skipped: set TAPER_TEST_FULL_DIR to a directory on a nearly full filesystem");
        return;
    };
    let project = new_project();
    assert!(project.taper(&["run", "p.yaml"]).status.success());
    let store = PathBuf::from(full).join(format!("taper-faults-{}", std::process::id()));
    let big = PIPELINE.replace(
        "wc -c < second.txt > third.txt",
        "head -c 67108864 /dev/zero > big.bin; wc -c < second.txt > third.txt",
    );
    fs::write(project.path("p.yaml"), big).expect("write");
    let store_arg = store.to_string_lossy().into_owned();
    let run = project.taper(&["run", "p.yaml", "--store", &store_arg]);
    assert_eq!(run.status.code(), Some(1), "{}", show(&run));
    let verify = project.taper(&["cache", "verify", "--store", &store_arg]);
    assert!(verify.status.success(), "{}", show(&verify));
    assert!(LockFile::load(&project.path("p.lock")).is_some());
    let _ = fs::remove_dir_all(&store);
}

/// The store is the project's wherever taper is started from (issue 17): `cd pipelines && taper
/// plan p.yaml` finds the results of `taper run pipelines/p.yaml` made from the project root.
#[test]
fn the_store_is_found_from_any_directory() {
    let project = new_project();
    fs::create_dir_all(project.path(".git")).expect("mkdir");
    fs::create_dir_all(project.path("pipelines")).expect("mkdir");
    fs::rename(project.path("p.yaml"), project.path("pipelines/p.yaml")).expect("move");
    fs::rename(project.path("in.txt"), project.path("pipelines/in.txt")).expect("move");
    let run = project.taper(&["run", "pipelines/p.yaml"]);
    assert!(run.status.success(), "{}", show(&run));
    assert!(project.store().join("taper-store-v1").is_file());
    let plan = project
        .command(&["plan", "p.yaml"])
        .current_dir(project.path("pipelines"))
        .output()
        .expect("taper runs");
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("3 stages, 3 cached, 0 will run"),
        "{}",
        show(&plan)
    );
    assert!(!project.path("pipelines/cache").exists());
    let verify = project
        .command(&["cache", "verify"])
        .current_dir(project.path("pipelines"))
        .output()
        .expect("taper runs");
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("3 action records"),
        "{}",
        show(&verify)
    );
}
