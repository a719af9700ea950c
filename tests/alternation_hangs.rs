//! Alternation against plain peers across OS processes: every shape that hung once (issue 13)
//! runs under a watchdog, so that a hang fails the test (the watchdog poisons the channels,
//! which wakes every process) instead of stalling the suite.

use std::time::Duration;

use pycsp::prelude::*;

#[path = "common/watchdog.rs"]
mod watchdog;
use watchdog::within;

const LIMIT: Duration = Duration::from_secs(60);

fn checksum(id: u64, seq: u64) -> u64 {
    (id << 32 | seq).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8
}

/// Writes `n` messages, each through a select with one output guard; (count, checksum).
#[process]
fn selecting_writer(out: ChannelOut<u64>, id: u64, n: u64) -> (u64, u64) {
    let mut sum = 0;
    for seq in 0..n {
        let v = id << 32 | seq;
        Alternation::new()
            .output(&out, v, || ())
            .alt_select()
            .expect("readers outlive writers");
        sum = (sum + checksum(id, seq)) % (1 << 60);
    }
    (n, sum)
}

/// Reads plainly until the channel retires; (count, checksum).
#[process]
fn plain_reader(inp: ChannelIn<u64>) -> (u64, u64) {
    let (mut n, mut sum) = (0, 0);
    loop {
        match inp.read() {
            Ok(v) => {
                n += 1;
                sum = (sum + checksum(v >> 32, v & 0xffff_ffff)) % (1 << 60);
            }
            Err(ChannelError::Retired) => return (n, sum),
            Err(e) => panic!("reader failed: {e}"),
        }
    }
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

/// Reads through a select with one input guard until the channel retires; (count, checksum).
#[process]
fn selecting_reader(inp: ChannelIn<u64>) -> (u64, u64) {
    let (mut n, mut sum) = (0, 0);
    loop {
        match Alternation::new().input(&inp, |v| v).alt_select() {
            Ok(Chosen { value: v, .. }) => {
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

#[test]
fn selecting_writers_and_plain_readers_on_one_rendezvous_channel_never_hang() {
    let name = "hang1-sel-writers";
    let (w, r) = within(LIMIT, &[name], move || {
        let ch = Channel::<u64>::named(name).unwrap();
        let writers = replicate(2, |id| selecting_writer(ch.writer(), id as u64, 2000));
        let readers = replicate(2, |_| plain_reader(ch.reader()));
        Parallel((writers, readers)).unwrap()
    });
    assert_eq!(total(&w), total(&r), "(count, checksum) written vs read");
    assert_eq!(total(&w).0, 4000);
}

#[test]
fn plain_writers_and_selecting_readers_on_one_rendezvous_channel_never_hang() {
    let name = "hang1-sel-readers";
    let (w, r) = within(LIMIT, &[name], move || {
        let ch = Channel::<u64>::named(name).unwrap();
        let writers = replicate(2, |id| plain_writer(ch.writer(), id as u64, 2000));
        let readers = replicate(2, |_| selecting_reader(ch.reader()));
        Parallel((writers, readers)).unwrap()
    });
    assert_eq!(total(&w), total(&r), "(count, checksum) written vs read");
    assert_eq!(total(&w).0, 4000);
}

/// Go's `select_stress` sender: `n` messages on every channel, each sent through a select
/// over the channels that still have messages to send.
#[process]
fn stress_selecting_sender(outs: Vec<ChannelOut<u64>>, n: u64) -> Vec<(u64, u64)> {
    let mut sent = vec![0u64; outs.len()];
    let mut sums = vec![0u64; outs.len()];
    while sent.iter().any(|&s| s < n) {
        let mut alt = Alternation::new();
        let mut idx = Vec::new();
        for (i, out) in outs.iter().enumerate() {
            if sent[i] < n {
                alt = alt.output(out, 100 << 32 | sent[i], || ());
                idx.push(i);
            }
        }
        let c = alt.alt_select().expect("receivers outlive senders");
        let i = idx[c.index];
        sums[i] = (sums[i] + checksum(100, sent[i])) % (1 << 60);
        sent[i] += 1;
    }
    sent.into_iter().zip(sums).collect()
}

/// Go's `select_stress` receiver: `n` messages from every channel, each received through a
/// select over the channels that still have messages to give.
#[process]
fn stress_selecting_receiver(ins: Vec<ChannelIn<u64>>, n: u64) -> Vec<(u64, u64)> {
    let mut got = vec![0u64; ins.len()];
    let mut sums = vec![0u64; ins.len()];
    while got.iter().any(|&g| g < n) {
        let mut alt = Alternation::new();
        let mut idx = Vec::new();
        for (i, inp) in ins.iter().enumerate() {
            if got[i] < n {
                alt = alt.input(inp, |v| v);
                idx.push(i);
            }
        }
        let c = alt.alt_select().expect("senders outlive receivers");
        let i = idx[c.index];
        sums[i] = (sums[i] + checksum(c.value >> 32, c.value & 0xffff_ffff)) % (1 << 60);
        got[i] += 1;
    }
    got.into_iter().zip(sums).collect()
}

/// Reads exactly `n` messages plainly; (count, checksum).
#[process]
fn plain_reader_n(inp: ChannelIn<u64>, n: u64) -> (u64, u64) {
    let mut sum = 0;
    for _ in 0..n {
        let v = inp.read().expect("senders outlive receivers");
        sum = (sum + checksum(v >> 32, v & 0xffff_ffff)) % (1 << 60);
    }
    (n, sum)
}

#[test]
fn go_select_stress_selects_against_plain_senders_and_receivers_never_hang() {
    // Four channels of capacities 0, 0, 2, 3; on each, a plain sender and a plain receiver;
    // and a selecting sender and a selecting receiver over all four.
    let names = ["stress-go-0", "stress-go-1", "stress-go-2", "stress-go-3"];
    let n = 1000;
    let (plain_w, plain_r, sel_w, sel_r) = within(LIMIT, &names, move || {
        let chans: Vec<Channel<u64>> = names
            .iter()
            .zip([0, 0, 2, 3])
            .map(|(name, cap)| {
                if cap == 0 {
                    Channel::named(name).unwrap()
                } else {
                    Channel::named_buffered(name, cap).unwrap()
                }
            })
            .collect();
        let plain_w = replicate(4, |i| plain_writer(chans[i].writer(), i as u64, n));
        let plain_r = replicate(4, |i| plain_reader_n(chans[i].reader(), n));
        let sel_w = stress_selecting_sender(chans.iter().map(|c| c.writer()).collect(), n);
        let sel_r = stress_selecting_receiver(chans.iter().map(|c| c.reader()).collect(), n);
        Parallel((plain_w, plain_r, sel_w, sel_r)).unwrap()
    });
    for c in 0..4 {
        let sent = total(&[plain_w[c], sel_w[c]]);
        let got = total(&[plain_r[c], sel_r[c]]);
        assert_eq!(sent, got, "channel {c}: (count, checksum) sent vs received");
        assert_eq!(sent.0, 2 * n);
    }
}

/// crossbeam's `matching`: one select that either receives from or sends on one channel.
/// Returns what it received, or `None` if it sent.
#[process]
fn send_or_receive(inp: ChannelIn<u64>, out: ChannelOut<u64>, id: u64) -> Option<u64> {
    let c = Alternation::new()
        .input(&inp, Some)
        .output(&out, id, || None)
        .alt_select()
        .expect("partners outlive the select");
    c.value
}

#[test]
fn selects_that_send_or_receive_on_one_channel_pair_up_and_never_match_themselves() {
    // A channel per round: the ends of a finished round retire theirs.
    let names: Vec<String> = (0..10).map(|k| format!("hang2-matching-{k}")).collect();
    let got = within(LIMIT, &names.clone(), move || {
        let mut rounds = Vec::new();
        for name in &names {
            let ch = Channel::<u64>::named(name).unwrap();
            rounds.push(
                Parallel(replicate(8, |id| {
                    send_or_receive(ch.reader(), ch.writer(), id as u64)
                }))
                .unwrap(),
            );
        }
        rounds
    });
    for round in got {
        let received: Vec<u64> = round.iter().flatten().copied().collect();
        let mut senders: Vec<u64> = (0..8).filter(|&i| round[i as usize].is_none()).collect();
        for (id, r) in round.iter().enumerate() {
            assert_ne!(*r, Some(id as u64), "a select received its own message");
        }
        let mut received_sorted = received.clone();
        received_sorted.sort_unstable();
        senders.sort_unstable();
        assert_eq!(
            received_sorted, senders,
            "every sent value received exactly once"
        );
    }
}

/// Writes `n` messages with short, varied timeouts; (count, checksum) of those that were
/// reported written.
#[process]
fn timed_writer(out: ChannelOut<u64>, id: u64, n: u64) -> (u64, u64) {
    let (mut ok, mut sum) = (0, 0);
    for seq in 0..n {
        match out.write_timeout(id << 32 | seq, Duration::from_micros(seq % 7 * 20)) {
            Ok(()) => {
                ok += 1;
                sum = (sum + checksum(id, seq)) % (1 << 60);
            }
            Err(WriteTimeoutError::Timeout(_)) => {}
            Err(e) => panic!("writer failed: {e}"),
        }
    }
    (ok, sum)
}

/// Reads with short timeouts until the channel retires; (count, checksum).
#[process]
fn timed_reader(inp: ChannelIn<u64>) -> (u64, u64) {
    let (mut n, mut sum) = (0, 0);
    let mut k = 0u64;
    loop {
        k += 1;
        match inp.read_timeout(Duration::from_micros(k % 5 * 30)) {
            Ok(v) => {
                n += 1;
                sum = (sum + checksum(v >> 32, v & 0xffff_ffff)) % (1 << 60);
            }
            Err(ChannelError::Timeout) => {}
            Err(ChannelError::Retired) => return (n, sum),
            Err(e) => panic!("reader failed: {e}"),
        }
    }
}

#[test]
fn rendezvous_writes_with_timeouts_are_either_taken_or_withdrawn_exactly_once() {
    let name = "timed-rv";
    let (w, r) = within(LIMIT, &[name], move || {
        let ch = Channel::<u64>::named(name).unwrap();
        let writers = replicate(2, |id| timed_writer(ch.writer(), id as u64, 3000));
        let readers = replicate(2, |_| timed_reader(ch.reader()));
        Parallel((writers, readers)).unwrap()
    });
    assert_eq!(
        total(&w),
        total(&r),
        "(count, checksum) reported written vs read"
    );
    assert!(total(&w).0 > 0);
}

type Token = (ChannelOut<u64>, u64);

/// One process of a ring that passes a channel end around: it receives the end (with the
/// hop count) through a select, writes the count through the end with an output guard, and
/// passes the end on with an output guard; after `hops` hops the end is dropped, which
/// retires the data channel. Returns how many hops it made.
#[process]
fn hop(prev: ChannelIn<Token>, next: ChannelOut<Token>, start: Option<Token>, hops: u64) -> u64 {
    let mut made = 0;
    let mut token = start;
    loop {
        let (end, n) = match token.take() {
            Some(t) => t,
            None => match Alternation::new().input(&prev, |t| t).alt_select() {
                Ok(c) => c.value,
                Err(ChannelError::Retired) => return made,
                Err(e) => panic!("hop failed: {e}"),
            },
        };
        Alternation::new()
            .output(&end, n, || ())
            .alt_select()
            .expect("the collector outlives the ring");
        made += 1;
        if n + 1 == hops {
            return made; // dropping `end` retires the data channel
        }
        Alternation::new()
            .output(&next, (end, n + 1), || ())
            .alt_select()
            .expect("the next hop outlives us");
    }
}

/// Reads the data channel until it retires, alternately with a select and plainly; returns
/// whether the counts arrived in order, and how many.
#[process]
fn collector(inp: ChannelIn<u64>) -> (bool, u64) {
    let mut expect = 0;
    let mut ordered = true;
    loop {
        let r = if expect % 2 == 0 {
            Alternation::new()
                .input(&inp, |v| v)
                .pri_select()
                .map(|c| c.value)
        } else {
            inp.read()
        };
        match r {
            Ok(v) => {
                ordered &= v == expect;
                expect += 1;
            }
            Err(ChannelError::Retired) => return (ordered, expect),
            Err(e) => panic!("collector failed: {e}"),
        }
    }
}

#[test]
fn an_end_passed_around_a_ring_and_used_in_selects_never_hangs() {
    let hops = 1000;
    for run in 0..10 {
        let names: Vec<String> = ["data", "c0", "c1", "c2"]
            .iter()
            .map(|n| format!("hang3-{run}-{n}"))
            .collect();
        let (hops_made, (ordered, got)) = within(LIMIT, &names.clone(), move || {
            let data = Channel::<u64>::named(&names[0]).unwrap();
            let c: Vec<Channel<Token>> = names[1..]
                .iter()
                .map(|n| Channel::named(n).unwrap())
                .collect();
            let ring = replicate(3, |k| {
                let start = (k == 0).then(|| (data.writer(), 0));
                hop(c[(k + 2) % 3].reader(), c[k].writer(), start, hops)
            });
            Parallel((ring, collector(data.reader()))).unwrap()
        });
        assert_eq!(hops_made.iter().sum::<u64>(), hops);
        assert_eq!(got, hops, "run {run}");
        assert!(ordered, "run {run}: counts arrived out of order");
    }
}

/// Stress writer `kind`: 0 plain `write`, 1 selecting with `output` guards (every third round
/// with a timeout guard too), 2 plain `write_timeout` (retrying), 3 selecting with
/// `output_result` guards through ends it receives over `carrier` (besides its own).
#[process]
fn stress_writer(
    outs: Vec<ChannelOut<u64>>,
    carrier_out: Option<ChannelOut<ChannelOut<u64>>>,
    carrier_in: Option<ChannelIn<ChannelOut<u64>>>,
    kind: u64,
    n: u64,
) -> (u64, u64) {
    let mut outs = outs;
    if let Some(c) = carrier_out {
        // Send a clone of our first end through a channel: it counts as a writer there.
        c.write(outs[0].clone()).expect("the receiver reads it");
    }
    if let Some(c) = carrier_in {
        outs.push(c.read().expect("the sender sends one"));
    }
    let (mut ok, mut sum) = (0u64, 0u64);
    let mut seq = 0u64;
    let mut round = 0u64;
    while seq < n {
        round += 1;
        let v = kind << 32 | seq;
        let j = (round as usize) % outs.len();
        let written = match kind {
            0 => outs[j].write(v).is_ok(),
            1 => {
                let mut alt = Alternation::new();
                for o in &outs {
                    alt = alt.output(o, v, || true);
                }
                if round % 3 == 0 {
                    alt = alt.timeout(Duration::from_micros(100), || false);
                }
                alt.alt_select().expect("readers outlive writers").value
            }
            2 => match outs[j].write_timeout(v, Duration::from_micros(round % 4 * 50)) {
                Ok(()) => true,
                Err(WriteTimeoutError::Timeout(_)) => false,
                Err(e) => panic!("writer failed: {e}"),
            },
            _ => {
                let mut alt = Alternation::new();
                for o in &outs {
                    alt = alt.output_result(o, v, |r| r);
                }
                match alt.fair_select().expect("output_result reports").value {
                    Ok(()) => true,
                    Err(e) => panic!("writer failed: {e}"),
                }
            }
        };
        if written {
            ok += 1;
            sum = (sum + checksum(kind, seq)) % (1 << 60);
            seq += 1;
        }
    }
    (ok, sum)
}

/// Stress reader `kind`: 0 plain `read_timeout` round robin, 1 `alt_select` over `input`
/// guards, 2 `fair_select` over `input_result` guards, dropping channels that report their
/// end, 3 `pri_select` with a timeout guard. Reads until every channel retired.
#[process]
fn stress_reader(ins: Vec<ChannelIn<u64>>, kind: u64) -> (u64, u64) {
    let (mut n, mut sum) = (0u64, 0u64);
    let mut live: Vec<usize> = (0..ins.len()).collect();
    let mut round = 0usize;
    let mut got = |v: u64| {
        n += 1;
        sum = (sum + checksum(v >> 32, v & 0xffff_ffff)) % (1 << 60);
    };
    while !live.is_empty() {
        round += 1;
        match kind {
            0 => {
                let k = round % live.len();
                match ins[live[k]].read_timeout(Duration::from_micros(200)) {
                    Ok(v) => got(v),
                    Err(ChannelError::Timeout) => {}
                    Err(ChannelError::Retired) => {
                        live.remove(k);
                    }
                    Err(e) => panic!("reader failed: {e}"),
                }
            }
            2 => {
                let mut alt = Alternation::new();
                for &i in &live {
                    alt = alt.input_result(&ins[i], move |r| (i, r));
                }
                match alt.fair_select().expect("input_result reports").value {
                    (_, Ok(v)) => got(v),
                    (i, Err(ChannelError::Retired)) => live.retain(|&l| l != i),
                    (_, Err(e)) => panic!("reader failed: {e}"),
                }
            }
            _ => {
                let mut alt = Alternation::new();
                for &i in &live {
                    alt = alt.input(&ins[i], Some);
                }
                let r = if kind == 1 {
                    alt.alt_select()
                } else {
                    alt.timeout(Duration::from_micros(300), || None)
                        .pri_select()
                };
                match r {
                    Ok(Chosen { value: Some(v), .. }) => got(v),
                    Ok(Chosen { value: None, .. }) => {}
                    Err(ChannelError::Retired) => live.clear(),
                    Err(e) => panic!("reader failed: {e}"),
                }
            }
        }
    }
    (n, sum)
}

#[test]
fn mixed_selecting_and_plain_readers_and_writers_any_to_any_agree_on_every_message() {
    // Two rendezvous channels and a buffered one; four kinds of writer and four kinds of
    // reader on all of them at once; an end moves through a channel. Five networks a run.
    for run in 0..5 {
        let names: Vec<String> = ["rv0", "rv1", "buf2", "carrier"]
            .iter()
            .map(|n| format!("stress-mixed-{run}-{n}"))
            .collect();
        let (w, r) = within(LIMIT, &names.clone(), move || {
            let data = [
                Channel::<u64>::named(&names[0]).unwrap(),
                Channel::<u64>::named(&names[1]).unwrap(),
                Channel::<u64>::named_buffered(&names[2], 3).unwrap(),
            ];
            let carrier = Channel::<ChannelOut<u64>>::named(&names[3]).unwrap();
            let writers = replicate(4, |k| {
                let outs = if k == 3 {
                    vec![data[1].writer()]
                } else {
                    data.iter().map(|c| c.writer()).collect()
                };
                let c_out = (k == 0).then(|| carrier.writer());
                let c_in = (k == 3).then(|| carrier.reader());
                stress_writer(outs, c_out, c_in, k as u64, 800)
            });
            let readers = replicate(4, |k| {
                stress_reader(data.iter().map(|c| c.reader()).collect(), k as u64)
            });
            Parallel((writers, readers)).unwrap()
        });
        assert_eq!(
            total(&w),
            total(&r),
            "run {run}: (count, checksum) written vs read"
        );
        assert_eq!(total(&w).0, 4 * 800);
    }
}

type ReaderToken = (ChannelIn<u64>, u64);

/// As [`hop`], passing the reading end: it reads one message through the received end with
/// an input guard (checking it is the one expected), then passes the end on.
#[process]
fn read_hop(
    prev: ChannelIn<ReaderToken>,
    next: ChannelOut<ReaderToken>,
    start: Option<ReaderToken>,
    hops: u64,
) -> (u64, bool) {
    let (mut made, mut ordered) = (0, true);
    let mut token = start;
    loop {
        let (end, n) = match token.take() {
            Some(t) => t,
            None => match Alternation::new().input(&prev, |t| t).alt_select() {
                Ok(c) => c.value,
                Err(ChannelError::Retired) => return (made, ordered),
                Err(e) => panic!("hop failed: {e}"),
            },
        };
        let v = Alternation::new()
            .input(&end, |v| v)
            .alt_select()
            .expect("the writer outlives the ring")
            .value;
        ordered &= v == n;
        made += 1;
        if n + 1 == hops {
            return (made, ordered);
        }
        Alternation::new()
            .output(&next, (end, n + 1), || ())
            .alt_select()
            .expect("the next hop outlives us");
    }
}

/// Writes 0, 1, ... `n - 1` plainly.
#[process]
fn counter(out: ChannelOut<u64>, n: u64) {
    for v in 0..n {
        out.write(v).expect("the ring reads every count");
    }
}

#[test]
fn a_reading_end_passed_around_a_ring_and_used_in_selects_never_hangs() {
    let hops = 1000;
    for run in 0..10 {
        let names: Vec<String> = ["data", "c0", "c1", "c2"]
            .iter()
            .map(|n| format!("hang3r-{run}-{n}"))
            .collect();
        let (made, ()) = within(LIMIT, &names.clone(), move || {
            let data = Channel::<u64>::named(&names[0]).unwrap();
            let c: Vec<Channel<ReaderToken>> = names[1..]
                .iter()
                .map(|n| Channel::named(n).unwrap())
                .collect();
            let ring = replicate(3, |k| {
                let start = (k == 0).then(|| (data.reader(), 0));
                read_hop(c[(k + 2) % 3].reader(), c[k].writer(), start, hops)
            });
            Parallel((ring, counter(data.writer(), hops))).unwrap()
        });
        assert_eq!(made.iter().map(|m| m.0).sum::<u64>(), hops, "run {run}");
        assert!(made.iter().all(|m| m.1), "run {run}: counts out of order");
    }
}

/// As [`hop`], but the end is offered to the next hop as a clone, with a short timeout guard,
/// until the offer is taken (an unchosen offer must release its clone). Hop `k` of three
/// handles the counts `n < hops` with `n % 3 == k`, then returns. Returns the hops it made and
/// how many offers timed out.
#[process]
fn hop_with_timeouts(
    prev: ChannelIn<Token>,
    next: ChannelOut<Token>,
    start: Option<Token>,
    k: u64,
    hops: u64,
) -> (u64, u64) {
    let (mut made, mut timed_out) = (0, 0);
    let mine = (0..hops).filter(|n| n % 3 == k).count() as u64;
    let mut token = start;
    while made < mine {
        let (end, n) = match token.take() {
            Some(t) => t,
            None => match Alternation::new().input(&prev, |t| t).alt_select() {
                Ok(c) => c.value,
                Err(e) => panic!("hop failed: {e}"),
            },
        };
        end.write(n).expect("the collector outlives the ring");
        made += 1;
        if n + 2 >= hops {
            continue; // the last hop of this token: dropping `end` retires its channel
        }
        // The first offer times out at once unless the next hop is already waiting.
        let mut attempt = 0;
        while !Alternation::new()
            .output(&next, (end.clone(), n + 2), || true)
            .timeout(Duration::from_micros(attempt.min(3) * 10), || false)
            .alt_select()
            .expect("the next hop outlives us")
            .value
        {
            attempt += 1;
            timed_out += 1;
        }
    }
    (made, timed_out)
}

#[test]
fn ends_offered_with_timeouts_around_a_ring_retire_their_channels_at_the_end() {
    // Two tokens go round a ring of three: a hop is often busy when an offer comes, so offers
    // time out. Each token carries the writing end of its own data channel; a hop passes on
    // a clone of it and drops its own, so the channel retires only if every unchosen offer
    // released its clone.
    let hops = 1000; // per token: even counts on one, odd on the other
    let mut timed_out = 0;
    for run in 0..10 {
        let names: Vec<String> = ["data0", "data1", "c0", "c1", "c2"]
            .iter()
            .map(|n| format!("hang3t-{run}-{n}"))
            .collect();
        let (made, (a, b)) = within(LIMIT, &names.clone(), move || {
            let data = [
                Channel::<u64>::named(&names[0]).unwrap(),
                Channel::<u64>::named(&names[1]).unwrap(),
            ];
            let c: Vec<Channel<Token>> = names[2..]
                .iter()
                .map(|n| Channel::named(n).unwrap())
                .collect();
            let ring = replicate(3, |k| {
                let start = (k < 2).then(|| (data[k].writer(), k as u64));
                let (prev, next) = (c[(k + 2) % 3].reader(), c[k].writer());
                hop_with_timeouts(prev, next, start, k as u64, 2 * hops)
            });
            let collectors = (
                even_collector(data[0].reader(), 0),
                even_collector(data[1].reader(), 1),
            );
            Parallel((ring, collectors)).unwrap()
        });
        assert_eq!(made.iter().map(|m| m.0).sum::<u64>(), 2 * hops, "run {run}");
        timed_out += made.iter().map(|m| m.1).sum::<u64>();
        assert_eq!((a, b), ((true, hops), (true, hops)), "run {run}");
    }
    assert!(
        timed_out > 0,
        "no offer timed out: the test exercised nothing"
    );
}

/// Reads `first`, `first + 2`, ... until the channel retires; whether in order, and how many.
#[process]
fn even_collector(inp: ChannelIn<u64>, first: u64) -> (bool, u64) {
    let (mut expect, mut ordered, mut n) = (first, true, 0);
    loop {
        match inp.read() {
            Ok(v) => {
                ordered &= v == expect;
                expect += 2;
                n += 1;
            }
            Err(ChannelError::Retired) => return (ordered, n),
            Err(e) => panic!("collector failed: {e}"),
        }
    }
}
