//! The training log (`train_log.jsonl`) and its plot (`curves.svg`).
//!
//! Contract: one [`LogRecord`] per line, appended as training runs (so a resumed run continues
//! the same file from its checkpoint's copy); [`render_svg`] draws the training loss per step
//! and the validation loss and accuracy per epoch as a self-contained SVG (no fonts or scripts
//! fetched), viewable in any browser; [`render_runs_svg`] overlays several runs (`taper plots`).

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

/// Parses a `train_log.jsonl`, one record per non-empty line.
pub fn from_jsonl(text: &str) -> Result<Vec<LogRecord>, serde_json::Error> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

const WIDTH: u32 = 760;
const PANEL_HEIGHT: u32 = 340;

/// The curves of one run (a `train` stage's `curves.svg`).
pub fn render_svg(records: &[LogRecord]) -> String {
    render_runs_svg(&[("training".to_owned(), records.to_vec())])
}

/// Training loss per step (lines) and validation loss per epoch (dots), then validation
/// accuracy per epoch, of every run overlaid, one colour each: a self-contained SVG (text as
/// SVG text, nothing fetched), with axes, ticks, units and a legend drawn by plotters.
pub fn render_runs_svg(runs: &[(String, Vec<LogRecord>)]) -> String {
    let mut svg = String::new();
    let drawn = draw_runs(runs, &mut svg);
    match drawn {
        Ok(()) => svg,
        // The SVG backend writes to a string; a failure is a plotting bug, shown in the image
        // rather than failing the stage over a picture.
        Err(error) => format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="40"><text x="8" y="24">cannot draw the curves: {}</text></svg>"#,
            error.replace('<', "&lt;")
        ),
    }
}

/// One run's points: training loss per step, and (step, loss, accuracy) per validation.
struct Series<'a> {
    name: &'a str,
    train: Vec<(f64, f64)>,
    validation: Vec<(f64, f64, f64)>,
}

impl<'a> Series<'a> {
    #[allow(clippy::cast_precision_loss)]
    fn of(name: &'a str, records: &[LogRecord]) -> Series<'a> {
        let mut series = Series {
            name,
            train: Vec::new(),
            validation: Vec::new(),
        };
        for record in records {
            match record {
                LogRecord::Step { step, loss, .. } if loss.is_finite() => {
                    series.train.push((*step as f64, *loss));
                }
                LogRecord::Step { .. } => {}
                LogRecord::Validation {
                    step,
                    loss,
                    accuracy,
                    ..
                } => series.validation.push((*step as f64, *loss, *accuracy)),
            }
        }
        series
    }
}

type Panel<'a, 'b> = plotters::chart::ChartContext<
    'a,
    plotters::backend::SVGBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// A chart titled `caption` on `area`: steps `0..max_step` across, `0..y_max` up, its axes
/// labelled with their units.
fn panel<'a, 'b>(
    area: &'a plotters::drawing::DrawingArea<
        plotters::backend::SVGBackend<'b>,
        plotters::coord::Shift,
    >,
    caption: &str,
    y_max: f64,
    y_description: &str,
    max_step: f64,
) -> Result<Panel<'a, 'b>, String> {
    let mut chart = plotters::chart::ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_step, 0f64..y_max)
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_label_formatter(&|step| format!("{step:.0}"))
        .x_desc("step (optimizer updates)")
        .y_desc(y_description)
        .draw()
        .map_err(|error| error.to_string())?;
    Ok(chart)
}

fn draw_runs(runs: &[(String, Vec<LogRecord>)], svg: &mut String) -> Result<(), String> {
    use plotters::prelude::*;

    let data: Vec<Series<'_>> = runs
        .iter()
        .map(|(name, records)| Series::of(name, records))
        .collect();
    let has_validation = data.iter().any(|series| !series.validation.is_empty());
    let max_step = data
        .iter()
        .flat_map(|series| {
            let validation = series.validation.iter().map(|p| p.0);
            series.train.iter().map(|p| p.0).chain(validation)
        })
        .fold(1.0f64, f64::max);
    let max_loss = data
        .iter()
        .flat_map(|series| {
            let validation = series.validation.iter().map(|p| p.1);
            series.train.iter().map(|p| p.1).chain(validation)
        })
        .filter(|value| value.is_finite())
        .fold(1e-3f64, f64::max)
        * 1.05;
    let panels = if has_validation { 2 } else { 1 };
    let text = |error: &dyn std::fmt::Display| error.to_string();
    let root = SVGBackend::with_string(svg, (WIDTH, PANEL_HEIGHT * panels)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| text(&e))?;
    let areas = root.split_evenly((panels as usize, 1));
    let colour = |index: usize| Palette99::pick(index).to_rgba();

    let mut loss = panel(
        &areas[0],
        "loss",
        max_loss,
        "cross-entropy (nats)",
        max_step,
    )?;
    for (
        index,
        Series {
            name,
            train,
            validation,
        },
    ) in data.iter().enumerate()
    {
        let colour = colour(index);
        loss.draw_series(LineSeries::new(
            train.iter().copied(),
            colour.stroke_width(2),
        ))
        .map_err(|e| text(&e))?
        .label(format!("{name}: training"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        if !validation.is_empty() {
            loss.draw_series(
                validation
                    .iter()
                    .map(|&(step, value, _)| Circle::new((step, value), 4, colour.filled())),
            )
            .map_err(|e| text(&e))?
            .label(format!("{name}: validation"))
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, colour.filled()));
        }
    }
    loss.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| text(&e))?;

    if has_validation {
        let mut accuracy = panel(
            &areas[1],
            "validation accuracy",
            1.0,
            "accuracy (fraction correct)",
            max_step,
        )?;
        for (
            index,
            Series {
                name, validation, ..
            },
        ) in data.iter().enumerate()
        {
            let colour = colour(index);
            let points: Vec<(f64, f64)> = validation
                .iter()
                .map(|&(step, _, value)| (step, value))
                .collect();
            accuracy
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| text(&e))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            accuracy
                .draw_series(
                    points
                        .iter()
                        .map(|&point| Circle::new(point, 4, colour.filled())),
                )
                .map_err(|e| text(&e))?;
        }
        accuracy
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| text(&e))?;
    }
    root.present().map_err(|e| text(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trips_and_svg_has_axes_units_and_points() {
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
        assert_eq!(from_jsonl(&text).unwrap(), records);
        let svg = render_svg(&records);
        assert!(svg.starts_with("<svg"), "{svg}");
        // Axes with units, both panels, the legend, and one dot per validation point in each
        // panel (plus one legend dot).
        for label in [
            "step (optimizer updates)",
            "cross-entropy (nats)",
            "accuracy (fraction correct)",
            "training: training",
            "validation accuracy",
        ] {
            assert!(svg.contains(label), "{label} missing: {svg}");
        }
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
    }
}
