//! A channel in shared memory: header, ring of slots, and the blocking read and write on it.
//!
//! The ring is crossbeam-channel's bounded array queue (`flavors/array.rs`) placed in the arena:
//! each slot carries a stamp that says whether it is full or empty for a given lap, and readers
//! and writers claim positions with one compare-and-swap on `head` or `tail`. Any number of
//! processes may read and write at once. See [`crate::shm`] for the layout.
//!
//! One change to crossbeam's protocol: a stamp holds only the lap of a position, not its
//! index (which is the slot's own index anyway): `lap` when the slot is empty for that lap,
//! `lap + 1` when full. So an all-zero slot is empty at lap 0, and a new ring needs no writes:
//! its slots, fresh zero pages of the arena, are touched only when messages reach them.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::arena::{Arena, ArenaError, MAX_NAME};
use super::census::Kind;
use super::wait::{self, Event, Waiting};
use super::waiter::{self, Claim, Handoff, Offer};
use crate::error::ChannelError;
use crate::{sys, trace};

const MAGIC: u64 = u64::from_le_bytes(*b"PYCSPCH1");
/// Bytes of a message that fit inline in a slot; longer messages travel in an arena block.
pub(crate) const INLINE: usize = 112;
/// Slots of the ring behind a rendezvous channel: how many writers can have a message
/// waiting to be taken at the same moment before further writers wait for room.
const RENDEZVOUS_RING: u64 = 16;
const MAX_TYPE_NAME: usize = 128;

pub(crate) const POISONED: u32 = 1;
pub(crate) const WRITERS_RETIRED: u32 = 2;
pub(crate) const READERS_RETIRED: u32 = 4;
pub(crate) const PEER_DIED: u32 = 8;
/// A socket pump hands this (rendezvous) proxy's messages to its user only while the user
/// reads: reads and input guards that come to it count in `looks` (see
/// [`Chan::watch_readers`]).
const READERS_WATCHED: u32 = 16;
/// How long a reader of a channel whose peer died waits for a claimed slot to be published
/// before it takes the slot for one the dead writer never finished.
const DEAD_SLOT_GRACE: std::time::Duration = std::time::Duration::from_millis(50);
/// How long after a peer's death was marked a reader of the channel, finding it empty, waits
/// while slots are still taken and not emptied (a socket host puts back what a dead remote
/// reader had asked for ahead once it sees the connection closed, within its 100 ms steps,
/// and the death may be marked first from elsewhere) before it reports the death: a reader
/// that died mid-read holds its slot for ever. Plain reads and selects wait alike.
const HELD_SLOT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
const MAX_DEAD_NAME: usize = 96;
/// How long `try_push`/`try_pop` spin on a slot another process is filling or emptying before
/// they give up and let the caller's wait loop retry.
const IN_PROGRESS_SPINS: u32 = 64;

const KIND_INLINE: u32 = 0;
const KIND_BLOCK: u32 = 1;
/// Bits of a slot's `kind` for a rendezvous write that reached its deadline (see
/// [`Chan::withdraw`]): its writer withdraws the message; the reader that claimed the slot
/// skipped it; the writer has left (then whoever comes second empties the slot).
const CANCELLED: u32 = 1 << 8;
const SKIPPED: u32 = 1 << 9;
const GONE: u32 = 1 << 10;
/// Bit of a rendezvous slot's `kind`: a socket host gives the message it took back to its
/// writer (see [`Chan::return_to_writer`]); with `GONE`, whichever of host and writer comes
/// second empties the slot.
const RETURNED: u32 = 1 << 11;
/// The bits of a slot's `kind` that say where its message is (`KIND_INLINE`, `KIND_BLOCK`).
const KIND_MASK: u32 = 0xff;
/// Bit of a slot's `kind`: its message is held far away, and the slot is emptied a network
/// round trip later, not within microseconds: the socket pump that took a rendezvous
/// message offers it to its host until a reader there takes it or the writer withdraws it
/// (see [`Chan::offer_withdrawable`]), or a socket host took the message for its remote
/// reader and holds it until that reader's `Ack` (see [`Reader::Host`]). The slot's writer
/// (rendezvous), or the next writer of a full ring, sleeps meanwhile, woken by the `ack`,
/// instead of yielding and looking often for the slot, as it does while a local reader copies
/// a message out. A writer's next message in the slot clears it.
const HELD: u32 = 1 << 13;
/// Bit of a `HELD` slot's `kind`: the one holding it is a socket host waiting for its remote
/// reader's answer (not a pump offering it to its host, which bounds its own wait): a writer
/// whose deadline passed leaves it after [`HELD_ANSWER_WAIT`] (see `withdraw`).
const FAR_READER: u32 = 1 << 12;
/// How long a writer that withdraws a message a socket host holds (`HELD`) sleeps at most
/// before it looks again (the host's decision wakes it), and how many of the looks that give
/// an undecided reader a moment each such sleep counts for (see `withdraw`).
const HELD_RECHECK: std::time::Duration = std::time::Duration::from_millis(1);
/// How long a writer whose deadline passed (or a select that asks its message back) waits for
/// the remote reader a socket host holds its message for (`HELD`) to answer, at most: as long
/// as a connection may leave data unacknowledged (`net::LOSS_TIMEOUT`, which is checked to be
/// the same). Past it the writer leaves, its write uncertain (the reader may have taken it):
/// placed, with `Timeout`, the only such case (`net::server::silent_reader` names the
/// reader); the host's later decision empties the slot.
pub(crate) const HELD_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const HELD_RECHECK_LOOKS: u32 = 1 << 10;
/// What a rendezvous slot's stamp is, past its full stamp, once a socket host gave its
/// message back to its writer: neither empty nor full for any lap, so no reader or other
/// writer touches it until its writer empties it and writes the message again.
const RETURNED_STAMP: u64 = 1;

#[repr(C, align(128))]
struct Padded<T>(T);

#[repr(C)]
struct State {
    flags: AtomicU32,
    writers: AtomicU32,
    readers: AtomicU32,
    /// Messages given back whose taken slot was emptied before their copy was written (see
    /// [`Chan::empty_for_give_back`]): readers that find a dead peer's channel drained wait
    /// for them as for slots still taken.
    giving_back: AtomicU32,
    /// Reads and input guards that came to a channel whose readers are watched (see
    /// [`Chan::watch_readers`]), counted with wrap-around.
    looks: AtomicU32,
    /// Nanoseconds that reads and input guards of a channel whose readers are watched spent
    /// waiting for a message (wrapping): what a remote reading end's pump subtracts from the
    /// time between its user's takes to learn how long the user works on each (see
    /// `ReadAhead`).
    waited: AtomicU64,
    /// `generation << 32 | holders`: every `Channel` handle and every end in every process
    /// (also one travelling in a message or to a child), a socket host and a proxy's pump
    /// hold the channel once; the last to let go frees it, and the generation changes, so a
    /// stale key no longer opens it.
    life: AtomicU64,
    /// The next free header while this one is free (see `Arena::alloc_header`).
    next_free: AtomicU64,
}

/// The holders part of a `life` word.
const HOLDERS: u64 = 0xffff_ffff;

/// Who died holding an end of this channel (the first one reported).
#[repr(C)]
struct Dead {
    pid: AtomicU32,
    name_len: AtomicU32,
    /// When the death was first marked: ns of `CLOCK_MONOTONIC` (one clock for every process
    /// of the host), 0 before.
    at: AtomicU64,
    name: UnsafeCell<[u8; MAX_DEAD_NAME]>,
}

#[repr(C)]
pub(crate) struct ChannelHeader {
    magic: u64,
    type_fp: u64,
    capacity: u64,
    ring_len: u64,
    one_lap: u64,
    /// The arena block that holds the ring, and the offset of its first slot in it.
    ring_block: u64,
    ring: u64,
    /// 1 if the channel has a name in the directory.
    named: u32,
    _pad: u32,
    type_name_len: u32,
    name_len: u32,
    type_name: [u8; MAX_TYPE_NAME],
    name: [u8; MAX_NAME],
    state: Padded<State>,
    dead: Padded<Dead>,
    head: Padded<AtomicU64>,
    tail: Padded<AtomicU64>,
    rx: Padded<Event>,
    tx: Padded<Event>,
    offers: Padded<Offers>,
}

/// Offers of processes blocked in an alternation on a rendezvous channel (see
/// [`crate::alt`]): a selecting reader offers to take, a selecting writer offers to give; a
/// counterpart claims an offer with one CAS on the offering waiter's selection word.
///
/// A table holds [`OFFERS`] offers; a selecting process that finds its side's table full
/// waits without an offer, on the channel's event of its side, until the table has room
/// (whoever frees a slot of a full table wakes that side) or, for a writer, until a reader
/// offers (a reader that offers while the writers' table is full wakes the writers); it
/// never polls.
#[repr(C)]
struct Offers {
    nreads: AtomicU32,
    nwrites: AtomicU32,
    reads: [AtomicU64; OFFERS],
    writes: [AtomicU64; OFFERS],
}

/// Offers one rendezvous channel can hold on each side at once.
const OFFERS: usize = 32;

impl Offers {
    /// No offers (a header taken for a new channel).
    fn reset(&self) {
        self.nreads.store(0, Ordering::Relaxed);
        self.nwrites.store(0, Ordering::Relaxed);
        for w in self.reads.iter().chain(self.writes.iter()) {
            w.store(0, Ordering::Relaxed);
        }
    }
}

#[repr(C, align(128))]
struct Slot {
    stamp: AtomicU64,
    kind: AtomicU32,
    len: UnsafeCell<u32>,
    payload: UnsafeCell<[u8; INLINE]>,
}

/// Payload bytes that share the slot's first cache line with its stamp: a message this short
/// is copied as one fixed-size block that touches no other line.
const FIRST_LINE: usize = 48;

/// Copies the first `len` bytes of `src` to `dst` as one fixed-size copy of [`FIRST_LINE`] or
/// [`INLINE`] bytes (a few vector moves, no call to `memcpy`); bytes past `len` are whatever
/// `src` holds there.
#[inline(always)]
fn copy_payload(dst: &mut [u8; INLINE], src: &[u8; INLINE], len: usize) {
    if len <= FIRST_LINE {
        dst[..FIRST_LINE].copy_from_slice(&src[..FIRST_LINE]);
    } else {
        *dst = *src;
    }
}

/// An encoded message on its way into a slot.
pub(crate) enum Outgoing<'a> {
    /// The first `len` bytes of `buf`.
    Inline {
        buf: &'a [u8; INLINE],
        len: usize,
    },
    Block {
        offset: u64,
        len: u64,
    },
}

/// A message taken out of a slot.
pub(crate) enum Incoming {
    Inline { buf: [u8; INLINE], len: usize },
    Block { offset: u64, len: u64 },
}

/// Where a message taken out of a slot is, when its inline bytes were copied to a buffer the
/// caller provided ([`Chan::read_into`]): small and `Copy`, so the hot path moves no message
/// bytes around.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Took {
    /// The first `len` bytes of the caller's buffer.
    Inline(usize),
    /// A block of the arena, now the reader's.
    Block { offset: u64, len: u64 },
}

impl Took {
    fn into_incoming(self, buf: &[u8; INLINE]) -> Incoming {
        match self {
            Took::Inline(len) => Incoming::Inline { buf: *buf, len },
            Took::Block { offset, len } => Incoming::Block { offset, len },
        }
    }
}

/// Who reads, for what a read does with the slot it takes and which taken slots keep it from
/// seeing the end of a channel whose writers retired (their messages may come back: see
/// `read_wait`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reader {
    /// Empties the slot it takes at once (a user's read); waits while any slot is taken.
    Plain,
    /// Keeps the slot taken until [`Chan::ack`] (a socket host reading for its remote end,
    /// which holds `held` slots taken now), marked `HELD`; waits while slots beyond those are
    /// taken.
    Host { held: usize },
    /// Keeps the slot taken until [`Chan::ack`]; the only reader of its ring (a socket
    /// pump reading its proxy), so no slot taken keeps it waiting.
    Pump,
}

/// Where a message was taken from, for a deferred acknowledgement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Taken {
    /// A slot of the ring.
    Slot { index: usize, head: u64 },
    /// A selecting writer's offer (its message came in a block it staged) in its round
    /// `round`.
    Offer { word: u64, round: u32 },
}

/// Why a write failed, and whether its message had already been placed in the ring (then a
/// reader may still take it, and its block belongs to that reader).
pub(crate) struct WriteError {
    pub(crate) error: ChannelError,
    pub(crate) placed: bool,
}

/// A channel mapped in this process. Cheap to copy; valid while its holder holds it (see
/// A message being given back after its slot was emptied (see [`Chan::empty_for_give_back`]):
/// dropping the guard, once the copy is written (or can never be), ends it.
pub(crate) struct GivingBack<'a>(&'a Chan);

impl Drop for GivingBack<'_> {
    fn drop(&mut self) {
        let st = &self.0.hdr.state.0;
        st.giving_back.fetch_sub(1, Ordering::SeqCst);
        // A reader waiting for it rechecks.
        self.0.hdr.rx.0.notify_all();
    }
}

/// [`Chan::hold`]): the channel's memory is reused once its last holder lets go.
#[derive(Clone, Copy)]
pub(crate) struct Chan {
    hdr: &'static ChannelHeader,
    slots: &'static [Slot],
    offset: u64,
    /// The header's generation when this process attached it.
    gen: u32,
}

// SAFETY: a Chan points into the arena, which stays mapped for the life of the process; all
// shared mutation goes through atomics or through slot contents owned under the claim
// protocol (a CAS on head or tail), which works between threads as between processes.
unsafe impl Send for Chan {}
// SAFETY: as above.
unsafe impl Sync for Chan {}

impl std::fmt::Debug for Chan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chan")
            .field("name", &self.name())
            .field("offset", &self.offset)
            .finish()
    }
}

fn header_len() -> u64 {
    std::mem::size_of::<ChannelHeader>() as u64
}

/// Bytes of the block for a ring of `ring_len` slots (with room to align the first slot to
/// 128 bytes); `None` if that overflows or the ring's positions would (a lap must be a power
/// of two above `ring_len`).
fn ring_bytes(ring_len: u64) -> Option<u64> {
    ring_len.checked_add(1)?.checked_next_power_of_two()?;
    ring_len
        .checked_mul(std::mem::size_of::<Slot>() as u64)?
        .checked_add(SLOT_ALIGN)
}

const SLOT_ALIGN: u64 = std::mem::align_of::<Slot>() as u64;

/// The key of the channel whose header is at `offset` in generation `gen`: what the
/// directory and a moving end hold. Offsets are multiples of 256 below 2^36.
fn key_of(offset: u64, gen: u32) -> u64 {
    (u64::from(gen) << 32) | (offset >> 8)
}

fn next_free_of(offset: u64) -> &'static AtomicU64 {
    let arena = Arena::get().expect("a channel exists only where the arena is mapped");
    let p = arena.ptr(offset, header_len()).cast::<ChannelHeader>();
    // SAFETY: `offset` is a channel header (headers stay headers); `next_free` is atomic.
    unsafe { &(*p).state.0.next_free }
}

impl Chan {
    /// Creates a channel in the arena, held once (by the caller). `capacity` 0 means
    /// rendezvous. `named`: the channel will be registered in the directory under `name`
    /// (and removed from it when freed).
    pub(crate) fn create(
        arena: &'static Arena,
        name: &str,
        type_name: &str,
        type_fp: u64,
        capacity: usize,
        named: bool,
    ) -> Result<Chan, ArenaError> {
        let ring_len = if capacity == 0 {
            RENDEZVOUS_RING
        } else {
            capacity as u64
        };
        // Checked: a capacity whose ring does not fit in 64 bits asks for more than any arena.
        let len = ring_bytes(ring_len).ok_or(ArenaError::Full {
            needed: u64::MAX,
            free: arena.unallocated(),
            size: arena.size(),
        })?;
        // An all-zero ring is empty at lap 0 (see the module docs): a fresh block is not
        // written at all, so a ring of 10^8 slots costs no memory until messages fill it.
        // A ring larger than the largest block gets fresh memory of its own, whose pages go
        // back to the kernel when it is freed (its offset is 256-aligned, a block's is not).
        let ring_block = if len <= arena.max_block_data() {
            arena.alloc_block_zeroed(len)?
        } else {
            arena.alloc_static(len)?
        };
        let free_ring = move || {
            if ring_block % 256 == 0 {
                arena.give_back(ring_block, len);
            } else {
                arena.free_block(ring_block);
            }
        };
        let offset = match arena.alloc_header(header_len(), next_free_of) {
            Ok(o) => o,
            Err(e) => {
                free_ring();
                return Err(e);
            }
        };
        let p = arena.ptr(offset, header_len()).cast::<ChannelHeader>();
        let tn = &type_name.as_bytes()[..type_name.len().min(MAX_TYPE_NAME)];
        let nm = &name.as_bytes()[..name.len().min(MAX_NAME)];
        // SAFETY: the header is ours alone: freshly allocated (zero), or taken off the free
        // headers with no holder, so nobody reads its fields (a stale key is refused by its
        // generation before anything else is read). Its atomics are reset with stores.
        let gen = unsafe {
            (*p).magic = MAGIC;
            (*p).type_fp = type_fp;
            (*p).capacity = capacity as u64;
            (*p).ring_len = ring_len;
            (*p).one_lap = (ring_len + 1).next_power_of_two();
            (*p).ring_block = ring_block;
            (*p).ring = ring_block.next_multiple_of(SLOT_ALIGN);
            (*p).named = u32::from(named);
            (*p).type_name_len = tn.len() as u32;
            (&mut (*p).type_name)[..tn.len()].copy_from_slice(tn);
            (*p).name_len = nm.len() as u32;
            (&mut (*p).name)[..nm.len()].copy_from_slice(nm);
            let h = &*p;
            let st = &h.state.0;
            st.flags.store(0, Ordering::Relaxed);
            st.writers.store(0, Ordering::Relaxed);
            st.readers.store(0, Ordering::Relaxed);
            st.giving_back.store(0, Ordering::Relaxed);
            st.looks.store(0, Ordering::Relaxed);
            st.waited.store(0, Ordering::Relaxed);
            h.dead.0.pid.store(0, Ordering::Relaxed);
            h.dead.0.name_len.store(0, Ordering::Relaxed);
            h.dead.0.at.store(0, Ordering::Relaxed);
            h.head.0.store(0, Ordering::Relaxed);
            h.tail.0.store(0, Ordering::Relaxed);
            h.offers.0.reset();
            let gen = (st.life.load(Ordering::Acquire) >> 32) as u32;
            st.life.store((u64::from(gen) << 32) | 1, Ordering::Release);
            gen
        };
        arena.count_channel(true);
        Chan::attach(arena, key_of(offset, gen)).ok_or(ArenaError::Full {
            needed: len,
            free: arena.unallocated(),
            size: arena.size(),
        })
    }

    /// Maps the channel with `key`, which the caller holds (it came with a moving end, or
    /// the caller holds it already); `None` if no live channel has that key.
    pub(crate) fn attach(arena: &'static Arena, key: u64) -> Option<Chan> {
        let offset = (key & HOLDERS) << 8;
        let gen = (key >> 32) as u32;
        let hlen = header_len();
        if offset < 4096 {
            return None;
        }
        let p = arena.ptr(offset, hlen).cast::<ChannelHeader>();
        // SAFETY: the header range is inside the arena (checked by `ptr`); its fixed part
        // is read only after its `life` word says it is the generation the key names, still
        // held, whose fields were written before the key was published.
        let hdr: &'static ChannelHeader = unsafe { &*p };
        let life = hdr.state.0.life.load(Ordering::Acquire);
        if (life >> 32) as u32 != gen || life & HOLDERS == 0 {
            return None;
        }
        if hdr.magic != MAGIC
            || hdr.ring_len == 0
            || !hdr.one_lap.is_power_of_two()
            || hdr.one_lap <= hdr.ring_len
        {
            return None;
        }
        Chan::attach_unheld(arena, offset, hdr, gen)
    }

    /// Holds the channel named by `key` once more, if it is still alive (a directory
    /// lookup); the caller did not hold it before.
    pub(crate) fn acquire(arena: &'static Arena, key: u64) -> Option<Chan> {
        let offset = (key & HOLDERS) << 8;
        let gen = (key >> 32) as u32;
        if offset < 4096 {
            return None;
        }
        let p = arena.ptr(offset, header_len()).cast::<ChannelHeader>();
        // SAFETY: the directory hands out only offsets of channel headers, and a header's
        // memory is never anything else; `life` is atomic.
        let life = unsafe { &(*p).state.0.life };
        let mut cur = life.load(Ordering::Acquire);
        loop {
            if (cur >> 32) as u32 != gen || cur & HOLDERS == 0 {
                return None;
            }
            match life.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
        let chan = Chan::attach(arena, key);
        if chan.is_none() {
            // Cannot happen for a header we hold; let go of it all the same.
            Chan::release_at(arena, offset);
        }
        chan
    }

    /// Whether the channel named by `key` is alive.
    pub(crate) fn is_alive(arena: &'static Arena, key: u64) -> bool {
        let offset = (key & HOLDERS) << 8;
        if offset < 4096 {
            return false;
        }
        let p = arena.ptr(offset, header_len()).cast::<ChannelHeader>();
        // SAFETY: as in `acquire`.
        let life = unsafe { (*p).state.0.life.load(Ordering::Acquire) };
        (life >> 32) as u32 == (key >> 32) as u32 && life & HOLDERS != 0
    }

    /// This channel's key: what the directory and a moving end carry.
    pub(crate) fn key(&self) -> u64 {
        key_of(self.offset, self.gen)
    }

    /// Holds the channel once more (the caller holds it already).
    pub(crate) fn hold(&self) {
        self.hdr.state.0.life.fetch_add(1, Ordering::AcqRel);
    }

    /// Lets go of the channel once; the last holder frees it. The caller must not use this
    /// `Chan` afterwards.
    pub(crate) fn release(self) {
        let arena = Arena::get().expect("a channel exists only where the arena is mapped");
        Chan::release_at(arena, self.offset);
    }

    fn release_at(arena: &'static Arena, offset: u64) {
        let p = arena.ptr(offset, header_len()).cast::<ChannelHeader>();
        // SAFETY: the caller holds the channel, so the header is a live channel's.
        let hdr: &'static ChannelHeader = unsafe { &*p };
        let life = &hdr.state.0.life;
        let mut prev = life.load(Ordering::Acquire);
        loop {
            if prev & HOLDERS == 0 {
                // Released more often than held: a bug; never let it wrap into the
                // generation or free the channel twice.
                debug_assert!(false, "a channel released more often than held");
                return;
            }
            match life.compare_exchange_weak(prev, prev - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(p) => prev = p,
            }
        }
        if prev & HOLDERS == 1 {
            Chan::free(arena, offset, hdr, (prev >> 32) as u32);
        }
    }

    /// Frees a channel nobody holds: the blocks of messages still in its ring, its name, its
    /// ring and its header go back to the arena, and its generation moves on.
    fn free(arena: &'static Arena, offset: u64, hdr: &'static ChannelHeader, gen: u32) {
        if let Some(chan) = Chan::attach_unheld(arena, offset, hdr, gen) {
            chan.drop_messages(arena);
            if hdr.named == 1 {
                arena.unregister(chan.name(), chan.key());
            }
        }
        if hdr.ring_block % 256 == 0 {
            let len = ring_bytes(hdr.ring_len).unwrap_or(0);
            arena.give_back(hdr.ring_block, len);
        } else {
            arena.free_block(hdr.ring_block);
        }
        hdr.state
            .0
            .life
            .store(u64::from(gen.wrapping_add(1)) << 32, Ordering::Release);
        arena.count_channel(false);
        arena.free_header(offset, &hdr.state.0.next_free);
    }

    /// The channel whose header `hdr` is at `offset` and in generation `gen` (checked by the
    /// caller: held, or being freed by it), with its ring mapped.
    fn attach_unheld(
        arena: &'static Arena,
        offset: u64,
        hdr: &'static ChannelHeader,
        gen: u32,
    ) -> Option<Chan> {
        let slots_len = hdr
            .ring_len
            .checked_mul(std::mem::size_of::<Slot>() as u64)?;
        if hdr.ring % SLOT_ALIGN != 0 {
            return None;
        }
        let sp = arena.ptr(hdr.ring, slots_len).cast::<Slot>();
        // SAFETY: `ring_len` slots lie inside the arena (checked by `ptr`), 128-byte aligned
        // (checked above); slots are accessed through their atomic stamp and the claim
        // protocol below.
        let slots = unsafe { std::slice::from_raw_parts(sp, hdr.ring_len as usize) };
        Some(Chan {
            hdr,
            slots,
            offset,
            gen,
        })
    }

    /// Frees the blocks of the messages left in the ring (nobody holds the channel).
    fn drop_messages(&self, arena: &Arena) {
        let mut pos = self.hdr.head.0.load(Ordering::Acquire);
        let tail = self.hdr.tail.0.load(Ordering::Acquire);
        let mut n = 0;
        while pos != tail && n < self.hdr.ring_len {
            let (index, lap) = self.positions(pos);
            let slot = &self.slots[index];
            if slot.stamp.load(Ordering::Acquire) == lap.wrapping_add(1)
                && slot.kind.load(Ordering::Acquire) & KIND_MASK == KIND_BLOCK
            {
                // SAFETY: a full slot's payload holds (offset, len) of its block; nobody
                // else uses the ring.
                let offset =
                    unsafe { u64::from_le_bytes((&*slot.payload.get())[..8].try_into().unwrap()) };
                arena.free_block(offset);
            }
            pos = self.next_pos(pos);
            n += 1;
        }
    }

    pub(crate) fn shared_memory_bytes(&self) -> usize {
        header_len() as usize + std::mem::size_of_val(self.slots)
    }

    /// Makes this (rendezvous) channel count the reads and input guards that come to it,
    /// and wake its writers when one comes: the proxy of a remote reading end, whose pump
    /// asks its host for a message only while its user reads (see
    /// [`reader_looks`](Self::reader_looks)). Set before the user has the end; the channels
    /// of other readers pay nothing for it (the flags are read anyway).
    pub(crate) fn watch_readers(&self) {
        self.hdr
            .state
            .0
            .flags
            .fetch_or(READERS_WATCHED, Ordering::SeqCst);
    }

    /// How many reads and input guards came to this watched channel (wrapping): one that
    /// changed since a pump last looked, or a reader asleep or offering now
    /// ([`readers_wait`](Self::readers_wait)), says the user reads.
    pub(crate) fn reader_looks(&self) -> u32 {
        self.hdr.state.0.looks.load(Ordering::SeqCst)
    }

    /// Whether a reader sleeps in a read of this channel or a selecting reader offers on it.
    pub(crate) fn readers_wait(&self) -> bool {
        self.reader_asleep() || self.has_offers(true)
    }

    /// Waits until a read or an input guard came to this watched channel since the look
    /// `seen` ([`reader_looks`](Self::reader_looks)), a reader waits on it, its readers
    /// retired or it was poisoned, or `deadline` (for its pump: never the fast path); whether
    /// one of those but the deadline happened.
    pub(crate) fn wait_reader_since(&self, seen: u32, deadline: Instant) -> bool {
        self.wait_as_writer(deadline, || {
            self.reader_looks() != seen || self.readers_wait()
        })
    }

    /// Waits on the writers' event until `done`, its readers retired or it was poisoned, or
    /// `deadline`: whether one of those but the deadline happened (for a socket pump).
    fn wait_as_writer(&self, deadline: Instant, done: impl Fn() -> bool) -> bool {
        let done = || done() || self.flags() & (READERS_RETIRED | POISONED) != 0;
        wait::wait_any(
            &[&self.hdr.tx.0],
            Some(deadline),
            || done().then_some(()),
            || false,
        )
        .is_some()
    }

    /// A read that found no message at once, or an input guard that looks: counted, and
    /// the pump that watches (asleep among the writers) woken, if this channel is watched.
    #[inline]
    pub(crate) fn reader_came(&self) {
        if self.flags() & READERS_WATCHED != 0 {
            self.count_look();
        }
    }

    #[cold]
    #[inline(never)]
    fn count_look(&self) {
        self.hdr.state.0.looks.fetch_add(1, Ordering::SeqCst);
        self.hdr.tx.0.notify_all();
    }

    /// How many nanoseconds reads and input guards of this watched channel spent waiting for
    /// a message (wrapping; reads that found one at once add nothing).
    pub(crate) fn readers_waited(&self) -> u64 {
        self.hdr.state.0.waited.load(Ordering::Relaxed)
    }

    /// When a read or a select with an input guard on this channel starts to wait: now
    /// (`CLOCK_MONOTONIC` ns), if the channel's readers are watched (never the fast path).
    pub(crate) fn reader_wait_starts(&self) -> Option<u64> {
        (self.flags() & READERS_WATCHED != 0).then(sys::monotonic_ns)
    }

    /// A wait that [`reader_wait_starts`](Self::reader_wait_starts) timed ended: it counts in
    /// [`readers_waited`](Self::readers_waited).
    pub(crate) fn reader_wait_ends(&self, since: Option<u64>) {
        if let Some(t) = since {
            let waited = sys::monotonic_ns().saturating_sub(t);
            self.hdr.state.0.waited.fetch_add(waited, Ordering::Relaxed);
        }
    }

    /// Whether a reader sleeps waiting for a message (a socket pump about to hand one to its
    /// user publishes its wait only when none does).
    pub(crate) fn reader_asleep(&self) -> bool {
        self.hdr.rx.0.has_sleepers()
    }

    /// The futex word a reader (`write` false) or a writer of this channel sleeps on: for a
    /// socket host that publishes its wait on behalf of a remote end (never the fast path).
    pub(crate) fn side_word(&self, write: bool) -> &AtomicU32 {
        if write {
            self.hdr.tx.0.word()
        } else {
            self.hdr.rx.0.word()
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        let h = self.hdr;
        std::str::from_utf8(&h.name[..h.name_len as usize]).unwrap_or("<invalid name>")
    }

    pub(crate) fn type_name(&self) -> &'static str {
        let h = self.hdr;
        std::str::from_utf8(&h.type_name[..h.type_name_len as usize]).unwrap_or("<invalid>")
    }

    pub(crate) fn type_fp(&self) -> u64 {
        self.hdr.type_fp
    }

    pub(crate) fn capacity(&self) -> usize {
        self.hdr.capacity as usize
    }

    #[inline]
    fn flags(&self) -> u32 {
        self.hdr.state.0.flags.load(Ordering::Acquire)
    }

    /// Counts a new writer (`true`) or reader (`false`) end, which holds the channel once.
    pub(crate) fn join(&self, writer: bool) {
        self.join_side(writer);
        self.hold();
    }

    /// Counts a new writer or reader end without holding the channel once more.
    pub(crate) fn join_side(&self, writer: bool) {
        let s = &self.hdr.state.0;
        if writer {
            s.writers.fetch_add(1, Ordering::AcqRel);
        } else {
            s.readers.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Retires one writer (`true`) or reader (`false`) end (the last one retires that side)
    /// and lets go of the channel once. The caller must not use this `Chan` afterwards.
    pub(crate) fn retire(self, writer: bool) {
        self.retire_side(writer);
        self.release();
    }

    /// Retires one writer or reader end without letting go of the channel.
    pub(crate) fn retire_side(&self, writer: bool) {
        let s = &self.hdr.state.0;
        let (count, flag) = if writer {
            (&s.writers, WRITERS_RETIRED)
        } else {
            (&s.readers, READERS_RETIRED)
        };
        if count.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.flags.fetch_or(flag, Ordering::AcqRel);
            self.wake_everyone();
        }
        trace::retired(self.name(), writer);
    }

    /// Records that process `pid` (`name`) died holding an end of this channel. Readers drain
    /// what was written, then get `PeerDied`; writers get it at once.
    pub(crate) fn mark_peer_died(&self, pid: u32, name: &str) {
        let d = &self.hdr.dead.0;
        if d.pid
            .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let n = name.len().min(MAX_DEAD_NAME);
            // SAFETY: winning the CAS on `pid` makes us the only writer of the name, and
            // readers read it only after `name_len` is published with Release.
            unsafe { (&mut *d.name.get())[..n].copy_from_slice(&name.as_bytes()[..n]) };
            d.name_len.store(n as u32, Ordering::Release);
        }
        let _ = d.at.compare_exchange(
            0,
            sys::monotonic_ns().max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.hdr.state.0.flags.fetch_or(PEER_DIED, Ordering::AcqRel);
        self.wake_everyone();
    }

    /// On a channel whose peer died, while messages given back may still come
    /// ([`more_may_come_back`](Self::more_may_come_back)) and the death was marked less than
    /// [`HELD_SLOT_GRACE`] ago: when that grace ends. Readers that drained the channel wait
    /// for those messages until then, not for ever: a slot's holder may have died with it.
    #[cold]
    pub(crate) fn give_back_grace(&self) -> Option<Instant> {
        let at = self.hdr.dead.0.at.load(Ordering::Acquire);
        if at == 0 || !self.more_may_come_back() {
            return None;
        }
        let left = (HELD_SLOT_GRACE.as_nanos() as u64)
            .checked_sub(sys::monotonic_ns().saturating_sub(at))
            .filter(|&ns| ns > 0)?;
        Some(Instant::now() + Duration::from_nanos(left))
    }

    /// The error for an operation on a channel whose peer died.
    pub(crate) fn peer_died(&self) -> ChannelError {
        let d = &self.hdr.dead.0;
        let len = d.name_len.load(Ordering::Acquire) as usize;
        // SAFETY: `len` bytes of the name were written before `name_len` was published.
        let name = unsafe { &(&*d.name.get())[..len.min(MAX_DEAD_NAME)] };
        let (pid, process) = (
            d.pid.load(Ordering::Acquire),
            String::from_utf8_lossy(name).into_owned(),
        );
        trace::peer_died(self.name(), &process, pid);
        ChannelError::PeerDied {
            channel: self.name().to_string(),
            pid,
            process,
        }
    }

    /// Frees the slot at `head` if it is still claimed but unpublished: after a writer died
    /// between claiming a slot and publishing it, the slot would otherwise block the ring.
    fn skip_unpublished(&self, head: u64) {
        let (index, lap) = self.positions(head);
        let slot = &self.slots[index];
        if slot.stamp.load(Ordering::Acquire) != lap {
            return;
        }
        let new_head = self.next_pos(head);
        if self
            .hdr
            .head
            .0
            .compare_exchange(head, new_head, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            slot.stamp
                .store(lap.wrapping_add(self.hdr.one_lap), Ordering::Release);
        }
    }

    /// Poisons the channel: every blocked and later operation fails with `Poisoned`.
    pub(crate) fn poison(&self) {
        let before = self.hdr.state.0.flags.fetch_or(POISONED, Ordering::AcqRel);
        self.wake_everyone();
        if before & POISONED == 0 {
            trace::poisoned(self.name());
        }
    }

    fn wake_everyone(&self) {
        self.hdr.rx.0.notify_all();
        self.hdr.tx.0.notify_all();
    }

    #[inline]
    fn positions(&self, pos: u64) -> (usize, u64) {
        let one_lap = self.hdr.one_lap;
        ((pos & (one_lap - 1)) as usize, pos & !(one_lap - 1))
    }

    #[inline]
    fn next_pos(&self, pos: u64) -> u64 {
        let (index, lap) = self.positions(pos);
        if (index as u64) + 1 < self.hdr.ring_len {
            pos + 1
        } else {
            lap.wrapping_add(self.hdr.one_lap)
        }
    }

    /// Whether this is a rendezvous channel.
    pub(crate) fn is_rendezvous(&self) -> bool {
        self.hdr.capacity == 0
    }

    /// The channel's read and write events (readers sleep on `rx`, writers on `tx`).
    pub(crate) fn events(&self) -> (&'static Event, &'static Event) {
        (&self.hdr.rx.0, &self.hdr.tx.0)
    }

    pub(crate) fn state_flags(&self) -> u32 {
        self.flags()
    }

    /// How many messages readers have taken from the ring so far (positions past, counted
    /// over its laps): what a picture of the network calls "messages passed".
    pub(crate) fn passed(&self) -> u64 {
        let (index, lap) = self.positions(self.hdr.head.0.load(Ordering::SeqCst));
        (lap / self.hdr.one_lap) * self.hdr.ring_len + index as u64
    }

    /// Whether the ring probably holds a message (a hint for waiting; `try_pop` decides).
    pub(crate) fn looks_nonempty(&self) -> bool {
        self.hdr.head.0.load(Ordering::SeqCst) != self.hdr.tail.0.load(Ordering::SeqCst)
    }

    /// Whether the ring probably has room (a hint for waiting; `try_push` decides).
    pub(crate) fn looks_writable(&self) -> bool {
        let tail = self.hdr.tail.0.load(Ordering::SeqCst);
        let (index, lap) = self.positions(tail);
        self.slots[index].stamp.load(Ordering::SeqCst) == lap
    }

    /// How many positions lie from `from` to `to` (both positions of this ring, `to` not before
    /// `from`).
    fn distance(&self, from: u64, to: u64) -> u64 {
        let (fi, fl) = self.positions(from);
        let (ti, tl) = self.positions(to);
        let laps = tl.wrapping_sub(fl) / self.hdr.one_lap;
        (laps * self.hdr.ring_len + ti as u64).wrapping_sub(fi as u64)
    }

    /// Whether `head` and `tail` say the ring has room (a slot may still be being emptied).
    fn looks_writable_by_position(&self) -> bool {
        let tail = self.hdr.tail.0.load(Ordering::SeqCst);
        let head = self.hdr.head.0.load(Ordering::SeqCst);
        head.wrapping_add(self.hdr.one_lap) != tail
    }

    /// Whether a selecting writer (`reads == false`) or reader offers on this channel.
    pub(crate) fn has_offers(&self, reads: bool) -> bool {
        let o = &self.hdr.offers.0;
        if reads {
            o.nreads.load(Ordering::SeqCst) > 0
        } else {
            o.nwrites.load(Ordering::SeqCst) > 0
        }
    }

    /// Whether a selecting writer (`reads == false`) or reader other than waiter `me` (see
    /// `waiter::owner`) offers on this channel: a select must never wait for itself.
    pub(crate) fn has_offers_from_others(&self, reads: bool, me: u64) -> bool {
        if !self.has_offers(reads) {
            return false;
        }
        let (table, _) = self.offer_table(reads);
        table.iter().any(|slot| {
            let w = slot.load(Ordering::SeqCst);
            w != 0 && waiter::owner(w) != me
        })
    }

    fn offer_table(&self, reads: bool) -> (&'static [AtomicU64; OFFERS], &'static AtomicU32) {
        let o: &'static Offers = &self.hdr.offers.0;
        if reads {
            (&o.reads, &o.nreads)
        } else {
            (&o.writes, &o.nwrites)
        }
    }

    /// Whether `reads`' table has room for another offer (a hint for a process that found
    /// it full and waits for room).
    pub(crate) fn offer_room(&self, reads: bool) -> bool {
        let (_, n) = self.offer_table(reads);
        (n.load(Ordering::SeqCst) as usize) < OFFERS
    }

    /// What a waiter record says its guard waits on for an offer in `reads`' table (see
    /// [`Offer`]).
    pub(crate) fn offer_key(&self, reads: bool) -> u64 {
        (self.key() << 2) | if reads { 1 } else { 2 }
    }

    /// The event the side of `reads`' table sleeps on (readers on `rx`, writers on `tx`).
    fn offer_side(&self, reads: bool) -> &Event {
        if reads {
            &self.hdr.rx.0
        } else {
            &self.hdr.tx.0
        }
    }

    /// One offer fewer in `reads`' table (its slot was just emptied): if the table was full,
    /// wake its side, where processes that found it full wait for room.
    fn offer_removed(&self, reads: bool, n: &AtomicU32) {
        if n.fetch_sub(1, Ordering::SeqCst) as usize == OFFERS {
            self.offer_side(reads).notify_all();
        }
    }

    /// Posts an offer; `false` if the table is full (the caller then waits for room, see
    /// [`Offers`]).
    pub(crate) fn post_offer(&self, reads: bool, word: u64) -> bool {
        let (table, n) = self.offer_table(reads);
        for slot in table {
            if slot
                .compare_exchange(0, word, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                n.fetch_add(1, Ordering::SeqCst);
                if !reads {
                    // Blocked readers, plain or selecting, claim writers' offers: tell them
                    // there is one.
                    self.hdr.rx.0.notify_all();
                } else if !self.offer_room(false) {
                    // Selecting writers that found their table full wait for a reader's
                    // offer (or room): tell them there is one.
                    self.hdr.tx.0.notify_all();
                }
                return true;
            }
        }
        false
    }

    /// Withdraws an offer, unless a claimer already removed it.
    pub(crate) fn withdraw_offer(&self, reads: bool, word: u64) {
        let (table, n) = self.offer_table(reads);
        for slot in table {
            if slot.load(Ordering::Relaxed) == word
                && slot
                    .compare_exchange(word, 0, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                self.offer_removed(reads, n);
                return;
            }
        }
    }

    /// Claims one offer of a selecting reader (`reads`) or writer with `claim`, which tries
    /// the CAS on the offering waiter; removes stale offers on the way. Returns the offer
    /// claimed, if one was; the claimed side is woken.
    pub(crate) fn claim_offer(
        &self,
        reads: bool,
        mut claim: impl FnMut(Offer) -> Claim,
    ) -> Option<Handoff> {
        let (table, n) = self.offer_table(reads);
        if n.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let key = self.offer_key(reads);
        for slot in table {
            let word = slot.load(Ordering::SeqCst);
            if word == 0 {
                continue;
            }
            let outcome = claim(Offer { word, key });
            if matches!(outcome, Claim::Won(_) | Claim::Stale)
                && slot
                    .compare_exchange(word, 0, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                self.offer_removed(reads, n);
            }
            if let Claim::Won(h) = outcome {
                self.offer_side(reads).notify_all();
                return Some(h);
            }
        }
        None
    }

    /// Tells the selecting writer whose offer `word` we won that its message was taken, so
    /// its rendezvous completes.
    pub(crate) fn release_offer(&self, word: u64) {
        if let Ok(arena) = Arena::get() {
            waiter::release(arena, word);
        }
        self.hdr.tx.0.notify_all();
    }

    /// Tries to put a message in the ring; returns its slot index and (full) stamp on success.
    #[inline(always)]
    pub(crate) fn try_push(&self, msg: &Outgoing<'_>) -> Option<(usize, u64)> {
        let tail_a = &self.hdr.tail.0;
        let mut tail = tail_a.load(Ordering::Relaxed);
        let mut spins = 0u32;
        loop {
            let (index, lap) = self.positions(tail);
            let slot = &self.slots[index];
            let stamp = slot.stamp.load(Ordering::Acquire);
            if lap == stamp {
                let new_tail = self.next_pos(tail);
                match tail_a.compare_exchange_weak(
                    tail,
                    new_tail,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS on `tail` for this stamp gives this writer
                        // the slot's contents until it stores the new stamp.
                        unsafe {
                            match msg {
                                Outgoing::Inline { buf, len } => {
                                    slot.kind.store(KIND_INLINE, Ordering::Relaxed);
                                    *slot.len.get() = *len as u32;
                                    copy_payload(&mut *slot.payload.get(), buf, *len);
                                }
                                Outgoing::Block { offset, len } => {
                                    slot.kind.store(KIND_BLOCK, Ordering::Relaxed);
                                    *slot.len.get() = 16;
                                    let p = &mut *slot.payload.get();
                                    p[..8].copy_from_slice(&offset.to_le_bytes());
                                    p[8..16].copy_from_slice(&len.to_le_bytes());
                                }
                            }
                        }
                        slot.stamp.store(lap + 1, Ordering::Release);
                        return Some((index, lap + 1));
                    }
                    Err(t) => tail = t,
                }
            } else if stamp.wrapping_add(self.hdr.one_lap) == lap + 1 {
                // Full, or a reader is still emptying this slot (it may have died doing so):
                // nothing to do now; the caller's wait loop polls again.
                return None;
            } else {
                // A reader is emptying this slot. Do not wait for it here: it may have died
                // mid-read; the caller's wait loop retries.
                spins += 1;
                if spins > IN_PROGRESS_SPINS {
                    return None;
                }
                std::hint::spin_loop();
                tail = tail_a.load(Ordering::Relaxed);
            }
        }
    }

    /// Tries to take a message out of the ring.
    pub(crate) fn try_pop(&self) -> Option<Incoming> {
        let mut buf = [0u8; INLINE];
        let (m, taken) = self.try_pop_at(true, &mut buf)?;
        if trace::on() {
            trace::took(self.name(), self.message_id(taken), 0);
        }
        Some(m.into_incoming(&buf))
    }

    /// The message trace's id of the message taken from `taken` (see `trace`).
    fn message_id(&self, taken: Taken) -> u64 {
        match taken {
            Taken::Slot { head, .. } => trace::slot_message(self.key(), head),
            Taken::Offer { word, round } => waiter::message_id(word, round),
        }
    }

    /// Tries to take a message out of the ring; without `ack` the slot stays full (its writer
    /// keeps waiting) until [`ack`](Self::ack) is called with the returned position.
    /// Inline bytes are copied to `buf`.
    // Always inlined, as are `read_at`, `read_into` and `try_push`: returned through memory,
    // the (Took, Taken) pair costs store-forwarding stalls on every message, and a small
    // change elsewhere (the trace hooks) once made the compiler stop inlining these and
    // halved buffered throughput (pycsp-bench "buffered u64 one way", 34 M -> 16 M msg/s).
    #[inline(always)]
    fn try_pop_at(&self, ack: bool, buf: &mut [u8; INLINE]) -> Option<(Took, Taken)> {
        let head_a = &self.hdr.head.0;
        let mut head = head_a.load(Ordering::Relaxed);
        loop {
            let (index, lap) = self.positions(head);
            let slot = &self.slots[index];
            let stamp = slot.stamp.load(Ordering::Acquire);
            if lap + 1 == stamp {
                let new_head = self.next_pos(head);
                match head_a.compare_exchange_weak(
                    head,
                    new_head,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SeqCst, after the SeqCst CAS on `head`: a writer that withdraws its
                        // message marks it, then looks at `head` (see `withdraw`). On x86 a
                        // plain load.
                        let kind = slot.kind.load(Ordering::SeqCst);
                        if kind & CANCELLED != 0 {
                            self.skip_withdrawn(slot, head);
                            head = head_a.load(Ordering::Relaxed);
                            continue;
                        }
                        // SAFETY: winning the CAS on `head` for a full slot gives this reader
                        // the slot's contents until it stores the empty stamp.
                        let msg = unsafe {
                            let len = (*slot.len.get() as usize).min(INLINE);
                            let p = &*slot.payload.get();
                            if kind & KIND_MASK == KIND_BLOCK {
                                Took::Block {
                                    offset: u64::from_le_bytes(p[..8].try_into().unwrap()),
                                    len: u64::from_le_bytes(p[8..16].try_into().unwrap()),
                                }
                            } else {
                                copy_payload(buf, p, len);
                                Took::Inline(len)
                            }
                        };
                        if ack {
                            slot.stamp
                                .store(lap.wrapping_add(self.hdr.one_lap), Ordering::Release);
                        }
                        let taken = Taken::Slot { index, head };
                        return Some((msg, taken));
                    }
                    Err(h) => head = h,
                }
            } else if stamp == lap {
                // Empty, or a writer is still filling this slot. Either way there is nothing
                // to take now, and the caller's wait loop polls again. Not reading `tail` here
                // keeps its cache line with the writer: a blocked reader then polls one line,
                // the slot the next message lands in. (Sleepers check `tail` before sleeping;
                // a dead writer's slot is skipped by `read`.)
                return None;
            } else {
                head = self.head_moved(head)?;
            }
        }
    }

    /// The slot at `head` is neither full for its lap nor empty: another reader took it and
    /// moved `head`, or it is still full from the lap before, its reader not done with it (a
    /// socket host keeps a message it sent to a remote reader taken until its `Ack`; a reader
    /// may have died mid-read). Spins a little for `head` to move on (the new `head`), then
    /// lets the caller's wait loop poll again (`None`): it keeps its deadline. Out of line,
    /// so that the fast path carries no spin count.
    #[cold]
    #[inline(never)]
    fn head_moved(&self, head: u64) -> Option<u64> {
        for _ in 0..IN_PROGRESS_SPINS {
            std::hint::spin_loop();
            let now = self.hdr.head.0.load(Ordering::Relaxed);
            if now != head {
                return Some(now);
            }
        }
        None
    }

    /// Whether a slot of this buffered ring is still full though no message waits in it
    /// (`head` is at `tail`): a reader took it without emptying it (a socket host's reader
    /// until its remote end acknowledges), or died reading it. A full stamp is a lap plus one.
    #[cold]
    fn holds_taken_slots(&self) -> bool {
        let one_lap = self.hdr.one_lap;
        !self.is_rendezvous()
            && self
                .slots
                .iter()
                .any(|s| s.stamp.load(Ordering::Acquire) & (one_lap - 1) == 1)
    }

    /// Whether messages given back may still come: slots are taken and not emptied, or a
    /// message whose slot was emptied is being written back.
    #[cold]
    pub(crate) fn more_may_come_back(&self) -> bool {
        self.hdr.state.0.giving_back.load(Ordering::SeqCst) != 0 || self.holds_taken_slots()
    }

    /// Whether messages given back may still come to `reader`:
    /// [`more_may_come_back`](Self::more_may_come_back), leaving out the slots it holds
    /// itself.
    #[cold]
    #[inline(never)]
    fn may_come_back(&self, reader: Reader) -> bool {
        match reader {
            Reader::Plain => self.more_may_come_back(),
            Reader::Host { held } => {
                self.hdr.state.0.giving_back.load(Ordering::SeqCst) != 0
                    || self.taken_slots() > held
            }
            Reader::Pump => false,
        }
    }

    /// How many slots [`holds_taken_slots`](Self::holds_taken_slots) finds.
    #[cold]
    fn taken_slots(&self) -> usize {
        let one_lap = self.hdr.one_lap;
        if self.is_rendezvous() {
            return 0;
        }
        self.slots
            .iter()
            .filter(|s| s.stamp.load(Ordering::Acquire) & (one_lap - 1) == 1)
            .count()
    }

    /// A reader claimed the slot at `head` and found its message withdrawn: it takes nothing.
    /// The slot is emptied by whichever of the reader and the leaving writer comes second.
    #[cold]
    #[inline(never)]
    fn skip_withdrawn(&self, slot: &Slot, head: u64) {
        if slot.kind.fetch_or(SKIPPED, Ordering::AcqRel) & GONE != 0 {
            let (_, lap) = self.positions(head);
            slot.stamp
                .store(lap.wrapping_add(self.hdr.one_lap), Ordering::Release);
            self.hdr.tx.0.notify_all();
        }
    }

    /// The position of the newest slot written (the one before `tail`).
    pub(crate) fn newest_position(&self) -> u64 {
        self.prev_pos(self.hdr.tail.0.load(Ordering::SeqCst))
    }

    /// The position before `pos`.
    pub(crate) fn prev_pos(&self, pos: u64) -> u64 {
        let (index, lap) = self.positions(pos);
        if index > 0 {
            pos - 1
        } else {
            lap.wrapping_sub(self.hdr.one_lap) + self.hdr.ring_len - 1
        }
    }

    /// Takes back the message of this buffered channel at `pos`, written by the caller (its
    /// only writer: a socket pump's proxy), unless a reader took it: `true` if it is taken
    /// back (a reader that claims the slot skips it; its block is freed here). Called newest
    /// first, position by position, until it says `false`, it takes back the last messages
    /// written and leaves exactly the first ones to the readers, whatever they read
    /// meanwhile: popping from the head, as a reader does, could take back an older message
    /// while a reader took a newer one (see `net/client.rs`, `Pump::revoke`).
    pub(crate) fn retract(&self, pos: u64) -> bool {
        let (index, lap) = self.positions(pos);
        let slot = &self.slots[index];
        if slot.stamp.load(Ordering::Acquire) != lap + 1 {
            return false; // taken and emptied (or never written)
        }
        // Dekker with a reader's claim, as in `withdraw`: we mark, then look at `head`; a
        // reader moves `head`, then looks at the mark.
        slot.kind.fetch_or(CANCELLED, Ordering::SeqCst);
        let head = self.hdr.head.0.load(Ordering::SeqCst);
        if self.distance(head, pos) < self.hdr.ring_len {
            // No reader claimed it: every reader that does skips it (the second of the two
            // empties the slot).
            self.free_slot_block(index);
            if slot.kind.fetch_or(GONE, Ordering::AcqRel) & SKIPPED != 0 {
                self.empty_returned(index, pos);
            }
            return true;
        }
        // A reader claimed it: it took it, or saw the mark and skipped it, leaving the slot to
        // us. A reader of this process decides at once; bounded for one that never does.
        let deadline = Instant::now() + Duration::from_millis(100);
        loop {
            if slot.stamp.load(Ordering::Acquire) != lap + 1 {
                return false;
            }
            if slot.kind.load(Ordering::Acquire) & SKIPPED != 0 {
                self.free_slot_block(index);
                self.empty_returned(index, pos);
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// A rendezvous write placed at `pos` (full stamp `stamp`) reached its deadline, or its
    /// channel failed, with its message not taken: withdraw it, unless a reader is already
    /// taking it. Exactly one of the two happens: `Ok` (taken) or `why` (withdrawn; nobody
    /// read it, and a block it names is the writer's again).
    #[cold]
    #[inline(never)]
    fn withdraw(
        &self,
        index: usize,
        pos: u64,
        stamp: u64,
        why: ChannelError,
    ) -> Result<u64, WriteError> {
        let slot = &self.slots[index];
        let since = Instant::now();
        let withdrawn = || WriteError {
            error: why.clone(),
            placed: false,
        };
        let release = || {
            slot.stamp.store(
                self.positions(pos).1.wrapping_add(self.hdr.one_lap),
                Ordering::Release,
            );
            self.hdr.tx.0.notify_all();
        };
        // Dekker with a reader's claim: we mark, then look at `head`; a reader moves `head`,
        // then looks at the mark (both SeqCst). If `head` has not passed our slot, every
        // reader that claims it will see the mark.
        slot.kind.fetch_or(CANCELLED, Ordering::SeqCst);
        let head = self.hdr.head.0.load(Ordering::SeqCst);
        if self.distance(head, pos) < self.hdr.ring_len {
            if slot.kind.fetch_or(GONE, Ordering::AcqRel) & SKIPPED != 0 {
                release();
            }
            return Err(withdrawn());
        }
        // A reader claimed the slot: it either takes the message (and empties the slot) or saw
        // the mark and skipped it (and leaves the slot to us). It decides at once, except a
        // socket pump that offers the message to its host: it sleeps on this event meanwhile
        // and now asks for it back.
        self.hdr.tx.0.notify_all();
        let mut spins = 0u32;
        loop {
            let now = slot.stamp.load(Ordering::Acquire);
            if now == stamp + RETURNED_STAMP {
                // A socket host that took it gave it back: not delivered.
                self.empty_returned(index, pos);
                return Err(withdrawn());
            }
            if now != stamp {
                return Ok(pos);
            }
            // The slot is still ours (its stamp cannot come back), so its `kind` is ours.
            if slot.kind.load(Ordering::Acquire) & SKIPPED != 0
                && slot.stamp.load(Ordering::Acquire) == stamp
            {
                release();
                return Err(withdrawn());
            }
            // A reader that claimed the slot but has not decided: it died deciding, or it holds
            // the message for a confirmation that a failed channel will not bring (a socket
            // host's reader). Poison is immediate; otherwise give it a moment. The message may
            // then have been taken: the one case where an error does not say "not delivered".
            let f = self.flags();
            let failed = f & PEER_DIED != 0 || !matches!(why, ChannelError::Timeout);
            // A socket host's remote reader that holds it and does not answer (stopped, or
            // hung, with its connection up) is not waited for longer than a connection may
            // leave data unacknowledged: the write is uncertain, as when it died.
            let silent = slot.kind.load(Ordering::Acquire) & FAR_READER != 0
                && since.elapsed() >= HELD_ANSWER_WAIT;
            if f & POISONED != 0 || (failed && spins > 1 << 16) || silent {
                if slot.kind.fetch_or(GONE, Ordering::SeqCst) & RETURNED != 0 {
                    // A socket host is giving it back (it stores the stamp next): it was
                    // not delivered, and the slot is ours to empty.
                    while slot.stamp.load(Ordering::Acquire) == stamp {
                        std::thread::yield_now();
                    }
                    self.empty_returned(index, pos);
                    return Err(withdrawn());
                }
                let error = if f & POISONED != 0 {
                    ChannelError::Poisoned
                } else if f & PEER_DIED != 0 {
                    self.peer_died()
                } else {
                    why.clone()
                };
                return Err(WriteError {
                    error,
                    placed: true,
                });
            }
            if slot.kind.load(Ordering::Acquire) & HELD != 0 {
                // A socket host holds it for its remote reader: the decision comes with that
                // reader's answer (`Ack`, or the message given back), a round trip or more
                // away, and wakes this event. Asleep meanwhile (it yielded in a loop, a CPU's
                // worth, for as long as the remote reader took); each wait counts as many
                // looks as make the moment above last about as long.
                self.hdr
                    .tx
                    .0
                    .sleep_until(Instant::now() + HELD_RECHECK, || {
                        (slot.stamp.load(Ordering::Acquire) != stamp
                            || slot.kind.load(Ordering::Acquire) & SKIPPED != 0
                            || self.flags() & (POISONED | PEER_DIED) != 0)
                            .then_some(())
                    });
                spins += HELD_RECHECK_LOOKS;
                continue;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    #[inline]
    fn ack_slot(&self, t: Taken) {
        match t {
            Taken::Slot { index, head } => {
                let (_, lap) = self.positions(head);
                self.slots[index]
                    .stamp
                    .store(lap.wrapping_add(self.hdr.one_lap), Ordering::Release)
            }
            Taken::Offer { word, .. } => self.release_offer(word),
        }
    }

    /// Empties the slot of a message taken by [`read_deferred`](Self::read_deferred), or
    /// releases the selecting writer that offered it: its writer's rendezvous completes now.
    pub(crate) fn ack(&self, t: Taken) {
        self.ack_slot(t);
        self.hdr.tx.0.notify_all();
        // Readers of a channel whose writers retired wait while slots are taken (their
        // messages may come back): this one will not.
        self.hdr.rx.0.notify_all();
    }

    /// Empties the taken slot `t` whose message goes back into the channel next (a socket
    /// host gives back what a remote reader did not take, and the ring is full of taken
    /// slots, this one among them): until the guard is dropped, after the copy is written,
    /// readers that find a dead peer's channel drained wait for it, as they wait while slots
    /// are taken (emptied first, the message was in no slot for a moment, and such a reader
    /// reported the death without it).
    pub(crate) fn empty_for_give_back(&self, t: Taken) -> GivingBack<'_> {
        self.hdr.state.0.giving_back.fetch_add(1, Ordering::SeqCst);
        self.ack(t);
        GivingBack(self)
    }

    /// Why this channel refuses writes now, if it does (poison, a dead peer, no readers).
    ///
    /// Retirement is final: once every writer has retired, a writer that joins later is
    /// refused (its readers may already have seen `Retired`), except for a message given back
    /// (`back`), which was written before. A message given back is taken after a peer died
    /// too, while readers remain: it was in the channel's buffer, and readers read what the
    /// buffer holds before they learn of the death (a socket host gives back what a dead
    /// remote reader had asked for ahead, perhaps after its death was marked).
    #[inline]
    fn write_refused(&self, back: bool) -> Option<ChannelError> {
        let f = self.flags();
        if f & (POISONED | PEER_DIED | READERS_RETIRED | WRITERS_RETIRED) == 0 {
            return None;
        }
        if f & POISONED != 0 {
            Some(ChannelError::Poisoned)
        } else if f & PEER_DIED != 0 && !(back && f & READERS_RETIRED == 0) {
            Some(self.peer_died())
        } else if f & READERS_RETIRED != 0 || !back {
            Some(ChannelError::Retired)
        } else {
            None
        }
    }

    /// Writes a message, blocking while the ring is full and, for a rendezvous channel, until
    /// a reader has taken it; a rendezvous message not taken by `deadline` is withdrawn
    /// (`Timeout`, not placed). On error the message was not delivered, except that a
    /// rendezvous write interrupted by poison may have been taken.
    #[inline]
    pub(crate) fn write(
        &self,
        msg: &Outgoing<'_>,
        deadline: Option<Instant>,
    ) -> Result<(), WriteError> {
        let t0 = trace::begin();
        let pos = self.write_as(msg, deadline, false)?;
        if t0 != 0 {
            trace::wrote(self.name(), trace::slot_message(self.key(), pos), t0);
        }
        Ok(())
    }

    /// Writes again a message that a reader gave back (a socket host puts back what a remote
    /// reader did not take): as [`write`](Self::write), also after every writer retired.
    pub(crate) fn write_back(
        &self,
        msg: &Outgoing<'_>,
        deadline: Option<Instant>,
    ) -> Result<(), WriteError> {
        let t0 = trace::begin();
        let pos = self.write_as(msg, deadline, true)?;
        if t0 != 0 {
            trace::wrote(self.name(), trace::slot_message(self.key(), pos), t0);
        }
        Ok(())
    }

    /// Writes a message as [`write`](Self::write) does, which is also withdrawn (`Timeout`,
    /// not placed) as soon as `stop` is set, by `deadline` at the latest: another thread sets
    /// it, then calls [`wake_writers`](Self::wake_writers). A socket host offers a remote
    /// select's message so, placed once, while a thread of its own watches the connection for
    /// the select's `Withdraw`.
    pub(crate) fn write_until(
        &self,
        msg: &Outgoing<'_>,
        deadline: Option<Instant>,
        stop: &AtomicBool,
    ) -> Result<(), WriteError> {
        let t0 = trace::begin();
        let pos = self.write_stoppable(msg, deadline, false, Some(stop))?;
        if t0 != 0 {
            trace::wrote(self.name(), trace::slot_message(self.key(), pos), t0);
        }
        Ok(())
    }

    /// Wakes this channel's waiting writers, to look again at what they wait for (a `stop`
    /// of [`write_until`](Self::write_until) that was set).
    pub(crate) fn wake_writers(&self) {
        self.hdr.tx.0.notify_all();
    }

    /// The write; returns the position of the slot the message went through.
    #[inline(always)]
    fn write_as(
        &self,
        msg: &Outgoing<'_>,
        deadline: Option<Instant>,
        back: bool,
    ) -> Result<u64, WriteError> {
        self.write_stoppable(msg, deadline, back, None)
    }

    /// [`write_as`](Self::write_as), given up when `stop` is set (see
    /// [`write_until`](Self::write_until)).
    #[inline(always)]
    fn write_stoppable(
        &self,
        msg: &Outgoing<'_>,
        deadline: Option<Instant>,
        back: bool,
        stop: Option<&AtomicBool>,
    ) -> Result<u64, WriteError> {
        let stopped = || stop.is_some_and(|s| s.load(Ordering::SeqCst));
        let not_placed = |error| WriteError {
            error,
            placed: false,
        };
        let tx = &self.hdr.tx.0;
        loop {
            // Fast path: nothing refuses the write and a slot is free now.
            let (index, stamp) = match self.write_refused(back) {
                None => match self.try_push(msg) {
                    Some(placed) => placed,
                    None => self
                        .write_wait(msg, deadline, back, stop)
                        .map_err(not_placed)?,
                },
                Some(e) => return Err(not_placed(e)),
            };
            self.hdr.rx.0.notify_one();
            // The slot's position: its lap (the stamp less one) plus its index.
            let pos = stamp - 1 + index as u64;
            if self.hdr.capacity != 0 {
                return Ok(pos);
            }
            // Rendezvous: wait until a reader has emptied our slot (`false`), or a socket
            // host that took the message gave it back to us (`true`).
            let slot = &self.slots[index];
            let taken = tx.wait_until_parked(
                deadline,
                Waiting {
                    kind: Kind::Write,
                    on: &[(self.key(), true, &|| self.name(), tx)],
                    hand_over: true,
                    far: None,
                },
                || {
                    let now = slot.stamp.load(Ordering::Acquire);
                    if now != stamp {
                        return Some(Ok(now == stamp + RETURNED_STAMP));
                    }
                    if stopped() {
                        return Some(Err(ChannelError::Timeout));
                    }
                    self.write_refused(back).map(Err)
                },
                // Busy while a reader has claimed our slot (moved `head` past it) and not yet
                // emptied it; not when `head` waits behind us (at a withdrawn message that no
                // reader has skipped yet), nor while the slot is `HELD` (a socket pump keeps
                // the message at its host, or a socket host for its remote reader).
                || {
                    let head = self.hdr.head.0.load(Ordering::SeqCst);
                    head != pos
                        && self.distance(pos, head) <= self.hdr.ring_len
                        && slot.kind.load(Ordering::SeqCst) & HELD == 0
                },
                || Err(ChannelError::Deadlock),
            );
            match taken {
                Some(Ok(false)) => return Ok(pos),
                // Given back, not taken: write it again, as if no reader had come yet (unless
                // the deadline passed meanwhile).
                Some(Ok(true)) => {
                    self.empty_returned(index, pos);
                    if stopped() || deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(not_placed(ChannelError::Timeout));
                    }
                }
                // The channel failed (poison, a dead peer, every reader retired) with the
                // message not taken: withdraw it, so that an error always means "not
                // delivered".
                Some(Err(error)) => return self.withdraw(index, pos, stamp, error),
                // The deadline passed with the message not taken.
                None => return self.withdraw(index, pos, stamp, ChannelError::Timeout),
            }
        }
    }

    /// Empties the slot at `pos` whose message is this writer's again and wakes the writers:
    /// a socket host gave it back (its stamp says so; the writer writes it again, or gives up
    /// on it), or the writer took it back ([`retract`](Self::retract)).
    #[cold]
    #[inline(never)]
    fn empty_returned(&self, index: usize, pos: u64) {
        let (_, lap) = self.positions(pos);
        self.slots[index]
            .stamp
            .store(lap.wrapping_add(self.hdr.one_lap), Ordering::Release);
        self.hdr.tx.0.notify_all();
    }

    /// [`ack`](Self::ack) for a message a socket host took with
    /// [`read_deferred`](Self::read_deferred) and copied out without freeing its block: the
    /// slot, or the selecting writer's record, names the block until then, so that the
    /// message can go back where it was ([`return_to_writer`](Self::return_to_writer),
    /// [`give_back_in_place`](Self::give_back_in_place),
    /// [`give_back_offer`](Self::give_back_offer)). Frees that block first.
    pub(crate) fn ack_kept(&self, t: Taken) {
        self.free_kept(&t);
        self.ack(t);
    }

    /// [`ack_kept`](Self::ack_kept) without the wake-ups: for a run of acknowledgements (a
    /// socket host's remote reader confirms its messages in batches), which
    /// [`acked`](Self::acked) ends. Each acknowledgement woke the writer that sleeps for room,
    /// with a system call for each until it ran: one wakes it, once.
    pub(crate) fn ack_kept_quietly(&self, t: Taken) {
        self.free_kept(&t);
        self.ack_slot(t);
    }

    /// Wakes those that the acknowledgements made by
    /// [`ack_kept_quietly`](Self::ack_kept_quietly) concern, as [`ack`](Self::ack) does.
    pub(crate) fn acked(&self) {
        self.hdr.tx.0.notify_all();
        self.hdr.rx.0.notify_all();
    }

    /// Frees the block of a message taken with its block kept (see
    /// [`ack_kept`](Self::ack_kept)), before its slot is emptied for a copy of it.
    pub(crate) fn free_kept(&self, t: &Taken) {
        match *t {
            Taken::Slot { index, .. } => self.free_slot_block(index),
            Taken::Offer { word, .. } => {
                if let Ok(arena) = Arena::get() {
                    if let Some(offset) = waiter::staged_block(arena, word) {
                        arena.free_block(offset);
                    }
                }
            }
        }
    }

    /// Gives messages a socket host took from this buffered channel's slots for a remote
    /// reader (`taken`, in the order taken, their blocks kept) back where they were, as if
    /// nobody had read them: when they are the last positions read (no other reader read
    /// after them, as with a single reader), `head` moves back to the first, and the next
    /// reads take them again, in order. `false` (nothing changed) otherwise: then they go back
    /// as copies, behind what was written since.
    pub(crate) fn give_back_in_place(&self, taken: &[Taken]) -> bool {
        if self.is_rendezvous() {
            return false;
        }
        let mut positions = Vec::with_capacity(taken.len());
        for t in taken {
            let Taken::Slot { head, .. } = *t else {
                return false;
            };
            positions.push(head);
        }
        let (Some(&first), Some(&last)) = (positions.first(), positions.last()) else {
            return false;
        };
        if positions.windows(2).any(|w| self.next_pos(w[0]) != w[1]) {
            return false;
        }
        // Not held any more once back (the next reader may be a local one).
        for t in taken {
            if let Taken::Slot { index, .. } = *t {
                self.slots[index]
                    .kind
                    .fetch_and(!(HELD | FAR_READER), Ordering::SeqCst);
            }
        }
        // A reader that moves `head` on meanwhile makes this fail: it took a later message.
        // Positions carry their lap, so `head` never has this value again later.
        if self
            .hdr
            .head
            .0
            .compare_exchange(
                self.next_pos(last),
                first,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            return false;
        }
        self.hdr.rx.0.notify_all();
        true
    }

    /// Gives a message taken from a selecting writer's offer back to that writer, not taken
    /// (its block, which the taker did not free, is the writer's again, and its select goes
    /// on); `Err` gives back a `t` taken from a slot.
    pub(crate) fn give_back_offer(&self, t: Taken) -> Result<(), Taken> {
        let Taken::Offer { word, .. } = t else {
            return Err(t);
        };
        if let Ok(arena) = Arena::get() {
            waiter::give_back_offer(arena, word);
        }
        self.hdr.tx.0.notify_all();
        Ok(())
    }

    /// A socket pump that took a writer's message (`t`) offers it to its host and keeps it only
    /// until the writer asks for it back ([`offer_asked_back`](Self::offer_asked_back)). A
    /// select, woken, watches its timeout and its other guards meanwhile. A writer whose slot
    /// it took (`HELD`) sleeps, woken by the pump's [`ack`](Self::ack) or give-back, or by its
    /// own deadline or its channel failing, at which it withdraws the message (see
    /// `withdraw`), instead of looking every millisecond for the decision, as it does while a
    /// local reader copies a message out.
    pub(crate) fn offer_withdrawable(&self, t: &Taken) {
        match *t {
            Taken::Offer { word, .. } => {
                if let Ok(arena) = Arena::get() {
                    waiter::offer_withdrawable(arena, word);
                }
            }
            Taken::Slot { index, .. } => {
                self.slots[index].kind.fetch_or(HELD, Ordering::SeqCst);
            }
        }
        self.hdr.tx.0.notify_all();
    }

    /// Marks the slot a socket host took for its remote reader (`t`) `HELD`: it stays taken
    /// until that reader's `Ack` comes over the network.
    fn mark_held(&self, t: &Taken) {
        if let Taken::Slot { index, .. } = *t {
            self.slots[index]
                .kind
                .fetch_or(HELD | FAR_READER, Ordering::SeqCst);
        }
    }

    /// Whether the slot the next write goes to is still full from the lap before and `HELD`
    /// (its reader, a socket host, waits for its remote reader's `Ack`).
    fn next_slot_held(&self) -> bool {
        let (index, lap) = self.positions(self.hdr.tail.0.load(Ordering::SeqCst));
        let slot = &self.slots[index];
        slot.stamp.load(Ordering::Acquire) != lap && slot.kind.load(Ordering::SeqCst) & HELD != 0
    }

    /// Whether the writer of the message a socket pump took (`t`) asks for it back: a select
    /// (see [`offer_withdrawable`](Self::offer_withdrawable)), or a writer whose deadline
    /// passed or whose channel failed (it marked its slot withdrawn, see `withdraw`; at its
    /// deadline it waits for the pump to give the message back or to say a reader took it).
    pub(crate) fn offer_asked_back(&self, t: &Taken) -> bool {
        match *t {
            Taken::Offer { word, .. } => {
                Arena::get().is_ok_and(|arena| waiter::asked_back(arena, word))
            }
            Taken::Slot { index, .. } => {
                self.slots[index].kind.load(Ordering::SeqCst) & CANCELLED != 0
            }
        }
    }

    /// Whether a message taken from `t` can go back to its writer
    /// ([`return_to_writer`](Self::return_to_writer)): one taken from a slot of a rendezvous
    /// channel, whose writer waits for it.
    pub(crate) fn can_return(&self, t: &Taken) -> bool {
        self.is_rendezvous() && matches!(t, Taken::Slot { .. })
    }

    /// Frees the block a taken slot names, if it names one (its contents are the taker's
    /// until the slot is emptied).
    fn free_slot_block(&self, index: usize) {
        let slot = &self.slots[index];
        if slot.kind.load(Ordering::Acquire) & KIND_MASK != KIND_BLOCK {
            return;
        }
        // SAFETY: the slot is taken and not emptied, so its payload is as its writer left it:
        // (offset, len) of the message's block, which nobody else frees.
        let offset = unsafe { u64::from_le_bytes((&*slot.payload.get())[..8].try_into().unwrap()) };
        if let Ok(arena) = Arena::get() {
            arena.free_block(offset);
        }
    }

    /// Gives a message taken from a rendezvous slot (see [`can_return`](Self::can_return))
    /// back to its writer, which writes it again (or, past its deadline, withdraws it: not
    /// delivered): nothing of it needs another slot, so a ring that wrapped round to this
    /// slot meanwhile does not keep it out. `Err` gives back a `t` that cannot be returned.
    /// A writer that already left (its channel failed: it reported the message as perhaps
    /// delivered) is not waited for: the message is dropped and its slot emptied.
    pub(crate) fn return_to_writer(&self, t: Taken) -> Result<(), Taken> {
        let Taken::Slot { index, head } = t else {
            return Err(t);
        };
        if !self.can_return(&t) {
            return Err(t);
        }
        let slot = &self.slots[index];
        if slot.kind.fetch_or(RETURNED, Ordering::SeqCst) & GONE != 0 {
            self.ack_kept(t);
            return Ok(());
        }
        let (_, lap) = self.positions(head);
        slot.stamp
            .store(lap + 1 + RETURNED_STAMP, Ordering::Release);
        self.hdr.tx.0.notify_all();
        Ok(())
    }

    /// Waits until the message is placed in the ring (the slow path of [`write`](Self::write)):
    /// the slot index and stamp, or why it was refused.
    #[inline(never)]
    fn write_wait(
        &self,
        msg: &Outgoing<'_>,
        deadline: Option<Instant>,
        back: bool,
        stop: Option<&AtomicBool>,
    ) -> Result<(usize, u64), ChannelError> {
        let tx = &self.hdr.tx.0;
        // When the ring is full, let the readers free a batch of slots before trying again,
        // instead of polling the very slot a reader is emptying (which slows that reader).
        // Only for the first checks: a reader that takes one message and then waits for us
        // must still get our next write. Not when a socket host holds the slot: its reader's
        // `Ack`s free slots in batches, without moving `head`.
        let batch = (self.hdr.ring_len / 8).clamp(1, 64);
        let mut full_at: Option<u64> = None;
        let mut checks = 0u32;
        let pushed = tx.wait_until_parked(
            deadline,
            Waiting {
                kind: Kind::Write,
                on: &[(self.key(), true, &|| self.name(), tx)],
                hand_over: false,
                far: Some(&|| self.next_slot_held()),
            },
            || {
                // The state check comes first: a waiter must never sleep through it.
                if let Some(e) = self.write_refused(back) {
                    return Some(Err(e));
                }
                if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                    return Some(Err(ChannelError::Timeout));
                }
                checks += 1;
                if let Some(h) = full_at {
                    let head = self.hdr.head.0.load(Ordering::Relaxed);
                    if checks < 64 && self.distance(h, head) < batch {
                        return None;
                    }
                }
                let r = self.try_push(msg);
                if r.is_none() && !self.next_slot_held() {
                    full_at = Some(self.hdr.head.0.load(Ordering::Relaxed));
                }
                r.map(Ok)
            },
            // Busy while a reader empties the next slot; not while a socket host holds it.
            || self.looks_writable_by_position() && !self.next_slot_held(),
            || Err(ChannelError::Deadlock),
        );
        pushed.unwrap_or(Err(ChannelError::Timeout))
    }

    /// Reads a message, blocking while the ring is empty. With `claim_writers`, a reader of a
    /// rendezvous channel also takes selecting writers' offers: it claims one with `claim`
    /// and takes the message the writer staged (as Go's receiver takes a queued sender's
    /// value), so a plain reader and a selecting writer always see each other.
    #[cfg(test)]
    pub(crate) fn read(
        &self,
        deadline: Option<Instant>,
        claim_writers: bool,
        claim: impl Fn(Offer) -> Claim,
    ) -> Result<Incoming, ChannelError> {
        let mut buf = [0u8; INLINE];
        self.read_at(
            deadline,
            claim_writers,
            claim,
            Reader::Plain,
            &mut buf,
            None,
        )
        .map(|(m, _)| m.into_incoming(&buf))
    }

    /// Like `read` (tests use it), with the inline bytes of the message copied to `buf`.
    #[inline(always)]
    pub(crate) fn read_into(
        &self,
        buf: &mut [u8; INLINE],
        deadline: Option<Instant>,
        claim: impl Fn(Offer) -> Claim,
    ) -> Result<Took, ChannelError> {
        self.read_at(deadline, true, claim, Reader::Plain, buf, None)
            .map(|(m, _)| m)
    }

    /// Like `read` (tests use it), but the message's slot stays full, and its writer waiting,
    /// until [`ack`](Self::ack): a socket pump completes a local rendezvous only when the
    /// remote host confirmed the message.
    pub(crate) fn read_deferred(
        &self,
        deadline: Option<Instant>,
        reader: Reader,
        claim: impl Fn(Offer) -> Claim,
    ) -> Result<(Incoming, Taken), ChannelError> {
        debug_assert!(!matches!(reader, Reader::Plain));
        let mut buf = [0u8; INLINE];
        self.read_at(deadline, true, claim, reader, &mut buf, None)
            .map(|(m, t)| (m.into_incoming(&buf), t))
    }

    /// [`read_deferred`](Self::read_deferred), which also ends (`Timeout`, nothing taken) as
    /// soon as `stop` is set: another thread sets it, then calls
    /// [`wake_readers`](Self::wake_readers). A socket host reads so for its remote reader
    /// while a thread of its own watches the connection for that reader's `Ack`s.
    pub(crate) fn read_deferred_until(
        &self,
        deadline: Option<Instant>,
        reader: Reader,
        claim: impl Fn(Offer) -> Claim,
        stop: &AtomicBool,
    ) -> Result<(Incoming, Taken), ChannelError> {
        debug_assert!(!matches!(reader, Reader::Plain));
        let mut buf = [0u8; INLINE];
        self.read_at(deadline, true, claim, reader, &mut buf, Some(stop))
            .map(|(m, t)| (m.into_incoming(&buf), t))
    }

    /// Wakes this channel's waiting readers, to look again at what they wait for (a `stop`
    /// of [`read_deferred_until`](Self::read_deferred_until) that was set).
    pub(crate) fn wake_readers(&self) {
        self.hdr.rx.0.notify_all();
    }

    #[inline(always)]
    fn read_at(
        &self,
        deadline: Option<Instant>,
        claim_writers: bool,
        claim: impl Fn(Offer) -> Claim,
        reader: Reader,
        buf: &mut [u8; INLINE],
        stop: Option<&AtomicBool>,
    ) -> Result<(Took, Taken), ChannelError> {
        let ack = matches!(reader, Reader::Plain);
        let host = matches!(reader, Reader::Host { .. });
        let t0 = trace::begin();
        // Fast path: not poisoned, and a message is there now.
        if self.flags() & POISONED == 0 {
            if let Some(m) = self.try_pop_at(ack, buf) {
                if ack {
                    self.taken();
                }
                if host {
                    self.mark_held(&m.1);
                }
                if t0 != 0 {
                    trace::took(self.name(), self.message_id(m.1), t0);
                }
                return Ok(m);
            }
        }
        let m = self.read_wait(deadline, claim_writers, claim, reader, buf, stop)?;
        if host {
            self.mark_held(&m.1);
        }
        if t0 != 0 {
            trace::took(self.name(), self.message_id(m.1), t0);
        }
        Ok(m)
    }

    /// The slow path of [`read_at`](Self::read_at): waits for a message.
    #[inline(never)]
    fn read_wait(
        &self,
        deadline: Option<Instant>,
        claim_writers: bool,
        claim: impl Fn(Offer) -> Claim,
        reader: Reader,
        buf: &mut [u8; INLINE],
        stop: Option<&AtomicBool>,
    ) -> Result<(Took, Taken), ChannelError> {
        let ack = matches!(reader, Reader::Plain);
        let rx = &self.hdr.rx.0;
        let claims = claim_writers && self.is_rendezvous();
        self.reader_came();
        let since = self.reader_wait_starts();
        let mut stuck: Option<(u64, Instant)> = None;
        let got = loop {
            // A channel whose peer died may hold a slot that will never be published: wait in
            // short steps so that such a slot is found and skipped.
            let broken = self.flags() & PEER_DIED != 0;
            let step = if broken {
                let d = Instant::now() + DEAD_SLOT_GRACE / 5;
                Some(deadline.map_or(d, |x| x.min(d)))
            } else {
                deadline
            };
            let r = rx.wait_until_parked(
                step,
                Waiting {
                    kind: Kind::Read,
                    on: &[(self.key(), false, &|| self.name(), rx)],
                    hand_over: false,
                    far: None,
                },
                || {
                    let f = self.flags();
                    if f & POISONED != 0 {
                        return Some(Err(ChannelError::Poisoned));
                    }
                    if let Some(m) = self.try_pop_at(ack, buf) {
                        return Some(Ok(m));
                    }
                    if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                        return Some(Err(ChannelError::Timeout));
                    }
                    if f & PEER_DIED != 0 {
                        if !self.looks_nonempty() {
                            // Drained, unless messages given back may still come.
                            if self.give_back_grace().is_some() {
                                return None;
                            }
                            return Some(Err(self.peer_died()));
                        }
                        let head = self.hdr.head.0.load(Ordering::SeqCst);
                        match stuck {
                            Some((h, since)) if h == head => {
                                if since.elapsed() >= DEAD_SLOT_GRACE {
                                    self.skip_unpublished(head);
                                    stuck = None;
                                }
                            }
                            _ => stuck = Some((head, Instant::now())),
                        }
                        return None;
                    }
                    if claims {
                        if let Some(h) = self.claim_offer(false, &claim) {
                            let took = Took::Block {
                                offset: h.offset,
                                len: h.len,
                            };
                            return Some(Ok((
                                took,
                                Taken::Offer {
                                    word: h.word,
                                    round: h.round,
                                },
                            )));
                        }
                    }
                    if f & WRITERS_RETIRED != 0 {
                        // The flag was read before the ring was found empty, and writers publish
                        // before they retire, so nothing new can arrive. But a message taken
                        // and not emptied may come back: a socket host keeps what a remote
                        // reader asked for ahead taken until its `Ack`, and gives it back if
                        // that reader dies, is cut off or retires without it. A reader that
                        // took `Retired` now would leave it in the channel for nobody. So it
                        // waits while slots other than its own are taken: until each is
                        // emptied (`ack` wakes it) or its message is written back.
                        if self.may_come_back(reader) {
                            return None;
                        }
                        return Some(Err(ChannelError::Retired));
                    }
                    None
                },
                || self.looks_nonempty(),
                || Err(ChannelError::Deadlock),
            );
            match r {
                Some(r) => break Some(r),
                None if deadline.is_some_and(|d| Instant::now() >= d) => break None,
                None if step.is_some() && step != deadline => continue,
                None => break None,
            }
        };
        self.reader_wait_ends(since);
        let msg = got.unwrap_or(Err(ChannelError::Timeout))?;
        if ack {
            if let Taken::Offer { word, .. } = msg.1 {
                self.release_offer(word);
            }
            self.taken();
        }
        Ok(msg)
    }

    /// A reader took a message: wakes the writers that sleep. A rendezvous writer that slept
    /// is blocked until now and has its next message to hand over (a farmer and its next
    /// job): it was woken onto a CPU where a process runs, often this reader's own (the
    /// kernel places a woken process near its waker), and with every CPU busy the kernel does
    /// not move it to one that falls idle later, so it would wait for a scheduler tick or
    /// the end of a time slice (1-4 ms) while readers wait for its next message. This
    /// reader gives it its CPU at once (a no-op when nothing else waits for this CPU).
    #[inline]
    fn taken(&self) {
        if self.hdr.tx.0.notify_all() && self.hdr.capacity == 0 {
            std::thread::yield_now();
        }
    }

    /// Waits until fewer than `n` messages are in this buffered channel's ring (a reader took
    /// one), its readers retired, it was poisoned, or `deadline`; returns whether one of those
    /// happened (for a socket pump that put messages in for its user: never the fast path).
    pub(crate) fn wait_fewer_than(&self, n: usize, deadline: Instant) -> bool {
        self.wait_fewer_than_or(n, deadline, || false)
    }

    /// [`wait_fewer_than`](Self::wait_fewer_than), ending also when `also` holds (looked at
    /// whenever the writers' event rings).
    pub(crate) fn wait_fewer_than_or(
        &self,
        n: usize,
        deadline: Instant,
        also: impl Fn() -> bool,
    ) -> bool {
        self.wait_as_writer(deadline, || self.len() < n || also())
    }

    /// How many messages a buffered channel's ring holds now, those being written or read
    /// included (a snapshot: other processes may be writing and reading); 0 for a rendezvous
    /// channel, whose messages wait in the ring only until a reader takes them.
    pub(crate) fn len(&self) -> usize {
        if self.is_rendezvous() {
            return 0;
        }
        let (head_a, tail_a) = (&self.hdr.head.0, &self.hdr.tail.0);
        // As crossbeam's `Channel::len`: `tail` read again unchanged means `head` was read
        // while `tail` had that value, so `head` is not past it. A few tries; for a ring that
        // keeps moving through all of them, the last reading, at most the capacity.
        let mut d = 0;
        for _ in 0..64 {
            let tail = tail_a.load(Ordering::SeqCst);
            let head = head_a.load(Ordering::SeqCst);
            d = self.distance(head, tail);
            if tail_a.load(Ordering::SeqCst) == tail {
                break;
            }
        }
        (d.min(self.hdr.ring_len)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn arena() -> &'static Arena {
        Arena::get().unwrap()
    }

    #[test]
    fn a_slot_claimed_by_a_writer_that_died_is_skipped_and_later_messages_delivered() {
        let chan = Chan::create(arena(), "dead-slot", "u8", 1, 4, false).unwrap();
        // A writer claims the first slot (moves `tail`) and dies before publishing it.
        let tail = chan.hdr.tail.0.load(Ordering::SeqCst);
        chan.hdr.tail.0.store(chan.next_pos(tail), Ordering::SeqCst);
        // A live writer publishes after it.
        let mut buf = [0u8; INLINE];
        buf[0] = 7;
        chan.write(&Outgoing::Inline { buf: &buf, len: 1 }, None)
            .map_err(|e| e.error)
            .unwrap();
        chan.mark_peer_died(12345, "dead_writer");
        let start = Instant::now();
        let claim = |_| Claim::Busy;
        match chan.read(None, false, claim) {
            Ok(Incoming::Inline { buf, len }) => assert_eq!(&buf[..len], &[7]),
            _ => panic!("the published message was not delivered"),
        }
        assert!(start.elapsed() >= DEAD_SLOT_GRACE);
        match chan.read(None, false, claim) {
            Err(ChannelError::PeerDied { pid, process, .. }) => {
                assert_eq!((pid, process.as_str()), (12345, "dead_writer"));
            }
            _ => panic!("expected PeerDied once drained"),
        }
    }

    #[test]
    fn a_reader_of_a_retired_channel_waits_only_for_slots_held_by_others() {
        // Two socket hosts each hold a message taken for their remote readers (not emptied
        // until an `Ack`); then the writers retire and the ring is drained. A plain reader
        // waits for both messages (either may come back), a host for the other host's only,
        // a pump (its proxy's only reader) for none.
        let chan = Chan::create(arena(), "held-by-others", "u8", 1, 4, false).unwrap();
        chan.join_side(true);
        let buf = [7u8; INLINE];
        for _ in 0..2 {
            chan.write(&Outgoing::Inline { buf: &buf, len: 1 }, None)
                .map_err(|e| e.error)
                .unwrap();
        }
        let claim = |_| Claim::Busy;
        let (_, first) = chan
            .read_deferred(None, Reader::Host { held: 0 }, claim)
            .unwrap();
        let (_, second) = chan
            .read_deferred(None, Reader::Host { held: 0 }, claim)
            .unwrap();
        chan.retire_side(true);
        let soon = || Some(Instant::now() + Duration::from_millis(50));
        assert!(matches!(
            chan.read(soon(), false, claim),
            Err(ChannelError::Timeout)
        ));
        assert!(matches!(
            chan.read_deferred(soon(), Reader::Host { held: 1 }, claim),
            Err(ChannelError::Timeout)
        ));
        assert!(matches!(
            chan.read_deferred(soon(), Reader::Host { held: 2 }, claim),
            Err(ChannelError::Retired)
        ));
        assert!(matches!(
            chan.read_deferred(soon(), Reader::Pump, claim),
            Err(ChannelError::Retired)
        ));
        // One is acknowledged: a host holding the other sees the end; a plain reader still
        // waits, until the second is acknowledged too.
        chan.ack(first);
        assert!(matches!(
            chan.read_deferred(soon(), Reader::Host { held: 1 }, claim),
            Err(ChannelError::Retired)
        ));
        assert!(matches!(
            chan.read(soon(), false, claim),
            Err(ChannelError::Timeout)
        ));
        chan.ack(second);
        assert!(matches!(
            chan.read(None, false, claim),
            Err(ChannelError::Retired)
        ));
    }

    #[test]
    fn a_ring_whose_slots_were_never_written_fills_and_drains_lap_after_lap() {
        let chan = Chan::create(arena(), "laps", "u8", 1, 3, false).unwrap();
        assert!(chan
            .slots
            .iter()
            .all(|s| s.stamp.load(Ordering::Relaxed) == 0));
        let msg = |v: u8| {
            let mut buf = [0u8; INLINE];
            buf[0] = v;
            buf
        };
        let pop = || match chan.try_pop() {
            Some(Incoming::Inline { buf, len: 1 }) => Some(buf[0]),
            Some(_) => panic!("not the message written"),
            None => None,
        };
        let mut next = 0u8;
        let mut expect = 0u8;
        for round in 0..200 {
            // Fill the ring (a different number of messages each round), then empty it.
            let n = 1 + round % 3;
            for _ in 0..n {
                let buf = msg(next);
                assert!(chan
                    .try_push(&Outgoing::Inline { buf: &buf, len: 1 })
                    .is_some());
                next = next.wrapping_add(1);
            }
            if n == 3 {
                let buf = msg(0);
                assert!(chan
                    .try_push(&Outgoing::Inline { buf: &buf, len: 1 })
                    .is_none());
                assert!(!chan.looks_writable());
            }
            for _ in 0..n {
                assert_eq!(pop(), Some(expect));
                expect = expect.wrapping_add(1);
            }
            assert_eq!(pop(), None);
            assert!(chan.looks_writable());
        }
    }

    fn thread_cpu() -> Duration {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage fills the struct it is given.
        let ru = unsafe {
            libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr());
            ru.assume_init()
        };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    #[test]
    fn a_writer_waiting_for_a_slot_a_reader_holds_unacknowledged_does_not_spin() {
        // A full ring whose reader took a message without acknowledging it yet (a socket
        // host's reader waiting for its remote end's confirmation): `head` says there is room,
        // the slot is not empty. The writer waits for the acknowledgement asleep.
        let chan = Chan::create(arena(), "held-slot", "u8", 1, 2, false).unwrap();
        let buf = [7u8; INLINE];
        while chan
            .try_push(&Outgoing::Inline { buf: &buf, len: 1 })
            .is_some()
        {}
        let (_, taken) = chan
            .read_deferred(None, Reader::Pump, |_| Claim::Busy)
            .expect("a message is there");
        let wait = Duration::from_millis(300);
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let r = chan.write(
            &Outgoing::Inline { buf: &buf, len: 1 },
            Some(Instant::now() + wait),
        );
        let (wall, cpu) = (wall.elapsed(), thread_cpu() - cpu);
        assert!(matches!(
            r,
            Err(WriteError {
                error: ChannelError::Timeout,
                placed: false
            })
        ));
        assert!(wall >= wait);
        assert!(
            cpu < wait / 10,
            "used {cpu:?} of CPU in {wall:?} waiting for an acknowledged slot"
        );
        chan.ack(taken);
        assert!(chan
            .write(
                &Outgoing::Inline { buf: &buf, len: 1 },
                Some(Instant::now())
            )
            .is_ok());
    }

    #[test]
    fn a_writer_waiting_for_room_a_socket_host_holds_for_its_remote_reader_sleeps_at_once() {
        // A full ring whose messages a socket host took for its remote reader: room comes
        // with that reader's `Ack`s, a network round trip away. The writer neither spins nor
        // yields for it (it did for 30 us, then 200 us more, at each wait: 12.7 ms of CPU for
        // the 40 waits below; asleep they take 1-2.5 ms, timers and cold caches), and the
        // acknowledgements of a run wake it.
        let chan = Chan::create(arena(), "host-held", "u8", 1, 4, false).unwrap();
        let buf = [7u8; INLINE];
        let msg = Outgoing::Inline { buf: &buf, len: 1 };
        while chan.try_push(&msg).is_some() {}
        let held: Vec<Taken> = (0..4)
            .map(|held| {
                chan.read_deferred(None, Reader::Host { held }, |_| Claim::Busy)
                    .expect("a message is there")
                    .1
            })
            .collect();
        let cpu = thread_cpu();
        for _ in 0..40 {
            let r = chan.write(&msg, Some(Instant::now() + Duration::from_millis(3)));
            assert!(matches!(
                r,
                Err(WriteError {
                    error: ChannelError::Timeout,
                    placed: false
                })
            ));
        }
        let cpu = thread_cpu() - cpu;
        assert!(
            cpu < Duration::from_millis(5),
            "40 waits for room a socket host holds used {cpu:?} of CPU"
        );
        std::thread::scope(|s| {
            let writer = s.spawn(|| chan.write(&msg, None).map(|_| ()));
            for t in held {
                chan.ack_kept_quietly(t);
            }
            chan.acked();
            assert!(writer.join().unwrap().is_ok());
        });
    }

    #[test]
    fn a_writer_whose_deadline_passed_while_a_socket_host_holds_its_message_waits_asleep() {
        host_held_rendezvous_withdraw(false);
    }

    #[test]
    fn a_writer_whose_deadline_passed_while_a_socket_host_that_waited_holds_its_message_waits_asleep(
    ) {
        // The host waited for the message before it came (the slow path of its read): that
        // path did not mark the slot `HELD`, and the writer yielded in a loop for as long as
        // the remote reader took (this test was intermittent until it chose the path).
        host_held_rendezvous_withdraw(true);
    }

    /// A socket host takes a rendezvous message for its remote reader (`host_waits_first`:
    /// it waits for the message before the writer writes it; otherwise the message is there
    /// when it reads); the writer's deadline passes before that reader answers. The message
    /// may have been taken: the writer waits for the host's decision, asleep (it yielded in a
    /// loop), and learns it.
    fn host_held_rendezvous_withdraw(host_waits_first: bool) {
        let chan = Chan::create(arena(), "host-held-rendezvous", "u8", 1, 0, false).unwrap();
        let buf = [7u8; INLINE];
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let read = || {
                chan.read_deferred(None, Reader::Host { held: 0 }, |_| Claim::Busy)
                    .expect("the writer's message")
                    .1
            };
            let early = host_waits_first.then(|| s.spawn(read));
            if host_waits_first {
                while !chan.reader_asleep() {
                    std::thread::yield_now();
                }
            }
            let writer = s.spawn(|| {
                // SAFETY: pthread_self has no preconditions.
                tx.send(unsafe { libc::pthread_self() }).unwrap();
                let msg = Outgoing::Inline { buf: &buf, len: 1 };
                chan.write(&msg, Some(Instant::now() + Duration::from_millis(20)))
                    .map(|_| ())
            });
            let thread = rx.recv().unwrap();
            let host = early.unwrap_or_else(|| {
                while !chan.looks_nonempty() {
                    std::thread::yield_now();
                }
                s.spawn(read)
            });
            let taken = host.join().unwrap();
            let Taken::Slot { index, .. } = taken else {
                panic!("not from a slot")
            };
            // The writer's deadline passed: it asks for the message back.
            while chan.slots[index].kind.load(Ordering::SeqCst) & CANCELLED == 0 {
                std::thread::yield_now();
            }
            let before = other_thread_cpu(thread);
            // The remote reader answers after a while.
            std::thread::sleep(Duration::from_millis(300));
            let cpu = other_thread_cpu(thread) - before;
            chan.ack(taken);
            assert!(writer.join().unwrap().is_ok(), "taken: delivered");
            assert!(
                cpu < Duration::from_millis(30),
                "the writer used {cpu:?} of CPU in 300 ms waiting for the host's decision"
            );
        });
    }

    /// The CPU time thread `thread` (of this process, running) used so far.
    fn other_thread_cpu(thread: libc::pthread_t) -> Duration {
        let mut clock: libc::clockid_t = 0;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `thread` is a running thread of this process (joined only after this);
        // both calls write into the locals they are given.
        unsafe {
            assert_eq!(libc::pthread_getcpuclockid(thread, &mut clock), 0);
            assert_eq!(libc::clock_gettime(clock, &mut ts), 0);
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    #[test]
    fn a_reader_of_a_dead_peers_channel_waits_for_a_message_given_back_after_its_slot_was_emptied()
    {
        // A socket host gives back a message a dead remote reader had asked for, into a ring
        // full of taken slots: it empties the message's own slot first, then writes the copy.
        // A reader that finds the channel drained in between must wait for it (it once
        // reported the death at once: the message was lost).
        let chan = Chan::create(arena(), "give-back-emptied", "u8", 1, 1, false).unwrap();
        let buf = [9u8; INLINE];
        let msg = Outgoing::Inline { buf: &buf, len: 1 };
        assert!(chan.try_push(&msg).is_some());
        let (_, taken) = chan
            .read_deferred(None, Reader::Pump, |_| Claim::Busy)
            .expect("a message is there");
        chan.mark_peer_died(12345, "remote_reader");
        let giving_back = chan.empty_for_give_back(taken);
        let early = chan.read(
            Some(Instant::now() + Duration::from_millis(50)),
            true,
            |_| Claim::Busy,
        );
        assert!(
            matches!(early, Err(ChannelError::Timeout)),
            "the reader did not wait for the message given back"
        );
        chan.write_back(&msg, None).map_err(|e| e.error).unwrap();
        drop(giving_back);
        match chan.read(Some(Instant::now() + Duration::from_secs(5)), true, |_| {
            Claim::Busy
        }) {
            Ok(Incoming::Inline { buf, len }) => assert_eq!(&buf[..len], &[9]),
            _ => panic!("the message given back was not read"),
        }
        assert!(matches!(
            chan.read(Some(Instant::now()), true, |_| Claim::Busy),
            Err(ChannelError::PeerDied { .. })
        ));
    }

    #[test]
    fn a_reader_that_finds_the_next_slot_held_from_the_lap_before_keeps_its_deadline() {
        // Every message was read, the last one without acknowledgement (a socket host's
        // reader waiting for its remote end): `head` has come round to that slot, still full
        // from the lap before. Another reader has nothing to take: it must time out (it once
        // spun for ever, taking the slot for one a reader of this lap had just emptied).
        let chan = Chan::create(arena(), "held-lap", "u8", 1, 1, false).unwrap();
        let buf = [7u8; INLINE];
        assert!(chan
            .try_push(&Outgoing::Inline { buf: &buf, len: 1 })
            .is_some());
        let (_, taken) = chan
            .read_deferred(None, Reader::Pump, |_| Claim::Busy)
            .expect("a message is there");
        let wait = Duration::from_millis(100);
        let wall = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let r = chan.read(Some(Instant::now() + wait), true, |_| Claim::Busy);
            let _ = tx.send(matches!(r, Err(ChannelError::Timeout)));
        });
        let timed_out = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(timed_out, Ok(true), "the read kept its deadline");
        reader.join().unwrap();
        assert!(wall.elapsed() >= wait);
        chan.ack(taken);
    }

    #[test]
    fn a_rendezvous_write_behind_a_withdrawn_one_times_out_asleep() {
        // A rendezvous write that timed out is withdrawn but keeps its slot until a reader
        // skips it: `head` stays there. A second write lands in the next slot and must still
        // time out (it once yielded for ever, never looking at its deadline).
        let chan = Chan::create(arena(), "behind-withdrawn", "u8", 1, 0, false).unwrap();
        let buf = [1u8; INLINE];
        let msg = Outgoing::Inline { buf: &buf, len: 1 };
        let first = chan.write(&msg, Some(Instant::now() + Duration::from_millis(20)));
        assert!(
            matches!(
                first,
                Err(WriteError {
                    error: ChannelError::Timeout,
                    placed: false
                })
            ),
            "{:?}",
            first.map_err(|e| (e.error, e.placed))
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let buf = [2u8; INLINE];
            let msg = Outgoing::Inline { buf: &buf, len: 1 };
            let (wall, cpu) = (Instant::now(), thread_cpu());
            let r = chan.write(&msg, Some(Instant::now() + Duration::from_millis(300)));
            let _ = tx.send((r.map_err(|e| e.error), wall.elapsed(), thread_cpu() - cpu));
        });
        let (r, wall, cpu) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the second write never timed out");
        assert_eq!(r, Err(ChannelError::Timeout));
        assert!(wall >= Duration::from_millis(300));
        assert!(cpu < wall / 10, "used {cpu:?} of CPU in {wall:?}");
    }

    #[test]
    fn writers_fail_at_once_after_a_peer_died() {
        let chan = Chan::create(arena(), "dead-peer-writes", "u8", 1, 4, false).unwrap();
        chan.mark_peer_died(1, "p");
        let r = chan.write(
            &Outgoing::Inline {
                buf: &[1; INLINE],
                len: 1,
            },
            None,
        );
        assert!(matches!(
            r,
            Err(WriteError {
                error: ChannelError::PeerDied { .. },
                placed: false
            })
        ));
    }
}
