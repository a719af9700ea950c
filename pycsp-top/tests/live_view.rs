//! `pycsp-top` in a real terminal: this test process is the root of a network (a producer
//! that fills a buffered channel faster than a consumer empties it), `pycsp-top` runs in a
//! tmux session attached to it, and the test reads the screen (`tmux capture-pane`) until
//! the rows show what the network does, then presses `q`.
//!
//! tmux must be installed; where it is not, the test says so and passes, unless
//! `PYCSP_CLUSTER_TESTS=require` (set by `.ci/run`, which installs tmux).
use std::process::Command;
use std::time::{Duration, Instant};

use pycsp::prelude::*;
use pycsp::Network;

/// Writes numbers until the channel fails (the test poisons it at the end).
#[process]
fn producer(out: ChannelOut<u64>) -> Result<(), ChannelError> {
    (0..).try_for_each(|i| out.write(i))
}

/// Reads slowly: the buffer stays full and the producer waits to write. Slowly enough that
/// the producer, woken by each read, is back asleep on the full buffer almost all the time
/// also on a loaded machine (a read every 2 ms left it runnable, waiting for a CPU, for much
/// of each period beside two busy processes, and the screen seldom caught it blocked).
#[process]
fn consumer(inp: ChannelIn<u64>) -> Result<(), ChannelError> {
    loop {
        inp.read()?;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it gives a value, at most `limit`.
fn until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it gives a value, at most `limit`; `Err(what)` when the time is up (for a
/// caller that says more about what it saw).
fn until_or<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= end {
            return Err(what.to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tmux(socket: &str, args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(["-L", socket])
        .args(args)
        .output()
        .expect("tmux runs")
}

/// The rows of the screen that mention `word`.
fn rows_with<'a>(screen: &'a str, word: &str) -> Vec<&'a str> {
    screen.lines().filter(|l| l.contains(word)).collect()
}

/// The numbers among the cells of `row`.
fn numbers(row: &str) -> Vec<u64> {
    row.split(|c: char| c.is_whitespace() || c == '│')
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn pycsp_top_shows_processes_and_channels_in_a_terminal_and_quits_on_q() {
    if Command::new("tmux").arg("-V").output().is_err() {
        let why = "tmux is not installed: the terminal test of pycsp-top cannot run";
        if std::env::var("PYCSP_CLUSTER_TESTS").is_ok_and(|v| v == "require") {
            panic!("{why} (PYCSP_CLUSTER_TESTS=require)");
        }
        eprintln!("skipped: {why}");
        return;
    }
    let numbers_ch = Channel::<u64>::named_buffered("numbers", 16).unwrap();
    let (out, inp) = (numbers_ch.writer(), numbers_ch.reader());
    let network = std::thread::spawn(move || Parallel((producer(out), consumer(inp))));

    // The network as the library sees it from outside: the producer is blocked on a full
    // buffer (a real condition, awaited).
    let me = std::process::id();
    let seen = Network::attach(me).expect("this process has a network");
    until(Duration::from_secs(30), "the producer to block", || {
        let s = seen.snapshot();
        let p = s.processes.iter().find(|p| p.name == "producer")?;
        let c = s.channels.iter().find(|c| c.name == "numbers")?;
        (p.blocked && p.state == "writes numbers" && c.occupancy == 16).then_some(())
    });

    let socket = format!("pycsp-top-test-{me}");
    let done = std::env::temp_dir().join(format!("pycsp-top-test-{me}.exit"));
    let _ = std::fs::remove_file(&done);
    let cmd = format!(
        "{} {me} --interval 0.2; echo $? > {}",
        env!("CARGO_BIN_EXE_pycsp-top"),
        done.display()
    );
    let started = tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "150",
            "-y",
            "30",
            &cmd,
        ],
    );
    assert!(started.status.success(), "tmux new-session: {started:?}");
    let capture = || {
        String::from_utf8_lossy(&tmux(&socket, &["capture-pane", "-p", "-t", "top"]).stdout)
            .into_owned()
    };

    // Rows: the producer waits to write `numbers`, the consumer runs; both have counted
    // messages; the channel is a full buffered(16) with a writer asleep on it.
    let mut last = String::new();
    let screen = until_or(Duration::from_secs(30), "pycsp-top's rows", || {
        let screen = capture();
        last.clone_from(&screen);
        let producer = rows_with(&screen, "producer");
        let consumer = rows_with(&screen, "consumer");
        let channel = rows_with(&screen, "numbers")
            .into_iter()
            .find(|r| r.contains("buffered(16)"))?;
        let ok = screen.contains(&format!("network of pid {me}"))
            && producer.iter().any(|r| r.contains("writes numbers"))
            && consumer.iter().any(|r| r.contains("running"))
            && producer.iter().any(|r| numbers(r).last() > Some(&0))
            && consumer
                .iter()
                .any(|r| numbers(r).iter().rev().nth(1) > Some(&0))
            && channel.contains("16/16")
            && numbers(channel).get(3) >= Some(&1);
        ok.then_some(screen)
    })
    .unwrap_or_else(|what| panic!("timed out waiting for {what}; the last screen:\n{last}"));
    assert!(
        screen.contains("PROCESS") && screen.contains("BLOCKED W"),
        "{screen}"
    );
    // The root itself: it waits in Parallel for its two children.
    let root = rows_with(&screen, &me.to_string());
    assert!(
        root.iter()
            .any(|r| r.contains("joins 2 processes") || r.contains("running")),
        "{screen}"
    );

    // `q` quits, with status 0.
    tmux(&socket, &["send-keys", "-t", "top", "q"]);
    let status = until(Duration::from_secs(10), "pycsp-top to quit on q", || {
        std::fs::read_to_string(&done)
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    assert_eq!(status.trim(), "0", "pycsp-top's exit status");
    let _ = std::fs::remove_file(&done);
    tmux(&socket, &["kill-server"]);

    numbers_ch.poison();
    let (p, c) = network.join().unwrap().unwrap();
    assert_eq!(p, Err(ChannelError::Poisoned));
    assert_eq!(c, Err(ChannelError::Poisoned));
}
