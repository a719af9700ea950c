//! Channels with a life (issue 14): anonymous channels, freed when their last handle and end
//! are gone in every process (dead ones included), names that can be used again, no cap on
//! how many channels a network makes over its life, and memory given back.

use std::sync::Mutex;

use pycsp::prelude::*;
use pycsp::{shared_memory_usage, Bytes, SharedBlock, Usage};

mod common;

/// The tests of this binary share one network (the test process's arena) and look at its
/// totals: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn usage() -> Usage {
    shared_memory_usage().unwrap()
}

#[test]
fn a_dropped_named_channel_frees_its_name() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let a = Channel::<u64>::named("lifecycle-reused").unwrap();
    assert!(matches!(
        Channel::<u64>::named("lifecycle-reused"),
        Err(ChannelError::NameInUse(_))
    ));
    let end = a.writer();
    drop(a);
    // An end still holds the channel (and its name).
    assert!(matches!(
        Channel::<u64>::named("lifecycle-reused"),
        Err(ChannelError::NameInUse(_))
    ));
    assert!(Channel::<u64>::open("lifecycle-reused").is_ok());
    drop(end);
    let b = Channel::<String>::named("lifecycle-reused").expect("the name is free again");
    let (w, r) = (b.writer(), b.reader());
    assert!(matches!(
        Channel::<u64>::open("lifecycle-reused"),
        Err(ChannelError::TypeMismatch { .. })
    ));
    drop((w, r));
}

#[test]
fn creating_and_dropping_100k_channels_keeps_shared_memory_flat() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let round = |i: u64| {
        let ch = Channel::<u64>::buffered(4).unwrap();
        let (w, r) = (ch.writer(), ch.reader());
        w.write(i).unwrap();
        assert_eq!(r.read().unwrap(), i);
        let named = Channel::<u64>::named(&format!("lifecycle-name-{i}")).unwrap();
        drop((ch, w, r, named));
    };
    for i in 0..1000 {
        round(i);
    }
    let before = usage();
    for i in 1000..100_000 {
        round(i);
    }
    let after = usage();
    assert_eq!(after.channels, before.channels, "{before:?} -> {after:?}");
    assert_eq!(after.names, before.names, "{before:?} -> {after:?}");
    // The same few headers, rings and directory tables are used again and again.
    assert!(
        after.allocated <= before.allocated + (1 << 20),
        "shared memory grew from {before:?} to {after:?}"
    );
}

#[process]
fn reply_server(requests: ChannelIn<(u64, ChannelOut<u64>)>) -> Result<u64, ChannelError> {
    let mut n = 0;
    for request in requests.iter() {
        let (x, reply) = request?;
        reply.write(x * 2)?;
        n += 1;
    }
    Ok(n)
}

#[test]
fn a_reply_channel_per_request_across_processes_runs_100k_requests_in_flat_memory() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let requests = Channel::<(u64, ChannelOut<u64>)>::new().unwrap();
    let server = Spawn(reply_server(requests.reader())).unwrap();
    let out = requests.writer();
    drop(requests);
    let ask = |x: u64| {
        let reply = Channel::<u64>::new().unwrap();
        out.write((x, reply.writer())).unwrap();
        assert_eq!(reply.reader().read().unwrap(), x * 2);
    };
    for x in 0..1000 {
        ask(x);
    }
    let before = usage();
    for x in 1000..100_000 {
        ask(x);
    }
    let after = usage();
    drop(out);
    assert_eq!(server.join().unwrap(), Ok(100_000));
    assert!(
        after.allocated <= before.allocated + (1 << 20),
        "shared memory grew from {before:?} to {after:?}"
    );
    assert!(
        after.resident <= before.resident + (4 << 20),
        "resident shared memory grew from {before:?} to {after:?}"
    );
    assert!(
        after.channels <= before.channels + 2,
        "{before:?} -> {after:?}"
    );
}

#[process]
fn hold_and_wait(_held: ChannelIn<u64>, gate: ChannelIn<u8>) -> Result<(), ChannelError> {
    gate.read()?; // never comes: the test kills this process
    Ok(())
}

#[process]
fn create_named_and_wait(name: String, gate: ChannelIn<u8>) -> Result<(), ChannelError> {
    let _mine = Channel::<u64>::named(&name)?;
    gate.read()?;
    Ok(())
}

#[test]
fn ends_and_channels_of_a_killed_process_are_freed_when_it_is_reaped() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let base = usage().channels;
    let held = Channel::<u64>::new().unwrap();
    let gate = Channel::<u8>::new().unwrap();
    let reader = held.reader();
    let name = common::unique("lifecycle-killed");
    let h = Spawn((
        hold_and_wait(reader, gate.reader()),
        create_named_and_wait(name.clone(), gate.reader()),
    ))
    .unwrap();
    let w = held.writer();
    drop(held);
    // The child made its channel once `open` finds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Channel::<u64>::open(&name).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never made {name}"
        );
        std::thread::yield_now();
    }
    for pid in h.pids() {
        // SAFETY: kill only sends a signal to the processes this test started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    assert!(h.join().is_err());
    // The killed reader is marked: the writer learns who died...
    assert!(matches!(w.write(1), Err(ChannelError::PeerDied { .. })));
    drop(w);
    drop(gate);
    // ... and every channel is freed: the held one, the gate, the child's own named one,
    // whose name can be used again.
    assert_eq!(usage().channels, base);
    let again = Channel::<u64>::named(&name).expect("the dead child's name is free");
    drop(again);
}

#[process]
fn leak_an_end(out: ChannelOut<u64>) -> Result<(), ChannelError> {
    out.write(7)?;
    std::mem::forget(out);
    Ok(())
}

#[test]
fn an_end_a_process_leaked_retires_when_the_process_ends() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let base = usage().channels;
    let ch = Channel::<u64>::buffered(4).unwrap();
    let r = ch.reader();
    let (left,) = Parallel((leak_an_end(ch.writer()),)).unwrap();
    assert_eq!(left, Ok(()));
    drop(ch);
    assert_eq!(r.read(), Ok(7));
    assert_eq!(r.read(), Err(ChannelError::Retired));
    drop(r);
    assert_eq!(usage().channels, base);
}

#[test]
fn blocks_of_drained_messages_go_back_to_the_kernel_above_the_cache() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = usage();
    {
        let ch = Channel::<Bytes>::buffered(256).unwrap();
        let (w, r) = (ch.writer(), ch.reader());
        for i in 0..256u32 {
            w.write(Bytes::from(vec![i as u8; 1 << 20])).unwrap();
        }
        for _ in 0..256 {
            assert_eq!(r.read().unwrap().len(), 1 << 20);
        }
    }
    let after = usage();
    // 256 MiB went through; at most the cache (32 MiB) and some slack stay.
    assert!(
        after.resident <= before.resident + (48 << 20),
        "resident shared memory went from {} to {} MiB",
        before.resident >> 20,
        after.resident >> 20
    );
    assert!(after.cached <= 32 << 20, "{after:?}");
}

#[test]
fn a_large_zeroed_block_costs_no_memory_until_written_and_a_reused_one_is_zero() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let len = SharedBlock::max_len().unwrap().min(8 << 30);
    let before = usage().resident;
    let big = SharedBlock::zeroed(len).unwrap();
    assert_eq!(big.len(), len);
    let during = usage().resident;
    assert!(
        during <= before + (1 << 20),
        "zeroed({len}) made {} bytes resident",
        during - before
    );
    assert!(big[len - 4096..].iter().all(|&b| b == 0));
    drop(big);
    // A block used before comes back zeroed.
    let mut dirty = SharedBlock::new(64 << 10).unwrap();
    dirty.fill(0xff);
    drop(dirty);
    let clean = SharedBlock::zeroed(64 << 10).unwrap();
    assert!(clean.iter().all(|&b| b == 0));
}

/// One select that waits (nothing is ever written to `quiet`) until its timeout guard fires:
/// the select parks, so its thread needs a waiter record in shared memory.
fn select_that_waits(quiet: &ChannelIn<u64>) -> Result<(), ChannelError> {
    let chosen = Alternation::new()
        .input(quiet, |_| 0)
        .timeout(std::time::Duration::from_millis(1), || 1)
        .pri_select()?;
    assert_eq!(chosen.value, 1, "nothing is written to the quiet channel");
    Ok(())
}

#[process]
fn waits_in_a_select(quiet: ChannelIn<u64>) -> Result<(), ChannelError> {
    select_that_waits(&quiet)
}

#[process]
fn selects_then_hangs(quiet: ChannelIn<u64>, ready: ChannelOut<u8>) -> Result<(), ChannelError> {
    select_that_waits(&quiet)?;
    ready.write(1)?;
    quiet.read()?; // never comes: the test kills this process
    Ok(())
}

#[test]
fn processes_and_threads_that_select_and_end_keep_shared_memory_flat() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let quiet = Channel::<u64>::new().unwrap();
    let _writer = quiet.writer(); // never writes: every select times out
    let round = || {
        Parallel(waits_in_a_select(quiet.reader()))
            .unwrap()
            .unwrap();
        let r = quiet.reader();
        std::thread::spawn(move || select_that_waits(&r))
            .join()
            .unwrap()
            .unwrap();
        // Killed after its select: its parent takes the record back when it reaps it. (Its
        // channels are marked with its death: each round makes its own.)
        let (doomed, ready) = (
            Channel::<u64>::new().unwrap(),
            Channel::<u8>::new().unwrap(),
        );
        let killed = Spawn(selects_then_hangs(doomed.reader(), ready.writer())).unwrap();
        ready.reader().read().unwrap();
        killed.kill();
        assert!(killed.join().is_err());
    };
    for _ in 0..20 {
        round();
    }
    let before = usage();
    for _ in 0..300 {
        round();
    }
    let after = usage();
    // Each ended (or killed) process's and thread's waiter record is used again by the next
    // one (a record takes about 3 KiB: 900 of them would be about 3 MiB).
    assert!(
        after.allocated <= before.allocated + (128 << 10),
        "shared memory grew from {before:?} to {after:?}"
    );
}

/// The length of the message of a select that ends before its process is killed.
const EARLIER: usize = 300 << 10;

/// Offers a message of `len` bytes on `out` (nobody reads it) and on `nothing` (nobody reads
/// it either) in one select, after saying it is about to. Before, a select whose third guard
/// offers a message nobody takes ends by its timeout (its block is freed then, and must not
/// be freed again when this process dies).
#[process]
fn offers_and_hangs(
    out: ChannelOut<Vec<u8>>,
    nothing: ChannelOut<Vec<u8>>,
    ready: ChannelOut<u8>,
    len: usize,
) -> Result<(), ChannelError> {
    let chosen = Alternation::new()
        .output(&out, vec![3u8; 1], || false)
        .output(&out, vec![3u8; 2], || false)
        .output(&nothing, vec![3u8; EARLIER], || false)
        .timeout(std::time::Duration::from_millis(5), || true)
        .pri_select()?;
    assert!(chosen.value, "nobody reads");
    let (a, b) = (vec![1u8; len], vec![2u8; len]);
    ready.write(1)?;
    Alternation::new()
        .output(&out, a, || ())
        .output(&nothing, b, || ())
        .pri_select()?;
    Ok(())
}

#[test]
fn a_process_killed_in_a_select_gives_back_the_messages_it_offered() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let len = 1 << 20;
    let round = || {
        let (c, d, ready) = (
            Channel::<Vec<u8>>::new().unwrap(),
            Channel::<Vec<u8>>::new().unwrap(),
            Channel::<u8>::new().unwrap(),
        );
        let (_r, _s) = (c.reader(), d.reader()); // never read: the select waits
        let killed = Spawn(offers_and_hangs(
            c.writer(),
            d.writer(),
            ready.writer(),
            len,
        ))
        .unwrap();
        ready.reader().read().unwrap();
        // Killed once it sleeps in its select: its two messages are staged in shared memory.
        let network = pycsp::Network::attach(std::process::id()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !network
            .snapshot()
            .processes
            .iter()
            .any(|p| p.name.contains("offers_and_hangs") && p.blocked)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "it never slept in its select"
            );
            std::thread::yield_now();
        }
        killed.kill();
        assert!(killed.join().is_err());
    };
    for _ in 0..3 {
        round();
    }
    let before = usage();
    for _ in 0..20 {
        round();
    }
    let after = usage();
    // Two blocks of 1 MiB a round, 40 MiB if they were kept.
    assert!(
        after.allocated <= before.allocated + (4 << 20),
        "shared memory grew from {before:?} to {after:?}"
    );
    // No block was freed twice (it would be handed out twice): blocks of the earlier
    // select's size are each their own.
    let mut blocks: Vec<SharedBlock> = (0..30)
        .map(|_| SharedBlock::new(EARLIER).unwrap())
        .collect();
    for (i, b) in blocks.iter_mut().enumerate() {
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(
            b[..8],
            (i as u64).to_le_bytes(),
            "block {i} is another's too"
        );
    }
}
