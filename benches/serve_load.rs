//! Load test of `taper serve` on loopback (issue 10): `clients` threads, each on one keep-alive
//! HTTP/1.1 connection, send one sentence per `POST /predict` for `seconds`, cycling through
//! the sentences of a JSON-lines file (`{"text": ...}` per line, e.g. the quickstart's test
//! split). Prints requests, errors (any status but 200, or a broken connection), requests/s,
//! p50 and p99 as a markdown row. A bounded client of its own (std only) rather than `wrk`, so
//! nothing needs installing and every response is checked.
//!
//! ```sh
//! taper serve pipelines/out/quickstart/deploy &   # a release build, for real figures
//! # the client needs no optimisation: `--profile dev` builds no optimised taper
//! cargo bench --profile dev --bench serve_load -- --url 127.0.0.1:8080 \
//!     --input pipelines/out/quickstart/data/test.jsonl --clients 16 --seconds 30
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Options {
    address: String,
    input: String,
    clients: usize,
    seconds: u64,
}

fn options() -> Options {
    let mut options = Options {
        address: "127.0.0.1:8080".to_owned(),
        input: "pipelines/out/quickstart/data/test.jsonl".to_owned(),
        clients: 16,
        seconds: 30,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` appends `--bench`; every other flag takes a value.
    let mut pairs = args.iter().filter(|arg| *arg != "--bench");
    while let (Some(flag), Some(value)) = (pairs.next(), pairs.next()) {
        match flag.as_str() {
            "--url" => options.address = value.trim_start_matches("http://").to_owned(),
            "--input" => options.input = value.clone(),
            "--clients" => options.clients = value.parse().unwrap(),
            "--seconds" => options.seconds = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

/// A keep-alive connection without Nagle's algorithm (requests are single writes anyway).
fn connect(address: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    BufReader::new(stream)
}

/// One request on a persistent connection; the status code.
fn request(stream: &mut BufReader<TcpStream>, address: &str, body: &str) -> std::io::Result<u16> {
    // One write of the whole request: `write!` straight to the socket sends each formatted
    // piece as its own segment, and Nagle's algorithm then holds the body until the server's
    // delayed ACK (~40 ms on Linux), which measured the ACK timer instead of the server.
    let request = format!(
        "POST /predict HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(request.as_bytes())?;
    let mut status_line = String::new();
    stream.read_line(&mut status_line)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut response = vec![0; length];
    stream.read_exact(&mut response)?;
    Ok(status)
}

fn main() {
    let options = options();
    let bodies: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(&options.input)
            .unwrap()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                serde_json::json!({"inputs": row["text"]}).to_string()
            })
            .collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let started = Instant::now();
    let clients: Vec<_> = (0..options.clients)
        .map(|client| {
            let bodies = Arc::clone(&bodies);
            let address = options.address.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                let mut stream = connect(&address);
                let mut index = client;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match request(&mut stream, &address, &bodies[index % bodies.len()]) {
                        Ok(200) => latencies.push(sent.elapsed()),
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            stream = connect(&address);
                        }
                    }
                    index += options.clients;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for client in clients {
        let (mut own, own_errors) = client.join().unwrap();
        latencies.append(&mut own);
        errors += own_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!("| clients | seconds | requests | errors | requests/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} | {} | {} | {:.1} | {:.2} | {:.2} |",
        options.clients,
        elapsed,
        latencies.len() + errors,
        errors,
        latencies.len() as f64 / elapsed,
        percentile(0.5),
        percentile(0.99)
    );
}
