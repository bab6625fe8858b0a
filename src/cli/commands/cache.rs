//! `taper cache verify | gc | ls | du | push | pull`.

use std::fmt::Write;

use std::io::IsTerminal;

use crate::cache::remote::{Progress, Remote, RemoteError, TransferReport};
use crate::cache::Store;
use crate::cli::args::{CacheArgs, CacheCommand, RemoteArgs};
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn run(args: &CacheArgs, printer: &Printer) -> ExitStatus {
    let store = match super::open_store(&args.store, None, printer) {
        Ok(store) => store,
        Err(status) => return status,
    };
    if let CacheCommand::Push { remote } | CacheCommand::Pull { remote } = &args.command {
        let push = matches!(args.command, CacheCommand::Push { .. });
        return transfer(&store, remote, push, printer);
    }
    match execute(&store, &args.command, printer) {
        Ok(status) => status,
        Err(error) => {
            printer.diagnostic(error);
            ExitStatus::Error
        }
    }
}

fn execute(
    store: &Store,
    command: &CacheCommand,
    printer: &Printer,
) -> Result<ExitStatus, crate::cache::CacheError> {
    match command {
        CacheCommand::Verify => {
            let report = store.verify()?;
            printer.status(&format!(
                "checked {} blobs, {} manifests, {} action records",
                report.blobs, report.manifests, report.actions
            ));
            for (object, moved) in &report.quarantined {
                printer.status(&match moved {
                    Some(moved) => format!("corrupt  {object}: moved to `{}`", moved.display()),
                    None => format!("corrupt  {object}: left in place (read-only store)"),
                });
            }
            for key in &report.incomplete_actions {
                printer.status(&format!(
                    "incomplete  action {}: outputs missing, its stage will rerun",
                    key.short()
                ));
            }
            Ok(if report.quarantined.is_empty() {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            })
        }
        CacheCommand::Gc {
            keep_runs,
            ignore_experiments,
        } => {
            let report = store.gc(*keep_runs, !ignore_experiments)?;
            printer.status(&format!(
                "removed {} objects ({}), kept {}",
                report.removed_objects,
                human(report.removed_bytes),
                report.kept_objects
            ));
            Ok(ExitStatus::Success)
        }
        CacheCommand::Ls { json: true } => {
            printer.data(&crate::cli::json::cache_listing(&store.list_actions()));
            Ok(ExitStatus::Success)
        }
        CacheCommand::Ls { json: false } => {
            let mut out = String::new();
            for listing in store.list_actions() {
                let _ = writeln!(
                    out,
                    "{}  {:<20}  {:>5} files  {:>10}  {} ms",
                    listing.record.key.short(),
                    listing.record.stage,
                    listing.output_files,
                    human(listing.output_bytes),
                    listing.record.duration_ms
                );
            }
            printer.data(&out);
            Ok(ExitStatus::Success)
        }
        CacheCommand::Du => {
            let mut out = String::new();
            let mut total = 0;
            for usage in store.disk_usage() {
                total += usage.bytes;
                let _ = writeln!(
                    out,
                    "{:<14} {:>8} files  {:>10}",
                    usage.bucket,
                    usage.files,
                    human(usage.bytes)
                );
            }
            let _ = writeln!(out, "{:<14} {:>8}        {:>10}", "total", "", human(total));
            printer.data(&out);
            Ok(ExitStatus::Success)
        }
        // Handled by `transfer`, which needs the remote too.
        CacheCommand::Push { .. } | CacheCommand::Pull { .. } => Ok(ExitStatus::Error),
    }
}

/// `taper cache push` (`push`) or `pull`, with a progress bar on a terminal; exit 1 when any
/// result could not be transferred (each is reported), 2 when the remote cannot be used.
fn transfer(store: &Store, args: &RemoteArgs, push: bool, printer: &Printer) -> ExitStatus {
    let remote = match super::open_remote(args, None, printer) {
        Ok(Some(remote)) => remote,
        Ok(None) => {
            printer.diagnostic(RemoteError::NotConfigured);
            return ExitStatus::Error;
        }
        Err(status) => return status,
    };
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {pos}/{len}  {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // A push counts objects; a pull counts results (each checked whole before it is stored).
    bar.set_message(if push { "objects" } else { "results" });
    let progress = |event: Progress| match event {
        Progress::Planned { objects, .. } => bar.set_length(objects),
        Progress::Copied { .. } => bar.inc(1),
    };
    let result = if push {
        remote.push(store, None, &progress)
    } else {
        remote.pull(store, None, &progress)
    };
    bar.finish_and_clear();
    match result {
        Ok(report) => summarize(&remote, report, push, printer),
        Err(error) => {
            printer.diagnostic(error);
            ExitStatus::Error
        }
    }
}

fn summarize(remote: &Remote, report: TransferReport, push: bool, printer: &Printer) -> ExitStatus {
    let (verb, direction) = if push {
        ("pushed", "to")
    } else {
        ("pulled", "from")
    };
    printer.status(&format!(
        "{verb} {} results ({} objects, {}) {direction} {}; {} already there",
        report.actions,
        report.objects,
        human(report.bytes),
        remote.url(),
        report.present
    ));
    printer.status(&format!(
        "{verb} {} experiment records {direction} {}; {} already there",
        report.experiments,
        remote.url(),
        report.experiments_present
    ));
    if !report.experiments_kept.is_empty() {
        printer.status(&format!(
            "kept {} local experiment records that differ from the remote's record of the same experiment (another run of the same work): {}",
            report.experiments_kept.len(),
            report.experiments_kept.join(", ")
        ));
    }
    let failed = !report.failures.is_empty();
    for failure in report.failures {
        printer.diagnostic(failure);
    }
    if failed {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    }
}
