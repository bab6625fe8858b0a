//! `taper cache verify | gc | ls | du`.

use std::fmt::Write;

use crate::cache::Store;
use crate::cli::args::{CacheArgs, CacheCommand};
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
        CacheCommand::Gc { keep_runs } => {
            let report = store.gc(*keep_runs)?;
            printer.status(&format!(
                "removed {} objects ({}), kept {}",
                report.removed_objects,
                human(report.removed_bytes),
                report.kept_objects
            ));
            Ok(ExitStatus::Success)
        }
        CacheCommand::Ls => {
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
    }
}
