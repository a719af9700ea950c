//! What a user would pick instead: crossbeam-channel between threads (the in-process bound),
//! a raw Unix domain socket between two processes, Python's multiprocessing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// crossbeam bounded(0) ping-pong between two threads: round trip in ns.
pub fn crossbeam_rtt(iters: u64) -> f64 {
    let (to, from_main) = crossbeam_channel::bounded::<u64>(0);
    let (back, from_thread) = crossbeam_channel::bounded::<u64>(0);
    let t = std::thread::spawn(move || {
        for v in from_main.iter() {
            if back.send(v).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    for i in 0..iters {
        to.send(i).unwrap();
        from_thread.recv().unwrap();
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    drop(to);
    t.join().unwrap();
    ns
}

/// crossbeam bounded(1024) u64 one way between two threads: messages per second.
pub fn crossbeam_throughput(n: u64) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<u64>(1024);
    let t = std::thread::spawn(move || rx.iter().fold(0u64, |a, v| a.wrapping_add(v)));
    let start = Instant::now();
    for i in 0..n {
        tx.send(i).unwrap();
    }
    drop(tx);
    std::hint::black_box(t.join().unwrap());
    n as f64 / start.elapsed().as_secs_f64()
}

fn fork_echo(mut sock: UnixStream, other: &UnixStream, echo: bool) -> libc::pid_t {
    use std::os::fd::AsRawFd;
    let other = other.as_raw_fd();
    // SAFETY: the child only closes the parent's end, reads and writes its own socket and
    // exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The parent's end must not stay open here, or the child never sees EOF.
        // SAFETY: closing the child's copy of a descriptor the child does not use.
        unsafe { libc::close(other) };
        let mut buf = [0u8; 8];
        while sock.read_exact(&mut buf).is_ok() {
            if echo && sock.write_all(&buf).is_err() {
                break;
            }
        }
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Unix domain socket, 8-byte messages echoed by another process: round trip in ns.
pub fn uds_rtt(iters: u64) -> f64 {
    let (mut a, b) = UnixStream::pair().unwrap();
    let pid = fork_echo(b, &a, true);
    let mut buf = [0u8; 8];
    let start = Instant::now();
    for i in 0..iters {
        a.write_all(&i.to_le_bytes()).unwrap();
        a.read_exact(&mut buf).unwrap();
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    drop(a);
    reap(pid);
    ns
}

/// Unix domain socket, 8-byte messages one way: messages per second.
pub fn uds_throughput(n: u64) -> f64 {
    let (mut a, b) = UnixStream::pair().unwrap();
    let pid = fork_echo(b, &a, false);
    let start = Instant::now();
    for i in 0..n {
        a.write_all(&i.to_le_bytes()).unwrap();
    }
    drop(a);
    reap(pid);
    n as f64 / start.elapsed().as_secs_f64()
}

const PYTHON: &str = r#"
import json, sys, time, multiprocessing as mp

def echo_pipe(c):
    while True:
        v = c.recv()
        if v is None: return
        c.send(v)

def sink_pipe(c, n):
    for _ in range(n): c.recv()
    c.send(n)

def echo_queue(i, o):
    while True:
        v = i.get()
        if v is None: return
        o.put(v)

def sink_queue(i, o, n):
    for _ in range(n): i.get()
    o.put(n)

def median(f, trials):
    v = sorted(f() for _ in range(trials))
    return [v[len(v)//2], v[0], v[-1]]

if __name__ == "__main__":
    trials, iters = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    a, b = mp.Pipe()
    p = mp.Process(target=echo_pipe, args=(b,)); p.start()
    def pipe_rtt():
        t = time.perf_counter()
        for i in range(iters): a.send(i); a.recv()
        return (time.perf_counter() - t) / iters * 1e9
    out["pipe_rtt_ns"] = median(pipe_rtt, trials)
    a.send(None); p.join()
    def pipe_thr():
        a, b = mp.Pipe()
        p = mp.Process(target=sink_pipe, args=(b, iters * 5)); p.start()
        t = time.perf_counter()
        for i in range(iters * 5): a.send(i)
        a.recv(); p.join()
        return iters * 5 / (time.perf_counter() - t)
    out["pipe_msgs_per_s"] = median(pipe_thr, trials)
    i, o = mp.Queue(), mp.Queue()
    p = mp.Process(target=echo_queue, args=(i, o)); p.start()
    def queue_rtt():
        t = time.perf_counter()
        for k in range(iters): i.put(k); o.get()
        return (time.perf_counter() - t) / iters * 1e9
    out["queue_rtt_ns"] = median(queue_rtt, trials)
    i.put(None); p.join()
    def queue_thr():
        i, o = mp.Queue(), mp.Queue()
        p = mp.Process(target=sink_queue, args=(i, o, iters * 5)); p.start()
        t = time.perf_counter()
        for k in range(iters * 5): i.put(k)
        o.get(); p.join()
        return iters * 5 / (time.perf_counter() - t)
    out["queue_msgs_per_s"] = median(queue_thr, trials)
    print(json.dumps(out))
"#;

/// Python multiprocessing Pipe and Queue: (name, [median, min, max]) rows, if python3 runs.
pub fn python(trials: usize, iters: u64) -> Option<serde_json::Map<String, serde_json::Value>> {
    let dir = std::env::temp_dir().join(format!("pycsp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = dir.join("mp_bench.py");
    std::fs::write(&script, PYTHON).ok()?;
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(trials.to_string())
        .arg(iters.to_string())
        .output()
        .ok();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        eprintln!("python3 failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

const PYTHON_CONNECTION: &str = r#"
import json, sys, time, multiprocessing as mp
from multiprocessing.connection import Listener, Client

KEY = b"pycsp-bench"

def echo(addr):
    c = Client(addr, authkey=KEY)
    while True:
        v = c.recv()
        if v is None: break
        c.send(v)
    c.close()

def sink(addr, n):
    c = Client(addr, authkey=KEY)
    for _ in range(n): c.recv()
    c.send(n)
    c.close()

def median(f, trials):
    v = sorted(f() for _ in range(trials))
    return [v[len(v)//2], v[0], v[-1]]

if __name__ == "__main__":
    trials, iters = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    with Listener(("127.0.0.1", 0), authkey=KEY) as l:
        p = mp.Process(target=echo, args=(l.address,)); p.start()
        c = l.accept()
        for i in range(iters // 10): c.send(i); c.recv()
        def rtt():
            t = time.perf_counter()
            for i in range(iters): c.send(i); c.recv()
            return (time.perf_counter() - t) / iters * 1e9
        out["conn_rtt_ns"] = median(rtt, trials)
        c.send(None); p.join(); c.close()
        def thr():
            n = iters * 5
            p = mp.Process(target=sink, args=(l.address, n)); p.start()
            c = l.accept()
            t = time.perf_counter()
            for i in range(n): c.send(i)
            c.recv()
            r = n / (time.perf_counter() - t)
            p.join(); c.close()
            return r
        out["conn_msgs_per_s"] = median(thr, trials)
    print(json.dumps(out))
"#;

/// Python's `multiprocessing.connection` `Listener`/`Client` over TCP loopback (with an
/// authkey, as a Python user reaches another host): round trip and one way, [median, min,
/// max], if python3 runs.
pub fn python_connection(
    trials: usize,
    iters: u64,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let dir = std::env::temp_dir().join(format!("pycsp-bench-conn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = dir.join("conn_bench.py");
    std::fs::write(&script, PYTHON_CONNECTION).ok()?;
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(trials.to_string())
        .arg(iters.to_string())
        .output()
        .ok();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        eprintln!("python3 failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// ipc-channel's byte channel between two processes: GB/s of `size`-byte messages one way.
pub fn ipc_channel_bytes(size: usize, total: usize) -> f64 {
    use ipc_channel::ipc::{self, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender};
    type Boot = (IpcBytesSender, IpcReceiver<u64>);
    let (server, name) = IpcOneShotServer::<Boot>::new().expect("ipc-channel server");
    let n = (total / size).max(4);
    // SAFETY: as in `ipc_channel`: the child uses ipc-channel and exits with _exit, never
    // returning into the caller.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let boot = IpcSender::<Boot>::connect(name).expect("connect");
        let (tx, rx) = ipc::bytes_channel().unwrap();
        let (done_tx, done_rx) = ipc::channel::<u64>().unwrap();
        boot.send((tx, done_rx)).unwrap();
        let mut got = 0u64;
        for _ in 0..n {
            match rx.recv() {
                Ok(b) => got += b.len() as u64,
                Err(_) => break,
            }
        }
        done_tx.send(got).ok();
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let (_, (tx, done)) = server.accept().expect("accept");
    let msg = vec![7u8; size];
    let start = Instant::now();
    for _ in 0..n {
        tx.send(&msg).unwrap();
    }
    let got = done.recv().unwrap();
    let rate = got as f64 / start.elapsed().as_secs_f64() / 1e9;
    reap(pid);
    rate
}

const PYTHON_POOL: &str = r#"
import json, sys, time, multiprocessing as mp

def tiny(x):
    return x * x

def median(f, trials):
    v = sorted(f() for _ in range(trials))
    return [v[len(v)//2], v[0], v[-1]]

if __name__ == "__main__":
    trials, n, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out = {}
    with mp.Pool(workers) as pool:
        pool.map(tiny, range(1000))
        def run(chunksize):
            def trial():
                t = time.perf_counter()
                r = pool.map(tiny, range(n), chunksize)
                assert len(r) == n
                return n / (time.perf_counter() - t)
            return trial
        out["chunked"] = median(run(None), trials)
        out["chunksize1"] = median(run(1), trials)
    print(json.dumps(out))
"#;

/// Python's `Pool.map` over `n` tiny items on `workers` processes, with its default chunk size
/// (`chunked`) and with `chunksize=1`: items per second, [median, min, max], if python3 runs.
pub fn python_pool(
    trials: usize,
    n: u64,
    workers: usize,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let dir = std::env::temp_dir().join(format!("pycsp-bench-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = dir.join("pool_bench.py");
    std::fs::write(&script, PYTHON_POOL).ok()?;
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(trials.to_string())
        .arg(n.to_string())
        .arg(workers.to_string())
        .output()
        .ok();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        eprintln!("python3 failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// ipc-channel between two processes: (round trip in ns, one-way u64 messages per second).
///
/// The peer is forked while this process runs no other thread; it bootstraps through an
/// `IpcOneShotServer` as ipc-channel's own multi-process tests do.
pub fn ipc_channel(iters: u64) -> (f64, f64) {
    use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
    type Boot = (IpcSender<u64>, IpcReceiver<u64>, IpcSender<u64>);
    let (server, name) = IpcOneShotServer::<Boot>::new().expect("ipc-channel server");
    // SAFETY: this process has no other thread now; the child uses ipc-channel and exits
    // with _exit, never returning into the caller.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let boot = IpcSender::<Boot>::connect(name).expect("connect");
        let (ping_tx, ping_rx) = ipc::channel::<u64>().unwrap();
        let (pong_tx, pong_rx) = ipc::channel::<u64>().unwrap();
        let (sink_tx, sink_rx) = ipc::channel::<u64>().unwrap();
        boot.send((ping_tx, pong_rx, sink_tx)).unwrap();
        while let Ok(v) = ping_rx.recv() {
            if v == u64::MAX {
                break;
            }
            pong_tx.send(v).unwrap();
        }
        while let Ok(v) = sink_rx.recv() {
            if v == u64::MAX {
                break;
            }
        }
        pong_tx.send(0).ok();
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let (_, (ping, pong, sink)) = server.accept().expect("accept");
    for i in 0..iters / 10 {
        ping.send(i).unwrap();
        pong.recv().unwrap();
    }
    let start = Instant::now();
    for i in 0..iters {
        ping.send(i).unwrap();
        pong.recv().unwrap();
    }
    let rtt = start.elapsed().as_nanos() as f64 / iters as f64;
    ping.send(u64::MAX).unwrap();
    let n = iters * 10;
    let start = Instant::now();
    for i in 0..n {
        sink.send(i).unwrap();
    }
    sink.send(u64::MAX).unwrap();
    pong.recv().unwrap();
    let thr = n as f64 / start.elapsed().as_secs_f64();
    reap(pid);
    (rtt, thr)
}

/// Microseconds to create a crossbeam `bounded(16)` channel, clone both ends and drop them.
pub fn crossbeam_create_drop(n: u64) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..n {
        let (s, r) = crossbeam_channel::bounded::<u64>(16);
        let (s2, r2) = (s.clone(), r.clone());
        drop((s, r, s2, r2));
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}
