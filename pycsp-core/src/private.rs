//! What `#[process]` expands to calls. Not a public API.

pub use crate::process::{child_entry, ProcessEntry, PROCESSES};
pub use linkme;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{begin_returning, finish_returning};
use crate::error::{ChannelError, Error};
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
/// specialization): poison and crashes spread from `Result<_, ChannelError>` and
/// `Result<_, Error>`.
pub struct Probe<'a, T>(pub &'a T);

/// What a process that ends with channel error `e` does to all of its channel ends:
/// `Poisoned` poisons them; `PeerDied` marks them as held by the process that died, so that
/// its peers get `PeerDied` naming that process, not `Retired`.
fn spread(e: &ChannelError) {
    match e {
        ChannelError::Poisoned => poison_own_ends(),
        ChannelError::PeerDied { pid, process, .. } => spread_peer_died(*pid, process),
        _ => {}
    }
}

/// A process that returns `Err(ChannelError::Poisoned)` poisons all of its channel ends; one
/// that returns `Err(ChannelError::PeerDied { .. })` passes the crash on.
pub trait ViaChannelResult {
    fn __pycsp_propagate(&self);
}

impl<T> ViaChannelResult for Probe<'_, Result<T, ChannelError>> {
    fn __pycsp_propagate(&self) {
        if let Err(e) = self.0 {
            spread(e);
        }
    }
}

/// Same for `Err(Error::Channel(..))`.
pub trait ViaErrorResult {
    fn __pycsp_propagate(&self);
}

impl<T> ViaErrorResult for Probe<'_, Result<T, Error>> {
    fn __pycsp_propagate(&self) {
        if let Err(Error::Channel(e)) = self.0 {
            spread(e);
        }
    }
}

/// Any other return value: nothing to spread (ends retire when dropped).
pub trait ViaAny {
    fn __pycsp_propagate(&self) {}
}

impl<T> ViaAny for &Probe<'_, T> {}

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
