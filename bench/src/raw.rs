//! The physical limit: a raw shared-memory ping-pong between two processes, spinning and with
//! futex sleep/wake, and memcpy bandwidth in one process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// A shared anonymous mapping of one cache line, visible to a forked child.
struct Shared(*mut AtomicU32);

impl Shared {
    fn new() -> Shared {
        // SAFETY: an anonymous shared mapping of one page; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap failed");
        Shared(p.cast())
    }
    fn word(&self) -> &AtomicU32 {
        // SAFETY: the mapping is page-aligned, zeroed and lives until `drop`.
        unsafe { &*self.0 }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`; no reference outlives `self`.
        unsafe { libc::munmap(self.0.cast(), 4096) };
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

/// Round-trip time in ns of a ping-pong on one shared word; `sleep` uses futex wait/wake.
pub fn ping_pong(iters: u32, sleep: bool) -> f64 {
    let shared = Shared::new();
    let w = shared.word();
    let wait_for = |w: &AtomicU32, want: u32| loop {
        let v = w.load(Ordering::Acquire);
        if v == want {
            return;
        }
        if sleep {
            futex(w, libc::FUTEX_WAIT, v);
        } else {
            std::hint::spin_loop();
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
