//! An idle network is idle: a remote select that offers a message nobody reads, or a remote
//! write with a deadline, costs the process that hosts the channel next to no CPU while it
//! waits (the host once wrote the offer in steps of 1 ms, each spinning before it slept: a few
//! % of a CPU per waiting select). Alone in its test binary, so that the process's CPU time is
//! this test's.

use std::time::{Duration, Instant};

use pycsp::prelude::*;

mod common;

/// CPU time (user + system) of this whole process.
fn process_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Offers `v` on `out` in a select with a timeout of `ms`: whether the output guard fired.
#[process]
fn offer_for(out: ChannelOut<u64>, v: u64, ms: u64) -> Result<bool, ChannelError> {
    let sent = Alternation::new()
        .output(&out, v, || true)
        .timeout(Duration::from_millis(ms), || false)
        .pri_select()?;
    Ok(sent.value)
}

/// Writes `v` on `out` with a deadline of `ms`: whether it was taken.
#[process]
fn write_for(out: ChannelOut<u64>, v: u64, ms: u64) -> Result<bool, ChannelError> {
    match out.write_timeout(v, Duration::from_millis(ms)) {
        Ok(()) => Ok(true),
        Err(WriteTimeoutError::Timeout(_)) => Ok(false),
        Err(e) => panic!("{e:?}"),
    }
}

/// The CPU the threads of this process other than the caller used (and in what time) in the second half of a wait of `ms` of a
/// placed process, which offers in a select (`select`) or writes with a deadline, on a
/// rendezvous channel hosted here that nobody reads; and what that process returned.
fn host_cpu_while_waiting(
    select: bool,
    ms: u64,
) -> (Duration, Duration, Result<bool, ChannelError>) {
    let port = common::free_port();
    let c = Channel::<u64>::named(&format!("tcp://127.0.0.1:{port}/unread")).unwrap();
    let r = c.reader(); // attached, never reading
    let started = Instant::now();
    let p = if select {
        offer_for(c.writer(), 7, ms)
    } else {
        write_for(c.writer(), 7, ms)
    };
    let h = Spawn(p.on(Placement::launcher("{cmd}"))).unwrap();
    // The first half covers the placed process's start and its first offer.
    std::thread::sleep(Duration::from_millis(ms / 2));
    // The joining thread's own CPU (it scans for deadlocks now and then) is not the host's.
    let (cpu, joining, wall) = (process_cpu(), common::cpu_time(), Instant::now());
    let sent = h.join().unwrap();
    let joining = common::cpu_time() - joining;
    let (cpu, wall) = (process_cpu() - cpu - joining, wall.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(ms));
    drop((r, c));
    (cpu, wall, sent)
}

#[test]
fn a_remote_select_offering_to_nobody_and_a_remote_timed_write_cost_their_host_no_cpu() {
    let ms = 2000;
    let (cpu, wall, sent) = host_cpu_while_waiting(true, ms);
    eprintln!("a remote select's offer: the host used {cpu:?} of CPU in {wall:?}");
    assert_eq!(
        sent,
        Ok(false),
        "nobody read, so the select's timeout fired"
    );
    assert!(
        cpu < wall / 50,
        "the host of a channel used {cpu:?} of CPU in {wall:?} while a remote select offered \
         on it"
    );
    let (cpu, wall, sent) = host_cpu_while_waiting(false, ms);
    eprintln!("a remote timed write: the host used {cpu:?} of CPU in {wall:?}");
    assert_eq!(sent, Ok(false), "nobody read, so the write timed out");
    assert!(
        cpu < wall / 50,
        "the host of a channel used {cpu:?} of CPU in {wall:?} while a remote write with a \
         deadline waited on it"
    );
}
