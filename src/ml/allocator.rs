//! Allocator settings for candle's allocation pattern.
//!
//! candle allocates a fresh buffer for every intermediate tensor and frees it soon after. With
//! glibc's defaults, a buffer above the dynamic mmap threshold is served by `mmap` and returned
//! by `munmap`, so every training step page-faults its working set back in from the kernel
//! (about 1.1 million minor faults for 5 MiniLM-shaped steps). Raising the mmap threshold to
//! 32 MiB and the trim threshold to 256 MiB, with a single arena, keeps those pages in the heap
//! for reuse: 2.8× fewer faults and a 15–25% faster step (`docs/benchmarks.md`, "Allocator"). mimalloc was measured
//! too and was slower than glibc's defaults here.

/// Tunes the process allocator for tensor work. Call once, at start-up, before threads spawn.
/// A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` only sets glibc malloc parameters; it is called before any other
    // thread exists, with parameter constants glibc defines. Its return value only says
    // whether the setting was accepted; a refused setting leaves the defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        // Stages run on worker threads, whose per-thread arenas shrink their heaps on their
        // own and ignore the thresholds above: the quickstart still took 21.6 M faults. One
        // arena: 9.5 M faults and a 21% shorter run. Tensor work allocates from one thread at
        // a time per stage, so the shared arena's lock is rarely contended.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
