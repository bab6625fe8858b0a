//! The GEMMs of MiniLM's linear layers at a given row count (batch × tokens), timed through the
//! `gemm` crate as taper's kernels call it: forward `x Wᵀ`, backward `dx = dy W` and
//! `dW = dyᵀ x`, for the q/k/v/output (384 → 384), intermediate (384 → 1536) and output
//! (1536 → 384) layers. `docs/benchmarks.md` ("GEMM") compares builds with and without gemm's
//! AVX-512 kernels:
//!
//! ```text
//! ROWS=1024 cargo bench --bench gemm_shapes
//! ROWS=1024 cargo bench --bench gemm_shapes --features gemm/x86-v4
//! ```
#![allow(clippy::print_stdout, unsafe_code)]

use std::time::Instant;

use gemm::{gemm, Parallelism};

/// Median seconds of `dst = lhs · rhs`, with each operand row-major or read transposed.
fn time(m: usize, n: usize, k: usize, lhs_t: bool, rhs_t: bool) -> f64 {
    let lhs = vec![1.0f32; m * k];
    let rhs = vec![1.0f32; k * n];
    let mut dst = vec![0.0f32; m * n];
    let (lhs_rs, lhs_cs) = if lhs_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rhs_rs, rhs_cs) = if rhs_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let start = Instant::now();
            // SAFETY: every view lies inside its buffer (the strides above describe `m × k`,
            // `k × n` and `m × n` matrices of exactly those lengths); `dst` aliases nothing.
            unsafe {
                gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    lhs.as_ptr(),
                    lhs_cs,
                    lhs_rs,
                    rhs.as_ptr(),
                    rhs_cs,
                    rhs_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                )
            };
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    println!("| layer (in → out) | forward | dx | dW |");
    println!("|---|---|---|---|");
    let mut total = 0.0;
    for (count, (in_dim, out_dim)) in [(4, (384, 384)), (1, (384, 1536)), (1, (1536, 384))] {
        let forward = time(rows, out_dim, in_dim, false, true);
        let dx = time(rows, in_dim, out_dim, false, false);
        let dw = time(out_dim, in_dim, rows, true, false);
        total += count as f64 * (forward + dx + dw);
        println!(
            "| {count} × {in_dim} → {out_dim} | {:.3} ms | {:.3} ms | {:.3} ms |",
            forward * 1e3,
            dx * 1e3,
            dw * 1e3
        );
    }
    println!(
        "\n{rows} rows: {:.1} ms of linear-layer GEMMs per layer",
        total * 1e3
    );
}
