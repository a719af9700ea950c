//! [`Pool`]: Python's `multiprocessing.Pool`, a set of worker processes reused across calls,
//! each running any `#[pool_fn]` function of this binary on the items it is given.
//!
//! # How it works
//!
//! `#[pool_fn]` registers its function in [`POOL_FNS`] (at link time, as `#[process]` does) and
//! registers the worker process, [`worker_entry`], under [`POOL_WORKER`]. A pool starts its
//! workers as ordinary child processes; each has a channel of jobs and a channel of answers of
//! its own, so that the death of one touches no other. A job is a chunk of items, encoded, with
//! the number of the function in `POOL_FNS` (the child is this same binary, so the numbers
//! agree); the answer is the chunk's results, encoded. The calling thread keeps at most
//! [`DEPTH`] chunks at each worker (one running, one waiting), and waits for the next answer
//! from any of them in an [`Alternation`]. So the input is read only as workers free up (an
//! `imap` over an endless iterator works), and the loss of a worker is seen at once: its
//! answer channel reports `PeerDied`, and the chunks it held are known.
//!
//! A worker that panics in the function catches the panic, returns which item it was running
//! as its process's return value and ends; one that is killed ends by itself. Either way the
//! call fails with [`Error::PoolWorker`] naming the worker, the function and the item, and the
//! pool starts a replacement. The answers other workers still owe to a failed call are dropped
//! when they arrive. Dropping a pool stops its workers at once (Python's `terminate`), so a
//! drop never waits for work; [`Pool::close`] lets the work finish.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::running::{Stopper, Watched};
use super::table::{display_name, PROCESSES};
use super::{start, Process};
use crate::alt::Alternation;
use crate::channel::{Channel, ChannelIn, ChannelOut};
use crate::error::{ChannelError, Error, Failure};
use crate::shm::wait::deadline_after;

/// The registered name of the pool's worker process.
pub const POOL_WORKER: &str = "pycsp::pool::worker";

/// Chunks a worker holds at most: the one it runs and the next, so that it never waits for the
/// caller between two chunks, and a slow chunk holds back at most one other.
pub(crate) const DEPTH: usize = 2;

/// A pool's calls show a progress bar after this long (if standard error is a terminal).
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// A function that `#[pool_fn]` marked: it can run in a [`Pool`]'s workers.
///
/// `#[pool_fn] fn square(x: u64) -> u64` makes `square` a value of a type implementing this
/// trait (it can still be called as `square(3)`), with `Args = (u64,)` and `Output = u64`.
/// Implemented by `#[pool_fn]` only: the workers find the function by its registered name.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a pool function",
    label = "a Pool runs functions marked #[pool_fn]",
    note = "mark the function with `#[pool_fn]` (`use pycsp::pool_fn;`): the pool's worker processes find it by name"
)]
pub trait PoolFn: Copy + 'static {
    /// The function's parameters, as a tuple (one parameter: a 1-tuple).
    type Args: Serialize + DeserializeOwned;
    /// The function's return type.
    type Output: Serialize + DeserializeOwned;
    /// The registered name, unique in the binary.
    #[doc(hidden)]
    const NAME: &'static str;
    /// Runs the function.
    fn call(args: Self::Args) -> Self::Output;
}

/// What a pool function's table entry runs: the function on each item of an encoded chunk,
/// setting the cell to the position of the item it runs.
pub type RunChunk = fn(&[u8], &Cell<usize>) -> Result<Vec<u8>, String>;

/// One entry of the table of pool functions that `#[pool_fn]` fills at link time.
#[doc(hidden)]
pub struct PoolFnEntry {
    pub name: &'static str,
    /// Runs the function on each item of an encoded chunk; sets `at` to the position of the
    /// item it runs.
    pub run: RunChunk,
}

/// Every `#[pool_fn]` function linked into this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static POOL_FNS: [PoolFnEntry];

/// The `run` of `F`'s table entry.
#[doc(hidden)]
pub fn run_chunk<F: PoolFn>(bytes: &[u8], at: &Cell<usize>) -> Result<Vec<u8>, String> {
    let args: Vec<F::Args> =
        rmp_serde::from_slice(bytes).map_err(|e| format!("its items could not be decoded: {e}"))?;
    let mut out = Vec::with_capacity(args.len());
    for (i, a) in args.into_iter().enumerate() {
        at.set(i);
        out.push(F::call(a));
    }
    rmp_serde::to_vec(&out).map_err(|e| format!("its results could not be encoded: {e}"))
}

/// A chunk of items for a worker.
#[derive(Serialize, Deserialize)]
struct Job {
    call: u64,
    func: u32,
    start: u64,
    #[serde(with = "serde_bytes")]
    items: Vec<u8>,
}

/// A worker's answer to a [`Job`]: the chunk's results, encoded.
#[derive(Serialize, Deserialize)]
struct Answer {
    call: u64,
    start: u64,
    results: Result<serde_bytes::ByteBuf, String>,
}

/// How a worker process ended (its return value).
#[derive(Serialize, Deserialize)]
enum WorkerEnd {
    /// Its jobs channel retired: the pool closed.
    Closed,
    /// The function panicked on item `item` of call `call`.
    Panicked {
        call: u64,
        item: u64,
        message: String,
    },
}

/// The worker process: runs the jobs it is sent until its jobs channel retires, or until the
/// function panics (it then returns which item it was running).
#[doc(hidden)]
pub fn worker_entry(args: &[u8]) -> Result<Vec<u8>, String> {
    let (jobs, answers): (ChannelIn<Job>, ChannelOut<Answer>) = rmp_serde::from_slice(args)
        .map_err(|e| format!("its arguments could not be decoded: {e}"))?;
    let end = work(&jobs, &answers);
    rmp_serde::to_vec(&end).map_err(|e| format!("its return value could not be encoded: {e}"))
}

fn work(jobs: &ChannelIn<Job>, answers: &ChannelOut<Answer>) -> WorkerEnd {
    while let Ok(job) = jobs.read() {
        let Some(entry) = POOL_FNS.get(job.func as usize) else {
            let answer = Answer {
                call: job.call,
                start: job.start,
                results: Err(format!("this binary has no pool function {}", job.func)),
            };
            if answers.write(answer).is_err() {
                break;
            }
            continue;
        };
        let at = Cell::new(0);
        match catch_unwind(AssertUnwindSafe(|| (entry.run)(&job.items, &at))) {
            Ok(results) => {
                let answer = Answer {
                    call: job.call,
                    start: job.start,
                    results: results.map(serde_bytes::ByteBuf::from),
                };
                if answers.write(answer).is_err() {
                    break;
                }
            }
            Err(payload) => {
                let message = crate::error::panic_message(&*payload);
                return WorkerEnd::Panicked {
                    call: job.call,
                    item: job.start + at.get() as u64,
                    message,
                };
            }
        }
    }
    WorkerEnd::Closed
}

/// A chunk given to a worker and not yet answered.
struct Held {
    call: u64,
    start: usize,
    len: usize,
}

/// One worker process, seen from the pool.
struct Worker {
    pid: u32,
    jobs: ChannelOut<Job>,
    answers: ChannelIn<Answer>,
    watched: Watched,
    held: VecDeque<Held>,
}

/// What the pool's users share with a `map_async` thread and the pool's drop.
struct Shared {
    /// Set by the pool's drop: no worker is replaced any more, and calls fail.
    terminating: AtomicBool,
    /// Second handles on the workers' control connections, by slot: ending one makes its
    /// worker exit at once, from any thread.
    stops: Mutex<Vec<Option<Stopper>>>,
    /// The thread that holds the core (a token of it), to refuse a call that would wait for
    /// itself.
    owner: AtomicUsize,
}

/// The workers and the calls' bookkeeping, used by one call at a time.
struct Core {
    workers: Vec<Option<Worker>>,
    next_call: u64,
}

/// One call being run: its number and function, and what is left of it.
struct Call {
    id: u64,
    func: u32,
    function: &'static str,
    /// Chunks of this call given to workers and not answered.
    open: usize,
    /// The input is exhausted.
    input_done: bool,
}

/// A chunk of encoded items: the position of its first item, its length, its bytes.
type Chunk = (usize, usize, Vec<u8>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn start_worker(slot: usize, shared: &Shared) -> Result<Worker, Error> {
    let jobs = Channel::<Job>::buffered(DEPTH)?;
    let answers = Channel::<Answer>::buffered(DEPTH)?;
    let p = Process::<WorkerEnd>::__new(POOL_WORKER, (jobs.reader(), answers.writer()));
    let running = start(p.inner)?;
    let pid = running.child.id();
    let watched = Watched::new(running);
    let mut stops = lock(&shared.stops);
    if stops.len() <= slot {
        stops.resize_with(slot + 1, || None);
    }
    stops[slot] = Some(watched.stopper());
    Ok(Worker {
        pid,
        jobs: jobs.writer(),
        answers: answers.reader(),
        watched,
        held: VecDeque::new(),
    })
}

impl Core {
    /// Starts a call of the pool function `F`.
    fn begin<F: PoolFn>(&mut self, shared: &Shared) -> Result<Call, Error> {
        if shared.terminating.load(Ordering::SeqCst) {
            return Err(Error::Pool("the pool was terminated".into()));
        }
        let func = POOL_FNS
            .iter()
            .position(|e| e.name == F::NAME)
            .ok_or_else(|| {
                Error::Pool(format!(
                    "{} is not a #[pool_fn] of this binary",
                    display_name(F::NAME)
                ))
            })?;
        // Workers that could not be replaced after an earlier failure get another chance.
        for (slot, w) in self.workers.iter_mut().enumerate() {
            if w.is_none() {
                *w = Some(start_worker(slot, shared)?);
            }
        }
        self.next_call += 1;
        Ok(Call {
            id: self.next_call,
            func: func as u32,
            function: display_name(F::NAME),
            open: 0,
            input_done: false,
        })
    }

    /// Runs `call` until one more chunk is answered (its first item's position and its
    /// encoded results), or the call is done (`None`). Gives workers chunks from `feed` as
    /// they have room.
    fn step(
        &mut self,
        shared: &Shared,
        call: &mut Call,
        feed: &mut dyn FnMut() -> Option<Result<Chunk, Error>>,
    ) -> Result<Option<(usize, usize, Vec<u8>)>, Error> {
        loop {
            self.dispatch(shared, call, feed)?;
            if call.open == 0 && call.input_done {
                return Ok(None);
            }
            let busy: Vec<usize> = (0..self.workers.len())
                .filter(|&i| self.workers[i].as_ref().is_some_and(|w| !w.held.is_empty()))
                .collect();
            if busy.is_empty() {
                return Err(Error::Pool("the pool has no workers left".into()));
            }
            let (slot, answer) = self.next_answer(&busy)?;
            match answer {
                Ok(a) => {
                    let w = self.workers[slot].as_mut().expect("a busy worker");
                    let len = w.held.pop_front().map_or(0, |h| h.len);
                    if a.call != call.id {
                        continue; // owed to an earlier call that failed
                    }
                    call.open -= 1;
                    return match a.results {
                        Ok(bytes) => Ok(Some((a.start as usize, len, bytes.into_vec()))),
                        Err(reason) => Err(Error::Pool(format!(
                            "{} on items from {}: {reason}",
                            call.function, a.start
                        ))),
                    };
                }
                Err(e) if ended(&e) => self.lost(shared, slot, call)?,
                Err(e) => {
                    // An answer that could not be read: the worker lives on.
                    let w = self.workers[slot].as_mut().expect("a busy worker");
                    if w.held.pop_front().is_some_and(|h| h.call == call.id) {
                        call.open -= 1;
                        return Err(Error::Channel(e));
                    }
                }
            }
        }
    }

    /// Gives each worker chunks until it holds [`DEPTH`] or the input is exhausted.
    fn dispatch(
        &mut self,
        shared: &Shared,
        call: &mut Call,
        feed: &mut dyn FnMut() -> Option<Result<Chunk, Error>>,
    ) -> Result<(), Error> {
        for slot in 0..self.workers.len() {
            loop {
                if call.input_done {
                    return Ok(());
                }
                let Some(w) = self.workers[slot].as_mut() else {
                    break;
                };
                if w.held.len() >= DEPTH {
                    break;
                }
                let Some(chunk) = feed() else {
                    call.input_done = true;
                    return Ok(());
                };
                let (start, len, items) = chunk?;
                w.held.push_back(Held {
                    call: call.id,
                    start,
                    len,
                });
                call.open += 1;
                let job = Job {
                    call: call.id,
                    func: call.func,
                    start: start as u64,
                    items,
                };
                // The buffer has room for DEPTH jobs: this does not wait.
                match w.jobs.write(job) {
                    Ok(()) => {}
                    Err(e) if ended(&e) => self.lost(shared, slot, call)?,
                    Err(e) => {
                        // Not sent (too large for the shared memory, say): the worker is fine.
                        w.held.pop_back();
                        call.open -= 1;
                        return Err(Error::Channel(e));
                    }
                }
            }
        }
        Ok(())
    }

    /// The next answer from one of the workers `busy`, or how its channel ended.
    fn next_answer(&self, busy: &[usize]) -> Result<(usize, Result<Answer, ChannelError>), Error> {
        let worker = |i: usize| self.workers[i].as_ref().expect("a busy worker");
        if let [only] = busy {
            return Ok((*only, worker(*only).answers.read()));
        }
        let mut alt = Alternation::new();
        for &i in busy {
            alt = alt.input_result(&worker(i).answers, move |r| (i, r));
        }
        Ok(alt.fair_select()?.value)
    }

    /// Worker `slot` is gone (its channels ended): reaps it, starts a replacement, and fails
    /// `call` if the worker held some of its items.
    fn lost(&mut self, shared: &Shared, slot: usize, call: &mut Call) -> Result<(), Error> {
        let w = self.workers[slot].take().expect("a lost worker");
        let Worker {
            pid,
            jobs,
            answers,
            watched,
            held,
        } = w;
        drop((jobs, answers));
        let ended = watched.join();
        if let Some(s) = lock(&shared.stops).get_mut(slot) {
            *s = None;
        }
        let mine: Vec<&Held> = held.iter().filter(|h| h.call == call.id).collect();
        call.open -= mine.len();
        let first = mine.first().map(|h| (h.start, h.start + h.len));
        let (failure, panicked_at) = match ended {
            Ok(r) => match r.decode::<WorkerEnd>() {
                Ok(WorkerEnd::Panicked {
                    call: c,
                    item,
                    message,
                }) => (
                    Failure::Panicked(message),
                    (c == call.id).then_some(item as usize),
                ),
                Ok(WorkerEnd::Closed) => (Failure::Broken("it stopped".into()), None),
                Err(e) => (Failure::Broken(e.to_string()), None),
            },
            Err(Error::ProcessFailed { failure, .. }) => (failure, None),
            Err(e) => (Failure::Broken(e.to_string()), None),
        };
        if shared.terminating.load(Ordering::SeqCst) {
            return Err(Error::Pool("the pool was terminated".into()));
        }
        // A replacement, whether or not this call fails; if none can be started, the next
        // call tries again.
        let replaced = start_worker(slot, shared);
        if let Ok(w) = replaced {
            self.workers[slot] = Some(w);
        }
        let Some(items) = first else {
            return Ok(()); // it held nothing of this call: the call goes on
        };
        let item = panicked_at
            .filter(|i| held.iter().any(|h| (h.start..h.start + h.len).contains(i)))
            .unwrap_or(items.0);
        let items = held
            .iter()
            .filter(|h| h.call == call.id && (h.start..h.start + h.len).contains(&item))
            .map(|h| (h.start, h.start + h.len))
            .next()
            .unwrap_or(items);
        Err(Error::PoolWorker {
            worker: slot,
            pid,
            function: call.function.to_string(),
            item,
            items,
            failure,
        })
    }
}

/// Whether `e` says a worker's channel ended: the worker is gone (or going).
fn ended(e: &ChannelError) -> bool {
    matches!(
        e,
        ChannelError::PeerDied { .. } | ChannelError::Retired | ChannelError::Poisoned
    )
}

/// A thread's token, to tell the thread that holds a pool's core.
fn thread_token() -> usize {
    thread_local!(static TOKEN: u8 = const { 0 });
    TOKEN.with(|t| t as *const u8 as usize)
}

/// The core of a pool, held by one call.
struct Hold<'a> {
    core: MutexGuard<'a, Core>,
    shared: &'a Shared,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.shared.owner.store(0, Ordering::SeqCst);
    }
}

fn hold<'a>(core: &'a Mutex<Core>, shared: &'a Shared) -> Result<Hold<'a>, Error> {
    let me = thread_token();
    if shared.owner.load(Ordering::SeqCst) == me {
        return Err(Error::Pool(
            "a call on this pool from inside an imap of the same pool would wait for itself: \
             finish or drop the iterator first"
                .into(),
        ));
    }
    let core = lock(core);
    shared.owner.store(me, Ordering::SeqCst);
    Ok(Hold { core, shared })
}

/// A progress bar for a call of known length: drawn on standard error once the call has run
/// for [`PROGRESS_AFTER`], if standard error is a terminal and the pool shows progress.
struct Progress {
    on: bool,
    len: Option<usize>,
    done: usize,
    since: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(on: bool, len: Option<usize>) -> Progress {
        Progress {
            on: on && len.is_some() && std::io::stderr().is_terminal(),
            len,
            done: 0,
            since: Instant::now(),
            bar: None,
        }
    }

    fn advance(&mut self, n: usize) {
        self.done += n;
        if !self.on {
            return;
        }
        if self.bar.is_none() && self.since.elapsed() >= PROGRESS_AFTER {
            let len = self.len.unwrap_or(0) as u64;
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(len),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} items, {per_sec}, {eta} left",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            self.bar = Some(bar);
        }
        if let Some(b) = &self.bar {
            b.set_position(self.done as u64);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A pool of worker processes, reused across calls: Python's `multiprocessing.Pool`.
///
/// The functions it runs are marked `#[pool_fn]`; they take and return serializable values
/// (each item crosses into a worker and its result back, MessagePack-encoded).
///
/// ```ignore
/// use pycsp::prelude::*;
///
/// #[pool_fn]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> Result<(), pycsp::Error> {
///     let pool = Pool::new(4)?;
///     assert_eq!(pool.map(square, 0..5)?, [0, 1, 4, 9, 16]);
///     for y in pool.imap(square, 0..)?.take(3) {
///         println!("{}", y?); // 0, 1, 4: the input is read only as workers need it
///     }
///     Ok(())
/// }
/// ```
///
/// | Python | pycsp |
/// |---|---|
/// | `Pool(n)` | [`Pool::new(n)`](Pool::new) |
/// | `pool.map(f, items)` | [`pool.map(f, items)`](Pool::map) (a `Vec`, in order) |
/// | `pool.map(f, items, chunksize=c)` | [`pool.chunksize(c).map(f, items)`](Pool::chunksize) |
/// | `pool.imap(f, items)` / `imap_unordered` | [`imap`](Pool::imap) / [`imap_unordered`](Pool::imap_unordered): iterators of `Result` |
/// | `pool.starmap(f, pairs)` | [`starmap`](Pool::starmap): items are the parameters as a tuple |
/// | `pool.map_async(f, items)`, `.get()` | [`map_async`](Pool::map_async), [`AsyncResult::get`] |
/// | `pool.close(); pool.join()` | [`pool.close()`](Pool::close) |
/// | `pool.terminate()`, leaving `with Pool(..)` | dropping the pool |
///
/// **Failures.** A worker that panics in the function, or dies (killed, out of memory),
/// fails the call with [`Error::PoolWorker`], which names the worker, its pid, the function
/// and the item; the pool replaces the worker and can be used again. Calls run one at a
/// time: a call waits for a `map_async` running on the same pool.
///
/// **Progress.** A call whose length is known (`map`, `starmap`, `map_async`, and `imap` of
/// an input of exact length) draws a progress bar on standard error once it has run for a
/// second, if standard error is a terminal; [`Pool::progress`]`(false)` turns it off.
pub struct Pool {
    core: Arc<Mutex<Core>>,
    shared: Arc<Shared>,
    size: usize,
    progress: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} workers)", self.size)
    }
}

impl Pool {
    /// Starts a pool of `processes` worker processes (Python's `Pool(processes)`).
    ///
    /// Fails if `processes` is 0, if the binary has no `#[pool_fn]` (the workers are
    /// registered with them), or if a worker cannot be started.
    pub fn new(processes: usize) -> Result<Pool, Error> {
        if processes == 0 {
            return Err(Error::Pool("a pool needs at least one process".into()));
        }
        if !PROCESSES.iter().any(|e| e.name == POOL_WORKER) {
            return Err(Error::Pool(
                "this binary has no #[pool_fn] function, so no pool worker: mark the functions \
                 the pool runs with #[pool_fn], in this binary"
                    .into(),
            ));
        }
        let shared = Arc::new(Shared {
            terminating: AtomicBool::new(false),
            stops: Mutex::new(Vec::new()),
            owner: AtomicUsize::new(0),
        });
        let mut core = Core {
            workers: Vec::with_capacity(processes),
            next_call: 0,
        };
        let pool_of = |core: Core, shared: Arc<Shared>| Pool {
            core: Arc::new(Mutex::new(core)),
            shared,
            size: processes,
            progress: true,
        };
        for slot in 0..processes {
            match start_worker(slot, &shared) {
                Ok(w) => core.workers.push(Some(w)),
                Err(e) => {
                    drop(pool_of(core, shared)); // stops the workers started so far
                    return Err(e);
                }
            }
        }
        Ok(pool_of(core, shared))
    }

    /// Whether calls draw a progress bar (see the type's documentation); on by default.
    pub fn progress(mut self, on: bool) -> Pool {
        self.progress = on;
        self
    }

    /// The number of worker processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The OS process ids of the workers now (a replaced worker has a new one); empty while
    /// a call holds the pool.
    pub fn pids(&self) -> Vec<u32> {
        match self.core.try_lock() {
            Ok(core) => core.workers.iter().flatten().map(|w| w.pid).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Calls with `chunksize` items per job (Python's `chunksize=`): `pool.chunksize(1).map(..)`.
    /// Larger chunks cost less per item; smaller ones share uneven work better.
    pub fn chunksize(&self, chunksize: usize) -> Calls<'_> {
        Calls {
            pool: self,
            chunksize: Some(chunksize.max(1)),
        }
    }

    fn calls(&self) -> Calls<'_> {
        Calls {
            pool: self,
            chunksize: None,
        }
    }

    /// `f` applied to every item, in a `Vec` in the order of the items (Python's `map`). The
    /// items are collected first; the chunk size is Python's default, about a quarter of the
    /// items per worker, unless set with [`chunksize`](Self::chunksize).
    pub fn map<F, A>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<F::Output>, Error>
    where
        F: PoolFn<Args = (A,)>,
    {
        self.calls().map(f, items)
    }

    /// `f` applied to every tuple of parameters (Python's `starmap`).
    pub fn starmap<F: PoolFn>(
        &self,
        f: F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Result<Vec<F::Output>, Error> {
        self.calls().starmap(f, items)
    }

    /// A lazy iterator of `f` applied to every item, in order (Python's `imap`): items are
    /// taken from `items` only as workers have room, and each result is there as soon as it
    /// and those before it are. One item per job unless set with
    /// [`chunksize`](Self::chunksize). The iterator holds the pool: other calls wait for it
    /// to be dropped (one made from the same thread fails at once).
    pub fn imap<F, A, I>(
        &self,
        f: F,
        items: I,
    ) -> Result<Imap<'_, F, impl Iterator<Item = (A,)>>, Error>
    where
        F: PoolFn<Args = (A,)>,
        I: IntoIterator<Item = A>,
    {
        self.calls().imap(f, items)
    }

    /// As [`imap`](Self::imap), but each result comes as soon as it is there, in any order
    /// (Python's `imap_unordered`).
    pub fn imap_unordered<F, A, I>(
        &self,
        f: F,
        items: I,
    ) -> Result<Imap<'_, F, impl Iterator<Item = (A,)>>, Error>
    where
        F: PoolFn<Args = (A,)>,
        I: IntoIterator<Item = A>,
    {
        self.calls().imap_unordered(f, items)
    }

    /// Starts `map` in the background and returns at once with a handle to wait for its
    /// results (Python's `map_async`). The items are encoded first, in this thread.
    pub fn map_async<F, A>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<AsyncResult<F::Output>, Error>
    where
        F: PoolFn<Args = (A,)>,
    {
        self.calls().map_async(f, items)
    }

    /// `starmap` in the background (Python's `starmap_async`).
    pub fn starmap_async<F: PoolFn>(
        &self,
        f: F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Result<AsyncResult<F::Output>, Error> {
        self.calls().starmap_async(f, items)
    }

    /// Waits for the calls running in the background, lets the workers finish, and reports
    /// the first worker that did not end cleanly (Python's `close()` then `join()`). Unlike
    /// dropping the pool, this waits for the work the workers are doing.
    pub fn close(self) -> Result<(), Error> {
        let workers: Vec<Worker> = {
            let mut core = lock(&self.core);
            core.workers.drain(..).flatten().collect()
        };
        let mut first = Ok(());
        for w in workers {
            let Worker { jobs, watched, .. } = w;
            jobs.retire(); // the worker returns once it has answered what it holds
            if let Err(e) = watched.join() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.terminating.store(true, Ordering::SeqCst);
        // Stop every worker at once: a call running in the background sees them go and ends.
        for c in lock(&self.shared.stops).iter().flatten() {
            c.stop();
        }
        let workers: Vec<Worker> = {
            let mut core = lock(&self.core);
            core.workers.drain(..).flatten().collect()
        };
        // Workers started by a background call after the first round of stops.
        for c in lock(&self.shared.stops).iter().flatten() {
            c.stop();
        }
        for w in workers {
            drop(w.watched.join());
        }
    }
}

/// Calls on a [`Pool`] with a chosen chunk size: see [`Pool::chunksize`].
#[derive(Debug, Clone, Copy)]
pub struct Calls<'p> {
    pool: &'p Pool,
    chunksize: Option<usize>,
}

/// Python's default chunk size for `map`: the items in about four chunks per worker.
fn default_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(workers * 4).max(1)
}

/// The items as encoded chunks of `chunksize`.
fn encode_all<A: Serialize>(items: &[A], chunksize: usize) -> Result<Vec<Chunk>, Error> {
    let mut out = Vec::with_capacity(items.len().div_ceil(chunksize));
    let mut start = 0;
    for chunk in items.chunks(chunksize) {
        let bytes = rmp_serde::to_vec(chunk).map_err(|e| encode_error(start, e))?;
        out.push((start, chunk.len(), bytes));
        start += chunk.len();
    }
    Ok(out)
}

fn encode_error(start: usize, e: rmp_serde::encode::Error) -> Error {
    Error::Pool(format!("the items from {start} could not be encoded: {e}"))
}

fn decode_results<R: DeserializeOwned>(
    function: &str,
    start: usize,
    bytes: &[u8],
) -> Result<Vec<R>, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        Error::Pool(format!(
            "the results of {function} from item {start} could not be decoded: {e}"
        ))
    })
}

impl<'p> Calls<'p> {
    /// As [`Pool::map`].
    pub fn map<F, A>(
        self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<F::Output>, Error>
    where
        F: PoolFn<Args = (A,)>,
    {
        self.starmap(f, items.into_iter().map(|a| (a,)))
    }

    /// As [`Pool::starmap`].
    pub fn starmap<F: PoolFn>(
        self,
        _f: F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Result<Vec<F::Output>, Error> {
        let items: Vec<F::Args> = items.into_iter().collect();
        let len = items.len();
        let chunksize = self
            .chunksize
            .unwrap_or_else(|| default_chunksize(len, self.pool.size));
        let mut it = Imap::<F, _>::new(self.pool, items.into_iter(), chunksize, true, Some(len))?;
        let mut out = Vec::with_capacity(len);
        for r in &mut it {
            out.push(r?);
        }
        Ok(out)
    }

    /// As [`Pool::imap`].
    pub fn imap<F, A, I>(
        self,
        f: F,
        items: I,
    ) -> Result<Imap<'p, F, impl Iterator<Item = (A,)>>, Error>
    where
        F: PoolFn<Args = (A,)>,
        I: IntoIterator<Item = A>,
    {
        self.lazy(f, items, true)
    }

    /// As [`Pool::imap_unordered`].
    pub fn imap_unordered<F, A, I>(
        self,
        f: F,
        items: I,
    ) -> Result<Imap<'p, F, impl Iterator<Item = (A,)>>, Error>
    where
        F: PoolFn<Args = (A,)>,
        I: IntoIterator<Item = A>,
    {
        self.lazy(f, items, false)
    }

    /// `imap` (`ordered`) or `imap_unordered`: chunks of one item unless told otherwise.
    fn lazy<F, A, I>(
        self,
        _f: F,
        items: I,
        ordered: bool,
    ) -> Result<Imap<'p, F, impl Iterator<Item = (A,)>>, Error>
    where
        F: PoolFn<Args = (A,)>,
        I: IntoIterator<Item = A>,
    {
        let items = items.into_iter();
        let len = exact_len(&items);
        let items = items.map(|a| (a,));
        Imap::new(self.pool, items, self.chunksize.unwrap_or(1), ordered, len)
    }

    /// As [`Pool::map_async`].
    pub fn map_async<F, A>(
        self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<AsyncResult<F::Output>, Error>
    where
        F: PoolFn<Args = (A,)>,
    {
        self.starmap_async(f, items.into_iter().map(|a| (a,)))
    }

    /// As [`Pool::starmap_async`].
    pub fn starmap_async<F: PoolFn>(
        self,
        _f: F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Result<AsyncResult<F::Output>, Error> {
        let items: Vec<F::Args> = items.into_iter().collect();
        let len = items.len();
        let chunksize = self
            .chunksize
            .unwrap_or_else(|| default_chunksize(len, self.pool.size));
        let chunks = encode_all(&items, chunksize)?;
        drop(items);
        let state = Arc::new(AsyncState {
            result: Mutex::new(None),
            ready: Condvar::new(),
        });
        let (core, shared) = (self.pool.core.clone(), self.pool.shared.clone());
        let (theirs, progress) = (state.clone(), self.pool.progress);
        let run = move || {
            let r = run_async::<F>(&core, &shared, chunks, len, progress);
            *lock(&theirs.result) = Some(r);
            theirs.ready.notify_all();
        };
        std::thread::Builder::new()
            .name("pycsp-pool-async".into())
            .spawn(move || {
                let _internal = crate::shm::census::internal_thread(false);
                run()
            })
            .map_err(|e| Error::Pool(format!("cannot start the thread of map_async: {e}")))?;
        Ok(AsyncResult {
            state,
            function: display_name(F::NAME),
            _r: PhantomData,
        })
    }
}

/// The length of `items` if it is known exactly.
fn exact_len<I: Iterator>(items: &I) -> Option<usize> {
    match items.size_hint() {
        (lo, Some(hi)) if lo == hi => Some(lo),
        _ => None,
    }
}

/// The results of a `map_async`'s chunks, by the position of their first item.
type ChunkResults = Result<Vec<(usize, Vec<u8>)>, Error>;

fn run_async<F: PoolFn>(
    core: &Mutex<Core>,
    shared: &Shared,
    chunks: Vec<Chunk>,
    len: usize,
    progress: bool,
) -> ChunkResults {
    let mut held = hold(core, shared)?;
    let mut call = held.core.begin::<F>(shared)?;
    let mut bar = Progress::new(progress, Some(len));
    let mut chunks = chunks.into_iter();
    let mut feed = || chunks.next().map(Ok);
    let mut out = Vec::new();
    while let Some((start, n, bytes)) = held.core.step(shared, &mut call, &mut feed)? {
        bar.advance(n);
        out.push((start, bytes));
    }
    Ok(out)
}

struct AsyncState {
    result: Mutex<Option<ChunkResults>>,
    ready: Condvar,
}

/// The results of a [`Pool::map_async`] to come (Python's `AsyncResult`).
pub struct AsyncResult<R> {
    state: Arc<AsyncState>,
    function: &'static str,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AsyncResult({}, ready: {})", self.function, self.ready())
    }
}

impl<R> AsyncResult<R> {
    /// Whether the call has finished (Python's `ready()`).
    pub fn ready(&self) -> bool {
        lock(&self.state.result).is_some()
    }

    /// Waits at most `timeout` for the call to finish; whether it has (Python's `wait`).
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = deadline_after(timeout);
        let mut r = lock(&self.state.result);
        while r.is_none() {
            // No deadline: wait on, an hour at a time.
            let left = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return false;
            }
            r = self
                .state
                .ready
                .wait_timeout(r, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits for the call to finish and returns its results, in the order of the items
    /// (Python's `get()`).
    pub fn get(self) -> Result<Vec<R>, Error> {
        let mut r = lock(&self.state.result);
        while r.is_none() {
            r = self
                .state
                .ready
                .wait(r)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let mut chunks = r.take().expect("the result is there")?;
        chunks.sort_by_key(|c| c.0);
        let mut out = Vec::new();
        for (start, bytes) in chunks {
            out.extend(decode_results::<R>(self.function, start, &bytes)?);
        }
        Ok(out)
    }

    /// As [`get`](Self::get), but waits at most `timeout`: `Err(Timeout)` if the results are
    /// not there by then (Python's `get(timeout)`).
    pub fn get_timeout(self, timeout: Duration) -> Result<Vec<R>, Error> {
        if !self.wait(timeout) {
            return Err(Error::Channel(ChannelError::Timeout));
        }
        self.get()
    }
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: each item is `Ok(result)`, or
/// the call's failure, after which it ends.
pub struct Imap<'p, F: PoolFn, I> {
    held: Hold<'p>,
    call: Call,
    items: I,
    next_item: usize,
    chunksize: usize,
    ordered: bool,
    /// Answered chunks not yet yielded, by the position of their first item.
    ready: BTreeMap<usize, Vec<F::Output>>,
    /// The chunk being yielded, and the position of its next item.
    current: std::vec::IntoIter<F::Output>,
    /// The position of the next result to yield, in order.
    next_out: usize,
    finished: bool,
    progress: Progress,
}

impl<'p, F: PoolFn, I: Iterator<Item = F::Args>> Imap<'p, F, I> {
    fn new(
        pool: &'p Pool,
        items: I,
        chunksize: usize,
        ordered: bool,
        len: Option<usize>,
    ) -> Result<Self, Error> {
        let mut held = hold(&pool.core, &pool.shared)?;
        let call = held.core.begin::<F>(&pool.shared)?;
        Ok(Imap {
            held,
            call,
            items,
            next_item: 0,
            chunksize,
            ordered,
            ready: BTreeMap::new(),
            current: Vec::new().into_iter(),
            next_out: 0,
            finished: false,
            progress: Progress::new(pool.progress, len),
        })
    }
}

impl<F: PoolFn, I: Iterator<Item = F::Args>> Iterator for Imap<'_, F, I> {
    type Item = Result<F::Output, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(v) = self.current.next() {
                self.next_out += 1;
                return Some(Ok(v));
            }
            let chunk = if self.ordered {
                self.ready.remove(&self.next_out)
            } else {
                self.ready.pop_first().map(|(_, c)| c)
            };
            if let Some(c) = chunk {
                self.current = c.into_iter();
                continue;
            }
            if self.finished {
                return None;
            }
            let (items, next_item, chunksize) =
                (&mut self.items, &mut self.next_item, self.chunksize);
            let mut feed = || {
                let chunk: Vec<F::Args> = items.by_ref().take(chunksize).collect();
                if chunk.is_empty() {
                    return None;
                }
                let start = *next_item;
                *next_item += chunk.len();
                Some(
                    rmp_serde::to_vec(&chunk)
                        .map(|b| (start, chunk.len(), b))
                        .map_err(|e| encode_error(start, e)),
                )
            };
            let shared = self.held.shared;
            match self.held.core.step(shared, &mut self.call, &mut feed) {
                Ok(Some((start, _, bytes))) => {
                    match decode_results::<F::Output>(self.call.function, start, &bytes) {
                        Ok(v) => {
                            self.progress.advance(v.len());
                            self.ready.insert(start, v);
                        }
                        Err(e) => {
                            self.finished = true;
                            return Some(Err(e));
                        }
                    }
                }
                Ok(None) => self.finished = true,
                Err(e) => {
                    self.finished = true;
                    self.ready.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}
