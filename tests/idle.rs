//! An idle network is idle: processes that wait cost next to no CPU, however many they are
//! and whether they wait on shared memory or on sockets. Alone in its test binary, so that
//! the process's CPU time is these tests'; they run one after the other.
//!
//! A remote select that offers a message nobody reads, or a remote write with a deadline,
//! costs the process that hosts the channel, and its own, next to no CPU while it waits (the
//! host once wrote the offer in steps of 1 ms, each spinning before it slept: a few % of a
//! CPU per waiting select; the remote end looked every ms whether the select gave up).

use std::time::{Duration, Instant};

use pycsp::prelude::*;

mod common;
use common::process_cpu_time as process_cpu;

/// Offers `v` on `out` in a select with a timeout of `ms`: whether the output guard fired,
/// and the CPU this process used meanwhile.
#[process]
fn offer_for(out: ChannelOut<u64>, v: u64, ms: u64) -> Result<(bool, Duration), ChannelError> {
    let cpu = process_cpu();
    let sent = Alternation::new()
        .output(&out, v, || true)
        .timeout(Duration::from_millis(ms), || false)
        .pri_select()?;
    Ok((sent.value, process_cpu() - cpu))
}

/// Writes `v` on `out` with a deadline of `ms`: whether it was taken, and the CPU this
/// process used meanwhile.
#[process]
fn write_for(out: ChannelOut<u64>, v: u64, ms: u64) -> Result<(bool, Duration), ChannelError> {
    let cpu = process_cpu();
    let sent = match out.write_timeout(v, Duration::from_millis(ms)) {
        Ok(()) => true,
        Err(WriteTimeoutError::Timeout(_)) => false,
        Err(e) => panic!("{e:?}"),
    };
    Ok((sent, process_cpu() - cpu))
}

/// Writes `v` on `out`, which a reader takes after 2 s: the CPU this process used meanwhile.
#[process]
fn write_plain(out: ChannelOut<u64>, v: u64) -> Result<(bool, Duration), ChannelError> {
    let cpu = process_cpu();
    out.write(v)?;
    Ok((true, process_cpu() - cpu))
}

/// The CPU the threads of this process other than the caller used (and in what time) in the
/// second half of a wait of `ms` of a placed process, which offers in a select (`select`) or
/// writes with a deadline, on a rendezvous channel hosted here that nobody reads; and what
/// that process returned.
fn host_cpu_while_waiting(
    select: bool,
    ms: u64,
) -> (Duration, Duration, Result<(bool, Duration), ChannelError>) {
    let c = Channel::<u64>::named("tcp://127.0.0.1:0/unread").unwrap();
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

/// Checks what a wait of 2 s of a placed select (`select`) or timed write costs the host and
/// the placed process, which says `what` it does.
fn costs_no_cpu(select: bool, what: &str) {
    let _alone = common::timing();
    let ms = 2000;
    let (cpu, wall, waited) = host_cpu_while_waiting(select, ms);
    let (sent, placed_cpu) = waited.unwrap();
    eprintln!(
        "{what}: the host used {cpu:?} of CPU in {wall:?}, the placed process {placed_cpu:?} \
         in {ms} ms"
    );
    assert!(!sent, "nobody read, so {what} timed out");
    assert!(
        cpu < wall / 50,
        "the host of a channel used {cpu:?} of CPU in {wall:?} while {what} waited on it"
    );
    // The placed process: its pump and the waiting user (once the pump looked for the
    // select's or the writer's give-up every ms: 22 ms of CPU in 2 s, release build).
    let ms = Duration::from_millis(ms);
    assert!(
        placed_cpu < ms / 200,
        "{what} used {placed_cpu:?} of CPU in {ms:?} of waiting"
    );
}

#[test]
fn a_remote_rendezvous_write_waiting_for_a_reader_costs_no_cpu_while_it_waits() {
    let _alone = common::timing();
    let c = Channel::<u64>::named("tcp://127.0.0.1:0/later").unwrap();
    let r = c.reader();
    let h = Spawn(write_plain(c.writer(), 7).on(Placement::launcher("{cmd}"))).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(r.read(), Ok(7));
    let (sent, cpu) = h.join().unwrap().unwrap();
    assert!(sent);
    eprintln!("a remote rendezvous write waiting 2 s for a reader used {cpu:?} of CPU");
    // What is left is mostly the deadlock census's scans while a thread is parked with no
    // deadline, sparser the longer nothing moves (the writer looked every ms whether the
    // host's reader came: 387 ms of CPU in 2 s, debug build; 130-150 ms, release; the census
    // then rescanned every 40 ms: 28-34 ms; now about 14 ms).
    assert!(
        cpu < Duration::from_secs(2) / 80,
        "a remote rendezvous write used {cpu:?} of CPU in 2 s of waiting for a reader"
    );
}

/// Reads from `inp`, which a writer writes to after 2 s: what it read and the CPU this
/// process used meanwhile.
#[process]
fn read_plain(inp: ChannelIn<u64>) -> Result<(u64, Duration), ChannelError> {
    let cpu = process_cpu();
    let v = inp.read()?;
    Ok((v, process_cpu() - cpu))
}

#[test]
fn a_remote_read_waiting_for_a_writer_costs_no_cpu_while_it_waits() {
    let _alone = common::timing();
    let c = Channel::<u64>::named("tcp://127.0.0.1:0/sooner").unwrap();
    let w = c.writer();
    let h = Spawn(read_plain(c.reader()).on(Placement::launcher("{cmd}"))).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    w.write(7).unwrap();
    let (v, cpu) = h.join().unwrap().unwrap();
    assert_eq!(v, 7);
    eprintln!("a remote read waiting 2 s for a writer used {cpu:?} of CPU");
    // As for a write (above).
    assert!(
        cpu < Duration::from_secs(2) / 80,
        "a remote read used {cpu:?} of CPU in 2 s of waiting for a writer"
    );
}

/// Reads `n` messages from `inp` (its thread on the connection itself, see
/// `net/direct.rs`), then waits for `gate`, then reads one more: the CPU this process used
/// while it waited for the gate (its reading end's pump watching for a message nobody reads)
/// and while it waited for that last message.
#[process]
fn read_then_wait(
    inp: ChannelIn<u64>,
    gate: ChannelIn<()>,
    n: u64,
) -> Result<(Duration, Duration), ChannelError> {
    for _ in 0..n {
        inp.read()?;
    }
    let cpu = process_cpu();
    gate.read()?;
    let gated = process_cpu() - cpu;
    let cpu = process_cpu();
    inp.read()?;
    Ok((gated, process_cpu() - cpu))
}

#[test]
fn a_remote_reader_that_read_on_its_connection_costs_no_cpu_while_it_waits() {
    let _alone = common::timing();
    let c = Channel::<u64>::named("tcp://127.0.0.1:0/direct").unwrap();
    let gate = Channel::<()>::named("tcp://127.0.0.1:0/gate").unwrap();
    let (w, g) = (c.writer(), gate.writer());
    let h = Spawn(read_then_wait(c.reader(), gate.reader(), 20).on(Placement::launcher("{cmd}")))
        .unwrap();
    for i in 0..20 {
        w.write(i).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    g.write(()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    w.write(20).unwrap();
    let (gated, read) = h.join().unwrap().unwrap();
    eprintln!(
        "a remote reader that read on its connection used {gated:?} of CPU in 2 s of waiting \
         elsewhere, {read:?} in 2 s of waiting for its next message"
    );
    // As for a write (above). The pump looked every 2 ms whether a message waited for a
    // user that did not come, while that user read on the connection; it waits on the
    // connection itself once a look found the user idle.
    for (cpu, what) in [
        (gated, "waiting elsewhere"),
        (read, "waiting for a message"),
    ] {
        assert!(
            cpu < Duration::from_secs(2) / 80,
            "a remote reader used {cpu:?} of CPU in 2 s of {what}"
        );
    }
}

#[test]
fn a_remote_select_offering_to_nobody_costs_no_cpu_while_it_waits() {
    costs_no_cpu(true, "a remote select's offer");
}

#[test]
fn a_remote_timed_write_that_nobody_takes_costs_no_cpu_while_it_waits() {
    costs_no_cpu(false, "a remote write with a deadline");
}

/// Reads one message from `inp`: the CPU this process used while it waited.
#[process]
fn wait_for_one(inp: ChannelIn<u64>) -> Result<Duration, ChannelError> {
    let cpu = process_cpu();
    inp.read()?;
    Ok(process_cpu() - cpu)
}

/// Sixty processes that wait 2 s for a message, in a network that is not deadlocked (this
/// thread, which holds every writer, sleeps), cost little CPU altogether: each sleeps in the
/// kernel and wakes each 40 ms slice to look at the census, and the census is scanned again
/// once per period by one of them (once each parked thread rescanned on its own: n scans of
/// n processes per period).
#[test]
fn sixty_processes_waiting_for_a_message_cost_little_cpu_altogether() {
    let _alone = common::timing();
    let n = 60;
    let chans: Vec<Channel<u64>> = (0..n).map(|_| Channel::new().unwrap()).collect();
    let h = Spawn(replicate(n, |i| wait_for_one(chans[i].reader()))).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for c in &chans {
        c.writer().write(1).unwrap();
    }
    let waits: Vec<Duration> = h.join().unwrap().into_iter().map(|w| w.unwrap()).collect();
    let total: Duration = waits.iter().sum();
    eprintln!("{n} processes waiting 2 s: {total:?} of CPU altogether");
    assert!(
        total < Duration::from_secs(2) / 10,
        "{n} waiting processes used {total:?} of CPU in 2 s altogether"
    );
}

/// Echoes `n` messages from `inp` to `out`: how many read system calls this process made
/// meanwhile (see `common::read_syscalls`: a look for deadlocks reads `/proc/<pid>/stat` of
/// every process of the network; the messages come over sockets, not counted).
#[process]
fn echo_counting_reads(
    inp: ChannelIn<u64>,
    out: ChannelOut<u64>,
    n: u64,
) -> Result<u64, ChannelError> {
    let before = common::read_syscalls();
    for _ in 0..n {
        out.write(inp.read()?)?;
    }
    Ok(common::read_syscalls() - before)
}

/// A network looks for a deadlock only once it stood still for a slice (40 ms). A thread
/// woken by a change that did not make its operation ready looked at once (a remote
/// rendezvous writer is woken so when its pump marks its slot held): every few messages of a
/// busy exchange, 8 reads of `/proc` and a scan of the network.
#[test]
fn a_busy_remote_exchange_does_not_look_for_deadlocks() {
    let _t = common::timing();
    const N: u64 = 20_000;
    let a = Channel::<u64>::named("tcp://127.0.0.1:0/ping").unwrap();
    let b = Channel::<u64>::named("tcp://127.0.0.1:0/pong").unwrap();
    let (w, r) = (a.writer(), b.reader());
    let echo = echo_counting_reads(a.reader(), b.writer(), N);
    let h = Spawn(echo.on(Placement::launcher("{cmd}"))).unwrap();
    for i in 0..N {
        w.write(i).unwrap();
        assert_eq!(r.read(), Ok(i));
    }
    let reads = h.join().unwrap().unwrap();
    assert!(
        reads < 100,
        "{reads} read system calls in {N} round trips: the echo looked for deadlocks while \
         messages flowed"
    );
}
