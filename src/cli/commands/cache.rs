//! `taper cache verify | gc | ls | du`.

use std::fmt::Write;

use super::{print_out, print_status, StoreArgs};
use crate::cli::ExitStatus;

#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CacheCommand {
    /// Rehash every object; move corrupt ones to `quarantine-v1/` (exit 1 if any).
    Verify,
    /// Delete what no registered lock file and no recent run reaches.
    Gc {
        /// How many recent runs keep their results.
        #[arg(long, default_value_t = 10)]
        keep_runs: usize,
    },
    /// List cached stage results, newest first.
    Ls,
    /// Disk usage per bucket.
    Du,
}

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

pub fn run(args: &CacheArgs) -> miette::Result<ExitStatus> {
    let store = args.store.open()?;
    match &args.command {
        CacheCommand::Verify => {
            let report = store.verify()?;
            print_status(&format!(
                "checked {} blobs, {} manifests, {} action records",
                report.blobs, report.manifests, report.actions
            ));
            for (object, moved) in &report.quarantined {
                print_status(&format!(
                    "corrupt  {object}: moved to `{}`",
                    moved.display()
                ));
            }
            for key in &report.incomplete_actions {
                print_status(&format!(
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
            print_status(&format!(
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
            print_out(&out)?;
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
            print_out(&out)?;
            Ok(ExitStatus::Success)
        }
    }
}
