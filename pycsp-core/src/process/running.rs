//! Processes that were started: waiting for each, and turning how it ended into a result.

use std::os::unix::process::ExitStatusExt;

use serde::de::DeserializeOwned;

use super::control::{self, Ctrl, Report, EXIT_PARENT_GONE};
use super::table::display_name;
use crate::error::{Error, Failure, Outcome, Outcomes};
use crate::frame::Kind;
use crate::net::LOSS_TIMEOUT;
use crate::runtime::mark_peer_died;
use crate::sys;

/// How long the launcher of a placed process whose connection ended may take to exit before
/// the process counts as lost (its host or a link went away).
const LAUNCHER_EXIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a process returned, as bytes, with who returned it.
#[doc(hidden)]
pub struct Returned {
    name: &'static str,
    pid: u32,
    bytes: Vec<u8>,
}

impl Returned {
    pub(crate) fn decode<R: DeserializeOwned>(self) -> Result<R, Error> {
        rmp_serde::from_slice(&self.bytes).map_err(|e| Error::ProcessFailed {
            name: display_name(self.name).to_string(),
            pid: self.pid,
            failure: Failure::Broken(format!("its return value could not be decoded: {e}")),
            outcomes: Outcomes::default(),
        })
    }

    /// This process's outcome, as an error's [`Outcomes`] keep it.
    pub(crate) fn outcome(&self) -> Outcome {
        Outcome::returned(
            display_name(self.name).to_string(),
            self.pid,
            self.bytes.clone(),
        )
    }
}

/// The outcome of a process that did not return a value (its error is a `ProcessFailed`, or
/// another error, kept as `Broken`).
pub(crate) fn failed_outcome(e: &Error) -> Outcome {
    match e {
        Error::ProcessFailed {
            name, pid, failure, ..
        } => Outcome::failed(name.clone(), *pid, failure.clone()),
        other => Outcome::failed(String::new(), 0, Failure::Broken(other.to_string())),
    }
}

/// A child process that was started and has not been waited for.
pub(crate) struct Running {
    pub(crate) name: &'static str,
    pub(crate) child: std::process::Child,
    pub(crate) ctrl: Ctrl,
    /// Placed by a launcher: `child` is the launcher, and a lost connection means a lost
    /// process.
    pub(crate) placed: bool,
    /// Channels whose ends the child holds: marked as held by a dead process (`PeerDied`)
    /// if it dies without reporting.
    pub(crate) ends: Vec<u64>,
}

/// A started process watched by a thread of its own, its reaper: the thread reads the child's
/// report, marks the channels of the child's ends the moment it dies without one, and reaps
/// it. So the peers of a process that dies learn of it at once, whether or not anyone joins.
pub(crate) struct Watched {
    name: &'static str,
    pid: u32,
    /// Channels whose ends the child holds.
    pub(crate) ends: Vec<u64>,
    /// A second handle on the control connection: ending it makes the child exit.
    stop: Option<Ctrl>,
    reaper: Reaper,
}

enum Reaper {
    Thread(std::thread::JoinHandle<Result<Returned, Error>>),
    /// No thread could be started: the process is waited for when it is joined.
    Inline(Box<Running>),
}

impl Watched {
    /// Starts watching `r`.
    pub(crate) fn new(r: Running) -> Watched {
        let (name, pid, ends) = (r.name, r.child.id(), r.ends.clone());
        let stop = r.ctrl.try_clone().ok();
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(r)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("pycsp-reaper".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let r = theirs.lock().ok().and_then(|mut r| r.take());
                r.expect("the reaper takes its process once").wait()
            });
        let reaper = match spawned {
            Ok(h) => Reaper::Thread(h),
            Err(_) => {
                let r = slot.lock().ok().and_then(|mut r| r.take());
                Reaper::Inline(Box::new(r.expect("no thread took the process")))
            }
        };
        Watched {
            name,
            pid,
            ends,
            stop,
            reaper,
        }
    }

    /// The OS process id (for a placed process: of its launcher).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the process has ended and was reaped; how it ended.
    pub(crate) fn join(self) -> Result<Returned, Error> {
        match self.reaper {
            Reaper::Thread(h) => h.join().unwrap_or_else(|_| {
                Err(Error::ProcessFailed {
                    name: display_name(self.name).to_string(),
                    pid: self.pid,
                    failure: Failure::Broken("its reaper thread panicked".into()),
                    outcomes: Outcomes::default(),
                })
            }),
            Reaper::Inline(r) => r.wait(),
        }
    }

    /// Ends the process's control connection, which makes it exit at once (a child exits
    /// when its parent's connection ends), then waits for it as [`join`](Self::join) does.
    pub(crate) fn stop(self) -> Result<Returned, Error> {
        if let Some(c) = &self.stop {
            c.shutdown();
        }
        self.join()
    }
}

impl Running {
    pub(crate) fn wait(mut self) -> Result<Returned, Error> {
        let report = control::receive(&mut self.ctrl, Kind::Report)
            .ok()
            .and_then(|b| rmp_serde::from_slice::<Report>(&b).ok());
        let pid = self.child.id();
        if !matches!(report, Some(Report::Returned(_))) {
            // Wake the peers first, then reap.
            mark_peer_died(&self.ends, pid, display_name(self.name));
        }
        let mut lost = false;
        // The connection ended without a report: the process and its launcher are exiting
        // (give them a moment), or a link or host went away while the launcher lives on.
        if self.placed
            && report.is_none()
            && !sys::wait_child_exit(pid, LAUNCHER_EXIT)
            && matches!(self.child.try_wait(), Ok(None))
        {
            lost = true;
            let _ = self.child.kill();
        }
        let status = self.child.wait();
        if self.placed && report.is_none() {
            // A placed process whose side saw the connection die first exits with 125.
            lost |= matches!(&status, Ok(st) if st.code() == Some(EXIT_PARENT_GONE));
        }
        let name = display_name(self.name);
        let fail = |failure| Error::ProcessFailed {
            name: name.to_string(),
            pid,
            failure,
            outcomes: Outcomes::default(),
        };
        match report {
            Some(Report::Returned(bytes)) => Ok(Returned {
                name: self.name,
                pid,
                bytes,
            }),
            Some(Report::Panicked(m)) => Err(fail(Failure::Panicked(m))),
            Some(Report::Broken(m)) => Err(fail(Failure::Broken(m))),
            None if lost => Err(fail(Failure::Lost(format!(
                "the connection to it was lost (no answer for {:?})",
                LOSS_TIMEOUT
            )))),
            None => {
                let failure = match status {
                    Ok(st) => match (st.signal(), st.code()) {
                        (Some(sig), _) => Failure::Signaled(sig),
                        (None, Some(code)) => Failure::Exited(code),
                        _ => Failure::Exited(-1),
                    },
                    Err(e) => Failure::Broken(format!("could not wait for it: {e}")),
                };
                Err(fail(failure))
            }
        }
    }
}
