//! What `#[process]` expands to calls. Not a public API.

pub use crate::process::{
    child_entry, fork_server_pid, fork_server_spare_pid, fork_server_spare_pids, run_chunk,
    worker_entry, PoolFnEntry, ProcessEntry, POOL_FNS, POOL_WORKER, PROCESSES,
};
pub use linkme;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{begin_returning, finish_returning};
use crate::error::{in_chain, AsChannelError, ChannelError};
use crate::runtime::{poison_own_ends, spread_peer_died};

/// What a `#[process]` parameter or return type must be: it is serialized into another
/// process (MessagePack, with serde) and deserialized there.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross a process boundary: it must implement serde's Serialize and DeserializeOwned",
    label = "a #[process] parameter or return value is serialized into another process",
    note = "derive them: #[derive(serde::Serialize, serde::Deserialize)]"
)]
pub trait CrossesProcesses: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> CrossesProcesses for T {}

/// Decodes a process's arguments in the child.
pub fn decode_args<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, String> {
    let args = rmp_serde::from_slice(bytes)
        .map_err(|e| format!("its arguments could not be decoded: {e}"));
    crate::runtime::arguments_done();
    args
}

/// Encodes a process's return value in the child.
pub fn encode_return<R: Serialize>(r: &R) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(r).map_err(|e| format!("its return value could not be encoded: {e}"))
}

/// Wraps a return value so that method resolution picks what to do with it (autoref
/// specialization): a `Result`'s error is looked at, any other value is not.
pub struct Probe<'a, T>(pub &'a T);

/// The error of a process's `Result`, if it returned `Err`.
pub trait ViaResult<'a> {
    type E;
    fn __pycsp_err(&self) -> Option<&'a Self::E>;
}

impl<'a, T, E> ViaResult<'a> for Probe<'a, Result<T, E>> {
    type E = E;
    fn __pycsp_err(&self) -> Option<&'a E> {
        self.0.as_ref().err()
    }
}

/// Any other return value: no error (ends retire when dropped).
pub trait ViaAny<'a> {
    fn __pycsp_err(&self) -> Option<&'a NotAResult> {
        None
    }
}

impl<'a, T> ViaAny<'a> for &Probe<'a, T> {}

/// The "error" of a return value that is not a `Result`.
pub enum NotAResult {}

impl AsChannelError for NotAResult {
    fn as_channel_error(&self) -> Option<ChannelError> {
        match *self {}
    }
}

/// Wraps a process's error so that method resolution finds what it says about channels, in
/// this order (see [`AsChannelError`]): the error type implements `AsChannelError`; it is a
/// `std::error::Error` (its chain of sources is searched); it is
/// `AsRef<dyn std::error::Error + Send + Sync>` (as `anyhow::Error`); else a compile error.
pub struct ErrProbe<'a, E>(pub &'a E);

pub trait ViaAsChannelError {
    fn __pycsp_channel_error(&self) -> Option<ChannelError>;
}

impl<E: AsChannelError> ViaAsChannelError for &&&ErrProbe<'_, E> {
    fn __pycsp_channel_error(&self) -> Option<ChannelError> {
        self.0.as_channel_error()
    }
}

pub trait ViaStdError {
    fn __pycsp_channel_error(&self) -> Option<ChannelError>;
}

impl<E: std::error::Error + 'static> ViaStdError for &&ErrProbe<'_, E> {
    fn __pycsp_channel_error(&self) -> Option<ChannelError> {
        in_chain(self.0)
    }
}

pub trait ViaDynError {
    fn __pycsp_channel_error(&self) -> Option<ChannelError>;
}

impl<E: AsRef<dyn std::error::Error + Send + Sync>> ViaDynError for &ErrProbe<'_, E> {
    fn __pycsp_channel_error(&self) -> Option<ChannelError> {
        in_chain(self.0.as_ref())
    }
}

/// Any other error type: a compile error (the bound of the method fails), whose message
/// asks for an implementation of [`AsChannelError`].
pub trait ViaUnknown {
    type E;
    fn __pycsp_channel_error(&self) -> Option<ChannelError>
    where
        Self::E: AsChannelError;
}

impl<E> ViaUnknown for ErrProbe<'_, E> {
    type E = E;
    fn __pycsp_channel_error(&self) -> Option<ChannelError>
    where
        E: AsChannelError,
    {
        self.0.as_channel_error()
    }
}

/// What a process that ends with channel error `e` does to all of its channel ends:
/// `Poisoned` poisons them; `PeerDied` marks them as held by the process that died, so that
/// its peers get `PeerDied` naming that process, not `Retired`.
pub fn spread(e: Option<ChannelError>) {
    match e {
        Some(ChannelError::Poisoned) => poison_own_ends(),
        Some(ChannelError::PeerDied { pid, process, .. }) => spread_peer_died(pid, &process),
        _ => {}
    }
}

/// Put first in every process body: when it drops, the body's other locals are gone and the
/// parameters are about to drop; their ends then retire only at [`retire_deferred`], after the
/// runtime spread poison from the return value. Not while unwinding: a panicking process's
/// ends are marked as held by a dead process instead.
pub struct ReturnGuard;

impl Drop for ReturnGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            begin_returning();
        }
    }
}

/// Retires the ends a returning process function dropped (see [`ReturnGuard`]).
pub fn retire_deferred() {
    finish_returning();
}
