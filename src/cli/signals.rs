//! SIGTERM, SIGINT and SIGHUP during `taper run`.
//!
//! A dedicated thread waits for the signal (signal-hook's self-pipe: the handler itself only
//! writes a byte, everything else runs on the thread, outside signal context). On the first
//! signal it stops the stage processes (`exec::interrupt`: forward, wait up to 10 s, SIGKILL)
//! while the scheduler lets the interrupted stages fail and starts nothing new; `taper run`
//! then writes the lock file and exits with 128 + signal. If the run has still not ended a few
//! seconds after its processes are gone (an ML stage computing in-process), or on a second
//! signal, the thread exits the process itself: every store write is atomic, so stopping at
//! any point loses at most the stages that had not finished.

use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::printer::Printer;
use crate::exec::interrupt::{signal_name, GRACE, STAGE_PROCESSES};

/// How long the run may take to wind down (write the lock file) once no stage process is left.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Starts the signal thread. Called once, by `taper run`, before any stage starts.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("taper-signals".to_owned())
        .spawn(move || {
            let Some(signal) = signals.forever().next() else {
                return;
            };
            let printer = Printer::from_env();
            let name = signal_name(signal);
            printer.status(&format!(
                "{name}: stopping running stages (up to {}s; again to kill them now)",
                GRACE.as_secs()
            ));
            STAGE_PROCESSES.stop(signal, GRACE, &mut || signals.pending().next().is_some());
            let deadline = Instant::now() + WIND_DOWN;
            while Instant::now() < deadline && signals.pending().next().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            STAGE_PROCESSES.kill();
            printer.status(&format!(
                "{name}: stopped before the run finished; finished stages are in the store"
            ));
            std::process::exit(128 + signal);
        })?;
    Ok(())
}
