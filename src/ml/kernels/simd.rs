//! Elementwise loops compiled for AVX2 and FMA when the CPU has them.
//!
//! taper is built for the x86-64 baseline, so the compiler vectorizes the kernels' loops with
//! SSE2's 4 lanes. Exact GELU and its derivative are arithmetic-bound at 4 lanes (~30
//! operations per element); AVX2 doubles the lanes. The choice is made at run time, so the same
//! binary still runs on CPUs without AVX2. Results are bitwise the same either way: each lane
//! does the same IEEE operations (Rust never contracts `a * b + c` into an FMA on its own), only
//! more lanes at once.
//!
//! Why a macro around named `#[inline(always)]` loops rather than a closure passed to one AVX2
//! function: a closure body is inlined into that function only if the optimizer chooses to, and
//! for GELU's backward loop it did not; the loop then ran out of line, compiled for SSE2 (5.8%
//! of a LoRA step in a profile). An `#[inline(always)]` function called from a
//! `#[target_feature]` wrapper is always generated inside it.

/// `wide_fn!(fn name(args) => body)` defines `name(args)`, which runs `body(args)` (an
/// `#[inline(always)]` function returning `()`) compiled for AVX2+FMA on CPUs that have them.
macro_rules! wide_fn {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:path) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    #[allow(unsafe_code)]
                    // SAFETY: `avx2` needs only the AVX2 and FMA instructions, which this CPU
                    // has (checked just above).
                    unsafe {
                        avx2($($arg),*)
                    };
                    return;
                }
            }
            $body($($arg),*)
        }
    };
}

pub(super) use wide_fn;

#[cfg(test)]
mod tests {
    use super::super::math;

    #[inline(always)]
    fn loop_body(out: &mut [f32], xs: &[f32]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = math::gelu_derivative(*x) + math::exp(*x);
        }
    }

    wide_fn!(fn wide_loop(out: &mut [f32], xs: &[f32]) => loop_body);

    #[test]
    fn wide_loops_give_bitwise_the_same_results() {
        let xs: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5_000.0) * 1.7e-3).collect();
        let mut narrow = vec![0f32; xs.len()];
        let mut wide = vec![0f32; xs.len()];
        loop_body(&mut narrow, &xs);
        wide_loop(&mut wide, &xs);
        assert!(narrow
            .iter()
            .zip(&wide)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
