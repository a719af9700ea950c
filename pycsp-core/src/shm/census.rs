//! The census of a network: one record per process, what each parked thread waits on, and
//! deadlock detection across processes.
//!
//! Every process of a network has a **ledger** in the arena (its parent makes it before the
//! start; see `runtime`). The ledger's root block also holds the process's **record**: its
//! pid, name and start time, how many of its threads the library started (reapers, socket
//! pumps and hosts, pool helpers: *internal* threads), and what each of its other (*user*)
//! threads is parked on, if it is: a read or a write of a channel, a select over channels, a
//! join of child processes. A record is written only on the slow path: when a thread is about
//! to sleep in the kernel with no deadline (after spinning), and when it wakes. The census
//! block (its offset in the arena header) lists the ledger roots of the network and keeps a
//! **park epoch**, bumped on every park and unpark.
//!
//! A parked thread sleeps in slices of [`SLICE`]. When a slice ends with nothing to do and the
//! epoch did not move during it, the thread scans the records: the network is deadlocked when
//! every live process is blocked (all its user threads parked without a deadline, by
//! `/proc/<pid>/stat`'s thread count less its internal threads) and no parked operation can
//! be completed by another: no event a thread sleeps on moved since it went to sleep (a wake
//! is in flight), no channel has a reader and a writer parked on it at once, no awaited child
//! has ended, and the epoch did not move during the scan. Socket threads (hosts and pumps)
//! publish their waits too ([`park_socket`], [`park_remote`]), naming the pid at the other
//! end of their connection and the bytes sent and received on it: the scan follows those
//! pids to the other networks on this host (their arenas, through `/proc/<pid>/fd`) and
//! asks the same of their processes, and that every connection be idle; a peer that is not a
//! pycsp process of this host (another host's) keeps the network alive. The first to find it
//! writes a report into every network of the deadlock (who waits on what, who holds the
//! other ends, from the ledgers) and bumps their deadlock counts; every operation that was
//! parked before sees the count move within a slice and fails with `ChannelError::Deadlock`
//! (`PYCSP_DEADLOCK=fail`, the default), or the report is printed once and the network keeps
//! waiting (`report`), or nothing is scanned (`off`).
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::arena::Arena;

/// How long a parked thread sleeps before it looks at the census.
pub(crate) const SLICE: Duration = Duration::from_millis(40);

/// Environment variable that sets what a deadlock does: `off`, `report` or `fail`.
pub(crate) const ENV_DEADLOCK: &str = "PYCSP_DEADLOCK";

/// What a deadlock does (see [`ENV_DEADLOCK`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Off,
    Report,
    Fail,
}

/// This process's mode, from [`ENV_DEADLOCK`] (children inherit it).
pub(crate) fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var(ENV_DEADLOCK).as_deref() {
        Ok("off") | Ok("0") => Mode::Off,
        Ok("report") => Mode::Report,
        _ => Mode::Fail,
    })
}

// ---------------------------------------------------------------------------------------
// The ledger's layout (written by `runtime`, read here for the holders of a channel).

/// The magic of a ledger root block.
pub(crate) const LEDGER_MAGIC: u64 = u64::from_le_bytes(*b"PYCSPLG1");

/// A ledger's root block: its table of holds, and the process's record.
#[repr(C)]
pub(crate) struct LedgerRoot {
    pub(crate) magic: u64,
    pub(crate) table: AtomicU64,
    pub(crate) record: Record,
}

/// The header of a ledger table; `len` entries follow.
#[repr(C)]
pub(crate) struct TableHeader {
    pub(crate) len: u64,
    pub(crate) _pad: u64,
}

/// One channel a process holds: the channel's key and its counts of handles, writers,
/// readers (indexed by `runtime::Role`).
#[repr(C)]
pub(crate) struct Entry {
    pub(crate) key: AtomicU64,
    pub(crate) counts: [AtomicU32; 3],
    pub(crate) _pad: u32,
}

/// The ledger root at `root`.
pub(crate) fn root_at(arena: &Arena, root: u64) -> &'static LedgerRoot {
    // SAFETY: `root` is a ledger root block inside the arena (checked by `ptr`); its fields
    // other than the magic are atomic (the magic is written before the block is published).
    unsafe {
        &*arena
            .ptr(root, std::mem::size_of::<LedgerRoot>() as u64)
            .cast::<LedgerRoot>()
    }
}

/// The entries of the ledger table at `table`.
pub(crate) fn table_at(arena: &Arena, table: u64) -> Option<&'static [Entry]> {
    // SAFETY: `table` is a ledger table inside the arena (checked by `ptr`); its length was
    // written before it was published.
    let len = unsafe { (*arena.ptr(table, 16).cast::<TableHeader>()).len };
    let bytes = len.checked_mul(std::mem::size_of::<Entry>() as u64)?;
    let p = arena.ptr(table.checked_add(16)?, bytes).cast::<Entry>();
    // SAFETY: `len` entries lie inside the arena (checked by `ptr`); all their fields are
    // atomic.
    Some(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// The entries of the ledger whose root is `root`, if it is one.
pub(crate) fn table_entries(arena: &Arena, root: u64) -> Option<&'static [Entry]> {
    let r = root_at(arena, root);
    if r.magic != LEDGER_MAGIC {
        return None;
    }
    match r.table.load(Ordering::Acquire) {
        0 => Some(&[]),
        t => table_at(arena, t),
    }
}

// ---------------------------------------------------------------------------------------
// Records.

/// Threads of one process that can publish what they wait on at once; more wait unpublished
/// (their process then never counts as blocked).
const WAIT_SLOTS: usize = 16;
/// The most channels (or children) one published wait names; a select over more is not
/// published.
pub(crate) const WAIT_ITEMS: usize = 8;
const NAME: usize = 48;

/// What a process publishes about itself (inside its ledger root block).
#[repr(C)]
pub(crate) struct Record {
    /// 0 until the process has started and written it.
    pid: AtomicU32,
    /// User threads parked with a published wait.
    parked: AtomicU32,
    /// Threads the library started in this process.
    internal: AtomicU32,
    /// Of those, socket hosts and pumps: a peer outside the arena may wake this process.
    sockets: AtomicU32,
    /// The process's start time (`/proc/<pid>/stat` field 22), against pid reuse.
    start_time: AtomicU64,
    name_len: AtomicU32,
    name: [AtomicU8; NAME],
    waits: [WaitSlot; WAIT_SLOTS],
    /// Messages this process's threads read and wrote through channel ends and alternations
    /// (not counting its socket hosts and pumps). Each thread adds its own count every
    /// [`COUNT_BATCH`] messages, when it parks and when it ends: a thread that is still
    /// running may have up to that many per direction not in yet.
    msgs_in: AtomicU64,
    msgs_out: AtomicU64,
}

/// One parked thread's wait.
#[repr(C)]
struct WaitSlot {
    /// 0 free, 1 being written, 2 published.
    state: AtomicU32,
    kind: AtomicU32,
    n: AtomicU32,
    /// Bit i: item i is a write.
    writes: AtomicU32,
    /// Channel keys (or, for a join, pids).
    items: [AtomicU64; WAIT_ITEMS],
    /// Arena offset of the futex word the thread sleeps on for item i, and its value then.
    words: [AtomicU64; WAIT_ITEMS],
    seqs: [AtomicU32; WAIT_ITEMS],
    /// Arena offset << 8 | length of each channel's name.
    names: [AtomicU64; WAIT_ITEMS],
}

/// What a parked thread waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub(crate) enum Kind {
    Read = 1,
    Write = 2,
    Select = 3,
    /// `Parallel` or a `Spawned`'s join.
    Join = 4,
    /// A socket thread waits on its connection, with nothing in flight: items `[peer pid
    /// (with the channel's name), channel key (or, for a listener, 1 if only processes of
    /// this network know the key), bytes sent, bytes received]`; a listener's peer is 0.
    Remote = 5,
    /// `Sequence`'s join of its current process.
    Sequence = 6,
}

impl Kind {
    fn from(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Read,
            2 => Kind::Write,
            3 => Kind::Select,
            4 => Kind::Join,
            5 => Kind::Remote,
            6 => Kind::Sequence,
            _ => return None,
        })
    }

    /// Whether the wait is for processes to end (its items are pids).
    pub(crate) fn joins(self) -> bool {
        matches!(self, Kind::Join | Kind::Sequence)
    }
}

/// One thing a parked thread waits on: a side of a channel (its key, whether the wait is a
/// write, its name, the futex word its side sleeps on), or a child process (`key` its pid).
#[derive(Clone, Copy)]
pub(crate) struct Item<'a> {
    pub(crate) key: u64,
    pub(crate) write: bool,
    pub(crate) name: &'static str,
    pub(crate) word: Option<&'a AtomicU32>,
}

// ---------------------------------------------------------------------------------------
// The census block.

/// Ledger roots the census lists; processes beyond them make the census incomplete (and
/// detection stops).
const SLOTS: usize = 4096;

#[repr(C)]
struct CensusHeader {
    epoch: AtomicU64,
    deadlocks: AtomicU64,
    /// The epoch last scanned, and the epoch whose deadlock was raised.
    scanned: AtomicU64,
    raised: AtomicU64,
    /// Processes that could not be listed (no room): while non-zero nothing is detected.
    incomplete: AtomicU64,
    /// The last report: block offset and length.
    report: AtomicU64,
    report_len: AtomicU64,
    /// When a scan last started (`crate::sys::monotonic_ns`): an epoch already scanned is scanned
    /// again by one thread of the network per [`RESCAN_EVERY`] (more often in a network
    /// joined to others through sockets, see [`Parked::tick`]), not by each parked thread.
    scanned_at: AtomicU64,
    /// When the epoch last scanned was first scanned (the same clock).
    epoch_at: AtomicU64,
    slots: [AtomicU64; SLOTS],
}

/// How often an epoch already scanned is scanned again (the threads of a process may have
/// changed, which moves no epoch).
const RESCAN_EVERY: Duration = Duration::from_millis(640);

/// The census block of `arena` if it has one (never allocates: `arena` may be another
/// network's, mapped read-only).
fn census_ro(arena: &Arena) -> Option<&'static CensusHeader> {
    let at = arena.census_word().load(Ordering::Acquire);
    if at == 0 {
        return None;
    }
    // SAFETY: as in `census`.
    Some(unsafe {
        &*arena
            .ptr(at, std::mem::size_of::<CensusHeader>() as u64)
            .cast::<CensusHeader>()
    })
}

fn census(arena: &Arena) -> Option<&'static CensusHeader> {
    let word = arena.census_word();
    let mut at = word.load(Ordering::Acquire);
    if at == 0 {
        let new = arena
            .alloc_block_zeroed(std::mem::size_of::<CensusHeader>() as u64)
            .ok()?;
        match word.compare_exchange(0, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => at = new,
            Err(other) => {
                arena.free_block(new);
                at = other;
            }
        }
    }
    // SAFETY: the census block is inside the arena (checked by `ptr`), zeroed before it was
    // published, and all its fields are atomic.
    Some(unsafe {
        &*arena
            .ptr(at, std::mem::size_of::<CensusHeader>() as u64)
            .cast::<CensusHeader>()
    })
}

/// Lists the ledger root `root` (a new ledger) in the census.
pub(crate) fn register(arena: &Arena, root: u64) {
    let Some(c) = census(arena) else { return };
    for s in &c.slots {
        if s.compare_exchange(0, root, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
    c.incomplete.fetch_add(1, Ordering::SeqCst);
}

/// Takes the ledger root `root` off the census (before its block is freed).
pub(crate) fn unregister(arena: &Arena, root: u64) {
    let Some(c) = census(arena) else { return };
    for s in &c.slots {
        if s.compare_exchange(root, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// A process could not be given a ledger: the census cannot see it, so it never detects.
pub(crate) fn unlisted(arena: &Arena) {
    if let Some(c) = census(arena) {
        c.incomplete.fetch_add(1, Ordering::SeqCst);
    }
}

/// This process's ledger root, once it has one.
static MINE: AtomicU64 = AtomicU64::new(0);

/// This process's ledger root (0 until it has one): what names it in the arena while it
/// lives and until its parent settled it.
pub(crate) fn mine() -> u64 {
    MINE.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------
// Counting messages (for `pycsp-top`): a plain per-thread count on the fast path, added to
// the record in batches.

/// How many messages a thread counts before it adds them to its process's record.
pub(crate) const COUNT_BATCH: u32 = 64;

thread_local! {
    /// This thread's messages not yet added to its process's record: [read, written]. No
    /// destructor (that would cost a check on every access): a thread that ends leaves at
    /// most `COUNT_BATCH - 1` per direction uncounted, unless it parked since.
    static COUNTS: std::cell::Cell<[u32; 2]> = const { std::cell::Cell::new([0, 0]) };
}

/// One message read (`out` false) or written by this thread.
#[inline(always)]
pub(crate) fn count_message(out: bool) {
    COUNTS.with(|c| {
        let mut n = c.get();
        let i = usize::from(out);
        n[i] += 1;
        if n[i] >= COUNT_BATCH {
            add_counts(n);
            n = [0, 0];
        }
        c.set(n);
    });
}

/// Adds this thread's counts to the record now (before it parks: a reader of the record
/// sees what a blocked thread did).
fn flush_counts() {
    add_counts(COUNTS.with(|c| c.replace([0, 0])));
}

#[cold]
#[inline(never)]
fn add_counts(n: [u32; 2]) {
    let root = MINE.load(Ordering::Relaxed);
    if n == [0, 0] || root == 0 {
        return;
    }
    if let Ok(arena) = Arena::get() {
        let r = &root_at(arena, root).record;
        r.msgs_in.fetch_add(u64::from(n[0]), Ordering::Relaxed);
        r.msgs_out.fetch_add(u64::from(n[1]), Ordering::Relaxed);
    }
}

/// Internal threads of this process: (all, socket ones), written to the record under this
/// lock.
static INTERNAL: Mutex<(u32, u32)> = Mutex::new((0, 0));

thread_local! {
    static IS_INTERNAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This process's start time as [`note_start_time`] read it ahead: (pid, start time), pid 0
/// when it was not.
static OWN_START: Mutex<(u32, u64)> = Mutex::new((0, 0));

/// Reads this process's start time now, for [`own`] to use later: a process the fork server
/// forks ahead of its work does it while it waits (reading `/proc` costs 15-30 µs).
pub(crate) fn note_start_time() {
    let pid = std::process::id();
    if let Some(t) = start_time(pid) {
        *OWN_START.lock().unwrap_or_else(|p| p.into_inner()) = (pid, t);
    }
}

/// The ledger root `root` is this process's: writes its pid, start time and name.
pub(crate) fn own(arena: &Arena, root: u64, name: &str) {
    let r = &root_at(arena, root).record;
    let pid = std::process::id();
    let noted = *OWN_START.lock().unwrap_or_else(|p| p.into_inner());
    let start = match noted {
        (p, t) if p == pid => Some(t),
        _ => start_time(pid),
    };
    r.start_time.store(start.unwrap_or(0), Ordering::Relaxed);
    write_name(r, name);
    {
        let i = INTERNAL.lock().unwrap_or_else(|p| p.into_inner());
        r.internal.store(i.0, Ordering::SeqCst);
        r.sockets.store(i.1, Ordering::SeqCst);
        MINE.store(root, Ordering::SeqCst);
    }
    r.pid.store(pid, Ordering::SeqCst);
}

/// The ledger root `root` is a child's that runs the function `name` (written by its parent
/// before the start, so that a picture names it from the first moment).
pub(crate) fn name_child(arena: &Arena, root: u64, name: &str) {
    write_name(&root_at(arena, root).record, name);
}

/// This process runs the function `name` (its record says so).
pub(crate) fn rename(name: &str) {
    let root = MINE.load(Ordering::SeqCst);
    if let (true, Ok(arena)) = (root != 0, Arena::get()) {
        write_name(&root_at(arena, root).record, name);
    }
}

fn write_name(r: &Record, name: &str) {
    let short = name.rsplit("::").next().unwrap_or(name).as_bytes();
    let n = short.len().min(NAME);
    for (d, &b) in r.name.iter().zip(&short[..n]) {
        d.store(b, Ordering::Relaxed);
    }
    r.name_len.store(n as u32, Ordering::Release);
}

fn read_name(r: &Record) -> String {
    let n = (r.name_len.load(Ordering::Acquire) as usize).min(NAME);
    let bytes: Vec<u8> = r.name[..n]
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    match String::from_utf8_lossy(&bytes).into_owned() {
        s if s.is_empty() => "?".into(),
        s => s,
    }
}

/// Marks the calling thread as one the library started, for as long as the guard lives
/// (`socket`: a socket host or pump, through which a peer outside the arena may wake this
/// process).
pub(crate) fn internal_thread(socket: bool) -> InternalThread {
    IS_INTERNAL.with(|c| c.set(true));
    count_internal(1, socket);
    InternalThread { socket }
}

/// See [`internal_thread`].
pub(crate) struct InternalThread {
    socket: bool,
}

impl Drop for InternalThread {
    fn drop(&mut self) {
        count_internal(-1, self.socket);
    }
}

fn count_internal(delta: i32, socket: bool) {
    let mut i = INTERNAL.lock().unwrap_or_else(|p| p.into_inner());
    i.0 = i.0.saturating_add_signed(delta);
    if socket {
        i.1 = i.1.saturating_add_signed(delta);
    }
    let root = MINE.load(Ordering::SeqCst);
    if let (true, Ok(arena)) = (root != 0, Arena::get()) {
        let r = &root_at(arena, root).record;
        r.internal.store(i.0, Ordering::SeqCst);
        r.sockets.store(i.1, Ordering::SeqCst);
        if socket {
            // A socket thread came or went: a scan must look again.
            if let Some(c) = census(arena) {
                c.epoch.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parking.

/// A published wait of this thread; dropping it withdraws it.
pub(crate) struct Parked {
    arena: &'static Arena,
    census: &'static CensusHeader,
    slot: &'static WaitSlot,
    record: &'static Record,
    /// The deadlock count when the operation first parked.
    since: u64,
    /// The epoch at the end of the last slice.
    seen: u64,
    /// When `seen` was first seen (monotonic ns): a scan waits until the epoch stood still
    /// for a whole slice since.
    seen_at: u64,
    /// Counted in the record's `parked` (a user thread's wait; not a socket thread's).
    user: bool,
}

/// The outcome of a slice that ended with nothing to do.
#[derive(PartialEq, Eq, Debug)]
pub(crate) enum Tick {
    Wait,
    Deadlocked,
}

/// Publishes that this thread parks on `items` (`kind`), with no deadline; `since` is the
/// deadlock count of an earlier park of the same operation. `None` when nothing is published
/// (detection off, an internal thread, no record, too many items or threads).
pub(crate) fn park(kind: Kind, items: &[Item<'_>], since: Option<u64>) -> Option<Parked> {
    if IS_INTERNAL.with(std::cell::Cell::get) {
        return None;
    }
    flush_counts();
    publish(kind, items, since, true)
}

/// Bit of a published wait's `writes`: the wait is a socket thread's (see [`park_socket`]).
const BY_SOCKET: u32 = 1 << 31;

/// Publishes what a socket host or pump thread waits on (it counts as blocked while it is):
/// a wait on its connection ([`Kind::Remote`], see there), or a read or write of a hosted
/// channel on behalf of a remote end (`items`: the channel, then `[peer pid, bytes sent,
/// bytes received]` as keys); `since` as for [`park`]. Only on the slow path, like [`park`].
pub(crate) fn park_socket(kind: Kind, items: &[Item<'_>], since: Option<u64>) -> Option<Parked> {
    publish(kind, items, since, false)
}

/// A socket thread's [`Kind::Remote`] wait: on the connection to `peer` (0: a listener, for
/// anyone) of a `writer` (or reading) end of the channel `key` named `name` (`word`: the
/// futex word it sleeps on meanwhile, if any), having sent and received `bytes` on it.
pub(crate) fn park_remote(
    peer: u32,
    writer: bool,
    key: u64,
    name: &'static str,
    word: Option<&AtomicU32>,
    bytes: (u64, u64),
) -> Option<Parked> {
    let item = |key| Item {
        key,
        write: false,
        name: "",
        word: None,
    };
    park_socket(
        Kind::Remote,
        &[
            Item {
                key: u64::from(peer),
                write: writer,
                name,
                word: None,
            },
            Item {
                key,
                write: false,
                name: "",
                word,
            },
            item(bytes.0),
            item(bytes.1),
        ],
        None,
    )
}

fn publish(kind: Kind, items: &[Item<'_>], since: Option<u64>, user: bool) -> Option<Parked> {
    if items.len() > WAIT_ITEMS || mode() == Mode::Off {
        return None;
    }
    let root = MINE.load(Ordering::Relaxed);
    if root == 0 {
        return None;
    }
    let arena = Arena::get().ok()?;
    let census = census(arena)?;
    let record = &root_at(arena, root).record;
    let slot = record.waits.iter().find(|s| {
        s.state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    })?;
    slot.kind.store(kind as u32, Ordering::Relaxed);
    slot.n.store(items.len() as u32, Ordering::Relaxed);
    let mut writes = 0;
    for (i, it) in items.iter().enumerate() {
        writes |= u32::from(it.write) << i;
        slot.items[i].store(it.key, Ordering::Relaxed);
        let word = it.word.and_then(|w| Some((arena.offset_of(w)?, w)));
        slot.words[i].store(word.map_or(0, |(o, _)| o), Ordering::Relaxed);
        slot.seqs[i].store(
            word.map_or(0, |(_, w)| w.load(Ordering::SeqCst)),
            Ordering::Relaxed,
        );
        let name = arena
            .offset_of(it.name.as_ptr())
            .filter(|_| it.name.len() < 256)
            .map_or(0, |o| o << 8 | it.name.len() as u64);
        slot.names[i].store(name, Ordering::Relaxed);
    }
    if !user {
        writes |= BY_SOCKET;
    }
    slot.writes.store(writes, Ordering::Relaxed);
    slot.state.store(2, Ordering::SeqCst);
    if user {
        record.parked.fetch_add(1, Ordering::SeqCst);
    }
    let seen = census.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    Some(Parked {
        arena,
        census,
        slot,
        record,
        since: since.unwrap_or_else(|| census.deadlocks.load(Ordering::SeqCst)),
        seen,
        seen_at: crate::sys::monotonic_ns(),
        user,
    })
}

impl Drop for Parked {
    fn drop(&mut self) {
        if self.user {
            self.record.parked.fetch_sub(1, Ordering::SeqCst);
        }
        self.slot.state.store(0, Ordering::SeqCst);
        self.census.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

impl Parked {
    /// Whether a deadlock was declared (in `fail` mode) since this wait was published: a
    /// socket host that waits on behalf of a remote end ends its wait with it.
    pub(crate) fn deadlocked(&self) -> bool {
        mode() == Mode::Fail && self.census.deadlocks.load(Ordering::SeqCst) != self.since
    }

    /// The deadlock count when the operation first parked (for a park after a wake-up).
    pub(crate) fn since(&self) -> u64 {
        self.since
    }

    /// Whether every word this wait sleeps on still holds the value it had when published
    /// (no wake-up came since).
    pub(crate) fn unchanged(&self) -> bool {
        let n = (self.slot.n.load(Ordering::Relaxed) as usize).min(WAIT_ITEMS);
        (0..n).all(|i| match self.slot.words[i].load(Ordering::Relaxed) {
            0 => true,
            at => {
                word_at(self.arena, at).load(Ordering::SeqCst)
                    == self.slot.seqs[i].load(Ordering::Relaxed)
            }
        })
    }

    /// A slice ended with nothing to do: whether a deadlock was declared since this operation
    /// parked (in `fail` mode), after scanning if the epoch stood still for a whole slice.
    pub(crate) fn tick(&mut self) -> Tick {
        let c = self.census;
        if mode() == Mode::Fail && c.deadlocks.load(Ordering::SeqCst) != self.since {
            return Tick::Deadlocked;
        }
        let e = c.epoch.load(Ordering::SeqCst);
        let now = crate::sys::monotonic_ns();
        if e != self.seen {
            self.seen = e;
            self.seen_at = now;
            return Tick::Wait;
        }
        if now.saturating_sub(self.seen_at) < SLICE.as_nanos() as u64 {
            // Woken before the slice ended (by a change that did not make the operation
            // ready, such as a socket pump marking a writer's slot held): the epoch has not
            // stood still for a slice yet. A scan reads /proc for every process of the
            // network; once every such wake-up scanned (a remote rendezvous writer: once per
            // message).
            return Tick::Wait;
        }
        // The epoch stood still for a slice: scan, unless somebody scanned it already (a
        // process whose threads changed moves no epoch: one thread of the network rescans
        // every `RESCAN_EVERY`). A network joined to others through sockets rescans sooner:
        // they move without its epoch moving (a connection's last bytes arriving completes a
        // deadlock with no park anywhere); every slice at first, then a quarter of the time
        // the epoch has stood still (an idle placed process scanned every slice for as long
        // as it waited: 12-15 ms of CPU in 2 s). Once each parked thread rescanned on its
        // own, and an idle network of n processes made n scans of n processes per period (80
        // idle readers: 16 % of a CPU).
        let prev = c.scanned.load(Ordering::SeqCst);
        let last = c.scanned_at.load(Ordering::SeqCst);
        if prev == e {
            let every = if FEDERATED.load(Ordering::Relaxed) {
                let still = now.saturating_sub(c.epoch_at.load(Ordering::SeqCst));
                Duration::from_nanos(still / 4).clamp(SLICE, RESCAN_EVERY)
            } else {
                RESCAN_EVERY
            };
            if now.saturating_sub(last) < every.as_nanos() as u64
                || c.scanned_at
                    .compare_exchange(last, now, Ordering::SeqCst, Ordering::Relaxed)
                    .is_err()
            {
                return Tick::Wait;
            }
        } else {
            c.scanned_at.store(now, Ordering::SeqCst);
            c.epoch_at.store(now, Ordering::SeqCst);
        }
        if c.scanned
            .compare_exchange(prev, e, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return Tick::Wait;
        }
        let Some((report, nets)) = scan(self.arena, c, e) else {
            return Tick::Wait;
        };
        if c.raised.swap(e, Ordering::SeqCst) == e {
            return Tick::Wait; // raised for this epoch already
        }
        raise(self.arena, c, &report);
        // The other networks of the deadlock (through socket channels) learn it too, unless
        // one of their own raised it for the epoch read.
        for &(a, oc, oe) in &nets[1..] {
            if oc.raised.swap(oe, Ordering::SeqCst) != oe {
                raise(a, oc, &report);
            }
        }
        if mode() == Mode::Fail {
            Tick::Deadlocked
        } else {
            Tick::Wait
        }
    }
}

/// Writes `report` into the arena and bumps the deadlock count.
fn raise(arena: &Arena, c: &CensusHeader, bytes: &[u8]) {
    if let Ok(b) = arena.alloc_block(bytes.len().max(1) as u64) {
        // SAFETY: the block is new and ours, `bytes.len()` long (checked by `ptr`); it is
        // published (`report`) only after it is written, and never written again.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                arena.ptr(b, bytes.len() as u64),
                bytes.len(),
            );
        }
        c.report_len.store(bytes.len() as u64, Ordering::SeqCst);
        c.report.store(b, Ordering::SeqCst);
    }
    c.deadlocks.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(bytes.split(|&b| b == 0).next().unwrap_or(&[]));
    crate::trace::deadlock(&text);
    if mode() == Mode::Report {
        eprintln!("pycsp: deadlock ({ENV_DEADLOCK}=report: the network keeps waiting)\n{text}");
    }
}

/// The deadlock count of the network now (to compare with a later [`last_report`]).
pub(crate) fn deadlocks() -> u64 {
    Arena::get()
        .ok()
        .and_then(census)
        .map_or(0, |c| c.deadlocks.load(Ordering::SeqCst))
}

/// The report of the last deadlock declared in this network.
pub(crate) fn last_report() -> Option<String> {
    let bytes = last_bytes()?;
    let text = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
    Some(String::from_utf8_lossy(text).into_owned())
}

/// The processes of the network as they were when the last deadlock was declared.
pub(crate) fn last_snapshot() -> Option<Vec<Proc>> {
    let bytes = last_bytes()?;
    let at = bytes.iter().position(|&b| b == 0)?;
    rmp_serde::from_slice(&bytes[at + 1..]).ok()
}

fn last_bytes() -> Option<Vec<u8>> {
    let arena = Arena::get().ok()?;
    report_bytes(arena, census(arena)?)
}

/// The last report written into `arena`.
fn report_bytes(arena: &Arena, c: &CensusHeader) -> Option<Vec<u8>> {
    let at = c.report.load(Ordering::SeqCst);
    let len = c.report_len.load(Ordering::SeqCst);
    if at == 0 {
        return None;
    }
    let p = arena.ptr(at, len);
    // SAFETY: the report block was written before it was published and is never written
    // again; `len` bytes lie inside the arena (checked by `ptr`).
    Some(unsafe { std::slice::from_raw_parts(p, len as usize) }.to_vec())
}

// ---------------------------------------------------------------------------------------
// Scanning.

/// A published wait, as a scan reads it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Wait {
    pub(crate) kind: Kind,
    /// (key or pid, is a write, name)
    pub(crate) items: Vec<(u64, bool, String)>,
    words: Vec<(u64, u32)>,
    /// A socket thread's wait (see [`park_socket`]).
    #[serde(default)]
    pub(crate) socket: bool,
}

impl Wait {
    /// A socket thread's connection: (peer pid, bytes sent, bytes received).
    fn connection(&self) -> Option<(u32, u64, u64)> {
        if !self.socket {
            return None;
        }
        let at = if self.kind == Kind::Remote { 0 } else { 1 };
        let key = |i: usize| self.items.get(i).map(|it| it.0);
        Some((key(at)? as u32, key(2)?, key(3)?))
    }
}

/// A live process of the network, as a scan reads it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) name: String,
    /// Its user threads, and how many of them are parked.
    pub(crate) user_threads: u32,
    pub(crate) parked: u32,
    pub(crate) sockets: u32,
    pub(crate) waits: Vec<Wait>,
    /// Channels it holds: (key, writers, readers).
    pub(crate) holds: Vec<(u64, u32, u32)>,
    /// Messages it read and wrote (see `Record::msgs_in`).
    #[serde(default)]
    pub(crate) msgs: (u64, u64),
    /// Its network (the arena's random number) and that network's epoch when it was read.
    #[serde(default)]
    pub(crate) net: (u64, u64),
}

impl Proc {
    /// A process with nothing published (for a picture of a set as it was started).
    pub(crate) fn new(pid: u32, name: &str) -> Proc {
        Proc {
            pid,
            name: name.rsplit("::").next().unwrap_or(name).to_string(),
            user_threads: 0,
            parked: 0,
            sockets: 0,
            waits: Vec::new(),
            holds: Vec::new(),
            msgs: (0, 0),
            net: (0, 0),
        }
    }
}

/// Every live process of the network (`None` if one has not written its record yet).
fn processes(arena: &Arena) -> Option<Vec<Proc>> {
    read_processes(arena, true)
}

/// Every process of the network now, those still starting included (pid 0), in the order
/// they were listed (a parent before the children it starts).
pub(crate) fn processes_now() -> Vec<Proc> {
    Arena::get()
        .ok()
        .and_then(|a| read_processes(a, false))
        .unwrap_or_default()
}

/// The processes of the network (`strict`: `None` if one has not written its record yet;
/// else those are listed with pid 0).
pub(crate) fn read_processes(arena: &Arena, strict: bool) -> Option<Vec<Proc>> {
    let c = census_ro(arena)?;
    let net = (arena.network(), c.epoch.load(Ordering::SeqCst));
    let mut out = Vec::new();
    for s in &c.slots {
        let root = s.load(Ordering::SeqCst);
        if root == 0 {
            continue;
        }
        let lr = root_at(arena, root);
        if lr.magic != LEDGER_MAGIC {
            continue;
        }
        let r = &lr.record;
        let pid = r.pid.load(Ordering::SeqCst);
        let threads = if pid == 0 {
            if strict {
                return None; // starting
            }
            0
        } else {
            let recorded = r.start_time.load(Ordering::Relaxed);
            if recorded == 0 && strict {
                return None; // its start time is unknown: it cannot be told from another
            }
            let Some((threads, start)) = proc_stat(pid) else {
                continue; // ended
            };
            if start != recorded {
                continue; // the pid is another process's now
            }
            threads
        };
        let mut waits = Vec::new();
        for w in &r.waits {
            if w.state.load(Ordering::SeqCst) != 2 {
                continue;
            }
            let Some(kind) = Kind::from(w.kind.load(Ordering::Relaxed)) else {
                continue;
            };
            let n = (w.n.load(Ordering::Relaxed) as usize).min(WAIT_ITEMS);
            let writes = w.writes.load(Ordering::Relaxed);
            let items = (0..n)
                .map(|i| {
                    let name = channel_name(arena, w.names[i].load(Ordering::Relaxed));
                    (
                        w.items[i].load(Ordering::Relaxed),
                        writes & (1 << i) != 0,
                        name,
                    )
                })
                .collect();
            let words = (0..n)
                .map(|i| {
                    (
                        w.words[i].load(Ordering::Relaxed),
                        w.seqs[i].load(Ordering::Relaxed),
                    )
                })
                .collect();
            if w.state.load(Ordering::SeqCst) == 2 {
                let socket = writes & BY_SOCKET != 0;
                waits.push(Wait {
                    kind,
                    items,
                    words,
                    socket,
                });
            }
        }
        let holds = table_entries(arena, root)
            .unwrap_or(&[])
            .iter()
            .filter_map(|e| {
                let k = e.key.load(Ordering::Acquire);
                let w = e.counts[1].load(Ordering::Acquire);
                let rd = e.counts[2].load(Ordering::Acquire);
                (k != 0).then_some((k, w, rd))
            })
            .collect();
        let internal = r.internal.load(Ordering::SeqCst);
        out.push(Proc {
            pid,
            name: read_name(r),
            user_threads: threads.saturating_sub(internal),
            parked: r.parked.load(Ordering::SeqCst),
            sockets: r.sockets.load(Ordering::SeqCst),
            waits,
            holds,
            msgs: (
                r.msgs_in.load(Ordering::Relaxed),
                r.msgs_out.load(Ordering::Relaxed),
            ),
            net,
        });
    }
    Some(out)
}

fn channel_name(arena: &Arena, packed: u64) -> String {
    if packed == 0 {
        return String::new();
    }
    let (at, len) = (packed >> 8, packed & 0xff);
    let p = arena.ptr(at, len);
    // SAFETY: the name lies inside the arena (checked by `ptr`), in the header of a channel
    // its parked holder keeps alive; it is written before the channel is published.
    let bytes = unsafe { std::slice::from_raw_parts(p, len as usize) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether the last scan of this process reached other networks (through socket channels).
static FEDERATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Other networks on this host whose arenas this process mapped to scan them:
/// (inode of the arena, the arena).
static NETS: Mutex<Vec<(u64, &'static Arena)>> = Mutex::new(Vec::new());

/// The arena of the process `pid` on this host, if it runs a pycsp network: its memfd,
/// through `/proc/<pid>/fd`, mapped read-only once per network.
fn arena_of(pid: u32) -> Option<&'static Arena> {
    use std::os::unix::fs::MetadataExt;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("/memfd:pycsp-arena") {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fd.path())
            .ok()?;
        let ino = file.metadata().ok()?.ino();
        let mut nets = NETS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&(_, a)) = nets.iter().find(|(i, _)| *i == ino) {
            return Some(a);
        }
        let a = Arena::attach_other(file).ok()?;
        nets.push((ino, a));
        return Some(a);
    }
    None
}

/// The processes a wait depends on outside its own network: the peer of a socket thread's
/// connection, the children of a join.
fn reached(w: &Wait) -> Vec<u32> {
    match (w.kind, w.connection()) {
        (Kind::Join | Kind::Sequence, _) => w.items.iter().map(|it| it.0 as u32).collect(),
        (_, Some((peer, _, _))) if peer != 0 => vec![peer],
        _ => Vec::new(),
    }
}

/// Whether the network is deadlocked at epoch `e`: the report, if it is.
///
/// The network's processes, and through socket channels those of other networks on this
/// host (their arenas found through `/proc/<pid>/fd`, read-only): every one blocked (its user
/// threads parked, its socket threads each waiting on a connection whose peer is blocked too,
/// or serving a blocked operation), every connection idle (each side received what the
/// other sent), nothing that can complete another's operation, and no epoch moved.
fn scan(arena: &'static Arena, c: &CensusHeader, e: u64) -> Option<(Vec<u8>, Vec<Net>)> {
    if c.incomplete.load(Ordering::SeqCst) != 0 {
        return None;
    }
    let mut procs = processes(arena)?;
    if procs.is_empty() {
        return None;
    }
    // The networks scanned: (arena, census, epoch when read).
    let mut nets: Vec<Net> = vec![(arena, census(arena)?, e)];
    loop {
        let missing = procs
            .iter()
            .flat_map(|p| p.waits.iter().flat_map(reached))
            .find(|pid| !procs.iter().any(|p| p.pid == *pid));
        let Some(pid) = missing else { break };
        // A process that is not a pycsp network's on this host (another host's, through a
        // launcher), or not in its network's census (starting, or ended): it may act.
        let other = arena_of(pid)?;
        if nets.iter().any(|(a, _, _)| a.network() == other.network()) {
            return None;
        }
        let oc = census_ro(other)?;
        if oc.incomplete.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let oe = oc.epoch.load(Ordering::SeqCst);
        let more = read_processes(other, true)?;
        if !more.iter().any(|p| p.pid == pid) {
            return None;
        }
        nets.push((other, oc, oe));
        procs.extend(more);
    }
    FEDERATED.store(nets.len() > 1, Ordering::Relaxed);
    let arena_for = |p: &Proc| {
        nets.iter()
            .find(|(a, _, _)| a.network() == p.net.0)
            .map(|&(a, _, _)| a)
    };
    let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
    // Channel sides waited on: (network, key, is a write).
    let mut sides: Vec<(u64, u64, bool)> = Vec::new();
    // Connections waited on: (process, peer, sent, received), each to be matched once.
    let mut conns: Vec<(u32, u32, u64, u64)> = Vec::new();
    for p in &procs {
        // Blocked: every user thread parked with a published wait, every socket thread
        // waiting with a published wait.
        let user = p.waits.iter().filter(|w| !w.socket).count();
        let socket = p.waits.len() - user;
        if p.parked == 0
            || p.parked != p.user_threads
            || user != p.parked as usize
            || socket != p.sockets as usize
        {
            return None;
        }
        let a = arena_for(p)?;
        for w in &p.waits {
            if let Some((peer, sent, got)) = w.connection() {
                if peer == 0 {
                    // A listener: anyone who knows the key may connect, unless only
                    // processes of this network know it.
                    if w.items.get(1).map(|it| it.0) != Some(1) {
                        return None;
                    }
                } else {
                    conns.push((p.pid, peer, sent, got));
                }
            }
            let channels = match (w.kind, w.socket) {
                (Kind::Remote, _) => 0,
                (_, true) => 1,
                _ => w.items.len(),
            };
            for (i, &(word, seq)) in w.words.iter().enumerate() {
                if word != 0 && word_at(a, word).load(Ordering::SeqCst) != seq {
                    return None; // woken: a wake-up is in flight
                }
                if i >= channels {
                    continue;
                }
                let (key, write, _) = &w.items[i];
                if w.kind.joins() {
                    // A child that ended (or is not a process of the census) can be joined.
                    if !pids.contains(&(*key as u32)) {
                        return None;
                    }
                } else {
                    sides.push((p.net.0, *key, *write));
                }
            }
        }
    }
    // A reader and a writer parked on one channel at once: one of them is being woken.
    if sides.iter().any(|&(n, k, w)| sides.contains(&(n, k, !w))) {
        return None;
    }
    // Every connection idle: its peer waits on it too, having received all that was sent,
    // and sent all that was received. Bytes in flight are progress.
    let mut matched = vec![false; conns.len()];
    for i in 0..conns.len() {
        if matched[i] {
            continue;
        }
        let (me, peer, sent, got) = conns[i];
        let partner = (0..conns.len())
            .find(|&j| !matched[j] && j != i && conns[j] == (peer, me, got, sent))?;
        matched[i] = true;
        matched[partner] = true;
    }
    if nets
        .iter()
        .any(|(_, c, e)| c.epoch.load(Ordering::SeqCst) != *e)
    {
        return None;
    }
    // The report, then (after a NUL) the processes as MessagePack for a picture.
    let mut bytes = report(&procs).into_bytes();
    bytes.push(0);
    if let Ok(snap) = rmp_serde::to_vec(&procs) {
        bytes.extend(snap);
    }
    Some((bytes, nets))
}

/// A network a scan read: its arena, its census, its epoch then.
type Net = (&'static Arena, &'static CensusHeader, u64);

fn word_at(arena: &Arena, at: u64) -> &'static AtomicU32 {
    // SAFETY: `at` is the offset of a futex word inside a channel header in the arena
    // (checked by `ptr`, 4-aligned as every event's first word); only accessed atomically.
    unsafe { &*arena.ptr(at & !3, 4).cast::<AtomicU32>() }
}

/// Who waits on what, and who holds the other ends, in words.
pub(crate) fn report(procs: &[Proc]) -> String {
    let who = |p: &Proc| format!("`{}` (pid {})", p.name, p.pid);
    let state = |p: &Proc| match p.waits.iter().find(|w| !w.socket) {
        Some(w) => format!(", which {}", describe(w, procs)),
        None => String::new(),
    };
    // The processes of networks other than `net` (the host's) whose socket ends (`writers`:
    // writing ends) of the channel at `address` wait on their connections, but `but`.
    let remote_ends = |net: u64, address: &str, writers: bool, but: u32| -> Vec<String> {
        procs
            .iter()
            .filter(|p| p.net.0 != net && p.pid != but)
            .filter(|p| {
                // Its pump waits on the connection to the host (a reading end's pump may wait
                // for its user to take a message: a write of its proxy).
                p.waits.iter().any(|w| match (w.kind, w.connection()) {
                    (Kind::Remote, _) => w.items[0].1 == writers && w.items[0].2 == address,
                    (Kind::Write, Some(_)) => !writers && w.items[0].2 == address,
                    _ => false,
                })
            })
            .map(|p| format!("{} over the socket{}", who(p), state(p)))
            .collect()
    };
    // Who holds the `writers` (or reader) ends of channel `key` of network `net`: its
    // processes, and (if it is a socket channel hosted there, at `address`) the
    // processes of other networks whose socket ends of it wait on their connections.
    // (For a reader, `me`, that finds no writer end: the remote readers that may give back
    // messages it waits for.)
    let holders = |net: u64, key: u64, writers: bool, address: Option<&str>, me: u32| -> String {
        let mut hs: Vec<String> = procs
            .iter()
            .filter(|p| {
                p.net.0 == net
                    && p.holds
                        .iter()
                        .any(|&(k, w, r)| k == key && if writers { w > 0 } else { r > 0 })
            })
            .map(|p| format!("{}{}", who(p), state(p)))
            .collect();
        if let Some(address) = address {
            hs.extend(remote_ends(net, address, writers, 0));
        }
        let side = if writers { "writer" } else { "reader" };
        match hs.len() {
            0 => {
                // A reader of a retired socket channel waits while remote readers hold
                // messages they asked for ahead (they may come back: see `shm/ring.rs`).
                let back = match address {
                    Some(address) if writers => remote_ends(net, address, false, me),
                    _ => Vec::new(),
                };
                if back.is_empty() {
                    format!("no live process holds a {side} end")
                } else {
                    format!(
                        "no live process holds a writer end, but messages asked for ahead may still come back from {}",
                        back.join(" and ")
                    )
                }
            }
            1 => format!("its only {side} end is held by {}", hs[0]),
            _ => format!("its {side} ends are held by {}", hs.join("; ")),
        }
    };
    let mut lines = vec![format!(
        "deadlock: every process of the network is blocked, and none can complete another's operation ({} processes):",
        procs.len()
    )];
    for p in procs {
        // A socket thread's wait is its peer's operation, or an idle connection: not a line.
        for w in p.waits.iter().filter(|w| !w.socket) {
            let mut line = format!("- {} {}", who(p), describe(w, procs));
            if matches!(w.kind, Kind::Read | Kind::Write) {
                let (key, write, name) = &w.items[0];
                // A socket end: its pump waits on the connection to the host, whose thread
                // serving it waits on the host's channel.
                let pump = p.waits.iter().find(|x| {
                    x.kind == Kind::Remote && x.socket && x.items.get(1).map(|i| i.0) == Some(*key)
                });
                let host =
                    pump.and_then(|x| procs.iter().find(|h| u64::from(h.pid) == x.items[0].0));
                match host {
                    Some(h) => {
                        line.push_str(&format!(" (a socket channel hosted by {}", who(h)));
                        let served = h.waits.iter().find(|x| {
                            x.socket
                                && matches!(x.kind, Kind::Read | Kind::Write)
                                && x.items.get(1).map(|i| i.0) == Some(u64::from(p.pid))
                        });
                        match served {
                            Some(x) => line.push_str(&format!(
                                ", which waits on its behalf to {} it); {}",
                                if x.kind == Kind::Write {
                                    "write"
                                } else {
                                    "read"
                                },
                                holders(h.net.0, x.items[0].0, !write, Some(name), p.pid)
                            )),
                            None => line.push_str(&format!(
                                "); {}",
                                holders(h.net.0, 0, !write, Some(name), p.pid)
                            )),
                        }
                    }
                    None => {
                        let address = name.contains("://").then_some(name.as_str());
                        line.push_str(&format!(
                            "; {}",
                            holders(p.net.0, *key, !write, address, p.pid)
                        ));
                    }
                }
            }
            lines.push(line);
        }
    }
    lines.join("\n")
}

fn describe(w: &Wait, procs: &[Proc]) -> String {
    let chan = |(_, _, name): &(u64, bool, String)| format!("`{name}`");
    match w.kind {
        Kind::Read => format!("waits to read {}", chan(&w.items[0])),
        Kind::Write => format!("waits to write {}", chan(&w.items[0])),
        Kind::Select => {
            let gs: Vec<String> = w
                .items
                .iter()
                .map(|it| format!("{} {}", if it.1 { "write" } else { "read" }, chan(it)))
                .collect();
            format!("waits in a select to {}", gs.join(" or "))
        }
        Kind::Remote => match w.items[0].0 {
            0 => "waits for connections".into(),
            peer => format!(
                "waits on its connection to pid {peer} for {}",
                chan(&w.items[0])
            ),
        },
        Kind::Join | Kind::Sequence => {
            let cs: Vec<String> = w
                .items
                .iter()
                .map(
                    |&(pid, _, _)| match procs.iter().find(|p| u64::from(p.pid) == pid) {
                        Some(p) => format!("`{}` (pid {})", p.name, p.pid),
                        None => format!("pid {pid}"),
                    },
                )
                .collect();
            let combinator = if w.kind == Kind::Join {
                "Parallel"
            } else {
                "Sequence"
            };
            format!("waits in {combinator} for {}", cs.join(", "))
        }
    }
}

/// The fields of `/proc/<pid>/stat` from field 3 (the state) on, if the process runs (a
/// zombie has ended): field N is at index N - 3.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    if matches!(f.next(), Some("Z" | "X" | "x") | None) {
        return None;
    }
    // The state is not a number: index 0 holds 0 in its place.
    Some(
        std::iter::once(0)
            .chain(f.map(|v| v.parse().unwrap_or(0)))
            .collect(),
    )
}

/// A process's thread count and start time, from `/proc/<pid>/stat`; `None` if it ended.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    // num_threads is field 20, starttime field 22.
    let f = stat_fields(pid)?;
    Some((u32::try_from(*f.get(17)?).ok()?, *f.get(19)?))
}

/// The CPU time (user + system, fields 14 and 15) process `pid` has used, in clock ticks;
/// `None` if it ended.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(11)? + f.get(12)?)
}

fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_threads_and_a_start_time_in_proc() {
        let (threads, start) = proc_stat(std::process::id()).expect("/proc/self/stat");
        assert!(threads >= 1);
        assert!(start > 0);
    }

    #[test]
    fn a_report_through_a_socket_names_the_host_and_the_remote_end_across_networks() {
        // `main` (network 1) hosts `numbers` (key 7 there) and keeps a writer; `consumer`
        // (network 2) reads it through its proxy (key 3 there), its pump idle on the
        // connection, `main`'s thread serving it waiting to read on its behalf.
        let at = "tcp://127.0.0.1:9/numbers";
        let mut main = Proc::new(100, "main");
        main.net = (1, 0);
        main.holds = vec![(7, 1, 1)];
        main.waits = vec![
            Wait {
                kind: Kind::Join,
                items: vec![(101, false, String::new())],
                words: vec![(0, 0)],
                socket: false,
            },
            Wait {
                kind: Kind::Read,
                items: vec![
                    (7, false, at.into()),
                    (101, false, String::new()),
                    (60, false, String::new()),
                    (105, false, String::new()),
                ],
                words: vec![(0, 0); 4],
                socket: true,
            },
        ];
        let mut consumer = Proc::new(101, "consumer");
        consumer.net = (2, 0);
        consumer.holds = vec![(3, 0, 1)];
        consumer.waits = vec![
            Wait {
                kind: Kind::Read,
                items: vec![(3, false, at.into())],
                words: vec![(0, 0)],
                socket: false,
            },
            Wait {
                kind: Kind::Remote,
                items: vec![
                    (100, false, at.into()),
                    (3, false, String::new()),
                    (105, false, String::new()),
                    (60, false, String::new()),
                ],
                words: vec![(0, 0); 4],
                socket: true,
            },
        ];
        assert_eq!(consumer.waits[1].connection(), Some((100, 105, 60)));
        assert_eq!(main.waits[1].connection(), Some((101, 60, 105)));
        let text = report(&[main, consumer]);
        assert!(
            text.contains(&format!(
                "- `consumer` (pid 101) waits to read `{at}` (a socket channel hosted by \
                 `main` (pid 100), which waits on its behalf to read it); its only writer end \
                 is held by `main` (pid 100), which waits in Parallel for `consumer` (pid 101)"
            )),
            "{text}"
        );
        // The socket threads' waits are not lines of their own.
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn the_report_names_who_holds_the_other_end_and_what_it_waits_for() {
        let mut root = Proc::new(100, "main");
        root.holds = vec![(7, 1, 0)];
        root.waits = vec![Wait {
            kind: Kind::Join,
            items: vec![(101, false, String::new())],
            words: vec![(0, 0)],
            socket: false,
        }];
        let mut consumer = Proc::new(101, "demo::consumer");
        consumer.holds = vec![(7, 0, 1)];
        consumer.waits = vec![Wait {
            kind: Kind::Read,
            items: vec![(7, false, "numbers".into())],
            words: vec![(0, 0)],
            socket: false,
        }];
        let text = report(&[root, consumer]);
        assert!(
            text.contains(
                "- `consumer` (pid 101) waits to read `numbers`; its only writer end is held by \
                 `main` (pid 100), which waits in Parallel for `consumer` (pid 101)"
            ),
            "{text}"
        );
    }
}
