//! Deadlock detection across processes: a network whose every process waits for another
//! fails with `Error::Deadlock` naming who waits on what; a network that can progress never
//! does.
//!
//! This test has its own `main` (`harness = false`): each case runs in a fresh run of this
//! binary, on its main thread and nothing else, as a program's `main` runs a network. (A
//! process with a thread that is not in a pycsp operation, such as libtest's main thread
//! waiting for its test threads, is never blocked as a whole, so no deadlock is declared in
//! it: see the book's "Seeing your network".) The outer run starts each case with a deadline
//! and kills it when the deadline passes, so no case can hang the suite.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pycsp::prelude::*;
use pycsp::Error;

// ---------------------------------------------------------------------------------------
// The parent that keeps a writer.

#[process]
fn consumer(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let mut sum = 0;
    loop {
        match inp.read() {
            Ok(v) => sum += v,
            Err(ChannelError::Retired) => return Ok(sum),
            Err(e) => return Err(e),
        }
    }
}

/// [`consumer`], which reads with a deadline (30 ms) until one passes, then without.
#[process]
fn consumer_after_a_look(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let mut sum = 0;
    loop {
        match inp.read_timeout(std::time::Duration::from_millis(30)) {
            Ok(v) => sum += v,
            Err(ChannelError::Timeout) => break,
            Err(ChannelError::Retired) => return Ok(sum),
            Err(e) => return Err(e),
        }
    }
    loop {
        match inp.read() {
            Ok(v) => sum += v,
            Err(ChannelError::Retired) => return Ok(sum),
            Err(e) => return Err(e),
        }
    }
}

#[process]
fn producer(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    Ok(())
}

// ANCHOR: keeps_writer
fn parent_keeps_a_writer() -> Result<String, Error> {
    let ch = Channel::<u64>::named("numbers")?;
    let kept = ch.writer(); // the mistake: never written to, never dropped
    let r = Parallel((producer(ch.writer(), 10), consumer(ch.reader())));
    drop(kept);
    r.map(|(_, sum)| format!("{sum:?}"))
}
// ANCHOR_END: keeps_writer

/// The same mistake with the consumer run by `Sequence`: the root waits in its join.
fn sequence_keeps_a_writer() -> Result<String, Error> {
    let ch = Channel::<u64>::named("numbers")?;
    let kept = ch.writer();
    let r = Sequence(consumer(ch.reader()));
    drop(kept);
    r.map(|sum| format!("{sum:?}"))
}

// ---------------------------------------------------------------------------------------
// A ring of rendezvous channels without a token: everyone reads first.

#[process]
fn ring_member(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    let v = inp.read()?;
    out.write(v + 1)
}

fn ring_without_token() -> Result<String, Error> {
    let chans: Vec<Channel<u64>> = (0..3)
        .map(|i| Channel::named(&format!("ring{i}")))
        .collect::<Result<_, _>>()?;
    let members: Vec<_> = (0..3)
        .map(|i| ring_member(chans[i].reader(), chans[(i + 1) % 3].writer()))
        .collect();
    drop(chans);
    Parallel(members).map(|_| "ring ended".into())
}

// ---------------------------------------------------------------------------------------
// Five philosophers without a butler: each takes the left fork, then the right one.

const N: usize = 5;

#[process]
fn fork(
    left_up: ChannelIn<()>,
    left_down: ChannelIn<()>,
    right_up: ChannelIn<()>,
    right_down: ChannelIn<()>,
) -> Result<(), ChannelError> {
    loop {
        let taken = Alternation::new()
            .input(&left_up, |()| 0)
            .input(&right_up, |()| 1)
            .fair_select()?;
        if taken.value == 0 {
            left_down.read()?;
        } else {
            right_down.read()?;
        }
    }
}

#[process]
fn philosopher(
    left_up: ChannelOut<()>,
    left_down: ChannelOut<()>,
    right_up: ChannelOut<()>,
    right_down: ChannelOut<()>,
) -> Result<(), ChannelError> {
    loop {
        left_up.write(())?;
        // Reaching for the right fork takes a while: long enough for everyone to hold a left
        // one (this is what the butler prevents).
        std::thread::sleep(Duration::from_millis(20));
        right_up.write(())?;
        left_down.write(())?;
        right_down.write(())?;
    }
}

fn philosophers_without_butler() -> Result<String, Error> {
    // Per philosopher and side (L, R): a channel to pick the fork up and one to put it down.
    let pair = |what: &str, i: usize, side: &str| Channel::<()>::named(&format!("{what}{i}{side}"));
    let (mut lu, mut ld, mut ru, mut rd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..N {
        lu.push(pair("up", i, "L")?);
        ld.push(pair("down", i, "L")?);
        ru.push(pair("up", i, "R")?);
        rd.push(pair("down", i, "R")?);
    }
    let mut forks = Vec::new();
    let mut phils = Vec::new();
    for i in 0..N {
        // Fork i is philosopher i's left fork and philosopher i+1's right one.
        let k = (i + 1) % N;
        forks.push(fork(
            lu[i].reader(),
            ld[i].reader(),
            ru[k].reader(),
            rd[k].reader(),
        ));
        phils.push(philosopher(
            lu[i].writer(),
            ld[i].writer(),
            ru[i].writer(),
            rd[i].writer(),
        ));
    }
    drop((lu, ld, ru, rd));
    Parallel((forks, phils)).map(|_| "the philosophers left".into())
}

// ---------------------------------------------------------------------------------------
// A cycle across three processes through buffered channels that are full.

#[process]
fn stuffer(inp: ChannelIn<u64>, out: ChannelOut<u64>, n: u64) -> Result<u64, ChannelError> {
    for i in 0..n {
        out.write(i)?; // one more than the buffer holds: blocks, and nobody reads yet
    }
    let mut sum = 0;
    for _ in 0..n {
        sum += inp.read()?;
    }
    Ok(sum)
}

fn full_buffered_cycle() -> Result<String, Error> {
    let chans: Vec<Channel<u64>> = (0..3)
        .map(|i| Channel::named_buffered(&format!("full{i}"), 4))
        .collect::<Result<_, _>>()?;
    let procs: Vec<_> = (0..3)
        .map(|i| stuffer(chans[i].reader(), chans[(i + 1) % 3].writer(), 5))
        .collect();
    drop(chans);
    Parallel(procs).map(|_| "the cycle ended".into())
}

// ---------------------------------------------------------------------------------------
// No false alarm.

#[process]
fn slow_producer(out: ChannelOut<u64>, ms: u64) -> Result<(), ChannelError> {
    // Sleeping (not in a channel operation) while everyone else waits for it: not blocked.
    std::thread::sleep(Duration::from_millis(ms));
    out.write(7)?;
    std::hint::black_box((0..50_000_000u64).fold(0u64, |a, x| a ^ x.wrapping_mul(31)));
    out.write(8)
}

fn sleeper_is_not_blocked() -> Result<String, Error> {
    let ch = Channel::<u64>::new()?;
    let (_, sum) = Parallel((slow_producer(ch.writer(), 600), consumer(ch.reader())))?;
    Ok(format!("{sum:?}"))
}

#[process]
fn relay(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        match inp.read() {
            Ok(v) => out.write(v + 1)?,
            Err(ChannelError::Retired) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Sums what comes on either channel, selecting, until both retired (a select that parks).
#[process]
fn merge(a: ChannelIn<u64>, b: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let mut sum = 0;
    loop {
        match Alternation::new()
            .input(&a, |v| v)
            .input(&b, |v| v)
            .fair_select()
        {
            Ok(c) => sum += c.value,
            Err(ChannelError::Retired) => return Ok(sum),
            Err(e) => return Err(e),
        }
    }
}

/// Many runs of a network that keeps parking and waking (rendezvous, a buffered channel, a
/// select, processes waiting in Parallel): no deadlock is ever declared.
fn busy_networks() -> Result<String, Error> {
    let runs: u64 = std::env::var("DEADLOCK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for _ in 0..runs {
        let a = Channel::<u64>::new()?;
        let b = Channel::<u64>::buffered(2)?;
        let (c, d) = (Channel::<u64>::new()?, Channel::<u64>::buffered(1)?);
        let (_, _, sum, _, merged) = Parallel((
            producer(a.writer(), 50),
            relay(a.reader(), b.writer()),
            consumer(b.reader()),
            (producer(c.writer(), 20), producer(d.writer(), 30)),
            merge(c.reader(), d.reader()),
        ))?;
        assert_eq!(sum, Ok((0..50).map(|x| x + 1).sum::<u64>()));
        assert_eq!(merged, Ok((0..20).sum::<u64>() + (0..30).sum::<u64>()));
    }
    Ok(format!("{runs} runs"))
}

// ---------------------------------------------------------------------------------------
// Deadlocks through socket channels within one host: processes placed by the trivial
// launcher `{cmd}` (each its own process network, with its own shared memory) reach
// channels hosted by the root over TCP loopback or a local socket.

mod common;

/// An address on a port the system picks when the channel is created (its name then says
/// which): the test's own host binds it, so no other socket can take it first. Often a
/// process's first channel, whose listener starts before the channel is written down.
fn tcp(name: &str) -> String {
    format!("tcp://127.0.0.1:0/{name}")
}

fn local(name: &str) -> String {
    format!(
        "local://{}/{name}",
        common::unique(&format!("pycsp-deadlock-{}", std::process::id()))
    )
}

fn here() -> Placement {
    Placement::launcher("{cmd}")
}

/// The root hosts `numbers` and keeps a writer; the consumer, placed, reads it remotely.
fn socket_parent_keeps_a_writer(at: &str) -> Result<String, Error> {
    let ch = Channel::<u64>::named(at)?;
    let kept = ch.writer(); // the mistake: never written to, never dropped
    let r = Parallel((producer(ch.writer(), 10), consumer(ch.reader()).on(here())));
    drop(kept);
    r.map(|(_, sum)| format!("{sum:?}"))
}

fn tcp_parent_keeps_a_writer() -> Result<String, Error> {
    socket_parent_keeps_a_writer(&tcp("numbers"))
}

/// As [`tcp_parent_keeps_a_writer`], the channel buffered, the consumer reading with a
/// deadline until one passes, then without: its end asks ahead, and its pump waits for the
/// host (asleep on the proxy while a thread watches the connection) while the consumer's
/// last read looks at the empty proxy again. (Once that look moved the proxy's word after
/// the pump had published its wait with it: the census took the wait for one about to end,
/// and never declared.)
fn tcp_parent_keeps_a_writer_of_a_buffered_channel() -> Result<String, Error> {
    let ch = Channel::<u64>::named_buffered(&tcp("numbers"), 4)?;
    let kept = ch.writer(); // the mistake: never written to, never dropped
    let r = Parallel((
        producer(ch.writer(), 10),
        consumer_after_a_look(ch.reader()).on(here()),
    ));
    drop(kept);
    r.map(|(_, sum)| format!("{sum:?}"))
}

fn local_parent_keeps_a_writer() -> Result<String, Error> {
    socket_parent_keeps_a_writer(&local("numbers"))
}

/// A ring of three placed processes through rendezvous socket channels, everyone reading
/// first.
fn socket_ring_without_token() -> Result<String, Error> {
    let chans: Vec<Channel<u64>> = (0..3)
        .map(|i| Channel::named(&tcp(&format!("ring{i}"))))
        .collect::<Result<_, _>>()?;
    let members: Vec<_> = (0..3)
        .map(|i| ring_member(chans[i].reader(), chans[(i + 1) % 3].writer()).on(here()))
        .collect();
    drop(chans);
    Parallel(members).map(|r| format!("ring ended: {r:?}"))
}

/// A cycle of two placed processes through full buffered socket channels. A remote writer
/// is up to twice the capacity ahead of the host's buffer (its proxy and its window of
/// unconfirmed messages): 20 messages fill all three.
fn socket_full_buffered_cycle() -> Result<String, Error> {
    let chans: Vec<Channel<u64>> = (0..2)
        .map(|i| Channel::named_buffered(&tcp(&format!("full{i}")), 4))
        .collect::<Result<_, _>>()?;
    let procs: Vec<_> = (0..2)
        .map(|i| stuffer(chans[i].reader(), chans[(i + 1) % 2].writer(), 20).on(here()))
        .collect();
    drop(chans);
    Parallel(procs).map(|_| "the cycle ended".into())
}

/// A placed writer that sleeps, then computes, while the root's reader waits for it over
/// TCP: not blocked.
fn socket_sleeper_is_not_blocked() -> Result<String, Error> {
    let ch = Channel::<u64>::named(&tcp("slow"))?;
    let (_, sum) = Parallel((
        slow_producer(ch.writer(), 600).on(here()),
        consumer(ch.reader()),
    ))?;
    Ok(format!("{sum:?}"))
}

/// Many runs of a network that parks and wakes through socket channels (placed processes,
/// rendezvous and buffered, a select): no deadlock is ever declared.
fn socket_busy_networks() -> Result<String, Error> {
    let runs: u64 = std::env::var("DEADLOCK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for _ in 0..runs {
        let a = Channel::<u64>::named(&tcp("a"))?;
        let b = Channel::<u64>::named_buffered(&local("b"), 2)?;
        let (c, d) = (
            Channel::<u64>::named(&tcp("c"))?,
            Channel::<u64>::named_buffered(&tcp("d"), 1)?,
        );
        let (_, _, sum, _, merged) = Parallel((
            producer(a.writer(), 50).on(here()),
            relay(a.reader(), b.writer()),
            consumer(b.reader()).on(here()),
            (
                producer(c.writer(), 20),
                producer(d.writer(), 30).on(here()),
            ),
            merge(c.reader(), d.reader()).on(here()),
        ))?;
        assert_eq!(sum, Ok((0..50).map(|x| x + 1).sum::<u64>()));
        assert_eq!(merged, Ok((0..20).sum::<u64>() + (0..30).sum::<u64>()));
    }
    Ok(format!("{runs} runs"))
}

/// Reads the jobs once `took` says the placed reader took one, then says it is done.
#[process]
fn read_the_rest(
    jobs: ChannelIn<u64>,
    took: ChannelIn<u64>,
    done: ChannelOut<()>,
) -> Result<String, ChannelError> {
    took.read()?;
    let mut n = 0;
    let end = loop {
        match jobs.read() {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    done.write(())?;
    Ok(format!("read {n}, then {end}"))
}

/// A placed reader takes one job of a buffered channel and waits for a reader of the root's
/// network to finish reading the jobs before it reads on, while it keeps a message it asked
/// for ahead (`PYCSP_REMOTE_HOLD_MS=never`; it may come back, so the other reader does not
/// see the channel's end): each waits for the other.
fn socket_reader_waits_for_a_remote_reader_that_waits_for_it() -> Result<String, Error> {
    remote_reader_waits_for_the_rest(Placement::launcher(&format!(
        "env {}=never {{cmd}}",
        pycsp::net::ENV_HOLD_MS
    )))
}

/// Takes one job, says so on `took`, and waits for `done` before it reads on: what that
/// read gave.
#[process]
fn take_one_then_wait_for(
    jobs: ChannelIn<u64>,
    took: ChannelOut<u64>,
    done: ChannelIn<()>,
) -> Result<String, ChannelError> {
    took.write(jobs.read()?)?;
    done.read()?;
    Ok(format!("then {:?}", jobs.read()))
}

/// The same program, with the placed reader giving back what it asked for ahead while its
/// user does not read (the default): the other reader reads that too, and sees the end.
fn socket_reader_gets_what_a_remote_reader_that_waits_asked_for() -> Result<String, Error> {
    let jobs = Channel::<u64>::named_buffered(&tcp("jobs"), 16)?;
    let took = Channel::<u64>::named(&tcp("took"))?;
    let done = Channel::<()>::named(&tcp("done"))?;
    let w = jobs.writer();
    for i in 0..16 {
        w.write(i)?;
    }
    let procs = (
        read_the_rest(jobs.reader(), took.reader(), done.writer()),
        take_one_then_wait_for(jobs.reader(), took.writer(), done.reader()).on(here()),
    );
    drop((w, jobs, took, done));
    let (rest, placed) = Parallel(procs)?;
    Ok(format!("{}; {}", rest?, placed?))
}

fn remote_reader_waits_for_the_rest(placed: Placement) -> Result<String, Error> {
    let jobs = Channel::<u64>::named_buffered(&tcp("jobs"), 16)?;
    let took = Channel::<u64>::named(&tcp("took"))?;
    let done = Channel::<()>::named(&tcp("done"))?;
    let w = jobs.writer();
    for i in 0..16 {
        w.write(i)?;
    }
    let procs = (
        read_the_rest(jobs.reader(), took.reader(), done.writer()),
        // The mistake: the root reads on only after the placed process read its jobs.
        common::take_one_then_wait(jobs.reader(), took.writer(), done.reader()).on(placed),
    );
    drop((w, jobs, took, done));
    Parallel(procs).map(|r| format!("{r:?}"))
}

/// Offers a number on `out` in a select (no other guard, no timeout), then says so.
#[process]
fn offer_then_say(out: ChannelOut<u64>, said: ChannelOut<u64>) -> Result<(), ChannelError> {
    Alternation::new().output(&out, 7, || ()).pri_select()?;
    said.write(1)
}

/// Reads `said`, then `offers`.
#[process]
fn hear_then_take(said: ChannelIn<u64>, offers: ChannelIn<u64>) -> Result<u64, ChannelError> {
    said.read()?;
    offers.read()
}

/// A placed process offers a message in a select on a rendezvous socket channel whose only
/// reader, in the root's network, first waits for that process to say it offered: each waits
/// for the other.
fn socket_select_offers_to_nobody() -> Result<String, Error> {
    let offers = Channel::<u64>::named(&tcp("offers"))?;
    let said = Channel::<u64>::named(&tcp("said"))?;
    let procs = (
        offer_then_say(offers.writer(), said.writer()).on(here()),
        hear_then_take(said.reader(), offers.reader()),
    );
    drop((offers, said));
    Parallel(procs).map(|r| format!("{r:?}"))
}

/// Writes `n` numbers and one more, then waits for `done`.
#[process]
fn write_then_hear(out: ChannelOut<u64>, done: ChannelIn<()>, n: u64) -> Result<(), ChannelError> {
    for i in 0..=n {
        out.write(i)?;
    }
    done.read()
}

/// Reads `n` numbers, then says so on `done`.
#[process]
fn take_then_say(inp: ChannelIn<u64>, done: ChannelOut<()>, n: u64) -> Result<(), ChannelError> {
    for _ in 0..n {
        inp.read()?;
    }
    done.write(())
}

/// A placed writer sends numbers through a rendezvous socket channel (its user on the
/// connection itself, see `net/direct.rs`: the bytes it moves are counted for the census
/// too), then one too many, while the root's reader, done reading, waits to say so: each
/// waits to write to the other.
fn socket_writer_after_exchanges() -> Result<String, Error> {
    let numbers = Channel::<u64>::named(&tcp("numbers"))?;
    let done = Channel::<()>::named(&tcp("done"))?;
    let procs = (
        write_then_hear(numbers.writer(), done.reader(), 10).on(here()),
        take_then_say(numbers.reader(), done.writer(), 10),
    );
    drop((numbers, done));
    Parallel(procs).map(|r| format!("{r:?}"))
}

// ---------------------------------------------------------------------------------------
// The driver.

type Case = (&'static str, fn() -> Result<String, Error>);

const CASES: &[Case] = &[
    ("parent_keeps_a_writer", parent_keeps_a_writer),
    ("sequence_keeps_a_writer", sequence_keeps_a_writer),
    ("ring_without_token", ring_without_token),
    ("philosophers_without_butler", philosophers_without_butler),
    ("full_buffered_cycle", full_buffered_cycle),
    ("sleeper_is_not_blocked", sleeper_is_not_blocked),
    ("busy_networks", busy_networks),
    ("tcp_parent_keeps_a_writer", tcp_parent_keeps_a_writer),
    (
        "tcp_parent_keeps_a_writer_of_a_buffered_channel",
        tcp_parent_keeps_a_writer_of_a_buffered_channel,
    ),
    ("local_parent_keeps_a_writer", local_parent_keeps_a_writer),
    ("socket_ring_without_token", socket_ring_without_token),
    ("socket_full_buffered_cycle", socket_full_buffered_cycle),
    (
        "socket_sleeper_is_not_blocked",
        socket_sleeper_is_not_blocked,
    ),
    ("socket_busy_networks", socket_busy_networks),
    (
        "socket_reader_waits_for_a_remote_reader_that_waits_for_it",
        socket_reader_waits_for_a_remote_reader_that_waits_for_it,
    ),
    (
        "socket_reader_gets_what_a_remote_reader_that_waits_asked_for",
        socket_reader_gets_what_a_remote_reader_that_waits_asked_for,
    ),
    (
        "socket_select_offers_to_nobody",
        socket_select_offers_to_nobody,
    ),
    (
        "socket_writer_after_exchanges",
        socket_writer_after_exchanges,
    ),
];

/// Runs case `name` in a fresh run of this binary; its output: "deadlock" and the report,
/// or "ok" and the value, or "error" and the error; and how long it took.
fn run_case(name: &str, env: &[(&str, &str)]) -> (String, Duration) {
    let (out, err, took) = run_case_within(name, env, Duration::from_secs(120));
    if out.trim().is_empty() {
        // It ended without saying anything (a panic, a signal): what it said on standard
        // error is what a failure can show.
        return (format!("no output; its standard error:\n{err}"), took);
    }
    (out, took)
}

/// [`run_case`] with a deadline of `limit` (then the run is killed and its output says
/// "hung"), with its standard error.
fn run_case_within(
    name: &str,
    env: &[(&str, &str)],
    limit: Duration,
) -> (String, String, Duration) {
    let start = Instant::now();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("DEADLOCK_CASE", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Standard error is read on the side, so that a long one cannot block the child.
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut e = String::new();
        let _ = err_pipe.read_to_string(&mut e);
        e
    });
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if start.elapsed() > limit {
            // What the network looked like, for whoever reads the failure: its processes and
            // channels, and each process's threads (a socket thread that is not parked, or a
            // count that moves, keeps a deadlock from being declared).
            let seen = hung_network(child.id());
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap();
            return (
                format!("hung: no end within {limit:?}\n{seen}\nits standard error:\n{err}"),
                err,
                start.elapsed(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let err = err_reader.join().unwrap();
    (out, err, start.elapsed())
}

/// The network of the root `pid` as it is now: a snapshot of its processes and channels, and
/// the name, state and kernel wait of each thread of the root and of every process under it
/// (placed processes are in networks of their own, under their launchers).
fn hung_network(pid: u32) -> String {
    let mut out = match pycsp::Network::attach(pid) {
        Ok(n) => format!("{:#?}\n", n.snapshot()),
        Err(e) => format!("(no network to look at: {e})\n"),
    };
    // `pid (comm) state ppid ...`: the name may hold spaces; the fields follow its last `)`.
    let stat = |path: std::path::PathBuf| -> Option<(String, String, u32)> {
        let s = std::fs::read_to_string(path).ok()?;
        let (a, b) = (s.find('(')?, s.rfind(')')?);
        let mut rest = s.get(b + 1..)?.split_whitespace();
        let state = rest.next()?.to_string();
        let ppid = rest.next()?.parse().ok()?;
        Some((s.get(a + 1..b)?.to_string(), state, ppid))
    };
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if stat(e.path().join("stat")).is_some_and(|(_, _, pp)| pp == parent) {
                family.push(p);
            }
        }
        i += 1;
    }
    for p in family {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some((name, state, _)) = stat(t.path().join("stat")) else {
                continue;
            };
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            out += &format!(
                "  pid {p} thread {}: {name}, {state} in {wchan}\n",
                t.file_name().to_string_lossy()
            );
        }
    }
    out
}

fn in_case(name: &str) {
    let (_, f) = CASES
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known case");
    match f() {
        Ok(v) => println!("ok\n{v}"),
        Err(Error::Deadlock { report, picture }) => {
            println!("deadlock\n{report}");
            if let Some(p) = picture {
                println!("picture: {p}");
            }
        }
        Err(e) => println!("error\n{e}"),
    }
}

fn main() {
    if let Ok(name) = std::env::var("DEADLOCK_CASE") {
        in_case(&name);
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut check = |name: &str, ok: bool, out: &str, took: Duration| {
        println!(
            "test {name} ... {} ({took:.2?})",
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            println!("{out}");
            failed.push(name.to_string());
        }
    };
    let wanted = |n: &str| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()));

    let deadlocks: &[(&str, &[&str])] = &[
        (
            "parent_keeps_a_writer",
            &[
                "`consumer` (pid",
                "waits to read `numbers`",
                "writer end",
                "`main` (pid",
                "waits in Parallel for",
            ],
        ),
        (
            "sequence_keeps_a_writer",
            &[
                "`consumer` (pid",
                "waits to read `numbers`",
                "`main` (pid",
                "waits in Sequence for `consumer`",
            ],
        ),
        (
            "ring_without_token",
            &[
                "waits to read `ring0`",
                "waits to read `ring1`",
                "waits to read `ring2`",
            ],
        ),
        (
            "philosophers_without_butler",
            &[
                "`philosopher` (pid",
                "waits to write `up",
                "`fork` (pid",
                "waits to read `down",
            ],
        ),
        (
            "full_buffered_cycle",
            &[
                "waits to write `full0`",
                "waits to write `full1`",
                "waits to write `full2`",
            ],
        ),
    ];
    let through_sockets: &[(&str, &[&str])] = &[
        (
            "tcp_parent_keeps_a_writer",
            &[
                "`consumer` (pid",
                "waits to read `tcp://127.0.0.1:",
                "`main` (pid",
                "waits in Parallel for",
            ],
        ),
        (
            "tcp_parent_keeps_a_writer_of_a_buffered_channel",
            &[
                "`consumer_after_a_look` (pid",
                "waits to read `tcp://127.0.0.1:",
                "`main` (pid",
                "waits in Parallel for",
            ],
        ),
        (
            "local_parent_keeps_a_writer",
            &["`consumer` (pid", "waits to read `local://", "`main` (pid"],
        ),
        (
            "socket_ring_without_token",
            &["`ring_member` (pid", "/ring0`", "/ring1`", "/ring2`"],
        ),
        (
            "socket_full_buffered_cycle",
            &[
                "`stuffer` (pid",
                "waits to write `tcp://",
                "/full0`",
                "/full1`",
            ],
        ),
        (
            "socket_reader_waits_for_a_remote_reader_that_waits_for_it",
            &[
                "`read_the_rest` (pid",
                "waits to read `tcp://127.0.0.1:",
                "/jobs`; no live process holds a writer end, but messages asked for ahead may still come back from `take_one_then_wait` (pid",
                "/done`",
            ],
        ),
        (
            "socket_writer_after_exchanges",
            &[
                "`write_then_hear` (pid",
                "waits to write `tcp://127.0.0.1:",
                "/numbers`",
                "`take_then_say` (pid",
                "/done`",
            ],
        ),
        (
            "socket_select_offers_to_nobody",
            &[
                "`offer_then_say` (pid",
                "/offers`",
                "`hear_then_take` (pid",
                "waits to read `tcp://127.0.0.1:",
                "/said`",
            ],
        ),
    ];
    for (name, expect) in deadlocks.iter().chain(through_sockets) {
        if !wanted(name) {
            continue;
        }
        // A deadlock is declared within a quarter of a second of the network blocking: a
        // run still going after 30 s (processes placed by a launcher start within a second or
        // two) hung.
        let (out, _, took) = run_case_within(name, &[], Duration::from_secs(30));
        let ok = out.starts_with("deadlock\n") && expect.iter().all(|e| out.contains(e));
        check(name, ok, &out, took);
    }
    for name in [
        "sleeper_is_not_blocked",
        "busy_networks",
        "socket_sleeper_is_not_blocked",
        "socket_busy_networks",
    ] {
        if !wanted(name) {
            continue;
        }
        let (out, took) = run_case(name, &[]);
        check(name, out.starts_with("ok\n"), &out, took);
    }
    let name = "socket_reader_gets_what_a_remote_reader_that_waits_asked_for";
    if wanted(name) {
        let (out, took) = run_case(name, &[]);
        let ok = out.starts_with("ok\n")
            && out.contains("read 15, then the channel was retired: every end on the other side has retired; then Err(Retired)");
        check(name, ok, &out, took);
    }
    // PYCSP_PICTURE: the deadlock error names the picture written, which shows the wait.
    if wanted("picture") {
        let path = std::env::temp_dir().join(format!("pycsp-deadlock-{}.dot", std::process::id()));
        let path_s = path.display().to_string();
        let (out, took) = run_case("parent_keeps_a_writer", &[("PYCSP_PICTURE", &path_s)]);
        let dot = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let ok = out.contains(&format!("picture: {path_s}"))
            && dot.contains("consumer\\npid")
            && dot.contains("numbers\\nrendezvous")
            && dot.contains("waits to read");
        check(
            "deadlock_error_names_its_picture",
            ok,
            &format!("{out}\n{dot}"),
            took,
        );
    }
    // PYCSP_DEADLOCK=report: the report goes to standard error once, and the network keeps
    // waiting (here until the run is killed at its deadline).
    if wanted("report_mode") {
        let (out, err, took) = run_case_within(
            "parent_keeps_a_writer",
            &[("PYCSP_DEADLOCK", "report")],
            Duration::from_secs(3),
        );
        let ok = out.starts_with("hung")
            && err.matches("waits to read `numbers`").count() == 1
            && err.contains("PYCSP_DEADLOCK=report");
        check(
            "report_mode_says_it_once_and_keeps_waiting",
            ok,
            &format!("{out}\n{err}"),
            took,
        );
    }
    // PYCSP_DEADLOCK=off: nothing is scanned, nothing is said; the network waits.
    if wanted("off_mode") {
        let (out, err, took) = run_case_within(
            "parent_keeps_a_writer",
            &[("PYCSP_DEADLOCK", "off")],
            Duration::from_secs(2),
        );
        let ok = out.starts_with("hung") && !err.contains("deadlock");
        check("off_mode_never_scans", ok, &format!("{out}\n{err}"), took);
    }
    if failed.is_empty() {
        println!("\ntest result: ok");
    } else {
        println!("\ntest result: FAILED: {failed:?}");
        std::process::exit(1);
    }
}
