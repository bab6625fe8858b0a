//! Live progress of `taper run` on a terminal: one spinner per running stage, showing its
//! elapsed time and its latest log line (for `train`: epoch, step, loss, learning rate and
//! samples/s). Status lines (`running`, `done`, `cached`) print above the spinners.
//!
//! Off a terminal (CI, pipes, `2> log`) or with `-v`, nothing animates: every status line is
//! printed as it comes, and with `-v` every log line too, so logs stay greppable. With `-q`
//! nothing is shown; failures are still reported when the run ends.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::args::OutputArgs;
use crate::cli::printer::Printer;
use crate::exec::{report, Event};
use crate::model::StageId;

/// Shows engine events to a person.
pub struct RunDisplay<'a> {
    printer: &'a Printer,
    output: OutputArgs,
    /// `None` when not animating.
    live: Option<Live>,
}

struct Live {
    multi: MultiProgress,
    spinners: Mutex<BTreeMap<StageId, ProgressBar>>,
}

impl<'a> RunDisplay<'a> {
    pub fn new(printer: &'a Printer, output: OutputArgs) -> RunDisplay<'a> {
        let animate = !output.verbose && !output.quiet && std::io::stderr().is_terminal();
        let live = animate.then(|| Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            spinners: Mutex::new(BTreeMap::new()),
        });
        RunDisplay {
            printer,
            output,
            live,
        }
    }

    /// Called by the engine, possibly from several stage threads at once.
    pub fn event(&self, event: &Event<'_>) {
        if self.output.quiet {
            return;
        }
        let Some(live) = &self.live else {
            if let Some(line) = report::render_event(event, self.output.verbose) {
                self.printer.status(&line);
            }
            return;
        };
        // A poisoned lock only means another stage's display update panicked; the map is
        // still usable for showing progress.
        let mut spinners = live
            .spinners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            Event::Log { stage, line } => {
                if let Some(spinner) = spinners.get(*stage) {
                    spinner.set_message(line.to_string());
                }
                return;
            }
            Event::Started { stage, .. } => {
                let spinner = live.multi.add(ProgressBar::new_spinner());
                spinner.set_style(spinner_style());
                spinner.set_prefix(stage.to_string());
                spinner.enable_steady_tick(Duration::from_millis(120));
                spinners.insert((*stage).clone(), spinner);
            }
            Event::Finished { stage, .. } | Event::Failed { stage, .. } => {
                if let Some(spinner) = spinners.remove(*stage) {
                    spinner.finish_and_clear();
                    live.multi.remove(&spinner);
                }
            }
            Event::Cached { .. } | Event::Waiting { .. } | Event::Skipped { .. } => {}
        }
        if let Some(line) = report::render_event(event, self.output.verbose) {
            // Printing above the spinners keeps both readable; if the terminal went away,
            // fall back to a plain line.
            if live.multi.println(&line).is_err() {
                self.printer.status(&line);
            }
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed_precise}] {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}
