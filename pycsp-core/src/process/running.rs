//! Processes that were started: waiting for each, and turning how it ended into a result.

use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::control::{self, Ctrl, Report, EXIT_PARENT_GONE};
use super::forkserver::Child;
use super::table::display_name;
use crate::error::{Error, Failure, Outcome, Outcomes};
use crate::frame::Kind;
use crate::net::LOSS_TIMEOUT;
use crate::observe::{self, Member};
use crate::runtime::{mark_peer_died, ChildLedger};
use crate::shm::census;
use crate::sys;
use crate::trace;

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
    pub(crate) child: Child,
    pub(crate) ctrl: Ctrl,
    /// Placed by a launcher: `child` is the launcher, and a lost connection means a lost
    /// process.
    pub(crate) placed: bool,
    /// Channels whose ends the child was given: poisoned if its start fails.
    pub(crate) ends: Vec<u64>,
    /// The ledger of a local child: the channels it holds, settled once it has ended.
    pub(crate) ledger: Option<ChildLedger>,
}

/// What a watched process's reaper and its [`Watched`] handle share.
#[derive(Default)]
struct Watch {
    /// Set under this lock when the process is reaped: until then its pid is ours, and may be
    /// signalled by whoever holds the lock.
    reaped: Mutex<bool>,
    /// Set when the reaper has finished (the process was reaped and its result is ready).
    done: Mutex<bool>,
    finished: Condvar,
}

impl Watch {
    fn lock(m: &Mutex<bool>) -> MutexGuard<'_, bool> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self) {
        *Self::lock(&self.done) = true;
        self.finished.notify_all();
    }
}

/// Marks the reaper finished when dropped: also if waiting for the process panicked.
struct Finish(Arc<Watch>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// A started process watched by a thread of its own, its reaper: the thread reads the child's
/// report, marks the channels of the child's ends the moment it dies without one, and reaps
/// it. So the peers of a process that dies learn of it at once, whether or not anyone joins.
/// A process that is joined at once and alone is watched by its joining thread instead
/// ([`Watched::joined_now`]).
pub(crate) struct Watched {
    name: &'static str,
    pid: u32,
    /// Channels whose ends the child holds.
    pub(crate) ends: Vec<u64>,
    /// The ends it was started with (channel, is a writer), for a picture of its set.
    pub(crate) started_with: Vec<(u64, bool)>,
    /// Stops the child at once.
    stop: Stopper,
    reaper: Reaper,
    watch: Arc<Watch>,
}

enum Reaper {
    Thread(std::thread::JoinHandle<Result<Returned, Error>>),
    /// The joining thread watches the process ([`Watched::joined_now`]), or no thread could
    /// be started: the process is waited for when it is joined; its exit is watched by a
    /// pidfd opened once (none if it could not be opened: then one for each wait).
    Inline(Box<Running>, Option<sys::Pidfd>),
}

impl Watched {
    /// Starts watching `r` with a reaper thread of its own.
    pub(crate) fn new(r: Running) -> Watched {
        Watched::with_reaper(r, true)
    }

    /// Watches `r` from the thread that joins it, which waits for it at once and for nothing
    /// else (a set of one process, or one of a `Sequence`): that thread sees the process end
    /// as soon as a reaper thread would (it waits on the process's exit, and peers are marked
    /// when it is seen), without the thread's start and the hand-off from it. Only a local
    /// child: a placed process's launcher may live on after its connection was lost, which
    /// only a reaper notices (it reads the connection first).
    pub(crate) fn joined_now(r: Running) -> Watched {
        let thread = r.placed;
        Watched::with_reaper(r, thread)
    }

    fn with_reaper(r: Running, thread: bool) -> Watched {
        let (name, pid, ends) = (r.name, r.child.id(), r.ends.clone());
        let started_with = r
            .ledger
            .as_ref()
            .map(|l| l.started_with().to_vec())
            .unwrap_or_default();
        let forked = matches!(r.child, Child::Forked { .. });
        let ctrl = r.ctrl.try_clone().ok();
        let watch = Arc::new(Watch::default());
        let stop = Stopper {
            ctrl,
            pid,
            forked,
            watch: watch.clone(),
        };
        if !thread {
            return Watched {
                name,
                pid,
                ends,
                started_with,
                stop,
                reaper: Reaper::Inline(Box::new(r), sys::Pidfd::open(pid).ok()),
                watch,
            };
        }
        let slot = Arc::new(Mutex::new(Some(r)));
        let theirs = slot.clone();
        let their_watch = watch.clone();
        let spawned = std::thread::Builder::new()
            .name("pycsp-reaper".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let _internal = crate::shm::census::internal_thread(false);
                let finish = Finish(their_watch);
                let r = theirs.lock().ok().and_then(|mut r| r.take());
                r.expect("the reaper takes its process once")
                    .wait_watched(Some(&finish.0))
            });
        let reaper = match spawned {
            Ok(h) => Reaper::Thread(h),
            Err(_) => {
                let r = slot.lock().ok().and_then(|mut r| r.take());
                Reaper::Inline(
                    Box::new(r.expect("no thread took the process")),
                    sys::Pidfd::open(pid).ok(),
                )
            }
        };
        Watched {
            name,
            pid,
            ends,
            started_with,
            stop,
            reaper,
            watch,
        }
    }

    /// Whether the process has ended and [`join`](Self::join) would not wait (for a process
    /// watched without a reaper thread: whether it exited).
    pub(crate) fn finished(&self) -> bool {
        match &self.reaper {
            Reaper::Thread(_) => *Watch::lock(&self.watch.done),
            Reaper::Inline(_, pidfd) => self.wait_exit(pidfd.as_ref(), Duration::ZERO),
        }
    }

    /// Waits until [`finished`](Self::finished), or until `deadline`; whether it is.
    pub(crate) fn wait_finished(&self, deadline: Instant) -> bool {
        match &self.reaper {
            Reaper::Thread(_) => {
                let mut done = Watch::lock(&self.watch.done);
                while !*done {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    done = match self.watch.finished.wait_timeout(done, deadline - now) {
                        Ok((d, _)) => d,
                        Err(e) => e.into_inner().0,
                    };
                }
                true
            }
            Reaper::Inline(_, pidfd) => self.wait_exit(
                pidfd.as_ref(),
                deadline.saturating_duration_since(Instant::now()),
            ),
        }
    }

    /// Waits up to `timeout` for the process (watched inline) to exit, by `pidfd` if it has
    /// one.
    fn wait_exit(&self, pidfd: Option<&sys::Pidfd>, timeout: Duration) -> bool {
        match pidfd {
            Some(p) => p.wait_exit(timeout),
            None => sys::wait_child_exit(self.pid, timeout),
        }
    }

    /// Kills the process with SIGKILL (for a placed process: its launcher, so the process
    /// counts as lost), unless it was already reaped: its pid may then be another process's.
    pub(crate) fn kill(&self) {
        let reaped = Watch::lock(&self.watch.reaped);
        if !*reaped {
            sys::kill_child(self.pid);
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
            Reaper::Inline(r, _) => r.wait_watched(Some(&self.watch)),
        }
    }

    /// Stops the process at once (see [`Stopper::stop`]), then waits for it as
    /// [`join`](Self::join) does.
    pub(crate) fn stop(self) -> Result<Returned, Error> {
        self.stop.stop();
        self.join()
    }

    /// A handle that stops the process at once, kept apart from this one.
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper {
            ctrl: self.stop.ctrl.as_ref().and_then(|c| c.try_clone().ok()),
            pid: self.pid,
            forked: self.stop.forked,
            watch: self.watch.clone(),
        }
    }
}

/// Stops a watched process at once: see [`stop`](Self::stop).
pub(crate) struct Stopper {
    /// A second handle on the control connection.
    ctrl: Option<Ctrl>,
    pid: u32,
    /// Forked by the fork server: the process watches no connection, it is killed.
    forked: bool,
    watch: Arc<Watch>,
}

impl Stopper {
    /// Ends the process's control connection, which makes an executed or placed process exit
    /// at once (it exits when its parent's connection ends); a process the fork server forked
    /// runs no thread to watch the connection and is killed with SIGKILL instead, unless it
    /// was reaped (its pid may then be another process's).
    pub(crate) fn stop(&self) {
        if let Some(c) = &self.ctrl {
            c.shutdown();
        }
        if self.forked {
            let reaped = Watch::lock(&self.watch.reaped);
            if !*reaped {
                sys::kill_child(self.pid);
            }
        }
    }
}

/// Waits until every process of `watched` has finished, published in the network's census as
/// a join of them (so that a network whose processes all wait for each other is seen as
/// deadlocked, see `shm/census.rs`); the [`Error::Deadlock`] of a deadlock declared while it
/// waited. The processes are then still to be joined.
pub(crate) fn wait_all(watched: &[Watched]) -> Option<Error> {
    wait_all_as(census::Kind::Join, watched)
}

/// [`wait_all`], published as a wait of `kind` (`Join`: `Parallel` or a `Spawned`; `Sequence`).
pub(crate) fn wait_all_as(kind: census::Kind, watched: &[Watched]) -> Option<Error> {
    let mut deadlock = None;
    let mut parked: Option<census::Parked> = None;
    // The deadlock count when this wait first parked.
    let mut since: Option<u64> = None;
    loop {
        if let Some(s) = since {
            if census::mode() == census::Mode::Fail && census::deadlocks() != s {
                // A deadlock was declared while we waited (perhaps seen first by a child,
                // which then ended): the processes end with its errors; report it.
                let report = census::last_report().unwrap_or_else(|| "deadlock".into());
                let picture =
                    observe::deadlock_picture().and_then(|p| observe::write_requested(&p));
                deadlock = Some(Error::Deadlock { report, picture });
                since = None;
                parked = None;
            }
        }
        let Some(first) = watched.iter().find(|w| !w.finished()) else {
            return deadlock;
        };
        if parked.is_none() {
            // The one waited for first, then others for the report.
            let items: Vec<census::Item<'_>> = std::iter::once(first)
                .chain(
                    watched
                        .iter()
                        .filter(|w| !w.finished() && w.pid() != first.pid()),
                )
                .take(census::WAIT_ITEMS)
                .map(|w| census::Item {
                    key: u64::from(w.pid()),
                    write: false,
                    name: "",
                    word: None,
                })
                .collect();
            parked = census::park(kind, &items, since);
            since = since.or(parked.as_ref().map(census::Parked::since));
        }
        if first.wait_finished(Instant::now() + census::SLICE) {
            // It ended: publish the others anew.
            parked = None;
            continue;
        }
        if let Some(p) = parked.as_mut() {
            // A declared deadlock is taken up at the top of the loop.
            let _ = p.tick();
        }
    }
}

/// A picture member for `w` (how it ended, if `result` says).
pub(crate) fn member(w: &Watched) -> Member {
    Member {
        name: display_name(w.name).to_string(),
        pid: w.pid,
        ended: None,
        ends: w.started_with.clone(),
    }
}

impl Running {
    /// Waits for the process and reaps it; with a `watch`, reaps it under its lock, so that a
    /// `kill` never signals a pid that was reaped (and may be another process's by then).
    fn wait_watched(mut self, watch: Option<&Watch>) -> Result<Returned, Error> {
        let t0 = trace::begin();
        let r = self.wait_reaped(watch);
        let (name, pid) = (display_name(self.name), self.child.id());
        match &r {
            Ok(_) => trace::process_returned(name, pid),
            Err(Error::ProcessFailed { failure, .. }) => trace::process_failed(name, pid, failure),
            Err(e) => trace::process_failed(name, pid, e),
        }
        if t0 != 0 {
            trace::span(&format!("join {name}"), t0);
        }
        r
    }

    fn wait_reaped(&mut self, watch: Option<&Watch>) -> Result<Returned, Error> {
        let report = control::receive(&mut self.ctrl, Kind::Report)
            .ok()
            .and_then(|b| rmp_serde::from_slice::<Report>(&b).ok());
        let pid = self.child.id();
        if !matches!(report, Some(Report::Returned(_))) {
            // Wake the peers first, then reap.
            let ends = match &self.ledger {
                Some(l) => l.end_keys(),
                None => self.ends.clone(),
            };
            mark_peer_died(&ends, pid, display_name(self.name));
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
        let status = match watch {
            None => self.child.wait(),
            Some(w) => {
                sys::wait_exited_unreaped(pid);
                let mut reaped = Watch::lock(&w.reaped);
                let status = self.child.wait();
                *reaped = true;
                status
            }
        };
        // The child can no longer run: whatever it still held goes.
        if let Some(l) = self.ledger.take() {
            l.settle();
        }
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
