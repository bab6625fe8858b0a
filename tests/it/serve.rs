//! `taper predict` and a spawned `taper serve` on a tiny bundle: real processes, real sockets,
//! and SIGTERM while a request is in flight (the router itself is tested in `src/serve/tests.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use taper::stages::fixtures::write_tiny_bundle;

fn tiny_bundle(work: &Path) -> std::path::PathBuf {
    let bundle = work.join("bundle");
    write_tiny_bundle(work, &bundle, "key").expect("bundle");
    bundle
}

fn taper(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_taper"));
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    command
}

#[test]
fn predict_scores_texts_and_jsonl_and_refuses_a_tampered_bundle() {
    let work = tempfile::tempdir().expect("temp dir");
    let bundle = tiny_bundle(work.path());
    let bundle_arg = bundle.to_str().expect("utf-8 path");
    let output = taper(&["predict", bundle_arg, "the film was good", "dull"])
        .output()
        .expect("taper runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].as_array().expect("classes").len(), 2);

    let input = work.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"dull\"}\n\"the film was good\"\n").expect("write");
    let output = taper(&[
        "predict",
        bundle_arg,
        "--input",
        input.to_str().expect("utf-8"),
    ])
    .output()
    .expect("taper runs");
    assert!(output.status.success(), "{output:?}");
    let from_file: Vec<String> = String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    // Same texts, other order and batch: same scores.
    assert_eq!(
        from_file[1],
        stdout.lines().next().expect("line").to_owned()
    );

    // At int8 the scores move a little, not the shape of the answer; a bad precision is a
    // usage error naming the choices.
    let output = taper(&[
        "predict",
        bundle_arg,
        "--precision",
        "int8",
        "the film was good",
    ])
    .output()
    .expect("taper runs");
    assert!(output.status.success(), "{output:?}");
    let int8 = String::from_utf8(output.stdout).expect("utf-8");
    assert_ne!(
        int8.lines().next(),
        stdout.lines().next(),
        "int8 must really run"
    );
    let int8: serde_json::Value = serde_json::from_str(int8.trim()).expect("JSON line");
    assert_eq!(int8[0]["label"], lines[0][0]["label"]);
    let output = taper(&["predict", bundle_arg, "--precision", "int4", "good"])
        .output()
        .expect("taper runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("use `f32` or `int8`"), "{stderr}");

    std::fs::write(bundle.join("vocab.txt"), "tampered\n").expect("write");
    let output = taper(&["predict", bundle_arg, "good"])
        .output()
        .expect("taper runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("vocab.txt"), "{stderr}");
}

/// `Connection: close` HTTP/1.1: status code and body.
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn a_spawned_server_answers_and_finishes_in_flight_requests_on_sigterm() {
    let work = tempfile::tempdir().expect("temp dir");
    let bundle = tiny_bundle(work.path());
    // A long batching wait keeps the request below in flight when SIGTERM arrives.
    let mut server = taper(&[
        "serve",
        bundle.to_str().expect("utf-8 path"),
        "--port",
        "0",
        "--max-wait-ms",
        "1500",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .expect("taper serve starts");
    let mut stderr = BufReader::new(server.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("status line");
    let address = line
        .trim()
        .rsplit("http://")
        .next()
        .expect("address")
        .to_owned();
    assert!(
        line.contains("serving bundle") && line.contains("(f32)"),
        "{line}"
    );

    let (status, body) = http(&address, "GET", "/health", "");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = http(&address, "GET", "/info", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("LABEL_0"), "{body}");
    assert!(body.contains(r#""precision":"f32""#), "{body}");
    let (status, body) = http(&address, "POST", "/predict", r#"{"inputs": []}"#);
    assert_eq!(status, 422, "{body}");
    let (status, body) = http(&address, "POST", "/explain", r#"{"inputs": "good film"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""words":["good","film"]"#), "{body}");

    let in_flight = {
        let address = address.clone();
        std::thread::spawn(move || http(&address, "POST", "/predict", r#"{"inputs": "good"}"#))
    };
    std::thread::sleep(Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let (status, body) = in_flight.join().expect("client thread");
    assert_eq!(status, 200, "the in-flight request was cut off: {body}");
    let exit = server.wait().expect("server exits");
    assert!(exit.success(), "{exit:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    assert!(rest.contains("stopped"), "{rest}");
}
