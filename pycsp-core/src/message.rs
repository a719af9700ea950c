//! A message's way through a ring, in both directions.
//!
//! Writing: the value is encoded with MessagePack (rmp-serde) straight into the inline part of
//! a slot buffer; if it does not fit, its length is measured, a block of shared memory is
//! allocated and the value is encoded straight into it (one copy), and the slot carries the
//! block's offset. A block whose message was never placed in the ring is freed here; once
//! placed, it belongs to the reader. Bytes that are already encoded (a message that came over
//! a socket, an output guard's value) take the same path.
//!
//! Reading: the slot's inline bytes are decoded from a buffer on the stack, or the block's
//! bytes in place, and the block is freed.
//!
//! Local ends, socket hosts and socket proxies all write and read through here.

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{shared_memory, ChannelError};
use crate::frame::MAX_MESSAGE;
use crate::shm::arena::Arena;
use crate::shm::ring::{Chan, Incoming, Outgoing, Took, WriteError, INLINE};
use crate::shm::waiter;
use crate::shm::waiter::Claim;

/// What a message being encoded or decoded on this thread is for. Values that stand for
/// shared memory of this network (channel ends of shared-memory channels, `SharedBlock`s) ask
/// it: none of them may cross a socket, and nothing that came over a socket may be used as an
/// address in shared memory.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Context {
    /// A channel in this network's shared memory.
    Local,
    /// A socket channel (its host's ring, or a proxy's): every message may have crossed, or
    /// may cross, a socket.
    Socket,
    /// A socket host checking that a message from a peer decodes as the channel's type: the
    /// decoding must have no effect (no hand-over token redeemed, nothing attached). `chan` is
    /// the hosted channel, which stands in for the ends the message carries.
    SocketCheck(Chan),
}

thread_local! {
    static CONTEXT: Cell<Context> = const { Cell::new(Context::Local) };
}

/// What the message being encoded or decoded on this thread is for.
pub(crate) fn context() -> Context {
    CONTEXT.with(Cell::get)
}

/// Whether the message being encoded or decoded on this thread stays in this network's
/// shared memory.
pub(crate) fn is_local() -> bool {
    matches!(context(), Context::Local)
}

/// Runs `f` with `c` as the context of the messages it encodes and decodes.
pub(crate) fn in_context<R>(c: Context, f: impl FnOnce() -> R) -> R {
    /// Puts the context back, also if `f` panics.
    struct Restore(Context);
    impl Drop for Restore {
        fn drop(&mut self) {
            CONTEXT.with(|x| x.set(self.0));
        }
    }
    let _restore = Restore(CONTEXT.with(|x| x.replace(c)));
    f()
}

/// Something that can write its encoding, possibly twice (to measure it, then to store it).
trait Encoding {
    fn write_to<W: Write>(&self, w: &mut W) -> Result<(), String>;
}

/// A value, encoded with MessagePack.
struct Value<'a, T>(&'a T);

impl<T: Serialize> Encoding for Value<'_, T> {
    #[inline]
    fn write_to<W: Write>(&self, w: &mut W) -> Result<(), String> {
        rmp_serde::encode::write(w, self.0).map_err(|e| e.to_string())
    }
}

/// Bytes that already are a message's encoding.
struct Encoded<'a>(&'a [u8]);

impl Encoding for Encoded<'_> {
    #[inline]
    fn write_to<W: Write>(&self, w: &mut W) -> Result<(), String> {
        w.write_all(self.0).map_err(|e| e.to_string())
    }
}

/// Writes `value` into `chan` (see [`Chan::write`] for when it returns); an error says
/// whether the message had been placed in the ring (then a reader may still take it).
#[inline]
pub(crate) fn write_value<T: Serialize>(
    chan: &Chan,
    value: &T,
    deadline: Option<Instant>,
) -> Result<(), WriteError> {
    write(chan, &Value(value), deadline)
}

/// Writes a message that is already encoded (`bytes`) into `chan`.
pub(crate) fn write_encoded(
    chan: &Chan,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<(), ChannelError> {
    write(chan, &Encoded(bytes), deadline).map_err(|e| e.error)
}

/// [`write_encoded`], whose error says whether the message had been placed.
pub(crate) fn write_encoded_placed(
    chan: &Chan,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<(), WriteError> {
    write(chan, &Encoded(bytes), deadline)
}

/// Writes again an encoded message that a reader gave back (see [`Chan::write_back`]), by
/// `deadline` as [`write_encoded`]'s.
pub(crate) fn write_encoded_back(
    chan: &Chan,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<(), ChannelError> {
    write_as(chan, &Encoded(bytes), deadline, How::Back).map_err(|e| e.error)
}

/// Writes an encoded message as [`write_encoded`] does, withdrawn as soon as `stop` is set
/// (see [`Chan::write_until`]).
pub(crate) fn write_encoded_until(
    chan: &Chan,
    bytes: &[u8],
    deadline: Option<Instant>,
    stop: &AtomicBool,
) -> Result<(), ChannelError> {
    write_as(chan, &Encoded(bytes), deadline, How::Until(stop)).map_err(|e| e.error)
}

/// Which of the ring's writes a message takes.
#[derive(Clone, Copy)]
enum How<'a> {
    /// A writer's message ([`Chan::write`]).
    Plain,
    /// A message a reader gave back ([`Chan::write_back`]).
    Back,
    /// A message withdrawn when the flag is set ([`Chan::write_until`]).
    Until(&'a AtomicBool),
}

impl How<'_> {
    #[inline(always)]
    fn write(
        self,
        chan: &Chan,
        msg: &Outgoing<'_>,
        deadline: Option<Instant>,
    ) -> Result<(), WriteError> {
        match self {
            How::Plain => chan.write(msg, deadline),
            How::Back => chan.write_back(msg, deadline),
            How::Until(stop) => chan.write_until(msg, deadline, stop),
        }
    }
}

/// Encodes `value` into a buffer of its own (for a message that is written later).
pub(crate) fn encode<T: Serialize>(chan: &Chan, value: &T) -> Result<Vec<u8>, ChannelError> {
    rmp_serde::to_vec(value).map_err(|e| encode_error(chan, e.to_string()))
}

/// The one write path: inline in the slot if the encoding fits, else through a block.
#[inline]
fn write<E: Encoding>(chan: &Chan, msg: &E, deadline: Option<Instant>) -> Result<(), WriteError> {
    write_as(chan, msg, deadline, How::Plain)
}

/// The one write path, into the ring's write `how`.
#[inline(always)]
fn write_as<E: Encoding>(
    chan: &Chan,
    msg: &E,
    deadline: Option<Instant>,
    how: How<'_>,
) -> Result<(), WriteError> {
    let mut inline = Inline {
        buf: [0; INLINE],
        len: 0,
    };
    if msg.write_to(&mut inline).is_ok() {
        let slot = Outgoing::Inline {
            buf: &inline.buf,
            len: inline.len,
        };
        return how.write(chan, &slot, deadline);
    }
    write_block(chan, msg, deadline, how)
}

/// The error of a write whose message never reached the ring.
#[cold]
fn not_placed(error: ChannelError) -> WriteError {
    WriteError {
        error,
        placed: false,
    }
}

/// Too large for a slot: measure, then encode straight into a shared block (one copy).
#[inline(never)]
fn write_block<E: Encoding>(
    chan: &Chan,
    msg: &E,
    deadline: Option<Instant>,
    how: How<'_>,
) -> Result<(), WriteError> {
    let mut counter = Counter(0);
    msg.write_to(&mut counter)
        .map_err(|reason| not_placed(encode_error(chan, reason)))?;
    let len = counter.0 as u64;
    // A socket channel (hosted here, or the proxy of a remote end: its name is an address)
    // carries at most `MAX_MESSAGE` bytes: refused here, before a block is allocated or a byte
    // crosses a socket, and the end stays usable, as for a message too large for the arena.
    if len > MAX_MESSAGE as u64 && chan.name().contains("://") {
        return Err(not_placed(ChannelError::TooLarge {
            channel: chan.name().to_string(),
            len,
            max: MAX_MESSAGE as u64,
        }));
    }
    let arena = Arena::get().map_err(|e| not_placed(shared_memory(e)))?;
    let offset = arena
        .alloc_block(len)
        .map_err(|e| not_placed(e.into_channel_error(chan.name())))?;
    // SAFETY: the block was just allocated for us and is `len` bytes long (checked by `ptr`);
    // nobody else touches it until its offset is published through the ring.
    let block = unsafe { std::slice::from_raw_parts_mut(arena.ptr(offset, len), len as usize) };
    if let Err(reason) = msg.write_to(&mut std::io::Cursor::new(block)) {
        arena.free_block(offset);
        return Err(not_placed(encode_error(chan, reason)));
    }
    let block = Outgoing::Block { offset, len };
    how.write(chan, &block, deadline).inspect_err(|e| {
        if !e.placed {
            // Never placed in the ring: the block is still ours.
            arena.free_block(offset);
        }
    })
}

#[cold]
fn encode_error(chan: &Chan, reason: String) -> ChannelError {
    ChannelError::Encode {
        channel: chan.name().to_string(),
        reason,
    }
}

/// Counts the bytes of an encoding without storing them.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0 += data.len();
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bounded in-place writer for the inline part of a slot.
struct Inline {
    buf: [u8; INLINE],
    len: usize,
}

impl Write for Inline {
    #[inline]
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.write_all(data).map(|()| data.len())
    }
    #[inline]
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let end = self.len + data.len();
        if end > INLINE {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if data.len() <= 8 {
            // MessagePack writes markers and numbers a few bytes at a time: copy them without
            // a call to memcpy.
            for (d, s) in self.buf[self.len..end].iter_mut().zip(data) {
                *d = *s;
            }
        } else {
            self.buf[self.len..end].copy_from_slice(data);
        }
        self.len = end;
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a message from `chan` and decodes it as a `T`, blocking until `deadline`. A reader
/// that has to wait claims a selecting writer's offer on a rendezvous channel.
#[inline]
pub(crate) fn read_value<T: DeserializeOwned>(
    chan: &Chan,
    deadline: Option<Instant>,
) -> Result<T, ChannelError> {
    let mut buf = [0u8; INLINE];
    // The arena is only needed to claim a selecting writer's offer (the slow path); a
    // process with a channel always has one.
    let claim = |w| Arena::get().map_or(Claim::Busy, |arena| waiter::claim(arena, w));
    match chan.read_into(&mut buf, deadline, claim)? {
        Took::Inline(len) => {
            rmp_serde::from_slice(&buf[..len]).map_err(|e| decode_error::<T>(chan, e))
        }
        Took::Block { offset, len } => decode(chan, Incoming::Block { offset, len }),
    }
}

/// Decodes a message taken out of `chan` (and frees its block, if it had one).
pub(crate) fn decode<T: DeserializeOwned>(chan: &Chan, msg: Incoming) -> Result<T, ChannelError> {
    let decode_err = |e| decode_error::<T>(chan, e);
    match msg {
        Incoming::Inline { buf, len } => rmp_serde::from_slice(&buf[..len]).map_err(decode_err),
        Incoming::Block { offset, len } => {
            let arena = Arena::get().map_err(shared_memory)?;
            // SAFETY: the writer filled `len` bytes at `offset` before publishing it, and
            // taking the slot made this reader the block's only user until it frees it.
            let bytes = unsafe { std::slice::from_raw_parts(arena.ptr(offset, len), len as usize) };
            let r = rmp_serde::from_slice(bytes).map_err(decode_err);
            arena.free_block(offset);
            r
        }
    }
}

/// Decodes a message's encoding that came from `chan`'s host (a remote end's own read, see
/// `net/direct.rs`).
pub(crate) fn decode_bytes<T: DeserializeOwned>(
    chan: &Chan,
    bytes: &[u8],
) -> Result<T, ChannelError> {
    rmp_serde::from_slice(bytes).map_err(|e| decode_error::<T>(chan, e))
}

/// The encoded bytes of a message taken out of a ring (and frees its block, if it had one).
#[cfg(test)]
pub(crate) fn take_encoded(msg: Incoming) -> Result<Vec<u8>, ChannelError> {
    match msg {
        Incoming::Inline { buf, len } => Ok(buf[..len].to_vec()),
        Incoming::Block { offset, len } => {
            let arena = Arena::get().map_err(shared_memory)?;
            // SAFETY: as in `decode`: the block is ours until we free it.
            let bytes = unsafe { std::slice::from_raw_parts(arena.ptr(offset, len), len as usize) }
                .to_vec();
            arena.free_block(offset);
            Ok(bytes)
        }
    }
}

/// The encoded bytes of a message, its block (if it has one) left as it is: for a socket host
/// that may give the message back to its writer (see `Chan::can_return`).
pub(crate) fn copy_encoded(msg: &Incoming) -> Result<Vec<u8>, ChannelError> {
    let mut out = Vec::new();
    copy_encoded_into(msg, &mut out)?;
    Ok(out)
}

/// [`copy_encoded`] into `out` (cleared first), whose buffer is reused.
pub(crate) fn copy_encoded_into(msg: &Incoming, out: &mut Vec<u8>) -> Result<(), ChannelError> {
    out.clear();
    match *msg {
        Incoming::Inline { ref buf, len } => out.extend_from_slice(&buf[..len]),
        Incoming::Block { offset, len } => {
            let arena = Arena::get().map_err(shared_memory)?;
            // SAFETY: as in `decode`: the block stays ours (its slot taken) while we copy it.
            let bytes = unsafe { std::slice::from_raw_parts(arena.ptr(offset, len), len as usize) };
            out.extend_from_slice(bytes);
        }
    }
    Ok(())
}

/// The error for a message of `chan` that does not decode as a `T`.
#[cold]
fn decode_error<T>(chan: &Chan, e: rmp_serde::decode::Error) -> ChannelError {
    ChannelError::Decode {
        channel: chan.name().to_string(),
        ty: std::any::type_name::<T>().to_string(),
        reason: e.to_string(),
    }
}
