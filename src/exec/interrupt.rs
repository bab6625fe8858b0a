//! Stage processes and what happens to them when taper is stopped.
//!
//! Contract: every process a stage starts is spawned through [`ProcessGroups::spawn`], which
//! puts it in a process group of its own and registers that group. When taper receives SIGTERM,
//! SIGINT or SIGHUP, the CLI calls [`ProcessGroups::stop`]: the signal is forwarded to every
//! registered group (the command's shell *and* everything it started), no new stage starts
//! ([`ProcessGroups::interrupted`] is checked by the scheduler and by `spawn`), and a group
//! still alive after the grace period is killed with SIGKILL. A stage whose run was interrupted
//! reports a failure, so nothing of it reaches the store or the lock file.
//!
//! Without this, SIGTERM exited taper while `sh -c 'sleep 100 && echo > out'` kept running and
//! wrote `out` later, into a workspace taper no longer tracked. Own groups are needed because
//! a terminal's Ctrl-C only reaches the foreground group, and because killing only `sh` leaves
//! its children running.
//!
//! `kill -9` of taper cannot be handled in taper, so two kernel-side mechanisms cover it:
//! the shell gets `PR_SET_PDEATHSIG(SIGKILL)`, and a tiny guard process (`sh -c 'read …; kill
//! …'`) holds the read end of a pipe whose only writer is taper: when taper dies for any
//! reason, the pipe closes and the guard SIGKILLs the stage's group. PDEATHSIG alone is not
//! enough: it is not inherited across `fork`, so `sleep 100` under `sh -c` would survive its
//! shell. The guard also fires when a stage ends normally, so nothing a command left running
//! in its group outlives its stage.
//!
//! The guard is started first and leads the group the command then joins, so there is no
//! moment when the command runs unguarded: started after the command, a `kill -9` landing
//! between the two spawns left `sleep 100` running (the fault test caught it under load). It
//! ignores SIGTERM, SIGINT and SIGHUP, which `stop` forwards to the group.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The process's stage groups. One instance, because signals are delivered to the process.
pub static STAGE_PROCESSES: ProcessGroups = ProcessGroups::new();

/// How long stopped groups get to exit after the forwarded signal before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);

/// Running stage process groups, and whether the run was interrupted.
pub struct ProcessGroups {
    /// The signal that interrupted the run; 0 while none has.
    signal: AtomicI32,
    /// Ids of the registered process groups (the pid of each group's leader).
    groups: Mutex<BTreeSet<i32>>,
}

/// A spawned stage process; [`Running::wait`] reaps it. Dropped without waiting (an early
/// return), it kills its group, so no error path leaves a command running.
pub struct Running<'a> {
    owner: &'a ProcessGroups,
    pub child: Child,
    group: i32,
    guard: Option<Guard>,
}

/// The process that kills a group when taper dies (see the module docs).
struct Guard {
    process: Child,
    /// Closing it (drop) is the guard's signal to kill the group and exit.
    pipe: io::PipeWriter,
}

impl ProcessGroups {
    pub const fn new() -> ProcessGroups {
        ProcessGroups {
            signal: AtomicI32::new(0),
            groups: Mutex::new(BTreeSet::new()),
        }
    }

    fn groups(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        // The set stays valid if a thread panicked while holding it: every update is one
        // insert or remove.
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The signal that interrupted the run, if one did.
    pub fn interrupted(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    /// Whether a stage process group is still registered.
    pub fn any_running(&self) -> bool {
        !self.groups().is_empty()
    }

    /// Spawns `command` in a new process group, led by its guard, and registers the group.
    /// Refused (`ErrorKind::Interrupted`) once the run is interrupted.
    pub fn spawn(&self, command: &mut Command) -> io::Result<Running<'_>> {
        // Held across the spawns: `stop` takes the same lock to set the flag and signal every
        // group, so a process is either refused here or registered before `stop` looks.
        let mut groups = self.groups();
        if self.interrupted().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "taper is stopping",
            ));
        }
        let guard = Guard::spawn()?;
        let group = guard.group()?;
        command.process_group(group);
        die_with_parent(command);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                guard.release();
                return Err(error);
            }
        };
        groups.insert(group);
        Ok(Running {
            owner: self,
            child,
            group,
            guard: Some(guard),
        })
    }

    /// Forwards `signal` to every registered group and refuses new ones; waits until every
    /// group is gone, for at most `grace` (or until `escalate` says so, e.g. on a second
    /// Ctrl-C), then SIGKILLs what is left and waits for it to be reaped (at most 2 s: a
    /// process stuck in the kernel cannot be waited for forever).
    pub fn stop(&self, signal: i32, grace: Duration, escalate: &mut dyn FnMut() -> bool) {
        {
            let groups = self.groups();
            self.signal.store(signal, Ordering::SeqCst);
            for &group in groups.iter() {
                signal_group(group, signal);
            }
        }
        let deadline = Instant::now() + grace;
        while self.any_running() && Instant::now() < deadline && !escalate() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.any_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs every registered group.
    pub fn kill(&self) {
        for &group in self.groups().iter() {
            signal_group(group, libc::SIGKILL);
        }
    }

    fn unregister(&self, group: i32) {
        self.groups().remove(&group);
    }
}

impl Default for ProcessGroups {
    fn default() -> ProcessGroups {
        ProcessGroups::new()
    }
}

impl Running<'_> {
    /// Waits for the group leader, then lets the guard kill what it left in its group.
    pub fn wait(mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait();
        self.finish();
        status
    }

    fn finish(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release();
        }
        self.owner.unregister(self.group);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.guard.is_none() {
            return;
        }
        signal_group(self.group, libc::SIGKILL);
        let _ = self.child.wait();
        self.finish();
    }
}

impl Guard {
    /// Starts a guard as the leader of a new process group, waiting for its pipe to close.
    fn spawn() -> io::Result<Guard> {
        let (reader, pipe) = io::pipe()?;
        // `read` returns at end of file, which comes only when every copy of the write end is
        // closed: taper keeps the only one (it is close-on-exec, so no command inherits it).
        // `$$` is the guard's pid, which is its group's id.
        let process = Command::new("sh")
            .arg("-c")
            .arg(r#"trap '' TERM INT HUP; read -r _; kill -s KILL -- "-$$" 2>/dev/null"#)
            .arg("taper-guard")
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group (`$$`), out of the terminal's foreground group: a Ctrl-C there
            // reaches taper, which decides what the stages get.
            .process_group(0)
            .spawn()?;
        Ok(Guard { process, pipe })
    }

    /// The id of the group the guard leads.
    fn group(&self) -> io::Result<i32> {
        i32::try_from(self.process.id()).map_err(io::Error::other)
    }

    /// Closes the pipe, so the guard kills what is left in its group (itself included), and
    /// reaps it.
    fn release(self) {
        let Guard { mut process, pipe } = self;
        drop(pipe);
        let _ = process.wait();
    }
}

/// Sends `signal` to every process of group `group`. A group that is already gone (`ESRCH`)
/// is not an error: it is what `stop` waits for.
#[allow(unsafe_code)]
fn signal_group(group: i32, signal: i32) {
    if group <= 1 {
        // `kill(-1)` would signal every process taper may signal; `kill(0)` taper's own group.
        return;
    }
    // SAFETY: `kill` takes two integers and touches no memory of this process; any values are
    // sound (the guard above only keeps it from signalling the wrong processes).
    unsafe {
        libc::kill(-group, signal);
    }
}

/// Makes the kernel SIGKILL the command when the thread that spawned it exits (taper killed
/// with `kill -9`, say). Linux only; elsewhere the guard process alone covers it.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between `fork` and `exec`, where only
        // async-signal-safe functions may be called; `prctl` and `getppid` are system calls
        // that neither allocate nor take locks, and the closure captures only an integer.
        // PDEATHSIG fires when the *thread* that forked the child exits, not the process:
        // stage runners spawn from their stage's worker thread and wait for the child on that
        // same thread (`Running::wait`), so the thread outlives the child while taper lives.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // taper may have died between `fork` and `prctl`, before the setting existed.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::other("taper exited"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// `SIGTERM`, `SIGINT`… for messages.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".to_owned(),
        libc::SIGINT => "SIGINT".to_owned(),
        libc::SIGHUP => "SIGHUP".to_owned(),
        libc::SIGKILL => "SIGKILL".to_owned(),
        other => format!("signal {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shell(script: &str, dir: &Path) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).current_dir(dir);
        command
    }

    /// Waits (bounded) for `path` to have content.
    fn appears(path: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::fs::metadata(path).is_ok_and(|metadata| metadata.len() > 0) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Whether process `pid` ends within 10 s (a zombie counts as gone: it runs nothing).
    fn gone(pid: &str) -> bool {
        let alive = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .starts_with('Z')
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// The forwarded signal reaches the shell's children, and `stop` returns once the group is
    /// gone; later spawns are refused.
    #[test]
    fn stop_forwards_the_signal_to_the_whole_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let groups = ProcessGroups::new();
        let script = "sleep 30 & echo $! > child; wait; echo late > out";
        let running = groups.spawn(&mut shell(script, dir.path())).expect("spawn");
        assert!(appears(&dir.path().join("child")));
        let child = std::fs::read_to_string(dir.path().join("child")).expect("pid");
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| running.wait());
            groups.stop(libc::SIGTERM, Duration::from_secs(30), &mut || false);
            let status = waiter.join().expect("waiter").expect("wait");
            assert!(!status.success());
        });
        assert!(!groups.any_running());
        assert!(gone(&child), "the shell's child survived");
        assert!(!dir.path().join("out").exists());
        assert_eq!(groups.interrupted(), Some(libc::SIGTERM));
        let refused = groups.spawn(&mut shell("true", dir.path()));
        assert_eq!(
            refused.err().map(|error| error.kind()),
            Some(io::ErrorKind::Interrupted)
        );
    }

    /// A group that ignores the signal is killed once `escalate` says so.
    #[test]
    fn stop_escalates_to_sigkill() {
        let dir = tempfile::tempdir().expect("temp dir");
        let groups = ProcessGroups::new();
        let script = "trap '' TERM; echo > ready; while :; do sleep 1; done";
        let running = groups.spawn(&mut shell(script, dir.path())).expect("spawn");
        assert!(appears(&dir.path().join("ready")));
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| running.wait());
            groups.stop(libc::SIGTERM, Duration::from_secs(600), &mut || true);
            let status = waiter.join().expect("waiter").expect("wait");
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
        });
        assert!(!groups.any_running());
    }

    /// When a stage's command exits, what it left running in its group is killed.
    #[test]
    fn leftovers_of_a_finished_command_are_killed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let groups = ProcessGroups::new();
        let script = "sleep 30 > /dev/null 2>&1 & echo $! > child";
        let status = groups
            .spawn(&mut shell(script, dir.path()))
            .expect("spawn")
            .wait()
            .expect("wait");
        assert!(status.success());
        let child = std::fs::read_to_string(dir.path().join("child")).expect("pid");
        assert!(gone(&child), "the leftover `sleep` survived");
        assert!(!groups.any_running());
    }
}
