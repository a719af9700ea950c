//! The control connection between a parent and a child process, and what crosses it.
//!
//! A local child inherits one end of a socket pair; a placed process connects back over TCP,
//! passes the key's handshake and presents its ticket. Either way the parent sends one
//! [`Kind::Args`] frame (the process's arguments, MessagePack) and the child answers with one
//! [`Kind::Report`] frame (a [`Report`]). A connection that ends without a report means the
//! child died; a child whose parent's connection ends exits at once.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::frame::{self, Frame, FrameError, Kind};
use crate::net::Stream;
use crate::sys;

/// The process a child runs: its registered name.
pub(crate) const ENV_CHILD: &str = "PYCSP_CHILD";
/// A local child's end of the control socket pair (a file descriptor number).
pub(crate) const ENV_CTRL_FD: &str = "PYCSP_CTRL_FD";
/// For a placed process: where to connect for its arguments (`HOST:PORT`), and its ticket.
pub(crate) const ENV_CONTROL: &str = "PYCSP_CONTROL";
pub(crate) const ENV_TICKET: &str = "PYCSP_TICKET";
/// The exit code of a process whose parent's connection went away.
pub(crate) const EXIT_PARENT_GONE: i32 = 125;
/// Largest control frame accepted (arguments or a return value): what a frame length can say.
const MAX_CONTROL: usize = u32::MAX as usize;

/// How a process ended, as its child side reports it.
#[derive(Serialize, Deserialize)]
pub(crate) enum Report {
    Returned(Vec<u8>),
    Panicked(String),
    Broken(String),
}

/// The control connection to a child: a socket pair, or TCP for a placed process.
pub(crate) enum Ctrl {
    Pair(UnixStream),
    Net(Stream),
}

impl Ctrl {
    /// Another handle on the same connection, so that another thread can end it.
    pub(crate) fn try_clone(&self) -> std::io::Result<Ctrl> {
        Ok(match self {
            Ctrl::Pair(s) => Ctrl::Pair(s.try_clone()?),
            Ctrl::Net(s) => Ctrl::Net(s.try_clone()?),
        })
    }

    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Ctrl::Pair(s) => s.set_nonblocking(on),
            Ctrl::Net(s) => s.set_nonblocking(on),
        }
    }

    fn as_raw_fd(&self) -> RawFd {
        match self {
            Ctrl::Pair(s) => s.as_raw_fd(),
            Ctrl::Net(s) => s.as_raw_fd(),
        }
    }

    /// Ends the connection both ways (the other side reads its end).
    pub(crate) fn shutdown(&self) {
        match self {
            Ctrl::Pair(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Ctrl::Net(s) => s.shutdown(),
        }
    }
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

/// Sends a control frame of `kind`.
pub(crate) fn send(ctrl: &mut Ctrl, kind: Kind, body: Vec<u8>) -> Result<(), FrameError> {
    frame::write_frame(ctrl, &Frame::new(kind, body))
}

/// Why a started process did not get its arguments.
pub(crate) enum ArgsNotSent {
    /// It took nothing of them for `limit` (stopped, or hung before it reads them).
    NotTaken(std::time::Duration),
    /// The connection failed (the process died): how it ended says more.
    Failed,
}

/// Why a start failed whose process (`pid`) took none of its arguments for `limit`.
pub(crate) fn not_taken(pid: u32, limit: std::time::Duration) -> String {
    format!(
        "the process (pid {pid}) took none of its arguments for {limit:?}: stopped, or hung \
         before it read them; it was killed (PYCSP_HANDSHAKE_TIMEOUT sets the deadline)"
    )
}

/// Sends a started process its arguments ([`Kind::Args`]), waiting at most `limit` each time
/// it takes nothing of them: more than a socket holds go in parts, as the process reads them.
pub(crate) fn send_args(
    ctrl: &mut Ctrl,
    args: Vec<u8>,
    limit: std::time::Duration,
) -> Result<(), ArgsNotSent> {
    let Some(head) = frame::head(Kind::Args, args.len()) else {
        return Err(ArgsNotSent::Failed);
    };
    if ctrl.set_nonblocking(true).is_err() {
        return Err(ArgsNotSent::Failed);
    }
    let fd = ctrl.as_raw_fd();
    let mut bufs = [IoSlice::new(&head), IoSlice::new(&args)];
    let mut bufs = &mut bufs[..];
    IoSlice::advance_slices(&mut bufs, 0);
    // When the process last took some.
    let mut took = Instant::now();
    let sent = loop {
        if bufs.is_empty() {
            break Ok(());
        }
        match ctrl.write_vectored(bufs) {
            Ok(0) => break Err(ArgsNotSent::Failed),
            Ok(n) => {
                IoSlice::advance_slices(&mut bufs, n);
                took = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = limit.saturating_sub(took.elapsed());
                if left.is_zero() {
                    break Err(ArgsNotSent::NotTaken(limit));
                }
                sys::wait_writable(fd, left);
            }
            Err(_) => break Err(ArgsNotSent::Failed),
        }
    };
    let _ = ctrl.set_nonblocking(false);
    sent
}

/// Receives the control frame of `kind` and returns its body; any other frame is an error.
pub(crate) fn receive(ctrl: &mut Ctrl, kind: Kind) -> Result<Vec<u8>, FrameError> {
    let f = frame::read_frame(ctrl, MAX_CONTROL)?;
    if f.kind != kind {
        return Err(FrameError::Unexpected(format!(
            "a {:?} frame on a control connection, where {kind:?} was expected",
            f.kind
        )));
    }
    Ok(f.body)
}
