//! `select!`, `pri_select!` and `fair_select!` across OS processes: cases of crossbeam-channel's
//! `tests/select_macro.rs`, `tests/after.rs` and `tests/tick.rs`, ported to channels between
//! processes and to pycsp's timers.

use std::time::{Duration, Instant};

use pycsp::prelude::*;

mod common;
use common::{cpu_time, unique};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[process]
fn write_one(out: ChannelOut<u64>, v: u64) {
    out.write(v).unwrap();
}

#[process]
fn read_one(inp: ChannelIn<u64>) -> u64 {
    inp.read().unwrap()
}

#[process]
fn retire_at_once(_out: ChannelOut<u64>) {}

// crossbeam: smoke1
#[test]
fn a_recv_arm_fires_for_the_channel_another_process_writes_to() {
    for target in 0..2u64 {
        let a = Channel::<u64>::named(&unique("sel-smoke-a")).unwrap();
        let b = Channel::<u64>::named(&unique("sel-smoke-b")).unwrap();
        let (a_in, b_in) = (a.reader(), b.reader());
        let (_a_out, _b_out) = (a.writer(), b.writer());
        let out = if target == 0 { a.writer() } else { b.writer() };
        let child = Spawn(write_one(out, 10 + target)).unwrap();
        let got = select! {
            recv(a_in) -> v => (0, v.unwrap()),
            recv(b_in) -> v => (1, v.unwrap()),
            default(Duration::from_secs(30)) => panic!("nothing arrived"),
        };
        assert_eq!(got, (target, 10 + target));
        child.join().unwrap();
    }
}

// crossbeam: disconnected
#[test]
fn a_recv_arm_reports_a_channel_whose_writers_retired_as_err() {
    let a = Channel::<u64>::named(&unique("sel-retired")).unwrap();
    let a_in = a.reader();
    Parallel(retire_at_once(a.writer())).unwrap();
    let got = select! {
        recv(a_in) -> v => v,
        default(Duration::from_secs(30)) => panic!("a retired channel is ready"),
    };
    assert_eq!(got, Err(ChannelError::Retired));
}

// crossbeam: default
#[test]
fn default_runs_only_when_no_other_arm_can_proceed() {
    let a = Channel::<u64>::named_buffered(&unique("sel-default"), 4).unwrap();
    let (a_in, a_out) = (a.reader(), a.writer());
    for round in 0..200 {
        let empty = select! {
            recv(a_in) -> _ => false,
            default => true,
        };
        assert!(empty, "round {round}: nothing was written");
        a_out.write(round).unwrap();
        // `select!` chooses at random among ready arms, but `default` is never one of them.
        let got = select! {
            recv(a_in) -> v => v.unwrap(),
            default => panic!("round {round}: a message was ready"),
        };
        assert_eq!(got, round);
    }
}

// crossbeam: timeout
#[test]
fn default_with_a_timeout_runs_when_nothing_came_within_it() {
    let _serial = common::timing();
    let a = Channel::<u64>::named(&unique("sel-timeout")).unwrap();
    let (a_in, _a_out) = (a.reader(), a.writer());
    let (start, cpu) = (Instant::now(), cpu_time());
    let timed_out = select! {
        recv(a_in) -> _ => false,
        default(ms(200)) => true,
    };
    let (wall, cpu) = (start.elapsed(), cpu_time() - cpu);
    assert!(timed_out);
    assert!(wall >= ms(200), "woke early: {wall:?}");
    assert!(cpu < ms(20), "used {cpu:?} of CPU while waiting");
}

// crossbeam: send arms (smoke of `send`, and "an unchosen send writes nothing")
#[test]
fn a_send_arm_writes_only_when_chosen_and_reports_how_it_went() {
    let a = Channel::<u64>::named(&unique("sel-send-a")).unwrap();
    let b = Channel::<u64>::named(&unique("sel-send-b")).unwrap();
    let (a_out, b_out) = (a.writer(), b.writer());
    let b_in = b.reader(); // attached, but only read below
    let reader = Spawn(read_one(a.reader())).unwrap();
    let sent = select! {
        send(a_out, 7) -> res => { res.unwrap(); 'a' }
        send(b_out, 8) -> res => { res.unwrap(); 'b' }
        default(Duration::from_secs(30)) => panic!("the reader of `a` is there"),
    };
    assert_eq!(sent, 'a');
    assert_eq!(reader.join().unwrap(), 7);
    let left = select! {
        recv(b_in) -> v => v.ok(),
        default => None,
    };
    assert_eq!(left, None, "the unchosen send arm wrote its value");
    // Every reader of `a` retired: the send arm reports it.
    let res = select! { send(a_out, 9) -> res => res };
    assert_eq!(res, Err(ChannelError::Retired));
}

#[process]
fn send_or_recv(out: ChannelOut<u64>, inp: ChannelIn<u64>, id: u64) -> (bool, u64) {
    select! {
        send(out, id) -> res => { res.unwrap(); (true, id) }
        recv(inp) -> v => (false, v.unwrap()),
    }
}

// crossbeam: both_ready
#[test]
fn two_processes_selecting_send_and_recv_on_crossed_channels_pair_up_once() {
    for _ in 0..20 {
        let one = Channel::<u64>::named(&unique("sel-both-1")).unwrap();
        let two = Channel::<u64>::named(&unique("sel-both-2")).unwrap();
        let (p, q) = Parallel((
            send_or_recv(one.writer(), two.reader(), 1),
            send_or_recv(two.writer(), one.reader(), 2),
        ))
        .unwrap();
        // Exactly one message changed hands: one process sent, the other received it.
        assert!(p.0 != q.0, "both sent or both received: {p:?} {q:?}");
        let (sender, receiver) = if p.0 { (p, q) } else { (q, p) };
        assert_eq!(sender.1, receiver.1);
    }
}

// crossbeam: fairness1
#[test]
fn select_chooses_uniformly_pri_select_in_order_and_fair_select_in_turn() {
    let a = Channel::<u64>::named_buffered(&unique("sel-fair-a"), 4).unwrap();
    let b = Channel::<u64>::named_buffered(&unique("sel-fair-b"), 4).unwrap();
    let (a_in, b_in, a_out, b_out) = (a.reader(), b.reader(), a.writer(), b.writer());
    a_out.write(0).unwrap();
    b_out.write(0).unwrap();
    let mut counts = [[0u32; 2]; 3];
    for (policy, count) in counts.iter_mut().enumerate() {
        let mut last = None;
        for _ in 0..2000 {
            let i = match policy {
                0 => select! { recv(a_in) -> _ => 0, recv(b_in) -> _ => 1 },
                1 => pri_select! { recv(a_in) -> _ => 0, recv(b_in) -> _ => 1 },
                _ => fair_select! { recv(a_in) -> _ => 0, recv(b_in) -> _ => 1 },
            };
            [&a_out, &b_out][i].write(0).unwrap(); // both stay ready
            if policy == 2 {
                assert_ne!(last, Some(i), "fair_select! chose the same channel twice");
            }
            last = Some(i);
            count[i] += 1;
        }
    }
    assert!(
        (800..1200).contains(&counts[0][0]),
        "select!: {:?}",
        counts[0]
    );
    assert_eq!(counts[1], [2000, 0], "pri_select!");
    assert_eq!(counts[2], [1000, 1000], "fair_select!");
}

// crossbeam: loop_try, and bodies that leave the select
#[test]
fn arm_bodies_run_outside_the_select_and_may_break_continue_or_use_the_question_mark() {
    fn sum(inp: &ChannelIn<u64>) -> Result<u64, ChannelError> {
        let mut total = 0;
        loop {
            select! {
                recv(inp) -> v => {
                    let v = v?;
                    if v == 0 {
                        continue;
                    }
                    total += v;
                }
                default => break,
            }
        }
        Ok(total)
    }
    let a = Channel::<u64>::named_buffered(&unique("sel-body"), 8).unwrap();
    let (a_in, a_out) = (a.reader(), a.writer());
    for v in [1, 0, 2, 0, 3] {
        a_out.write(v).unwrap();
    }
    assert_eq!(sum(&a_in), Ok(6));
    drop(a_out);
    assert_eq!(sum(&a_in), Err(ChannelError::Retired));
}

// crossbeam after.rs: fire, recv_two, and "an after channel delivers once"
#[test]
fn an_after_timer_fires_once_at_its_deadline_and_sleeps_without_cpu_until_then() {
    let _serial = common::timing();
    let a = Channel::<u64>::named(&unique("sel-after")).unwrap();
    let (a_in, _a_out) = (a.reader(), a.writer());
    let timer = after(ms(150));
    let due = timer.deadline().unwrap();
    let (start, cpu) = (Instant::now(), cpu_time());
    let fired = select! {
        recv(a_in) -> _ => panic!("nothing was written"),
        recv(timer) -> at => at.unwrap(),
    };
    let (wall, cpu) = (start.elapsed(), cpu_time() - cpu);
    assert_eq!(fired, due, "the arm gets the instant the timer was due at");
    assert!(
        Instant::now() >= due && wall >= ms(140),
        "fired early: {wall:?}"
    );
    assert!(
        cpu < ms(20),
        "used {cpu:?} of CPU while waiting for the timer"
    );
    // Spent: it never fires again (through a reference, too).
    let again = select! {
        recv(&timer) -> _ => true,
        default(ms(50)) => false,
    };
    assert!(!again, "an after timer fires once");
    assert_eq!(timer.deadline(), None);
}

// crossbeam tick.rs: fire, intervals
#[test]
fn a_tick_timer_fires_every_period_while_other_arms_are_served() {
    let _serial = common::timing();
    let a = Channel::<u64>::named_buffered(&unique("sel-tick"), 8).unwrap();
    let (a_in, a_out) = (a.reader(), a.writer());
    for v in [1, 2, 3] {
        a_out.write(v).unwrap();
    }
    let ticker = tick(ms(40));
    let (start, cpu) = (Instant::now(), cpu_time());
    let (mut ticks, mut messages) = (Vec::new(), 0);
    while ticks.len() < 5 {
        select! {
            recv(ticker) -> at => ticks.push(at.unwrap()),
            recv(a_in) -> v => messages += v.unwrap(),
        }
    }
    let (wall, cpu) = (start.elapsed(), cpu_time() - cpu);
    assert!(wall >= ms(200), "5 ticks of 40 ms in {wall:?}");
    for w in ticks.windows(2) {
        assert!(w[1] - w[0] >= ms(40), "ticks {:?} apart", w[1] - w[0]);
    }
    assert_eq!(messages, 6, "the channel arm was served too");
    assert!(cpu < ms(30), "used {cpu:?} of CPU in {wall:?}");
}

#[test]
fn a_select_whose_only_arm_is_a_spent_timer_fails_instead_of_waiting_forever() {
    let timer = after(Duration::ZERO);
    select! { recv(timer) -> _ => {} }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        select! { recv(timer) -> _ => {} }
    }));
    let msg = r.expect_err("a spent timer can never fire");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("select! failed"), "{msg}");
}

#[process]
fn write_n(out: ChannelOut<u64>, n: u64) {
    for i in 1..=n {
        out.write(i).unwrap();
    }
}

// crossbeam: stress_recv, with a ticker for a heartbeat
#[test]
fn a_server_serves_two_writer_processes_and_a_heartbeat_until_both_retire() {
    let a = Channel::<u64>::named(&unique("sel-srv-a")).unwrap();
    let b = Channel::<u64>::named_buffered(&unique("sel-srv-b"), 2).unwrap();
    let (a_in, b_in) = (a.reader(), b.reader());
    let writers = Spawn((write_n(a.writer(), 2000), write_n(b.writer(), 2000))).unwrap();
    let (heartbeat, started) = (tick(ms(5)), Instant::now());
    let (mut sums, mut open, mut beats) = ([0u64; 2], [true; 2], 0u32);
    while open.iter().any(|&o| o) {
        fair_select! {
            recv(a_in) -> v => match v {
                Ok(v) => sums[0] += v,
                Err(_) => open[0] = false,
            },
            recv(b_in) -> v => match v {
                Ok(v) => sums[1] += v,
                Err(_) => open[1] = false,
            },
            recv(heartbeat) -> _ => beats += 1,
        }
    }
    let took = started.elapsed();
    writers.join().unwrap();
    assert_eq!(sums, [2000 * 2001 / 2; 2]);
    // A ticker never fires early, nor makes up missed ticks in a burst.
    assert!(
        u128::from(beats) <= took.as_millis() / 5 + 1,
        "{beats} heartbeats of 5 ms in {took:?}"
    );
}

/// A `send` arm that another arm beats does not send its value: the shared memory the value
/// carries is the caller's again, and freed when the value is dropped (it leaked: the
/// encoding had already handed the block to a message that was never placed).
#[test]
fn an_unchosen_send_arm_gives_back_the_shared_memory_its_value_carries() {
    let ready = Channel::<u32>::buffered(1).unwrap();
    let nobody = Channel::<(SharedBlock, SharedArray<u64>)>::new().unwrap();
    let (rtx, rrx, out) = (ready.writer(), ready.reader(), nobody.writer());
    let round = |i: u32| {
        rtx.write(i).unwrap();
        let block = SharedBlock::zeroed(1 << 20).unwrap();
        let array = SharedArray::<u64>::zeroed(1 << 17).unwrap();
        let got = pycsp::select! {
            recv(rrx) -> v => v.unwrap(),
            send(out, (block, array)) -> _ => panic!("no reader: the send cannot be chosen"),
        };
        assert_eq!(got, i);
    };
    round(0);
    let before = pycsp::shared_memory_usage().unwrap().allocated;
    for i in 1..=40 {
        round(i);
    }
    let grown = pycsp::shared_memory_usage().unwrap().allocated - before;
    assert!(
        grown < 8 << 20,
        "40 rounds with 2 MiB each left unsent grew the arena by {grown} bytes"
    );
}
