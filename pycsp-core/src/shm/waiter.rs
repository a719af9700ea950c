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

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::arena::Arena;
use super::ring::Claim;

const WAITING: u32 = 0;
const ABORTED: u32 = 1;
const SELECTED: u32 = 2;
const IDLE: u32 = u32::MAX;
const GEN_BITS: u32 = 27;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

#[repr(C, align(128))]
struct WaiterRec {
    sel: AtomicU64,
    pid: AtomicU32,
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
        let offset = arena.alloc_static(128).map_err(|_| {
            crate::error::ChannelError::SharedMemory("the network's shared memory is full".into())
        })?;
        // SAFETY: the 128 bytes at `offset` were just allocated for this record (zeroed,
        // 256-byte aligned) and are only ever accessed through atomics.
        let rec: &'static WaiterRec = unsafe { &*arena.ptr(offset, 128).cast::<WaiterRec>() };
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
        self.rec.sel.store(
            (u64::from(gen) << 32) | u64::from(WAITING),
            Ordering::SeqCst,
        );
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

/// Tries to select the waiter named by offer `word` for the guard the offer names.
pub(crate) fn claim(arena: &'static Arena, word: u64) -> Claim {
    let offset = (word >> 35) * 128;
    let gen = (word >> 8) & GEN_MASK;
    let guard = (word & 0xff) as u32;
    // SAFETY: offer words are only written by waiters and name their own record, which lives
    // in the arena for the life of the network (`ptr` checks the range); `sel` is atomic.
    let rec: &WaiterRec = unsafe { &*arena.ptr(offset, 128).cast::<WaiterRec>() };
    let cur = rec.sel.load(Ordering::SeqCst);
    if (cur >> 32) & GEN_MASK != gen || cur as u32 != WAITING {
        return Claim::Stale;
    }
    let selected = (cur & !0xffff_ffff) | u64::from(SELECTED + guard);
    match rec
        .sel
        .compare_exchange(cur, selected, Ordering::SeqCst, Ordering::SeqCst)
    {
        Ok(_) => Claim::Won,
        Err(_) => Claim::Busy,
    }
}
