//! Waiter records: the selection word of a thread blocked in an alternation.
//!
//! A thread that alternates over rendezvous channels has one record in the arena (allocated on
//! its first alternation, sized for its largest select). Its `sel` word says, for the current round
//! (`gen`), whether the thread is still `WAITING`, has `ABORTED` the round (it woke up for
//! another reason and will try again), or was `SELECTED` for guard `g` by a counterpart.
//! Exactly one CAS from `WAITING` wins, which is what makes every rendezvous happen exactly
//! once when both sides alternate.
//!
//! An offer word, stored in a channel's offer table, names a record, a round and a guard:
//! `(record offset / 256) << 36 | (gen mod 256) << 28 | guard`. The record says for which
//! channel and side each guard of the current round waits (`key[guard]`), and a claimer checks
//! it against the table it found the word in, after it read `sel` and before its CAS: so a
//! word left from an old round whose generation and guard happen to match the current round's
//! can only select a guard that waits on that very channel and side, which is a valid choice.
//! The generation bits are a quick filter, the key is the check. A record holds tables for
//! its thread's largest select so far (it is reallocated, larger, when a select has more
//! guards), so an alternation takes any number of guards.
//!
//! A record is a record for ever (a stale offer word may still name it), but not a thread's
//! for ever: when its thread ends, or its process dies, it is made idle and given back to the
//! arena's free records, and the next thread that needs one takes it (see `LAYOUT.md`).
//!
//! Messages change hands through the record, never through the channel's ring, so that the
//! two parties a CAS paired are the two that communicate (as Go's `sudog` carries the value):
//!
//! - a selecting **writer** stages each rendezvous output guard's message in an arena block
//!   and names it in `out[guard]` before the round begins; the claimer reads `out[guard]`
//!   after it saw the round waiting and *before* its CAS, so a winning claimer holds the block
//!   of that very round (the next round's blocks are staged only after this one ended). It
//!   then owns the block, and clears `out[guard]` once it has the message ([`release`]): the
//!   writer's rendezvous is complete.
//! - a selecting **reader** claimed by a writer receives the message in its `mail`
//!   ([`deliver`]), a block the writer filled after winning the CAS.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::arena::Arena;
use super::census;
use crate::trace;

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
    /// The offering waiter's round (the full counter, of which the word holds 8 bits).
    pub(crate) round: u32,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

const WAITING: u32 = 0;
const ABORTED: u32 = 1;
const SELECTED: u32 = 2;
const IDLE: u32 = u32::MAX;
const GEN_BITS: u32 = 8;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const GUARD_BITS: u32 = 28;
/// The offer word's shift of the record id.
const ID_SHIFT: u32 = GUARD_BITS + GEN_BITS;
/// Guards whose index fits an offer word; a select's guards beyond (never reached in
/// practice: their tables alone would take 6 GiB) wait without offers.
const OFFERABLE: usize = 1 << GUARD_BITS;
/// Records are allocated by `alloc_static`, 256-byte aligned: their id is offset / 256.
const REC_GRAIN: u64 = 256;

const _: () = assert!(
    crate::shm::arena::ARENA_MAX / REC_GRAIN <= 1 << (64 - ID_SHIFT),
    "a record id must fit the offer word"
);

/// Guards a record has tables for at least.
const MIN_GUARDS: usize = 128;

/// A waiter record's fixed part; three tables of `cap` words follow it: per guard, the block
/// of a staged message (`out_off`), its length (`out_len`), and for the current round the
/// channel and side the guard waits on (`key`, see [`Offer`]; 0: no channel guard).
#[repr(C, align(128))]
struct RecHeader {
    sel: AtomicU64,
    /// The process whose thread uses the record; 0 once that process died and its parent
    /// settled it (see `free_held`).
    pid: AtomicU32,
    /// Guards the tables hold (fixed when the record is allocated).
    cap: AtomicU32,
    /// A message a writer handed us for the guard it selected: its block and length (`off`
    /// 0: nothing yet; blocks never start at offset 0).
    mail_off: AtomicU64,
    mail_len: AtomicU64,
    /// The ledger root of the process whose thread uses the record; 0: free (or the process
    /// has no ledger, and the record is never taken back).
    owner: AtomicU64,
    /// The next of all records (see `Arena::list_waiter`), offset / 256.
    all_next: AtomicU64,
    /// The next free record while this one is free, offset / 256.
    free_next: AtomicU64,
}

const HEADER: u64 = std::mem::size_of::<RecHeader>() as u64;
const OUT_OFF: u64 = 0;
const OUT_LEN: u64 = 1;
const KEY: u64 = 2;

/// A record in the arena: its offset and fixed part.
#[derive(Clone, Copy)]
struct Rec {
    arena: &'static Arena,
    offset: u64,
    hdr: &'static RecHeader,
    cap: usize,
}

impl Rec {
    /// The record at `offset` (of `cap` guards if known, else as its header says).
    fn at(arena: &'static Arena, offset: u64) -> Rec {
        // SAFETY: offsets of records come from offer words, which only waiters write, naming
        // their own record; it lives in the arena for the life of the network (`ptr` checks
        // the range) and every field is atomic.
        let hdr = unsafe { &*arena.ptr(offset, HEADER).cast::<RecHeader>() };
        let cap = hdr.cap.load(Ordering::Relaxed) as usize;
        Rec {
            arena,
            offset,
            hdr,
            cap,
        }
    }

    /// Word `guard` of table `table`, if the record has that guard.
    fn table(&self, table: u64, guard: usize) -> Option<&'static AtomicU64> {
        if guard >= self.cap {
            return None;
        }
        let at = self.offset + HEADER + (table * self.cap as u64 + guard as u64) * 8;
        // SAFETY: `guard < cap`, so the word lies inside the record (`ptr` checks the range
        // too); the tables are only accessed atomically.
        Some(unsafe { &*self.arena.ptr(at, 8).cast::<AtomicU64>() })
    }
}

/// The record an offer word names.
fn record(arena: &'static Arena, word: u64) -> Rec {
    Rec::at(arena, (word >> ID_SHIFT) * REC_GRAIN)
}

/// Which waiter record an offer word names (to tell one's own offers from others').
pub(crate) fn owner(word: u64) -> u64 {
    word >> ID_SHIFT
}

/// An offer word as a claimer found it, with the channel and side of the table it was in
/// (`key`: the channel's offset, `| 1` for the table of readers' offers, `| 2` for writers').
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    pub(crate) word: u64,
    pub(crate) key: u64,
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
    rec: Rec,
    gen: Cell<u32>,
}

thread_local! {
    static WAITER: Cell<Option<&'static Waiter>> = const { Cell::new(None) };
    /// Gives this thread's record back when the thread ends (set with the record).
    static GIVE_BACK: GiveBack = const { GiveBack };
}

/// Gives a thread's waiter record back to the free records when the thread ends. (A process's
/// main thread ends with its process: its parent takes its records back when it settles the
/// process, see [`reclaim`].)
struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        if let Some(w) = WAITER.with(|c| c.take()) {
            give_back(w.rec, census::mine(), false);
        }
    }
}

/// Gives record `rec`, used by the process with ledger root `owner`, back to the free
/// records, unless somebody else did (its owner is then 0 already). Only records of the
/// smallest size are used again; a larger one stays idle (a thread's select with more than
/// [`MIN_GUARDS`] guards). Call only when no thread uses it any more: its thread ended
/// between rounds, or its process died (`dead`), perhaps in the middle of a round.
fn give_back(rec: Rec, owner: u64, dead: bool) {
    if owner == 0
        || rec
            .hdr
            .owner
            .compare_exchange(owner, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
    {
        return;
    }
    // Made idle, a record is never selected again: a claimer only selects a waiting round.
    let mut cur = rec.hdr.sel.load(Ordering::SeqCst);
    loop {
        let state = cur as u32;
        if dead && state >= SELECTED && state != IDLE {
            // A claimer selected the dead process's round and may still deliver to it or
            // release its guard: the record is never used again (it stays idle). What it
            // holds but that guard's message (which the claimer owns, unless it gave it
            // back) is nobody's.
            free_held(rec, Some((state - SELECTED) as usize));
            return;
        }
        match rec.hdr.sel.compare_exchange(
            cur,
            cur | u64::from(IDLE),
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => break,
            Err(c) => cur = c,
        }
    }
    if dead {
        // Idle, nobody can claim its messages any more: they are nobody's.
        free_held(rec, None);
    }
    if rec.cap == MIN_GUARDS {
        rec.arena.free_waiter(rec.offset, &rec.hdr.free_next);
    }
}

/// Frees the blocks a dead process's record still names: the messages its select staged
/// (but that of guard `selected`, which a claimer owns, unless it gave it back) and a message
/// delivered to it. A claimer that gives back or delivers after this frees its block itself
/// (see [`give_back_offer`], [`deliver`]): each block is taken from the record by one swap,
/// so one of the two frees it. (The record names only blocks its thread holds: a select
/// clears a guard's entry before it frees or hands on the block, see [`unstage`].)
fn free_held(rec: Rec, selected: Option<usize>) {
    // Before it looks at what the record names (a claimer looks at this after it wrote).
    rec.hdr.pid.store(0, Ordering::SeqCst);
    for g in 0..rec.cap {
        let given_back = || {
            rec.table(OUT_LEN, g)
                .is_some_and(|l| l.load(Ordering::SeqCst) & GIVEN_BACK != 0)
        };
        if selected == Some(g) && !given_back() {
            continue;
        }
        if let Some(o) = rec.table(OUT_OFF, g) {
            let off = o.swap(0, Ordering::SeqCst);
            if off != 0 {
                rec.arena.free_block(off);
            }
        }
    }
    let mail = rec.hdr.mail_off.swap(0, Ordering::SeqCst);
    if mail != 0 {
        rec.arena.free_block(mail);
    }
}

/// Takes back the waiter records of the process with ledger root `owner`, which has ended
/// (its parent settles it): they are free for other threads, of any process, from now on.
pub(crate) fn reclaim(arena: &'static Arena, owner: u64) {
    let mut offset = arena.first_waiter();
    while offset != 0 {
        let rec = Rec::at(arena, offset);
        let next = rec.hdr.all_next.load(Ordering::Acquire) * REC_GRAIN;
        if rec.hdr.owner.load(Ordering::SeqCst) == owner {
            give_back(rec, owner, true);
        }
        offset = next;
    }
}

/// Guard `guard`'s staged message is no longer this thread's select's (it frees the block, or
/// hands it to a selecting reader): its record, if it has one, no longer names it, so that
/// nobody frees it again if this process dies (see [`free_held`]). Only between rounds.
pub(crate) fn unstage(guard: usize) {
    if let Some(w) = WAITER.with(Cell::get) {
        if let Some(o) = w.rec.table(OUT_OFF, guard) {
            o.store(0, Ordering::SeqCst);
        }
    }
}

impl Waiter {
    /// This thread's record, with tables for at least `guards` guards: allocated in the arena
    /// on first use, and again, larger, for a select with more guards than it has (the old
    /// record stays idle: nobody can select it any more).
    pub(crate) fn current(
        arena: &'static Arena,
        guards: usize,
    ) -> Result<&'static Waiter, crate::error::ChannelError> {
        let old = WAITER.with(Cell::get);
        if let Some(w) = old {
            if w.rec.cap >= guards {
                return Ok(w);
            }
        }
        let cap = guards.clamp(MIN_GUARDS, OFFERABLE).next_power_of_two();
        let size = HEADER + 3 * 8 * cap as u64;
        let full = |_| {
            crate::error::ChannelError::SharedMemory("the network's shared memory is full".into())
        };
        let (offset, new) = if cap == MIN_GUARDS {
            arena
                .alloc_waiter(size, |off| &Rec::at(arena, off).hdr.free_next)
                .map_err(full)?
        } else {
            (arena.alloc_static(size).map_err(full)?, true)
        };
        debug_assert_eq!(offset % REC_GRAIN, 0);
        // SAFETY: the `size` bytes at `offset` are a record of `cap` guards that is ours: just
        // allocated (zeroed, 256-byte aligned), or taken off the free records, which hold
        // only records of this size. Records are only ever accessed through atomics.
        let hdr: &'static RecHeader = unsafe { &*arena.ptr(offset, size).cast::<RecHeader>() };
        // A record used before goes on from its last round, so that its generation bits keep
        // filtering old offer words (the key check decides, see the module documentation).
        let rec = Rec {
            arena,
            offset,
            hdr,
            cap,
        };
        let gen = if new {
            hdr.cap.store(cap as u32, Ordering::Relaxed);
            hdr.sel.store(u64::from(IDLE), Ordering::SeqCst);
            old.map_or(0, |o| o.gen.get())
        } else {
            // A process that died in a select left its offer words in channels' tables; their
            // generation bits match one round in 256, so no guard may keep its old key (nor
            // its staged message): a guard this thread never sets then waits on nothing.
            for table in [KEY, OUT_OFF, OUT_LEN] {
                for g in 0..cap {
                    if let Some(w) = rec.table(table, g) {
                        w.store(0, Ordering::SeqCst);
                    }
                }
            }
            hdr.mail_off.store(0, Ordering::SeqCst);
            (hdr.sel.load(Ordering::SeqCst) >> 32) as u32
        };
        hdr.pid.store(std::process::id(), Ordering::SeqCst);
        hdr.owner.store(census::mine(), Ordering::SeqCst);
        if new {
            arena.list_waiter(offset, &hdr.all_next);
        }
        let w: &'static Waiter = Box::leak(Box::new(Waiter {
            rec,
            gen: Cell::new(gen),
        }));
        if let Some(o) = old {
            give_back(o.rec, census::mine(), false);
        }
        WAITER.with(|c| c.set(Some(w)));
        // Registers the thread's give-back at its end (a no-op after the first time).
        GIVE_BACK.with(|_| {});
        Ok(w)
    }

    /// Starts a new round: from now on counterparts may select us through our offers.
    pub(crate) fn begin(&self) {
        let gen = self.gen.get().wrapping_add(1);
        self.gen.set(gen);
        self.rec.hdr.mail_off.store(0, Ordering::SeqCst);
        self.rec.hdr.sel.store(
            (u64::from(gen) << 32) | u64::from(WAITING),
            Ordering::SeqCst,
        );
    }

    /// Which record this is, as [`owner`] tells it from an offer word.
    pub(crate) fn id(&self) -> u64 {
        self.rec.offset / REC_GRAIN
    }

    /// Says for the rounds to come that guard `guard` waits on the channel and side `key`
    /// (see [`Offer`]; 0 for a guard nobody can claim). Only between rounds.
    pub(crate) fn set_key(&self, guard: usize, key: u64) {
        if let Some(k) = self.rec.table(KEY, guard) {
            k.store(key, Ordering::SeqCst);
        }
    }

    /// Stages the message of rendezvous output guard `guard` (a block and its length) for
    /// the rounds to come. Only between rounds.
    pub(crate) fn stage(&self, guard: usize, offset: u64, len: u64) {
        if let (Some(o), Some(l)) = (
            self.rec.table(OUT_OFF, guard),
            self.rec.table(OUT_LEN, guard),
        ) {
            l.store(len, Ordering::SeqCst);
            o.store(offset, Ordering::SeqCst);
        }
    }

    /// Whether the claimer of output guard `guard` has taken its message.
    pub(crate) fn taken(&self, guard: usize) -> bool {
        self.rec
            .table(OUT_OFF, guard)
            .is_none_or(|o| o.load(Ordering::SeqCst) == 0)
    }

    /// Whether the claimer of output guard `guard` gave its message back, not taken (see
    /// [`give_back_offer`]): the block is ours again; the next [`stage`](Self::stage) clears
    /// it.
    pub(crate) fn given_back(&self, guard: usize) -> bool {
        self.rec
            .table(OUT_LEN, guard)
            .is_some_and(|l| l.load(Ordering::SeqCst) & GIVEN_BACK != 0)
    }

    /// Whether the claimer of output guard `guard` keeps its message only until we ask for it
    /// back (see [`WITHDRAWABLE`]).
    pub(crate) fn withdrawable(&self, guard: usize) -> bool {
        self.rec
            .table(OUT_LEN, guard)
            .is_some_and(|l| l.load(Ordering::SeqCst) & WITHDRAWABLE != 0)
    }

    /// Asks the claimer of output guard `guard` for its message back (it answers by giving it
    /// back, or by taking it: a reader took it meanwhile).
    pub(crate) fn ask_back(&self, guard: usize) {
        if let Some(l) = self.rec.table(OUT_LEN, guard) {
            l.fetch_or(ASKED_BACK, Ordering::SeqCst);
        }
    }

    /// The message a writer delivered to us, if it has (then the block is ours).
    pub(crate) fn mail(&self) -> Option<(u64, u64)> {
        let h = self.rec.hdr;
        let off = h.mail_off.load(Ordering::SeqCst);
        (off != 0).then(|| {
            h.mail_off.store(0, Ordering::SeqCst);
            (off, h.mail_len.load(Ordering::SeqCst))
        })
    }

    /// The offer word for `guard` in the current round (`None` for a guard whose index does
    /// not fit a word or the record: it waits without an offer).
    pub(crate) fn offer(&self, guard: usize) -> Option<u64> {
        (guard < self.rec.cap && guard < OFFERABLE).then(|| {
            (self.id() << ID_SHIFT)
                | ((u64::from(self.gen.get()) & GEN_MASK) << GUARD_BITS)
                | guard as u64
        })
    }

    /// The message trace's id of a message handed over through our guard `guard` in this
    /// round.
    pub(crate) fn message_id(&self, guard: usize) -> u64 {
        trace::offer_message(self.id(), self.gen.get(), guard as u64)
    }

    /// Whether a counterpart has selected us in this round.
    pub(crate) fn is_selected(&self) -> bool {
        (self.rec.hdr.sel.load(Ordering::SeqCst) as u32) >= SELECTED
    }

    /// Ends the round: either we abort it, or we learn which guard a counterpart selected.
    pub(crate) fn finish(&self) -> Outcome {
        let gen = u64::from(self.gen.get()) << 32;
        match self.rec.hdr.sel.compare_exchange(
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

/// Tries to select the waiter named by offer `offer.word` for the guard the word names, for
/// the channel and side it was found on. A won writer's offer comes with the block of its
/// message (see the module documentation).
pub(crate) fn claim(arena: &'static Arena, offer: Offer) -> Claim {
    let word = offer.word;
    let gen = (word >> GUARD_BITS) & GEN_MASK;
    let guard = (word & ((1 << GUARD_BITS) - 1)) as usize;
    let rec = record(arena, word);
    let cur = rec.hdr.sel.load(Ordering::SeqCst);
    if (cur >> 32) & GEN_MASK != gen || cur as u32 != WAITING {
        return Claim::Stale;
    }
    // Read after the round was seen waiting and before the CAS: if the CAS wins, the round
    // was still waiting, so these are its own (the next round's are set only after it ended).
    let Some(key) = rec.table(KEY, guard) else {
        return Claim::Stale;
    };
    if key.load(Ordering::SeqCst) != offer.key {
        // A word from an old round: in this round the guard waits elsewhere, or not at all.
        return Claim::Stale;
    }
    let (offset, len) = match (rec.table(OUT_OFF, guard), rec.table(OUT_LEN, guard)) {
        (Some(o), Some(l)) => (
            o.load(Ordering::SeqCst),
            l.load(Ordering::SeqCst) & LEN_MASK,
        ),
        _ => (0, 0),
    };
    let selected = (cur & !0xffff_ffff) | (u64::from(SELECTED) + guard as u64);
    match rec
        .hdr
        .sel
        .compare_exchange(cur, selected, Ordering::SeqCst, Ordering::SeqCst)
    {
        Ok(_) => Claim::Won(Handoff {
            word,
            round: (cur >> 32) as u32,
            offset,
            len,
        }),
        Err(_) => Claim::Busy,
    }
}

/// The message trace's id of the message handed over through offer `word` of round `round`
/// (the claimer and the offering waiter both know them).
pub(crate) fn message_id(word: u64, round: u32) -> u64 {
    trace::offer_message(owner(word), round, word & ((1 << GUARD_BITS) - 1))
}

/// Tells the writer that made offer `word` that its message was taken.
pub(crate) fn release(arena: &'static Arena, word: u64) {
    let guard = (word & ((1 << GUARD_BITS) - 1)) as usize;
    if let Some(off) = record(arena, word).table(OUT_OFF, guard) {
        off.store(0, Ordering::SeqCst);
    }
}

/// The block of the message staged for the guard that offer `word` names, which its claimer
/// holds until it releases or gives it back (`None` once released).
pub(crate) fn staged_block(arena: &'static Arena, word: u64) -> Option<u64> {
    let guard = (word & ((1 << GUARD_BITS) - 1)) as usize;
    let off = record(arena, word)
        .table(OUT_OFF, guard)?
        .load(Ordering::SeqCst);
    (off != 0).then_some(off)
}

/// The bit of a guard's `out_len` that says its claimer gave the message back (see
/// [`give_back_offer`]).
const GIVEN_BACK: u64 = 1 << 63;

/// The bit of a guard's `out_len` that says its claimer keeps the message only until the
/// select asks for it back (a socket pump that offers it to a remote host, see
/// [`offer_withdrawable`]): the select, while it waits for the claimer, still watches its
/// timeout and its other guards.
const WITHDRAWABLE: u64 = 1 << 62;

/// The bit of a guard's `out_len` by which the select asks a [`WITHDRAWABLE`] claimer for
/// its message back (see [`Waiter::ask_back`]).
const ASKED_BACK: u64 = 1 << 61;

/// A guard's `out_len` without its bits: the message's length.
const LEN_MASK: u64 = ASKED_BACK - 1;

/// Tells the writer that made offer `word` that its message was not taken after all: its
/// block is its own again, and its select goes on as if nobody had claimed it (a socket pump
/// that found no remote reader for it in time).
pub(crate) fn give_back_offer(arena: &'static Arena, word: u64) {
    let guard = (word & ((1 << GUARD_BITS) - 1)) as usize;
    let rec = record(arena, word);
    if let Some(len) = rec.table(OUT_LEN, guard) {
        len.fetch_or(GIVEN_BACK, Ordering::SeqCst);
    }
    // Its process died and was settled meanwhile (see `free_held`): nobody takes the block
    // back but us.
    if rec.hdr.pid.load(Ordering::SeqCst) == 0 {
        if let Some(o) = rec.table(OUT_OFF, guard) {
            let off = o.swap(0, Ordering::SeqCst);
            if off != 0 {
                arena.free_block(off);
            }
        }
    }
}

/// The claimer of offer `word` keeps its message only until the select asks for it back
/// (see [`WITHDRAWABLE`]); the caller wakes the select.
pub(crate) fn offer_withdrawable(arena: &'static Arena, word: u64) {
    let guard = (word & ((1 << GUARD_BITS) - 1)) as usize;
    if let Some(len) = record(arena, word).table(OUT_LEN, guard) {
        len.fetch_or(WITHDRAWABLE, Ordering::SeqCst);
    }
}

/// Whether the select that made offer `word` asks its claimer for the message back.
pub(crate) fn asked_back(arena: &'static Arena, word: u64) -> bool {
    let guard = (word & ((1 << GUARD_BITS) - 1)) as usize;
    record(arena, word)
        .table(OUT_LEN, guard)
        .is_some_and(|l| l.load(Ordering::SeqCst) & ASKED_BACK != 0)
}

/// Hands the message in block `offset` (`len` bytes) to the reader that made offer `word`
/// and that we selected; the block is the reader's from now on.
pub(crate) fn deliver(arena: &'static Arena, word: u64, offset: u64, len: u64) {
    let rec = record(arena, word);
    rec.hdr.mail_len.store(len, Ordering::SeqCst);
    rec.hdr.mail_off.store(offset, Ordering::SeqCst);
    // Its process died and was settled meanwhile (see `free_held`): nobody reads it.
    if rec.hdr.pid.load(Ordering::SeqCst) == 0 {
        let off = rec.hdr.mail_off.swap(0, Ordering::SeqCst);
        if off != 0 {
            arena.free_block(off);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_processs_offer_never_selects_the_thread_that_reuses_its_record() {
        let arena = Arena::get().unwrap();
        // A process's thread waits in a select whose guard 4 reads channel `key`, and dies
        // there: its offer word stays in that channel's table.
        let key = 0x1000 | 1;
        let dead = Waiter::current(arena, 5).unwrap();
        dead.set_key(4, key);
        dead.begin();
        let word = dead.offer(4).unwrap();
        // Its parent settles it: the record is given back...
        let fake_root = 0x4242_0000;
        dead.rec.hdr.owner.store(fake_root, Ordering::SeqCst);
        WAITER.with(|c| c.set(None));
        reclaim(arena, fake_root);
        // ...and this thread takes it for selects of fewer guards.
        let next = Waiter::current(arena, 3).unwrap();
        assert_eq!(next.rec.offset, dead.rec.offset, "the record is used again");
        for round in 0..600 {
            for g in 0..3 {
                next.set_key(g, 0x2000 | 1);
            }
            next.begin();
            // A writer on `key` finds the dead offer (its generation bits match every 256
            // rounds): it must never select guard 4 of a round that has no guard 4.
            let claimed = claim(arena, Offer { word, key });
            assert!(
                matches!(claimed, Claim::Stale),
                "round {round}: an old offer selected the new owner"
            );
            assert!(matches!(next.finish(), Outcome::Aborted));
        }
    }

    /// A block of a size class no other test uses (20 MiB: its pages are never touched), so
    /// that whether it is free shows in what the next allocation of that size returns; the
    /// tests that use it take turns.
    const LEN: u64 = 20 << 20;
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Whether block `b` is free: the next allocation of its size class takes it (it is put
    /// back after), and only once (a block freed twice would be handed out twice).
    fn is_free(arena: &'static Arena, b: u64) -> bool {
        let first = arena.alloc_block(LEN).unwrap();
        let second = arena.alloc_block(LEN).unwrap();
        assert_ne!(first, second, "block {first} was freed twice");
        arena.free_block(second);
        arena.free_block(first);
        first == b
    }

    /// This thread (standing for a process that then dies) waits in a select whose output
    /// guard 0 offers block `b` on channel `key`; a claimer selects it. Returns the word.
    fn selected_offering(arena: &'static Arena, b: u64) -> u64 {
        let key = 0x3000 | 2;
        let w = Waiter::current(arena, 1).unwrap();
        w.set_key(0, key);
        w.stage(0, b, LEN);
        w.begin();
        let word = w.offer(0).unwrap();
        match claim(arena, Offer { word, key }) {
            Claim::Won(h) => assert_eq!(h.offset, b),
            _ => panic!("the claim did not win"),
        }
        word
    }

    /// The process whose thread this is dies, and its parent settles it.
    fn dies_and_is_settled(arena: &'static Arena, root: u64) {
        let w = WAITER.with(Cell::get).unwrap();
        w.rec.hdr.owner.store(root, Ordering::SeqCst);
        WAITER.with(|c| c.set(None));
        reclaim(arena, root);
    }

    #[test]
    fn a_message_given_back_to_a_select_whose_process_died_is_freed_once() {
        let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let arena = Arena::get().unwrap();
        // Given back after the settling: the claimer frees it.
        let b = arena.alloc_block(LEN).unwrap();
        let word = selected_offering(arena, b);
        dies_and_is_settled(arena, 0x4343_0000);
        assert!(!is_free(arena, b), "the claimer's block was freed under it");
        give_back_offer(arena, word);
        assert!(
            is_free(arena, b),
            "the block given back to a dead select leaked"
        );
    }

    #[test]
    fn a_message_given_back_before_its_dead_select_was_settled_is_freed_once() {
        let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let arena = Arena::get().unwrap();
        let b = arena.alloc_block(LEN + 1).unwrap();
        let word = selected_offering(arena, b);
        give_back_offer(arena, word);
        dies_and_is_settled(arena, 0x4444_0000);
        // (`is_free` for a block of LEN + 1: the same size class.)
        assert!(
            is_free(arena, b),
            "the block given back to a dead select leaked"
        );
    }

    #[test]
    fn a_block_a_select_freed_is_not_freed_again_when_its_process_dies() {
        let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let arena = Arena::get().unwrap();
        let b = arena.alloc_block(LEN + 2).unwrap();
        let w = Waiter::current(arena, 1).unwrap();
        w.set_key(0, 0x3000 | 2);
        w.stage(0, b, LEN);
        w.begin();
        assert!(matches!(w.finish(), Outcome::Aborted));
        // The select ends without a taker: it frees its staged block.
        unstage(0);
        arena.free_block(b);
        dies_and_is_settled(arena, 0x4545_0000);
        assert!(is_free(arena, b));
    }

    #[test]
    fn a_message_delivered_to_a_select_whose_process_died_is_freed_once() {
        let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let arena = Arena::get().unwrap();
        let b = arena.alloc_block(LEN + 3).unwrap();
        let key = 0x3000 | 1;
        let w = Waiter::current(arena, 1).unwrap();
        w.set_key(0, key);
        w.begin();
        let word = w.offer(0).unwrap();
        assert!(matches!(claim(arena, Offer { word, key }), Claim::Won(_)));
        dies_and_is_settled(arena, 0x4646_0000);
        deliver(arena, word, b, LEN);
        assert!(
            is_free(arena, b),
            "the message delivered to a dead select leaked"
        );
    }
}
