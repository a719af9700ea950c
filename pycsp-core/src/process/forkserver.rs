//! The fork server: starting a local child by forking a single-threaded copy of this program
//! instead of executing the binary again.
//!
//! # Design
//!
//! Executing the binary again costs the `exec`, the dynamic loader and the program's start
//! (0.5-2 ms); a `fork` costs about 0.1 ms. But forking a process that runs other threads is
//! unsound (a lock another thread held stays locked in the child forever), and the root of a
//! network usually runs threads (reapers, socket hosts, the test harness). So the root forks
//! a **fork server** at the one moment it surely runs one thread: in the constructor that
//! `#[process]` registers, before `main`. The server never starts a thread; it waits on a
//! `SOCK_SEQPACKET` socket pair for the root's requests, and for each forks a copy of itself
//! with `clone(CLONE_PARENT)`: the new process is a child of the **root**, not of the server,
//! so the root waits for it, reaps it, kills it and watches it by pidfd exactly as an
//! executed child.
//!
//! The copy is forked **ahead** of the start that uses it, a **spare** (forking, about 0.1 ms
//! here, and a new process's first steps on another CPU were half of a start): it asks for
//! the parent-death signal (`PR_SET_PDEATHSIG` is not inherited; its parent is the root's
//! main thread, which forked the server before `main`) and checks that the root is still its
//! parent, does the work every process does first (its start time for the census), names
//! itself `pycsp-spare` and waits on a stream socket pair of its own, whose other end the
//! server sends the root with the spare's pid (a notice) and then closes. A start then hands
//! its request straight to the oldest spare: it knows the pid before it sends, so the process
//! it starts is known even if the send fails half-way or the server dies. That connection is
//! then the process's **control connection**: the arguments follow the request on it (up to
//! 64 KiB of them in the same `sendmsg`, so the process does not wait for another send), and
//! the report comes back on it (an executed child gets a socket pair of its own instead).
//!
//! Once the process has its arguments, the start asks the server for spares until two are
//! held or asked for ([`SPARES`]), reading the notices already sent; a start that finds none
//! held waits for the next notice. Both choices come from `perf sched` on 2 vCPUs: asked
//! before the request, the server was woken on the root's CPU and forked there while the root
//! still had the request and the arguments to send (the root waited up to 0.2 ms for its
//! CPU); with one spare, the server, woken on the CPU where the new process then ran, often
//! forked only after that process had ended, and the next start waited for the fork. So a
//! root that has started a process holds two idle children more than it started, until it
//! ends: a spare ends with the root (parent-death signal), or when the root closes its end
//! (then the root reaps it).
//!
//! The spare then runs as an executed child does from its constructor (`child_entry`), with
//! what the request carried: its length (a little-endian `u32`, at most 128 KiB; a larger
//! request starts the process by `exec`), then
//!
//! - descriptors (`SCM_RIGHTS`, with the length's first byte): the network's shared memory,
//!   the working directory, standard output and error as the parent has them now; standard
//!   input is `/dev/null` (which the server opened);
//! - bytes (MessagePack): the process's name, its ledger's offset, the key if the parent has
//!   one (an executed child reads it from a socket of its own; here the request is that
//!   socket), and the parent's environment now (without `PYCSP_AUTHKEY`, as for an executed
//!   child) if it is not the one the server has: the parent compares the two (the server's
//!   is the parent's own before `main`), and usually they are the same; the copy changes
//!   only the variables that differ from its own.
//!
//! It runs no thread to watch its control connection, as an executed child does, and the root
//! stops it by `SIGKILL` instead (`Stopper` in `running.rs`). It ends with `exit`, as an
//! executed child does (its thread-local destructors run; one gives the thread's waiter
//! record back).
//!
//! A server that is gone (it was killed, or sent no notice in time) is not used again: every
//! later start executes the binary, as with `PYCSP_START=exec`, which turns the fork server
//! off. A spare that cannot take its request (it was killed) is reaped, and the start asks
//! the server for another.
//!
//! # Why it is safe
//!
//! Every process it forks is a copy of a process that has only ever run one thread (the
//! server), so no lock is held by a thread that is not there. It is forked before `main`,
//! before Rust's runtime and the program made any thread, and the server checks
//! `/proc/self/task` first: with another thread (a constructor of some other library made
//! one) there is no server. What the copy does not share with an executed child: the signal
//! dispositions and mask, resource limits and umask are those the program had before `main`
//! (an executed child resets handlers to their defaults but inherits the mask, limits and
//! umask of the parent's thread at the start). The server ends when the root does (its socket
//! reaches end of file; `PR_SET_PDEATHSIG` as well).

use std::collections::VecDeque;
use std::ffi::{CStr, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::key;
use crate::sys;

/// How processes start: `exec` executes the binary again for every process; anything else (or
/// nothing) uses the fork server when there is one.
pub(crate) const ENV_START: &str = "PYCSP_START";

/// The largest request (mostly the environment) handed to a spare; a larger one starts the
/// process by `exec`.
const MAX_REQUEST: usize = 128 << 10;

/// A request's length, before it on the spare's connection (little-endian `u32`).
const REQUEST_LEN: usize = 4;

/// How long a start waits for the server's notice of a spare before it gives the server up.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the root asks the server: fork a spare.
const FORK: u8 = b'F';

/// The server's notice of a spare: its pid (little-endian `i32`; 0 when it could not fork
/// one), with the root's end of the spare's connection (a stream socket pair).
const NOTICE: usize = 4;

/// How many spares a root that has started a process keeps: with two, the one a start takes
/// was forked a whole start earlier, so the fork is off the start's path even when the server
/// only got a CPU once the previous process had ended (2 vCPUs: the server, woken on the CPU
/// where the new process ran, waited for it).
const SPARES: usize = 2;

/// The root's connection to its fork server.
struct Server {
    sock: OwnedFd,
    pid: u32,
    /// Spares the server forked (children of this process), oldest first: pids and sockets.
    spares: VecDeque<(u32, OwnedFd)>,
    /// Spares asked for whose notices were not read yet.
    asked: usize,
}

impl Server {
    /// The spare to hand the next request to: the oldest held, or the next asked for (asking
    /// for one if none was), its notice waited for up to [`NOTICE_TIMEOUT`]. `Err` when the
    /// server is gone or silent; `Ok(None)` when it could not fork.
    fn take_spare(&mut self) -> Result<Option<(u32, OwnedFd)>, ()> {
        if let Some(s) = self.spares.pop_front() {
            return Ok(Some(s));
        }
        if self.asked == 0 {
            self.ask()?;
        }
        self.read_notice(NOTICE_TIMEOUT)
    }

    /// Asks the server for a spare.
    fn ask(&mut self) -> Result<(), ()> {
        sys::send_with_fds(self.sock.as_raw_fd(), &[FORK], &[]).map_err(|_| ())?;
        self.asked += 1;
        Ok(())
    }

    /// Asks for as many spares as make [`SPARES`] with those held and asked for, after reading
    /// the notices already sent.
    fn fill(&mut self) -> Result<(), ()> {
        while self.asked > 0 && sys::wait_readable(self.sock.as_raw_fd(), Duration::ZERO) {
            if let Some(s) = self.read_notice(Duration::ZERO)? {
                self.spares.push_back(s);
            }
        }
        while self.spares.len() + self.asked < SPARES {
            self.ask()?;
        }
        Ok(())
    }

    /// Reads the notice of the next spare asked for, waiting up to `timeout`.
    fn read_notice(&mut self, timeout: Duration) -> Result<Option<(u32, OwnedFd)>, ()> {
        if !sys::wait_readable(self.sock.as_raw_fd(), timeout) {
            return Err(());
        }
        let mut b = [0u8; NOTICE];
        let (n, mut fds) = sys::recv_with_fds(self.sock.as_raw_fd(), &mut b).map_err(|_| ())?;
        if n != NOTICE {
            return Err(());
        }
        self.asked -= 1;
        match (i32::from_le_bytes(b), fds.pop()) {
            (pid, Some(fd)) if pid > 0 && fds.is_empty() => Ok(Some((pid as u32, fd))),
            (pid, _) if pid > 0 => {
                // A spare without its socket: it waits for nothing; reap it.
                reap_spare(pid as u32);
                Err(())
            }
            _ => Ok(None),
        }
    }

    /// Gives the server up: kills and reaps it and the spares it forked.
    fn give_up(mut self) {
        while self.asked > 0 {
            match self.read_notice(Duration::ZERO) {
                Ok(Some(s)) => self.spares.push_back(s),
                Ok(None) => {}
                Err(()) => break,
            }
        }
        for (pid, sock) in self.spares.drain(..) {
            drop(sock);
            reap_spare(pid);
        }
        sys::kill_child(self.pid);
        let _ = sys::reap(self.pid, false);
    }
}

/// Kills and reaps the spare `pid`, a child of this process that will not be used.
fn reap_spare(pid: u32) {
    sys::kill_child(pid);
    let _ = sys::reap(pid, false);
}

static SERVER: OnceLock<Mutex<Option<Server>>> = OnceLock::new();

/// A process's environment as a request carries it: pairs of bytes, without `PYCSP_AUTHKEY`.
type Env = Vec<(Vec<u8>, Vec<u8>)>;

/// The environment the server has (this process's before `main`), as [`env_now`] gives it:
/// a request whose environment is the same carries none.
static SERVER_ENV: OnceLock<Env> = OnceLock::new();

/// This process's environment now, as a request carries it.
fn env_now() -> Env {
    std::env::vars_os()
        .filter(|(k, _)| k != key::ENV_KEY)
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// What a spare needs besides descriptors to become a child.
#[derive(Serialize, Deserialize)]
struct Request {
    name: String,
    ledger: Option<u64>,
    /// The parent's environment, if it is not the server's.
    env: Option<Env>,
    /// The key as [`key::for_child`] gives it, if the parent has one.
    key: Option<String>,
}

/// What a process the server forked was given, for [`prepare`]'s `run`.
pub(crate) struct Forked {
    pub(crate) name: String,
    pub(crate) ctrl: OwnedFd,
    pub(crate) arena: OwnedFd,
    pub(crate) key: Option<String>,
    pub(crate) ledger: Option<u64>,
}

/// Starts the fork server, if this is the root of a network, it runs one thread and
/// `PYCSP_START` is not `exec`. Called from the constructors `#[process]` registers, before
/// `main`; only the first call does anything. A process the server forks calls `run` once
/// it took on the parent's streams, working directory and environment: `run` does what an
/// executed child does from its constructor, with the descriptors it was given.
pub(crate) fn prepare(run: fn(Forked) -> !) {
    static PREPARED: AtomicBool = AtomicBool::new(false);
    if PREPARED.swap(true, Ordering::SeqCst) {
        return;
    }
    if std::env::var_os(ENV_START).is_some_and(|v| v == "exec") || !sys::single_threaded() {
        return;
    }
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return;
    };
    let Ok((mine, theirs)) = sys::seqpacket_pair() else {
        return;
    };
    // SAFETY: this process runs one thread (checked above, and constructors run before
    // `main` starts any).
    match unsafe { sys::fork() } {
        Ok(Some(pid)) => {
            drop(theirs);
            let _ = SERVER_ENV.set(env_now());
            let _ = SERVER.set(Mutex::new(Some(Server {
                sock: mine,
                pid,
                spares: VecDeque::new(),
                asked: 0,
            })));
        }
        Ok(None) => {
            drop(mine);
            serve(theirs, null.into(), run)
        }
        Err(_) => {}
    }
}

/// The pid of this process's fork server, if it has one in use.
#[doc(hidden)]
pub fn server_pid() -> Option<u32> {
    let m = SERVER.get()?;
    let s = m.lock().unwrap_or_else(|e| e.into_inner());
    s.as_ref().map(|s| s.pid)
}

/// The pid of the spare the next start uses, if the server forked one (reading the notice of
/// one asked for, up to [`NOTICE_TIMEOUT`]).
#[doc(hidden)]
pub fn spare_pid() -> Option<u32> {
    let m = SERVER.get()?;
    let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
    let server = guard.as_mut()?;
    if server.spares.is_empty() && server.asked > 0 {
        let s = server.read_notice(NOTICE_TIMEOUT).ok().flatten();
        server.spares.extend(s);
    }
    server.spares.front().map(|s| s.0)
}

/// The pids of all the spares the server forked, oldest first (reading the notices of those
/// asked for, each up to [`NOTICE_TIMEOUT`]).
#[doc(hidden)]
pub fn spare_pids() -> Vec<u32> {
    let Some(m) = SERVER.get() else {
        return Vec::new();
    };
    let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = guard.as_mut() else {
        return Vec::new();
    };
    while server.asked > 0 {
        match server.read_notice(NOTICE_TIMEOUT) {
            Ok(s) => server.spares.extend(s),
            Err(()) => break,
        }
    }
    server.spares.iter().map(|s| s.0).collect()
}

/// What a start through the fork server gives to the new process.
pub(crate) struct Start<'a> {
    pub(crate) name: &'a str,
    pub(crate) arena: RawFd,
    pub(crate) key: Option<&'a str>,
    pub(crate) ledger: Option<u64>,
    /// The process's arguments as their control frame's bytes, sent right after the request
    /// (one `sendmsg`), or `None`: the caller sends them.
    pub(crate) args: Option<&'a [u8]>,
}

/// How a start through the fork server went.
pub(crate) enum Started {
    /// A spare took the request: its pid, and the control connection to it (the spare's
    /// connection, on which the request went).
    Forked(u32, UnixStream),
    /// Nothing was started (there is no server, it is gone, it could not fork, or the request
    /// is too large for it): start the process by executing the binary.
    Exec,
}

/// Starts a process through the fork server: hands the request to a spare.
pub(crate) fn start(s: &Start<'_>) -> Started {
    let Some(m) = SERVER.get() else {
        return Started::Exec;
    };
    let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = guard.as_mut() else {
        return Started::Exec;
    };
    // Usually the same as the server's: then the child keeps the one it has.
    let env = Some(env_now()).filter(|e| SERVER_ENV.get() != Some(e));
    let req = Request {
        name: s.name.to_string(),
        ledger: s.ledger,
        env,
        key: s.key.map(str::to_string),
    };
    let (Ok(bytes), Ok(cwd)) = (rmp_serde::to_vec(&req), std::fs::File::open(".")) else {
        return Started::Exec;
    };
    if bytes.len() > MAX_REQUEST {
        return Started::Exec;
    }
    let args = s.args.unwrap_or_default();
    let mut framed = Vec::with_capacity(REQUEST_LEN + bytes.len() + args.len());
    framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    framed.extend_from_slice(&bytes);
    framed.extend_from_slice(args);
    let fds = [s.arena, cwd.as_raw_fd(), 1, 2];
    // A spare that was killed cannot take it: reap it and take another (the held ones, then
    // one the server forks now).
    for _ in 0..=SPARES {
        let (pid, sock) = match server.take_spare() {
            Ok(Some(spare)) => spare,
            // It could not fork (no memory, too many processes): as `exec` may.
            Ok(None) => return Started::Exec,
            Err(()) => break,
        };
        if sys::send_all_with_fds(sock.as_raw_fd(), &framed, &fds).is_err() {
            drop(sock);
            reap_spare(pid);
            continue;
        }
        // The process is `pid` from here on, whatever the server does.
        return Started::Forked(pid, UnixStream::from(sock));
    }
    // The server is gone or stuck: never use it again, and reap it and its spares.
    if let Some(server) = guard.take() {
        server.give_up();
    }
    Started::Exec
}

/// Asks the server for the spares that make [`SPARES`]: called once a start has handed the
/// new process all it needs, so that the fork does not delay that.
pub(crate) fn ask_ahead() {
    let Some(m) = SERVER.get() else {
        return;
    };
    let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = guard.as_mut() else {
        return;
    };
    if server.fill().is_ok() {
        return;
    }
    if let Some(server) = guard.take() {
        server.give_up();
    }
}

/// The server's loop: a spare for each request, until the root is gone.
fn serve(sock: OwnedFd, null: OwnedFd, run: fn(Forked) -> !) -> ! {
    sys::die_with_parent();
    // The root: the parent of the server and of every process it forks.
    let root = std::os::unix::process::parent_id();
    // The processes it forks take the program's name back.
    let name = std::fs::read("/proc/self/comm")
        .ok()
        .and_then(|mut n| {
            n.retain(|&b| b != b'\n' && b != 0);
            std::ffi::CString::new(n).ok()
        })
        .unwrap_or_default();
    sys::set_thread_name(c"pycsp-forksrv");
    // Hold none of the root's standard streams (a pipe the root writes to reaches end of file
    // when the root ends, not when the server does) and no directory: every request brings
    // its own.
    for fd in 0..3 {
        let _ = sys::dup_onto(null.as_raw_fd(), fd);
    }
    let _ = std::env::set_current_dir("/");
    loop {
        let mut b = [0u8; 1];
        match sys::recv_with_fds(sock.as_raw_fd(), &mut b) {
            Ok((1, _)) if b[0] == FORK => {}
            _ => sys::exit_now(0),
        }
        let (pid, root_end) = match UnixStream::pair() {
            // SAFETY: the server runs one thread: it was forked from a single-threaded
            // process and never starts one.
            Ok((root_end, spare_end)) => match unsafe { sys::fork_sibling() } {
                Ok(Some(pid)) => (pid as i32, Some(root_end)),
                Ok(None) => {
                    drop((sock, root_end));
                    wait_as_spare(root, spare_end.into(), &name, &null, run)
                }
                Err(_) => (0, None),
            },
            Err(_) => (0, None),
        };
        let fds: Vec<RawFd> = root_end.iter().map(AsRawFd::as_raw_fd).collect();
        if sys::send_with_fds(sock.as_raw_fd(), &pid.to_le_bytes(), &fds).is_err() {
            sys::exit_now(0);
        }
    }
}

/// A spare's life: the work every process does first, then a wait for the request the root
/// hands it (until the root closes its end: then it exits, and the root reaps it), then the
/// life of a process forked for that request, with `sock` as its control connection.
fn wait_as_spare(root: u32, sock: OwnedFd, name: &CStr, null: &OwnedFd, run: fn(Forked) -> !) -> ! {
    // The parent-death signal is not inherited: ask for it again (the root's ending then
    // kills this process, with no thread to watch it), then check that the root did not end
    // before it was asked.
    sys::die_with_parent();
    if std::os::unix::process::parent_id() != root {
        sys::exit_now(super::control::EXIT_PARENT_GONE);
    }
    sys::set_thread_name(c"pycsp-spare");
    crate::shm::census::note_start_time();
    // The length (the descriptors come with its first byte), then the request.
    let mut len = [0u8; REQUEST_LEN];
    let (n, fds) = match sys::recv_with_fds(sock.as_raw_fd(), &mut len) {
        Ok((n, fds)) if n > 0 => (n, fds),
        _ => sys::exit_now(0),
    };
    let mut stream = UnixStream::from(sock);
    if stream.read_exact(&mut len[n..]).is_err() {
        sys::exit_now(121);
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_REQUEST || fds.len() != 4 {
        sys::exit_now(121);
    }
    let mut buf = vec![0u8; len];
    if stream.read_exact(&mut buf).is_err() {
        sys::exit_now(121);
    }
    let Some(req) = rmp_serde::from_slice::<Request>(&buf).ok() else {
        sys::exit_now(121);
    };
    drop(buf);
    sys::set_thread_name(name);
    become_child(req, stream.into(), fds, null, run)
}

/// In a spare handed its request: take on the parent's standard streams, working directory
/// and environment, then run as an executed child does.
fn become_child(
    req: Request,
    ctrl: OwnedFd,
    fds: Vec<OwnedFd>,
    null: &OwnedFd,
    run: fn(Forked) -> !,
) -> ! {
    let mut fds = fds.into_iter();
    let mut next = || fds.next().expect("the request's descriptors were counted");
    let (arena, cwd, out, err) = (next(), next(), next(), next());
    let ok = sys::dup_onto(out.as_raw_fd(), 1).is_ok()
        && sys::dup_onto(err.as_raw_fd(), 2).is_ok()
        && sys::dup_onto(null.as_raw_fd(), 0).is_ok()
        && sys::change_dir(cwd.as_raw_fd()).is_ok();
    if !ok {
        sys::exit_now(121);
    }
    drop((cwd, out, err));
    // The environment the server has is the parent's from before `main`: change what differs
    // (a request carries the parent's only if something does). Sound: this process runs one
    // thread.
    match &req.env {
        None => std::env::remove_var(key::ENV_KEY),
        Some(env) => {
            let wanted: std::collections::HashMap<&OsStr, &OsStr> = env
                .iter()
                .map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v)))
                .collect();
            for (k, v) in std::env::vars_os() {
                if wanted.get(k.as_os_str()) != Some(&v.as_os_str()) {
                    std::env::remove_var(&k);
                }
            }
            for (k, v) in &wanted {
                if std::env::var_os(k).as_deref() != Some(*v) {
                    std::env::set_var(k, v);
                }
            }
        }
    }
    run(Forked {
        name: req.name,
        ctrl,
        arena,
        key: req.key,
        ledger: req.ledger,
    })
}

/// A local child: executed by `std::process::Command`, or forked by the fork server (a child
/// of this process all the same, known by its pid).
pub(crate) enum Child {
    Exec(std::process::Child),
    Forked {
        pid: u32,
        status: Option<ExitStatus>,
    },
}

impl From<std::process::Child> for Child {
    fn from(c: std::process::Child) -> Child {
        Child::Exec(c)
    }
}

impl Child {
    pub(crate) fn id(&self) -> u32 {
        match self {
            Child::Exec(c) => c.id(),
            Child::Forked { pid, .. } => *pid,
        }
    }

    /// Waits for the child to end and reaps it.
    pub(crate) fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Child::Exec(c) => c.wait(),
            Child::Forked { pid, status } => {
                if let Some(s) = status {
                    return Ok(*s);
                }
                let raw = sys::reap(*pid, false)?.expect("a blocking wait returns a status");
                let s = ExitStatus::from_raw(raw);
                *status = Some(s);
                Ok(s)
            }
        }
    }

    /// Reaps the child if it has ended.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self {
            Child::Exec(c) => c.try_wait(),
            Child::Forked { pid, status } => {
                if status.is_none() {
                    *status = sys::reap(*pid, true)?.map(ExitStatus::from_raw);
                }
                Ok(*status)
            }
        }
    }

    /// Kills the child with SIGKILL, unless it was reaped.
    pub(crate) fn kill(&mut self) -> std::io::Result<()> {
        match self {
            Child::Exec(c) => c.kill(),
            Child::Forked { pid, status } => {
                if status.is_none() {
                    sys::kill_child(*pid);
                }
                Ok(())
            }
        }
    }
}
