//! The training log (`train_log.jsonl`) and its plot (`curves.svg`).
//!
//! Contract: one [`LogRecord`] per line, appended as training runs (so a resumed run continues
//! the same file from its checkpoint's copy); [`render_svg`] draws the training loss per step
//! and the validation loss and accuracy per epoch as a self-contained SVG (no fonts or scripts
//! fetched), viewable in any browser.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogRecord {
    /// One optimizer step.
    Step {
        step: usize,
        epoch: usize,
        loss: f64,
        learning_rate: f64,
        // No throughput or timing here: the log is part of the stage's output, and a
        // wall-clock figure would make every retrain's output differ, defeating early cutoff
        // for the stages downstream. Throughput goes to the stage log and the lock file.
    },
    /// End of an epoch, on the validation split.
    Validation {
        step: usize,
        epoch: usize,
        loss: f64,
        accuracy: f64,
    },
}

pub fn to_jsonl(records: &[LogRecord]) -> String {
    let mut out = String::new();
    for record in records {
        out.push_str(&serde_json::to_string(record).expect("log records serialize to JSON"));
        out.push('\n');
    }
    out
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 48.0;

pub fn render_svg(records: &[LogRecord]) -> String {
    let mut train = Vec::new();
    let mut validation = Vec::new();
    for record in records {
        match record {
            LogRecord::Step { step, loss, .. } => train.push((*step as f64, *loss)),
            LogRecord::Validation {
                step,
                loss,
                accuracy,
                ..
            } => validation.push((*step as f64, *loss, *accuracy)),
        }
    }
    let max_step = train
        .iter()
        .map(|p| p.0)
        .chain(validation.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let max_loss = train
        .iter()
        .map(|p| p.1)
        .chain(validation.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(1e-9f64, f64::max);
    let x = |step: f64| MARGIN + (WIDTH - 2.0 * MARGIN) * step / max_step;
    let y = |value: f64, max: f64| {
        HEIGHT - MARGIN - (HEIGHT - 2.0 * MARGIN) * (value / max).clamp(0.0, 1.0)
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{MARGIN}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{b}" stroke="black"/>
<text x="{MARGIN}" y="{t}">loss (max {max_loss:.3})</text>
<text x="{r}" y="{bl}" text-anchor="end">step (max {max_step})</text>
"##,
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN,
        t = MARGIN - 8.0,
        bl = HEIGHT - MARGIN + 20.0,
    );
    if !train.is_empty() {
        let points: Vec<String> = train
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(s, l)| format!("{:.1},{:.1}", x(s), y(l, max_loss)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
            points.join(" ")
        );
    }
    for &(s, loss, accuracy) in &validation {
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"/><circle cx="{:.1}" cy="{:.1}" r="4" fill="#2ca02c"/>"##,
            x(s),
            y(loss, max_loss),
            x(s),
            y(accuracy, 1.0)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{lx}" y="{MARGIN}" fill="#1f77b4">training loss</text>
<text x="{lx}" y="{l2}" fill="#d62728">validation loss</text>
<text x="{lx}" y="{l3}" fill="#2ca02c">validation accuracy (0–1)</text>
</svg>
"##,
        lx = WIDTH - MARGIN - 170.0,
        l2 = MARGIN + 16.0,
        l3 = MARGIN + 32.0,
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trips_and_svg_has_one_point_per_step() {
        let records = vec![
            LogRecord::Step {
                step: 1,
                epoch: 0,
                loss: 0.7,
                learning_rate: 5e-5,
            },
            LogRecord::Step {
                step: 2,
                epoch: 0,
                loss: 0.5,
                learning_rate: 2.5e-5,
            },
            LogRecord::Validation {
                step: 2,
                epoch: 0,
                loss: 0.6,
                accuracy: 0.75,
            },
        ];
        let text = to_jsonl(&records);
        let back: Vec<LogRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, records);
        assert!(text.starts_with(r#"{"kind":"step","step":1,"#));
        let svg = render_svg(&records);
        // max step 2, max loss 0.7: step 1 → x = 48 + 544/2 = 320; loss .7 → y = 48;
        // loss .5 → y = 312 − 264·(.5/.7) = 123.4.
        assert!(svg.contains(r#"points="320.0,48.0 592.0,123.4""#), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
