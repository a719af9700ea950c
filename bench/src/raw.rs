//! The physical limit: a raw shared-memory ping-pong between two processes, spinning and with
//! futex sleep/wake, and memcpy bandwidth in one process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// A shared anonymous mapping (a page, or more), visible to a forked child; its first word is
/// the ping-pong word.
struct Shared(*mut AtomicU32, usize);

impl Shared {
    fn new() -> Shared {
        Shared::with_len(4096)
    }

    fn with_len(len: usize) -> Shared {
        // SAFETY: an anonymous shared mapping of `len` bytes; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap failed");
        Shared(p.cast(), len)
    }

    /// The bytes after the first page.
    fn data(&self) -> *mut u8 {
        // SAFETY: stays inside the mapping when it is longer than a page (checked by callers).
        unsafe { self.0.cast::<u8>().add(4096) }
    }
    fn word(&self) -> &AtomicU32 {
        // SAFETY: the mapping is page-aligned, zeroed and lives until `drop`.
        unsafe { &*self.0 }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`; no reference outlives `self`.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: `word` is a valid aligned u32 in shared memory; FUTEX_WAIT/WAKE take no other
    // pointers here.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            std::ptr::null::<libc::timespec>(),
            0,
            0,
        );
    }
}

/// Forks a child that runs `child` and exits; returns its pid. The child only touches
/// atomics and makes system calls, so forking a process with other threads is sound here.
fn fork_child(child: impl FnOnce()) -> libc::pid_t {
    // SAFETY: see above; the child never returns into the caller's code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        child();
        // SAFETY: leaving the child at once, without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// GB/s of a raw TCP loopback stream of `size`-byte writes to another process, which reads
/// everything and answers one byte at the end: the socket limit for large messages.
pub fn tcp_stream(size: usize, total: usize) -> f64 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = (total / size).max(4);
    let mut buf = vec![0u8; 1 << 20];
    let pid = fork_child(|| {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let mut got = 0;
        while got < n * size {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => got += k,
            }
        }
        let _ = s.write_all(&[1]);
    });
    let (mut s, _) = l.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let msg = vec![7u8; size];
    let start = Instant::now();
    for _ in 0..n {
        s.write_all(&msg).unwrap();
    }
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    let rate = (n * size) as f64 / start.elapsed().as_secs_f64() / 1e9;
    reap(pid);
    rate
}

/// Round trip in ns of 8-byte messages over a raw TCP loopback connection (`TCP_NODELAY` on
/// both sides, as pycsp's own) to another process that echoes them: the floor under a round
/// trip over TCP, which pays the TCP stack where a Unix socket does not.
pub fn tcp_rtt(iters: u64) -> f64 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let pid = fork_child(|| {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 8];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                return;
            }
        }
    });
    let (mut s, _) = l.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; 8];
    let start = Instant::now();
    for i in 0..iters {
        s.write_all(&i.to_le_bytes()).unwrap();
        s.read_exact(&mut buf).unwrap();
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    drop(s);
    reap(pid);
    ns
}

/// Round trip in ns of the least a rendezvous channel pair over sockets can do with a
/// connection per channel end, as pycsp's: two Unix socket pairs (the ping's channel and the
/// pong's), one thread on each side. The echo reads the ping's 8-byte message, confirms it
/// (one byte back: the writer of a rendezvous channel returns once its reader took the
/// message), writes the pong on the other socket and waits for its confirmation; this
/// process writes the ping, waits for its confirmation, reads the pong and confirms it. Still
/// two crossings per round trip, as the echo of [`crate::peers::uds_rtt`], but four system
/// calls on each side where that echo makes two.
pub fn uds_rendezvous_rtt(iters: u64) -> f64 {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut ping, mut ping_far) = UnixStream::pair().unwrap();
    let (mut pong, mut pong_far) = UnixStream::pair().unwrap();
    let pid = fork_child(|| {
        let mut buf = [0u8; 8];
        let mut done = [0u8; 1];
        for _ in 0..iters {
            let ok = ping_far.read_exact(&mut buf).is_ok()
                && ping_far.write_all(&[1]).is_ok()
                && pong_far.write_all(&buf).is_ok()
                && pong_far.read_exact(&mut done).is_ok();
            if !ok {
                return;
            }
        }
    });
    let mut buf = [0u8; 8];
    let mut ack = [0u8; 1];
    let start = Instant::now();
    for i in 0..iters {
        ping.write_all(&i.to_le_bytes()).unwrap();
        ping.read_exact(&mut ack).unwrap();
        pong.read_exact(&mut buf).unwrap();
        pong.write_all(&[1]).unwrap();
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    reap(pid);
    ns
}

/// One step of a spinning wait: a `pause`, and every [`spins_per_yield`] of them a yield of
/// the CPU, so that the peer gets it when the two share one (a bench on one CPU, such as a
/// container limited to it: each hand-over cost a time slice, and the rows never ended).
/// With a core each, a hand-over comes within a few hundred `pause`s and nothing yields.
fn spin(spins: &mut u32) {
    *spins += 1;
    if *spins % spins_per_yield() == 0 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// How many `pause`s a spinning wait makes before it yields: tens of microseconds' worth, or
/// none when this process may run on one CPU only (its peer then needs that CPU to answer).
fn spins_per_yield() -> u32 {
    static EVERY: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EVERY.get_or_init(
        || match std::thread::available_parallelism().map_or(1, |n| n.get()) {
            1 => 1,
            _ => 2048,
        },
    )
}

/// Round-trip time in ns of a ping-pong on one shared word; `sleep` uses futex wait/wake.
pub fn ping_pong(iters: u32, sleep: bool) -> f64 {
    let shared = Shared::new();
    let w = shared.word();
    let wait_for = |w: &AtomicU32, want: u32| {
        let mut spins = 0u32;
        loop {
            let v = w.load(Ordering::Acquire);
            if v == want {
                return;
            }
            if sleep {
                futex(w, libc::FUTEX_WAIT, v);
            } else {
                spin(&mut spins);
            }
        }
    };
    let pid = fork_child(|| {
        for i in 0..iters {
            wait_for(w, 2 * i + 1);
            w.store(2 * i + 2, Ordering::Release);
            if sleep {
                futex(w, libc::FUTEX_WAKE, 1);
            }
        }
    });
    let start = Instant::now();
    for i in 0..iters {
        w.store(2 * i + 1, Ordering::Release);
        if sleep {
            futex(w, libc::FUTEX_WAKE, 1);
        }
        wait_for(w, 2 * i + 2);
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
    reap(pid);
    ns
}

/// Round-trip time in ns of the least a rendezvous channel pair can do between two spinning
/// processes: two flags on cache lines of their own (the ping's and the pong's channel), each
/// set odd by its writer (a message) and even by its reader (taken). A round trip is the
/// ping-pong's two hand-overs twice: the writer of the ping learns that it was taken (one
/// line), then finds the pong (another); the echo's writer the same. A rendezvous pair's round
/// trip cannot be faster than this, whatever the channel does.
pub fn rendezvous_pair(iters: u32) -> f64 {
    let shared = Shared::new();
    // SAFETY: the page is 4096 bytes; the two words are 256 bytes apart (on lines, and
    // adjacent-line pairs, of their own), aligned, zeroed and live until `drop`.
    let (a, b) = unsafe { (&*shared.0.cast::<AtomicU32>(), &*shared.0.add(64)) };
    let wait_for = |w: &AtomicU32, want: u32| {
        let mut spins = 0u32;
        while w.load(Ordering::Acquire) != want {
            spin(&mut spins);
        }
    };
    let pid = fork_child(|| {
        for i in 0..iters {
            wait_for(a, 2 * i + 1);
            a.store(2 * i + 2, Ordering::Release);
            b.store(2 * i + 1, Ordering::Release);
            wait_for(b, 2 * i + 2);
        }
    });
    let start = Instant::now();
    for i in 0..iters {
        a.store(2 * i + 1, Ordering::Release);
        wait_for(a, 2 * i + 2);
        wait_for(b, 2 * i + 1);
        b.store(2 * i + 2, Ordering::Release);
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
    reap(pid);
    ns
}

/// One-to-one rendezvous slot of [`commstime`]: a sequence word set odd by its writer (a
/// message, whose value is in `value`) and even by its reader (taken); each end counts its own
/// exchanges.
struct Slot<'a> {
    seq: &'a AtomicU32,
    value: &'a AtomicU32,
}

impl Slot<'_> {
    /// Waits until the slot holds `want`, yielding the CPU at each look: with more processes
    /// than cores the peer that sets the word often waits for this CPU (spinning first costs
    /// more here: 1.5 us per communication with 16 `pause`s per yield, 5 us with 256, 35 us
    /// with the 2048 of the other limit rows, against 1.3-1.5 us; measured on 2 vCPUs). A
    /// yield with nothing else to run returns at once.
    fn wait_for(&self, want: u32) {
        while self.seq.load(Ordering::Acquire) != want {
            std::thread::yield_now();
        }
    }

    /// The `k`-th write (from 0): offers `v` and returns once the reader took it.
    fn put(&self, k: u32, v: u32) {
        self.value.store(v, Ordering::Relaxed);
        self.seq.store(2 * k + 1, Ordering::Release);
        self.wait_for(2 * k + 2);
    }

    /// The `k`-th read (from 0).
    fn get(&self, k: u32) -> u32 {
        self.wait_for(2 * k + 1);
        let v = self.value.load(Ordering::Relaxed);
        self.seq.store(2 * k + 2, Ordering::Release);
        v
    }
}

/// Microseconds per communication of the least commstime can do: its four processes
/// (prefix, delta, successor, consumer; this process is the consumer) joined by four
/// rendezvous slots of two words each, on cache lines of their own, each wait a loop of looks
/// and yields ([`Slot::wait_for`]). Four processes on fewer cores hand the CPU over in most
/// communications; no channel whose processes wait for each other does much better than this
/// on the same machine.
pub fn commstime(n: u32) -> f64 {
    let shared = Shared::new();
    let slot = |i: usize| {
        // SAFETY: the page is 4096 bytes; slot `i` < 4 takes two words 256 bytes from the
        // next slot's (lines, and adjacent-line pairs, of their own), aligned, zeroed and live
        // until `shared` drops, after every child was reaped.
        unsafe {
            let seq = shared.0.add(64 * i);
            Slot {
                seq: &*seq,
                value: &*seq.add(1),
            }
        }
    };
    let (a, b, c, d) = (slot(0), slot(1), slot(2), slot(3));
    // Counts, for `n` timed communications of the consumer and one before: prefix writes `a`
    // n + 1 times, delta writes `c` n + 1 times and `b` n times, successor writes `d` n times.
    let prefix = fork_child(|| {
        a.put(0, 0);
        for k in 0..n {
            let x = d.get(k);
            a.put(k + 1, x);
        }
    });
    let delta = fork_child(|| {
        for k in 0..=n {
            let x = a.get(k);
            c.put(k, x);
            if k < n {
                b.put(k, x);
            }
        }
    });
    let successor = fork_child(|| {
        for k in 0..n {
            let x = b.get(k);
            d.put(k, x + 1);
        }
    });
    c.get(0);
    let start = Instant::now();
    let mut last = 0;
    for k in 1..=n {
        last = c.get(k);
    }
    // Four communications per value the consumer reads: a, b, c and d.
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n) / 4.0;
    assert_eq!(last, n, "the successor counted every value once");
    for pid in [prefix, delta, successor] {
        reap(pid);
    }
    us
}

/// The limit for messages of `size` bytes between two processes, in GB/s: the writer copies
/// each message into one of 8 shared buffers and the reader copies it out (the two copies a
/// message passes through in a buffered(8) channel), each buffer handed over by a spinning
/// flag of its own, so that writing and reading overlap.
pub fn handover(size: usize, total: usize) -> f64 {
    const K: usize = 8;
    let shared = Shared::with_len(4096 + K * size);
    let n = (total / size).max(4 * K);
    let base = shared.0 as usize;
    let data = shared.data() as usize;
    // Buffer i's flag, on a cache line of its own in the first page: the number of the last
    // message written there (odd: full) or read from there (even: empty), as 2 * (m / K) + 1 / + 2.
    let flag = move |i: usize| {
        // SAFETY: K flags of 64 bytes each fit in the first page of the mapping, which lives
        // until both processes are done.
        unsafe { &*((base + 64 * i) as *const AtomicU32) }
    };
    let buf = move |i: usize| (data + i * size) as *mut u8;
    let wait_for = |w: &AtomicU32, want: u32| {
        let mut spins = 0u32;
        while w.load(Ordering::Acquire) != want {
            spin(&mut spins);
        }
    };
    let pid = fork_child(|| {
        let mut out = vec![0u8; size];
        for m in 0..n {
            let (i, lap) = (m % K, (m / K) as u32);
            wait_for(flag(i), 2 * lap + 1);
            // SAFETY: the writer filled buffer i before it published this lap, and writes it
            // again only after we publish that we read it.
            let src = unsafe { std::slice::from_raw_parts(buf(i), size) };
            out.copy_from_slice(src);
            std::hint::black_box(&mut out);
            flag(i).store(2 * lap + 2, Ordering::Release);
        }
    });
    let src = vec![7u8; size];
    let start = Instant::now();
    for m in 0..n {
        let (i, lap) = (m % K, (m / K) as u32);
        if lap > 0 {
            wait_for(flag(i), 2 * lap);
        }
        // SAFETY: the reader is done with buffer i (it published so, or it was never used);
        // the mapping holds K buffers of `size` bytes after its first page.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf(i), size) };
        dst.copy_from_slice(std::hint::black_box(&src));
        flag(i).store(2 * lap + 1, Ordering::Release);
    }
    wait_for(flag((n - 1) % K), 2 * ((n - 1) / K) as u32 + 2);
    let secs = start.elapsed().as_secs_f64();
    reap(pid);
    (n * size) as f64 / secs / 1e9
}

/// memcpy bandwidth in GB/s for blocks of `size` bytes.
pub fn memcpy(size: usize, total: usize) -> f64 {
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    let n = (total / size).max(1);
    let start = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    (n * size) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Set in the environment of a copy of the bench binary that must exit at once (the
/// fork + exec row).
pub const EXIT_AT_ONCE: &str = "PYCSP_BENCH_EXIT_AT_ONCE";

/// Milliseconds per process to `fork` this process and reap the child with `waitpid`; the
/// child `_exit`s at once. The floor under starting and joining a process.
pub fn fork_wait(n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: the child calls only `_exit`, which is async-signal-safe, so forking this
        // multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waitpid writes the status of our child into `status`.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    start.elapsed().as_secs_f64() * 1e3 / n as f64
}

/// Milliseconds per process to start this binary again (`fork` + `exec` of
/// `/proc/self/exe`, which exits at the top of `main`) and wait for it: what executing a
/// child costs before any of pycsp's work.
pub fn fork_exec_wait(n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let st = std::process::Command::new("/proc/self/exe")
            .env(EXIT_AT_ONCE, "1")
            .env("PYCSP_START", "exec")
            .status()
            .expect("start the bench binary");
        assert!(st.success());
    }
    start.elapsed().as_secs_f64() * 1e3 / n as f64
}

/// Seconds for `procs` forked processes, with no communication, to count the primes below
/// `limit` in chunks of `chunk`, process `i` taking chunks `i`, `i + procs`, ...: the
/// machine's own parallel limit for the primes farm (the same work, split ahead of time).
pub fn primes_limit(procs: usize, limit: u64, chunk: u64) -> f64 {
    let start = Instant::now();
    let mut pids = Vec::new();
    for i in 0..procs as u64 {
        // SAFETY: the child only computes and calls `_exit`: no lock, no allocation.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut count = 0u64;
            let mut lo = i * chunk;
            while lo < limit {
                count += (lo..(lo + chunk).min(limit))
                    .filter(|&n| crate::pycsp_rows::is_prime(n))
                    .count() as u64;
                lo += procs as u64 * chunk;
            }
            // SAFETY: see above.
            unsafe { libc::_exit((count % 200) as i32) };
        }
        assert!(pid > 0, "fork failed");
        pids.push(pid);
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: waitpid writes the status of our child into `status`.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    start.elapsed().as_secs_f64()
}
