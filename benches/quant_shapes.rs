#![allow(clippy::print_stdout)]
use std::time::Instant;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor, DType};

fn med(mut v: Vec<f64>) -> f64 { v.sort_by(|a, b| a.total_cmp(b)); v[v.len() / 2] }

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for rows in [22usize, 480] {
        for (k, n) in [(384usize, 384usize), (384, 1536), (1536, 384)] {
            let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?;
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let f = |g: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<f64> {
                let mut t = vec![];
                for _ in 0..30 { let s = Instant::now(); let _ = g()?; t.push(s.elapsed().as_secs_f64() * 1e3); }
                Ok(med(t))
            };
            let wt = w.t()?;
            let f32t = f(&|| x.matmul(&wt))?;
            let mut line = format!("rows {rows} {k}->{n}: f32 {f32t:.3} ms");
            for dt in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q8K, GgmlDType::BF16, GgmlDType::F16] {
                let q = match QTensor::quantize(&w, dt) { Ok(q) => q, Err(_) => { line += &format!(" {dt:?} n/a"); continue } };
                let qm = QMatMul::from_qtensor(q)?;
                let qt = f(&|| qm.forward(&x))?;
                line += &format!(" {dt:?} {qt:.3}");
            }
            let xb = x.to_dtype(DType::BF16)?; let wb = wt.to_dtype(DType::BF16)?;
            let bt = f(&|| xb.matmul(&wb))?;
            line += &format!(" bf16-matmul {bt:.3}");
            println!("{line}");
        }
    }
    Ok(())
}
