//! What one OS process of a network knows about itself: which process it is, which channel
//! ends it holds, which ends it is handing to a child, and what to mark when a process dies.
//!
//! Channels record their ends here as they are made or received; the process layer reads it
//! when it starts a child (which channels go with it) and when a process ends abnormally
//! (which channels to poison or mark as held by a dead process). It knows channels only as
//! shared-memory [`Chan`]s, by their offsets in the arena.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::shm::arena::Arena;
use crate::shm::ring::Chan;

static CURRENT: OnceLock<&'static str> = OnceLock::new();

/// The function this process runs (`main` in a root process), for messages.
pub(crate) fn current_name() -> &'static str {
    CURRENT.get().copied().unwrap_or("main")
}

/// Set in a process started by a combinator: only there are ends tracked in `OWN_ENDS`.
static IN_CHILD: AtomicBool = AtomicBool::new(false);

/// This process was started by a combinator (called once, before its function runs).
pub(crate) fn enter_child() {
    IN_CHILD.store(true, Ordering::Relaxed);
}

/// This process runs the `#[process]` function `name`.
pub(crate) fn set_current(name: &'static str) {
    let _ = CURRENT.set(name);
}

/// The channels of this process's ends: those it received (as arguments or through channels)
/// and those it made. A process that returns `Poisoned` poisons all of them; one that crashes
/// marks them as held by a dead process.
static OWN_ENDS: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

/// Counts `chan` among this process's ends (in a child process).
pub(crate) fn track(chan: &Chan) {
    if IN_CHILD.load(Ordering::Relaxed) {
        if let Ok(mut v) = OWN_ENDS.lock() {
            v.insert(chan.offset());
        }
    }
}

fn own_ends() -> Vec<u64> {
    OWN_ENDS
        .lock()
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default()
}

thread_local! {
    /// Set while arguments for a new process are being encoded: ends serialized meanwhile
    /// record themselves here, so the parent knows which channels the child holds.
    static TRANSFERS: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, with its result, the channels of the ends it serialized.
pub(crate) fn collect_transfers<R>(f: impl FnOnce() -> R) -> (R, Vec<u64>) {
    let prev = TRANSFERS.with(|t| t.borrow_mut().replace(Vec::new()));
    let r = f();
    let got = TRANSFERS
        .with(|t| std::mem::replace(&mut *t.borrow_mut(), prev))
        .unwrap_or_default();
    (r, got)
}

/// An end of `chan` was serialized: if a child's arguments are being encoded, it goes there.
pub(crate) fn record_transfer(chan: &Chan) {
    TRANSFERS.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            v.push(chan.offset());
        }
    });
}

/// Poisons every channel in `offsets` (the ends of a process that failed).
pub(crate) fn poison_offsets(offsets: &[u64]) {
    let Ok(arena) = Arena::get() else { return };
    for &off in offsets {
        if let Some(c) = Chan::attach(arena, off) {
            c.poison();
        }
    }
}

/// Marks every channel in `offsets` as held by a process that died.
pub(crate) fn mark_peer_died(offsets: &[u64], pid: u32, name: &str) {
    let Ok(arena) = Arena::get() else { return };
    for &off in offsets {
        if let Some(c) = Chan::attach(arena, off) {
            c.mark_peer_died(pid, name);
        }
    }
}

/// Marks every end this process received as held by a dead process (this one).
pub(crate) fn mark_own_ends_dead(name: &str) {
    mark_peer_died(&own_ends(), std::process::id(), name);
}

/// Marks every end this process holds as held by the dead process `pid` (`name`): a process
/// that returns `PeerDied` passes the crash on to its other peers, naming who died.
pub(crate) fn spread_peer_died(pid: u32, name: &str) {
    mark_peer_died(&own_ends(), pid, name);
}

/// Poisons every end this process received.
pub(crate) fn poison_own_ends() {
    poison_offsets(&own_ends());
}
