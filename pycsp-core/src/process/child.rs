//! What runs in a child process: before `main`, find the requested `#[process]` function,
//! receive its arguments over the control connection, run it, and report how it ended.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use super::control::{
    self, Ctrl, Report, ENV_CHILD, ENV_CONTROL, ENV_CTRL_FD, ENV_TICKET, EXIT_PARENT_GONE,
};
use super::forkserver::Forked;
use super::placed::SECRETS_TAG;
use super::table::{display_name, PROCESSES};
use crate::frame::{self, Frame, Kind};
use crate::net::{self, key, Endpoint, Stream};
use crate::runtime::{self, mark_own_ends_dead};
use crate::shm::arena::{Arena, ENV_ARENA_FD};
use crate::sys;
use crate::trace;

/// Runs before `main` (from a constructor `#[process]` emits). In a process started by a
/// combinator it runs the requested process and exits; otherwise it returns at once.
#[doc(hidden)]
pub fn child_entry() {
    static ENTERED: AtomicBool = AtomicBool::new(false);
    let Some(name) = std::env::var_os(ENV_CHILD) else {
        // The root of a network: the one moment it surely runs one thread.
        super::forkserver::prepare(run_forked);
        return;
    };
    if ENTERED.swap(true, Ordering::SeqCst) {
        return;
    }
    trace::enter_child();
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
    let key_fd = std::env::var(key::ENV_KEY_FD)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok());
    let ledger = std::env::var(runtime::ENV_LEDGER)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    std::env::remove_var(ENV_CHILD);
    std::env::remove_var(ENV_CTRL_FD);
    std::env::remove_var(ENV_ARENA_FD);
    std::env::remove_var(ENV_CONTROL);
    std::env::remove_var(ENV_TICKET);
    std::env::remove_var(key::ENV_KEY_FD);
    std::env::remove_var(runtime::ENV_LEDGER);
    sys::ignore_sigpipe();
    let name = name.to_string_lossy();
    let code = match (ctrl, arena_fd, control, ticket) {
        (Some(ctrl), Some(arena), _, _) => {
            let key = key_fd.and_then(|fd| sys::inherited_fd(fd).ok());
            match sys::inherited_fd(ctrl) {
                Ok(ctrl) => run_local(&name, ctrl, arena, key, ledger),
                Err(_) => 122,
            }
        }
        (_, _, Some(control), Some(_)) => match read_secrets() {
            Ok(ticket) => {
                forget_key_variable();
                runtime::enter_child(None);
                run_placed(&name, &control, ticket)
            }
            Err(e) => {
                eprintln!("pycsp: placed process {name}: {e}");
                126
            }
        },
        _ => 121,
    };
    std::process::exit(code)
}

/// Runs a process the fork server forked (see [`forkserver`](super::forkserver)) as
/// [`child_entry`] runs an executed one, with the descriptors it was given.
fn run_forked(f: Forked) -> ! {
    static ENTERED: AtomicBool = AtomicBool::new(false);
    if ENTERED.swap(true, Ordering::SeqCst) {
        sys::exit_now(121);
    }
    sys::ignore_sigpipe();
    // A child, not a root: its message trace appends to the root's file.
    trace::enter_child();
    if let Some(text) = &f.key {
        take_key(text);
    }
    forget_key_variable();
    let code = run_child(&f.name, f.ctrl, f.arena.into_raw_fd(), f.ledger, true);
    std::process::exit(code)
}

/// An executed local child: load the key, then run as [`run_child`] does; the exit code.
fn run_local(
    name: &str,
    ctrl: OwnedFd,
    arena: RawFd,
    key: Option<OwnedFd>,
    ledger: Option<u64>,
) -> i32 {
    if let Some(fd) = key {
        inherit_key(fd);
    }
    forget_key_variable();
    run_child(name, ctrl, arena, ledger, false)
}

/// Reads the key the parent wrote into descriptor `fd` and makes it this process's key.
fn inherit_key(fd: OwnedFd) {
    let mut text = String::new();
    if UnixStream::from(fd).read_to_string(&mut text).is_ok() {
        take_key(&text);
    }
}

/// Makes the key the parent handed over (as [`key::for_child`] gives it) this process's key.
fn take_key(text: &str) {
    if let Err(e) = key::inherit_text(text) {
        eprintln!("pycsp: {e}");
    }
}

/// Takes `PYCSP_AUTHKEY` out of the environment, once the key is loaded, so that programs the
/// process's code starts (`sh -c env`) do not see it. Sound: constructors run before `main`,
/// on one thread.
fn forget_key_variable() {
    if std::env::var_os(key::ENV_KEY).is_some() {
        let _ = key::key();
        std::env::remove_var(key::ENV_KEY);
    }
}

/// A placed process's ticket and key, from the line its parent wrote to its standard input
/// (`pycsp-placed-1 TICKET G HEX`); the key becomes this process's key. Waits at most the
/// handshake deadline for it.
fn read_secrets() -> Result<u64, String> {
    let limit = std::time::Instant::now() + net::handshake_timeout();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // Byte by byte and unbuffered: what follows the line stays in standard input.
    while b[0] != b'\n' {
        let left = limit.saturating_duration_since(std::time::Instant::now());
        if line.len() > 4096 || left.is_zero() || !sys::wait_readable(0, left) {
            return Err("no ticket on standard input in time".into());
        }
        match sys::read_fd(0, &mut b) {
            Ok(1) => line.push(b[0]),
            _ => {
                return Err(
                    "no ticket on standard input: the launcher must pass standard input on \
                     (not ssh -n)"
                        .into(),
                )
            }
        }
    }
    let text = String::from_utf8_lossy(&line);
    let mut words = text.trim().splitn(3, ' ');
    let (Some(SECRETS_TAG), Some(ticket), Some(k)) = (words.next(), words.next(), words.next())
    else {
        return Err("a malformed ticket line on standard input".into());
    };
    let ticket = ticket
        .parse::<u64>()
        .map_err(|_| "a malformed ticket on standard input".to_string())?;
    key::inherit_text(k)?;
    Ok(ticket)
}

/// A local child: map the network's shared memory, receive the arguments, run the process and
/// report how it ended; the exit code. A `forked` child ends with its parent by the
/// parent-death signal the fork server asked for, and is stopped by a signal (see
/// [`Watched::stop`](super::running::Watched::stop)): it runs no thread to watch its control
/// connection.
fn run_child(name: &str, ctrl: OwnedFd, arena: RawFd, ledger: Option<u64>, forked: bool) -> i32 {
    let mut ctrl = Ctrl::Pair(UnixStream::from(ctrl));
    let report = match Arena::inherit(arena) {
        Err(e) => Report::Broken(format!("cannot map the network's shared memory: {e}")),
        Ok(()) => match control::receive(&mut ctrl, Kind::Args) {
            Err(_) => return 123, // the parent is gone
            Ok(args) => {
                match &ctrl {
                    Ctrl::Pair(pair) if !forked => watch_parent(pair),
                    _ => {}
                }
                // The ends in the arguments are in the ledger the parent made.
                runtime::enter_child(ledger);
                runtime::expect_arguments();
                run_entry(name, &args)
            }
        },
    };
    report_to(&mut ctrl, &report)
}

/// A placed process: connect back, prove the key, present the ticket, then run as a child.
/// Each step until the arguments arrived has the handshake deadline.
fn run_placed(name: &str, control: &str, ticket: u64) -> i32 {
    let mut s = match Stream::connect(&Endpoint::Tcp(control.to_string())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pycsp: placed process {name}: cannot connect back to {control}: {e}");
            return 127;
        }
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
    let t = Frame::new(Kind::Handoff, ticket.to_le_bytes().to_vec());
    if frame::write_frame(&mut s, &t).is_err() {
        return 123;
    }
    let mut ctrl = Ctrl::Net(s);
    let report = match control::receive(&mut ctrl, Kind::Args) {
        Err(_) => return 123,
        Ok(args) => {
            if let Ctrl::Net(s) = &ctrl {
                if s.set_deadline(None).is_err() {
                    return 123;
                }
                watch_control(s);
            }
            run_entry(name, &args)
        }
    };
    report_to(&mut ctrl, &report)
}

/// Sends the report of how the process ended; returns the exit code of this process.
fn report_to(ctrl: &mut Ctrl, report: &Report) -> i32 {
    let _ = std::io::stdout().flush();
    let bytes = rmp_serde::to_vec(report).unwrap_or_default();
    match control::send(ctrl, Kind::Report, bytes) {
        Ok(()) => 0,
        Err(_) => 124,
    }
}

/// Exits this placed process as soon as its parent's connection is gone.
fn watch_control(s: &Stream) {
    let fd = s.as_raw_fd();
    let _ = std::thread::Builder::new()
        .name("pycsp-watch-parent".into())
        .stack_size(32 << 10)
        .spawn(move || {
            let _internal = crate::shm::census::internal_thread(false);
            loop {
                if sys::wait_readable(fd, std::time::Duration::from_secs(3600)) {
                    if sys::socket_hung_up(fd) {
                        sys::exit_now(EXIT_PARENT_GONE);
                    }
                    // The parent sends nothing more; do not spin on unexpected bytes.
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
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
    runtime::set_current(process);
    trace::process_running(process);
    let result = catch_unwind(AssertUnwindSafe(|| (entry.run)(args)));
    // Let the retirements of socket ends dropped by the body reach their hosts.
    net::client::drain(net::LOSS_TIMEOUT);
    match result {
        Ok(Ok(bytes)) => Report::Returned(bytes),
        Ok(Err(msg)) => {
            mark_own_ends_dead(display_name(entry.name));
            Report::Broken(msg)
        }
        Err(payload) => {
            mark_own_ends_dead(display_name(entry.name));
            Report::Panicked(crate::error::panic_message(&*payload))
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
            let _internal = crate::shm::census::internal_thread(false);
            let mut b = [0u8; 64];
            loop {
                match watch.read(&mut b) {
                    Ok(0) | Err(_) => sys::exit_now(EXIT_PARENT_GONE),
                    Ok(_) => {}
                }
            }
        });
}
