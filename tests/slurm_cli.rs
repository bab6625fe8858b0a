//! End-to-end tests of `taper run --executor slurm` (issue 12) against a real one-node Slurm
//! cluster (munged, slurmctld, slurmd from Debian's packages), started by
//! `scripts/services/slurm-up` for this test and stopped by the PIDs it records.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{runs, stderr, Project};

/// Four stages: `a` feeds `b` and `c`, both feed `d`. `b` fails when `fail.txt` says so.
const PIPELINE: &str = r#"version: 1
name: four
stages:
  a:
    kind: command
    run: echo a >> runs.txt && sleep ${params.pause} && tr a-z A-Z < in.txt > a.txt
    deps: [in.txt]
    outs: [a.txt]
  b:
    kind: command
    run: echo b >> runs.txt && test "$(cat fail.txt)" = ok && rev a.txt > b.txt
    deps: [a.txt, fail.txt]
    outs: [b.txt]
  c:
    kind: command
    run: echo c >> runs.txt && wc -c < a.txt > c.txt
    deps: [a.txt]
    outs: [c.txt]
  d:
    kind: command
    run: echo d >> runs.txt && cat b.txt c.txt > d.txt
    deps: [b.txt, c.txt]
    outs: [d.txt]
params:
  pause: 0
"#;

struct Slurm {
    dir: tempfile::TempDir,
}

impl Slurm {
    /// `None` (the test skips) only when Slurm is not installed and `CI` is unset.
    #[allow(clippy::print_stderr)] // a skipped test must say so in the test output
    fn start() -> Option<Slurm> {
        let installed = ["slurmctld", "slurmd", "munged", "sbatch"]
            .iter()
            .all(|program| {
                ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
                    .iter()
                    .any(|dir| Path::new(dir).join(program).is_file())
            });
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "Slurm is not installed but CI is set: `.ci/run` installs slurm-wlm and munge"
            );
            eprintln!(
                "skipped: Slurm is not installed (apt-get install slurm-wlm munge runs this test)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("slurm dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services/slurm-up");
        let output = Command::new(script)
            .arg(dir.path().join("cluster"))
            .output()
            .expect("slurm-up runs");
        let slurm = Slurm { dir };
        assert!(
            output.status.success(),
            "slurm-up failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            fs::read_to_string(slurm.cluster().join("log/slurmctld.log")).unwrap_or_default()
        );
        Some(slurm)
    }

    fn cluster(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    fn conf(&self) -> String {
        self.cluster().join("slurm.conf").display().to_string()
    }

    /// Jobs Slurm knows (all states).
    fn job_count(&self) -> usize {
        let output = Command::new("squeue")
            .args(["-h", "--states=all", "-o", "%i"])
            .env("SLURM_CONF", self.conf())
            .output()
            .expect("squeue");
        String::from_utf8_lossy(&output.stdout).lines().count()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // By the PIDs slurm-up recorded: only the daemons this test started.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services/slurm-down");
        let _ = Command::new(script).arg(self.cluster()).status();
    }
}

fn slurm_run(project: &Project, slurm: &Slurm, extra: &[&str]) -> Output {
    let mut args = vec!["run", "p.yaml", "--executor", "slurm"];
    args.extend(extra);
    let child = project
        .command(&args)
        .env("SLURM_CONF", slurm.conf())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taper starts");
    common::finish(child)
}

#[test]
fn stages_run_as_chained_slurm_jobs_fail_cleanly_and_reattach() {
    let Some(slurm) = Slurm::start() else {
        return;
    };
    let project = Project::new(PIPELINE);
    project.write("fail.txt", "ok\n");
    project.write(
        ".taper/config.yaml",
        "slurm:\n  defaults: {time: \"5:00\", mem: 100M}\n  kinds: {command: {cpus: 1}}\n",
    );

    // All four stages run on Slurm, in dependency order.
    let first = slurm_run(&project, &slurm, &[]);
    assert!(first.status.success(), "{}", project.show(&first));
    assert_eq!(runs(&project), ["a", "b", "c", "d"]);
    assert_eq!(project.read("d.txt"), "OLLEH\n6\n");
    let text = stderr(&first);
    assert_eq!(text.matches("submitted ").count(), 4, "{text}");
    assert!(text.contains("4 stages: 0 ran, 4 cached"), "{text}");
    assert!(project.read("p.lock").contains("d:"));

    // Nothing stale: nothing submitted.
    let jobs = slurm.job_count();
    let second = slurm_run(&project, &slurm, &[]);
    assert!(second.status.success(), "{}", project.show(&second));
    assert!(
        !stderr(&second).contains("submitted"),
        "{}",
        project.show(&second)
    );
    assert_eq!(slurm.job_count(), jobs);

    // `b` fails: Slurm cancels `d`; the report names the job and its log.
    project.write("fail.txt", "no\n");
    let failed = slurm_run(&project, &slurm, &[]);
    assert_eq!(failed.status.code(), Some(1), "{}", project.show(&failed));
    assert_eq!(runs(&project), ["b"]);
    let text = stderr(&failed);
    assert!(text.contains("stage `b` failed in Slurm job"), "{text}");
    assert!(text.contains("(FAILED)"), "{text}");
    let log = text
        .split("the job's log is `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no log path in: {text}"));
    assert!(
        fs::read_to_string(log).is_ok_and(|log| log.contains("b")),
        "{log}"
    );
    assert!(text.contains("cancelled d"), "{text}");

    // Killed while its jobs are queued or running: the next run reattaches to them.
    project.write("fail.txt", "ok\n");
    let table = project.path(".taper/slurm/p/jobs.json");
    // Forget the earlier runs' jobs, so the wait below sees only this run's submissions.
    fs::remove_file(&table).expect("job table of the earlier runs");
    let mut child = project
        .command(&[
            "run",
            "p.yaml",
            "--executor",
            "slurm",
            "-S",
            "params.pause=3",
        ])
        .env("SLURM_CONF", slurm.conf())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("taper starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Every stage is stale again (new `pause`): wait for all four submissions.
    while fs::read_to_string(&table).map_or(0, |text| text.matches("job_id").count()) < 4 {
        assert!(Instant::now() < deadline, "jobs were not submitted");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("kill taper");
    let _ = child.wait();
    let jobs = slurm.job_count();
    let again = slurm_run(&project, &slurm, &["-S", "params.pause=3"]);
    assert!(again.status.success(), "{}", project.show(&again));
    let text = stderr(&again);
    assert!(text.contains("attached a"), "{text}");
    assert!(!text.contains("submitted"), "{text}");
    assert_eq!(slurm.job_count(), jobs, "no job was submitted twice");
    assert_eq!(project.read("d.txt"), "OLLEH\n6\n");
}
