//! The kill soak: a busy any-to-any network (rendezvous and buffered channels, messages inline
//! in a slot and in blocks) in which a random child is killed with SIGKILL at a random moment,
//! round after round. Each round must end within 2 s with an error naming the victim, every
//! acknowledged write must have been read exactly once (but for at most one message held by a
//! killed reader), nothing twice, each writer's messages in order at each reader, and nothing
//! left behind (no process, nothing in /dev/shm).
//!
//! 30 rounds by default; `PYCSP_SOAK_ROUNDS=300 cargo test --test kill_soak` for a long soak.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pycsp::prelude::*;
use pycsp::{Bytes, Error};

mod common;

/// A message: who wrote it, on which channel, its number there, and a payload whose bytes
/// follow from those (inline in a slot when short, in a block when long).
type Msg = (u32, u8, u64, Bytes);
/// What a writer acknowledges and a reader reports: (writer, channel, number).
type Id = (u32, u8, u64);

fn payload(writer: u32, seq: u64) -> Vec<u8> {
    let len = ((seq * 37 + u64::from(writer) * 11) % 400) as usize;
    (0..len)
        .map(|i| (writer as u64 * 31 + seq + i as u64) as u8)
        .collect()
}

/// Writes to both channels in turn, acknowledging each write that returned `Ok`.
#[process]
fn writer(chans: [ChannelOut<Msg>; 2], acks: ChannelOut<Id>, id: u32) -> Result<(), ChannelError> {
    for seq in 0.. {
        for (c, out) in chans.iter().enumerate() {
            out.write((id, c as u8, seq, Bytes::from(payload(id, seq))))?;
            acks.write((id, c as u8, seq))?;
        }
    }
    Ok(())
}

/// Reads one channel and reports every message it read, with whether its payload was intact.
#[process]
fn reader(
    inp: ChannelIn<Msg>,
    seen: ChannelOut<(u32, Id, bool)>,
    me: u32,
) -> Result<(), ChannelError> {
    for m in inp.iter() {
        let (w, c, seq, bytes) = m?;
        seen.write((me, (w, c, seq), *bytes == payload(w, seq)))?;
    }
    Ok(())
}

/// Reads `inp` until it ends (the soak's bookkeeping channels are drained while it runs).
fn drain<T: serde::de::DeserializeOwned + Send + 'static>(
    inp: ChannelIn<T>,
) -> std::thread::JoinHandle<Vec<T>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        while let Ok(x) = inp.read() {
            v.push(x);
        }
        v
    })
}

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

fn shm_entries() -> HashSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

const WRITERS: u32 = 3;
const READERS: u32 = 4; // two on each channel

#[test]
fn a_random_child_killed_at_a_random_moment_loses_no_acknowledged_message() {
    let _serial = common::timing();
    let rounds: usize = std::env::var("PYCSP_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let seed = 0x50A4_u64 ^ u64::from(std::process::id());
    let mut rng = seed;
    let shm_before = shm_entries();
    let channels_before = pycsp::shared_memory_usage().unwrap().channels;
    let started = Instant::now();
    let mut total = 0;
    for round in 0..rounds {
        let rendezvous = Channel::<Msg>::named(&common::unique("soak-rv")).unwrap();
        let buffered = Channel::<Msg>::named_buffered(&common::unique("soak-buf"), 8).unwrap();
        let acks = Channel::<Id>::named_buffered(&common::unique("soak-acks"), 1 << 12).unwrap();
        // One report channel per reader: a killed reader fails only its own.
        let seen: Vec<Channel<(u32, Id, bool)>> = (0..READERS)
            .map(|_| Channel::named_buffered(&common::unique("soak-seen"), 1 << 12).unwrap())
            .collect();
        let chans = [&rendezvous, &buffered];
        let acks_in = drain(acks.reader());
        let seen_in: Vec<_> = seen.iter().map(|s| drain(s.reader())).collect();
        let h = Spawn((
            replicate(WRITERS as usize, |i| {
                writer(
                    [rendezvous.writer(), buffered.writer()],
                    acks.writer(),
                    i as u32,
                )
            }),
            replicate(READERS as usize, |i| {
                reader(chans[i % 2].reader(), seen[i].writer(), i as u32)
            }),
        ))
        .unwrap();
        drop((rendezvous, buffered, acks, seen));
        let pids = h.pids();
        let victim = (lcg(&mut rng) % pids.len() as u64) as usize;
        let ctx = format!("round {round}, victim {victim}, seed {seed:#x}");
        std::thread::sleep(Duration::from_micros(500 + lcg(&mut rng) % 15_000));
        // SAFETY: sending SIGKILL to our own child process.
        unsafe { libc::kill(pids[victim] as libc::pid_t, libc::SIGKILL) };
        let killed = Instant::now();
        let r = h.join();
        let took = killed.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "{ctx}: ended {took:?} after the kill"
        );
        match r {
            Err(Error::ProcessFailed { pid, name, .. }) => {
                assert_eq!(pid, pids[victim], "{ctx}: {name} reported, not the victim")
            }
            other => panic!("{ctx}: expected the victim to be reported, got {other:?}"),
        }
        let acked = acks_in.join().unwrap();
        total += acked.len();
        let seen = seen_in.into_iter().flat_map(|s| s.join().unwrap());
        // Each message read once, intact, each writer's in order at each reader.
        let mut delivered = HashSet::new();
        let mut last: HashMap<(u32, u32, u8), u64> = HashMap::new();
        for (r, id, intact) in seen {
            assert!(intact, "{ctx}: message {id:?} corrupted");
            assert!(delivered.insert(id), "{ctx}: message {id:?} read twice");
            if let Some(prev) = last.insert((r, id.0, id.1), id.2) {
                assert!(prev < id.2, "{ctx}: reader {r} read {id:?} after {prev}");
            }
        }
        // Every acknowledged write was read, but for one per channel a killed reader held.
        let killed_reader = victim >= WRITERS as usize;
        let mut missing: HashMap<u8, u32> = HashMap::new();
        for id in acked {
            if !delivered.contains(&id) {
                *missing.entry(id.1).or_default() += 1;
            }
        }
        for (c, n) in missing {
            let held = killed_reader && (victim - WRITERS as usize) % 2 == c as usize;
            assert!(
                held && n <= 1,
                "{ctx}: {n} acknowledged messages of channel {c} never read"
            );
        }
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{ctx}: process {pid} is left behind"
            );
        }
    }
    assert_eq!(shm_entries(), shm_before, "something was left in /dev/shm");
    // Every channel of every round was freed, those the killed process held included.
    assert_eq!(
        pycsp::shared_memory_usage().unwrap().channels,
        channels_before,
        "channels of the rounds are still alive"
    );
    println!(
        "{rounds} rounds of SIGKILL in a busy network of {} processes in {:?}: {total} \
         acknowledged messages, each read once",
        WRITERS + READERS,
        started.elapsed()
    );
}
