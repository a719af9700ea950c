//! The delivery contract of buffered socket channels: a remote writer's messages travel in
//! batches with a window of unconfirmed ones (at most the channel's capacity), arrive in order,
//! `flush` waits for the host's confirmation, and a writer whose connection is lost learns how
//! many of its messages the host confirmed and how many it did not; a remote reader asks for
//! messages ahead while it keeps up, one while it works on each, and gives back what it did
//! not read.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pycsp::net::{ENV_KEY, ENV_KEY_FILE};
use pycsp::prelude::*;
use pycsp::{ProcessSet, Spawned};

mod common;

/// How long a test waits for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(10);

/// A placement here whose remote reading ends keep what they asked for ahead while their
/// user does not read (`PYCSP_REMOTE_HOLD_MS=never`): for what happens to messages a remote
/// reader holds when it leaves, dies, or takes them at last. (By default it gives them back
/// after `HOLD_FOR_USER`.)
fn holding() -> Placement {
    Placement::launcher(&format!("env {}=never {{cmd}}", pycsp::net::ENV_HOLD_MS))
}

fn tcp(name: &str) -> String {
    format!("tcp://127.0.0.1:0/{name}")
}

/// A channel hosted here at a fresh TCP port (`capacity` 0: rendezvous).
fn hosted_tcp<T: serde::Serialize + serde::de::DeserializeOwned>(
    name: &str,
    capacity: usize,
) -> Channel<T> {
    Channel::<T>::named_buffered(&tcp(name), capacity).unwrap()
}

fn local(name: &str) -> String {
    format!(
        "local://{}/{name}",
        common::unique(&format!("pycsp-delivery-{}", std::process::id()))
    )
}

#[process]
fn count_up(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    Ok(())
}

/// Reads until the channel retires; every value must be the next one.
fn read_in_order(r: &ChannelIn<u64>) -> u64 {
    let mut next = 0;
    loop {
        match r.read() {
            Ok(v) => {
                assert_eq!(v, next, "out of order");
                next += 1;
            }
            Err(ChannelError::Retired) => return next,
            Err(e) => panic!("after {next} messages: {e}"),
        }
    }
}

#[test]
fn a_remote_buffered_writer_streams_in_batches_and_every_message_arrives_once_in_order() {
    for at in [tcp("stream"), local("stream")] {
        let c = Channel::<u64>::named_buffered(&at, 64).unwrap();
        let r = c.reader();
        let n = 20_000;
        let h = Spawn(count_up(c.writer(), n).on(Placement::launcher("{cmd}"))).unwrap();
        drop(c);
        // The writer's end retires once its process returns: after every message it wrote.
        assert_eq!(read_in_order(&r), n, "{at}");
        h.join().unwrap().unwrap();
    }
}

#[process]
fn read_all_in_order(input: ChannelIn<u64>) -> Result<u64, ChannelError> {
    Ok(read_in_order(&input))
}

#[test]
fn a_remote_reader_streams_and_every_message_arrives_once_in_order() {
    for at in [tcp("rstream"), local("rstream")] {
        let c = Channel::<u64>::named_buffered(&at, 64).unwrap();
        let w = c.writer();
        let n = 20_000;
        let h = Spawn(read_all_in_order(c.reader()).on(Placement::launcher("{cmd}"))).unwrap();
        drop(c);
        for i in 0..n {
            w.write(i).unwrap();
        }
        drop(w);
        assert_eq!(h.join().unwrap().unwrap(), n, "{at}");
    }
}

/// Reads until the channel retires, pausing about as long as the hold (1.6-2.6 ms) every
/// 25 messages: its pump takes back what it asked for ahead, and the user often reads again
/// at that very moment. Every value must be the next one.
#[process]
fn read_in_order_pausing(input: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let mut next = 0u64;
    loop {
        match input.read() {
            Ok(v) => {
                assert_eq!(v, next, "out of order");
                next += 1;
                if next % 25 == 0 {
                    std::thread::sleep(Duration::from_micros(1600 + (next * 37) % 1000));
                }
            }
            Err(ChannelError::Retired) => return Ok(next),
            Err(e) => return Err(e),
        }
    }
}

/// A remote reader that pauses for about the hold, again and again, gets every message once
/// and in order: its pump takes back the last messages, never one older than one its user
/// took meanwhile (it took them back from the oldest end, and a user that read at that
/// moment lost one message and read another twice).
#[test]
fn a_remote_reader_that_pauses_for_the_hold_again_and_again_reads_every_message_once_in_order() {
    let c = Channel::<u64>::named_buffered(&local("pausing"), 64).unwrap();
    let w = c.writer();
    let n = 3_000;
    let h = Spawn(read_in_order_pausing(c.reader()).on(Placement::launcher("{cmd}"))).unwrap();
    drop(c);
    for i in 0..n {
        w.write(i).unwrap();
    }
    drop(w);
    assert_eq!(h.join().unwrap().unwrap(), n);
}

/// Reads until the channel retires, pausing 300 us every `every` messages (0: never);
/// returns what it read.
#[process]
fn read_share(input: ChannelIn<u64>, every: u64) -> Result<Vec<u64>, ChannelError> {
    let mut got = Vec::new();
    loop {
        match input.read() {
            Ok(v) => {
                got.push(v);
                if every > 0 && got.len() as u64 % every == 0 {
                    std::thread::sleep(Duration::from_micros(300));
                }
            }
            Err(ChannelError::Retired) => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

/// A remote reader and a local one share a small buffered channel: every message is read
/// once. The remote reader's pump asks for messages ahead; the host holds each place in its
/// channel until the pump acknowledges the message, and the writer here, once it has gone
/// round the ring, waits for that place. Once the pump looked at what its user took only
/// before it waited for the host: a take during that wait went unacknowledged, the host had
/// nothing more to send (the local reader took the rest), and the writer, the two readers and
/// the pump waited for good, within the first few dozen messages (and the host's connection
/// thread, waiting for a message, read the `Ack` only 100 ms later).
#[test]
fn a_remote_reader_and_a_local_one_share_a_small_buffered_channel_and_read_every_message_once() {
    let n = 3_000u64;
    for round in 0..4 {
        for at in [
            tcp(&format!("share{round}")),
            local(&format!("share{round}")),
        ] {
            let c = Channel::<u64>::named_buffered(&at, 2).unwrap();
            let remote = Spawn(read_share(c.reader(), 7).on(Placement::launcher("{cmd}"))).unwrap();
            let here = Spawn(read_share(c.reader(), 0)).unwrap();
            let w = c.writer();
            drop(c);
            let writer = std::thread::spawn(move || {
                for i in 0..n {
                    w.write(i).unwrap();
                }
            });
            type Reader = pycsp::Process<Result<Vec<u64>, ChannelError>>;
            let join = |h: Spawned<Reader>, who: &str| {
                h.join_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| panic!("{at}, round {round}: the {who} reader hung"))
                    .unwrap()
                    .unwrap()
            };
            let (a, b) = (join(remote, "remote"), join(here, "local"));
            writer.join().unwrap();
            let (from_remote, from_here) = (a.len(), b.len());
            let mut all: Vec<u64> = a.into_iter().chain(b).collect();
            all.sort_unstable();
            assert!(
                all.iter().copied().eq(0..n),
                "{at}, round {round}: not every message once ({from_remote} read there, \
                 {from_here} here)"
            );
        }
    }
}

/// Writes `n` messages from each of `threads` threads through clones of `out`: thread `t`'s
/// `i`-th message is `t << 32 | i`.
#[process]
fn write_from_threads(out: ChannelOut<u64>, threads: u64, n: u64) -> Result<(), ChannelError> {
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..threads)
            .map(|t| {
                let out = out.clone();
                s.spawn(move || (0..n).try_for_each(|i| out.write(t << 32 | i)))
            })
            .collect();
        writers.into_iter().try_for_each(|w| w.join().unwrap())
    })
}

/// Threads of a process writing at once through clones of one remote buffered end: every
/// message arrives once, each thread's in order. A user thread sends the first message
/// after a pause on the connection itself and counts it as not confirmed; the pump, taking
/// the connection back, reads its confirmation and counts it off. Once the count was made
/// after the connection went back: the pump could count the confirmation off first, its
/// count went below zero, it panicked (a debug build; a release build's count wrapped), and
/// the writing threads waited for room for good (within the first two rounds here).
#[test]
fn threads_writing_through_one_remote_buffered_end_deliver_every_message_once_in_order() {
    let (threads, n) = (4u64, 300u64);
    for round in 0..4 {
        for capacity in [1, 3, 16] {
            let c = hosted_tcp::<u64>(&format!("threads{round}-{capacity}"), capacity);
            let h =
                Spawn(write_from_threads(c.writer(), threads, n).on(Placement::launcher("{cmd}")))
                    .unwrap();
            let r = c.reader();
            drop(c);
            let mut next = vec![0u64; threads as usize];
            loop {
                match r.read_timeout(Duration::from_secs(30)) {
                    Ok(v) => {
                        let (t, i) = ((v >> 32) as usize, v & 0xffff_ffff);
                        assert_eq!(i, next[t], "round {round}, capacity {capacity}: thread {t}");
                        next[t] += 1;
                    }
                    Err(ChannelError::Retired) => break,
                    Err(e) => panic!(
                        "round {round}, capacity {capacity}: {e} with {next:?} read of each \
                         thread's {n}"
                    ),
                }
            }
            assert_eq!(
                next,
                vec![n; threads as usize],
                "round {round}, capacity {capacity}"
            );
            h.join().unwrap().unwrap();
        }
    }
}

#[process]
fn read_some(input: ChannelIn<u64>, n: usize) -> Result<Vec<u64>, ChannelError> {
    (0..n).map(|_| input.read()).collect()
}

#[test]
fn a_remote_reader_that_leaves_gives_back_what_it_asked_for_ahead() {
    for at in [tcp("rleave"), local("rleave")] {
        let c = Channel::<u64>::named_buffered(&at, 64).unwrap();
        let (w, r) = (c.writer(), c.reader());
        let n = 10_000;
        // Written while the placed reader reads fast (its window grows), then leaves.
        let writer = std::thread::spawn(move || {
            for i in 0..n {
                w.write(i).unwrap();
            }
        });
        let h = Spawn(read_some(c.reader(), 500).on(Placement::launcher("{cmd}"))).unwrap();
        let mut seen = h.join().unwrap().unwrap();
        drop(c);
        assert_eq!(seen.len(), 500);
        // Everything else, including what it had asked for and not read, is read here.
        loop {
            match r.read_timeout(PROMPT) {
                Ok(v) => seen.push(v),
                Err(ChannelError::Retired) => break,
                Err(e) => panic!("{at}: after {} messages: {e}", seen.len()),
            }
        }
        writer.join().unwrap();
        seen.sort();
        let twice: Vec<u64> = seen
            .windows(2)
            .filter(|p| p[0] == p[1])
            .map(|p| p[0])
            .collect();
        seen.dedup();
        let lost: Vec<u64> = (0..n).filter(|i| seen.binary_search(i).is_err()).collect();
        assert_eq!(
            (twice, lost),
            (vec![], vec![]),
            "{at}: every message exactly once"
        );
    }
}

/// Opens `at` as a client, reads with nothing to read (so its read waits at the host), then
/// retires its end: how long the retirement took, in milliseconds.
#[process]
fn leave_while_waiting(at: String) -> Result<u64, ChannelError> {
    let r = Channel::<u64>::open(&at)?.reader();
    assert_eq!(
        r.read_timeout(Duration::from_millis(100)),
        Err(ChannelError::Timeout)
    );
    let t = std::time::Instant::now();
    drop(r);
    Ok(t.elapsed().as_millis() as u64)
}

#[test]
fn a_remote_reader_that_leaves_while_its_read_waits_at_the_host_retires_at_once() {
    for capacity in [0, 4] {
        let c =
            Channel::<u64>::named_buffered(&tcp(&format!("waiting-{capacity}")), capacity).unwrap();
        let _held = c.writer();
        // The child opens the channel by its name, which says the port it listens on.
        let at = c.name().to_string();
        let ms = Parallel(leave_while_waiting(at).on(Placement::launcher("{cmd}")))
            .unwrap()
            .unwrap();
        // Its retirement reaches the host, which answers: well within LOSS_TIMEOUT (5 s).
        assert!(ms < 2_000, "capacity {capacity}: {ms} ms");
    }
}

#[process]
fn read_then_die(input: ChannelIn<u64>, n: usize) -> Result<(), ChannelError> {
    for _ in 0..n {
        input.read()?;
    }
    // Killed holding what it asked for ahead (and perhaps some it took and did not
    // acknowledge yet).
    std::process::abort();
}

#[test]
fn a_remote_reader_that_dies_holding_messages_asked_ahead_loses_none() {
    for at in [tcp("die"), local("die")] {
        let c = Channel::<u64>::named_buffered(&at, 64).unwrap();
        let (w, r) = (c.writer(), c.reader());
        let n = 5_000;
        // Counts the writes that returned Ok: each is in the channel's buffer.
        let writer = std::thread::spawn(move || (0..n).take_while(|&i| w.write(i).is_ok()).count());
        let h = Spawn(read_then_die(c.reader(), 1_000).on(Placement::launcher("{cmd}"))).unwrap();
        assert!(h.join().is_err(), "{at}: the reader died");
        drop(c);
        let written = writer.join().unwrap() as u64;
        // Every message written after those it read is read here (those it read may come
        // again: it may not have acknowledged the last ones), then the dead peer's error.
        let (mut here, end) = read_to_the_end(&r);
        assert!(matches!(end, ChannelError::PeerDied { .. }), "{at}: {end}");
        here.sort();
        here.dedup();
        let lost: Vec<u64> = (1_000..written)
            .filter(|i| here.binary_search(i).is_err())
            .collect();
        assert_eq!(
            lost,
            vec![],
            "{at}: {written} written, nothing acknowledged is lost"
        );
    }
}

/// A remote reader that keeps what it asks for ahead (see [`holding`]) asks for one message
/// ahead while its user works on each: the rest are for other readers.
#[test]
fn a_remote_reader_that_works_on_each_message_asks_for_one_ahead() {
    let (r, first, gate, h) = held_by_a_remote_reader("jobs", |jobs, took, gate| {
        common::take_one_then_wait(jobs, took, gate).on(holding())
    });
    // It works on its first job: it holds at most one more, the rest are for other readers.
    let mut here: Vec<u64> = (0..14).map(|_| r.read_timeout(PROMPT).unwrap()).collect();
    gate.write(()).unwrap();
    let second = h.join().unwrap().unwrap();
    here.extend([first, second]);
    here.sort();
    assert_eq!(here, (0..16).collect::<Vec<_>>());
}

/// The bytes of message `i` of a stream of mixed sizes: small ones that share a system call,
/// and ones longer than a batch, sent on their own straight from their block.
fn mixed(i: u32) -> Vec<u8> {
    let len = if i % 4 == 0 {
        200_000
    } else {
        (i % 50) as usize
    };
    vec![i as u8; len]
}

#[process]
fn write_mixed(out: ChannelOut<Vec<u8>>, n: u32) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(mixed(i))?;
    }
    Ok(())
}

#[test]
fn small_and_large_messages_keep_their_order_when_batched() {
    let c = hosted_tcp::<Vec<u8>>("mixed", 16);
    let r = c.reader();
    let n = 400;
    let h = Spawn(write_mixed(c.writer(), n).on(Placement::launcher("{cmd}"))).unwrap();
    drop(c);
    for i in 0..n {
        assert_eq!(r.read().unwrap(), mixed(i), "message {i}");
    }
    assert_eq!(r.read(), Err(ChannelError::Retired));
    h.join().unwrap().unwrap();
}

#[process]
fn write_then_flush(
    out: ChannelOut<u64>,
    told: ChannelOut<String>,
    n: u64,
) -> Result<String, ChannelError> {
    // ANCHOR: flush
    for i in 0..n {
        out.write(i)?; // Ok: in the channel's buffer (part of it may be in this process)
    }
    // Nobody reads on the host yet: what is beyond its buffer stays unconfirmed.
    let early = out.flush(Duration::from_millis(300));
    // ANCHOR_END: flush
    told.write(format!("{early:?}"))?;
    // Now the host reads: everything gets confirmed.
    let late = out.flush(PROMPT);
    Ok(format!("{late:?}"))
}

#[test]
fn flush_waits_until_the_host_confirmed_every_message_and_times_out_while_it_cannot() {
    let capacity = 4;
    let c = hosted_tcp::<u64>("flushed", capacity);
    let told = hosted_tcp::<String>("told", 1);
    let (r, said) = (c.reader(), told.reader());
    // Twice the capacity: the host's buffer holds 4, the writer's window the other 4.
    let n = 2 * capacity as u64;
    let h = Spawn(write_then_flush(c.writer(), told.writer(), n).on(Placement::launcher("{cmd}")))
        .unwrap();
    drop((c, told));
    assert_eq!(said.read().unwrap(), "Err(Timeout)");
    for i in 0..n {
        assert_eq!(r.read().unwrap(), i);
    }
    assert_eq!(h.join().unwrap().unwrap(), "Ok(())");
}

#[test]
fn flush_returns_at_once_on_a_shared_memory_or_rendezvous_end() {
    let c = Channel::<u64>::buffered(4).unwrap();
    c.writer().write(1).unwrap();
    assert_eq!(c.writer().flush(Duration::ZERO), Ok(()));
    let c = hosted_tcp::<u64>("rv", 0);
    assert_eq!(c.writer().flush(Duration::ZERO), Ok(()));
}

#[process]
fn write_too_large(out: ChannelOut<Vec<u8>>) -> Result<String, ChannelError> {
    let max = pycsp::net::frame::MAX_MESSAGE;
    // MessagePack: a 5-byte header, then one byte per zero: one byte over the limit.
    let e = out.write(vec![0u8; max - 4]);
    let after = out.write(vec![1, 2, 3]);
    let flushed = out.flush(PROMPT);
    Ok(format!("{e:?} {after:?} {flushed:?}"))
}

#[test]
fn an_over_size_message_to_a_buffered_remote_channel_is_refused_before_anything_is_sent() {
    let hosted = hosted_tcp::<Vec<u8>>("big", 4);
    let r = hosted.reader();
    // A remote end: the process is placed by a launcher, as on another host.
    let said = Spawn(write_too_large(hosted.writer()).on(Placement::launcher("{cmd}")))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let max = pycsp::net::frame::MAX_MESSAGE;
    assert_eq!(
        said,
        format!(
            "Err(TooLarge {{ channel: {:?}, len: {}, max: {max} }}) Ok(()) Ok(())",
            hosted.name(),
            max + 1
        )
    );
    assert_eq!(r.read().unwrap(), vec![1, 2, 3]);
    drop(hosted);
    assert_eq!(
        r.read(),
        Err(ChannelError::Retired),
        "only the message that fits"
    );
}

// ---- A host killed in the middle of a stream ----

/// This test binary again, as a separate program, running only `separate_host` with `at`.
fn program(at: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "separate_host", "--nocapture"])
        .env("PYCSP_TEST_AT", at)
        .env_remove(ENV_KEY)
        .env_remove(ENV_KEY_FILE)
        .stdin(Stdio::null());
    c
}

/// The capacity of the channel the separate host hosts.
const HOSTED: usize = 32;

/// The separate program: hosts `AT` (buffered, [`HOSTED`]), prints `READY` and the channel's
/// name (with the port the system picked, for port 0), then `GOT v` for each message it
/// reads, until it is killed.
#[test]
#[ignore = "a separate program, started by the test below"]
fn separate_host() {
    let Ok(at) = std::env::var("PYCSP_TEST_AT") else {
        panic!("run by other tests, with PYCSP_TEST_AT");
    };
    let hosted = Channel::<u64>::named_buffered(&at, HOSTED).unwrap();
    let r = hosted.reader();
    println!("READY {}", hosted.name());
    while let Ok(v) = r.read() {
        println!("GOT {v}");
    }
    loop {
        std::thread::park();
    }
}

#[test]
fn a_writer_whose_host_is_killed_mid_stream_learns_how_many_messages_were_not_confirmed() {
    // The host is a separate program; on port 0 it says the port it listens on.
    for at in [tcp("doomed"), local("doomed")] {
        let (var, key) = pycsp::net::key_env().unwrap();
        let mut host = program(&at)
            .env(var, key)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // What the host's reader got, line by line, as it read them.
        let (got_tx, got) = mpsc::channel::<u64>();
        let out = host.stdout.take().unwrap();
        let (ready_tx, ready) = mpsc::channel();
        let lines = std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let l = l.unwrap();
                if let Some(name) = l.strip_prefix("READY ") {
                    ready_tx.send(name.to_string()).unwrap();
                } else if let Some(v) = l.strip_prefix("GOT ") {
                    let _ = got_tx.send(v.parse().unwrap());
                }
            }
        });
        let at = ready.recv_timeout(PROMPT).expect("the host is ready");
        let a = at.clone();
        let writer = std::thread::spawn(move || {
            let w = Channel::<u64>::open(&a).unwrap().writer();
            let mut written = 0u64;
            loop {
                match w.write(written) {
                    Ok(()) => written += 1,
                    // A flush after the loss says the same.
                    Err(e) => return (written, e, w.flush(PROMPT)),
                }
            }
        });
        // Mid-stream: once the host's reader has seen 500 messages.
        let mut seen = Vec::new();
        while seen.len() < 500 {
            seen.push(got.recv_timeout(PROMPT).expect("messages reach the host"));
        }
        host.kill().unwrap(); // SIGKILL
        host.wait().unwrap();
        lines.join().unwrap();
        seen.extend(got.try_iter());
        let (written, e, flushed) = writer.join().unwrap();
        assert_eq!(flushed, Err(e.clone()), "{at}");
        eprintln!(
            "{at}: wrote {written}, the host's reader got {}: {e}",
            seen.len()
        );
        let ChannelError::ConnectionLost {
            confirmed,
            unconfirmed,
            ..
        } = e
        else {
            panic!("{at}: {e:?}");
        };
        // Every `Ok` write is counted once: confirmed, or not.
        assert_eq!(confirmed + unconfirmed, written, "{at}");
        // The writer's part of the buffer (the proxy, of the channel's capacity) and the
        // window (as many in flight): at most twice the capacity were not confirmed.
        assert!(
            unconfirmed <= 2 * HOSTED as u64,
            "{at}: {unconfirmed} unconfirmed"
        );
        // The host's reader got a prefix of the stream, in order, nothing twice.
        assert!(seen.iter().copied().eq(0..seen.len() as u64), "{at}");
        assert!(seen.len() as u64 <= written, "{at}");
        // What the host confirmed and its reader did not get was in its buffer (or in its
        // reader's hands) when it was killed: it died with the host.
        assert!(
            confirmed <= seen.len() as u64 + HOSTED as u64 + 1,
            "{at}: confirmed {confirmed}, read {}",
            seen.len()
        );
    }
}

#[process]
fn take_one_then_die(
    jobs: ChannelIn<u64>,
    took: ChannelOut<u64>,
    gate: ChannelIn<()>,
) -> Result<(), ChannelError> {
    common::take_one_holding_the_next(&jobs, &took)?;
    gate.read()?;
    // Dies holding the message it asked for ahead (its host gives it back).
    std::process::abort();
}

/// Sixteen messages in the buffered channel `name` (over TCP), and a reader placed by
/// `start` (given the channel's reading end, `took` and `gate`) that took the first and holds
/// the next one it asked for ahead; then every writer retires. The channel's reader here, the
/// first message, the gate's writer and the placed process.
fn held_by_a_remote_reader<S: ProcessSet>(
    name: &str,
    start: impl FnOnce(ChannelIn<u64>, ChannelOut<u64>, ChannelIn<()>) -> S,
) -> (ChannelIn<u64>, u64, ChannelOut<()>, Spawned<S>) {
    let c = hosted_tcp::<u64>(name, 16);
    let took = hosted_tcp::<u64>("took", 0);
    let gate = hosted_tcp::<()>("gate", 0);
    let (w, r) = (c.writer(), c.reader());
    for i in 0..16 {
        w.write(i).unwrap();
    }
    let h = Spawn(start(c.reader(), took.writer(), gate.reader())).unwrap();
    let first = took.reader().read().unwrap();
    // Every writer retires: what is left is the 14 messages here and the one it holds.
    drop((w, c));
    (r, first, gate.writer(), h)
}

/// Reads `r` until it fails (or nothing comes for [`PROMPT`]): the messages, then how it ended.
fn read_to_the_end(r: &ChannelIn<u64>) -> (Vec<u64>, ChannelError) {
    let mut got = Vec::new();
    loop {
        match r.read_timeout(PROMPT) {
            Ok(v) => got.push(v),
            Err(e) => return (got, e),
        }
    }
}

/// Reads `r` on another thread, by `read` or in `select!`, until it fails (or nothing comes
/// for [`PROMPT`]): the messages as they come, and then how it ended.
fn read_until_the_end(
    r: ChannelIn<u64>,
    in_select: bool,
) -> (mpsc::Receiver<u64>, std::thread::JoinHandle<ChannelError>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || loop {
        let got = if in_select {
            select! {
                recv(r) -> v => v,
                default(PROMPT) => Err(ChannelError::Timeout),
            }
        } else {
            r.read_timeout(PROMPT)
        };
        match got {
            Ok(v) => tx.send(v).unwrap(),
            Err(e) => return e,
        }
    });
    (rx, reader)
}

/// The placed reader holding a message dies after the reader here read the other 14: the
/// message comes back, and the reader here must get it before it learns that the channel
/// ended.
fn a_reader_gets_what_a_dying_remote_reader_held(name: &str, in_select: bool) {
    let (r, first, gate, h) = held_by_a_remote_reader(name, |jobs, took, gate| {
        take_one_then_die(jobs, took, gate).on(holding())
    });
    let (rx, reader) = read_until_the_end(r, in_select);
    let mut here: Vec<u64> = (0..14).map(|_| rx.recv_timeout(PROMPT).unwrap()).collect();
    // (The gate's write may fail: it may die before its side acknowledged taking it.)
    let _ = gate.write(());
    assert!(h.join().is_err(), "it died");
    let end = reader.join().unwrap();
    here.extend(rx.try_iter());
    here.push(first);
    here.sort();
    assert_eq!(here, (0..16).collect::<Vec<_>>(), "then {end}");
}

#[test]
fn a_reader_does_not_see_the_end_while_a_remote_reader_holds_messages_it_may_give_back() {
    a_reader_gets_what_a_dying_remote_reader_held("held", false);
}

#[test]
fn a_select_does_not_see_the_end_while_a_remote_reader_holds_messages_it_may_give_back() {
    a_reader_gets_what_a_dying_remote_reader_held("held-sel", true);
}

#[test]
fn a_reader_sees_the_end_once_a_remote_reader_took_the_messages_it_held() {
    let (r, first, gate, h) = held_by_a_remote_reader("held-taken", |jobs, took, gate| {
        common::take_one_then_wait(jobs, took, gate).on(holding())
    });
    let (rx, reader) = read_until_the_end(r, false);
    let mut here: Vec<u64> = (0..14).map(|_| rx.recv_timeout(PROMPT).unwrap()).collect();
    // It reads the message it held: the reader here learns that the channel retired (woken
    // by that read's acknowledgement, well before its own deadline).
    gate.write(()).unwrap();
    let second = h.join().unwrap().unwrap();
    let end = reader.join().unwrap();
    assert!(matches!(end, ChannelError::Retired), "{end}");
    here.extend(rx.try_iter());
    here.extend([first, second]);
    here.sort();
    assert_eq!(here, (0..16).collect::<Vec<_>>());
}

/// Writes what it reads to `seen` until the channel ends; that end.
#[process]
fn forward_until_the_end(jobs: ChannelIn<u64>, seen: ChannelOut<u64>) -> ChannelError {
    loop {
        match jobs.read() {
            Ok(v) => {
                if let Err(e) = seen.write(v) {
                    return e;
                }
            }
            Err(e) => return e,
        }
    }
}

#[test]
fn a_remote_reader_does_not_see_the_end_while_another_holds_messages_it_may_give_back() {
    // As `a_reader_does_not_see_the_end_...`, with the other reader remote too: its host
    // waits as the local reader does.
    let c = hosted_tcp::<u64>("held-remote", 16);
    let took = hosted_tcp::<u64>("took", 0);
    let gate = hosted_tcp::<()>("gate", 0);
    let seen = hosted_tcp::<u64>("seen", 0);
    let w = c.writer();
    for i in 0..16 {
        w.write(i).unwrap();
    }
    let dies =
        Spawn(take_one_then_die(c.reader(), took.writer(), gate.reader()).on(holding())).unwrap();
    let first = took.reader().read().unwrap();
    drop(w);
    let other =
        Spawn(forward_until_the_end(c.reader(), seen.writer()).on(Placement::launcher("{cmd}")))
            .unwrap();
    drop(c);
    let seen = seen.reader();
    let mut here: Vec<u64> = (0..14)
        .map(|_| seen.read_timeout(PROMPT).unwrap())
        .collect();
    let _ = gate.writer().write(());
    assert!(dies.join().is_err(), "it died");
    let (rest, end) = read_to_the_end(&seen);
    here.extend(rest);
    assert!(matches!(end, ChannelError::Retired), "{end}");
    // Then the end: the channel retired, and a process holding an end of it died (as
    // either, depending on whether the death was marked when it looked).
    let its_end = other.join().unwrap();
    assert!(
        matches!(
            its_end,
            ChannelError::Retired | ChannelError::PeerDied { .. }
        ),
        "{its_end}"
    );
    here.push(first);
    here.sort();
    assert_eq!(here, (0..16).collect::<Vec<_>>());
}

/// Reads one message, says so on `took`, and leaves its end once `gate` opens, reading no
/// more.
#[process]
fn read_one_then_leave(
    jobs: ChannelIn<u64>,
    took: ChannelOut<u64>,
    gate: ChannelIn<()>,
) -> Result<(), ChannelError> {
    took.write(jobs.read()?)?;
    gate.read()?;
    Ok(())
}

/// A remote reader that takes one message of a channel of `capacity` (0: rendezvous) and then
/// reads no more, without leaving: the `n` messages written here reach the reader here, which
/// then sees the channel's end; the remote reader leaves after that.
fn a_remote_reader_that_reads_no_more_holds_nothing(name: &str, capacity: usize, n: u64) {
    let c = hosted_tcp::<u64>(name, capacity);
    let took = hosted_tcp::<u64>("took", 0);
    let gate = hosted_tcp::<()>("gate", 0);
    let (w, r) = (c.writer(), c.reader());
    let writer = std::thread::spawn(move || {
        for i in 0..n {
            w.write(i).unwrap();
        }
    });
    let h = Spawn(
        read_one_then_leave(c.reader(), took.writer(), gate.reader())
            .on(Placement::launcher("{cmd}")),
    )
    .unwrap();
    let first = took.reader().read().unwrap();
    drop(c);
    let (mut here, end) = read_to_the_end(&r);
    assert!(matches!(end, ChannelError::Retired), "{end} after {here:?}");
    gate.writer().write(()).unwrap();
    h.join().unwrap().unwrap();
    writer.join().unwrap();
    here.push(first);
    here.sort();
    assert_eq!(here, (0..n).collect::<Vec<_>>());
}

/// A remote reader of a rendezvous channel whose user reads no more holds no message: the
/// writer's messages reach the reader that reads (once the remote pump kept a `Read`
/// outstanding whether or not its user read, and with one writer the channel stopped).
#[test]
fn a_remote_reader_that_reads_no_more_does_not_stop_a_rendezvous_channel() {
    a_remote_reader_that_reads_no_more_holds_nothing("rv-idle", 0, 40);
}

/// Polls `jobs` with a skip guard until it took `k` messages (or 20 s passed), sends what it
/// took on `took`, and leaves its end once `gate` opens, polling no more.
#[process]
fn poll_then_leave(
    jobs: ChannelIn<u64>,
    k: usize,
    took: ChannelOut<Vec<u64>>,
    gate: ChannelIn<()>,
) -> Result<(), ChannelError> {
    let mut got = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < k && std::time::Instant::now() < until {
        let polled = Alternation::new()
            .input(&jobs, Some)
            .skip(|| None)
            .pri_select()?;
        match polled.value {
            Some(v) => got.push(v),
            // The user's own pace between polls.
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    took.write(got)?;
    gate.read()?;
    Ok(())
}

/// A remote reader of a rendezvous channel that polls it (an alternation with a skip guard)
/// gets messages, and once it polls no more it holds none: the rest reach the reader here.
#[test]
fn a_remote_reader_that_polls_a_rendezvous_channel_gets_messages_and_then_holds_none() {
    let c = hosted_tcp::<u64>("rv-poll", 0);
    let took = hosted_tcp::<Vec<u64>>("took", 0);
    let gate = hosted_tcp::<()>("gate", 0);
    let (w, r) = (c.writer(), c.reader());
    let n = 30u64;
    let writer = std::thread::spawn(move || {
        for i in 0..n {
            w.write(i).unwrap();
        }
    });
    let h = Spawn(
        poll_then_leave(c.reader(), 5, took.writer(), gate.reader())
            .on(Placement::launcher("{cmd}")),
    )
    .unwrap();
    let polled = took.reader().read().unwrap();
    assert_eq!(polled.len(), 5, "the poller took {polled:?}");
    drop(c);
    let (mut here, end) = read_to_the_end(&r);
    assert!(matches!(end, ChannelError::Retired), "{end} after {here:?}");
    gate.writer().write(()).unwrap();
    h.join().unwrap().unwrap();
    writer.join().unwrap();
    here.extend(polled);
    here.sort();
    assert_eq!(here, (0..n).collect::<Vec<_>>());
}

/// A remote reader of a buffered channel whose user reads no more holds none of the messages
/// it asked for ahead for long: they go back to the channel, and the reader here reads them
/// all (once they stayed in that reader's process until it left, and this reader waited).
#[test]
fn a_remote_reader_that_reads_no_more_gives_back_what_it_asked_for_ahead() {
    a_remote_reader_that_reads_no_more_holds_nothing("buf-idle", 16, 200);
}
