//! Elementwise loops compiled for AVX2 and FMA when the CPU has them.
//!
//! taper is built for the x86-64 baseline, so the compiler vectorizes the kernels' loops with
//! SSE2's 4 lanes. Exact GELU, `exp` in softmax and LayerNorm are arithmetic-bound at 4 lanes
//! (GELU alone is ~30 operations per element); AVX2 doubles the lanes. The choice is made at
//! run time, so the same binary still runs on CPUs without AVX2. Results are bitwise the same
//! either way: each lane does the same IEEE operations (Rust never contracts `a * b + c` into an
//! FMA on its own), only more lanes at once.

/// Calls `f`, generated for AVX2+FMA on CPUs that have them. `f` is a closure used once, so
/// the compiler inlines its body (and the `#[inline(always)]` maths it calls) into the AVX2
/// function below, where it is vectorized 8 lanes wide.
#[inline(always)]
pub(super) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            #[allow(unsafe_code)]
            // SAFETY: `avx2` only needs the AVX2 and FMA instructions, which the CPU has (checked
            // just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::super::math;
    use super::*;

    #[test]
    fn wide_loops_give_bitwise_the_same_results() {
        let xs: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5_000.0) * 1.7e-3).collect();
        let run = |xs: &[f32]| -> Vec<f32> {
            xs.iter()
                .map(|x| math::gelu_derivative(*x) + math::exp(*x))
                .collect()
        };
        let narrow = run(&xs);
        let wide = wide(|| run(&xs));
        assert!(narrow
            .iter()
            .zip(&wide)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
