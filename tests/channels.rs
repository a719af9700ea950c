//! Channels between OS processes: rendezvous and buffered, any-to-any, retire and poison,
//! large messages, type checks, blocking without CPU.

use std::time::{Duration, Instant};

use pycsp::prelude::*;

mod common;
use common::cpu_time;
use pycsp::{Error, SharedBlock};

#[process]
fn producer(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    out.retire();
    Ok(())
}

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

#[test]
fn producer_and_consumer_in_two_processes_over_a_rendezvous_channel() {
    let ch = Channel::<u64>::named("pc-rendezvous").unwrap();
    let (p, c) = Parallel((producer(ch.writer(), 1000), consumer(ch.reader()))).unwrap();
    assert_eq!(p, Ok(()));
    assert_eq!(c, Ok(499_500));
}

#[test]
fn producer_and_consumer_over_a_buffered_channel() {
    let ch = Channel::<u64>::named_buffered("pc-buffered", 64).unwrap();
    let (p, c) = Parallel((producer(ch.writer(), 100_000), consumer(ch.reader()))).unwrap();
    assert_eq!(p, Ok(()));
    assert_eq!(c, Ok(100_000 * 99_999 / 2));
}

#[process]
fn tagged_writer(out: ChannelOut<(u32, u32)>, id: u32, n: u32) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write((id, i))?;
    }
    Ok(())
}

/// Returns (count, checksum, per-writer order kept).
#[process]
fn tagged_reader(inp: ChannelIn<(u32, u32)>) -> (u64, u64, bool) {
    let mut last = std::collections::HashMap::new();
    let (mut count, mut sum, mut ordered) = (0u64, 0u64, true);
    for msg in inp.iter() {
        let (id, i) = msg.expect("the writers retire; nothing else ends the channel");
        if let Some(prev) = last.insert(id, i) {
            ordered &= prev < i;
        }
        count += 1;
        sum += u64::from(id) * 1_000_003 + u64::from(i);
    }
    (count, sum, ordered)
}

#[test]
fn any_to_any_across_processes_delivers_each_message_to_exactly_one_reader() {
    let _serial = common::timing();
    for (name, cap) in [("a2a-rendezvous", 0), ("a2a-buffered", 16)] {
        let ch = Channel::<(u32, u32)>::named_buffered(name, cap).unwrap();
        let n = 3000u32;
        let writers = replicate(3, |id| tagged_writer(ch.writer(), id as u32, n));
        let readers = replicate(3, |_| tagged_reader(ch.reader()));
        let (w, r) = Parallel((writers, readers)).unwrap();
        assert!(w.iter().all(|x| x.is_ok()));
        let count: u64 = r.iter().map(|x| x.0).sum();
        let sum: u64 = r.iter().map(|x| x.1).sum();
        let expected: u64 = (0..3u64)
            .map(|id| id * 1_000_003 * u64::from(n) + u64::from(n) * u64::from(n - 1) / 2)
            .sum();
        assert_eq!(count, 3 * u64::from(n), "{name}");
        assert_eq!(sum, expected, "{name}");
        assert!(
            r.iter().all(|x| x.2),
            "{name}: a writer's messages were reordered"
        );
    }
}

#[process]
fn echo_large(inp: ChannelIn<Vec<u64>>, out: ChannelOut<Vec<u64>>) -> Result<(), ChannelError> {
    let v = inp.read()?;
    out.write(v)
}

#[test]
fn a_64_mib_message_crosses_processes_intact() {
    let there = Channel::<Vec<u64>>::named("large-there").unwrap();
    let back = Channel::<Vec<u64>>::named("large-back").unwrap();
    let (w, r) = (there.writer(), back.reader());
    let h = Spawn(echo_large(there.reader(), back.writer())).unwrap();
    // 8 Mi u64 values of up to 9 bytes each: about 64 MiB encoded.
    let v: Vec<u64> = (0..(8u64 << 20))
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    w.write_ref(&v).unwrap();
    let got = r.read().unwrap();
    assert!(got == v);
    assert_eq!(h.join().unwrap(), Ok(()));
}

/// Blocks on `inp` and returns (wall time blocked, CPU time used meanwhile).
#[process]
fn blocked_reader(inp: ChannelIn<u8>) -> (Duration, Duration) {
    let (wall, cpu) = (Instant::now(), cpu_time());
    inp.read().unwrap();
    (wall.elapsed(), cpu_time() - cpu)
}

#[test]
fn a_process_blocked_for_a_second_uses_almost_no_cpu() {
    let _serial = common::timing();
    let ch = Channel::<u8>::named("idle").unwrap();
    let w = ch.writer();
    let h = Spawn(blocked_reader(ch.reader())).unwrap();
    // The subject of the test is a long block: keep the reader waiting for one second.
    std::thread::sleep(Duration::from_secs(1));
    w.write(1).unwrap();
    let (wall, cpu) = h.join().unwrap();
    assert!(wall >= Duration::from_millis(900), "blocked only {wall:?}");
    assert!(
        cpu < Duration::from_millis(50),
        "used {cpu:?} of CPU while blocked for {wall:?}"
    );
}

#[process]
fn relay(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    for v in inp.iter() {
        out.write(v? + 1)?;
    }
    Ok(())
}

#[test]
fn a_pipeline_with_more_processes_than_cores_does_not_livelock() {
    let _serial = common::timing();
    let stages = 8;
    let chans: Vec<Channel<u64>> = (0..=stages)
        .map(|i| Channel::named(&format!("pipe-{i}")).unwrap())
        .collect();
    let relays = replicate(stages, |i| relay(chans[i].reader(), chans[i + 1].writer()));
    let n = 2000;
    let (_, total, _) = Parallel((
        producer(chans[0].writer(), n),
        consumer(chans[stages].reader()),
        relays,
    ))
    .unwrap();
    assert_eq!(total, Ok(n * (n - 1) / 2 + n * stages as u64));
}

#[process]
fn open_by_name_as_string(name: String) -> Result<(), ChannelError> {
    Channel::<String>::open(&name).map(|_| ())
}

#[test]
fn opening_a_channel_with_the_wrong_type_in_another_process_names_both_types() {
    let _ch = Channel::<u64>::named("typed-xproc").unwrap();
    match Parallel(open_by_name_as_string("typed-xproc".into())).unwrap() {
        Err(ChannelError::TypeMismatch {
            expected, found, ..
        }) => {
            assert!(expected.contains("String"));
            assert_eq!(found, "u64");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
}

#[process]
fn write_then_retire(out: ChannelOut<u8>, n: u8) {
    for i in 0..n {
        out.write(i).unwrap();
    }
}

#[process]
fn drain(inp: ChannelIn<u8>) -> (usize, ChannelError) {
    let mut n = 0;
    loop {
        match inp.read() {
            Ok(_) => n += 1,
            Err(e) => return (n, e),
        }
    }
}

#[test]
fn readers_see_retired_after_all_writers_retired_and_the_buffer_drained() {
    let ch = Channel::<u8>::named_buffered("retire-drain", 100).unwrap();
    // Writers finish (and retire by returning) before the reader starts.
    Parallel(replicate(2, |_| write_then_retire(ch.writer(), 10))).unwrap();
    let (n, e) = Parallel(drain(ch.reader())).unwrap();
    assert_eq!((n, e), (20, ChannelError::Retired));
}

#[process]
fn writer_until_error(out: ChannelOut<u8>) -> ChannelError {
    loop {
        if let Err(e) = out.write(0) {
            return e;
        }
    }
}

#[process]
fn read_some_then_retire(inp: ChannelIn<u8>, n: usize) {
    for _ in 0..n {
        inp.read().unwrap();
    }
    inp.retire();
}

#[test]
fn writers_see_retired_once_all_readers_retired() {
    let ch = Channel::<u8>::named("retire-readers").unwrap();
    let (e, _, _) = Parallel((
        writer_until_error(ch.writer()),
        read_some_then_retire(ch.reader(), 5),
        read_some_then_retire(ch.reader(), 7),
    ))
    .unwrap();
    assert_eq!(e, ChannelError::Retired);
}

#[process]
fn stage(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        let v = inp.read()?;
        out.write(v)?;
    }
}

#[process]
fn poison_after(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    out.poison();
    Err(ChannelError::Poisoned)
}

#[process]
fn sink(inp: ChannelIn<u64>) -> Result<(), ChannelError> {
    loop {
        inp.read()?;
    }
}

#[test]
fn poison_spreads_through_a_pipeline_of_processes() {
    let a = Channel::<u64>::named("poison-a").unwrap();
    let b = Channel::<u64>::named("poison-b").unwrap();
    let c = Channel::<u64>::named("poison-c").unwrap();
    let (p, s1, s2, k) = Parallel((
        poison_after(a.writer(), 10),
        stage(a.reader(), b.writer()),
        stage(b.reader(), c.writer()),
        sink(c.reader()),
    ))
    .unwrap();
    assert_eq!(p, Err(ChannelError::Poisoned));
    assert_eq!(s1, Err(ChannelError::Poisoned));
    assert_eq!(s2, Err(ChannelError::Poisoned));
    assert_eq!(k, Err(ChannelError::Poisoned));
}

#[process]
fn poison_from_the_end(inp: ChannelIn<u64>, n: u64) -> Result<(), ChannelError> {
    for _ in 0..n {
        inp.read()?;
    }
    inp.poison();
    Err(ChannelError::Poisoned)
}

#[process]
fn endless(out: ChannelOut<u64>) -> Result<(), ChannelError> {
    let mut i = 0;
    loop {
        out.write(i)?;
        i += 1;
    }
}

/// endless -> a -> stage -> b -> poison_from_the_end(n): every process must end with
/// `Poisoned` (the stage returns it with `?`, calling no poison() itself).
fn poison_reaches_the_producer(a: &str, a_capacity: usize, b: &str, b_capacity: usize, n: u64) {
    let a = Channel::<u64>::named_buffered(a, a_capacity).unwrap();
    let b = Channel::<u64>::named_buffered(b, b_capacity).unwrap();
    let (p, s, k) = Parallel((
        endless(a.writer()),
        stage(a.reader(), b.writer()),
        poison_from_the_end(b.reader(), n),
    ))
    .unwrap();
    assert_eq!(
        (p, s, k),
        (
            Err(ChannelError::Poisoned),
            Err(ChannelError::Poisoned),
            Err(ChannelError::Poisoned)
        ),
        "capacities {a_capacity} and {b_capacity}"
    );
}

#[test]
fn poison_at_the_consumer_end_shuts_down_the_producers_upstream() {
    poison_reaches_the_producer("poison-up-a", 4, "poison-up-b", 4, 100);
}

#[test]
fn a_crashed_process_poisons_its_channels_so_peers_do_not_hang() {
    let ch = Channel::<u64>::named("crash-peer").unwrap();
    let r = Parallel((crash_holding(ch.writer()), consumer(ch.reader())));
    match r {
        Err(Error::ProcessFailed { name, .. }) => assert!(name.ends_with("crash_holding")),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[process]
fn crash_holding(out: ChannelOut<u64>) {
    out.write(1).unwrap();
    // SAFETY: dying by a signal while holding a channel end is the point of this process.
    unsafe { libc::raise(libc::SIGKILL) };
}

#[process]
fn invert_block(
    inp: ChannelIn<SharedBlock>,
    out: ChannelOut<SharedBlock>,
) -> Result<u64, ChannelError> {
    let mut block = inp.read()?;
    let sum = block.iter().map(|&b| u64::from(b)).sum();
    for b in block.iter_mut() {
        *b = !*b;
    }
    out.write(block)?;
    Ok(sum)
}

#[test]
fn a_shared_block_moves_between_processes_and_back_without_copies() {
    let there = Channel::<SharedBlock>::named("block-there").unwrap();
    let back = Channel::<SharedBlock>::named("block-back").unwrap();
    let (w, r) = (there.writer(), back.reader());
    let h = Spawn(invert_block(there.reader(), back.writer())).unwrap();
    let data: Vec<u8> = (0..(8 << 20)).map(|i| (i % 253) as u8).collect();
    let block = SharedBlock::from_slice(&data).unwrap();
    let addr = block.as_ptr();
    w.write(block).unwrap();
    let got = r.read().unwrap();
    assert_eq!(
        got.as_ptr(),
        addr,
        "the block came back at the same address: no copy"
    );
    assert!(got.iter().zip(&data).all(|(g, d)| *g == !*d));
    assert_eq!(
        h.join().unwrap(),
        Ok(data.iter().map(|&b| u64::from(b)).sum())
    );
}

#[test]
fn a_stage_that_returns_poisoned_poisons_its_input_before_retiring_it() {
    // Its input end must reach the producer as poison, never as a retire.
    for round in 0..60 {
        poison_reaches_the_producer(
            &format!("poison-return-a-{round}"),
            round % 3,
            &format!("poison-return-b-{round}"),
            0,
            20,
        );
    }
}
