//! A bounds-checked, safe wrapper around the `gemm` crate, the GEMM behind candle's CPU matmul.
//!
//! The kernels multiply strided views in place: one head's columns inside `[tokens, hidden]`
//! rows, transposed operands of a backward pass. candle's matmul would need each of those views
//! copied to a contiguous tensor first (the head split/merge copies this module removes).

use gemm::Parallelism;

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` view whose rows start `row_stride` elements apart.
    pub(super) fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transposed view (no copy).
    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn in_bounds(&self) -> bool {
        fits(
            self.data.len(),
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
        )
    }
}

/// A writable row-major matrix view.
pub(super) struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    pub(super) fn rows(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

fn fits(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    (rows - 1)
        .checked_mul(row_stride)
        .zip((cols - 1).checked_mul(col_stride))
        .and_then(|(a, b)| a.checked_add(b))
        .is_some_and(|last| last < len)
}

/// Whether a GEMM may spread over rayon's pool: not from inside a task that already runs on it
/// (a per-batch-element attention task), where nested splitting only adds synchronisation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Threads {
    Pool,
    Single,
}

/// `dst = (accumulate ? dst : 0) + scale · lhs · rhs`.
pub(super) fn gemm(
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    scale: f32,
    threads: Threads,
) -> candle_core::Result<()> {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    if rhs.rows != k || dst.rows != m || dst.cols != n {
        candle_core::bail!(
            "taper gemm: shapes {m}x{k} · {}x{n} into {}x{}",
            rhs.rows,
            dst.rows,
            dst.cols
        )
    }
    if !(lhs.in_bounds()
        && rhs.in_bounds()
        && fits(dst.data.len(), dst.rows, dst.cols, dst.row_stride, 1))
    {
        candle_core::bail!("taper gemm: a matrix view exceeds its buffer")
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let threads_available = rayon::current_num_threads();
    let parallelism = match threads {
        Threads::Pool if threads_available > 1 => Parallelism::Rayon(threads_available),
        _ => Parallelism::None,
    };
    let stride = |s: usize| s as isize;
    #[allow(unsafe_code)]
    // SAFETY: every element the GEMM reads or writes lies inside its slice (checked by `fits`
    // above for the last row and column of each view, strides being non-negative); `dst` is a
    // unique borrow, so it aliases neither operand; with `read_dst == false` the GEMM never
    // reads `dst`, and `k == 0` only scales it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            stride(dst.row_stride),
            accumulate,
            lhs.data.as_ptr(),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr(),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_views_multiply_like_the_naive_product() {
        let (m, k, n) = (5, 3, 4);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 * 0.25).collect();
        let expected = naive(&a, &b, m, k, n);
        // b stored transposed ([n, k]) and read through `.t()`.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        // dst rows padded to 6 columns; the padding must stay untouched.
        let mut dst = vec![7f32; m * 6];
        gemm(
            MatMut::rows(&mut dst, m, n, 6),
            Mat::rows(&a, m, k, k),
            Mat::rows(&bt, n, k, k).t(),
            false,
            2.0,
            Threads::Pool,
        )
        .expect("gemm");
        for i in 0..m {
            for j in 0..n {
                assert!((dst[i * 6 + j] - 2.0 * expected[i * n + j]).abs() < 1e-4);
            }
            assert_eq!(&dst[i * 6 + n..i * 6 + 6], &[7.0, 7.0]);
        }
        // Accumulating adds to what is there.
        gemm(
            MatMut::rows(&mut dst, m, n, 6),
            Mat::rows(&a, m, k, k),
            Mat::rows(&b, k, n, n),
            true,
            -1.0,
            Threads::Single,
        )
        .expect("gemm");
        for i in 0..m {
            for j in 0..n {
                assert!((dst[i * 6 + j] - expected[i * n + j]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn views_past_their_buffer_are_errors_not_reads() {
        let a = vec![0f32; 6];
        let mut dst = vec![0f32; 4];
        let err = gemm(
            MatMut::rows(&mut dst, 2, 2, 2),
            Mat::rows(&a, 2, 4, 4),
            Mat::rows(&a, 4, 2, 2),
            false,
            1.0,
            Threads::Single,
        );
        assert!(err.is_err());
    }
}
