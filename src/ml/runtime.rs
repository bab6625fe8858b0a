//! Process settings for tensor work: the allocator and candle's own thread pool.
//!
//! Allocator: candle allocates a fresh buffer for every intermediate tensor and frees it soon
//! after. With glibc's defaults, a buffer above the dynamic mmap threshold is served by `mmap`
//! and returned by `munmap`, so every training step page-faults its working set back in from
//! the kernel (about 1.1 million minor faults for 5 MiniLM-shaped steps). Raising the mmap
//! threshold to 32 MiB, with a single arena, keeps those pages in the heap for reuse: 2.8×
//! fewer faults and a 15–25% faster step (`docs/benchmarks.md`, "Allocator"). The trim
//! threshold is 1 GiB: at 256 MiB, an inference batch of 32 × 128 tokens freed more than that
//! at the top of the heap when it finished, glibc gave it back to the kernel, and the next batch
//! faulted ~140,000 pages back in (1.18 M faults for the bench's 8 batches, 0.25 M at 1 GiB;
//! 33–35 → 48–52 samples/s; peak RSS the same, ~0.8 GB). mimalloc was measured too and was
//! slower than glibc's defaults here.
//!
//! Threads: candle 0.11 runs its elementwise ops on a second pool of its own whose workers spin
//! 25,000 times after each op before they sleep. taper's fused kernels and the GEMMs run on
//! rayon's pool, so on a 2-core machine those spinning workers took CPU from the threads doing
//! the work: a MiniLM step took 0.71–0.76 s with candle's pool at 2 threads and 0.56–0.61 s
//! with it at 1 (`docs/benchmarks.md`, "Threads"). The few elementwise ops left to candle are
//! cheap on one thread.

/// Tunes the process for tensor work. Call once, at start-up, before any other thread exists.
/// A user's own `CANDLE_NUM_THREADS` is kept.
pub fn tune_runtime() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Setting the environment is sound here: the contract above is that no other thread
        // exists yet, so nothing reads the environment concurrently.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    tune_allocator();
}

fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` only sets glibc malloc parameters; it is called before any other
    // thread exists, with parameter constants glibc defines. Its return value only says
    // whether the setting was accepted; a refused setting leaves the defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // Stages run on worker threads, whose per-thread arenas shrink their heaps on their
        // own and ignore the thresholds above: the quickstart still took 21.6 M faults. One
        // arena: 9.5 M faults and a 21% shorter run. Tensor work allocates from one thread at
        // a time per stage, so the shared arena's lock is rarely contended.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
