//! The shared secret of socket channels and the handshake that proves both sides know it.
//!
//! The key comes from, in order: the environment variable `PYCSP_AUTHKEY` (its bytes), the
//! file named by `PYCSP_AUTHKEY_FILE` (its bytes, without a trailing newline; a file that group
//! or others may read or write is refused, as `ssh` refuses such a private key), or, when
//! neither is set, 32 random bytes made by the root process of a network. A process hands its
//! key to every process it starts, never through the environment or a command line: a local
//! child reads it from an inherited descriptor ([`ENV_KEY_FD`] names it), a placed process from
//! its standard input (which `ssh`, `srun` and `ip netns exec` pass through), and each removes
//! `PYCSP_AUTHKEY` from its environment before the process's code runs. Programs started
//! independently must be given the same key.
//!
//! Handshake (see the wire-format chapter): the server sends a 32-byte challenge; the client
//! answers `HMAC-SHA256(key, "pycsp-1 client" || challenge)` and its own 32-byte challenge;
//! the server checks (in constant time) and proves itself with
//! `HMAC-SHA256(key, "pycsp-1 server" || client challenge)`. A side whose check fails sends an
//! `Error` frame with code `auth` and closes. Only nonces and MACs cross the wire.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::proto::ErrorBody;
use super::stream::Stream;
use crate::frame::{read_frame, write_frame, Frame, FrameError, Kind};
use crate::sys;

/// The environment variable holding the key itself.
pub const ENV_KEY: &str = "PYCSP_AUTHKEY";
/// The environment variable naming a file that holds the key.
pub const ENV_KEY_FILE: &str = "PYCSP_AUTHKEY_FILE";
/// For a local child: the inherited descriptor its key can be read from (a number, no secret).
pub(crate) const ENV_KEY_FD: &str = "PYCSP_KEY_FD";

const CLIENT_LABEL: &[u8] = b"pycsp-1 client";
const SERVER_LABEL: &[u8] = b"pycsp-1 server";

struct Key {
    bytes: Vec<u8>,
    /// Made here because none was given: children must be handed it.
    generated: bool,
}

static KEY: OnceLock<Result<Key, String>> = OnceLock::new();

fn load() -> Result<Key, String> {
    if let Some(k) = std::env::var_os(ENV_KEY).filter(|k| !k.is_empty()) {
        use std::os::unix::ffi::OsStrExt;
        return Ok(Key {
            bytes: k.as_bytes().to_vec(),
            generated: false,
        });
    }
    if let Some(path) = std::env::var_os(ENV_KEY_FILE) {
        check_mode(std::path::Path::new(&path))?;
        let mut bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read the key file {} named by {ENV_KEY_FILE}: {e}",
                path.to_string_lossy()
            )
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(format!(
                "the key file {} named by {ENV_KEY_FILE} is empty",
                path.to_string_lossy()
            ));
        }
        return Ok(Key {
            bytes,
            generated: false,
        });
    }
    let mut raw = [0u8; 32];
    sys::random_bytes(&mut raw).map_err(|e| format!("cannot make a random key: {e}"))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Key {
        bytes: hex.into_bytes(),
        generated: true,
    })
}

/// Refuses a key file that group or others may read or write, as `ssh` refuses such a private
/// key: anyone who can read it can join the network, anyone who can write it can lock it out.
fn check_mode(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // reading it reports why
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the key file {} named by {ENV_KEY_FILE} may be read or written by group or others \
             (mode {mode:o}): it is refused; run chmod 600 {} (only its owner may read it)",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Sets this process's key to one its parent handed over (before anything loaded one);
/// whether it was set.
pub(crate) fn inherit(bytes: Vec<u8>, generated: bool) -> bool {
    KEY.set(Ok(Key { bytes, generated })).is_ok()
}

/// The key as a process started by this one is handed it: `G HEX`, where `G` is 1 if the key
/// was generated (not configured) and `HEX` its bytes in hexadecimal. An error if this process
/// has no usable key.
pub(crate) fn for_child() -> Result<String, String> {
    match KEY.get_or_init(load) {
        Ok(k) => {
            let hex: String = k.bytes.iter().map(|b| format!("{b:02x}")).collect();
            Ok(format!("{} {hex}", u8::from(k.generated)))
        }
        Err(e) => Err(e.clone()),
    }
}

/// Reads a key handed over by [`for_child`] and makes it this process's key.
pub(crate) fn inherit_text(text: &str) -> Result<(), String> {
    let bad = || "a malformed key from the parent process".to_string();
    let (g, hex) = text.trim().split_once(' ').ok_or_else(bad)?;
    if hex.len() % 2 != 0 || hex.is_empty() {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    inherit(bytes, g == "1");
    Ok(())
}

/// This process's key.
pub(crate) fn key() -> Result<&'static [u8], String> {
    match KEY.get_or_init(load) {
        Ok(k) => Ok(&k.bytes),
        Err(e) => Err(e.clone()),
    }
}

/// Whether this process made its key up (then its peers outside the network cannot know it).
pub(crate) fn generated() -> bool {
    matches!(KEY.get_or_init(load), Ok(k) if k.generated)
}

/// The environment a program started by other means than `Parallel` (with
/// `std::process::Command`, by a shell script, on another machine) needs to share this
/// process's key: `PYCSP_AUTHKEY` and the key. Like `multiprocessing`'s
/// `current_process().authkey`, it is for handing the key to programs you trust; an error if
/// the key could not be loaded (an unreadable or empty key file).
pub fn key_env() -> Result<(&'static str, std::ffi::OsString), String> {
    use std::os::unix::ffi::OsStringExt;
    EXPORTED.store(true, std::sync::atomic::Ordering::SeqCst);
    // Programs outside the network may connect now: listeners keep it alive.
    LISTENING.lock().unwrap_or_else(|p| p.into_inner()).clear();
    key().map(|k| (ENV_KEY, std::ffi::OsString::from_vec(k.to_vec())))
}

/// The listeners' waits for connections, published for the census (`shm/census.rs`) while
/// only processes of this network know the key: then no other program can connect.
static LISTENING: std::sync::Mutex<Vec<crate::shm::census::Parked>> =
    std::sync::Mutex::new(Vec::new());

/// A listener thread waits for connections from now on (published while the key is
/// [`private`]).
pub(crate) fn listening() {
    let mut l = LISTENING.lock().unwrap_or_else(|p| p.into_inner());
    if private() {
        // A listener of a port picked by the system starts before its channel is created.
        crate::runtime::listed();
        if let Some(p) = crate::shm::census::park_remote(0, false, 1, "", None, (0, 0)) {
            l.push(p);
        }
    }
}

/// Whether [`key_env`] handed the key out.
static EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether only processes of this network know the key (it was made up by its root and never
/// handed out by [`key_env`]): then nobody else can connect to its listeners.
pub(crate) fn private() -> bool {
    generated() && !EXPORTED.load(std::sync::atomic::Ordering::SeqCst)
}

fn mac(key: &[u8], label: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(label);
    m.update(nonce);
    m
}

fn nonce() -> Result<[u8; 32], FrameError> {
    let mut n = [0u8; 32];
    sys::random_bytes(&mut n).map_err(|e| FrameError::Io(e.to_string()))?;
    Ok(n)
}

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The keys differ (or the peer sent an `Error` frame with code `auth`).
    Auth(String),
    /// The stream broke or carried something else than the handshake.
    Frame(FrameError),
}

impl From<FrameError> for HandshakeError {
    fn from(e: FrameError) -> Self {
        HandshakeError::Frame(e)
    }
}

fn hint() -> String {
    if generated() {
        format!(
            "; this process has no configured key (it made a random one for its own network): \
             give every program the same key in {ENV_KEY} or {ENV_KEY_FILE}"
        )
    } else {
        String::new()
    }
}

fn expect(frame: Frame, kind: Kind, len: usize) -> Result<Vec<u8>, HandshakeError> {
    if frame.kind == Kind::Error {
        let e = ErrorBody::decode(&frame.body);
        return Err(if e.code == "auth" {
            HandshakeError::Auth(format!("refused by the peer: {}{}", e.message, hint()))
        } else {
            HandshakeError::Frame(FrameError::Unexpected(e.message))
        });
    }
    if frame.kind != kind || frame.body.len() != len {
        return Err(HandshakeError::Frame(FrameError::Unexpected(format!(
            "expected a {kind:?} frame of {len} bytes during the handshake, got {:?} of {}",
            frame.kind,
            frame.body.len()
        ))));
    }
    Ok(frame.body)
}

/// Frames during the handshake are small.
const HANDSHAKE_MAX: usize = 1024;

/// The server's half of the handshake.
pub(crate) fn serve(s: &mut Stream, key: &[u8]) -> Result<(), HandshakeError> {
    let challenge = nonce()?;
    write_frame(s, &Frame::new(Kind::Challenge, challenge.to_vec()))?;
    let answer = expect(read_frame(s, HANDSHAKE_MAX)?, Kind::Answer, 64)?;
    if mac(key, CLIENT_LABEL, &challenge)
        .verify_slice(&answer[..32])
        .is_err()
    {
        let msg = "authentication failed: the client's key differs from this host's";
        let _ = write_frame(s, &ErrorBody::new("auth", msg).frame());
        return Err(HandshakeError::Auth(format!(
            "{msg} (client {}){}",
            s.peer(),
            hint()
        )));
    }
    let proof = mac(key, SERVER_LABEL, &answer[32..])
        .finalize()
        .into_bytes();
    write_frame(s, &Frame::new(Kind::Proof, proof.to_vec()))?;
    Ok(())
}

/// The client's half of the handshake.
pub(crate) fn join(s: &mut Stream, key: &[u8]) -> Result<(), HandshakeError> {
    let challenge = expect(read_frame(s, HANDSHAKE_MAX)?, Kind::Challenge, 32)?;
    let mine = nonce()?;
    let mut answer = mac(key, CLIENT_LABEL, &challenge)
        .finalize()
        .into_bytes()
        .to_vec();
    answer.extend_from_slice(&mine);
    write_frame(s, &Frame::new(Kind::Answer, answer))?;
    let proof = expect(read_frame(s, HANDSHAKE_MAX)?, Kind::Proof, 32)?;
    if mac(key, SERVER_LABEL, &mine).verify_slice(&proof).is_err() {
        let msg = "authentication failed: the host's proof does not match this client's key";
        let _ = write_frame(s, &ErrorBody::new("auth", msg).frame());
        return Err(HandshakeError::Auth(format!(
            "authentication failed: the host could not prove it knows the key{}",
            hint()
        )));
    }
    Ok(())
}

/// A random one-time token: for handing an end over, or a placed process's ticket.
pub(crate) fn token() -> u64 {
    let mut b = [0u8; 8];
    let _ = sys::random_bytes(&mut b);
    u64::from_le_bytes(b)
}
