//! Helpers shared by the multi-process tests (each test binary uses some of them).
#![allow(dead_code)]

use std::time::Duration;

/// CPU time (user + system) this thread has used.
pub fn cpu_time() -> Duration {
    rusage_cpu(libc::RUSAGE_THREAD)
}

/// CPU time (user + system) of this whole process, all its threads.
pub fn process_cpu_time() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// How many read system calls this process made so far (`syscr` of `/proc/self/io`): reads
/// of files, `/proc` and pipes; receives from sockets (`recvfrom`) are not among them.
#[allow(dead_code)]
pub fn read_syscalls() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("syscr:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("syscr in /proc/self/io")
}

fn rusage_cpu(who: i32) -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        libc::getrusage(who, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Held by tests that measure time and by tests that load every core, so that within one
/// test binary the former never run while the latter saturate the machine.
pub static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`TIMING`], also after a test that held it failed.
pub fn timing() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TCP port that is free now on every address of this host, for another process to bind
/// that must be told its port in advance (a daemon's configuration file). A channel the
/// test's own process hosts binds port 0 instead and learns its port with [`port_of`], and a
/// host program a test starts is given port 0 and says which port it got: a port checked free
/// here can still be taken by another socket before it is bound.
///
/// It is chosen outside the kernel's ephemeral range (32768-60999 here): a port that `bind(0)`
/// handed out and then freed can be taken again at once by any connecting or listening socket
/// of a test running beside this one (a placed process's call-back listener binds port 0), so
/// such ports race.
///
/// The ports are drawn in turn from one counter that every test process of this machine shares
/// (a file in the temporary directory, read and advanced under `flock`): two test binaries, a
/// process an earlier test left running, or two runs of the suite side by side do not draw the
/// same port before 12 000 other draws, so a port checked free here is not also handed to
/// another test that binds it before this one does (a pid-seeded pick did, once in CI:
/// "Address already in use" between this check and the test's own bind).
pub fn free_port() -> u16 {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let path = std::env::temp_dir().join("pycsp-test-ports");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    // SAFETY: flock on a descriptor this function owns; the lock goes with the descriptor
    // when `f` is dropped.
    let locked = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        locked,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let mut text = String::new();
    f.read_to_string(&mut text).expect("the port counter reads");
    let mut n: u32 = text
        .trim()
        .parse()
        .unwrap_or_else(|_| std::process::id().wrapping_mul(2_654_435_761) % COUNT);
    let port = loop {
        let port = (FIRST + n % COUNT) as u16;
        n = (n + 1) % COUNT;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            break port;
        }
    };
    f.rewind().expect("the port counter rewinds");
    f.set_len(0).expect("the port counter truncates");
    write!(f, "{n}").expect("the port counter writes");
    port
}

/// The port of a socket channel's name, `tcp://HOST:PORT/CHANNEL`. A test's own channels
/// bind port 0 (`tcp://127.0.0.1:0/a`) and learn the port the system picked from the first
/// one's name, for the others to join it and for clients to connect to: no other socket can
/// take the port between a check that it is free and the bind, as with [`free_port`].
pub fn port_of(name: &str) -> u16 {
    name.strip_prefix("tcp://")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(at, _)| at.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("not a tcp://HOST:PORT/CHANNEL name: {name}"))
}

/// A channel name no other test of this binary uses (tests run as threads of one network).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Reads a job from `jobs`, a reading end of a buffered channel hosted in another process,
/// and says which on `took` once the end holds the next message it asked for ahead (its
/// host keeps that message taken until this end acknowledges it or gives it back).
///
/// The end asks for the next message on its own connection thread after the user took one:
/// without this wait, a reader of the host's process told on `took` can drain the channel
/// before that request arrives, and nothing is held.
pub fn take_one_holding_the_next(
    jobs: &pycsp::ChannelIn<u64>,
    took: &pycsp::ChannelOut<u64>,
) -> Result<(), pycsp::ChannelError> {
    let job = jobs.read()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The proxy's length is this process's side of the connection: the messages that came
    // ahead of the user's reads. Nothing wakes a waiter for it, so it is looked at each
    // millisecond, within a deadline.
    while jobs.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(pycsp::ChannelError::Timeout);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    took.write(job)
}

/// Takes a job holding the next ([`take_one_holding_the_next`]) and waits for `gate` before
/// it reads that next one, which it returns.
#[pycsp::process]
pub fn take_one_then_wait(
    jobs: pycsp::ChannelIn<u64>,
    took: pycsp::ChannelOut<u64>,
    gate: pycsp::ChannelIn<()>,
) -> Result<u64, pycsp::ChannelError> {
    take_one_holding_the_next(&jobs, &took)?;
    gate.read()?;
    jobs.read()
}
