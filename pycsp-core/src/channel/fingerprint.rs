//! A channel's message type, as a fingerprint: checked wherever an end attaches to a channel
//! (opening it by name, receiving an end, a socket peer's `Open`).

use crate::error::ChannelError;
use crate::shm::arena::fnv1a;
use crate::shm::ring::Chan;

/// The name and fingerprint of `T`.
pub(crate) fn type_fingerprint<T>() -> (&'static str, u64) {
    let name = std::any::type_name::<T>();
    (
        name,
        fnv1a(name.as_bytes()) ^ (std::mem::size_of::<T>() as u64).rotate_left(56),
    )
}

/// Refuses an end of `chan` for a `T` if the channel carries another type.
pub(crate) fn check_type<T>(chan: &Chan) -> Result<(), ChannelError> {
    let (tn, fp) = type_fingerprint::<T>();
    if chan.type_fp() != fp {
        return Err(ChannelError::TypeMismatch {
            channel: chan.name().to_string(),
            expected: tn.to_string(),
            found: chan.type_name().to_string(),
        });
    }
    Ok(())
}
