//! The arena: one anonymous shared mapping per process network. See the layout in
//! [`crate::shm`].

use std::cell::UnsafeCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::ChannelError;
use crate::sys;

/// The most address space one network's arena reserves (pages are allocated on touch). Block
/// offsets in the free lists are stored in 28 bits of 256-byte units: at most 64 GiB.
pub(crate) const ARENA_MAX: u64 = 64 << 30;
/// The smallest arena (the header and directory take 1 MiB of it).
const ARENA_MIN: u64 = 16 << 20;
/// Arena sizes are multiples of this.
const ARENA_GRAIN: u64 = 2 << 20;
/// Environment variable that sets the size of a new arena in bytes (with an optional `K`,
/// `M` or `G` suffix, powers of 1024), instead of the size derived from the memory limits.
pub(crate) const ENV_ARENA_SIZE: &str = "PYCSP_ARENA_SIZE";
const MAGIC: u64 = u64::from_le_bytes(*b"PYCSPAR1");
const VERSION: u32 = 1;
const HEADER_SIZE: u64 = 4096;
/// Number of channel names one network can hold.
pub(crate) const DIR_ENTRIES: usize = 8192;
const DIR_ENTRY_SIZE: u64 = 128;
/// Longest channel name, in bytes.
pub(crate) const MAX_NAME: usize = 112;
const DATA_START: u64 = HEADER_SIZE + DIR_ENTRIES as u64 * DIR_ENTRY_SIZE;
const ALIGN: u64 = 256;
const NCLASSES: usize = 29;
const BLOCK_HEADER: u64 = 16;
/// Freed blocks this large give their pages back to the kernel; smaller ones stay mapped for
/// the next message of their size class (re-faulting pages costs more than copying them).
const PUNCH_FROM: u64 = 64 << 20;
/// Environment variable through which a child learns its arena's descriptor.
pub(crate) const ENV_ARENA_FD: &str = "PYCSP_ARENA_FD";

#[repr(C)]
struct ArenaHeader {
    magic: u64,
    version: u32,
    _pad: u32,
    size: u64,
    bump: AtomicU64,
    free: [AtomicU64; NCLASSES],
    /// A random number naming this network (set once at creation).
    network: u64,
    /// Anonymous channels made so far: the next one is `#anonymous + 1`.
    anonymous: AtomicU64,
}

#[repr(C)]
struct DirEntry {
    state: AtomicU32,
    name_len: UnsafeCell<u32>,
    channel: UnsafeCell<u64>,
    name: UnsafeCell<[u8; MAX_NAME]>,
}

const DIR_EMPTY: u32 = 0;
const DIR_WRITING: u32 = 1;
const DIR_READY: u32 = 2;

#[repr(C)]
struct BlockHeader {
    class: u32,
    _pad: u32,
    next: AtomicU64,
}

/// One network's shared arena, mapped into this process for the rest of its life.
pub(crate) struct Arena {
    map: MmapRaw,
    fd: OwnedFd,
    /// Bytes mapped: the size of the memfd, the same in every process of the network.
    size: u64,
    /// The largest size class whose block fits in the arena.
    max_class: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics or under the ownership
// protocols documented in `crate::shm`; the raw pointer inside MmapRaw is valid for the life of
// the process (the arena is never unmapped).
unsafe impl Sync for Arena {}
// SAFETY: as above.
unsafe impl Send for Arena {}

static ARENA: OnceLock<Arena> = OnceLock::new();

/// Why an arena operation failed. A failed allocation changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArenaError {
    /// No room for `needed` bytes (`u64::MAX` if the size overflowed): `free` of `size` are
    /// left.
    Full {
        needed: u64,
        free: u64,
        size: u64,
    },
    /// No block can ever hold `len` bytes: the largest holds `max`.
    TooLarge {
        len: u64,
        max: u64,
    },
    NameInUse,
    DirectoryFull,
}

impl ArenaError {
    /// The error for the user of channel `channel` (empty for a shared block).
    pub(crate) fn into_channel_error(self, channel: &str) -> ChannelError {
        match self {
            ArenaError::Full { needed, free, size } => ChannelError::Capacity {
                channel: channel.to_string(),
                needed,
                free,
                size,
            },
            ArenaError::TooLarge { len, max } => ChannelError::TooLarge {
                channel: channel.to_string(),
                len,
                max,
            },
            ArenaError::NameInUse => ChannelError::NameInUse(channel.to_string()),
            ArenaError::DirectoryFull => {
                ChannelError::SharedMemory("the network's channel directory is full".into())
            }
        }
    }
}

impl Arena {
    /// The arena of this process's network: inherited from the parent, or created now.
    pub(crate) fn get() -> io::Result<&'static Arena> {
        if let Some(a) = ARENA.get() {
            return Ok(a);
        }
        let size = new_arena_size()?;
        let arena = sys::memfd("pycsp-arena", size)
            .and_then(|fd| Arena::map(fd, size, true))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "could not create {size} bytes of shared memory for the process \
                         network ({e}); {ENV_ARENA_SIZE} sets a smaller size"
                    ),
                )
            })?;
        // Another thread may have won the race; then ours is dropped (unmapped) unused.
        let _ = ARENA.set(arena);
        Ok(ARENA.get().expect("arena was just set"))
    }

    /// Maps the arena a parent passed down as descriptor `fd` (in a child, before `main`).
    pub(crate) fn inherit(fd: RawFd) -> io::Result<()> {
        // The parent chose the size (from its limits); the memfd is that long.
        let file = File::from(sys::inherited_fd(fd)?);
        let size = file.metadata()?.len();
        if !(DATA_START + ALIGN..=ARENA_MAX).contains(&size) {
            return Err(io::Error::other(format!(
                "inherited arena has an impossible size of {size} bytes"
            )));
        }
        let arena = Arena::map(OwnedFd::from(file), size, false)?;
        ARENA
            .set(arena)
            .map_err(|_| io::Error::other("this process already has an arena"))
    }

    fn map(fd: OwnedFd, size: u64, init: bool) -> io::Result<Arena> {
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(fd.as_raw_fd())?;
        let room = size - DATA_START;
        let max_class = (0..NCLASSES)
            .rev()
            .find(|&c| ALIGN << c <= room)
            .unwrap_or(0);
        let arena = Arena {
            map,
            fd,
            size,
            max_class,
        };
        let h = arena.header_ptr();
        if init {
            // SAFETY: the memfd was just created and is mapped only here; nobody else can see
            // it yet, so plain writes to the header cannot race.
            unsafe {
                (*h).magic = MAGIC;
                (*h).version = VERSION;
                (*h).size = size;
                let mut id = [0u8; 8];
                sys::random_bytes(&mut id)?;
                // Never 0: that marks an end handed over to a socket channel's host.
                (*h).network = u64::from_le_bytes(id) | 1;
            }
            arena.header().bump.store(DATA_START, Ordering::Release);
        } else {
            // SAFETY: the parent initialised the header before starting this process.
            let (magic, version, hsize) = unsafe { ((*h).magic, (*h).version, (*h).size) };
            if magic != MAGIC || version != VERSION || hsize != size {
                return Err(io::Error::other(
                    "inherited arena has a wrong magic or version",
                ));
            }
        }
        Ok(arena)
    }

    /// The random number naming this network: ends sent to a process with another number
    /// (on another host, or started independently) cannot use shared memory.
    pub(crate) fn network(&self) -> u64 {
        self.header().network
    }

    /// A number for a new anonymous channel, unique in the network (from 1).
    pub(crate) fn next_anonymous(&self) -> u64 {
        self.header().anonymous.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Bytes of shared memory in all (the same in every process of the network).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes not yet handed out by the bump allocator (freed blocks not counted).
    pub(crate) fn unallocated(&self) -> u64 {
        self.size
            .saturating_sub(self.header().bump.load(Ordering::Acquire))
    }

    /// The descriptor children inherit.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn header_ptr(&self) -> *mut ArenaHeader {
        self.map.as_mut_ptr().cast()
    }

    fn header(&self) -> &ArenaHeader {
        // SAFETY: offset 0 holds the initialised header for the life of the mapping; the
        // fields other processes change are atomics.
        unsafe { &*self.header_ptr() }
    }

    /// A pointer to `offset` inside the arena.
    ///
    /// # Panics
    /// If `offset + len` is outside the arena (a corrupt offset must not escape).
    pub(crate) fn ptr(&self, offset: u64, len: u64) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.size),
            "offset {offset}+{len} outside the arena"
        );
        // SAFETY: the range was just checked to lie inside the mapping.
        unsafe { self.map.as_mut_ptr().add(offset as usize) }
    }

    /// Reserves `len` fresh bytes (256-byte aligned, zeroed) that are never freed.
    ///
    /// The bump pointer moves only when the whole range fits (one compare-and-swap), so a
    /// failed allocation, however absurd its size, leaves the arena exactly as it was.
    pub(crate) fn alloc_static(&self, len: u64) -> Result<u64, ArenaError> {
        let bump = &self.header().bump;
        let mut off = bump.load(Ordering::Acquire);
        loop {
            let end = len
                .checked_next_multiple_of(ALIGN)
                .and_then(|l| off.checked_add(l))
                .filter(|&end| end <= self.size);
            let Some(end) = end else {
                return Err(ArenaError::Full {
                    needed: len.checked_next_multiple_of(ALIGN).unwrap_or(u64::MAX),
                    free: self.size.saturating_sub(off),
                    size: self.size,
                });
            };
            match bump.compare_exchange_weak(off, end, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(off),
                Err(o) => off = o,
            }
        }
    }

    /// The size class of a block for `len` bytes of data, if one can exist in this arena.
    fn class_for(&self, len: u64) -> Option<usize> {
        let need = len.checked_add(BLOCK_HEADER)?;
        (0..=self.max_class).find(|&c| (ALIGN << c) >= need)
    }

    /// Allocates a block that can hold `len` bytes; returns the offset of its data.
    pub(crate) fn alloc_block(&self, len: u64) -> Result<u64, ArenaError> {
        let class = self.class_for(len).ok_or(ArenaError::TooLarge {
            len,
            max: self.max_block_data(),
        })?;
        let head = &self.header().free[class];
        let mut cur = head.load(Ordering::Acquire);
        let block = loop {
            if cur & TAG_OFFSET_MASK == 0 {
                let off = self.alloc_static(ALIGN << class)?;
                break off;
            }
            let off = (cur & TAG_OFFSET_MASK) * ALIGN;
            let next = self.block_header(off).next.load(Ordering::Acquire);
            let new = (next & TAG_OFFSET_MASK) | ((cur >> TAG_SHIFT).wrapping_add(1) << TAG_SHIFT);
            match head.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break off,
                Err(c) => cur = c,
            }
        };
        // SAFETY: the block is ours alone from here until it is freed.
        unsafe { (*self.ptr(block, BLOCK_HEADER).cast::<BlockHeader>()).class = class as u32 };
        Ok(block + BLOCK_HEADER)
    }

    fn block_header(&self, block: u64) -> &BlockHeader {
        // SAFETY: `block` is the start of a block inside the arena (checked by `ptr`); `next`
        // is atomic and `class` is only written by the block's owner.
        unsafe { &*self.ptr(block, BLOCK_HEADER).cast::<BlockHeader>() }
    }

    /// Returns the block whose data starts at `data` to its size class.
    pub(crate) fn free_block(&self, data: u64) {
        let block = data
            .checked_sub(BLOCK_HEADER)
            .expect("a block's data follows its header");
        let hdr = self.block_header(block);
        let class = hdr.class as usize;
        assert!(class < NCLASSES, "corrupt block header at {block}");
        let size = ALIGN << class;
        if size >= PUNCH_FROM {
            // Keep the first page (it holds the header); give the rest back.
            sys::punch_hole(self.fd(), block + 4096, size - 4096);
        }
        let head = &self.header().free[class];
        let mut cur = head.load(Ordering::Acquire);
        loop {
            hdr.next.store(cur & TAG_OFFSET_MASK, Ordering::Release);
            let new = (block / ALIGN) | ((cur >> TAG_SHIFT).wrapping_add(1) << TAG_SHIFT);
            match head.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(c) => cur = c,
            }
        }
    }

    /// The largest message a block can hold: the largest size class that fits in this arena.
    pub(crate) fn max_block_data(&self) -> u64 {
        (ALIGN << self.max_class) - BLOCK_HEADER
    }

    fn dir_entry(&self, i: usize) -> &DirEntry {
        let off = HEADER_SIZE + i as u64 * DIR_ENTRY_SIZE;
        // SAFETY: the directory lies inside the arena; its state is atomic and the other
        // fields are written only by the entry's claimer before it publishes DIR_READY.
        unsafe { &*self.ptr(off, DIR_ENTRY_SIZE).cast::<DirEntry>() }
    }

    fn wait_ready(e: &DirEntry) -> bool {
        let mut spins = 0u32;
        loop {
            match e.state.load(Ordering::Acquire) {
                DIR_READY => return true,
                DIR_EMPTY => return false,
                _ => {
                    spins += 1;
                    if spins > 1_000_000 {
                        // The writer died mid-entry; treat it as not ours.
                        return false;
                    }
                    std::thread::yield_now();
                }
            }
        }
    }

    fn entry_name(e: &DirEntry) -> &[u8] {
        // SAFETY: only called after DIR_READY was observed with Acquire, so the name and its
        // length were fully written and are never written again.
        unsafe {
            let len = (*e.name_len.get()) as usize;
            &(&*e.name.get())[..len.min(MAX_NAME)]
        }
    }

    /// Finds the channel registered under `name`.
    pub(crate) fn lookup(&self, name: &str) -> Option<u64> {
        let start = name_hash(name) as usize % DIR_ENTRIES;
        for k in 0..DIR_ENTRIES {
            let e = self.dir_entry((start + k) % DIR_ENTRIES);
            if !Self::wait_ready(e) {
                if e.state.load(Ordering::Acquire) == DIR_EMPTY {
                    return None;
                }
                continue;
            }
            if Self::entry_name(e) == name.as_bytes() {
                // SAFETY: READY was observed; `channel` is immutable from then on.
                return Some(unsafe { *e.channel.get() });
            }
        }
        None
    }

    /// Registers `channel` under `name`; fails if the name is taken.
    pub(crate) fn register(&self, name: &str, channel: u64) -> Result<(), ArenaError> {
        assert!(name.len() <= MAX_NAME);
        let start = name_hash(name) as usize % DIR_ENTRIES;
        for k in 0..DIR_ENTRIES {
            let e = self.dir_entry((start + k) % DIR_ENTRIES);
            if e.state
                .compare_exchange(DIR_EMPTY, DIR_WRITING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // SAFETY: winning the CAS to DIR_WRITING gives us the entry's fields alone.
                unsafe {
                    *e.name_len.get() = name.len() as u32;
                    (&mut *e.name.get())[..name.len()].copy_from_slice(name.as_bytes());
                    *e.channel.get() = channel;
                }
                e.state.store(DIR_READY, Ordering::Release);
                return Ok(());
            }
            if Self::wait_ready(e) && Self::entry_name(e) == name.as_bytes() {
                return Err(ArenaError::NameInUse);
            }
        }
        Err(ArenaError::DirectoryFull)
    }
}

/// The size of a new arena: [`ENV_ARENA_SIZE`] if set, else what the limits allow.
fn new_arena_size() -> io::Result<u64> {
    match std::env::var(ENV_ARENA_SIZE) {
        Ok(v) => {
            let n = parse_size(&v).ok_or_else(|| {
                io::Error::other(format!(
                    "{ENV_ARENA_SIZE}={v:?} is not a size in bytes (such as 512M or 4G)"
                ))
            })?;
            Ok(n.clamp(ARENA_MIN, ARENA_MAX) / ARENA_GRAIN * ARENA_GRAIN)
        }
        Err(_) => Ok(size_for_limits(address_space_left(), memory_limit())),
    }
}

/// The arena for a process with `address_space` bytes of address space left under
/// `RLIMIT_AS` and `memory` bytes of memory it may use (both `None` when unlimited): at most
/// half of each, so that the process's own memory and mappings keep the other half, and an
/// arena that fills up gives `Capacity` errors rather than an OOM kill.
pub(crate) fn size_for_limits(address_space: Option<u64>, memory: Option<u64>) -> u64 {
    let half = |l: Option<u64>| l.map_or(ARENA_MAX, |l| l / 2);
    let size = ARENA_MAX.min(half(address_space)).min(half(memory));
    (size / ARENA_GRAIN * ARENA_GRAIN).max(ARENA_MIN)
}

/// `1234`, `512K`, `64M`, `4G` (powers of 1024; an optional `B` or `iB` after the letter).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Bytes of address space this process may still map under `RLIMIT_AS` (`ulimit -v`), or
/// `None` without a limit.
fn address_space_left() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut rl) } != 0
        || rl.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let used = status_kib(&status, "VmSize:").unwrap_or(0) * 1024;
    Some(rl.rlim_cur.saturating_sub(used))
}

/// The value in KiB of field `key` of a `/proc` status or meminfo file.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Bytes of memory this process may use: the smallest memory limit of its cgroup and the
/// cgroup's ancestors (v2 `memory.max`, v1 `memory.limit_in_bytes`), and the machine's
/// memory and swap.
fn memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let machine = status_kib(&meminfo, "MemTotal:").map(|total| {
        (total + status_kib(&meminfo, "SwapTotal:").unwrap_or(0)).saturating_mul(1024)
    });
    [
        cgroup_memory_limit(&cgroup, std::path::Path::new("/sys/fs/cgroup")),
        machine,
    ]
    .into_iter()
    .flatten()
    .min()
}

/// The smallest memory limit on the way from the cgroups named in `proc_cgroup` (the text of
/// `/proc/self/cgroup`) up to the root, in the hierarchies mounted under `root`.
pub(crate) fn cgroup_memory_limit(proc_cgroup: &str, root: &std::path::Path) -> Option<u64> {
    let mut limits = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        // (hierarchy directory, limit file) to look in for this line.
        let places: &[(&str, &str)] = if controllers.is_empty() {
            &[("", "memory.max"), ("unified", "memory.max")]
        } else if controllers.split(',').any(|c| c == "memory") {
            &[("memory", "memory.limit_in_bytes")]
        } else {
            continue;
        };
        for (dir, file) in places {
            let mut cg = std::path::Path::new(path.trim_start_matches('/'));
            loop {
                let f = root.join(dir).join(cg).join(file);
                if let Ok(v) = std::fs::read_to_string(f) {
                    // "max" (v2) or a huge number (v1, 2^63 rounded to pages): no limit.
                    if let Ok(n) = v.trim().parse::<u64>() {
                        if n < 1 << 62 {
                            limits.push(n);
                        }
                    }
                }
                match cg.parent() {
                    Some(p) => cg = p,
                    None => break,
                }
            }
        }
    }
    limits.into_iter().min()
}

const TAG_SHIFT: u32 = 28;
const TAG_OFFSET_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// FNV-1a, 64 bit: stable across processes and builds.
pub(crate) fn name_hash(s: &str) -> u64 {
    fnv1a(s.as_bytes())
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_allocations_whose_sizes_wrap_the_bump_pointer_leave_it_alone() {
        let a = Arena::get().unwrap();
        let live = a.alloc_static(ALIGN).unwrap();
        let bump = a.header().bump.load(Ordering::Acquire);
        // Two sizes that, added one after the other, would bring the bump pointer back to the
        // live allocation (modulo 2^64), so that the next one would be placed on top of it.
        let first = 1u64 << 63;
        let second = (1u64 << 63) - (bump - live);
        for len in [first, second] {
            match a.alloc_static(len) {
                Err(ArenaError::Full { needed, size, .. }) => {
                    assert_eq!((needed, size), (len, a.size()));
                }
                other => panic!("alloc_static({len}): {other:?}"),
            }
        }
        let next = a.alloc_static(ALIGN).unwrap();
        assert!(
            next >= bump,
            "placed at {next}, below the bump pointer {bump}"
        );
        assert_eq!(
            a.alloc_static(u64::MAX).unwrap_err(),
            ArenaError::Full {
                needed: u64::MAX,
                free: a.unallocated(),
                size: a.size()
            }
        );
    }

    #[test]
    fn the_arena_takes_half_of_what_the_limits_leave() {
        assert_eq!(size_for_limits(None, None), ARENA_MAX);
        // ulimit -v 8000000, with 200 MB mapped already.
        let left = 8_000_000 * 1024 - 200_000_000;
        let size = size_for_limits(Some(left), None);
        assert!(size <= left / 2 && size > left / 2 - ARENA_GRAIN && size % ARENA_GRAIN == 0);
        assert_eq!(size_for_limits(Some(left), Some(1 << 30)), 512 << 20);
        assert_eq!(size_for_limits(None, Some(1 << 40)), ARENA_MAX);
        assert_eq!(size_for_limits(Some(1 << 20), Some(0)), ARENA_MIN);
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size(" 512M "), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn the_smallest_memory_limit_of_a_cgroup_and_its_ancestors_counts() {
        let root = std::env::temp_dir().join(format!("pycsp-cgroup-test-{}", std::process::id()));
        let put = |dir: &str, file: &str, v: &str| {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), v).unwrap();
        };
        // v2: the job's limit is below its parent's; the root has none.
        put("user.slice/job", "memory.max", "1073741824\n");
        put("user.slice", "memory.max", "4294967296\n");
        put("", "memory.max", "max\n");
        // v1: no limit (2^63 rounded down to a page) at the leaf, 3 GiB above.
        put(
            "memory/batch/task",
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        put("memory/batch", "memory.limit_in_bytes", "3221225472\n");
        let v2 = "0::/user.slice/job\n";
        let v1 = "4:memory:/batch/task\n3:cpu,cpuacct:/batch\n";
        assert_eq!(cgroup_memory_limit(v2, &root), Some(1 << 30));
        assert_eq!(cgroup_memory_limit(v1, &root), Some(3 << 30));
        assert_eq!(
            cgroup_memory_limit(&format!("{v1}{v2}"), &root),
            Some(1 << 30)
        );
        assert_eq!(cgroup_memory_limit("0::/elsewhere\n", &root), None);
        assert_eq!(cgroup_memory_limit("garbage", &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_block_larger_than_the_arena_is_too_large_and_allocates_nothing() {
        let a = Arena::get().unwrap();
        let max = a.max_block_data();
        assert!(max >= a.size() / 4 && max < a.size());
        for len in [max + 1, u64::MAX, u64::MAX - BLOCK_HEADER, 36 << 30] {
            if len <= max {
                continue;
            }
            assert_eq!(a.alloc_block(len), Err(ArenaError::TooLarge { len, max }));
        }
        let b = a.alloc_block(100_000).unwrap();
        a.free_block(b);
    }
}
