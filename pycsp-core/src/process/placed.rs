//! Starting a process through a launcher (`ssh`, `srun`, `ip netns exec`, ...): it reads its
//! ticket and the network's key on its standard input, connects back over TCP, proves it
//! knows the key, presents its ticket, and from then on is supervised like a local child over
//! that connection. Strangers that connect to the call-back listener first are closed after
//! the handshake deadline without holding the start up.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::control::{self, not_taken, ArgsNotSent, Ctrl, ENV_CHILD, ENV_CONTROL, ENV_TICKET};
use super::launch::{spawn_error, ErasedArgs, Launch, Placement};
use super::running::Running;
use super::table::display_name;
use crate::error::Error;
use crate::frame::{self, Kind};
use crate::net::{self, key, Stream};
use crate::sys;

/// How long a placed process may take to connect back.
const PLACED_CONNECT: Duration = Duration::from_secs(30);

/// Quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Starts a process through its placement's launcher; it connects back over TCP.
pub(crate) fn start(
    name: &'static str,
    placement: &Placement,
    args: Box<dyn ErasedArgs>,
) -> Result<Running, Error> {
    let spawn_err = |reason: String| spawn_error(name, reason);
    if !placement.template.contains("{cmd}") {
        return Err(spawn_err(format!(
            "the launcher template {:?} has no {{cmd}}",
            placement.template
        )));
    }
    let k = key::key().map_err(|e| spawn_err(e.to_string()))?;
    let (launch, args) = Launch::encode(name, args)?;
    let fail = |reason: String| launch.fail(reason);
    let listener = std::net::TcpListener::bind((placement.reach_back.as_str(), 0))
        .map_err(|e| fail(format!("cannot listen on {}: {e}", placement.reach_back)))?;
    let port = listener
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .port();
    let ticket = key::token();
    let secrets = key::for_child().map_err(&fail)?;
    let exe = std::env::current_exe().map_err(|e| fail(format!("no path to this binary: {e}")))?;
    // Nothing secret on the command line (every user can read it with `ps`) or in the
    // environment: the ticket and the key go to the launcher's standard input, which `ssh`,
    // `srun` and `ip netns exec` pass on to the process.
    let cmd = format!(
        "env {ENV_CHILD}={} {ENV_CONTROL}={} {ENV_TICKET}=stdin {}",
        sh_quote(name),
        sh_quote(&format!("{}:{port}", placement.reach_back)),
        sh_quote(&exe.to_string_lossy()),
    );
    let line = placement.template.replace("{cmd}", &cmd);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("exec {line}"))
        .env_remove(key::ENV_KEY)
        .stdin(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run the launcher {line:?}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A few dozen bytes: they fit in the pipe, so this does not wait for the launcher.
        let _ = stdin.write_all(format!("{SECRETS_TAG} {ticket} {secrets}\n").as_bytes());
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(e.to_string()))?;
    let kill = |child: &mut std::process::Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        fail(why)
    };
    let s = match call_back(&listener, &mut child, k, ticket) {
        Ok(s) => s,
        Err(why) => return Err(kill(&mut child, format!("{why} (launcher {line:?})"))),
    };
    let mut ctrl = Ctrl::Net(s);
    // A process that dies at once fails the send; its launcher's end then says how.
    let limit = crate::net::handshake_timeout();
    if let Err(ArgsNotSent::NotTaken(limit)) = control::send_args(&mut ctrl, args, limit) {
        // The launcher's process; the placed process ends when its connection does.
        ctrl.shutdown();
        let pid = child.id();
        return Err(kill(
            &mut child,
            format!("{} (launcher {line:?})", not_taken(pid, limit)),
        ));
    }
    watch_launcher(name, &child, &ctrl);
    Ok(Running {
        name,
        child: child.into(),
        ctrl,
        placed: true,
        ends: launch.keys(),
        ledger: None,
    })
}

/// How long a placed process may keep its connection open, with nothing more to say, once
/// its launcher has ended: a process that ends sends its report (or closes the connection)
/// before its launcher can end, so a connection still silent after this is one whose process
/// outlived its launcher.
const LAUNCHER_GONE: Duration = Duration::from_secs(2);

/// A placed process lives as long as its launcher. Some launchers end and leave the process
/// running: when the `sshd` serving an `ssh` launcher is killed, `ssh` exits with 255 and the
/// remote command, which has no terminal and gets no `SIGHUP`, runs on, still connected to
/// this process. So a thread waits for the launcher to exit; if the process's connection then
/// stays silent for [`LAUNCHER_GONE`], it closes that connection. The process exits (its
/// parent is gone, code 125), its peers get `PeerDied`, and the combinator reports the
/// launcher's exit status naming the process (`ssh`: `Failure::Exited(255)`).
fn watch_launcher(name: &'static str, child: &std::process::Child, ctrl: &Ctrl) {
    // The launcher is not reaped yet (the caller owns it), so its pid is still this process.
    let (Some(pidfd), Ok(Ctrl::Net(conn))) = (pidfd(child.id()), ctrl.try_clone()) else {
        return; // no pidfd (a kernel before 5.3): the process is watched by its connection only
    };
    let pid = child.id();
    let spawned = std::thread::Builder::new()
        .name("pycsp-launcher".into())
        .stack_size(64 << 10)
        .spawn(move || {
            // For the deadlock census, this thread waits for the placed process (with the
            // launcher `{cmd}` on this host, the launcher's pid is the process's): a scan
            // finds its network through it, and counts this process blocked only if that one
            // is too, even before it opened its socket ends (another host's pid is no pycsp
            // process here: then nothing is declared).
            let _internal = crate::shm::census::internal_thread(true);
            let _waits = crate::shm::census::park_socket(
                crate::shm::census::Kind::Join,
                &[crate::shm::census::Item {
                    key: u64::from(pid),
                    write: false,
                    name: "",
                    word: None,
                }],
                None,
            );
            // A pidfd becomes readable when its process exits.
            while !sys::wait_readable(pidfd.as_raw_fd(), Duration::from_secs(3600)) {}
            if !sys::wait_readable(conn.as_raw_fd(), LAUNCHER_GONE) {
                eprintln!(
                    "pycsp: the launcher of placed process {} ended while the process \
                     lived on: closing its connection",
                    display_name(name)
                );
                conn.shutdown();
            }
        });
    drop(spawned); // no thread: the process is watched by its connection only
}

/// A descriptor that becomes readable when process `pid` exits, or `None`.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The first word of the line a placed process reads on its standard input: its ticket and
/// key follow.
pub(crate) const SECRETS_TAG: &str = "pycsp-placed-1";

/// How many connections to the call-back listener are authenticated at once; when one more
/// comes, the oldest is closed.
const CANDIDATES: usize = 16;

/// Waits for the placed process to call back: accepts every connection to `listener` and runs
/// the handshake and the ticket check of each on a thread of its own, with the deadline
/// [`net::handshake_timeout`], until one proves the key and presents `ticket`. A connection
/// that stays silent, fails the handshake or presents another ticket (another local user's
/// program, say) is closed, and the listener keeps accepting, until [`PLACED_CONNECT`] has
/// passed or the launcher ended.
fn call_back(
    listener: &std::net::TcpListener,
    child: &mut std::process::Child,
    k: &'static [u8],
    ticket: u64,
) -> Result<Stream, String> {
    let deadline = Instant::now() + PLACED_CONNECT;
    let (tx, rx) = mpsc::channel::<Result<Stream, String>>();
    let mut candidates: VecDeque<(std::net::TcpStream, Arc<AtomicBool>)> = VecDeque::new();
    let mut last_refusal: Option<String> = None;
    let why_not = |last: &Option<String>| {
        last.as_ref().map_or_else(String::new, |r| {
            format!("; the last connection refused: {r}")
        })
    };
    loop {
        while let Ok(r) = rx.try_recv() {
            match r {
                Ok(s) => return Ok(s),
                Err(e) => last_refusal = Some(e),
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                candidates.retain(|(_, done)| !done.load(Ordering::Acquire));
                if candidates.len() >= CANDIDATES {
                    if let Some((oldest, _)) = candidates.pop_front() {
                        let _ = oldest.shutdown(std::net::Shutdown::Both);
                    }
                }
                let Ok(watch) = stream.try_clone() else {
                    continue;
                };
                let done = Arc::new(AtomicBool::new(false));
                candidates.push_back((watch, done.clone()));
                let limit = net::handshake_timeout()
                    .min(deadline.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(1));
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("pycsp-call-back".into())
                    .spawn(move || {
                        let _internal = crate::shm::census::internal_thread(false);
                        let r = authenticate(stream, k, ticket, limit);
                        done.store(true, Ordering::Release);
                        let _ = tx.send(r);
                    });
                if let Err(e) = spawned {
                    last_refusal = Some(format!("cannot start a thread: {e}"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(format!(
                        "the launcher ended ({st}) before the process connected{}",
                        why_not(&last_refusal)
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "the process did not connect back within {PLACED_CONNECT:?}{}",
                        why_not(&last_refusal)
                    ));
                }
                sys::wait_readable(listener.as_raw_fd(), Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, say: try again shortly rather than spin.
                last_refusal = Some(format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(20));
                if Instant::now() >= deadline {
                    return Err(format!("cannot accept the call-back: {e}"));
                }
            }
        }
    }
}

/// One connection to the call-back listener: the key's handshake, then the ticket, each step
/// within `limit`.
fn authenticate(
    stream: std::net::TcpStream,
    k: &[u8],
    ticket: u64,
    limit: Duration,
) -> Result<Stream, String> {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "a peer".into(), |a| a.to_string());
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("{peer}: {e}"))?;
    let _ = net::tune_tcp(&stream);
    let mut s = Stream::Tcp(stream);
    s.set_deadline(Some(limit))
        .map_err(|e| format!("{peer}: {e}"))?;
    key::serve(&mut s, k).map_err(|e| format!("{peer} failed the handshake: {e:?}"))?;
    match frame::read_frame(&mut s, 64) {
        Ok(f) if f.kind == Kind::Handoff && f.body == ticket.to_le_bytes() => {}
        Ok(_) => return Err(format!("{peer} presented a wrong ticket")),
        Err(e) => return Err(format!("{peer} sent no ticket: {e}")),
    }
    s.set_deadline(None).map_err(|e| format!("{peer}: {e}"))?;
    Ok(s)
}
