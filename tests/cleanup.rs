//! Nothing is left behind: no shared-memory objects in /dev/shm and no processes, after a
//! normal run, after a panic, and after the root of a network is killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pycsp::prelude::*;

fn shm_objects() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.to_lowercase().contains("pycsp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is a live process (a zombie counts as gone: it runs nothing).
fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
    }
}

/// Kills the child when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[process]
fn square(x: u64) -> u64 {
    x * x
}

#[process]
fn explode() {
    panic!("deliberate");
}

#[process]
fn spawn_grandchild() -> Result<u32, pycsp::Error> {
    let h = Spawn(square(3))?;
    let pid = h.pids()[0];
    assert_eq!(h.join()?, 9);
    Ok(pid)
}

#[test]
fn a_normal_run_and_a_panicking_run_leave_no_shm_objects_and_no_processes() {
    let ch = Channel::<u64>::named_buffered("cleanup-normal", 4).unwrap();
    ch.writer().write(1).unwrap();
    let h = Spawn((replicate(3, |i| square(i as u64)), spawn_grandchild())).unwrap();
    let mut pids = h.pids();
    let (squares, grandchild) = h.join().unwrap();
    assert_eq!(squares, vec![0, 1, 4]);
    pids.push(grandchild.unwrap());
    let h = Spawn(explode()).unwrap();
    pids.extend(h.pids());
    assert!(h.join().is_err());
    // Joined processes are reaped at once: no waiting needed.
    let alive: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p)).collect();
    assert_eq!(alive, Vec::<u32>::new(), "processes left running");
    assert_eq!(shm_objects(), Vec::<String>::new());
}

#[process]
fn block_forever(inp: ChannelIn<u8>) -> Result<u8, ChannelError> {
    inp.read()
}

#[process]
fn nest_and_block(inp: ChannelIn<u8>, out: ChannelOut<u32>) -> Result<(), pycsp::Error> {
    let gate = Channel::<u8>::named("grandchild-gate")?;
    let h = Spawn(block_forever(gate.reader()))?;
    for pid in h.pids() {
        out.write(pid)?;
    }
    inp.read()?;
    drop(h);
    Ok(())
}

/// Not a test of its own: the root of a network that `killing_the_root_...` kills. It prints
/// the pids of every process below it, then blocks.
#[test]
#[ignore = "run by killing_the_root_with_sigkill_leaves_nothing_behind"]
fn killable_root() {
    if std::env::var_os("PYCSP_TEST_KILLABLE_ROOT").is_none() {
        return;
    }
    let gate = Channel::<u8>::named("root-gate").unwrap();
    let pids = Channel::<u32>::named_buffered("root-pids", 16).unwrap();
    let rp = pids.reader();
    let h = Spawn((
        replicate(2, |_| block_forever(gate.reader())),
        nest_and_block(gate.reader(), pids.writer()),
    ))
    .unwrap();
    let grandchild = rp.read().unwrap();
    for p in h.pids().into_iter().chain([grandchild]) {
        println!("PID {p}");
    }
    println!("READY");
    // Block on a channel nobody writes until the test kills us.
    let idle = Channel::<u8>::named("root-idle").unwrap();
    let _w = idle.writer();
    let _ = idle.reader().read_timeout(Duration::from_secs(3600));
}

#[test]
fn killing_the_root_with_sigkill_leaves_nothing_behind() {
    let exe = std::env::current_exe().unwrap();
    let mut root = KillOnDrop(
        Command::new(exe)
            .args([
                "killable_root",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PYCSP_TEST_KILLABLE_ROOT", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut pids = Vec::new();
    for line in BufReader::new(root.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // The test harness prints "test killable_root ... " before the test's own output.
        if let Some(at) = line.find("PID ") {
            pids.push(line[at + 4..].trim().parse::<u32>().unwrap());
        }
        if line.contains("READY") {
            break;
        }
    }
    assert_eq!(pids.len(), 4, "the root reported {pids:?}");
    assert!(pids.iter().all(|&p| is_running(p)));
    root.0.kill().unwrap(); // SIGKILL
    root.0.wait().unwrap();
    let left = wait_gone(&pids, Duration::from_secs(5));
    assert_eq!(
        left,
        Vec::<u32>::new(),
        "processes outlived their killed root"
    );
    assert_eq!(shm_objects(), Vec::<String>::new());
}

#[process]
fn twin_producer(out: ChannelOut<u64>, n: u64) {
    for i in 0..n {
        out.write(i).unwrap();
    }
}

#[process]
fn twin_consumer(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    inp.iter().sum()
}

/// Not a test of its own: one of two simultaneous runs of `two_runs_...`.
#[test]
#[ignore = "run by two_runs_of_one_program_at_the_same_time_do_not_collide"]
fn twin_run() {
    let Ok(n) = std::env::var("PYCSP_TEST_TWIN") else {
        return;
    };
    let n: u64 = n.parse().unwrap();
    // The same channel name in both runs: each run is its own network.
    let ch = Channel::<u64>::named_buffered("twin-numbers", 8).unwrap();
    let ((), sum) = Parallel((twin_producer(ch.writer(), n), twin_consumer(ch.reader()))).unwrap();
    println!("SUM {}", sum.unwrap());
}

#[test]
fn two_runs_of_one_program_at_the_same_time_do_not_collide() {
    let exe = std::env::current_exe().unwrap();
    let runs: Vec<(u64, KillOnDrop)> = [100_000u64, 200_000]
        .into_iter()
        .map(|n| {
            let child = Command::new(&exe)
                .args([
                    "twin_run",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("PYCSP_TEST_TWIN", n.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            (n, KillOnDrop(child))
        })
        .collect();
    for (n, mut run) in runs {
        // Read everything: closing the pipe early would fail the run's own output.
        let lines: Vec<String> = BufReader::new(run.0.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .collect();
        let sum = lines.iter().find_map(|l| {
            l.find("SUM ")
                .map(|at| l[at + 4..].trim().parse::<u64>().unwrap())
        });
        assert_eq!(sum, Some(n * (n - 1) / 2), "the run with n = {n}");
        assert!(run.0.wait().unwrap().success());
    }
}
