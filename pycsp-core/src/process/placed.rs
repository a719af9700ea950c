//! Starting a process through a launcher (`ssh`, `srun`, `ip netns exec`, ...): it connects
//! back over TCP, proves it knows the network's key, presents its ticket, and from then on is
//! supervised like a local child over that connection.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use super::control::{self, Ctrl, ENV_CHILD, ENV_CONTROL, ENV_TICKET};
use super::launch::{spawn_error, ErasedArgs, Launch, Placement};
use super::running::Running;
use crate::error::Error;
use crate::frame::{self, Kind};
use crate::net::{self, key, Stream};
use crate::sys;

/// How long a placed process may take to connect back.
const PLACED_CONNECT: std::time::Duration = std::time::Duration::from_secs(30);

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
    let _ = control::send(&mut ctrl, Kind::Args, args);
    Ok(Running {
        name,
        child,
        ctrl,
        placed: true,
        ends: launch.ends,
    })
}
