//! The operating-system calls pycsp needs, fenced in one module.
//!
//! Everything `unsafe` that talks to the kernel lives here: anonymous shared memory
//! (`memfd_create`), futex wait and wake on a word of shared memory, and the file-descriptor
//! flags a re-executed child needs to inherit its shared memory and control socket. The rest of
//! the crate is safe code on top of these functions.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Creates an anonymous shared-memory file of `len` bytes.
///
/// The file has no name in any file system: it lives as long as some process holds a
/// descriptor or a mapping of it, so a crashed or killed network leaves nothing in `/dev/shm`.
/// The pages are allocated lazily, when first touched.
pub(crate) fn memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::other("memfd name has a NUL byte"))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; the flags are
    // valid for memfd_create.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::other("shared memory too large"))?;
    // SAFETY: ftruncate on a descriptor we own; no memory is touched.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Gives the pages of `[offset, offset + len)` of a shared-memory file back to the kernel.
///
/// Later reads of that range see zeros. Used when a large message block is freed.
pub(crate) fn punch_hole(fd: RawFd, offset: u64, len: u64) {
    // SAFETY: fallocate only changes the file's allocation; the range is inside the file and
    // nobody reads the block while it is free. Failure is harmless (the pages stay allocated).
    unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        );
    }
}

/// Sleeps while `*word == expected`, at most `timeout` if one is given.
///
/// Returns when woken, when the word no longer holds `expected`, on a signal, or on timeout;
/// callers always re-check their condition. The word may be shared between processes.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT (not
    // PRIVATE) works on shared mappings; `ts_ptr` is null or points to a live timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `n` processes sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not dereference other arguments.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

/// Clears close-on-exec on `fd` so that a program started with `exec` inherits it.
///
/// Only call this in a child between `fork` and `exec` (from `pre_exec`): fcntl is
/// async-signal-safe and the change affects the child's descriptor table only.
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD with 0 only changes a descriptor flag; an invalid fd yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of an inherited descriptor whose number came from the parent.
pub(crate) fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it tells whether `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // Set close-on-exec again so that programs this process starts do not inherit it.
    // SAFETY: as above, only a descriptor flag changes.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the parent passed this descriptor to us alone; nothing else in this process
    // owns it, so wrapping it in an OwnedFd is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes writes to a closed pipe or socket return `EPIPE` instead of killing the process, as
/// the Rust runtime does before `main` (a child's process body runs before `main`).
pub(crate) fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_IGN is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Immediately ends this process with `code`, running no destructors and no atexit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is safe to call from any thread.
    unsafe { libc::_exit(code) }
}

/// Whether a process with this pid exists (it may be a zombie).
#[allow(dead_code)]
pub(crate) fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The kernel's `struct futex_waitv` (Linux 5.16+).
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

const FUTEX_32: u32 = 2;
const SYS_FUTEX_WAITV: libc::c_long = 449;

/// Sleeps until any `words[i]` no longer holds `expected[i]` or is woken, or `timeout` passes.
///
/// One process waiting on several channels (alternation) sleeps here on all their futex
/// words at once. At most 128 words. Callers always re-check their condition afterwards.
pub(crate) fn futex_waitv(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) {
    debug_assert!(!words.is_empty() && words.len() <= 128);
    if words.len() == 1 {
        return futex_wait(words[0].0, words[0].1, timeout);
    }
    let waiters: Vec<FutexWaitv> = words
        .iter()
        .map(|(w, v)| FutexWaitv {
            val: u64::from(*v),
            uaddr: w.as_ptr() as u64,
            flags: FUTEX_32,
            reserved: 0,
        })
        .collect();
    // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
    let deadline = timeout.map(|d| {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let total = Duration::new(now.tv_sec as u64, now.tv_nsec as u32).saturating_add(d);
        libc::timespec {
            tv_sec: total.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: total.subsec_nanos() as libc::c_long,
        }
    });
    let ts_ptr = deadline
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `waiters` is a live array of `len` futex_waitv structs whose addresses point to
    // valid u32 words; `ts_ptr` is null or points to a live timespec; flags is 0.
    let r = unsafe {
        libc::syscall(
            SYS_FUTEX_WAITV,
            waiters.as_ptr(),
            waiters.len() as libc::c_uint,
            0u32,
            ts_ptr,
            libc::CLOCK_MONOTONIC,
        )
    };
    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // Kernels before 5.16: sleep on the first word only, briefly, and let the caller
        // re-check (correct, only slower to notice the other channels).
        futex_wait(
            words[0].0,
            words[0].1,
            Some(
                timeout
                    .unwrap_or(Duration::from_millis(1))
                    .min(Duration::from_millis(1)),
            ),
        );
    }
}

/// Fills `buf` with random bytes from the kernel (for nonces and generated keys).
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let r = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += r as usize;
    }
    Ok(())
}

/// Whether the peer of socket `fd` hung up or the socket has an error (a non-blocking check).
pub(crate) fn socket_hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Bytes that arrived on socket `fd` and were not read yet (`FIONREAD`, which is `SIOCINQ`
/// for TCP and for Unix stream sockets); 0 if it cannot tell.
pub(crate) fn unread_bytes(fd: RawFd) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points to `n`.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if r == 0 {
        n.max(0) as u64
    } else {
        0
    }
}

/// Waits up to `timeout` until socket `fd` has bytes to read or hung up; returns whether it
/// has. `poll` counts whole milliseconds: a timeout that is not one is rounded up (rounded
/// down, a wait of less than 1 ms returned at once, and a loop waiting until a deadline spun
/// through its last millisecond).
pub(crate) fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents != 0
}

/// Waits until socket `fd` takes more bytes (or failed: the next write says how), at most
/// `timeout` (rounded up to whole milliseconds, as [`wait_readable`]): whether it does.
pub(crate) fn wait_writable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents != 0
}

/// Copies up to `buf.len()` bytes that socket `fd` has to read into `buf` without taking them
/// and without waiting: how many (`Some(0)`: the end of the stream, or an error, which the
/// next read reports), or `None` when nothing is there yet.
pub(crate) fn peek(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writing; MSG_PEEK leaves the bytes in
    // the socket, MSG_DONTWAIT makes the call return at once.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match usize::try_from(n) {
        Ok(n) => Some(n),
        Err(_) => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => None,
            _ => Some(0),
        },
    }
}

/// Waits, with no deadline, until one of `fds` has bytes to read or hung up: the index of the
/// first that has (`None` if `poll` fails). The caller makes sure one of them becomes
/// readable: one is a socket whose peer speaks next, or a pair whose other end the caller
/// closes when it no longer needs the wait.
pub(crate) fn wait_any_readable(fds: &[RawFd]) -> Option<usize> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `polls` holds `polls.len()` valid pollfds.
        let r = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
        if r > 0 {
            return polls.iter().position(|p| p.revents != 0);
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// A descriptor that refers to a process (`pidfd_open`): it becomes readable when the process
/// exits, and keeps referring to that process even after it was reaped.
pub(crate) struct Pidfd(OwnedFd);

impl Pidfd {
    /// A pidfd of `pid`, which must be a child of this process not yet reaped (so that the pid
    /// is still ours).
    pub(crate) fn open(pid: u32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just returned to us and is owned by nothing else.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Waits up to `timeout` for the process to exit; whether it did.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> bool {
        wait_readable(self.0.as_raw_fd(), timeout)
    }
}

/// Waits up to `timeout` for the child process `pid` (not yet reaped, so the pid is still
/// ours) to exit; whether it did.
pub(crate) fn wait_child_exit(pid: u32, timeout: Duration) -> bool {
    Pidfd::open(pid).is_ok_and(|p| p.wait_exit(timeout))
}

/// Shuts a socket down both ways, from any thread: its owner's blocked read returns at once.
/// The caller must know that `fd` is still open and is the socket it means (its owner has not
/// closed it yet).
pub(crate) fn shutdown_socket(fd: RawFd) {
    // SAFETY: shutdown only changes the state of the socket `fd`, which the caller guarantees
    // is open; on any other descriptor it fails with ENOTSOCK and changes nothing.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Whether `e` says this process or the system ran out of descriptors or memory for a new
/// connection (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): `accept` fails so until one is freed.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Reads from descriptor `fd` into `buf` with one `read` call, without buffering (what is not
/// asked for stays in the descriptor for whoever reads it next).
pub(crate) fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `buf`, which is valid for writes; an invalid
        // descriptor yields EBADF.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Waits until the child process `pid` has exited, without reaping it (`waitid` with
/// `WNOWAIT`): its pid stays ours until it is reaped. Returns at once if it already exited,
/// or if it is not our child.
pub(crate) fn wait_exited_unreaped(pid: u32) {
    loop {
        // SAFETY: waitid fills the siginfo it is given; WNOWAIT leaves the child waitable.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Sends SIGKILL to `pid`. The caller must know that `pid` is its child, not yet reaped.
pub(crate) fn kill_child(pid: u32) {
    // SAFETY: kill only sends a signal; the caller guarantees the pid is its unreaped child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`sysconf(_SC_CLK_TCK)`; 100 on
/// Linux).
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process of the host, so that the
/// timestamps of a message trace written by several processes line up.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call fills; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// The kernel's id of the calling thread (equal to the pid on a process's main thread).
pub(crate) fn thread_id() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// A connected pair of Unix `SOCK_SEQPACKET` sockets (message boundaries kept, close-on-exec).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array it is given.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The most descriptors one [`send_with_fds`] message carries.
pub(crate) const MAX_PASSED_FDS: usize = 8;

/// Sends `data` as one message on the seqpacket socket `sock`, with copies of `fds`
/// (`SCM_RIGHTS`).
pub(crate) fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if sendmsg_with_fds(sock, data, fds)? == data.len() {
        Ok(())
    } else {
        Err(io::Error::other("a message was sent in part"))
    }
}

/// One `sendmsg` of `data` on `sock` with copies of `fds` (retried if interrupted before it
/// sent anything): how many bytes it sent.
fn sendmsg_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    assert!(fds.len() <= MAX_PASSED_FDS);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = [0u64; 8]; // room for CMSG_SPACE(8 * 4), 8-byte aligned
                              // SAFETY: msghdr is plain data; an all-zero one is valid and is filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes; the control buffer holds
        // CMSG_SPACE(8 * 4) = 48 bytes, at least what one header and `fds` need; CMSG_FIRSTHDR
        // of a msghdr whose control buffer is that large points at its start.
        unsafe {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(bytes as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` and `cbuf`, which outlive the call.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends all of `data` on the stream socket `sock`, with copies of `fds` (`SCM_RIGHTS`)
/// attached to its first byte: what one `sendmsg` did not take (it was interrupted) is written
/// after it.
pub(crate) fn send_all_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let first = sendmsg_with_fds(sock, data, fds)?;
    let mut rest = &data[first.min(data.len())..];
    while !rest.is_empty() {
        // SAFETY: the pointer and length describe `rest`, which is valid for reads.
        let r = unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if r > 0 {
            rest = &rest[r as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        if r == 0 || e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Receives one message from the seqpacket socket `sock` into `buf`, with the descriptors it
/// carries (close-on-exec). `Ok((0, []))` means the peer closed the connection; a message
/// larger than `buf` is an error.
pub(crate) fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; an all-zero one is valid and is filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `cbuf`, which outlive the call.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR/NXTHDR walk it within
    // `msg_controllen`; each SCM_RIGHTS payload holds descriptors now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::other("a message larger than the buffer"));
    }
    Ok((n, fds))
}

/// Whether this process runs one thread only (the entries of `/proc/self/task`).
pub(crate) fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// `fork()`: `Some(pid)` in the parent, `None` in the child.
///
/// # Safety
/// The calling process must run one thread only: the child is a copy of this one thread, and
/// any lock another thread held would stay locked in it forever.
pub(crate) unsafe fn fork() -> io::Result<Option<u32>> {
    // SAFETY: the caller guarantees that this process is single-threaded.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Forks this process into a **sibling**: `clone(CLONE_PARENT | SIGCHLD)`, so that the new
/// process is a child of this process's parent, which waits for it and is sent its SIGCHLD.
/// `Some(pid)` in the caller, `None` in the new process.
///
/// # Safety
/// As [`fork`]: the calling process must run one thread only. The call bypasses the C
/// library's `fork` (which has no such flag), so its atfork handlers do not run and its
/// cached thread id in the new process is the caller's: the new process must not rely on
/// either (glibc's `raise` and `abort` ask the kernel for the thread id; Rust's locks do not
/// use it).
pub(crate) unsafe fn fork_sibling() -> io::Result<Option<u32>> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone with a null stack behaves as fork (the new process gets a copy of the
    // stack); the caller guarantees that this process is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Waits for the child `pid` to end and reaps it (with `nohang`, only if it has ended):
/// its raw wait status.
pub(crate) fn reap(pid: u32, nohang: bool) -> io::Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into the int it is given.
        let r = unsafe {
            libc::waitpid(
                pid as libc::pid_t,
                &mut status,
                if nohang { libc::WNOHANG } else { 0 },
            )
        };
        match r {
            0 => return Ok(None),
            r if r > 0 => return Ok(Some(status)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Makes `from` this process's descriptor `to` (`dup2`); `from` stays open.
pub(crate) fn dup_onto(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only changes this process's descriptor table.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the directory open as `dir` the working directory (`fchdir`).
pub(crate) fn change_dir(dir: RawFd) -> io::Result<()> {
    // SAFETY: fchdir takes a descriptor and changes only the working directory.
    if unsafe { libc::fchdir(dir) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for `SIGKILL` when the parent of this process ends.
pub(crate) fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
}

/// Names this thread `name` (what `ps` shows for a single-threaded process; at most 15 bytes
/// are kept).
pub(crate) fn set_thread_name(name: &std::ffi::CStr) {
    // SAFETY: prctl with PR_SET_NAME reads a NUL-terminated string (it keeps at most 16 bytes
    // with the NUL) and changes only this thread's name.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}
