//! Processes: `#[process]` functions run as OS processes, and the combinators that start them.
//!
//! # How a process starts
//!
//! Calling a `#[process]` function runs nothing: it returns a [`Process`] holding the
//! function's registered name and its arguments. [`Parallel`], [`Sequence`] and [`Spawn`] start
//! each process by **re-executing the current binary** (`/proc/self/exe`) with the process's
//! name in the environment, an inherited control socket, and the network's shared memory. In
//! the child, a constructor that `#[process]` registers runs before `main`, finds the function
//! by name, reads its serialized arguments from the control socket, runs it, and writes back
//! its serialized return value (or its panic message). This works the same in `cargo run`,
//! integration tests and doc tests, and is safe when the parent runs other threads (the child
//! starts from a fresh `exec`, not from a copy of a multi-threaded address space).
//!
//! # Supervision
//!
//! The parent watches each child through its control socket. If a child dies without
//! reporting (a signal, `abort`, `exit`), the parent poisons every channel whose ends it gave
//! that child, so its peers wake up instead of hanging, and the combinator returns
//! [`Error::ProcessFailed`] with the signal or exit code. A child watches its parent the same
//! way and exits at once when the parent is gone, so killing the root of a network with
//! `SIGKILL` takes the whole network down, and the shared memory with it.

use std::io::{Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::channel::{collect_transfers, mark_own_ends_dead, mark_peer_died, poison_offsets};
use crate::error::{Error, Failure};
use crate::shm::arena::{Arena, ENV_ARENA_FD};
use crate::sys;

const ENV_CHILD: &str = "PYCSP_CHILD";
const ENV_CTRL_FD: &str = "PYCSP_CTRL_FD";
/// For a placed process: where to connect for its arguments (`HOST:PORT`), and its ticket.
const ENV_CONTROL: &str = "PYCSP_CONTROL";
const ENV_TICKET: &str = "PYCSP_TICKET";
/// The exit code of a process whose parent's connection went away.
const EXIT_PARENT_GONE: i32 = 125;
/// How long a placed process may take to connect back.
const PLACED_CONNECT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest control frame accepted (arguments or a return value), 4 GiB.
const MAX_FRAME: u64 = 4 << 30;

/// A process that has not started yet: a `#[process]` function with its arguments.
///
/// `R` is the function's return type; the combinators hand back the value the function
/// returned in its own OS process. Dropping a `Process` that never ran retires the channel ends
/// among its arguments.
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

static CURRENT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The function this process runs (`main` in a root process), for messages.
pub(crate) fn current_name() -> &'static str {
    CURRENT.get().copied().unwrap_or("main")
}

fn display_name(registered: &'static str) -> &'static str {
    registered.split('@').next().unwrap_or(registered)
}

trait ErasedArgs: Send {
    fn encode(&self) -> Result<Vec<u8>, String>;
}

impl<A: Serialize + Send> ErasedArgs for A {
    fn encode(&self) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec(self).map_err(|e| e.to_string())
    }
}

/// A process whose return type has been forgotten, as the combinators handle it.
#[doc(hidden)]
pub struct ErasedProcess {
    name: &'static str,
    args: Box<dyn ErasedArgs>,
    placement: Option<Placement>,
}

/// Where to run a process other than as a local child: a **launcher** command template, run
/// with `sh -c`, in which `{cmd}` stands for the command that starts this same binary as that
/// process. Existing launchers do the placing:
///
/// ```
/// use pycsp_core::Placement;
/// let netns = Placement::launcher("ip netns exec blue {cmd}").reach_back("10.77.0.1");
/// let ssh = Placement::launcher("ssh worker7 {cmd}").reach_back("10.0.0.1");
/// let slurm = Placement::launcher("srun -N1 -n1 {cmd}");
/// # let _ = (netns, ssh, slurm);
/// ```
///
/// The placed process connects back to this one over TCP, at the `reach_back` address (an
/// address of this machine that the other host can reach; default `127.0.0.1`), proves it
/// knows the network's key (see [`crate::net`]) and receives its arguments; its channels must
/// be socket channels. The binary must exist at the same path there (`{cmd}` uses this
/// binary's absolute path). If the connection to a placed process is lost for longer than
/// [`crate::net::LOSS_TIMEOUT`], its launcher is killed and the combinator reports
/// [`Failure::Lost`].
#[derive(Debug, Clone)]
pub struct Placement {
    template: String,
    reach_back: String,
}

impl Placement {
    /// A placement by the launcher `template` (it must contain `{cmd}`).
    pub fn launcher(template: &str) -> Placement {
        Placement {
            template: template.to_string(),
            reach_back: "127.0.0.1".into(),
        }
    }

    /// The address of this machine the placed process connects back to.
    pub fn reach_back(mut self, ip: &str) -> Placement {
        self.reach_back = ip.to_string();
        self
    }
}

/// What a process returned, as bytes, with who returned it.
#[doc(hidden)]
pub struct Returned {
    name: &'static str,
    pid: u32,
    bytes: Vec<u8>,
}

impl Returned {
    fn decode<R: DeserializeOwned>(self) -> Result<R, Error> {
        rmp_serde::from_slice(&self.bytes).map_err(|e| Error::ProcessFailed {
            name: display_name(self.name).to_string(),
            pid: self.pid,
            failure: Failure::Broken(format!("its return value could not be decoded: {e}")),
        })
    }
}

/// Anything the combinators can run: a [`Process`], a `Vec` or array of processes of one
/// return type, or a tuple of up to eight of these (whose return types may differ).
///
/// The output has the same shape: a tuple of processes gives a tuple of their return values.
pub trait ProcessSet {
    /// The return values, in the shape of the set.
    type Output;
    #[doc(hidden)]
    type Shape;
    #[doc(hidden)]
    fn flatten(self, into: &mut Vec<ErasedProcess>) -> Self::Shape;
    #[doc(hidden)]
    fn unflatten(
        shape: Self::Shape,
        from: &mut std::vec::IntoIter<Returned>,
    ) -> Result<Self::Output, Error>;
}

fn next_returned(from: &mut std::vec::IntoIter<Returned>) -> Returned {
    from.next().expect("one result per process")
}

impl<R: DeserializeOwned> ProcessSet for Process<R> {
    type Output = R;
    type Shape = ();
    fn flatten(self, into: &mut Vec<ErasedProcess>) {
        into.push(self.inner);
    }
    fn unflatten(_: (), from: &mut std::vec::IntoIter<Returned>) -> Result<R, Error> {
        next_returned(from).decode()
    }
}

impl<R: DeserializeOwned> ProcessSet for Vec<Process<R>> {
    type Output = Vec<R>;
    type Shape = usize;
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
    type Shape = ();
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
            type Shape = ($($t::Shape,)+);
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
/// order given: which process failed and how (panic message, exit code or signal).
#[allow(non_snake_case)]
pub fn Parallel<S: ProcessSet>(set: S) -> Result<S::Output, Error> {
    Spawn(set)?.join()
}

/// Runs the processes of `set` one after another, each in its own OS process, and returns
/// their return values. Stops at the first failure; the processes after it do not run.
#[allow(non_snake_case)]
pub fn Sequence<S: ProcessSet>(set: S) -> Result<S::Output, Error> {
    let mut procs = Vec::new();
    let shape = set.flatten(&mut procs);
    let mut done = Vec::with_capacity(procs.len());
    for p in procs {
        done.push(start(p)?.wait()?);
    }
    S::unflatten(shape, &mut done.into_iter())
}

/// Starts every process of `set` and returns at once with a handle to join them.
///
/// Dropping the handle without joining waits for the processes (a network never leaves
/// processes behind).
#[allow(non_snake_case)]
pub fn Spawn<S: ProcessSet>(set: S) -> Result<Spawned<S>, Error> {
    let mut procs = Vec::new();
    let shape = set.flatten(&mut procs);
    let mut running: Vec<Running> = Vec::with_capacity(procs.len());
    let mut procs = procs.into_iter();
    for p in procs.by_ref() {
        match start(p) {
            Ok(r) => running.push(r),
            Err(e) => {
                for r in &running {
                    poison_offsets(&r.ends);
                }
                drop(wait_all(running));
                return Err(e);
            }
        }
    }
    Ok(Spawned {
        running,
        shape: Some(shape),
        _s: PhantomData,
    })
}

/// Processes started by [`Spawn`].
#[must_use = "dropping a Spawned waits for its processes; call join() to get their results"]
pub struct Spawned<S: ProcessSet> {
    running: Vec<Running>,
    shape: Option<S::Shape>,
    _s: PhantomData<fn() -> S>,
}

impl<S: ProcessSet> Spawned<S> {
    /// The OS process ids of the processes, in order.
    pub fn pids(&self) -> Vec<u32> {
        self.running.iter().map(|r| r.child.id()).collect()
    }

    /// Waits for every process and returns their return values (see [`Parallel`]).
    pub fn join(mut self) -> Result<S::Output, Error> {
        let results = wait_all(std::mem::take(&mut self.running));
        let shape = self.shape.take().expect("shape is taken once");
        let mut ok = Vec::with_capacity(results.len());
        for r in results {
            ok.push(r?);
        }
        S::unflatten(shape, &mut ok.into_iter())
    }
}

impl<S: ProcessSet> Drop for Spawned<S> {
    fn drop(&mut self) {
        drop(wait_all(std::mem::take(&mut self.running)));
    }
}

/// A child process that was started and has not been waited for.
struct Running {
    name: &'static str,
    child: std::process::Child,
    ctrl: Ctrl,
    /// Placed by a launcher: `child` is the launcher, and a lost connection means a lost
    /// process.
    placed: bool,
    /// Channels whose ends the child holds: poisoned if it dies without reporting.
    ends: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
enum Report {
    Returned(Vec<u8>),
    Panicked(String),
    Broken(String),
}

fn wait_all(running: Vec<Running>) -> Vec<Result<Returned, Error>> {
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
    fn wait(mut self) -> Result<Returned, Error> {
        let report = read_frame(&mut self.ctrl)
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
                crate::net::LOSS_TIMEOUT
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

/// The control connection to a child: a socket pair, or TCP for a placed process.
enum Ctrl {
    Pair(UnixStream),
    Net(crate::net::Stream),
}

impl Read for Ctrl {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Ctrl::Pair(s) => s.read(buf),
            Ctrl::Net(s) => s.read(buf),
        }
    }
}

impl Write for Ctrl {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Ctrl::Pair(s) => s.write(buf),
            Ctrl::Net(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Ctrl::Pair(s) => s.flush(),
            Ctrl::Net(s) => s.flush(),
        }
    }
}

fn start(p: ErasedProcess) -> Result<Running, Error> {
    if p.placement.is_some() {
        return start_placed(p);
    }
    let name = p.name;
    let spawn_err = |reason: String| Error::Spawn {
        name: display_name(name).to_string(),
        reason,
    };
    let arena = Arena::get().map_err(|e| spawn_err(format!("shared memory: {e}")))?;
    let (args, ends) = collect_transfers(|| p.args.encode());
    drop(p.args); // the ends inside were moved to the child by encoding them
    let args = args.map_err(|e| {
        poison_offsets(&ends);
        spawn_err(format!("its arguments cannot be encoded: {e}"))
    })?;
    let fail = |reason: String| {
        poison_offsets(&ends);
        spawn_err(reason)
    };
    let (mut parent_end, child_end) = UnixStream::pair().map_err(|e| fail(e.to_string()))?;
    let ctrl_fd: RawFd = child_end.as_raw_fd();
    let arena_fd: RawFd = arena.fd();
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.env(ENV_CHILD, name)
        .env(ENV_CTRL_FD, ctrl_fd.to_string())
        .env(ENV_ARENA_FD, arena_fd.to_string())
        .stdin(Stdio::null());
    if let Some((k, v)) = crate::net::key::child_env() {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the child between fork and exec; it only calls fcntl, which
    // is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            sys::clear_cloexec(ctrl_fd)?;
            sys::clear_cloexec(arena_fd)
        });
    }
    let child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    drop(child_end);
    // If the child died at once, writing fails; `wait` then reports how it died.
    let _ = write_frame(&mut parent_end, &args);
    Ok(Running {
        name,
        child,
        ctrl: Ctrl::Pair(parent_end),
        placed: false,
        ends,
    })
}

/// Quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Starts a process through its placement's launcher; it connects back over TCP.
fn start_placed(p: ErasedProcess) -> Result<Running, Error> {
    use crate::net::{self, frame, key, Stream};
    let name = p.name;
    let placement = p.placement.clone().expect("placed");
    let spawn_err = |reason: String| Error::Spawn {
        name: display_name(name).to_string(),
        reason,
    };
    if !placement.template.contains("{cmd}") {
        return Err(spawn_err(format!(
            "the launcher template {:?} has no {{cmd}}",
            placement.template
        )));
    }
    let k = key::key().map_err(|e| spawn_err(e.to_string()))?;
    let (args, ends) = collect_transfers(|| p.args.encode());
    drop(p.args);
    let args = args.map_err(|e| {
        poison_offsets(&ends);
        spawn_err(format!("its arguments cannot be encoded: {e}"))
    })?;
    let fail = |reason: String| {
        poison_offsets(&ends);
        spawn_err(reason)
    };
    let listener = std::net::TcpListener::bind((placement.reach_back.as_str(), 0))
        .map_err(|e| fail(format!("cannot listen on {}: {e}", placement.reach_back)))?;
    let port = listener
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .port();
    let ticket = net::client::token();
    let exe = std::env::current_exe().map_err(|e| fail(format!("no path to this binary: {e}")))?;
    let cmd = format!(
        "env {ENV_CHILD}={} {ENV_CONTROL}={} {ENV_TICKET}={ticket} {}",
        sh_quote(name),
        sh_quote(&format!("{}:{port}", placement.reach_back)),
        sh_quote(&exe.to_string_lossy()),
    );
    let line = placement.template.replace("{cmd}", &cmd);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("exec {line}"))
        .stdin(Stdio::null());
    if let Some((k, v)) = key::child_env() {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run the launcher {line:?}: {e}")))?;
    // Wait for the placed process to connect, or for the launcher to fail.
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(e.to_string()))?;
    let deadline = std::time::Instant::now() + PLACED_CONNECT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(fail(format!(
                        "the launcher {line:?} ended ({st}) before the process connected"
                    )));
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("the process did not connect back within {PLACED_CONNECT:?} (launcher {line:?})")));
                }
                sys::wait_readable(listener.as_raw_fd(), std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let _ = stream.set_nonblocking(false);
    let _ = net::tune_tcp(&stream);
    let mut s = Stream::Tcp(stream);
    let kill = |child: &mut std::process::Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        fail(why)
    };
    if let Err(e) = key::serve(&mut s, k) {
        return Err(kill(
            &mut child,
            format!("the placed process failed the handshake: {e:?}"),
        ));
    }
    match frame::read_frame(&mut s, 64) {
        Ok(f) if f.body == ticket.to_le_bytes() => {}
        _ => {
            return Err(kill(
                &mut child,
                "the placed process sent a wrong ticket".into(),
            ))
        }
    }
    let mut ctrl = Ctrl::Net(s);
    let _ = write_frame(&mut ctrl, &args);
    Ok(Running {
        name,
        child,
        ctrl,
        placed: true,
        ends,
    })
}

fn write_frame(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)?;
    w.flush()
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "control frame of {len} bytes is too large"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// One entry of the process table that `#[process]` fills at link time.
#[doc(hidden)]
pub struct ProcessEntry {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Result<Vec<u8>, String>,
}

/// Every `#[process]` function linked into this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static PROCESSES: [ProcessEntry];

/// Runs before `main` (from a constructor `#[process]` emits). In a process started by a
/// combinator it runs the requested process and exits; otherwise it returns at once.
#[doc(hidden)]
pub fn child_entry() {
    static ENTERED: AtomicBool = AtomicBool::new(false);
    let Some(name) = std::env::var_os(ENV_CHILD) else {
        return;
    };
    if ENTERED.swap(true, Ordering::SeqCst) {
        return;
    }
    let ctrl = std::env::var(ENV_CTRL_FD)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok());
    let arena_fd = std::env::var(ENV_ARENA_FD)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok());
    // Programs this process starts with `Command` must not take themselves for our children.
    // Removing variables is sound here: constructors run before `main`, on one thread.
    let control = std::env::var(ENV_CONTROL).ok();
    let ticket = std::env::var(ENV_TICKET).ok();
    std::env::remove_var(ENV_CHILD);
    std::env::remove_var(ENV_CTRL_FD);
    std::env::remove_var(ENV_ARENA_FD);
    std::env::remove_var(ENV_CONTROL);
    std::env::remove_var(ENV_TICKET);
    sys::ignore_sigpipe();
    crate::channel::IN_CHILD.store(true, Ordering::Relaxed);
    let code = match (ctrl, arena_fd, control, ticket) {
        (Some(ctrl), Some(arena), _, _) => run_child(&name.to_string_lossy(), ctrl, arena),
        (_, _, Some(control), Some(ticket)) => {
            run_placed(&name.to_string_lossy(), &control, &ticket)
        }
        _ => 121,
    };
    std::process::exit(code)
}

fn run_child(name: &str, ctrl_fd: RawFd, arena_fd: RawFd) -> i32 {
    let Ok(fd) = sys::inherited_fd(ctrl_fd) else {
        return 122;
    };
    let mut ctrl = UnixStream::from(fd);
    let report = match Arena::inherit(arena_fd) {
        Err(e) => Report::Broken(format!("cannot map the network's shared memory: {e}")),
        Ok(()) => match read_frame(&mut ctrl) {
            Err(_) => return 123, // the parent is gone
            Ok(args) => {
                watch_parent(&ctrl);
                run_entry(name, &args)
            }
        },
    };
    let _ = std::io::stdout().flush();
    let bytes = rmp_serde::to_vec(&report).unwrap_or_default();
    match write_frame(&mut ctrl, &bytes) {
        Ok(()) => 0,
        Err(_) => 124,
    }
}

/// A placed process: connect back, prove the key, present the ticket, then run as a child.
fn run_placed(name: &str, control: &str, ticket: &str) -> i32 {
    use crate::net::{frame, key, Endpoint, Stream};
    let Ok(ticket) = ticket.parse::<u64>() else {
        return 126;
    };
    let Ok(mut s) = Stream::connect(&Endpoint::Tcp(control.to_string())) else {
        eprintln!("pycsp: placed process {name}: cannot connect back to {control}");
        return 127;
    };
    let k = match key::key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("pycsp: placed process {name}: {e}");
            return 127;
        }
    };
    if let Err(e) = key::join(&mut s, k) {
        eprintln!("pycsp: placed process {name}: handshake with {control} failed: {e:?}");
        return 127;
    }
    let t = frame::Frame::new(frame::Kind::Handoff, ticket.to_le_bytes().to_vec());
    if frame::write_frame(&mut s, &t).is_err() {
        return 123;
    }
    let mut ctrl = Ctrl::Net(s);
    let report = match read_frame(&mut ctrl) {
        Err(_) => return 123,
        Ok(args) => {
            if let Ctrl::Net(s) = &ctrl {
                watch_control(s);
            }
            run_entry(name, &args)
        }
    };
    let _ = std::io::stdout().flush();
    let bytes = rmp_serde::to_vec(&report).unwrap_or_default();
    match write_frame(&mut ctrl, &bytes) {
        Ok(()) => 0,
        Err(_) => 124,
    }
}

/// Exits this placed process as soon as its parent's connection is gone.
fn watch_control(s: &crate::net::Stream) {
    let fd = s.as_raw_fd();
    let _ = std::thread::Builder::new()
        .name("pycsp-watch-parent".into())
        .stack_size(32 << 10)
        .spawn(move || loop {
            if sys::wait_readable(fd, std::time::Duration::from_secs(3600)) {
                if sys::socket_hung_up(fd) {
                    sys::exit_now(EXIT_PARENT_GONE);
                }
                // The parent sends nothing more; do not spin on unexpected bytes.
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
}

fn run_entry(name: &str, args: &[u8]) -> Report {
    let Some(entry) = PROCESSES.iter().find(|e| e.name == name) else {
        return Report::Broken(format!("this binary has no #[process] named {name}"));
    };
    // A panic of the process's own thread marks its channels before unwinding drops (and so
    // retires) its ends: peers must learn of a crash, not of a clean retirement.
    let main = std::thread::current().id();
    let process = display_name(entry.name);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == main {
            mark_own_ends_dead(process);
        }
        previous(info);
    }));
    let _ = CURRENT.set(process);
    let result = catch_unwind(AssertUnwindSafe(|| (entry.run)(args)));
    // Let the retirements of socket ends dropped by the body reach their hosts.
    crate::net::client::drain(crate::net::LOSS_TIMEOUT);
    match result {
        Ok(Ok(bytes)) => Report::Returned(bytes),
        Ok(Err(msg)) => {
            mark_own_ends_dead(display_name(entry.name));
            Report::Broken(msg)
        }
        Err(payload) => {
            mark_own_ends_dead(display_name(entry.name));
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".to_string());
            Report::Panicked(msg)
        }
    }
}

/// Exits this process as soon as its parent is gone (the control socket reaches EOF).
fn watch_parent(ctrl: &UnixStream) {
    let Ok(mut watch) = ctrl.try_clone() else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("pycsp-watch-parent".into())
        .stack_size(32 << 10)
        .spawn(move || {
            let mut b = [0u8; 64];
            loop {
                match watch.read(&mut b) {
                    Ok(0) | Err(_) => sys::exit_now(EXIT_PARENT_GONE),
                    Ok(_) => {}
                }
            }
        });
}
