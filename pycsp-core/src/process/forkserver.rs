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
//! `SOCK_SEQPACKET` socket pair for requests, and for each forks a copy of itself with
//! `clone(CLONE_PARENT)`: the new process is a child of the **root**, not of the server, so
//! the root waits for it, reaps it, kills it and watches it by pidfd exactly as an executed
//! child. The copy then runs as an executed child does from its constructor
//! (`child_entry`), with what the request carried:
//!
//! - descriptors (`SCM_RIGHTS`): the control socket, the network's shared memory, the
//!   working directory, standard output and error as the parent has them now; standard input
//!   is `/dev/null` (which the server opened);
//! - bytes (MessagePack): the process's name, its ledger's offset, the key if the parent has
//!   one (an executed child reads it from a socket of its own; here the request is that
//!   socket), and the parent's environment now (without `PYCSP_AUTHKEY`, as for an executed
//!   child) if it is not the one the server has: the parent compares the two (the server's
//!   is the parent's own before `main`), and usually they are the same; the copy changes
//!   only the variables that differ from its own.
//!
//! The copy asks for `SIGKILL` when the root ends (`PR_SET_PDEATHSIG` is not inherited; the
//! copy's parent is the root's main thread, which forked the server before `main`) and checks
//! that the root is still its parent after asking; it runs no thread to watch its control
//! connection, as an executed child does, and the root stops it by `SIGKILL` instead
//! (`Stopper` in `running.rs`).
//!
//! **A process forked ahead.** Forking (about 0.1 ms here) and the new process's first steps
//! on another CPU were half of a start. So once a request has been answered, the server forks
//! the next request's process at once, a **spare**: a copy, child of the root as every other,
//! named `pycsp-spare`, that asks for the parent-death signal, does the work every process
//! does first (its start time for the census), and then waits on a socket pair of its own.
//! The next request is handed to it whole (bytes and descriptors) and the server answers
//! with its pid; only without a spare (the first start, or the spare died) does the server
//! fork while the parent waits. After each answer the server says which process is the
//! spare now (a notice, pid 0 when it could not fork one), so the root knows every process
//! it must reap: a spare the server could not hand a request to (it was killed) is killed
//! and reaped by the next start; one left when the server is given up is killed and reaped
//! with it. An unused spare ends with the root (parent-death signal) or with the server (its
//! socket reaches end of file). So a root that has started a process has one more child than
//! it started, idle, until it ends.
//!
//! The server answers with the new process's pid (or an `errno`). A server that is gone (it
//! was killed, or did not answer) is not used again: every later start executes the binary,
//! as with `PYCSP_START=exec`, which turns the fork server off. The start that finds it gone
//! executes the binary too if the request was not delivered; if it was, the server may have
//! forked a process holding the control socket before it ended, so that start fails with
//! [`Error::Spawn`](crate::Error::Spawn) naming the process and saying so (a second process
//! must never read the same arguments).
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

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
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

/// The largest request (mostly the environment) sent to the server; a larger one starts the
/// process by `exec`.
const MAX_REQUEST: usize = 128 << 10;

/// How long the parent waits for the server's answer before it gives the server up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The root's connection to its fork server.
struct Server {
    sock: OwnedFd,
    pid: u32,
    /// The server's spare, as its last notice said; a child of this process to reap if the
    /// server does not use it.
    spare: Option<u32>,
    /// A notice is on its way (one follows every answer that started a process).
    notice_due: bool,
}

/// What the server sends the root: a tag byte, then an `i32` (little-endian).
const MESSAGE: usize = 5;
/// The answer to a request: the new process's pid, or `-errno`.
const ANSWER: u8 = b'A';
/// The spare the server has now, sent after each answer that started a process: its pid, or
/// 0 when it could not fork one.
const NOTICE: u8 = b'S';

fn message(tag: u8, value: i32) -> [u8; MESSAGE] {
    let v = value.to_le_bytes();
    [tag, v[0], v[1], v[2], v[3]]
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

/// What the server needs besides descriptors to start a child.
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
                spare: None,
                notice_due: false,
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

/// The pid of the fork server's spare (the process the next start uses), once the server
/// said which it is (waiting up to [`ANSWER_TIMEOUT`] for that notice).
#[doc(hidden)]
pub fn spare_pid() -> Option<u32> {
    let m = SERVER.get()?;
    let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
    let server = guard.as_mut()?;
    if server.notice_due {
        let _ = server.read_until(ANSWER_TIMEOUT, NOTICE);
    }
    server.spare
}

impl Server {
    /// Reads the server's messages until one tagged `want` (notices on the way update
    /// [`spare`](Server::spare)): its value, or `None` if the server ended, sent something
    /// else or sent nothing within `timeout`.
    fn read_until(&mut self, timeout: Duration, want: u8) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !sys::wait_readable(self.sock.as_raw_fd(), left) {
                return None;
            }
            let mut b = [0u8; MESSAGE];
            let (tag, value) = match sys::recv_with_fds(self.sock.as_raw_fd(), &mut b) {
                Ok((MESSAGE, _)) => (b[0], i32::from_le_bytes([b[1], b[2], b[3], b[4]])),
                _ => return None,
            };
            if tag == NOTICE {
                self.notice_due = false;
                self.spare = u32::try_from(value).ok().filter(|&p| p > 0);
            }
            if tag == want {
                return Some(value);
            }
            if tag != NOTICE {
                return None;
            }
        }
    }

    /// Kills and reaps the spare the server last named (a child of this process the server
    /// will not use).
    fn reap_spare(&mut self) {
        if let Some(pid) = self.spare.take() {
            sys::kill_child(pid);
            let _ = sys::reap(pid, false);
        }
    }

    /// Gives the server up: kills and reaps it and its spare (reading first any notice it
    /// sent about one).
    fn give_up(mut self) {
        while sys::wait_readable(self.sock.as_raw_fd(), Duration::ZERO)
            && self.read_until(Duration::ZERO, NOTICE).is_some()
        {}
        sys::kill_child(self.pid);
        let _ = sys::reap(self.pid, false);
        self.reap_spare();
    }
}

/// What a start through the fork server gives to the new process.
pub(crate) struct Start<'a> {
    pub(crate) name: &'a str,
    pub(crate) ctrl: RawFd,
    pub(crate) arena: RawFd,
    pub(crate) key: Option<&'a str>,
    pub(crate) ledger: Option<u64>,
}

/// How a start through the fork server went.
pub(crate) enum Started {
    /// The server forked the process: its pid.
    Forked(u32),
    /// Nothing was forked (there is no server, it is gone, it could not fork, or the request
    /// is too large for it): start the process by executing the binary.
    Exec,
    /// The server took the request and then ended or went silent: it may have forked a
    /// process that holds the control socket, so this start fails (later ones execute).
    Lost(String),
}

/// Starts a process through the fork server.
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
    let fds = [s.ctrl, s.arena, cwd.as_raw_fd(), 1, 2];
    let sock = server.sock.as_raw_fd();
    let outcome = match sys::send_with_fds(sock, &bytes, &fds) {
        // Not sent: the server is gone (it reads every request whole, or none of it).
        Err(_) => Started::Exec,
        Ok(()) => match server.read_until(ANSWER_TIMEOUT, ANSWER) {
            Some(answer) => {
                // The spare the server had when it read this request is the new process,
                // or the server could not hand it the request and killed it: reap it.
                if server.spare.is_some_and(|s| answer != s as i32) {
                    server.reap_spare();
                }
                server.spare = None;
                if answer > 0 {
                    server.notice_due = true;
                    return Started::Forked(answer as u32);
                }
                // It could not fork (no memory, too many processes): as `exec` may.
                return Started::Exec;
            }
            None if sys::socket_hung_up(sock) => {
                Started::Lost("the fork server ended while starting it".into())
            }
            None => Started::Lost(format!(
                "the fork server did not answer within {ANSWER_TIMEOUT:?}"
            )),
        },
    };
    // The server is gone or stuck: never use it again, and reap it and its spare.
    if let Some(server) = guard.take() {
        server.give_up();
    }
    outcome
}

/// The server's loop: one request, one forked process, until the root is gone.
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
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut spare: Option<Spare> = None;
    loop {
        let (n, fds) = match sys::recv_with_fds(sock.as_raw_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => sys::exit_now(0),
            Ok(r) => r,
        };
        let req = rmp_serde::from_slice::<Request>(&buf[..n]).ok();
        let answer: i32 = match req {
            Some(req) if fds.len() == 5 => {
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                match spare.take().and_then(|s| s.hand(&buf[..n], &raw)) {
                    Some(pid) => pid as i32,
                    // SAFETY: the server runs one thread: it was forked from a
                    // single-threaded process and never starts one.
                    None => match unsafe { sys::fork_sibling() } {
                        Ok(Some(pid)) => pid as i32,
                        Ok(None) => {
                            become_copy(root);
                            drop(sock);
                            sys::set_thread_name(&name);
                            become_child(req, fds, &null, run)
                        }
                        Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                    },
                }
            }
            _ => -libc::EINVAL,
        };
        drop(fds);
        if sys::send_with_fds(sock.as_raw_fd(), &message(ANSWER, answer), &[]).is_err() {
            sys::exit_now(0);
        }
        if answer <= 0 {
            continue;
        }
        // The next request's process, forked now that this one is answered.
        let forked = match sys::seqpacket_pair() {
            // SAFETY: as above, the server runs one thread.
            Ok((mine, theirs)) => match unsafe { sys::fork_sibling() } {
                Ok(Some(pid)) => Some(Spare { pid, sock: mine }),
                Ok(None) => {
                    become_copy(root);
                    drop((sock, mine));
                    sys::set_thread_name(c"pycsp-spare");
                    wait_as_spare(theirs, &name, &null, run)
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        let pid = forked.as_ref().map_or(0, |s| s.pid as i32);
        spare = forked;
        if sys::send_with_fds(sock.as_raw_fd(), &message(NOTICE, pid), &[]).is_err() {
            sys::exit_now(0);
        }
    }
}

/// What a process the server forked does first: the parent-death signal is not inherited, so
/// it asks for it again (the root's ending then kills it, with no thread to watch it), then
/// checks that the root did not end before it asked.
fn become_copy(root: u32) {
    sys::die_with_parent();
    if std::os::unix::process::parent_id() != root {
        sys::exit_now(super::control::EXIT_PARENT_GONE);
    }
}

/// A process the server forked ahead of the request it will run, as the server holds it.
struct Spare {
    pid: u32,
    /// The server's end of the spare's socket pair.
    sock: OwnedFd,
}

impl Spare {
    /// Hands the spare the request `bytes` with its descriptors: the spare's pid, or `None`
    /// if it could not take it (it was killed), when it is killed for certain (the root
    /// reaps it).
    fn hand(self, bytes: &[u8], fds: &[RawFd]) -> Option<u32> {
        match sys::send_with_fds(self.sock.as_raw_fd(), bytes, fds) {
            Ok(()) => Some(self.pid),
            Err(_) => {
                sys::kill_child(self.pid);
                None
            }
        }
    }
}

/// A spare's life: the work every process does first, then a wait for the request the server
/// hands it (until the server ends: then it exits, and the root reaps it), then the life of a
/// process the server forked for that request.
fn wait_as_spare(sock: OwnedFd, name: &std::ffi::CStr, null: &OwnedFd, run: fn(Forked) -> !) -> ! {
    crate::shm::census::note_start_time();
    let mut buf = vec![0u8; MAX_REQUEST];
    let (n, fds) = match sys::recv_with_fds(sock.as_raw_fd(), &mut buf) {
        Ok((n, fds)) if n > 0 => (n, fds),
        _ => sys::exit_now(0),
    };
    drop(sock);
    let Some(req) = rmp_serde::from_slice::<Request>(&buf[..n]).ok() else {
        sys::exit_now(121);
    };
    if fds.len() != 5 {
        sys::exit_now(121);
    }
    drop(buf);
    sys::set_thread_name(name);
    become_child(req, fds, null, run)
}

/// In a process the server forked: take on the parent's standard streams, working directory
/// and environment, then run as an executed child does.
fn become_child(req: Request, fds: Vec<OwnedFd>, null: &OwnedFd, run: fn(Forked) -> !) -> ! {
    let mut fds = fds.into_iter();
    let mut next = || fds.next().expect("the request's descriptors were counted");
    let (ctrl, arena, cwd, out, err) = (next(), next(), next(), next(), next());
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
