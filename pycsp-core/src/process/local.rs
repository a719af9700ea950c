//! Starting a process as a local child: through the fork server (see
//! [`forkserver`](super::forkserver)) or by executing this binary again, handing it the
//! network's shared memory and one end of a control socket pair.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::control::{self, not_taken, ArgsNotSent, Ctrl, ENV_CHILD, ENV_CTRL_FD};
use super::forkserver::{self, Child, Started};
use super::launch::{spawn_error, ErasedArgs, Launch};
use super::running::Running;
use crate::error::Error;
use crate::frame::{Frame, Kind};
use crate::net::key;
use crate::runtime::{ChildLedger, ENV_LEDGER};
use crate::shm::arena::{Arena, ENV_ARENA_FD};
use crate::sys;

/// The largest arguments (bytes) that go with a fork server's request.
const INLINE_ARGS: usize = 64 << 10;

/// Starts process `name` with `args` as a child of this process.
pub(crate) fn start(name: &'static str, args: Box<dyn ErasedArgs>) -> Result<Running, Error> {
    let arena = Arena::get().map_err(|e| spawn_error(name, format!("shared memory: {e}")))?;
    let (launch, args) = Launch::encode(name, args)?;
    let fail = |reason: String| launch.fail(reason);
    let arena_fd: RawFd = arena.fd();
    // The key goes in the fork server's request, or through a descriptor of its own, never
    // the environment: the child takes it before its process's code runs, and programs that
    // code starts do not see it. Without one, the child loads it as this process did, and
    // says why not.
    let key = key::for_child().ok();
    // The ends the arguments carry are the child's from now on: written in its ledger, which
    // this process settles once the child has ended, however it ended.
    let ledger = ChildLedger::new(name, &launch.transfers);
    // Small arguments go with a fork server's request, in the same `sendmsg`: the new process
    // then finds them there instead of waiting for this thread's next send.
    let args_frame =
        (args.len() <= INLINE_ARGS).then(|| Frame::new(Kind::Args, args.clone()).encode());
    let forked = forkserver::start(&forkserver::Start {
        name,
        arena: arena_fd,
        key: key.as_deref(),
        ledger: ledger.as_ref().map(ChildLedger::offset),
        args: args_frame.as_deref(),
    });
    let mut args_sent = false;
    let started = match forked {
        Started::Forked(pid, ctrl) => {
            args_sent = args_frame.is_some();
            Ok((Child::Forked { pid, status: None }, ctrl))
        }
        Started::Exec => UnixStream::pair().and_then(|(parent_end, child_end)| {
            let c = exec(
                name,
                child_end.as_raw_fd(),
                arena_fd,
                key.as_deref(),
                ledger.as_ref(),
            )?;
            Ok((Child::Exec(c), parent_end))
        }),
    };
    let (child, parent_end) = match started {
        Ok(c) => c,
        Err(e) => {
            if let Some(l) = ledger {
                l.discard();
            }
            return Err(fail(e.to_string()));
        }
    };
    // If the child died at once, writing fails; `wait` then reports how it died.
    let mut ctrl = Ctrl::Pair(parent_end);
    if !args_sent {
        let limit = crate::net::handshake_timeout();
        if let Err(ArgsNotSent::NotTaken(limit)) = control::send_args(&mut ctrl, args, limit) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            if let Some(l) = ledger {
                l.discard();
            }
            return Err(fail(not_taken(child.id(), limit)));
        }
    }
    if matches!(child, Child::Forked { .. }) {
        forkserver::ask_ahead();
    }
    Ok(Running {
        name,
        child,
        ctrl,
        placed: false,
        ends: launch.keys(),
        ledger,
    })
}

/// Starts process `name` by executing this binary again (`/proc/self/exe`), with the
/// descriptors it inherits named in its environment.
fn exec(
    name: &'static str,
    ctrl_fd: RawFd,
    arena_fd: RawFd,
    key: Option<&str>,
    ledger: Option<&ChildLedger>,
) -> std::io::Result<std::process::Child> {
    // The child reads the key from its end of a socket pair (which holds it whole), then sees
    // end of file: this end is closed when this function returns.
    let key_theirs = match key {
        Some(text) => {
            let (mut mine, theirs) = UnixStream::pair()?;
            mine.write_all(text.as_bytes())?;
            Some(theirs)
        }
        None => None,
    };
    let key_fd = key_theirs.as_ref().map(AsRawFd::as_raw_fd);
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.env(ENV_CHILD, name)
        .env(ENV_CTRL_FD, ctrl_fd.to_string())
        .env(ENV_ARENA_FD, arena_fd.to_string())
        .env_remove(key::ENV_KEY)
        .stdin(Stdio::null());
    if let Some(fd) = key_fd {
        cmd.env(key::ENV_KEY_FD, fd.to_string());
    }
    if let Some(l) = ledger {
        cmd.env(ENV_LEDGER, l.offset().to_string());
    }
    // SAFETY: the closure runs in the child between fork and exec; it only calls fcntl, which
    // is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            sys::clear_cloexec(ctrl_fd)?;
            if let Some(fd) = key_fd {
                sys::clear_cloexec(fd)?;
            }
            sys::clear_cloexec(arena_fd)
        });
    }
    cmd.spawn()
}
