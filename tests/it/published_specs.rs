//! Published specs: `use: { url | pip, blake3 }` fetched into the store, pinned, and expanded
//! exactly as the same spec used by path.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use taper::cache::LockFile;

const SPEC: &str = "tests/fixtures/specs/greet.yaml";

/// Serves `body` at `/specs/greet.yaml` (404 elsewhere) until the test process ends; returns
/// the port and the count of requests served.
fn serve(body: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let response = if request.starts_with(b"GET /specs/greet.yaml ") {
                let mut response =
                    format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                        .into_bytes();
                response.extend_from_slice(&body);
                response
            } else {
                b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
            };
            let _ = stream.write_all(&response);
        }
    });
    (port, requests)
}

/// A project with `greet.yaml` and `uses.yaml` (which uses it by path) and `name.yaml`: the
/// same pipeline with `use: <published>`.
fn project(name: &str, published: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join(".taper")).expect(".taper");
    std::fs::copy(SPEC, dir.path().join("greet.yaml")).expect("copy");
    let uses = std::fs::read_to_string("tests/fixtures/specs/uses.yaml").expect("fixture");
    std::fs::write(dir.path().join("uses.yaml"), &uses).expect("write");
    assert!(uses.contains("use: greet.yaml\n"));
    std::fs::write(
        dir.path().join(format!("{name}.yaml")),
        uses.replace("use: greet.yaml\n", &format!("use: {published}\n")),
    )
    .expect("write");
    dir
}

fn taper(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_taper"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("TAPER_STORE")
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn stage_keys(lock: &LockFile) -> BTreeMap<String, String> {
    lock.stages
        .iter()
        .map(|(name, stage)| (name.clone(), stage.key.to_string()))
        .collect()
}

/// Runs `uses.yaml` and `name.yaml` and checks they lock the same stage keys and spec hash;
/// returns the published pipeline's lock.
fn run_both(dir: &Path, name: &str, env: &[(&str, &str)]) -> LockFile {
    for file in ["uses.yaml", &format!("{name}.yaml")] {
        let (code, _, stderr) = taper(&["run", file], dir, env);
        assert_eq!(code, 0, "{file}: {stderr}");
    }
    let by_path = LockFile::load(&dir.join("uses.lock")).expect("lock");
    let published = LockFile::load(&dir.join(format!("{name}.lock"))).expect("lock");
    assert_eq!(stage_keys(&published), stage_keys(&by_path));
    assert_eq!(published.stages.len(), 4);
    assert_eq!(
        published.specs["greet"].blake3,
        by_path.specs["greet"].blake3
    );
    assert_eq!(published.specs["greet"].path, None);
    published
}

fn pin() -> String {
    blake3::hash(&std::fs::read(SPEC).expect("spec"))
        .to_hex()
        .to_string()
}

/// A spec at a URL gives the stage keys of the same spec used by path, is fetched once into
/// the store, and `validate`, `plan` and `dag` read it from there.
#[test]
fn a_url_spec_keys_like_the_path_spec_and_is_fetched_once() {
    let (port, requests) = serve(std::fs::read(SPEC).expect("spec"));
    let url = format!("http://127.0.0.1:{port}/specs/greet.yaml");
    let dir = project("url", &format!("{{ url: \"{url}\", blake3: {} }}", pin()));
    let lock = run_both(dir.path(), "url", &[]);
    assert_eq!(lock.specs["greet"].url.as_deref(), Some(url.as_str()));
    let text = std::fs::read_to_string(dir.path().join("url.lock")).expect("lock");
    assert!(
        text.contains(&format!(
            "specs:\n  greet:\n    url: {url}\n    spec: greet"
        )),
        "{text}"
    );
    for command in ["validate", "plan", "dag"] {
        let (code, _, stderr) = taper(&[command, "url.yaml"], dir.path(), &[]);
        assert_eq!(code, 0, "{command}: {stderr}");
    }
    let (code, by_path, stderr) = taper(&["spec", "show", "greet.yaml"], dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, published, stderr) = taper(
        &["spec", "show", "--url", &url, "--blake3", &pin()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(published, by_path);
    assert_eq!(requests.load(Ordering::SeqCst), 1, "served from the store");
    assert!(dir.path().join("cache/downloads-v1").is_dir());
    let wrong = "0".repeat(64);
    let (code, _, stderr) = taper(
        &["spec", "show", "--url", &url, "--blake3", &wrong],
        dir.path(),
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("taper::data::hash_mismatch"), "{stderr}");
}

/// A wrong pin and an unreachable spec are each one diagnostic at the `use:` line.
#[test]
fn a_wrong_pin_or_a_missing_spec_is_an_error_at_the_use() {
    let (port, _) = serve(std::fs::read(SPEC).expect("spec"));
    let url = format!("http://127.0.0.1:{port}/specs/greet.yaml");
    let dir = project(
        "wrong",
        &format!("{{ url: \"{url}\", blake3: {} }}", "0".repeat(64)),
    );
    let (code, _, stderr) = taper(&["validate", "wrong.yaml"], dir.path(), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&pin()), "names the digest found: {stderr}");
    insta::with_settings!({ filters => vec![(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT")] }, {
        insta::assert_snapshot!("published_spec_wrong_pin", stderr);
    });
    assert!(!dir.path().join("wrong.lock").exists());

    let missing = url.replace("greet.yaml", "gone.yaml");
    let text = std::fs::read_to_string(dir.path().join("wrong.yaml")).expect("pipeline");
    std::fs::write(dir.path().join("wrong.yaml"), text.replace(&url, &missing)).expect("write");
    let (code, _, stderr) = taper(&["validate", "wrong.yaml"], dir.path(), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("taper::spec::use_spec"), "{stderr}");
    assert!(stderr.contains("cannot fetch spec"), "{stderr}");
    assert!(
        stderr.contains("wrong.yaml:5"),
        "at the use: line: {stderr}"
    );
}

/// A spec inside a wheel, fetched by the real pip from a local find-links directory (as the
/// pip source tests do); skipped where pip is absent.
#[test]
fn a_pip_spec_keys_like_the_path_spec() {
    if Command::new("pip").arg("--version").output().is_err() {
        return;
    }
    let links = tempfile::tempdir().expect("tempdir");
    let wheel = std::fs::File::create(links.path().join("team_specs-1.2.0-py3-none-any.whl"))
        .expect("wheel");
    let mut zip = zip::ZipWriter::new(wheel);
    let options = zip::write::SimpleFileOptions::default();
    let spec = std::fs::read(SPEC).expect("spec");
    let files: [(&str, &[u8]); 4] = [
        ("team_specs/greet.yaml", &spec),
        (
            "team_specs-1.2.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: team-specs\nVersion: 1.2.0\n",
        ),
        (
            "team_specs-1.2.0.dist-info/WHEEL",
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        ("team_specs-1.2.0.dist-info/RECORD", b""),
    ];
    for (name, bytes) in files {
        zip.start_file(name, options).expect("zip entry");
        zip.write_all(bytes).expect("zip write");
    }
    zip.finish().expect("zip");
    let dir = project(
        "pip",
        &format!(
            "{{ pip: \"team-specs==1.2.0\", member: team_specs/greet.yaml, blake3: {} }}",
            pin()
        ),
    );
    let links = links.path().display().to_string();
    let env = [("PIP_NO_INDEX", "1"), ("PIP_FIND_LINKS", links.as_str())];
    let lock = run_both(dir.path(), "pip", &env);
    assert_eq!(
        lock.specs["greet"].pip.as_deref(),
        Some("team-specs==1.2.0")
    );
    assert_eq!(
        lock.specs["greet"].member.as_deref(),
        Some("team_specs/greet.yaml")
    );
    // Cached: no index is needed any more.
    let (code, _, stderr) = taper(
        &["validate", "pip.yaml"],
        dir.path(),
        &[("PIP_FIND_LINKS", "/nonexistent")],
    );
    assert_eq!(code, 0, "{stderr}");
}

/// Every file under `dir`, relative, with its length: what a command wrote there shows as a
/// difference.
fn files_under(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let length = std::fs::metadata(&path).expect("metadata").len();
                let relative = path.strip_prefix(dir).expect("under dir");
                out.push((relative.display().to_string(), length));
            }
        }
    }
    out.sort();
    out
}

/// `--read-only-store` writes nothing to the store, published specs included: a spec that is
/// not downloaded yet is refused with the reason and the fix, without a request; once a plain
/// run has fetched it, the read-only run reads it from the store.
#[test]
fn a_read_only_store_never_downloads_a_published_spec() {
    let (port, requests) = serve(std::fs::read(SPEC).expect("spec"));
    let url = format!("http://127.0.0.1:{port}/specs/greet.yaml");
    let dir = project("url", &format!("{{ url: \"{url}\", blake3: {} }}", pin()));
    let (code, _, stderr) = taper(&["run", "uses.yaml"], dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    let store = dir.path().join("cache");
    let before = files_under(&store);

    let (code, _, stderr) = taper(&["run", "--read-only-store", "url.yaml"], dir.path(), &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("is not in the downloads of the")
            && stderr.contains("the store is read-only")
            && stderr.contains("run once without it"),
        "{stderr}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 0, "it downloaded");
    assert_eq!(files_under(&store), before, "the read-only store changed");

    let (code, _, stderr) = taper(&["run", "url.yaml"], dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    let (code, _, stderr) = taper(&["run", "--read-only-store", "url.yaml"], dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}
