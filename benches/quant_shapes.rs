//! candle's quantized matmul (`QMatMul`) against its f32 GEMM at MiniLM's linear-layer shapes:
//! why taper's int8 inference has a kernel of its own (`src/ml/kernels/int8.rs`;
//! docs/benchmarks.md, "Serving"). Medians of 30 calls, in ms, per dtype ("n/a": candle
//! refuses the shape for that dtype).
//!
//! ```text
//! cargo bench --bench quant_shapes
//! ```
#![allow(clippy::print_stdout)]

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

/// Median milliseconds of 30 calls of `call`.
fn median_ms(call: &dyn Fn() -> Result<Tensor>) -> Result<f64> {
    let mut times = Vec::with_capacity(30);
    for _ in 0..30 {
        let start = Instant::now();
        call()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<()> {
    let device = Device::Cpu;
    for rows in [22usize, 480] {
        for (k, n) in [(384usize, 384usize), (384, 1536), (1536, 384)] {
            let weight = Tensor::randn(0f32, 0.05, (n, k), &device)?;
            let x = Tensor::randn(0f32, 1.0, (rows, k), &device)?;
            let transposed = weight.t()?;
            let f32_ms = median_ms(&|| x.matmul(&transposed))?;
            let mut line = format!("rows {rows}, {k} -> {n}: f32 {f32_ms:.3}");
            for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K] {
                match QTensor::quantize(&weight, dtype) {
                    Ok(quantized) => {
                        let matmul = QMatMul::from_qtensor(quantized)?;
                        let ms = median_ms(&|| matmul.forward(&x))?;
                        line += &format!(", {dtype:?} {ms:.3}");
                    }
                    Err(_) => line += &format!(", {dtype:?} n/a"),
                }
            }
            println!("{line}");
        }
    }
    Ok(())
}
