//! Processes that were started: waiting for each, and turning how it ended into a result.

use std::os::unix::process::ExitStatusExt;

use serde::de::DeserializeOwned;

use super::control::{self, Ctrl, Report, EXIT_PARENT_GONE};
use super::table::display_name;
use crate::error::{Error, Failure};
use crate::frame::Kind;
use crate::net::LOSS_TIMEOUT;
use crate::runtime::mark_peer_died;

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
        })
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
    /// Channels whose ends the child holds: poisoned if it dies without reporting.
    pub(crate) ends: Vec<u64>,
}

pub(crate) fn wait_all(running: Vec<Running>) -> Vec<Result<Returned, Error>> {
    if running.len() <= 1 {
        return running.into_iter().map(Running::wait).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = running
            .into_iter()
            .map(|r| {
                std::thread::Builder::new()
                    .name("pycsp-wait".into())
                    .stack_size(64 << 10)
                    .spawn_scoped(s, move || r.wait())
                    .expect("a waiting thread can start")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("waiting thread does not panic"))
            .collect()
    })
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
        if self.placed && report.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            // The connection broke but the launcher lives on (a link or host went away).
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
