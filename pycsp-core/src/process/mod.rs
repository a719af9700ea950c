//! Processes: `#[process]` functions run as OS processes, and the combinators that start them.
//!
//! # How a process starts
//!
//! Calling a `#[process]` function runs nothing: it returns a [`Process`] holding the
//! function's registered name and its arguments. [`Parallel`], [`Sequence`] and [`Spawn`] start
//! each process as a copy of the current binary with the process's name in its environment,
//! a control socket, and the network's shared memory: forked by the root's **fork server**
//! (a single-threaded copy of the program made before `main`; see `forkserver.rs`), or by
//! **re-executing the binary** (`/proc/self/exe`) where there is no server
//! (`PYCSP_START=exec`, a nested start). In the child, the constructor that `#[process]`
//! registers finds the function by name, reads its serialized arguments from the control
//! socket, runs it, and writes back its serialized return value (or its panic message). This
//! works the same in `cargo run`, integration tests and doc tests, and is safe when the parent
//! runs other threads (the child is a copy of a process that never ran another thread, or a
//! fresh `exec`).
//!
//! # Supervision
//!
//! The parent watches each child through its control socket. If a child dies without
//! reporting (a signal, `abort`, `exit`, a panic), the parent marks every channel whose ends
//! it gave that child as held by a dead process, so its peers wake up with
//! [`ChannelError::PeerDied`](crate::ChannelError::PeerDied) naming it instead of hanging
//! (they are not poisoned: a reader still reads what was written before the death), and the
//! combinator returns [`Error::ProcessFailed`] with the signal or exit code, and how every
//! other process of the set ended ([`Outcomes`]). A child watches its parent the same
//! way and exits at once when the parent is gone, so killing the root of a network with
//! `SIGKILL` takes the whole network down, and the shared memory with it.

mod child;
mod control;
mod forkserver;
mod launch;
mod local;
mod placed;
mod pool;
mod running;
pub mod slurm;
mod spawned;
mod table;

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Outcomes};
use crate::observe;
use crate::runtime::{self, poison_keys};
use crate::shm::census;
use crate::trace;
pub use child::child_entry;
#[doc(hidden)]
pub use forkserver::server_pid as fork_server_pid;
#[doc(hidden)]
pub use forkserver::spare_pid as fork_server_spare_pid;
pub use forkserver::spare_pids as fork_server_spare_pids;
pub use launch::{ErasedProcess, Placement};
#[doc(hidden)]
pub use pool::{run_chunk, worker_entry, PoolFnEntry, POOL_FNS, POOL_WORKER};
pub use pool::{AsyncResult, Calls, Imap, Pool, PoolFn};
#[doc(hidden)]
pub use running::Returned;
use running::{failed_outcome, Running, Watched};
use table::display_name;
pub use table::{ProcessEntry, PROCESSES};

/// A process that has not started yet: a `#[process]` function with its arguments.
///
/// `R` is the function's return type; the combinators hand back the value the function
/// returned in its own OS process. Dropping a `Process` that was never given to a combinator
/// retires the channel ends among its arguments; one that a combinator could not start
/// poisons them (see [`Error::Spawn`]).
#[must_use = "a Process runs only when given to Parallel, Sequence or Spawn"]
pub struct Process<R> {
    inner: ErasedProcess,
    _r: PhantomData<fn() -> R>,
}

impl<R> Process<R> {
    #[doc(hidden)]
    pub fn __new<A: Serialize + Send + 'static>(name: &'static str, args: A) -> Self {
        Process {
            inner: ErasedProcess {
                name,
                args: Box::new(args),
                placement: None,
            },
            _r: PhantomData,
        }
    }

    /// Runs this process where `placement` says (another host, another network namespace)
    /// instead of as a child of this one. Its channel ends must belong to socket channels
    /// (`tcp://...`); its return value or failure comes back as for a local process.
    pub fn on(mut self, placement: Placement) -> Self {
        self.inner.placement = Some(placement);
        self
    }

    /// The process's function, with its module path.
    pub fn name(&self) -> &'static str {
        display_name(self.inner.name)
    }
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Process({})", self.name())
    }
}

/// Anything the combinators can run: a [`Process`], a `Vec` or array of processes of one
/// return type, or a tuple of up to eight of these (whose return types may differ).
///
/// The output has the same shape: a tuple of processes gives a tuple of their return values.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a process or a set of processes",
    label = "Parallel, Sequence and Spawn run processes: values made by calling #[process] functions",
    note = "mark the function with `#[process]`: calling it then makes a `Process` instead of running it here",
    note = "a set is a `Process`, a `Vec` or array of processes, or a tuple of up to eight sets"
)]
pub trait ProcessSet {
    /// The return values, in the shape of the set.
    type Output;
    /// How each process ended, in the shape of the set: `Result<R, Error>` for each (see
    /// [`Spawned::join_outcomes`]).
    type Each;
    #[doc(hidden)]
    type Shape;
    #[doc(hidden)]
    fn flatten(self, into: &mut Vec<ErasedProcess>) -> Self::Shape;
    #[doc(hidden)]
    fn unflatten(
        shape: Self::Shape,
        from: &mut std::vec::IntoIter<Returned>,
    ) -> Result<Self::Output, Error>;
    #[doc(hidden)]
    fn each(
        shape: Self::Shape,
        from: &mut std::vec::IntoIter<Result<Returned, Error>>,
    ) -> Self::Each;
}

fn next_each<R: DeserializeOwned>(
    from: &mut std::vec::IntoIter<Result<Returned, Error>>,
) -> Result<R, Error> {
    from.next().expect("one result per process")?.decode()
}

fn next_returned(from: &mut std::vec::IntoIter<Returned>) -> Returned {
    from.next().expect("one result per process")
}

impl<R: DeserializeOwned> ProcessSet for Process<R> {
    type Output = R;
    type Each = Result<R, Error>;
    type Shape = ();
    fn each(_: (), from: &mut std::vec::IntoIter<Result<Returned, Error>>) -> Self::Each {
        next_each(from)
    }
    fn flatten(self, into: &mut Vec<ErasedProcess>) {
        into.push(self.inner);
    }
    fn unflatten(_: (), from: &mut std::vec::IntoIter<Returned>) -> Result<R, Error> {
        next_returned(from).decode()
    }
}

impl<R: DeserializeOwned> ProcessSet for Vec<Process<R>> {
    type Output = Vec<R>;
    type Each = Vec<Result<R, Error>>;
    type Shape = usize;
    fn each(n: usize, from: &mut std::vec::IntoIter<Result<Returned, Error>>) -> Self::Each {
        (0..n).map(|_| next_each(from)).collect()
    }
    fn flatten(self, into: &mut Vec<ErasedProcess>) -> usize {
        let n = self.len();
        into.extend(self.into_iter().map(|p| p.inner));
        n
    }
    fn unflatten(n: usize, from: &mut std::vec::IntoIter<Returned>) -> Result<Vec<R>, Error> {
        (0..n).map(|_| next_returned(from).decode()).collect()
    }
}

impl<R: DeserializeOwned, const N: usize> ProcessSet for [Process<R>; N] {
    type Output = [R; N];
    type Each = [Result<R, Error>; N];
    type Shape = ();
    fn each(_: (), from: &mut std::vec::IntoIter<Result<Returned, Error>>) -> Self::Each {
        std::array::from_fn(|_| next_each(from))
    }
    fn flatten(self, into: &mut Vec<ErasedProcess>) {
        into.extend(self.into_iter().map(|p| p.inner));
    }
    fn unflatten(_: (), from: &mut std::vec::IntoIter<Returned>) -> Result<[R; N], Error> {
        let v: Vec<R> = (0..N)
            .map(|_| next_returned(from).decode())
            .collect::<Result<_, _>>()?;
        match v.try_into() {
            Ok(a) => Ok(a),
            Err(_) => unreachable!("exactly N values were decoded"),
        }
    }
}

macro_rules! tuple_set {
    ($($t:ident $v:ident),+) => {
        impl<$($t: ProcessSet),+> ProcessSet for ($($t,)+) {
            type Output = ($($t::Output,)+);
            type Each = ($($t::Each,)+);
            type Shape = ($($t::Shape,)+);
            fn each(
                shape: Self::Shape,
                from: &mut std::vec::IntoIter<Result<Returned, Error>>,
            ) -> Self::Each {
                let ($($v,)+) = shape;
                ($($t::each($v, from),)+)
            }
            fn flatten(self, into: &mut Vec<ErasedProcess>) -> Self::Shape {
                let ($($v,)+) = self;
                ($($v.flatten(into),)+)
            }
            fn unflatten(
                shape: Self::Shape,
                from: &mut std::vec::IntoIter<Returned>,
            ) -> Result<Self::Output, Error> {
                let ($($v,)+) = shape;
                // Decode every member (in order) even if an earlier one failed.
                $(let $v = $t::unflatten($v, from);)+
                Ok(($($v?,)+))
            }
        }
    };
}

tuple_set!(A a);
tuple_set!(A a, B b);
tuple_set!(A a, B b, C c);
tuple_set!(A a, B b, C c, D d);
tuple_set!(A a, B b, C c, D d, E e);
tuple_set!(A a, B b, C c, D d, E e, F f);
tuple_set!(A a, B b, C c, D d, E e, F f, G g);
tuple_set!(A a, B b, C c, D d, E e, F f, G g, H h);

/// `n` processes made by `f(0)`, ..., `f(n - 1)`: PyCSP's `Parallel(n * worker(...))`.
///
/// ```ignore
/// let results = Parallel(replicate(4, |i| worker(jobs.reader(), i)))?;
/// ```
pub fn replicate<R>(n: usize, f: impl FnMut(usize) -> Process<R>) -> Vec<Process<R>> {
    (0..n).map(f).collect()
}

/// Runs every process of `set` in its own OS process, all at the same time, and waits for all
/// of them. Returns their return values in the shape of `set`, or the first failure in the
/// order given: which process failed and how (panic message, exit code or signal), with how
/// every process of the set ended, the values the others returned included
/// ([`Error::outcomes`]; [`Spawned::join_outcomes`] gives them typed).
#[allow(non_snake_case)]
pub fn Parallel<S: ProcessSet>(set: S) -> Result<S::Output, Error> {
    // Joined at once: a single process is watched by this thread itself.
    spawn(set, true)?.join()
}

/// Runs the processes of `set` one after another, each in its own OS process, and returns
/// their return values. Stops at the first failure; the processes after it do not run (the
/// failure's [`Error::outcomes`] hold those that did).
#[allow(non_snake_case)]
pub fn Sequence<S: ProcessSet>(set: S) -> Result<S::Output, Error> {
    let mut procs = Vec::new();
    let shape = set.flatten(&mut procs);
    let mut done = Vec::with_capacity(procs.len());
    for p in procs {
        // Joined as `Parallel` joins: published in the census while it waits, so that a
        // process that can never end is a deadlock, not a hang.
        let r = start(p).and_then(|r| {
            // Waited for at once and alone: this thread watches it.
            let w = Watched::joined_now(r);
            match running::wait_all_as(census::Kind::Sequence, std::slice::from_ref(&w)) {
                Some(deadlock) => {
                    drop(w.join());
                    Err(deadlock)
                }
                None => w.join(),
            }
        });
        let failed = r.is_err();
        done.push(r);
        if failed {
            break;
        }
    }
    settle::<S>(shape, done)
}

/// The return values of a set of processes from how each ended, or the first failure with the
/// outcomes of all.
fn settle<S: ProcessSet>(
    shape: S::Shape,
    results: Vec<Result<Returned, Error>>,
) -> Result<S::Output, Error> {
    if results.iter().all(Result::is_ok) {
        // Every process returned: no copy of the values is kept for an error's outcomes.
        let ok: Vec<Returned> = results.into_iter().filter_map(Result::ok).collect();
        return S::unflatten(shape, &mut ok.into_iter());
    }
    let outcomes: Vec<_> = results
        .iter()
        .map(|r| match r {
            Ok(v) => v.outcome(),
            Err(e) => failed_outcome(e),
        })
        .collect();
    let first = results
        .into_iter()
        .find_map(Result::err)
        .expect("one failed");
    Err(with_outcomes(first, outcomes))
}

/// `e` with the outcomes of its set, when it is a process failure.
fn with_outcomes(mut e: Error, all: Vec<crate::error::Outcome>) -> Error {
    if let Error::ProcessFailed { outcomes, .. } = &mut e {
        *outcomes = Outcomes::new(all);
    }
    e
}

/// Starts every process of `set` and returns at once with a handle to join them.
///
/// Each process is watched from the moment it starts: if it dies without returning (a
/// panic, `abort`, `exit`, a signal), its peers get [`ChannelError::PeerDied`] at once, joined
/// or not. Dropping the handle without joining waits for the processes (a network never
/// leaves processes behind); dropping it while the thread unwinds from a panic stops them
/// instead (they may be waiting for ends that this thread would drop only afterwards) and
/// says so on standard error.
///
/// [`ChannelError::PeerDied`]: crate::ChannelError::PeerDied
#[allow(non_snake_case)]
pub fn Spawn<S: ProcessSet>(set: S) -> Result<Spawned<S>, Error> {
    spawn(set, false)
}

/// [`Spawn`]; with `joined_now` (the caller joins at once), a set of one process is watched
/// by the joining thread instead of a reaper thread (see [`Watched::joined_now`]).
fn spawn<S: ProcessSet>(set: S, joined_now: bool) -> Result<Spawned<S>, Error> {
    let mut procs = Vec::new();
    let shape = set.flatten(&mut procs);
    let alone = joined_now && procs.len() == 1;
    let mut watched: Vec<Watched> = Vec::with_capacity(procs.len());
    for p in procs {
        match start(p) {
            Ok(r) if alone => watched.push(Watched::joined_now(r)),
            Ok(r) => watched.push(Watched::new(r)),
            Err(e) => {
                for w in &watched {
                    poison_keys(&w.ends);
                }
                for w in watched {
                    drop(w.join());
                }
                return Err(e);
            }
        }
    }
    Ok(Spawned {
        watched,
        shape: Some(shape),
        _s: PhantomData,
    })
}

/// Processes started by [`Spawn`].
#[must_use = "dropping a Spawned waits for its processes; call join() to get their results"]
pub struct Spawned<S: ProcessSet> {
    watched: Vec<Watched>,
    shape: Option<S::Shape>,
    _s: PhantomData<fn() -> S>,
}

impl<S: ProcessSet> Spawned<S> {
    /// The OS process ids of the processes, in order.
    pub fn pids(&self) -> Vec<u32> {
        self.watched.iter().map(Watched::pid).collect()
    }

    /// Waits for every process and returns their return values, or the first failure in
    /// the order of the set with every process's outcome (see [`Parallel`]).
    pub fn join(mut self) -> Result<S::Output, Error> {
        let deadlock = running::wait_all(&self.watched);
        let mut members: Vec<_> = self.watched.iter().map(running::member).collect();
        let results: Vec<_> = std::mem::take(&mut self.watched)
            .into_iter()
            .map(Watched::join)
            .collect();
        if deadlock.is_none() {
            picture_of_set(&mut members, &results);
        }
        if let Some(e) = deadlock {
            return Err(e);
        }
        let shape = self.shape.take().expect("shape is taken once");
        settle::<S>(shape, results)
    }

    /// Waits for every process and returns how each ended, typed and in the shape of the
    /// set: `Result<R, Error>` for each process, so that the values of those that returned
    /// are there beside the failures of the others.
    ///
    /// ```ignore
    /// let (counted, crashed) = Spawn((count(jobs.reader()), fragile(out.writer())))?
    ///     .join_outcomes();
    /// let counted: u64 = counted?; // the survivor's value, whatever the other one did
    /// ```
    pub fn join_outcomes(mut self) -> S::Each {
        running::wait_all(&self.watched);
        let results: Vec<_> = std::mem::take(&mut self.watched)
            .into_iter()
            .map(Watched::join)
            .collect();
        let shape = self.shape.take().expect("shape is taken once");
        S::each(shape, &mut results.into_iter())
    }
}

impl<S: ProcessSet> Drop for Spawned<S> {
    fn drop(&mut self) {
        let watched = std::mem::take(&mut self.watched);
        if !std::thread::panicking() {
            running::wait_all(&watched);
            for w in watched {
                drop(w.join());
            }
            return;
        }
        for w in watched {
            let pid = w.pid();
            if let Err(e) = w.stop() {
                eprintln!(
                    "pycsp: a Spawned dropped while its thread panicked stopped (pid {pid}): {e}"
                );
            }
        }
    }
}

/// In the root process, with `PYCSP_PICTURE` set: writes the picture of a set of processes
/// that ended (`results`), as it was started.
fn picture_of_set(members: &mut [observe::Member], results: &[Result<Returned, Error>]) {
    if runtime::in_child() || std::env::var_os(observe::ENV_PICTURE).is_none() {
        return;
    }
    for (m, r) in members.iter_mut().zip(results) {
        m.ended = Some(if r.is_ok() { "returned" } else { "failed" }.into());
    }
    observe::write_requested(&observe::set_picture(members, observe::detail()));
}

/// Starts `p`: as a local child, or through its placement's launcher.
fn start(p: ErasedProcess) -> Result<Running, Error> {
    // A root opens (and starts) its message trace before its first child can append to it.
    trace::on();
    let name = p.name;
    let running = match &p.placement {
        None => local::start(p.name, p.args),
        Some(placement) => placed::start(p.name, placement, p.args),
    }?;
    trace::process_started(display_name(name), running.child.id());
    Ok(running)
}
