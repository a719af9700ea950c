//! Waiter records: the selection word of a thread blocked in an alternation.
//!
//! A thread that alternates over rendezvous channels has one record in the arena (128 bytes,
//! allocated on its first alternation). Its `sel` word says, for the current round
//! (`gen`), whether the thread is still `WAITING`, has `ABORTED` the round (it woke up for
//! another reason and will try again), or was `SELECTED` for guard `g` by a counterpart.
//! Exactly one CAS from `WAITING` wins, which is what makes every rendezvous happen exactly
//! once when both sides alternate.
//!
//! An offer word, stored in a channel's offer table, names a record and a round:
//! `(record offset / 128) << 35 | (gen mod 2^27) << 8 | guard`.
//!
//! Messages change hands through the record, never through the channel's ring, so that the
//! two parties a CAS paired are the two that communicate (as Go's `sudog` carries the value):
//!
//! - a selecting **writer** stages each rendezvous output guard's message in an arena block
//!   and names it in `out[guard]` before the round begins; the claimer reads `out[guard]`
//!   *before* its CAS (which also checks the round), so a winning claimer holds the block of
//!   that very round. It then owns the block, and clears `out[guard]` once it has the message
//!   ([`release`]): the writer's rendezvous is complete.
//! - a selecting **reader** claimed by a writer receives the message in its `mail`
//!   ([`deliver`]), a block the writer filled after winning the CAS.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::arena::Arena;

/// What a claim attempt on an offer found.
pub(crate) enum Claim {
    /// The offering waiter is now committed to us.
    Won(Handoff),
    /// The offer belongs to a selection that is over: remove it.
    Stale,
    /// The waiter is busy (deciding, or claimed by someone else): leave the offer.
    Busy,
}

/// A won offer: its word and, for a writer's offer, the block holding its message (which the
/// claimer now owns) and the message's length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handoff {
    pub(crate) word: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

const WAITING: u32 = 0;
const ABORTED: u32 = 1;
const SELECTED: u32 = 2;
const IDLE: u32 = u32::MAX;
const GEN_BITS: u32 = 27;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

/// Guards an alternation can have (each may stage a message in `out`).
pub(crate) const GUARDS: usize = 128;

#[repr(C, align(128))]
struct WaiterRec {
    sel: AtomicU64,
    pid: AtomicU32,
    /// A message a writer handed us for the guard it selected: its block and length (`off`
    /// 0: nothing yet; blocks never start at offset 0).
    mail_off: AtomicU64,
    mail_len: AtomicU64,
    /// Per output guard on a rendezvous channel: the block holding its message and length,
    /// for this round; cleared by the claimer once it has the message.
    out_off: [AtomicU64; GUARDS],
    out_len: [AtomicU64; GUARDS],
}

const REC_SIZE: u64 = std::mem::size_of::<WaiterRec>() as u64;

/// The record an offer word names.
fn record(arena: &'static Arena, word: u64) -> &'static WaiterRec {
    let offset = (word >> 35) * 128;
    // SAFETY: offer words are only written by waiters and name their own record, which lives
    // in the arena for the life of the network (`ptr` checks the range); every field is
    // atomic.
    unsafe { &*arena.ptr(offset, REC_SIZE).cast::<WaiterRec>() }
}

/// Which waiter record an offer word names (to tell one's own offers from others').
pub(crate) fn owner(word: u64) -> u64 {
    word >> 35
}

/// How a round of waiting ended.
pub(crate) enum Outcome {
    /// We aborted the round ourselves: nobody is committed to us.
    Aborted,
    /// A counterpart selected guard `g`; we must complete it.
    Selected(usize),
}

/// This thread's waiter record.
pub(crate) struct Waiter {
    rec: &'static WaiterRec,
    offset: u64,
    gen: Cell<u32>,
}

thread_local! {
    static WAITER: Cell<Option<&'static Waiter>> = const { Cell::new(None) };
}

impl Waiter {
    /// This thread's record, allocated in the arena on first use.
    pub(crate) fn current(
        arena: &'static Arena,
    ) -> Result<&'static Waiter, crate::error::ChannelError> {
        if let Some(w) = WAITER.with(Cell::get) {
            return Ok(w);
        }
        let offset = arena.alloc_static(REC_SIZE).map_err(|_| {
            crate::error::ChannelError::SharedMemory("the network's shared memory is full".into())
        })?;
        // SAFETY: the REC_SIZE bytes at `offset` were just allocated for this record (zeroed,
        // 256-byte aligned) and are only ever accessed through atomics.
        let rec: &'static WaiterRec = unsafe { &*arena.ptr(offset, REC_SIZE).cast::<WaiterRec>() };
        rec.pid.store(std::process::id(), Ordering::Relaxed);
        rec.sel.store(u64::from(IDLE), Ordering::SeqCst);
        let w: &'static Waiter = Box::leak(Box::new(Waiter {
            rec,
            offset,
            gen: Cell::new(0),
        }));
        WAITER.with(|c| c.set(Some(w)));
        Ok(w)
    }

    /// Starts a new round: from now on counterparts may select us through our offers.
    pub(crate) fn begin(&self) {
        let gen = self.gen.get().wrapping_add(1);
        self.gen.set(gen);
        self.rec.mail_off.store(0, Ordering::SeqCst);
        self.rec.sel.store(
            (u64::from(gen) << 32) | u64::from(WAITING),
            Ordering::SeqCst,
        );
    }

    /// Which record this is, as [`owner`] tells it from an offer word.
    pub(crate) fn id(&self) -> u64 {
        self.offset / 128
    }

    /// Stages the message of rendezvous output guard `guard` (a block and its length) for
    /// the rounds to come. Only between rounds.
    pub(crate) fn stage(&self, guard: usize, offset: u64, len: u64) {
        self.rec.out_len[guard].store(len, Ordering::SeqCst);
        self.rec.out_off[guard].store(offset, Ordering::SeqCst);
    }

    /// Whether the claimer of output guard `guard` has taken its message.
    pub(crate) fn taken(&self, guard: usize) -> bool {
        self.rec.out_off[guard].load(Ordering::SeqCst) == 0
    }

    /// The message a writer delivered to us, if it has (then the block is ours).
    pub(crate) fn mail(&self) -> Option<(u64, u64)> {
        let off = self.rec.mail_off.load(Ordering::SeqCst);
        (off != 0).then(|| {
            self.rec.mail_off.store(0, Ordering::SeqCst);
            (off, self.rec.mail_len.load(Ordering::SeqCst))
        })
    }

    /// The offer word for `guard` in the current round.
    pub(crate) fn offer(&self, guard: usize) -> u64 {
        debug_assert!(guard < 256);
        ((self.offset / 128) << 35) | ((u64::from(self.gen.get()) & GEN_MASK) << 8) | guard as u64
    }

    /// Whether a counterpart has selected us in this round.
    pub(crate) fn is_selected(&self) -> bool {
        (self.rec.sel.load(Ordering::SeqCst) as u32) >= SELECTED
    }

    /// Ends the round: either we abort it, or we learn which guard a counterpart selected.
    pub(crate) fn finish(&self) -> Outcome {
        let gen = u64::from(self.gen.get()) << 32;
        match self.rec.sel.compare_exchange(
            gen | u64::from(WAITING),
            gen | u64::from(ABORTED),
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => Outcome::Aborted,
            Err(cur) => Outcome::Selected(((cur as u32) - SELECTED) as usize),
        }
    }
}

/// Tries to select the waiter named by offer `word` for the guard the offer names. A won
/// writer's offer comes with the block of its message (see the module documentation).
pub(crate) fn claim(arena: &'static Arena, word: u64) -> Claim {
    let gen = (word >> 8) & GEN_MASK;
    let guard = (word & 0xff) as u32;
    let rec = record(arena, word);
    // Read before the CAS: if the CAS wins, the round was still ours to claim, so these were
    // staged for it (the writer stages the next round's only after this one ended).
    let (offset, len) = match rec.out_off.get(guard as usize) {
        Some(off) => (
            off.load(Ordering::SeqCst),
            rec.out_len[guard as usize].load(Ordering::SeqCst),
        ),
        None => (0, 0),
    };
    let cur = rec.sel.load(Ordering::SeqCst);
    if (cur >> 32) & GEN_MASK != gen || cur as u32 != WAITING {
        return Claim::Stale;
    }
    let selected = (cur & !0xffff_ffff) | u64::from(SELECTED + guard);
    match rec
        .sel
        .compare_exchange(cur, selected, Ordering::SeqCst, Ordering::SeqCst)
    {
        Ok(_) => Claim::Won(Handoff { word, offset, len }),
        Err(_) => Claim::Busy,
    }
}

/// Tells the writer that made offer `word` that its message was taken.
pub(crate) fn release(arena: &'static Arena, word: u64) {
    let guard = (word & 0xff) as usize;
    if let Some(off) = record(arena, word).out_off.get(guard) {
        off.store(0, Ordering::SeqCst);
    }
}

/// Hands the message in block `offset` (`len` bytes) to the reader that made offer `word`
/// and that we selected; the block is the reader's from now on.
pub(crate) fn deliver(arena: &'static Arena, word: u64, offset: u64, len: u64) {
    let rec = record(arena, word);
    rec.mail_len.store(len, Ordering::SeqCst);
    rec.mail_off.store(offset, Ordering::SeqCst);
}
