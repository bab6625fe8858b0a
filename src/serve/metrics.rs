//! The figures `GET /metrics` exposes, in Prometheus' text format (version 0.0.4), kept by
//! hand: a dozen series do not justify a metrics crate and its global registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Upper bounds of the request-latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Upper bounds of the batch-size buckets (sequences per model call).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug)]
struct Series {
    /// (route, status) → requests.
    requests: BTreeMap<(String, u16), u64>,
    latency: Histogram,
    batch_size: Histogram,
}

/// The server's counters; shared by the request middleware and the batcher.
#[derive(Debug)]
pub struct Metrics {
    series: Mutex<Series>,
    /// Requests admitted and not yet answered.
    pub(crate) in_flight: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            series: Mutex::new(Series {
                requests: BTreeMap::new(),
                latency: Histogram::new(&LATENCY_BUCKETS),
                batch_size: Histogram::new(&BATCH_BUCKETS),
            }),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        *series
            .requests
            .entry((route.to_owned(), status))
            .or_default() += 1;
        series.latency.observe(seconds);
    }

    pub fn record_batch(&self, sequences: usize) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.batch_size.observe(sequences as f64);
    }

    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::from(
            "# HELP taper_requests_total HTTP requests by route and status.\n\
             # TYPE taper_requests_total counter\n",
        );
        for ((route, status), count) in &series.requests {
            let _ = writeln!(
                out,
                "taper_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        series.latency.render(
            &mut out,
            "taper_request_duration_seconds",
            "Request latency, from the first byte read to the response.",
        );
        series.batch_size.render(
            &mut out,
            "taper_batch_size",
            "Sequences per model call of the dynamic batcher.",
        );
        let _ = writeln!(
            out,
            "# HELP taper_requests_in_flight Requests admitted and not yet answered.\n\
             # TYPE taper_requests_in_flight gauge\ntaper_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record_request("/predict", 200, 0.003);
        metrics.record_request("/predict", 200, 0.3);
        metrics.record_request("/predict", 422, 0.001);
        metrics.record_batch(3);
        let text = metrics.render();
        assert!(text.contains("taper_requests_total{route=\"/predict\",status=\"200\"} 2"));
        assert!(text.contains("taper_requests_total{route=\"/predict\",status=\"422\"} 1"));
        assert!(text.contains("taper_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("taper_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("taper_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("taper_batch_size_bucket{le=\"4\"} 1"));
    }
}
