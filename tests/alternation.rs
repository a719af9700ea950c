//! Alternation across OS processes: exactly-once delivery with selecting readers and writers
//! on both sides of several channels, timeouts, poison and retire through guards.

use std::time::{Duration, Instant};

use pycsp::prelude::*;

mod common;
use common::cpu_time;

type Msg = (u32, u32); // (writer id, sequence number)

/// Each round offers the next message on every channel at once; exactly one guard fires.
/// Returns, per channel, how many messages this writer delivered and their checksum.
#[process]
fn selecting_writer(outs: Vec<ChannelOut<Msg>>, id: u32, rounds: u32) -> Vec<(u64, u64)> {
    let mut per_chan = vec![(0u64, 0u64); outs.len()];
    let mut seq = 0u32;
    let mut r = 0;
    while r < rounds {
        let mut alt = Alternation::new();
        for out in &outs {
            alt = alt.output(out, (id, seq), || ());
        }
        // Every fourth round may also give up: then nothing may have been written.
        if r % 4 == 3 {
            alt = alt.timeout(Duration::from_micros(50), || ());
        }
        let c = alt.alt_select().expect("readers outlive writers");
        if c.index < outs.len() {
            per_chan[c.index].0 += 1;
            per_chan[c.index].1 += checksum((id, seq));
            seq += 1;
            r += 1;
        } else if r % 4 == 3 {
            r += 1; // timed out: this round wrote nothing
        }
    }
    per_chan
}

fn checksum((id, seq): Msg) -> u64 {
    u64::from(id) * 1_000_003 + u64::from(seq) * 7 + 1
}

/// Reads with alternation over every channel until all are retired; per channel count and
/// checksum, and whether each writer's sequence numbers arrived in increasing order.
#[process]
fn selecting_reader(ins: Vec<ChannelIn<Msg>>, fair: bool) -> (Vec<(u64, u64)>, bool) {
    let mut per_chan = vec![(0u64, 0u64); ins.len()];
    let mut last = std::collections::HashMap::new();
    let mut ordered = true;
    loop {
        let mut alt = Alternation::new();
        for inp in &ins {
            alt = alt.input(inp, |m: Msg| m);
        }
        let c = if fair {
            alt.fair_select()
        } else {
            alt.pri_select()
        };
        match c {
            Ok(Chosen { index, value }) => {
                per_chan[index].0 += 1;
                per_chan[index].1 += checksum(value);
                if let Some(prev) = last.insert((index, value.0), value.1) {
                    ordered &= prev < value.1;
                }
            }
            Err(ChannelError::Retired) => return (per_chan, ordered),
            Err(e) => panic!("reader failed: {e}"),
        }
    }
}

#[test]
fn selecting_readers_and_writers_on_several_channels_deliver_every_message_exactly_once() {
    let _serial = common::timing();
    let chans = [
        Channel::<Msg>::named("stress-rv-0").unwrap(),
        Channel::<Msg>::named("stress-rv-1").unwrap(),
        Channel::<Msg>::named_buffered("stress-buf-2", 8).unwrap(),
    ];
    let rounds = 1500;
    let writers = replicate(3, |id| {
        selecting_writer(
            chans.iter().map(|c| c.writer()).collect(),
            id as u32,
            rounds,
        )
    });
    let readers = replicate(3, |i| {
        selecting_reader(chans.iter().map(|c| c.reader()).collect(), i == 0)
    });
    let (w, r) = Parallel((writers, readers)).unwrap();
    for c in 0..chans.len() {
        let sent: (u64, u64) = w.iter().fold((0, 0), |a, v| (a.0 + v[c].0, a.1 + v[c].1));
        let got: (u64, u64) = r
            .iter()
            .fold((0, 0), |a, v| (a.0 + v.0[c].0, a.1 + v.0[c].1));
        assert_eq!(sent, got, "channel {c}: (count, checksum) written vs read");
    }
    let total: u64 = w.iter().flatten().map(|x| x.0).sum();
    assert!(
        total >= 3 * u64::from(rounds) * 3 / 4,
        "too few messages: {total}"
    );
    assert!(
        r.iter().all(|x| x.1),
        "a writer's messages on one channel were reordered"
    );
}

/// A select with only a timeout guard: returns (wall time, CPU time) of the wait.
#[process]
fn sleep_in_select(ms: u64) -> (Duration, Duration) {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let c = Alternation::new()
        .timeout(Duration::from_millis(ms), || ())
        .pri_select()
        .unwrap();
    assert_eq!(c.index, 0);
    (wall.elapsed(), cpu_time() - cpu)
}

/// Waits on an input guard that never fires, with a timeout guard.
#[process]
fn timeout_with_input(inp: ChannelIn<u8>, ms: u64) -> (usize, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let c = Alternation::new()
        .input(&inp, |_| ())
        .timeout(Duration::from_millis(ms), || ())
        .pri_select()
        .unwrap();
    (c.index, wall.elapsed(), cpu_time() - cpu)
}

#[test]
fn timeouts_are_honoured_to_a_few_milliseconds_and_sleep_without_cpu() {
    let _serial = common::timing();
    let ch = Channel::<u8>::named("alt-timeout").unwrap();
    let _w = ch.writer();
    let (alone, with_input) =
        Parallel((sleep_in_select(300), timeout_with_input(ch.reader(), 300))).unwrap();
    for (wall, cpu) in [alone, (with_input.1, with_input.2)] {
        assert!(wall >= Duration::from_millis(300), "woke early: {wall:?}");
        assert!(wall < Duration::from_millis(320), "woke late: {wall:?}");
        assert!(
            cpu < Duration::from_millis(20),
            "used {cpu:?} of CPU while waiting"
        );
    }
    assert_eq!(with_input.0, 1);
}

#[process]
fn select_until_error(a: ChannelIn<u8>, b: ChannelIn<u8>) -> ChannelError {
    loop {
        if let Err(e) = Alternation::new()
            .input(&a, |_| ())
            .input(&b, |_| ())
            .pri_select()
        {
            return e;
        }
    }
}

#[process]
fn poison_it(out: ChannelOut<u8>) {
    out.write(1).unwrap();
    out.poison();
}

#[process]
fn retire_it(out: ChannelOut<u8>) {
    out.write(2).unwrap();
}

#[test]
fn a_poisoned_guard_fails_the_select_in_another_process() {
    let a = Channel::<u8>::named("alt-x-poison-a").unwrap();
    let b = Channel::<u8>::named("alt-x-poison-b").unwrap();
    let _bw = b.writer();
    let (e, ()) = Parallel((
        select_until_error(a.reader(), b.reader()),
        poison_it(a.writer()),
    ))
    .unwrap();
    assert_eq!(e, ChannelError::Poisoned);
}

#[test]
fn a_select_over_retired_channels_reports_retired_once_all_are() {
    let a = Channel::<u8>::named("alt-x-retire-a").unwrap();
    let b = Channel::<u8>::named_buffered("alt-x-retire-b", 4).unwrap();
    let (e, (), ()) = Parallel((
        select_until_error(a.reader(), b.reader()),
        retire_it(a.writer()),
        retire_it(b.writer()),
    ))
    .unwrap();
    assert_eq!(e, ChannelError::Retired);
}
