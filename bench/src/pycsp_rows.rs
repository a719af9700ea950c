//! pycsp's own figures: round trips, throughput, bandwidth, any-to-any, commstime, the primes
//! farm, spawning, memory.

use std::time::{Duration, Instant};

use pycsp::prelude::*;
use serde_bytes::ByteBuf;

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A channel name unique within this run.
pub fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

#[process]
fn pong(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        out.write(inp.read()?)?;
    }
}

/// Nanoseconds per round trip of `iters` messages sent on `w` and echoed back on `r`, after a
/// tenth as many to warm up.
fn ping(w: &ChannelOut<u64>, r: &ChannelIn<u64>, iters: u64) -> f64 {
    for i in 0..iters / 10 {
        w.write(i).unwrap();
        r.read().unwrap();
    }
    let start = Instant::now();
    for i in 0..iters {
        w.write(i).unwrap();
        r.read().unwrap();
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Round trip in ns over a pair of channels of `capacity` (0: rendezvous).
pub fn round_trip(capacity: usize, iters: u64) -> f64 {
    let a = Channel::<u64>::buffered(capacity).unwrap();
    let b = Channel::<u64>::buffered(capacity).unwrap();
    let (w, r) = (a.writer(), b.reader());
    let h = Spawn(pong(a.reader(), b.writer())).unwrap();
    let ns = ping(&w, &r, iters);
    drop((w, r));
    let _ = h.join();
    ns
}

#[process]
fn sink(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    inp.iter().try_fold(0u64, |a, v| Ok(a.wrapping_add(v?)))
}

/// One-way u64 messages per second on a buffered channel of 1024.
pub fn throughput(n: u64) -> f64 {
    let c = Channel::<u64>::buffered(1024).unwrap();
    let w = c.writer();
    let h = Spawn(sink(c.reader())).unwrap();
    let start = Instant::now();
    for i in 0..n {
        w.write(i).unwrap();
    }
    drop(w);
    std::hint::black_box(h.join().unwrap().unwrap());
    n as f64 / start.elapsed().as_secs_f64()
}

#[process]
fn byte_sink(inp: ChannelIn<ByteBuf>) -> Result<u64, ChannelError> {
    inp.iter().map(|b| Ok(b?.len() as u64)).sum()
}

/// Bandwidth in GB/s of messages of `size` bytes (a MessagePack bin: `serde_bytes`).
pub fn bandwidth(size: usize, total: usize) -> f64 {
    let c = Channel::<ByteBuf>::buffered(8).unwrap();
    let w = c.writer();
    let h = Spawn(byte_sink(c.reader())).unwrap();
    let msg = ByteBuf::from(vec![7u8; size]);
    let n = (total / size).max(4);
    let start = Instant::now();
    for _ in 0..n {
        w.write_ref(&msg).unwrap();
    }
    drop(w);
    let bytes = h.join().unwrap().unwrap();
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

#[process]
fn many_writer(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    Ok(())
}

/// 4 writers and 4 readers on one buffered any-to-any channel: messages per second.
pub fn any_to_any(n_per_writer: u64) -> f64 {
    let c = Channel::<u64>::buffered(1024).unwrap();
    let writers = replicate(4, |_| many_writer(c.writer(), n_per_writer));
    let readers = replicate(4, |_| sink(c.reader()));
    let start = Instant::now();
    Parallel((writers, readers)).unwrap();
    (4 * n_per_writer) as f64 / start.elapsed().as_secs_f64()
}

/// One writer and three readers on one `buffered(1)` channel, four processes (more than
/// this machine's cores): messages per second. Every message wakes or yields to a reader
/// that waits; a change to the waits that saves system calls must not slow this row (a
/// change that saved `futex_wake` calls once made it 3-4 times slower: the wake-up is where
/// the scheduler lets the woken reader run).
pub fn oversubscribed(n: u64) -> f64 {
    let c = Channel::<u64>::buffered(1).unwrap();
    let readers = replicate(3, |_| sink(c.reader()));
    let start = Instant::now();
    let (wrote, read) = Parallel((many_writer(c.writer(), n), readers)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    wrote.unwrap();
    let sum = read
        .into_iter()
        .fold(0u64, |a, r| a.wrapping_add(r.unwrap()));
    assert_eq!(sum, (0..n).sum::<u64>(), "every message read once");
    n as f64 / secs
}

#[process]
fn prefix(first: u64, inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    out.write(first)?;
    loop {
        out.write(inp.read()?)?;
    }
}

#[process]
fn delta(inp: ChannelIn<u64>, a: ChannelOut<u64>, b: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        let v = inp.read()?;
        a.write(v)?;
        b.write(v)?;
    }
}

#[process]
fn successor(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        out.write(inp.read()? + 1)?;
    }
}

#[process]
fn consumer(inp: ChannelIn<u64>, n: u64) -> Result<f64, ChannelError> {
    inp.read()?;
    let start = Instant::now();
    for _ in 0..n {
        inp.read()?;
    }
    let ns = start.elapsed().as_nanos() as f64 / (4 * n) as f64;
    inp.poison();
    Ok(ns)
}

/// Commstime: µs per channel communication (4 processes, rendezvous channels).
pub fn commstime(n: u64) -> f64 {
    let ch: Vec<Channel<u64>> = (0..4).map(|_| Channel::new().unwrap()).collect();
    let (_, _, _, ns) = Parallel((
        prefix(0, ch[3].reader(), ch[0].writer()),
        delta(ch[0].reader(), ch[1].writer(), ch[2].writer()),
        successor(ch[2].reader(), ch[3].writer()),
        consumer(ch[1].reader(), n),
    ))
    .unwrap();
    ns.unwrap() / 1000.0
}

pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[process]
fn farmer(jobs: ChannelOut<(u64, u64)>, limit: u64, chunk: u64) -> Result<(), ChannelError> {
    let mut s = 0;
    while s < limit {
        jobs.write((s, (s + chunk).min(limit)))?;
        s += chunk;
    }
    Ok(())
}

#[process]
fn prime_worker(jobs: ChannelIn<(u64, u64)>) -> Result<u64, ChannelError> {
    jobs.iter()
        .map(|job| job.map(|(lo, hi)| (lo..hi).filter(|&n| is_prime(n)).count() as u64))
        .sum()
}

/// Seconds to count the primes below 1,000,000 with `workers` worker processes, fed by one
/// farmer over a job channel of `capacity` (0: rendezvous, PyCSP's default `Channel()`).
pub fn primes(workers: usize, capacity: usize) -> f64 {
    let jobs = if capacity == 0 {
        Channel::<(u64, u64)>::new().unwrap()
    } else {
        Channel::<(u64, u64)>::buffered(capacity).unwrap()
    };
    let start = Instant::now();
    let (_, counts) = Parallel((
        farmer(jobs.writer(), 1_000_000, 2_000),
        replicate(workers, |_| prime_worker(jobs.reader())),
    ))
    .unwrap();
    let t = start.elapsed().as_secs_f64();
    let counts: Result<Vec<u64>, _> = counts.into_iter().collect();
    assert_eq!(counts.unwrap().iter().sum::<u64>(), 78_498);
    t
}

#[process]
fn trivial() {}

/// Milliseconds per process to start and join `n` trivial processes one after another, each
/// with its own `Parallel` (comparable with a raw `fork` + `waitpid`).
pub fn start_join(n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        Parallel(trivial()).unwrap();
    }
    start.elapsed().as_secs_f64() * 1e3 / n as f64
}

/// Milliseconds per process to start and join `n` trivial processes with one `Parallel`.
pub fn spawn(n: usize) -> f64 {
    let start = Instant::now();
    Parallel(replicate(n, |_| trivial())).unwrap();
    start.elapsed().as_secs_f64() * 1e3 / n as f64
}

#[process]
fn idle(gate: ChannelIn<u8>) -> Result<u8, ChannelError> {
    gate.read()
}

fn status_kib(pid: u32, file: &str, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (RSS KiB, PSS KiB) of one idle process of a network.
pub fn idle_process_memory() -> (f64, f64) {
    let gate = Channel::<u8>::new().unwrap();
    let h = Spawn(idle(gate.reader())).unwrap();
    let pid = h.pids()[0];
    // Let it reach its blocking read.
    std::thread::sleep(Duration::from_millis(200));
    let rss = status_kib(pid, "status", "VmRSS:").unwrap_or(f64::NAN);
    let pss = status_kib(pid, "smaps_rollup", "Pss:").unwrap_or(f64::NAN);
    gate.writer().write(0).unwrap();
    let _ = h.join();
    (rss, pss)
}

/// Shared memory one channel of `capacity` occupies, in bytes.
pub fn channel_bytes(capacity: usize) -> f64 {
    Channel::<u64>::buffered(capacity)
        .unwrap()
        .shared_memory_bytes() as f64
}

#[process]
fn block_sink(inp: ChannelIn<SharedBlock>) -> Result<u64, ChannelError> {
    inp.iter()
        .map(|b| b.map(|b| b.len() as u64 + u64::from(b[0]) + u64::from(b[b.len() - 1])))
        .sum()
}

/// Handing over blocks of `size` bytes whose ownership moves (the producer writes its data
/// into the block, nothing is copied): bytes handed over per second, in GB/s.
pub fn zero_copy(size: usize, total: usize) -> f64 {
    let c = Channel::<SharedBlock>::buffered(8).unwrap();
    let w = c.writer();
    let h = Spawn(block_sink(c.reader())).unwrap();
    let n = (total / size).max(4);
    let start = Instant::now();
    for i in 0..n {
        let mut b = SharedBlock::new(size).unwrap();
        b[0] = i as u8;
        b[size - 1] = 1;
        w.write(b).unwrap();
    }
    drop(w);
    std::hint::black_box(h.join().unwrap().unwrap());
    (n * size) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// A socket transport for the socket rows.
#[derive(Clone, Copy)]
pub enum Socket {
    /// `tcp://127.0.0.1:PORT/NAME`.
    Tcp,
    /// `local://SOCKET/NAME` (an abstract Unix socket through `interprocess`).
    Local,
}

/// A fresh address of `name` on a new endpoint of `socket` (TCP: port 0, a port the system
/// picks when the channel is created, named after it).
fn socket_address(socket: Socket, name: &str) -> String {
    match socket {
        Socket::Tcp => format!("tcp://127.0.0.1:0/{name}"),
        Socket::Local => format!(
            "local://{}/{name}",
            fresh(&format!("pycsp-bench-{}", std::process::id()))
        ),
    }
}

/// Round trip in ns over a pair of socket channels of `capacity` (0: rendezvous), with the
/// echoing process placed by the trivial launcher `{cmd}`: a separate program that reaches
/// both channels over the socket, as a process on another host would.
pub fn socket_round_trip(socket: Socket, capacity: usize, iters: u64) -> f64 {
    let a = Channel::<u64>::named_buffered(&socket_address(socket, "rt-a"), capacity).unwrap();
    let b = Channel::<u64>::named_buffered(&socket_address(socket, "rt-b"), capacity).unwrap();
    let (w, r) = (a.writer(), b.reader());
    let h = Spawn(pong(a.reader(), b.writer()).on(Placement::launcher("{cmd}"))).unwrap();
    let ns = ping(&w, &r, iters);
    drop((w, r, a, b));
    let _ = h.join();
    ns
}

/// One-way u64 messages per second on a buffered socket channel of 1024 hosted here, read by
/// a process placed by the launcher `{cmd}` (a remote reader).
pub fn socket_throughput(socket: Socket, n: u64) -> f64 {
    let c = Channel::<u64>::named_buffered(&socket_address(socket, "thr"), 1024).unwrap();
    let w = c.writer();
    let h = Spawn(sink(c.reader()).on(Placement::launcher("{cmd}"))).unwrap();
    let start = Instant::now();
    for i in 0..n {
        w.write(i).unwrap();
    }
    drop((w, c));
    std::hint::black_box(h.join().unwrap().unwrap());
    n as f64 / start.elapsed().as_secs_f64()
}

/// One-way u64 messages per second written by a process placed by the launcher `{cmd}` (a
/// remote writer, as on another host) into a buffered socket channel of 1024 hosted here and
/// read here; timed from the first message read to the last (the placed process's start is
/// not counted).
pub fn socket_throughput_from_remote(socket: Socket, n: u64) -> f64 {
    let c = Channel::<u64>::named_buffered(&socket_address(socket, "thr-in"), 1024).unwrap();
    let r = c.reader();
    let h = Spawn(many_writer(c.writer(), n).on(Placement::launcher("{cmd}"))).unwrap();
    r.read().unwrap();
    let start = Instant::now();
    for _ in 1..n {
        r.read().unwrap();
    }
    let rate = (n - 1) as f64 / start.elapsed().as_secs_f64();
    drop((r, c));
    h.join().unwrap().unwrap();
    rate
}

#[process]
fn byte_writer(out: ChannelOut<ByteBuf>, size: usize, n: usize) -> Result<(), ChannelError> {
    let msg = ByteBuf::from(vec![7u8; size]);
    for _ in 0..n {
        out.write_ref(&msg)?;
    }
    Ok(())
}

/// GB/s of messages of `size` bytes written by a process placed by `{cmd}` into a buffered
/// socket channel of 8 hosted and read here; timed from the first message read to the last.
pub fn socket_bandwidth_from_remote(socket: Socket, size: usize, total: usize) -> f64 {
    let c = Channel::<ByteBuf>::named_buffered(&socket_address(socket, "bw-in"), 8).unwrap();
    let r = c.reader();
    let n = (total / size).max(4);
    let h = Spawn(byte_writer(c.writer(), size, n).on(Placement::launcher("{cmd}"))).unwrap();
    r.read().unwrap();
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 1..n {
        bytes += r.read().unwrap().len();
    }
    let rate = bytes as f64 / start.elapsed().as_secs_f64() / 1e9;
    drop((r, c));
    h.join().unwrap().unwrap();
    rate
}

/// The value the array farm stores in element `i` (as `examples/array_farm.rs`).
fn farm_value(i: usize) -> f64 {
    (i as f64).sqrt().sin()
}

/// Fills each piece of a shared array it is given, in place, and hands it back.
#[process]
fn array_filler(
    jobs: ChannelIn<SharedArray<f64>>,
    done: ChannelOut<SharedArray<f64>>,
) -> Result<(), ChannelError> {
    for piece in &jobs {
        let mut piece = piece?;
        let start = piece.range().start;
        for (i, x) in piece.iter_mut().enumerate() {
            *x = farm_value(start + i);
        }
        done.write(piece)?;
    }
    Ok(())
}

/// Seconds for `workers` processes to fill a shared array of `n` f64 in place: split into one
/// piece per worker, the pieces through channels and back, joined (the processes' start
/// included, the array's allocation not). Checks every element afterwards.
pub fn array_fill(n: usize, workers: usize) -> f64 {
    let array = SharedArray::<f64>::zeroed(n).unwrap();
    let start = Instant::now();
    let (jobs, done) = (
        Channel::buffered(workers).unwrap(),
        Channel::buffered(workers).unwrap(),
    );
    let farm = Spawn(replicate(workers, |_| {
        array_filler(jobs.reader(), done.writer())
    }))
    .unwrap();
    let (tx, rx) = (jobs.writer(), done.reader());
    for piece in array.split_into(workers) {
        tx.write(piece).unwrap();
    }
    drop(tx);
    let pieces: Vec<_> = (0..workers).map(|_| rx.read().unwrap()).collect();
    for w in farm.join().unwrap() {
        w.unwrap();
    }
    let array = SharedArray::join(pieces).unwrap();
    let t = start.elapsed().as_secs_f64();
    assert!(array.iter().enumerate().all(|(i, x)| *x == farm_value(i)));
    t
}

/// Microseconds to create a channel, take a writer and a reader, and drop all three (its
/// memory goes back to the arena).
pub fn create_drop(n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let ch = Channel::<u64>::buffered(16).unwrap();
        let (w, r) = (ch.writer(), ch.reader());
        drop((ch, w, r));
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

#[process]
fn reply_server(requests: ChannelIn<(u64, ChannelOut<u64>)>) -> Result<(), ChannelError> {
    for request in requests.iter() {
        let (x, reply) = request?;
        reply.write(x + 1)?;
    }
    Ok(())
}

/// Requests per second of a request/reply server in another process, each request with a
/// reply channel made for it (its writing end travels in the request).
pub fn reply_per_request(n: u64) -> f64 {
    let requests = Channel::<(u64, ChannelOut<u64>)>::new().unwrap();
    let h = Spawn(reply_server(requests.reader())).unwrap();
    let out = requests.writer();
    drop(requests);
    let start = Instant::now();
    for x in 0..n {
        let reply = Channel::<u64>::new().unwrap();
        out.write((x, reply.writer())).unwrap();
        assert_eq!(reply.reader().read().unwrap(), x + 1);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(out);
    h.join().unwrap().unwrap();
    rate
}

#[process]
fn reply_server_long(
    requests: ChannelIn<u64>,
    replies: ChannelOut<u64>,
) -> Result<(), ChannelError> {
    for x in requests.iter() {
        replies.write(x? + 1)?;
    }
    Ok(())
}

/// The same server with one long-lived reply channel for its client.
pub fn reply_per_client(n: u64) -> f64 {
    let requests = Channel::<u64>::new().unwrap();
    let replies = Channel::<u64>::new().unwrap();
    let h = Spawn(reply_server_long(requests.reader(), replies.writer())).unwrap();
    let (out, inp) = (requests.writer(), replies.reader());
    drop((requests, replies));
    let start = Instant::now();
    for x in 0..n {
        out.write(x).unwrap();
        assert_eq!(inp.read().unwrap(), x + 1);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop((out, inp));
    h.join().unwrap().unwrap();
    rate
}

/// Creates and drops `n` channels, each used by a request/reply exchange with a server
/// process; the network's shared memory and this process's resident memory before and after
/// (MiB): `(shm allocated, shm resident, RSS)` before, then after.
pub fn many_channels(n: u64) -> ([f64; 3], [f64; 3]) {
    let snapshot = || {
        let u = pycsp::shared_memory_usage().unwrap();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let rss_kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        [mib(u.allocated), mib(u.resident), rss_kib / 1024.0]
    };
    // Warm up: the first channels make the headers, rings and tables that are then reused.
    reply_per_request(1_000);
    let before = snapshot();
    reply_per_request(n);
    (before, snapshot())
}

/// A tiny pool function: the per-item cost of a pool is all that is left to measure.
#[pool_fn]
fn tiny(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Items per second of `Pool::map` over `n` tiny items on a pool of `workers` (started before
/// the clock), with Python's default chunk size or with `chunksize` items per job.
pub fn pool_map(workers: usize, n: u64, chunksize: Option<usize>) -> f64 {
    let pool = Pool::new(workers).unwrap().progress(false);
    pool.map(tiny, 0..1000).unwrap(); // every worker has run once
    let start = Instant::now();
    let out = match chunksize {
        Some(c) => pool.chunksize(c).map(tiny, 0..n),
        None => pool.map(tiny, 0..n),
    }
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(out.len() as u64, n);
    n as f64 / secs
}
