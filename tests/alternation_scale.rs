//! Alternation has no silent caps (issue 14): a select takes any number of guards, any number
//! of processes select on one channel, and none of them polls: a select that waits, however
//! many guards it has and however full its channels' offer tables are, sleeps until something
//! it waits for happens, so its CPU time while idle is about zero.

use std::time::{Duration, Instant};

use pycsp::prelude::*;

mod common;
use common::cpu_time;
#[path = "common/watchdog.rs"]
mod watchdog;
use watchdog::within;

const LIMIT: Duration = Duration::from_secs(120);

fn checksum(id: u64, seq: u64) -> u64 {
    (id << 32 | seq).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8
}

/// Sends `n` requests on its own channel and reads each answer; the sum of the answers.
#[process]
fn client(req: ChannelOut<u64>, rep: ChannelIn<u64>, id: u64, n: u64) -> u64 {
    let mut sum = 0;
    for k in 0..n {
        req.write(id << 32 | k)
            .expect("the server serves every client");
        sum += rep.read().expect("the server answers every request");
    }
    sum
}

/// Serves every client with `fair_select` over the request channels of the clients that are
/// still there (one guard each), answering request `v` with `v + 1`; per client, the
/// requests served.
#[process]
fn server(reqs: Vec<ChannelIn<u64>>, reps: Vec<ChannelOut<u64>>) -> Vec<u64> {
    let mut served = vec![0u64; reqs.len()];
    let mut live: Vec<usize> = (0..reqs.len()).collect();
    while !live.is_empty() {
        let mut alt = Alternation::new();
        for &c in &live {
            alt = alt.input_result(&reqs[c], |r| r);
        }
        let chosen = alt.fair_select().expect("reporting guards fire");
        let c = live[chosen.index];
        match chosen.value {
            Ok(v) => {
                served[c] += 1;
                reps[c]
                    .write(v + 1)
                    .expect("the client waits for its answer");
            }
            Err(ChannelError::Retired) => {
                live.swap_remove(chosen.index);
            }
            Err(e) => panic!("client {c}: {e}"),
        }
    }
    served
}

#[test]
fn a_server_selecting_over_a_thousand_client_processes_answers_every_request() {
    const CLIENTS: usize = 1000;
    const REQUESTS: u64 = 3;
    let names: Vec<String> = (0..CLIENTS)
        .flat_map(|c| [format!("scale-req-{c}"), format!("scale-rep-{c}")])
        .collect();
    let poison = names.clone();
    let started = Instant::now();
    let (served, sums) = within(LIMIT, &poison, move || {
        let chans: Vec<(Channel<u64>, Channel<u64>)> = names
            .chunks(2)
            .map(|n| {
                (
                    Channel::named(&n[0]).unwrap(),
                    Channel::named(&n[1]).unwrap(),
                )
            })
            .collect();
        let srv = server(
            chans.iter().map(|c| c.0.reader()).collect(),
            chans.iter().map(|c| c.1.writer()).collect(),
        );
        let clients = replicate(CLIENTS, |c| {
            client(chans[c].0.writer(), chans[c].1.reader(), c as u64, REQUESTS)
        });
        Parallel((srv, clients)).unwrap()
    });
    eprintln!(
        "{CLIENTS} clients x {REQUESTS} requests served in {:?}",
        started.elapsed()
    );
    assert_eq!(
        served,
        vec![REQUESTS; CLIENTS],
        "requests served per client"
    );
    for (c, sum) in sums.into_iter().enumerate() {
        let c = c as u64;
        let want: u64 = (0..REQUESTS).map(|k| (c << 32 | k) + 1).sum();
        assert_eq!(sum, want, "client {c} got wrong answers");
    }
}

/// Waits in one select over every channel of `ins` with a timeout of `idle`: (whether the
/// timeout fired, wall time, CPU time of the wait).
#[process]
fn idle_select(ins: Vec<ChannelIn<u64>>, idle: Duration) -> (bool, Duration, Duration) {
    let mut alt = Alternation::new();
    for i in &ins {
        alt = alt.input(i, |_| false);
    }
    let (wall, cpu) = (Instant::now(), cpu_time());
    let timed_out = alt.timeout(idle, || true).fair_select().unwrap().value;
    (timed_out, wall.elapsed(), cpu_time() - cpu)
}

#[test]
fn a_select_over_a_thousand_channels_sleeps_without_cpu_while_idle() {
    let _serial = common::timing();
    let idle = Duration::from_secs(1);
    // Rendezvous channels (the select posts an offer on each) and buffered ones.
    let chans: Vec<Channel<u64>> = (0..1000)
        .map(|c| {
            let name = format!("scale-idle-{c}");
            if c % 2 == 0 {
                Channel::named(&name).unwrap()
            } else {
                Channel::named_buffered(&name, 4).unwrap()
            }
        })
        .collect();
    let _writers: Vec<ChannelOut<u64>> = chans.iter().map(|c| c.writer()).collect();
    let (timed_out, wall, cpu) = Parallel(idle_select(
        chans.iter().map(|c| c.reader()).collect(),
        idle,
    ))
    .unwrap();
    eprintln!("idle select over 1000 channels: {cpu:?} of CPU in {wall:?}");
    assert!(timed_out, "nothing was written, so the timeout fires");
    assert!(wall >= idle, "woke early: {wall:?}");
    assert!(
        cpu < idle / 50,
        "used {cpu:?} of CPU in {wall:?} of waiting on 1000 channels"
    );
}

/// Writes `n` messages on the shared channel, each through a select with one output guard;
/// (count, checksum).
#[process]
fn selecting_writer(out: ChannelOut<u64>, id: u64, n: u64) -> (u64, u64) {
    let mut sum = 0;
    for seq in 0..n {
        Alternation::new()
            .output(&out, id << 32 | seq, || ())
            .fair_select()
            .expect("readers outlive writers");
        sum = (sum + checksum(id, seq)) % (1 << 60);
    }
    (n, sum)
}

/// Writes `n` messages plainly; (count, checksum).
#[process]
fn plain_writer(out: ChannelOut<u64>, id: u64, n: u64) -> (u64, u64) {
    let mut sum = 0;
    for seq in 0..n {
        out.write(id << 32 | seq).expect("readers outlive writers");
        sum = (sum + checksum(id, seq)) % (1 << 60);
    }
    (n, sum)
}

/// Reads until every writer retired, plainly or through a select; (count, checksum).
#[process]
fn reader(inp: ChannelIn<u64>, selecting: bool) -> (u64, u64) {
    let (mut n, mut sum) = (0, 0);
    loop {
        let got = if selecting {
            Alternation::new()
                .input(&inp, |v| v)
                .fair_select()
                .map(|c| c.value)
        } else {
            inp.read()
        };
        match got {
            Ok(v) => {
                n += 1;
                sum = (sum + checksum(v >> 32, v & 0xffff_ffff)) % (1 << 60);
            }
            Err(ChannelError::Retired) => return (n, sum),
            Err(e) => panic!("reader failed: {e}"),
        }
    }
}

fn total(v: &[(u64, u64)]) -> (u64, u64) {
    v.iter()
        .fold((0, 0), |a, x| (a.0 + x.0, (a.1 + x.1) % (1 << 60)))
}

/// `writers` writers and `readers` readers on one rendezvous channel, selecting or plain;
/// every message written is read exactly once.
fn one_channel(name: &'static str, writers: (usize, bool), readers: (usize, bool), n: u64) {
    let (w, r) = within(LIMIT, &[name], move || {
        let ch = Channel::<u64>::named(name).unwrap();
        let ws = replicate(writers.0, |id| {
            if writers.1 {
                selecting_writer(ch.writer(), id as u64, n)
            } else {
                plain_writer(ch.writer(), id as u64, n)
            }
        });
        let rs = replicate(readers.0, |_| reader(ch.reader(), readers.1));
        Parallel((ws, rs)).unwrap()
    });
    assert_eq!(total(&w), total(&r), "(count, checksum) written vs read");
    assert_eq!(total(&w).0, writers.0 as u64 * n);
}

// An offer table holds 32 offers per side: these run three times as many selecting processes
// on one side of one channel.

#[test]
fn a_hundred_selecting_writers_on_one_channel_are_all_read_by_a_plain_reader() {
    one_channel("scale-sel-writers", (100, true), (1, false), 20);
}

#[test]
fn a_hundred_selecting_readers_on_one_channel_read_every_plain_writers_message() {
    one_channel("scale-sel-readers", (2, false), (100, true), 500);
}

#[test]
fn a_hundred_selecting_writers_and_a_hundred_selecting_readers_on_one_channel_pair_up() {
    one_channel("scale-sel-both", (100, true), (100, true), 20);
}

/// Offers `v` on `out` with a timeout of `idle` (nobody reads): (whether it timed out, CPU
/// time of the wait).
#[process]
fn idle_offer(out: ChannelOut<u64>, v: u64, idle: Duration) -> (bool, Duration) {
    let cpu = cpu_time();
    let timed_out = Alternation::new()
        .output(&out, v, || false)
        .timeout(idle, || true)
        .pri_select()
        .unwrap()
        .value;
    (timed_out, cpu_time() - cpu)
}

#[test]
fn selecting_writers_beyond_a_full_offer_table_sleep_without_cpu_while_idle() {
    let _serial = common::timing();
    let idle = Duration::from_secs(1);
    let ch = Channel::<u64>::named("scale-idle-offers").unwrap();
    let _reader = ch.reader(); // attached, never reading
    let started = Instant::now();
    let waits = Parallel(replicate(48, |i| idle_offer(ch.writer(), i as u64, idle))).unwrap();
    assert!(started.elapsed() >= idle);
    let worst = waits.iter().map(|w| w.1).max().unwrap();
    eprintln!("48 idle selecting writers, 32 offers: worst {worst:?} of CPU in {idle:?}");
    assert!(
        waits.iter().all(|w| w.0),
        "nobody read, so every offer timed out"
    );
    assert!(
        worst < idle / 50,
        "a writer used {worst:?} of CPU in {idle:?} of waiting (48 writers, 32 offers)"
    );
}

/// A select whose other guards ended (an input guard whose writers retired, an output guard
/// whose readers retired: guards that will never fire) sleeps until its live guard is ready;
/// it spun at full speed before, its wait returning at once because the ended guards "looked
/// ready".
#[test]
fn a_select_with_ended_guards_sleeps_until_a_live_one_is_ready() {
    let _timing = common::timing();
    for capacity in [1, 0] {
        select_with_ended_guards(capacity);
    }
}

fn select_with_ended_guards(capacity: usize) {
    let ended_in = Channel::<u32>::buffered(capacity).unwrap();
    let ended_out = Channel::<u32>::buffered(capacity).unwrap();
    let live = Channel::<u32>::buffered(1).unwrap();
    let (ended_rx, ended_tx) = (ended_in.reader(), ended_out.writer());
    ended_in.writer().retire();
    ended_out.reader().retire();
    let tx = live.writer();
    let rx = live.reader();
    let writer = std::thread::spawn(move || {
        // The stimulus comes later: the select waits meanwhile.
        std::thread::sleep(Duration::from_millis(400));
        tx.write(7)
    });
    let (wall, cpu) = (Instant::now(), cpu_time());
    let got = Alternation::new()
        .input(&ended_rx, |v| v)
        .output(&ended_tx, 1, || 0)
        .input(&rx, |v| v)
        .alt_select()
        .unwrap();
    let (wall, cpu) = (wall.elapsed(), cpu_time() - cpu);
    writer.join().unwrap().unwrap();
    assert_eq!((got.index, got.value), (2, 7));
    assert!(
        wall >= Duration::from_millis(300),
        "the select waited for the writer"
    );
    assert!(
        cpu < wall / 4,
        "capacity {capacity}: the select used {cpu:?} of CPU while it waited {wall:?}: it spins"
    );
}
