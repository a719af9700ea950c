//! What else a [`Spawned`] handle does besides `join`: look whether its processes still run,
//! join without waiting or with a timeout, kill them (Python's `Process.is_alive()`,
//! `join(timeout)`, `kill()`).

use std::time::{Duration, Instant};

use super::{ProcessSet, Spawned};
use crate::error::Error;

impl<S: ProcessSet> Spawned<S> {
    /// Whether any of the processes is still running (Python's `Process.is_alive()`): `false`
    /// once every one has ended and [`join`](Self::join) would return at once.
    pub fn is_alive(&self) -> bool {
        self.watched.iter().any(|w| !w.finished())
    }

    /// Joins the processes if every one has ended, without waiting; while any runs, hands
    /// the handle back in `Err` (as `Arc::try_unwrap` does).
    ///
    /// ```ignore
    /// let mut running = Spawn(worker(...))?;
    /// let result = loop {
    ///     match running.try_join() {
    ///         Ok(result) => break result?,
    ///         Err(still) => running = still, // do something else meanwhile
    ///     }
    /// };
    /// ```
    pub fn try_join(self) -> Result<Result<S::Output, Error>, Spawned<S>> {
        if self.is_alive() {
            return Err(self);
        }
        Ok(self.join())
    }

    /// Waits up to `timeout` for every process to end, then joins them (Python's
    /// `join(timeout)`); if any still runs then, hands the handle back in `Err`, to join
    /// later or [`kill`](Self::kill).
    pub fn join_timeout(self, timeout: Duration) -> Result<Result<S::Output, Error>, Spawned<S>> {
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            return Ok(self.join()); // no end within this program's lifetime: just join
        };
        if self.watched.iter().all(|w| w.wait_finished(deadline)) {
            Ok(self.join())
        } else {
            Err(self)
        }
    }

    /// Kills every process that still runs with SIGKILL (Python's `Process.kill()`), without
    /// waiting: [`join`](Self::join) then reports each as failed
    /// ([`Failure::Signaled`](crate::Failure::Signaled)`(9)`, or `Lost` for a placed
    /// process, whose launcher is killed), and their peers get `PeerDied`, as for any
    /// process that dies. A process that already ended is left alone (its result stands).
    pub fn kill(&self) {
        for w in &self.watched {
            w.kill();
        }
    }
}

impl<S: ProcessSet> std::fmt::Debug for Spawned<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned")
            .field("pids", &self.pids())
            .field("alive", &self.is_alive())
            .finish()
    }
}
