//! The figures `GET /metrics` exposes, in Prometheus' text format (version 0.0.4), kept by
//! hand: a dozen series do not justify a metrics crate and its global registry.
//!
//! Drift: the server counts predicted labels and input lengths. When the bundle carries the
//! class shares of the split it was evaluated on (`manifest.json` `label_shares`), the
//! population stability index of the served predictions against them is a gauge
//! (`taper_predicted_label_psi`; by the usual rule of thumb, above 0.1 is a shift worth a look,
//! above 0.25 a large one). Input lengths have no reference in the bundle, so only their
//! histogram is kept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

/// Upper bounds of the request-latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Upper bounds of the batch-size buckets (sequences per model call).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Upper bounds of the input-length buckets, in tokens.
const LENGTH_BUCKETS: [f64; 9] = [8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0];
/// Shares below this count as this in the PSI, whose logarithm is infinite at zero.
const PSI_FLOOR: f64 = 1e-4;

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
    input_tokens: Histogram,
    /// Predictions per class, in label order.
    predicted: Vec<u64>,
}

/// The server's counters; shared by the request middleware and the batcher.
#[derive(Debug)]
pub struct Metrics {
    series: Mutex<Series>,
    labels: Vec<String>,
    /// The reference class shares (empty: no drift gauge).
    reference: Vec<f64>,
}

/// Drift figures, for `GET /info`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Drift {
    pub predictions: u64,
    pub predicted_label_shares: Vec<f64>,
    pub reference_label_shares: Vec<f64>,
    /// Absent without a reference or before the first prediction.
    pub predicted_label_psi: Option<f64>,
}

impl Metrics {
    /// Counters for a model with `labels`, and the reference shares of its classes (empty when
    /// the bundle has none).
    pub fn new(labels: &[String], reference: Vec<f64>) -> Self {
        Self {
            series: Mutex::new(Series {
                requests: BTreeMap::new(),
                latency: Histogram::new(&LATENCY_BUCKETS),
                batch_size: Histogram::new(&BATCH_BUCKETS),
                input_tokens: Histogram::new(&LENGTH_BUCKETS),
                predicted: vec![0; labels.len()],
            }),
            labels: labels.to_vec(),
            reference,
        }
    }

    /// Counts one served input: its length in tokens and its predicted class.
    pub fn record_prediction(&self, tokens: usize, class: usize) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.input_tokens.observe(tokens as f64);
        if let Some(count) = series.predicted.get_mut(class) {
            *count += 1;
        }
    }

    pub fn drift(&self) -> Drift {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let predictions: u64 = series.predicted.iter().sum();
        let shares: Vec<f64> = series
            .predicted
            .iter()
            .map(|&count| count as f64 / predictions.max(1) as f64)
            .collect();
        let psi = (predictions > 0 && self.reference.len() == shares.len())
            .then(|| population_stability_index(&self.reference, &shares));
        Drift {
            predictions,
            predicted_label_shares: shares,
            reference_label_shares: self.reference.clone(),
            predicted_label_psi: psi,
        }
    }

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

    /// The text of `GET /metrics`; `in_flight` is the number of requests admitted and not yet
    /// answered.
    pub fn render(&self, in_flight: usize) -> String {
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
        series.input_tokens.render(
            &mut out,
            "taper_input_tokens",
            "Tokens per served input, [CLS] and [SEP] included.",
        );
        out.push_str(
            "# HELP taper_predictions_total Served inputs by predicted class.\n\
             # TYPE taper_predictions_total counter\n",
        );
        for (label, count) in self.labels.iter().zip(&series.predicted) {
            let _ = writeln!(out, "taper_predictions_total{{label=\"{label}\"}} {count}");
        }
        drop(series);
        if let Some(psi) = self.drift().predicted_label_psi {
            let _ = writeln!(
                out,
                "# HELP taper_predicted_label_psi Population stability index of the predicted \
                 classes against the evaluated split's class shares.\n\
                 # TYPE taper_predicted_label_psi gauge\ntaper_predicted_label_psi {psi}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP taper_requests_in_flight Requests admitted and not yet answered.\n\
             # TYPE taper_requests_in_flight gauge\ntaper_requests_in_flight {in_flight}"
        );
        out
    }
}

/// PSI = Σ (actual − expected) · ln(actual / expected), shares floored at [`PSI_FLOOR`].
pub fn population_stability_index(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(PSI_FLOOR), a.max(PSI_FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_equal_shares_and_grows_with_the_shift() {
        assert!(population_stability_index(&[0.4, 0.6], &[0.4, 0.6]).abs() < 1e-12);
        // (0.5 − 0.4)·ln(0.5/0.4) + (0.5 − 0.6)·ln(0.5/0.6) = 0.0405…
        let small = population_stability_index(&[0.4, 0.6], &[0.5, 0.5]);
        assert!((small - 0.040_5).abs() < 1e-4, "{small}");
        let large = population_stability_index(&[0.4, 0.6], &[1.0, 0.0]);
        assert!(large > 1.0 && large.is_finite(), "{large}");
    }

    #[test]
    fn drift_compares_predicted_shares_with_the_reference() {
        let labels = ["neg".to_owned(), "pos".to_owned()];
        let metrics = Metrics::new(&labels, vec![0.4, 0.6]);
        assert_eq!(metrics.drift().predicted_label_psi, None);
        for (tokens, class) in [(5, 0), (9, 1), (12, 1), (40, 1)] {
            metrics.record_prediction(tokens, class);
        }
        let drift = metrics.drift();
        assert_eq!(drift.predictions, 4);
        assert_eq!(drift.predicted_label_shares, [0.25, 0.75]);
        let psi = drift.predicted_label_psi.unwrap_or_default();
        assert!(psi > 0.0, "{psi}");
        let text = metrics.render(0);
        assert!(
            text.contains("taper_predictions_total{label=\"pos\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("taper_input_tokens_bucket{le=\"16\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(&format!("taper_predicted_label_psi {psi}")),
            "{text}"
        );
        // Without a reference: counts, no gauge.
        let bare = Metrics::new(&labels, Vec::new());
        bare.record_prediction(5, 0);
        assert!(!bare.render(0).contains("taper_predicted_label_psi"));
    }

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::new(&[], Vec::new());
        metrics.record_request("/predict", 200, 0.003);
        metrics.record_request("/predict", 200, 0.3);
        metrics.record_request("/predict", 422, 0.001);
        metrics.record_batch(3);
        let text = metrics.render(0);
        assert!(text.contains("taper_requests_total{route=\"/predict\",status=\"200\"} 2"));
        assert!(text.contains("taper_requests_total{route=\"/predict\",status=\"422\"} 1"));
        assert!(text.contains("taper_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("taper_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("taper_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("taper_batch_size_bucket{le=\"4\"} 1"));
    }
}
