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
const MAGIC: u64 = u64::from_le_bytes(*b"PYCSPAR2");
const VERSION: u32 = 3;
const HEADER_SIZE: u64 = 4096;
/// Entries of a new directory; it doubles when more than half are taken.
const DIR_FIRST_LEN: u64 = 1024;
const DIR_ENTRY_SIZE: u64 = 128;
/// Longest channel name, in bytes.
pub(crate) const MAX_NAME: usize = 112;
const DATA_START: u64 = HEADER_SIZE;
const ALIGN: u64 = 256;
const NCLASSES: usize = 29;
const BLOCK_HEADER: u64 = 16;
/// Freed blocks this large give their pages back to the kernel; smaller ones stay mapped for
/// the next message of their size class (re-faulting pages costs more than copying them).
const PUNCH_FROM: u64 = 64 << 20;
/// Freed blocks of this size and more give their pages back to the kernel (all but the page
/// that holds their header) once the free blocks that still hold pages exceed
/// [`BLOCK_CACHE`]; smaller blocks share pages with others and stay as they are.
const PUNCH_MIN: u64 = 16 << 10;
/// Bytes of freed blocks (of [`PUNCH_MIN`] and more) that keep their pages for the next
/// message of their size; beyond this, freed blocks give their pages back.
pub(crate) const BLOCK_CACHE: u64 = 32 << 20;
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
    /// Bytes of free blocks of [`PUNCH_MIN`] and more that still hold their pages.
    cached: AtomicU64,
    /// Free channel headers: a tagged Treiber stack (a header, once made, is always a header).
    free_headers: AtomicU64,
    /// Channels alive now.
    channels: AtomicU64,
    /// The directory's lock: the pid of the process that holds it, 0 when free.
    dir_lock: AtomicU32,
    _pad2: u32,
    /// The directory: offset of its table (0 until the first name), its number of entries,
    /// entries in use (ready or removed), ready entries. Changed only under `dir_lock`.
    dir: AtomicU64,
    dir_len: AtomicU64,
    dir_used: AtomicU64,
    dir_live: AtomicU64,
    /// The census of the network's processes (`shm/census.rs`): offset of its block, 0 until
    /// the first process registers.
    census: AtomicU64,
    /// Every waiter record ever made (`shm/waiter.rs`), linked through their `all_next`: a
    /// list that only grows (records are never anything else), walked when a process is
    /// settled to take back its records.
    waiters: AtomicU64,
    /// Free waiter records of the smallest size: a tagged Treiber stack.
    free_waiters: AtomicU64,
}

/// One name of the directory. Read and written only under the directory's lock; `state` is
/// stored last, so an entry a dead lock holder left half-written is still empty.
#[repr(C)]
struct DirEntry {
    state: AtomicU32,
    name_len: UnsafeCell<u32>,
    channel: UnsafeCell<u64>,
    name: UnsafeCell<[u8; MAX_NAME]>,
}

const DIR_EMPTY: u32 = 0;
const DIR_READY: u32 = 2;
/// A removed name: lookups go on past it; a new name may take it.
const DIR_REMOVED: u32 = 3;

#[repr(C)]
struct BlockHeader {
    class: u32,
    /// 1 when the block's bytes from its second page on are zero (a fresh block, or one whose
    /// pages were given back), 0 when they hold what its last owner left.
    clean: AtomicU32,
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

    /// Maps, read-write, the arena of another network on this host that this process's
    /// network reaches through socket channels (`file`: its memfd, opened through
    /// `/proc/<pid>/fd/<n>`): the census scans its records, and writes into it a deadlock
    /// that spans both. The mapping lives as long as the process.
    pub(crate) fn attach_other(file: File) -> io::Result<&'static Arena> {
        let size = file.metadata()?.len();
        if !(DATA_START + ALIGN..=ARENA_MAX).contains(&size) {
            return Err(io::Error::other(format!(
                "that is not a pycsp arena ({size} bytes)"
            )));
        }
        Ok(Box::leak(Box::new(Arena::map(
            OwnedFd::from(file),
            size,
            false,
        )?)))
    }

    /// Maps, **read-only**, the arena of a network this process is not part of (an observer
    /// such as `pycsp-top`): `file` is the network's memfd, opened through
    /// `/proc/<pid>/fd/<n>`. Every access through the returned arena is a load: a store would
    /// fault, so an observer cannot disturb the network it looks at. The mapping lives as long
    /// as the process (an observer attaches once).
    pub(crate) fn observe(file: File) -> io::Result<&'static Arena> {
        let size = file.metadata()?.len();
        if !(DATA_START + ALIGN..=ARENA_MAX).contains(&size) {
            return Err(io::Error::other(format!(
                "that is not a pycsp arena ({size} bytes)"
            )));
        }
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw_read_only(file.as_raw_fd())?;
        let arena = Arena::from_map(map, OwnedFd::from(file), size);
        // SAFETY: the header lies at the start of the mapping, which is at least a page long;
        // its magic, version and size are plain fields written before any child started.
        let h = arena.header_ptr();
        let (magic, version, hsize) = unsafe { ((*h).magic, (*h).version, (*h).size) };
        if magic != MAGIC || version != VERSION || hsize != size {
            return Err(io::Error::other(
                "that is not a pycsp arena of this version (wrong magic, version or size)",
            ));
        }
        Ok(Box::leak(Box::new(arena)))
    }

    fn from_map(map: MmapRaw, fd: OwnedFd, size: u64) -> Arena {
        let room = size - DATA_START;
        let max_class = (0..NCLASSES)
            .rev()
            .find(|&c| ALIGN << c <= room)
            .unwrap_or(0);
        Arena {
            map,
            fd,
            size,
            max_class,
        }
    }

    fn map(fd: OwnedFd, size: u64, init: bool) -> io::Result<Arena> {
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(fd.as_raw_fd())?;
        let arena = Arena::from_map(map, fd, size);
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

    /// The word that holds the offset of the network's census block (see `shm/census.rs`).
    pub(crate) fn census_word(&self) -> &AtomicU64 {
        &self.header().census
    }

    /// The arena offset of `p`, if it points into the arena.
    pub(crate) fn offset_of<T>(&self, p: *const T) -> Option<u64> {
        let base = self.map.as_ptr() as usize;
        let at = (p as usize).checked_sub(base)? as u64;
        (at < self.size).then_some(at)
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

    /// Gives the pages of `len` bytes at `offset` (from [`alloc_static`](Self::alloc_static))
    /// back to the kernel; the range is never handed out again.
    pub(crate) fn give_back(&self, offset: u64, len: u64) {
        let start = offset.next_multiple_of(4096);
        let end = (offset + len) / 4096 * 4096;
        if end > start {
            sys::punch_hole(self.fd(), start, end - start);
        }
    }

    /// The size class of a block for `len` bytes of data, if one can exist in this arena.
    fn class_for(&self, len: u64) -> Option<usize> {
        let need = len.checked_add(BLOCK_HEADER)?;
        (0..=self.max_class).find(|&c| (ALIGN << c) >= need)
    }

    /// Allocates a block that can hold `len` bytes; returns the offset of its data. Its
    /// bytes are whatever they were (see [`alloc_block_zeroed`](Self::alloc_block_zeroed)).
    pub(crate) fn alloc_block(&self, len: u64) -> Result<u64, ArenaError> {
        self.alloc_block_clean(len).map(|(data, _)| data)
    }

    /// Allocates a block of `len` zero bytes. Pages that are zero already (a fresh block, or
    /// one whose pages were given back) are not touched, so a large block costs nothing
    /// until it is used.
    pub(crate) fn alloc_block_zeroed(&self, len: u64) -> Result<u64, ArenaError> {
        let (data, clean) = self.alloc_block_clean(len)?;
        let dirty = if clean {
            // The first page holds the header and stays mapped: only it may hold old bytes.
            len.min(4096 - BLOCK_HEADER)
        } else {
            len
        };
        // SAFETY: the block is ours alone until it is freed, and holds at least `len` bytes
        // (checked by `ptr`).
        unsafe { std::ptr::write_bytes(self.ptr(data, len), 0, dirty as usize) };
        Ok(data)
    }

    /// Allocates a block; its data offset, and whether its bytes after the first page are
    /// zero.
    fn alloc_block_clean(&self, len: u64) -> Result<(u64, bool), ArenaError> {
        let class = self.class_for(len).ok_or(ArenaError::TooLarge {
            len,
            max: self.max_block_data(),
        })?;
        let head = &self.header().free[class];
        let mut cur = head.load(Ordering::Acquire);
        let block = loop {
            if cur & TAG_OFFSET_MASK == 0 {
                let off = self.alloc_static(ALIGN << class)?;
                self.block_header(off).clean.store(1, Ordering::Relaxed);
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
        let hdr = self.block_header(block);
        let clean = hdr.clean.load(Ordering::Acquire) == 1;
        let size = ALIGN << class;
        if !clean && size >= PUNCH_MIN {
            self.header().cached.fetch_sub(size, Ordering::AcqRel);
        }
        // SAFETY: the block is ours alone from here until it is freed.
        unsafe { (*self.ptr(block, BLOCK_HEADER).cast::<BlockHeader>()).class = class as u32 };
        Ok((block + BLOCK_HEADER, clean))
    }

    fn block_header(&self, block: u64) -> &BlockHeader {
        // SAFETY: `block` is the start of a block inside the arena (checked by `ptr`); `next`
        // is atomic and `class` is only written by the block's owner.
        unsafe { &*self.ptr(block, BLOCK_HEADER).cast::<BlockHeader>() }
    }

    /// Returns the block whose data starts at `data` to its size class. A large block gives
    /// its pages back to the kernel when it is very large or the cache of free pages is full
    /// (see [`BLOCK_CACHE`]).
    pub(crate) fn free_block(&self, data: u64) {
        let block = data
            .checked_sub(BLOCK_HEADER)
            .expect("a block's data follows its header");
        let hdr = self.block_header(block);
        let class = hdr.class as usize;
        assert!(class < NCLASSES, "corrupt block header at {block}");
        let size = ALIGN << class;
        let cached = &self.header().cached;
        if size >= PUNCH_MIN {
            if size >= PUNCH_FROM || cached.load(Ordering::Acquire) + size > BLOCK_CACHE {
                // Keep the first page (it holds the header); give the rest back.
                sys::punch_hole(self.fd(), block + 4096, size - 4096);
                hdr.clean.store(1, Ordering::Release);
            } else {
                cached.fetch_add(size, Ordering::AcqRel);
                hdr.clean.store(0, Ordering::Release);
            }
        } else {
            hdr.clean.store(0, Ordering::Release);
        }
        push(&self.header().free[class], block, &hdr.next);
    }

    /// Takes a channel header of `len` bytes off the free headers (`next_of` finds the link
    /// field inside a header), or makes a new one; returns its offset. Headers are never
    /// used for anything else, so a stale offset of one still points at a header.
    pub(crate) fn alloc_header(
        &self,
        len: u64,
        next_of: impl Fn(u64) -> &'static AtomicU64,
    ) -> Result<u64, ArenaError> {
        let head = &self.header().free_headers;
        let mut cur = head.load(Ordering::Acquire);
        loop {
            if cur & TAG_OFFSET_MASK == 0 {
                return self.alloc_static(len);
            }
            let off = (cur & TAG_OFFSET_MASK) * ALIGN;
            let next = next_of(off).load(Ordering::Acquire);
            let new = (next & TAG_OFFSET_MASK) | ((cur >> TAG_SHIFT).wrapping_add(1) << TAG_SHIFT);
            match head.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(off),
                Err(c) => cur = c,
            }
        }
    }

    /// Takes a waiter record of `len` bytes (the smallest size) off the free records (`next_of`
    /// finds the link field inside a record), or makes a new one; returns its offset and
    /// whether it is new. Records are never used for anything else, so a stale offset of one
    /// still points at a record.
    pub(crate) fn alloc_waiter(
        &self,
        len: u64,
        next_of: impl Fn(u64) -> &'static AtomicU64,
    ) -> Result<(u64, bool), ArenaError> {
        let head = &self.header().free_waiters;
        let mut cur = head.load(Ordering::Acquire);
        loop {
            if cur & TAG_OFFSET_MASK == 0 {
                return self.alloc_static(len).map(|off| (off, true));
            }
            let off = (cur & TAG_OFFSET_MASK) * ALIGN;
            let next = next_of(off).load(Ordering::Acquire);
            let new = (next & TAG_OFFSET_MASK) | ((cur >> TAG_SHIFT).wrapping_add(1) << TAG_SHIFT);
            match head.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok((off, false)),
                Err(c) => cur = c,
            }
        }
    }

    /// Returns the waiter record at `offset` (256-byte aligned, of the smallest size) to the
    /// free records.
    pub(crate) fn free_waiter(&self, offset: u64, next: &AtomicU64) {
        push(&self.header().free_waiters, offset, next);
    }

    /// Adds a new waiter record (at `offset`, linked through `next`) to the list of all.
    pub(crate) fn list_waiter(&self, offset: u64, next: &AtomicU64) {
        // Only ever pushed, never popped: no ABA, so the tag is only along for `push`.
        push(&self.header().waiters, offset, next);
    }

    /// The offset of the first of all waiter records (0: none), see
    /// [`list_waiter`](Self::list_waiter).
    pub(crate) fn first_waiter(&self) -> u64 {
        (self.header().waiters.load(Ordering::Acquire) & TAG_OFFSET_MASK) * ALIGN
    }

    /// Returns the channel header at `offset` (256-byte aligned) to the free headers.
    pub(crate) fn free_header(&self, offset: u64, next: &AtomicU64) {
        push(&self.header().free_headers, offset, next);
    }

    /// Counts a channel made (`true`) or freed.
    pub(crate) fn count_channel(&self, made: bool) {
        let c = &self.header().channels;
        if made {
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// What the network's shared memory holds now.
    pub(crate) fn usage(&self) -> Usage {
        let h = self.header();
        // SAFETY: fstat only writes the struct it is given.
        let resident = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(self.fd(), &mut st) == 0 {
                st.st_blocks as u64 * 512
            } else {
                0
            }
        };
        Usage {
            size: self.size,
            allocated: h.bump.load(Ordering::Acquire) - DATA_START,
            cached: h.cached.load(Ordering::Acquire),
            resident,
            channels: h.channels.load(Ordering::Acquire),
            names: h.dir_live.load(Ordering::Acquire),
        }
    }

    /// The largest message a block can hold: the largest size class that fits in this arena.
    pub(crate) fn max_block_data(&self) -> u64 {
        (ALIGN << self.max_class) - BLOCK_HEADER
    }

    /// Takes the directory's lock (see [`DirLock`]).
    fn lock_dir(&self) -> DirLock<'_> {
        DirLock::take(self)
    }

    /// Entry `i` of the directory table at `table`.
    fn dir_entry(&self, table: u64, i: u64) -> &DirEntry {
        let off = table + i * DIR_ENTRY_SIZE;
        // SAFETY: the table lies inside the arena (checked by `ptr`); its entries are read and
        // written only under the directory's lock.
        unsafe { &*self.ptr(off, DIR_ENTRY_SIZE).cast::<DirEntry>() }
    }

    fn entry_name(e: &DirEntry) -> &[u8] {
        // SAFETY: called under the directory's lock on a ready entry, whose name was written
        // before its state.
        unsafe {
            let len = (*e.name_len.get()) as usize;
            &(&*e.name.get())[..len.min(MAX_NAME)]
        }
    }

    fn entry_channel(e: &DirEntry) -> u64 {
        // SAFETY: as in `entry_name`.
        unsafe { *e.channel.get() }
    }

    /// The ready entry for `name` in the current table, if any (under the lock).
    fn find(&self, _lock: &DirLock<'_>, name: &str) -> Option<&DirEntry> {
        let h = self.header();
        let (table, len) = (
            h.dir.load(Ordering::Acquire),
            h.dir_len.load(Ordering::Acquire),
        );
        if table == 0 {
            return None;
        }
        let start = name_hash(name) & (len - 1);
        for k in 0..len {
            let e = self.dir_entry(table, (start + k) & (len - 1));
            match e.state.load(Ordering::Acquire) {
                DIR_EMPTY => return None,
                DIR_READY if Self::entry_name(e) == name.as_bytes() => return Some(e),
                _ => {}
            }
        }
        None
    }

    /// The channel registered under `name` (its key, see `shm::ring`), if any.
    pub(crate) fn lookup(&self, name: &str) -> Option<u64> {
        let lock = self.lock_dir();
        self.find(&lock, name).map(Self::entry_channel)
    }

    /// Registers channel `key` under `name`. Fails with `NameInUse` if the name belongs to a
    /// channel for which `alive` says yes; a name whose channel has ended is taken over.
    pub(crate) fn register(
        &self,
        name: &str,
        key: u64,
        alive: impl Fn(u64) -> bool,
    ) -> Result<(), ArenaError> {
        assert!(name.len() <= MAX_NAME);
        let lock = self.lock_dir();
        if let Some(e) = self.find(&lock, name) {
            if alive(Self::entry_channel(e)) {
                return Err(ArenaError::NameInUse);
            }
            // SAFETY: under the lock; one 8-byte store replaces the ended channel.
            unsafe { *e.channel.get() = key };
            return Ok(());
        }
        let h = self.header();
        let len = h.dir_len.load(Ordering::Acquire);
        if h.dir.load(Ordering::Acquire) == 0 || (h.dir_used.load(Ordering::Acquire) + 1) * 2 > len
        {
            self.rebuild_dir(&lock)?;
        }
        let (table, len) = (
            h.dir.load(Ordering::Acquire),
            h.dir_len.load(Ordering::Acquire),
        );
        let start = name_hash(name) & (len - 1);
        for k in 0..len {
            let e = self.dir_entry(table, (start + k) & (len - 1));
            let state = e.state.load(Ordering::Acquire);
            if state == DIR_EMPTY || state == DIR_REMOVED {
                // SAFETY: under the lock; the entry is not ready, so nobody reads these
                // fields until the state below says so.
                unsafe {
                    *e.name_len.get() = name.len() as u32;
                    (&mut *e.name.get())[..name.len()].copy_from_slice(name.as_bytes());
                    *e.channel.get() = key;
                }
                e.state.store(DIR_READY, Ordering::Release);
                if state == DIR_EMPTY {
                    h.dir_used.fetch_add(1, Ordering::AcqRel);
                }
                h.dir_live.fetch_add(1, Ordering::AcqRel);
                return Ok(());
            }
        }
        unreachable!("a directory at most half full has an empty entry")
    }

    /// Removes `name` if it still belongs to channel `key`.
    pub(crate) fn unregister(&self, name: &str, key: u64) {
        let lock = self.lock_dir();
        if let Some(e) = self.find(&lock, name) {
            if Self::entry_channel(e) == key {
                e.state.store(DIR_REMOVED, Ordering::Release);
                self.header().dir_live.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Makes a new directory table for the ready names (twice as many entries as they
    /// need, at least [`DIR_FIRST_LEN`]), without removed entries, and frees the old one.
    /// A process that dies meanwhile leaves the old table in place (and a block unused).
    fn rebuild_dir(&self, _lock: &DirLock<'_>) -> Result<(), ArenaError> {
        let h = self.header();
        let (old, old_len) = (
            h.dir.load(Ordering::Acquire),
            h.dir_len.load(Ordering::Acquire),
        );
        let live = h.dir_live.load(Ordering::Acquire);
        let len = ((live + 1) * 4).next_power_of_two().max(DIR_FIRST_LEN);
        let bytes = len.checked_mul(DIR_ENTRY_SIZE).ok_or(ArenaError::Full {
            needed: u64::MAX,
            free: self.unallocated(),
            size: self.size,
        })?;
        let table = self.alloc_block_zeroed(bytes)?;
        let mut count = 0;
        for i in 0..if old == 0 { 0 } else { old_len } {
            let e = self.dir_entry(old, i);
            if e.state.load(Ordering::Acquire) != DIR_READY {
                continue;
            }
            let name = Self::entry_name(e);
            let mut j = fnv1a(name) & (len - 1);
            loop {
                let n = self.dir_entry(table, j);
                if n.state.load(Ordering::Relaxed) == DIR_EMPTY {
                    // SAFETY: the new table is ours alone until it is published below.
                    unsafe {
                        *n.name_len.get() = name.len() as u32;
                        (&mut *n.name.get())[..name.len()].copy_from_slice(name);
                        *n.channel.get() = Self::entry_channel(e);
                    }
                    n.state.store(DIR_READY, Ordering::Relaxed);
                    count += 1;
                    break;
                }
                j = (j + 1) & (len - 1);
            }
        }
        h.dir_len.store(len, Ordering::Release);
        h.dir.store(table, Ordering::Release);
        h.dir_used.store(count, Ordering::Release);
        h.dir_live.store(count, Ordering::Release);
        if old != 0 {
            self.free_block(old);
        }
        Ok(())
    }
}

/// The directory's lock, held by one thread of one process at a time: a process-local mutex
/// orders this process's threads, then the shared word `dir_lock` holds the pid of the
/// process that has the directory. A process that died holding it is found out (its pid no
/// longer exists) and the lock taken over; the directory stays consistent because every
/// change is published by one store (an entry's state, the table's offset).
struct DirLock<'a> {
    arena: &'a Arena,
    _local: std::sync::MutexGuard<'static, ()>,
}

static DIR_LOCAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl<'a> DirLock<'a> {
    fn take(arena: &'a Arena) -> DirLock<'a> {
        let local = DIR_LOCAL.lock().unwrap_or_else(|p| p.into_inner());
        let me = std::process::id();
        let word = &arena.header().dir_lock;
        let mut tries = 0u32;
        loop {
            match word.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(owner) => {
                    tries += 1;
                    if tries % 256 == 0
                        && !sys::process_exists(owner)
                        && word
                            .compare_exchange(owner, me, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        break;
                    }
                    std::thread::yield_now();
                }
            }
        }
        DirLock {
            arena,
            _local: local,
        }
    }
}

impl Drop for DirLock<'_> {
    fn drop(&mut self) {
        self.arena.header().dir_lock.store(0, Ordering::Release);
    }
}

/// What a network's shared memory holds (see [`crate::shared_memory_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes reserved for the network (address space; pages are allocated on first touch).
    pub size: u64,
    /// Bytes handed out so far by the arena's bump allocator: channel headers, rings,
    /// message blocks, directory tables; freed ones are reused, never handed out twice.
    pub allocated: u64,
    /// Bytes of freed blocks that keep their pages for reuse (at most about
    /// 32 MiB of blocks of 16 KiB and more; smaller blocks are not counted).
    pub cached: u64,
    /// Bytes of memory the shared memory takes now (pages allocated to it).
    pub resident: u64,
    /// Channels alive in the network.
    pub channels: u64,
    /// Names in the directory.
    pub names: u64,
}

/// Pushes the object at `offset` (256-byte aligned) onto the tagged Treiber stack `head`,
/// linking it through its field `next`.
fn push(head: &AtomicU64, offset: u64, next: &AtomicU64) {
    let mut cur = head.load(Ordering::Acquire);
    loop {
        next.store(cur & TAG_OFFSET_MASK, Ordering::Release);
        let new = (offset / ALIGN) | ((cur >> TAG_SHIFT).wrapping_add(1) << TAG_SHIFT);
        match head.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(c) => cur = c,
        }
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
