//! Large data: [`Bytes`], a byte buffer that travels as MessagePack `bin` (one byte per
//! byte), and zero-copy [`SharedBlock`]s, blocks of the network's shared memory whose
//! ownership moves through a channel, like occam-pi's mobile data or a shared numpy array.
//!
//! Sending a [`SharedBlock`] sends only its offset and length (a few bytes, inline in a ring
//! slot); the receiver maps the same bytes. The sender's handle is spent by the send: using
//! it afterwards panics, so exactly one process owns the bytes at a time. The block returns
//! to the shared memory when its last owner drops it.
//!
//! ```
//! use pycsp_core::{Channel, SharedBlock};
//!
//! let ch = Channel::<SharedBlock>::buffered(2)?;
//! let (tx, rx) = (ch.writer(), ch.reader());
//! let mut frame = SharedBlock::zeroed(1 << 20)?;
//! frame[..5].copy_from_slice(b"hello");
//! tx.write(frame)?; // moves 16 bytes, not 1 MiB
//! let got = rx.read()?;
//! assert_eq!(&got[..5], b"hello");
//! assert_eq!(got.len(), 1 << 20);
//! # Ok::<(), pycsp_core::ChannelError>(())
//! ```

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ChannelError;
use crate::message;
use crate::shm::arena::Arena;

/// Why a `SharedBlock` cannot travel through a socket channel.
const NOT_OVER_SOCKETS: &str = "a SharedBlock is shared memory of this process network and \
     cannot travel through a socket channel: send its bytes (pycsp::Bytes) instead";

/// A block of shared memory owned by one process at a time. See the [module docs](self).
pub struct SharedBlock {
    offset: u64,
    len: usize,
    owned: Cell<bool>,
}

pub(crate) fn arena() -> Result<&'static Arena, ChannelError> {
    Arena::get().map_err(|e| ChannelError::SharedMemory(e.to_string()))
}

impl SharedBlock {
    /// A block of `len` bytes whose contents are unspecified (whatever the shared memory held:
    /// initialised bytes, possibly an earlier block's). The fastest way to get a buffer that
    /// will be filled anyway.
    ///
    /// Fails with [`ChannelError::TooLarge`] if no block of the network's shared memory can
    /// ever hold `len` bytes (more than [`max_len`](Self::max_len)), and with
    /// [`ChannelError::Capacity`] if there is no room for it now. Either way nothing was
    /// allocated.
    pub fn new(len: usize) -> Result<SharedBlock, ChannelError> {
        let arena = arena()?;
        let offset = arena
            .alloc_block(len as u64)
            .map_err(|e| e.into_channel_error(""))?;
        Ok(SharedBlock {
            offset,
            len,
            owned: Cell::new(true),
        })
    }

    /// The largest block (and the largest encoded message) the network's shared memory can
    /// hold: the largest power of two that fits in it, less a 16-byte header.
    pub fn max_len() -> Result<usize, ChannelError> {
        Ok(arena()?.max_block_data() as usize)
    }

    /// A block of `len` zero bytes. Memory that is zero already (never used, or given back
    /// to the kernel when a large block was freed) is not touched: a large zeroed block costs
    /// memory only as it is written.
    pub fn zeroed(len: usize) -> Result<SharedBlock, ChannelError> {
        let offset = arena()?
            .alloc_block_zeroed(len as u64)
            .map_err(|e| e.into_channel_error(""))?;
        Ok(SharedBlock {
            offset,
            len,
            owned: Cell::new(true),
        })
    }

    /// A block holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Result<SharedBlock, ChannelError> {
        let mut b = SharedBlock::new(data.len())?;
        b.copy_from_slice(data);
        Ok(b)
    }

    fn ptr(&self) -> *mut u8 {
        assert!(
            self.owned.get(),
            "this SharedBlock was sent to another process; it is no longer yours"
        );
        let arena = Arena::get().expect("a block exists only where the arena is mapped");
        arena.ptr(self.offset, self.len as u64)
    }
}

impl Deref for SharedBlock {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the block's `len` bytes lie in the arena (checked by `ptr`), are initialised
        // (shared file memory), and belong to this handle alone while it is owned: other
        // processes get them only through a send, which spends this handle.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
}

impl DerefMut for SharedBlock {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference in this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }
}

impl Drop for SharedBlock {
    fn drop(&mut self) {
        if self.owned.get() {
            if let Ok(arena) = Arena::get() {
                arena.free_block(self.offset);
            }
        }
    }
}

impl std::fmt::Debug for SharedBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedBlock({} bytes{})",
            self.len,
            if self.owned.get() { "" } else { ", sent" }
        )
    }
}

/// Serializing a block moves it: only its offset and length travel, and the handle left
/// behind is spent.
impl Serialize for SharedBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.owned.get() {
            return Err(serde::ser::Error::custom(
                "this SharedBlock was already sent",
            ));
        }
        if !message::is_local() {
            return Err(serde::ser::Error::custom(NOT_OVER_SOCKETS));
        }
        let r = (self.offset, self.len as u64).serialize(s)?;
        spent_by_serialize(&self.owned);
        Ok(r)
    }
}

impl<'de> Deserialize<'de> for SharedBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // An offset that may have come over a socket is never used.
        if !message::is_local() {
            return Err(D::Error::custom(NOT_OVER_SOCKETS));
        }
        let (offset, len) = <(u64, u64)>::deserialize(d)?;
        let arena = arena().map_err(D::Error::custom)?;
        if offset.checked_add(len).is_none_or(|end| end > arena.size()) {
            return Err(D::Error::custom(format!(
                "a SharedBlock at {offset}+{len} lies outside shared memory"
            )));
        }
        Ok(SharedBlock {
            offset,
            len: len as usize,
            owned: Cell::new(true),
        })
    }
}

/// A byte buffer that a channel carries as bytes: MessagePack `bin`, one byte per byte.
///
/// A plain `Vec<u8>` travels as a list of numbers, as serde encodes every `Vec<T>`: a byte of
/// 0x80 or more then takes two bytes, so 1 MiB of such bytes becomes 2 MiB and needs a 4 MiB
/// block. `Bytes` is a `Vec<u8>` (it dereferences to one) that serializes as bytes. For a
/// `Vec<u8>` field of your own type, `#[serde(with = "pycsp::serde_bytes")]` does the same.
/// `Bytes` also decodes from a list of numbers, as a peer in another language may send.
///
/// ```
/// use pycsp_core::{Bytes, Channel};
///
/// let ch = Channel::<Bytes>::buffered(1)?;
/// ch.writer().write(Bytes::from(vec![0xff; 1 << 20]))?; // about 1 MiB in shared memory
/// let got: Vec<u8> = ch.reader().read()?.into_vec();
/// assert_eq!(got.len(), 1 << 20);
/// # Ok::<(), pycsp_core::ChannelError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// An empty buffer.
    pub fn new() -> Bytes {
        Bytes(Vec::new())
    }

    /// The bytes, as a `Vec<u8>`.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Bytes {
        Bytes(v.to_vec())
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Vec<u8> {
        b.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl FromIterator<u8> for Bytes {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Bytes {
        Bytes(iter.into_iter().collect())
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 32;
        write!(f, "Bytes({} bytes: ", self.0.len())?;
        for b in self.0.iter().take(SHOWN) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "...")?;
        }
        write!(f, ")")
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accepts bytes, and also a string or a list of numbers.
        serde_bytes::ByteBuf::deserialize(d).map(|b| Bytes(b.into_vec()))
    }
}

// Handles that move when serialized: kept until their message is placed.

thread_local! {
    /// Set while a message whose value comes back to its writer if it is not delivered is
    /// encoded ([`keeping`]): the handles of shared memory serialized meanwhile stay owned,
    /// listed in `KEPT`, until the message is placed ([`Kept::spend`]).
    static KEEPING: Cell<bool> = const { Cell::new(false) };
    static KEPT: RefCell<Vec<*const Cell<bool>>> = const { RefCell::new(Vec::new()) };
}

/// The handles a message being encoded carries (see [`keeping`]).
pub(crate) struct Kept(Vec<*const Cell<bool>>);

impl Kept {
    /// The message was placed: the handles it carries now belong to whoever reads it.
    ///
    /// # Safety
    ///
    /// The value encoded by the [`keeping`] that returned this must still be alive, and not
    /// moved since.
    pub(crate) unsafe fn spend(self) {
        for owned in self.0 {
            // SAFETY: the caller guarantees the value, and so the handle's flag, is alive and
            // where it was when it was encoded.
            unsafe { (*owned).set(false) };
        }
    }
}

/// Runs `f`, which encodes a message (possibly in several passes over the same value) that
/// may not be delivered, without spending the handles of shared memory it carries
/// ([`SharedBlock`]s, pieces of shared arrays, shared atomics); returns them with `f`'s
/// result, to be spent once the message is placed. Otherwise the value comes back whole.
pub(crate) fn keeping<R>(f: impl FnOnce() -> R) -> (R, Kept) {
    let from = KEPT.with(|k| k.borrow().len());
    let outer = KEEPING.with(|k| k.replace(true));
    /// Puts the flag back, also if `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEEPING.with(|k| k.set(self.0));
        }
    }
    let restore = Restore(outer);
    let r = f();
    drop(restore);
    let kept = KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() == from {
            Vec::new() // most messages carry no shared memory: no allocation
        } else {
            k.split_off(from)
        }
    });
    (r, Kept(kept))
}

/// A handle of shared memory whose ownership flag is `owned` was serialized: it is spent now
/// or, inside [`keeping`], once its message is placed.
pub(crate) fn spent_by_serialize(owned: &Cell<bool>) {
    if KEEPING.with(Cell::get) {
        let p: *const Cell<bool> = owned;
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            if !k.contains(&p) {
                k.push(p);
            }
        });
    } else {
        owned.set(false);
    }
}

// Blocks shared by counted handles: the pieces of a shared array, the handles of a shared
// atomic. The count lives in the block; the last handle dropped frees the block.

const COUNTED_MAGIC: u64 = u64::from_le_bytes(*b"PYCSPSH1");
/// Where the data of a counted block starts: aligned to this many bytes.
pub(crate) const COUNTED_ALIGN: u64 = 64;
/// Bytes of a counted block before its data, at most (header and alignment).
const COUNTED_EXTRA: u64 = 128;

/// The first bytes of a counted block's data.
#[repr(C)]
struct CountedHeader {
    /// [`COUNTED_MAGIC`] while the block lives; 0 once freed.
    magic: AtomicU64,
    /// Handles that hold the block.
    count: AtomicU64,
    /// Bytes of data.
    len: AtomicU64,
}

/// A block of the arena shared by counted handles (see [`Counted::acquire`] and
/// [`Counted::release`]). Plain data: copying it does not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counted {
    /// The block's data offset (where its header is).
    offset: u64,
    /// Offset of the first byte of data, [`COUNTED_ALIGN`]-aligned.
    data: u64,
    /// Bytes of data.
    len: u64,
}

impl Counted {
    /// A new block for `len` bytes of data, all zero, held by one handle (a count of 1).
    /// Fails as [`SharedBlock::new`] does, and changes nothing then.
    pub(crate) fn new(len: u64) -> Result<Counted, ChannelError> {
        let arena = arena()?;
        let total = len
            .checked_add(COUNTED_EXTRA)
            .ok_or(ChannelError::TooLarge {
                channel: String::new(),
                len: u64::MAX,
                max: arena.max_block_data(),
            })?;
        let offset = arena
            .alloc_block(total)
            .map_err(|e| e.into_channel_error(""))?;
        let data = Self::data_of(offset);
        let c = Counted { offset, data, len };
        let hdr = c.header(arena);
        hdr.count.store(1, Ordering::Relaxed);
        hdr.len.store(len, Ordering::Relaxed);
        hdr.magic.store(COUNTED_MAGIC, Ordering::Release);
        // SAFETY: the `len` bytes at `data` lie inside the block just allocated (checked by
        // `ptr`), which nobody else knows of yet.
        unsafe { std::ptr::write_bytes(arena.ptr(data, len), 0, len as usize) };
        Ok(c)
    }

    fn data_of(offset: u64) -> u64 {
        (offset + std::mem::size_of::<CountedHeader>() as u64).next_multiple_of(COUNTED_ALIGN)
    }

    fn header(&self, arena: &Arena) -> &CountedHeader {
        let p = arena.ptr(self.offset, std::mem::size_of::<CountedHeader>() as u64);
        // SAFETY: the header lies inside the arena (checked by `ptr`), 16-byte aligned (a
        // block's data), and is only accessed through its atomics.
        unsafe { &*p.cast::<CountedHeader>() }
    }

    /// The counted block whose data offset is `offset` (as a handle's message carries it),
    /// if a live one is there. Nothing that came over a socket may be given here.
    pub(crate) fn attach(offset: u64) -> Result<Counted, String> {
        let arena = arena().map_err(|e| e.to_string())?;
        let size = arena.size();
        let hlen = std::mem::size_of::<CountedHeader>() as u64;
        if offset % 16 != 0 || offset.checked_add(COUNTED_EXTRA).is_none_or(|e| e > size) {
            return Err(format!("no shared block at offset {offset}"));
        }
        let probe = Counted {
            offset,
            data: Self::data_of(offset),
            len: 0,
        };
        let hdr = probe.header(arena);
        if hdr.magic.load(Ordering::Acquire) != COUNTED_MAGIC
            || hdr.count.load(Ordering::Acquire) == 0
        {
            return Err(format!("no live shared block at offset {offset}"));
        }
        let len = hdr.len.load(Ordering::Acquire);
        if probe.data.checked_add(len).is_none_or(|e| e > size) || offset + hlen > probe.data {
            return Err(format!(
                "a shared block at {offset} lies outside shared memory"
            ));
        }
        Ok(Counted { len, ..probe })
    }

    /// The block's data offset: what a message carries.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of data.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The first byte of data, [`COUNTED_ALIGN`]-aligned.
    pub(crate) fn data_ptr(&self) -> *mut u8 {
        let arena = Arena::get().expect("a counted block exists only where the arena is mapped");
        arena.ptr(self.data, self.len)
    }

    /// `n` more handles hold the block.
    pub(crate) fn acquire(&self, n: u64) {
        if let Ok(arena) = Arena::get() {
            self.header(arena).count.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// `n` handles let go of the block; the last one frees it.
    pub(crate) fn release(&self, n: u64) {
        let Ok(arena) = Arena::get() else { return };
        let hdr = self.header(arena);
        let before = hdr.count.fetch_sub(n, Ordering::AcqRel);
        assert!(before >= n, "a shared block released more often than held");
        if before == n {
            hdr.magic.store(0, Ordering::Release);
            arena.free_block(self.offset);
        }
    }
}
