//! Shared memory: the arena every process of a network maps, and what lives in it.
//!
//! # Layout (the one place it is written down)
//!
//! A process network (the root process and every process started by a `Parallel`, `Sequence`
//! or `Spawn` under it, at any depth) shares **one arena**: an anonymous `memfd` of
//! [`ARENA_SIZE`](arena::ARENA_SIZE) bytes, created by the root on first use and inherited by
//! each child as a file descriptor. It has no name in `/dev/shm`, so the kernel frees it when
//! the last process of the network exits, also after `SIGKILL`. Pages are allocated on first
//! touch; the size is only reserved address space. Shared memory holds **offsets from the
//! arena start, never pointers**.
//!
//! ```text
//! offset 0          ArenaHeader (one page)
//!                     magic "PYCSPAR1" u64, version u32, size u64
//!                     bump: AtomicU64          next free byte for allocations
//!                     free[class]: AtomicU64   Treiber stacks of freed blocks, tagged heads
//!                                              (tag << 28 | offset / 256; 0 = empty)
//!                     network: u64             random id of the network (set at creation)
//! offset 4096       Directory: DIR_ENTRIES x 128-byte entries, open addressing by name hash
//!                     state: AtomicU32 (0 empty, 1 being written, 2 ready)
//!                     name_len: u32, channel: u64 (offset of the channel header)
//!                     name: [u8; 112]
//! DATA_START ...    bump-allocated objects, 256-byte aligned:
//!                     channels (never freed while the network lives)
//!                     blocks for large messages (freed to per-size-class stacks)
//! ```
//!
//! A **block** (for a message too large for a ring slot) is `256 << class` bytes: a 16-byte
//! header (`class: u32`, pad, `next: u64` used only while the block is free) then the encoded
//! message. Blocks of 64 MiB and more give their pages back to the kernel when freed.
//!
//! A **channel** is a header followed by its ring of slots:
//!
//! ```text
//! ChannelHeader (repr C, 128-byte aligned)
//!   magic "PYCSPCH1", type fingerprint u64, capacity u64 (0 = rendezvous), ring_len u64,
//!   one_lap u64, type name [u8; 128], channel name [u8; 112]           (immutable)
//!   state:  flags AtomicU32 (POISONED | WRITERS_RETIRED | READERS_RETIRED),
//!           writers AtomicU32, readers AtomicU32                         (own cache line)
//!   head:   AtomicU64  next position to read                             (own cache line)
//!   tail:   AtomicU64  next position to write                            (own cache line)
//!   rx:     Event { seq AtomicU32, sleepers AtomicU32 } readers sleep here (own cache line)
//!   tx:     Event { seq AtomicU32, sleepers AtomicU32 } writers sleep here (own cache line)
//! Slot x ring_len (128 bytes each)
//!   stamp AtomicU64   position + 1 when full, position + one_lap when empty (crossbeam's
//!                     ArrayQueue protocol: positions carry a lap above the index bits)
//!   kind u32          INLINE (payload holds the message) or BLOCK (payload holds offset, len)
//!   len u32           bytes of the message in the payload
//!   payload [u8; 112]
//! ```
//!
//! **Waiting.** A blocked reader spins briefly, yields, then announces itself in
//! `rx.sleepers`, re-checks the ring and sleeps in `futex_wait(rx.seq)`. A writer that publishes
//! a message bumps `rx.seq` and wakes one sleeper only when `rx.sleepers` is non-zero, so the
//! fast path makes no system call. Writers wait on `tx` the same way (full ring, or a
//! rendezvous write waiting for its message to be taken). Poison and retire bump both events
//! and wake everyone.

pub(crate) mod arena;
pub(crate) mod ring;
pub(crate) mod wait;
pub(crate) mod waiter;
