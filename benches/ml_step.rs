//! ML core figures on the all-MiniLM-L6-v2 shape (random weights: speed does not depend on
//! them): training step time for full fine-tuning and LoRA at batch 16, lengths 64 and 128;
//! inference samples/s at batch 32; single-sentence latency; and the fraction of this
//! machine's measured f32 GEMM peak that a training step reaches.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench --bench ml_step` (add `-- quick` for fewer repeats).
//! Prints a markdown table for `docs/benchmarks.md`; `-- --json PATH` also writes the times
//! (seconds) for `benches/torch_compare/run.sh`.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use candle_core::{Device, Tensor};
use taper::ml::fixtures::{write_random_model, NameStyle};
use taper::ml::{Batch, Classifier, DeviceChoice, EncoderConfig, Trainer};
use taper::model::Configure;

fn minilm_shape() -> EncoderConfig {
    serde_json::from_str(
        r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,
            "num_attention_heads":12,"intermediate_size":1536,"hidden_act":"gelu",
            "max_position_embeddings":512,"type_vocab_size":2,"layer_norm_eps":1e-12}"#,
    )
    .unwrap()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

fn batch(size: usize, tokens: usize, seed: u32) -> Batch {
    let sequences: Vec<Vec<u32>> = (0..size)
        .map(|i| {
            (0..tokens)
                .map(|t| 1000 + ((i as u32 * 7919 + t as u32 * 104_729 + seed) % 20_000))
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
    let labels: Vec<u32> = (0..size as u32).map(|i| i % 2).collect();
    Batch::new(&refs, &labels, 0).unwrap()
}

/// FLOPs of one forward pass: 2·m·n·k per GEMM (linear layers, attention scores and context).
fn forward_flops(config: &EncoderConfig, size: usize, tokens: usize) -> f64 {
    let h = config.hidden_size as f64;
    let i = config.intermediate_size as f64;
    let n = (size * tokens) as f64;
    let per_layer = 2.0 * n * (4.0 * h * h + 2.0 * h * i) + 2.0 * 2.0 * n * tokens as f64 * h;
    per_layer * config.num_hidden_layers as f64
}

fn gemm_peak() -> f64 {
    let a = Tensor::ones((1024, 1024), candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::ones((1024, 1024), candle_core::DType::F32, &Device::Cpu).unwrap();
    let _ = a.matmul(&b).unwrap();
    let mut times = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let _ = a.matmul(&b).unwrap();
        times.push(start.elapsed().as_secs_f64());
    }
    2.0 * 1024f64.powi(3) / median(times) / 1e9
}

fn main() {
    // The same allocator and thread settings as the `taper` binary, so these are the figures users get.
    taper::ml::tune_runtime();
    let quick = std::env::args().any(|a| a == "quick");
    let repeats = if quick { 3 } else { 7 };
    let args: Vec<String> = std::env::args().collect();
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let mut results = serde_json::Map::new();
    // `ML_STEP_ONLY=train_full_64` runs only the figures whose key contains the value (for A/B
    // comparisons of one change).
    let only = std::env::var("ML_STEP_ONLY").unwrap_or_default();
    let wanted = |key: &str| key.contains(only.as_str());
    let mut record = |key: String, seconds: f64| {
        results.insert(key, serde_json::json!(seconds));
    };
    let dir = tempfile::tempdir().unwrap();
    let config = minilm_shape();
    write_random_model(dir.path(), &config, 1, NameStyle::Plain).unwrap();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let peak = gemm_peak();
    println!("threads: {threads}; f32 GEMM 1024³ peak: {peak:.1} GFLOP/s\n");
    println!("| figure | value | GFLOP/s (share of peak) |");
    println!("|---|---|---|");
    for method in [r#"{"name":"full"}"#, r#"{"name":"lora","r":8,"alpha":16}"#] {
        for tokens in [64, 128] {
            let key = if method.contains("lora") {
                "lora"
            } else {
                "full"
            };
            if !wanted(&format!("train_{key}_{tokens}")) {
                continue;
            }
            let settings: Configure =
                serde_json::from_str(&format!(r#"{{"method":{method},"dropout":0.1}}"#)).unwrap();
            let classifier = Classifier::new(dir.path(), 2, &settings, DeviceChoice::Cpu).unwrap();
            let mut trainer = Trainer::new(classifier, &settings, 1000).unwrap();
            let b = batch(16, tokens, 1);
            trainer.step(&b).unwrap();
            let mut times = Vec::new();
            for _ in 0..repeats {
                let start = Instant::now();
                trainer.step(&b).unwrap();
                times.push(start.elapsed().as_secs_f64());
            }
            let t = median(times);
            // Backward costs about two forwards (both operand gradients), except that LoRA
            // computes no weight gradients for the frozen base: about one forward.
            let factor = if method.contains("lora") { 2.0 } else { 3.0 };
            let gflops = factor * forward_flops(&config, 16, tokens) / t / 1e9;
            let name = if method.contains("lora") {
                "LoRA r=8"
            } else {
                "full"
            };
            let key = if method.contains("lora") {
                "lora"
            } else {
                "full"
            };
            record(format!("train_{key}_{tokens}"), t);
            println!(
                "| train step {name}, batch 16, length {tokens} | {t:.3} s ({:.1} samples/s) | {gflops:.0} ({:.0}%) |",
                16.0 / t,
                100.0 * gflops / peak
            );
        }
    }
    let settings: Configure = serde_json::from_str("{}").unwrap();
    let classifier = Classifier::new(dir.path(), 2, &settings, DeviceChoice::Cpu).unwrap();
    for tokens in [64, 128] {
        if !wanted(&format!("infer_32_{tokens}")) {
            continue;
        }
        let b = batch(32, tokens, 2);
        classifier.logits(&b).unwrap();
        let mut times = Vec::new();
        for _ in 0..repeats {
            let start = Instant::now();
            classifier.logits(&b).unwrap();
            times.push(start.elapsed().as_secs_f64());
        }
        let t = median(times);
        record(format!("infer_32_{tokens}"), t);
        let gflops = forward_flops(&config, 32, tokens) / t / 1e9;
        println!(
            "| inference, batch 32, length {tokens} | {:.0} samples/s | {gflops:.0} ({:.0}%) |",
            32.0 / t,
            100.0 * gflops / peak
        );
    }
    if wanted("latency_p50") {
        let one = batch(1, 22, 3);
        for _ in 0..5 {
            classifier.logits(&one).unwrap();
        }
        let mut times = Vec::new();
        for _ in 0..if quick { 30 } else { 100 } {
            let start = Instant::now();
            classifier.logits(&one).unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let p50 = percentile(times.clone(), 0.5);
        record("latency_p50".to_owned(), p50 / 1e3);
        println!(
            "| one sentence (22 tokens), model only | p50 {p50:.1} ms, p95 {:.1} ms | |",
            percentile(times, 0.95)
        );
    }
    if let Some(path) = json_path {
        std::fs::write(path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    }
}
