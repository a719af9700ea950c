//! What one OS process of a network knows about itself: which process it is, which channels
//! it holds and how, which ends it is handing to a child, and what to mark when a process
//! dies.
//!
//! Every hold on a channel (a `Channel` handle, a writing or reading end, a socket host's or
//! a proxy's hold) is taken and let go here, and written down in the process's **ledger**:
//! a table in shared memory that the parent reads once the process has ended, to let go of
//! whatever it still held (see [`ChildLedger`]). So a channel is freed when its last holder
//! is gone in every process, dead ones included.
//!
//! The order of the two writes makes a process killed between them leave a hold behind
//! (the channel is never freed), never take one away twice: a hold is taken on the channel
//! first and written down after; written off first and let go after.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::shm::arena::Arena;
use crate::shm::census::{
    self, root_at, table_at, table_entries, Entry, LedgerRoot, TableHeader, LEDGER_MAGIC,
};
use crate::shm::ring::Chan;
use crate::shm::waiter;

static CURRENT: OnceLock<&'static str> = OnceLock::new();

/// The function this process runs (`main` in a root process), for messages.
pub(crate) fn current_name() -> &'static str {
    CURRENT.get().copied().unwrap_or("main")
}

/// Set in a process started by a combinator.
static IN_CHILD: AtomicBool = AtomicBool::new(false);

/// Environment variable through which a child learns its ledger's offset.
pub(crate) const ENV_LEDGER: &str = "PYCSP_LEDGER";

/// Whether this process was started by a combinator (it is not a network's root).
pub(crate) fn in_child() -> bool {
    IN_CHILD.load(Ordering::Relaxed)
}

/// This process was started by a combinator (called once, before its function runs), with
/// the ledger its parent made for it, if any.
pub(crate) fn enter_child(ledger: Option<u64>) {
    IN_CHILD.store(true, Ordering::Relaxed);
    if let (Some(root), Ok(arena)) = (ledger, Arena::get()) {
        let mut l = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_none() {
            *l = Some(Ledger::adopt(arena, root));
            census::own(arena, root, current_name());
        }
    }
}

/// This process runs the `#[process]` function `name`.
pub(crate) fn set_current(name: &'static str) {
    let _ = CURRENT.set(name);
    census::rename(name);
}

/// How a process holds a channel.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub(crate) enum Role {
    /// A `Channel` handle, a socket host, a proxy's pump: holds without being an end.
    Handle,
    Writer,
    Reader,
}

impl Role {
    pub(crate) fn end(writer: bool) -> Role {
        if writer {
            Role::Writer
        } else {
            Role::Reader
        }
    }

    fn index(self) -> usize {
        match self {
            Role::Handle => 0,
            Role::Writer => 1,
            Role::Reader => 2,
        }
    }
}

/// Holds `chan` once more as `role` (the caller holds it already, or just created it and
/// gives that hold to `role`, see [`took`]).
pub(crate) fn hold(chan: &Chan, role: Role) {
    match role {
        Role::Handle => chan.hold(),
        Role::Writer => chan.join(true),
        Role::Reader => chan.join(false),
    }
    note(chan.key(), role, 1);
}

/// A channel this process just created or acquired (a directory lookup), held once as a
/// `Handle`: written down.
pub(crate) fn took(chan: &Chan) {
    note(chan.key(), Role::Handle, 1);
}

/// Lets go of `chan` as `role` (an end retires). The caller must not use `chan` afterwards.
pub(crate) fn release(chan: Chan, role: Role) {
    note(chan.key(), role, -1);
    match role {
        Role::Handle => chan.release(),
        Role::Writer => chan.retire(true),
        Role::Reader => chan.retire(false),
    }
}

/// Lets go of `chan` as `role`, calling `between` after the end retired and before the hold
/// is let go (a socket end waits there for its host to know).
pub(crate) fn release_with(chan: Chan, role: Role, between: impl FnOnce(&Chan)) {
    note(chan.key(), role, -1);
    match role {
        Role::Handle => {}
        Role::Writer => chan.retire_side(true),
        Role::Reader => chan.retire_side(false),
    }
    between(&chan);
    chan.release();
}

/// A hold of `chan` as `role` leaves this process (an end in a message or a child's
/// arguments): written off, not let go.
pub(crate) fn moved_out(chan: &Chan, role: Role) {
    note(chan.key(), role, -1);
}

/// A hold of `chan` as `role` came to this process (an end read from a message or received
/// as an argument), or a [`moved_out`] was undone.
pub(crate) fn moved_in(chan: &Chan, role: Role) {
    let key = chan.key();
    if PREPAID.with(|p| {
        let mut p = p.borrow_mut();
        match p.get_mut(&(key, role)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }) {
        return;
    }
    note(key, role, 1);
}

thread_local! {
    /// Ends the parent wrote into this process's ledger before starting it: receiving them
    /// as arguments does not write them down again.
    static PREPAID: RefCell<HashMap<(u64, Role), u32>> = RefCell::new(HashMap::new());
    /// Set while arguments for a new process are being encoded: ends serialized meanwhile
    /// record themselves here, so the parent knows which channels the child holds.
    static TRANSFERS: RefCell<Option<Vec<(u64, Role)>>> = const { RefCell::new(None) };
}

/// The arguments of this process are about to be decoded: the ends in them were written
/// into its ledger by its parent.
pub(crate) fn expect_arguments() {
    let Some(l) = LEDGER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(Ledger::counts)
    else {
        return;
    };
    PREPAID.with(|p| *p.borrow_mut() = l);
}

/// The arguments are decoded: what was not received is not owed any more.
pub(crate) fn arguments_done() {
    PREPAID.with(|p| p.borrow_mut().clear());
}

/// Runs `f` and returns, with its result, the channels (keys) and roles of the ends it
/// serialized.
pub(crate) fn collect_transfers<R>(f: impl FnOnce() -> R) -> (R, Vec<(u64, Role)>) {
    let prev = TRANSFERS.with(|t| t.borrow_mut().replace(Vec::new()));
    let r = f();
    let got = TRANSFERS
        .with(|t| std::mem::replace(&mut *t.borrow_mut(), prev))
        .unwrap_or_default();
    (r, got)
}

/// An end of `chan` was serialized: if a child's arguments are being encoded, it goes there.
pub(crate) fn record_transfer(chan: &Chan, role: Role) {
    TRANSFERS.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            v.push((chan.key(), role));
        }
    });
}

/// Poisons every channel in `keys` that is still alive.
pub(crate) fn poison_keys(keys: &[u64]) {
    let Ok(arena) = Arena::get() else { return };
    for &key in keys {
        if let Some(c) = Chan::attach(arena, key) {
            c.poison();
        }
    }
}

/// Lets go of the ends `transfers` (channel keys and roles) that no process will receive:
/// they retire.
pub(crate) fn release_keys(transfers: &[(u64, Role)]) {
    let Ok(arena) = Arena::get() else { return };
    for &(key, role) in transfers {
        if let Some(c) = Chan::attach(arena, key) {
            match role {
                Role::Handle => {}
                Role::Writer => c.retire_side(true),
                Role::Reader => c.retire_side(false),
            }
            c.release();
        }
    }
}

/// Marks every channel in `keys` that is still alive as held by a process that died.
pub(crate) fn mark_peer_died(keys: &[u64], pid: u32, name: &str) {
    let Ok(arena) = Arena::get() else { return };
    for &key in keys {
        if let Some(c) = Chan::attach(arena, key) {
            c.mark_peer_died(pid, name);
        }
    }
}

/// The channels of which this process holds an end (in a child process; none in a root).
fn own_ends() -> Vec<u64> {
    if !IN_CHILD.load(Ordering::Relaxed) {
        return Vec::new();
    }
    LEDGER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|l| l.end_keys())
        .unwrap_or_default()
}

/// Marks every end this process holds as held by a dead process (this one).
pub(crate) fn mark_own_ends_dead(name: &str) {
    mark_peer_died(&own_ends(), std::process::id(), name);
}

/// Marks every end this process holds as held by the dead process `pid` (`name`): a process
/// that returns `PeerDied` passes the crash on to its other peers, naming who died.
pub(crate) fn spread_peer_died(pid: u32, name: &str) {
    mark_peer_died(&own_ends(), pid, name);
}

/// Poisons every end this process holds.
pub(crate) fn poison_own_ends() {
    poison_keys(&own_ends());
}

// ---------------------------------------------------------------------------------------
// The ledger.

/// This process's ledger: made on first use (in a root process), or the one the parent made.
static LEDGER: Mutex<Option<Ledger>> = Mutex::new(None);

/// Writes down that this process holds the channel `key` as `role` `delta` times more.
fn note(key: u64, role: Role, delta: i32) {
    let Ok(arena) = Arena::get() else { return };
    let mut l = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
    if l.is_none() {
        match Ledger::new(arena) {
            Some(new) => *l = Some(new),
            None => return, // no room: this process's holds are not written down
        }
    }
    if let Some(l) = l.as_mut() {
        l.note(key, role, delta);
    }
}

/// A thread of this process is about to publish a wait in the census (a listener, before the
/// channel it serves is written down): the process has its record there, made now if need be.
/// A wait published without one is lost, and a deadlock through it never found.
pub(crate) fn listed() {
    if let Ok(arena) = Arena::get() {
        ensure_own_ledger(arena);
    }
}

/// This process is about to start a child: it has a ledger (and with it a record in the
/// network's census, so that deadlock detection sees it), made now if need be.
fn ensure_own_ledger(arena: &'static Arena) {
    let mut l = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
    if l.is_none() {
        match Ledger::new(arena) {
            Some(new) => *l = Some(new),
            None => census::unlisted(arena),
        }
    }
}

const FIRST_ENTRIES: u64 = 32;

/// A process's ledger, as the process itself uses it: the table in shared memory, and an
/// index of it in the process's own memory.
struct Ledger {
    arena: &'static Arena,
    root: u64,
    index: HashMap<u64, usize>,
    free: Vec<usize>,
}

impl Ledger {
    fn new(arena: &'static Arena) -> Option<Ledger> {
        let root = ChildLedger::make(arena)?;
        census::own(arena, root, current_name());
        Some(Ledger {
            arena,
            root,
            index: HashMap::new(),
            free: Vec::new(),
        })
    }

    /// The ledger at `root` that a parent made (with the ends it gave this process).
    fn adopt(arena: &'static Arena, root: u64) -> Ledger {
        let mut l = Ledger {
            arena,
            root,
            index: HashMap::new(),
            free: Vec::new(),
        };
        let entries = l.entries();
        for (i, e) in entries.iter().enumerate() {
            match e.key.load(Ordering::Acquire) {
                0 => l.free.push(i),
                k => {
                    l.index.insert(k, i);
                }
            }
        }
        l
    }

    fn entries(&self) -> &'static [Entry] {
        table_entries(self.arena, self.root).unwrap_or(&[])
    }

    fn counts(&self) -> HashMap<(u64, Role), u32> {
        let mut m = HashMap::new();
        for e in self.entries() {
            let k = e.key.load(Ordering::Acquire);
            if k != 0 {
                for role in [Role::Handle, Role::Writer, Role::Reader] {
                    let n = e.counts[role.index()].load(Ordering::Acquire);
                    if n > 0 {
                        m.insert((k, role), n);
                    }
                }
            }
        }
        m
    }

    fn end_keys(&self) -> Vec<u64> {
        self.entries()
            .iter()
            .filter(|e| {
                e.counts[1].load(Ordering::Acquire) + e.counts[2].load(Ordering::Acquire) > 0
            })
            .map(|e| e.key.load(Ordering::Acquire))
            .filter(|&k| k != 0)
            .collect()
    }

    fn note(&mut self, key: u64, role: Role, delta: i32) {
        let entries = self.entries();
        if let Some(&i) = self.index.get(&key) {
            let e = &entries[i];
            let c = &e.counts[role.index()];
            let n = c.load(Ordering::Relaxed).saturating_add_signed(delta);
            c.store(n, Ordering::Release);
            if e.counts.iter().all(|c| c.load(Ordering::Relaxed) == 0) {
                e.key.store(0, Ordering::Release);
                self.index.remove(&key);
                self.free.push(i);
            }
            return;
        }
        if delta <= 0 {
            return; // a hold this process never wrote down (see the module docs)
        }
        if self.free.is_empty() && !self.grow() {
            return;
        }
        let entries = self.entries();
        let Some(i) = self.free.pop() else { return };
        let e = &entries[i];
        for (r, c) in e.counts.iter().enumerate() {
            c.store(
                if r == role.index() { delta as u32 } else { 0 },
                Ordering::Release,
            );
        }
        e.key.store(key, Ordering::Release);
        self.index.insert(key, i);
    }

    /// Doubles the table (a new one, published by one store, then the old one freed).
    fn grow(&mut self) -> bool {
        let old = self.entries();
        let len = (old.len() as u64 * 2).max(FIRST_ENTRIES);
        let Some(table) = alloc_table(self.arena, len) else {
            return false;
        };
        let Some(new) = table_at(self.arena, table) else {
            return false;
        };
        for (i, e) in old.iter().enumerate() {
            for r in 0..3 {
                new[i].counts[r].store(e.counts[r].load(Ordering::Relaxed), Ordering::Relaxed);
            }
            new[i]
                .key
                .store(e.key.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let root = root_at(self.arena, self.root);
        let prev = root.table.swap(table, Ordering::AcqRel);
        if prev != 0 {
            self.arena.free_block(prev);
        }
        self.free.extend((old.len()..len as usize).rev());
        true
    }
}

fn alloc_table(arena: &Arena, len: u64) -> Option<u64> {
    let bytes = 16 + len * std::mem::size_of::<Entry>() as u64;
    let table = arena.alloc_block_zeroed(bytes).ok()?;
    // SAFETY: the block is new and ours; `len` is written before the table is published.
    unsafe { (*arena.ptr(table, 16).cast::<TableHeader>()).len = len };
    Some(table)
}

/// The ledger of a child process, as its parent sees it: made before the child starts (with
/// the ends its arguments carry), read when it ends, and then settled: every hold the child
/// still had is let go (after marking its ends with the child's death, if it died).
pub(crate) struct ChildLedger {
    arena: &'static Arena,
    root: u64,
    /// The ends the child was started with: (channel, is a writer).
    ends: Vec<(u64, bool)>,
}

impl ChildLedger {
    /// Makes an empty ledger in shared memory; its offset.
    fn make(arena: &'static Arena) -> Option<u64> {
        let root = arena
            .alloc_block_zeroed(std::mem::size_of::<LedgerRoot>() as u64)
            .ok()?;
        let r = arena.ptr(root, 8).cast::<u64>();
        // SAFETY: the block is new and ours; the magic is written before the ledger is used.
        unsafe { *r = LEDGER_MAGIC };
        census::register(arena, root);
        Some(root)
    }

    /// A new ledger for a child that will receive the ends `transfers` (written off by this
    /// process while they were encoded).
    pub(crate) fn new(name: &str, transfers: &[(u64, Role)]) -> Option<ChildLedger> {
        let arena = Arena::get().ok()?;
        ensure_own_ledger(arena);
        let Some(root) = ChildLedger::make(arena) else {
            census::unlisted(arena);
            return None;
        };
        let mut l = Ledger {
            arena,
            root,
            index: HashMap::new(),
            free: Vec::new(),
        };
        for &(key, role) in transfers {
            l.note(key, role, 1);
        }
        census::name_child(arena, root, name);
        Some(ChildLedger {
            arena,
            root,
            ends: transfers
                .iter()
                .filter(|(_, r)| *r != Role::Handle)
                .map(|&(k, r)| (k, r == Role::Writer))
                .collect(),
        })
    }

    /// The ends the child was started with: (channel key, is a writer).
    pub(crate) fn started_with(&self) -> &[(u64, bool)] {
        &self.ends
    }

    /// The offset the child finds its ledger at (see [`ENV_LEDGER`]).
    pub(crate) fn offset(&self) -> u64 {
        self.root
    }

    /// The channels of which the child holds ends (for marking them when it dies).
    pub(crate) fn end_keys(&self) -> Vec<u64> {
        Ledger {
            arena: self.arena,
            root: self.root,
            index: HashMap::new(),
            free: Vec::new(),
        }
        .end_keys()
    }

    /// The child never started: frees the ledger, letting go of nothing (the caller lets
    /// go of the ends it was to receive).
    pub(crate) fn discard(self) {
        census::unregister(self.arena, self.root);
        let root = root_at(self.arena, self.root);
        let table = root.table.swap(0, Ordering::AcqRel);
        if table != 0 {
            self.arena.free_block(table);
        }
        self.arena.free_block(self.root);
    }

    /// The child has ended (and was reaped): lets go of every hold it still had (its ends
    /// retire) and frees the ledger. Call once the child can no longer run.
    pub(crate) fn settle(self) {
        if let Some(entries) = table_entries(self.arena, self.root) {
            for e in entries {
                let key = e.key.load(Ordering::Acquire);
                if key == 0 {
                    continue;
                }
                let Some(chan) = Chan::attach(self.arena, key) else {
                    continue;
                };
                let n = |r: Role| e.counts[r.index()].load(Ordering::Acquire);
                for _ in 0..n(Role::Writer) {
                    chan.retire_side(true);
                }
                for _ in 0..n(Role::Reader) {
                    chan.retire_side(false);
                }
                let holds = n(Role::Handle) + n(Role::Writer) + n(Role::Reader);
                e.key.store(0, Ordering::Release);
                for _ in 0..holds {
                    chan.release();
                }
            }
        }
        waiter::reclaim(self.arena, self.root);
        self.discard();
    }
}
