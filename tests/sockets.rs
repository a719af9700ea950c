//! Socket channels: processes placed by a launcher (here the trivial `{cmd}`, so a separate
//! process network on this machine) reach channels hosted by the root over TCP.

use pycsp::prelude::*;

mod common;

#[process]
fn produce(out: ChannelOut<u64>, from: u64, n: u64) -> Result<u32, ChannelError> {
    for i in from..from + n {
        out.write(i)?;
    }
    Ok(std::process::id())
}

#[process]
fn relay(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        let v = match inp.read() {
            Ok(v) => v,
            Err(ChannelError::Retired) => return Ok(()),
            Err(e) => return Err(e),
        };
        out.write(v * 10)?;
    }
}

#[process]
fn consume(inp: ChannelIn<u64>) -> Result<(u64, u64), ChannelError> {
    inp.iter().try_fold((0, 0), |(n, s), v| Ok((n + 1, s + v?)))
}

#[test]
fn a_placed_pipeline_over_tcp_delivers_every_message_once() {
    let a = Channel::<u64>::named("tcp://127.0.0.1:0/a").unwrap();
    let port = common::port_of(a.name());
    let b = Channel::<u64>::named_buffered(&format!("tcp://127.0.0.1:{port}/b"), 8).unwrap();
    let here = Placement::launcher("{cmd}");
    let (pid, relayed, consumed) = Parallel((
        produce(a.writer(), 1, 2000).on(here.clone()),
        relay(a.reader(), b.writer()).on(here),
        consume(b.reader()),
    ))
    .unwrap();
    assert_ne!(pid.unwrap(), std::process::id());
    relayed.unwrap();
    let (n, sum) = consumed.unwrap();
    assert_eq!(n, 2000);
    assert_eq!(sum, 10 * (1..=2000u64).sum::<u64>());
}

/// A channel on port 0 listens on a port the system picks, says which in its name, and its
/// ends reach a placed process under that name (once it named port 0, which no end can
/// connect to); a second channel under that port shares the listener, and a second address
/// with port 0 listens anew.
#[test]
fn a_channel_on_port_0_listens_on_a_port_the_system_picks_and_is_named_after_it() {
    let a = Channel::<u64>::named("tcp://127.0.0.1:0/a").unwrap();
    let port = common::port_of(a.name());
    assert_ne!(port, 0);
    assert_eq!(a.name(), format!("tcp://127.0.0.1:{port}/a"));
    let b = Channel::<u64>::named_buffered(&format!("tcp://127.0.0.1:{port}/b"), 8).unwrap();
    let other = Channel::<u64>::named("tcp://127.0.0.1:0/a").unwrap();
    assert_ne!(common::port_of(other.name()), port, "port 0 listens anew");
    // The name it reports is taken once, as any name.
    assert!(matches!(
        Channel::<u64>::named(a.name()),
        Err(ChannelError::NameInUse(_))
    ));
    let here = Placement::launcher("{cmd}");
    let (pid, relayed, consumed) = Parallel((
        produce(a.writer(), 1, 100).on(here.clone()),
        relay(a.reader(), b.writer()).on(here),
        consume(b.reader()),
    ))
    .unwrap();
    assert_ne!(pid.unwrap(), std::process::id());
    relayed.unwrap();
    assert_eq!(consumed.unwrap(), (100, 10 * (1..=100u64).sum::<u64>()));
}

#[process]
fn farm_worker(jobs: ChannelIn<u64>, results: ChannelOut<(u64, u64)>) -> u64 {
    let mut done = 0;
    while let Ok(n) = jobs.read() {
        if results.write((n, n * n)).is_err() {
            break;
        }
        done += 1;
    }
    done
}

#[test]
fn placed_workers_share_one_any_to_any_tcp_channel() {
    let jobs = Channel::<u64>::named("tcp://127.0.0.1:0/jobs").unwrap();
    let port = common::port_of(jobs.name());
    let results =
        Channel::<(u64, u64)>::named_buffered(&format!("tcp://127.0.0.1:{port}/res"), 4).unwrap();
    let here = Placement::launcher("{cmd}");
    let (w, r) = (jobs.writer(), results.reader());
    let workers = Spawn(
        (0..3)
            .map(|_| farm_worker(jobs.reader(), results.writer()).on(here.clone()))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let feeder = std::thread::spawn(move || {
        for n in 0..300u64 {
            w.write(n).unwrap();
        }
    });
    let mut seen = vec![false; 300];
    for _ in 0..300 {
        let (n, sq) = r.read().unwrap();
        assert_eq!(sq, n * n);
        assert!(!seen[n as usize], "{n} twice");
        seen[n as usize] = true;
    }
    feeder.join().unwrap();
    drop(jobs);
    let done: u64 = workers.join().unwrap().iter().sum();
    assert_eq!(done, 300);
}

// ---- Programs started by hand (not by `Parallel`) attach by address ----

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pycsp::net::{ENV_KEY, ENV_KEY_FILE};
use pycsp::{Error, Failure};

/// How long a test waits for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(5);

/// This test binary again, as a separate program (its own process network, not started by
/// `Parallel`), running only the ignored test `separate_program` in `role`, with no key unless
/// the caller gives one.
fn program(role: &str, at: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "separate_program", "--nocapture"])
        .env("PYCSP_TEST_ROLE", role)
        .env("PYCSP_TEST_AT", at)
        .env_remove(ENV_KEY)
        .env_remove(ENV_KEY_FILE)
        .stdin(Stdio::null());
    c
}

/// The line the separate program prints after `RESULT: `.
fn result_line(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("RESULT: "))
        .unwrap_or_else(|| {
            panic!(
                "no RESULT line; stdout: {text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

/// The separate program. As `client`: attaches to `AT/requests` and `AT/replies` and sends 50
/// requests. As `host`: hosts `AT/hosted`, says READY, and waits to be killed.
#[test]
#[ignore = "a separate program, started by the tests below"]
fn separate_program() {
    let (Ok(role), Ok(at)) = (
        std::env::var("PYCSP_TEST_ROLE"),
        std::env::var("PYCSP_TEST_AT"),
    ) else {
        panic!("run by other tests, with PYCSP_TEST_ROLE and PYCSP_TEST_AT");
    };
    match role.as_str() {
        "client" => {
            let run = || -> Result<u64, ChannelError> {
                let requests = Channel::<u64>::open(&format!("{at}/requests"))?;
                let replies = Channel::<u64>::open(&format!("{at}/replies"))?;
                let (w, r) = (requests.writer(), replies.reader());
                let mut sum = 0;
                for i in 1..=50 {
                    w.write(i)?;
                    sum += r.read()?;
                }
                Ok(sum)
            };
            println!("RESULT: {:?}", run());
        }
        "host" => {
            let hosted = Channel::<u64>::named(&format!("{at}/hosted")).unwrap();
            let _held = hosted.writer();
            println!("READY");
            loop {
                std::thread::park();
            }
        }
        _ => panic!("unknown role {role}"),
    }
}

/// A host answering each request with its square until the requests retire.
fn squares_host(at: &str) -> std::thread::JoinHandle<Result<u64, ChannelError>> {
    let requests = Channel::<u64>::named(&format!("{at}/requests")).unwrap();
    let replies = Channel::<u64>::named(&format!("{at}/replies")).unwrap();
    let (r, w) = (requests.reader(), replies.writer());
    std::thread::spawn(move || {
        let mut n = 0;
        loop {
            match r.read() {
                Ok(v) => w.write(v * v)?,
                Err(ChannelError::Retired) => return Ok(n),
                Err(e) => return Err(e),
            }
            n += 1;
        }
    })
}

#[test]
fn a_separately_started_program_attaches_by_local_address_with_a_key_file() {
    let at = format!("local://pycsp-test-{}-attach", std::process::id());
    let host = squares_host(&at);
    let key_file = std::env::temp_dir().join(format!("pycsp-key-{}", std::process::id()));
    let mut key = pycsp::net::key_env().unwrap().1.into_encoded_bytes();
    key.push(b'\n'); // a trailing newline is not part of the key
    std::fs::write(&key_file, key).unwrap();
    // Only its owner may read it: a key file others can read or write is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = program("client", &at)
        .env(ENV_KEY_FILE, &key_file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&key_file);
    assert_eq!(result_line(&out), "Ok(42925)"); // 1² + ... + 50²
    assert_eq!(host.join().unwrap(), Ok(50));
}

#[test]
fn a_program_with_a_wrong_key_is_refused_with_an_auth_error_on_both_sides() {
    let at = format!("local://pycsp-test-{}-wrong-key", std::process::id());
    let host = squares_host(&at);
    let out = program("client", &at)
        .env(ENV_KEY, "not the key")
        .output()
        .unwrap();
    let line = result_line(&out);
    assert!(line.starts_with("Err(Auth {"), "{line}");
    assert!(line.contains("the client's key differs"), "{line}");
    match pycsp::net::next_connection_error(&at, PROMPT) {
        Some(ChannelError::Auth { reason, .. }) => {
            assert!(reason.contains("key differs"), "{reason}")
        }
        other => panic!("the host should record an Auth error, got {other:?}"),
    }
    // The host is unharmed: a program with the key is served.
    let (_, key) = pycsp::net::key_env().unwrap();
    let out = program("client", &at).env(ENV_KEY, key).output().unwrap();
    assert_eq!(result_line(&out), "Ok(42925)");
    assert_eq!(host.join().unwrap(), Ok(50));
}

#[test]
fn a_program_without_a_key_is_refused_and_told_how_to_give_it_one() {
    let at = format!("local://pycsp-test-{}-no-key", std::process::id());
    let _host = squares_host(&at);
    let out = program("client", &at).output().unwrap();
    let line = result_line(&out);
    assert!(line.starts_with("Err(Auth {"), "{line}");
    assert!(
        line.contains("no configured key") && line.contains("PYCSP_AUTHKEY"),
        "{line}"
    );
    assert!(matches!(
        pycsp::net::next_connection_error(&at, PROMPT),
        Some(ChannelError::Auth { .. })
    ));
}

/// Starts a separate program hosting `{at}/hosted` (with this program's key) and returns it
/// with a reader of that channel.
fn hosted_elsewhere(at: &str) -> (std::process::Child, ChannelIn<u64>) {
    // ANCHOR: key_env
    // Start another program with this program's key: it may then connect to our channels.
    let (var, key) = pycsp::net::key_env().unwrap();
    let mut host = program("host", at)
        .env(var, key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // ANCHOR_END: key_env
    let mut lines = std::io::BufReader::new(host.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap() == "READY"));
    let remote = Channel::<u64>::open(&format!("{at}/hosted")).unwrap();
    (host, remote.reader())
}

#[test]
fn a_peer_whose_host_is_killed_gets_a_connection_error_at_once() {
    let at = format!("local://pycsp-test-{}-host-killed", std::process::id());
    let (mut host, r) = hosted_elsewhere(&at);
    let reading = std::thread::spawn(move || {
        let got = r.read();
        (got, Instant::now())
    });
    host.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    host.wait().unwrap();
    let (got, at_) = reading.join().unwrap();
    assert!(
        matches!(&got, Err(ChannelError::Connection { reason, .. }) if reason.contains("lost")),
        "{got:?}"
    );
    let after = at_.saturating_duration_since(killed);
    eprintln!("host killed: its peer was told after {after:?}");
    assert!(after < Duration::from_secs(1), "noticed after {after:?}");
}

#[test]
fn a_select_on_the_end_of_a_killed_host_fails_with_its_connection_error() {
    let at = format!("local://pycsp-test-{}-host-killed-alt", std::process::id());
    let (mut host, r) = hosted_elsewhere(&at);
    let selecting = std::thread::spawn(move || {
        Alternation::new()
            .input(&r, |v| v)
            .alt_select()
            .map(|c| c.value)
    });
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
    let got = selecting.join().unwrap();
    assert!(
        matches!(&got, Err(ChannelError::Connection { reason, .. }) if reason.contains("lost")),
        "{got:?}"
    );
}

// ---- The same semantics as shared memory: alternation, retire, poison, crashes ----

#[process]
fn alt_merge(
    a: ChannelIn<u64>,
    b: ChannelIn<u64>,
    out: ChannelOut<u64>,
) -> Result<[u64; 2], ChannelError> {
    let mut counts = [0; 2];
    loop {
        let chosen = Alternation::new()
            .input(&a, |v| (0, v))
            .input(&b, |v| (1, v))
            .fair_select();
        match chosen {
            Ok(c) => {
                let (i, v) = c.value;
                counts[i] += 1;
                // An output guard on a socket end, against a timeout that must not fire.
                let sent = Alternation::new()
                    .output(&out, v, || true)
                    .timeout(Duration::from_secs(30), || false)
                    .pri_select()?;
                assert!(sent.value, "the host reads everything");
            }
            Err(ChannelError::Retired) => return Ok(counts),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn alternation_over_socket_ends_selects_inputs_and_outputs_exactly_once() {
    let a = Channel::<u64>::named("tcp://127.0.0.1:0/a").unwrap();
    let port = common::port_of(a.name());
    let at = |n: &str| format!("tcp://127.0.0.1:{port}/{n}");
    let b = Channel::<u64>::named_buffered(&at("b"), 3).unwrap();
    let out = Channel::<u64>::named(&at("out")).unwrap();
    let merger =
        Spawn(alt_merge(a.reader(), b.reader(), out.writer()).on(Placement::launcher("{cmd}")))
            .unwrap();
    let writers: Vec<_> = [(a.writer(), 0u64), (b.writer(), 1000)]
        .into_iter()
        .map(|(w, base)| {
            std::thread::spawn(move || (base..base + 200).try_for_each(|v| w.write(v)))
        })
        .collect();
    let r = out.reader();
    let mut got: Vec<u64> = (0..400).map(|_| r.read().unwrap()).collect();
    for w in writers {
        w.join().unwrap().unwrap();
    }
    assert_eq!(merger.join().unwrap(), Ok([200, 200]));
    got.sort_unstable();
    let want: Vec<u64> = (0..200).chain(1000..1200).collect();
    assert_eq!(got, want);
    // The merger's end retired when it ended: the host reader is told so.
    assert_eq!(r.read(), Err(ChannelError::Retired));
}

#[process]
fn read_until_error(inp: ChannelIn<u64>, done: ChannelOut<u64>) -> Result<u64, ChannelError> {
    let mut n = 0;
    loop {
        match inp.read() {
            Ok(_) => n += 1,
            Err(ChannelError::Poisoned) => {
                done.poison();
                return Err(ChannelError::Poisoned);
            }
            Err(e) => {
                done.write(n)?;
                return Err(e);
            }
        }
    }
}

#[test]
fn poison_crosses_socket_channels_in_both_directions() {
    let jobs = Channel::<u64>::named("tcp://127.0.0.1:0/jobs").unwrap();
    let port = common::port_of(jobs.name());
    let done = Channel::<u64>::named(&format!("tcp://127.0.0.1:{port}/done")).unwrap();
    let (w, d) = (jobs.writer(), done.reader());
    let p = Spawn(read_until_error(jobs.reader(), done.writer()).on(Placement::launcher("{cmd}")))
        .unwrap();
    for v in 0..5 {
        w.write(v).unwrap();
    }
    // Host -> remote: the placed process, blocked in read, gets Poisoned ...
    jobs.poison();
    // ... and remote -> host: it poisons `done`, where the host waits.
    assert_eq!(d.read(), Err(ChannelError::Poisoned));
    assert_eq!(p.join().unwrap(), Err(ChannelError::Poisoned));
}

#[process]
fn take_three(inp: ChannelIn<u64>) -> Result<Vec<u64>, ChannelError> {
    let got = (0..3).map(|_| inp.read()).collect();
    inp.retire();
    got
}

#[test]
fn a_remote_reader_that_retires_makes_host_writes_fail_with_retired_and_loses_nothing() {
    let ch = Channel::<u64>::named("tcp://127.0.0.1:0/few").unwrap();
    let w = ch.writer();
    let p = Spawn(take_three(ch.reader()).on(Placement::launcher("{cmd}"))).unwrap();
    for v in 0..3 {
        w.write(v).unwrap();
    }
    // A rendezvous: each Ok write was taken. The fourth finds every reader retired.
    assert_eq!(w.write(3), Err(ChannelError::Retired));
    assert_eq!(p.join().unwrap(), Ok(vec![0, 1, 2]));
}

#[process]
fn write_one_then_wait(out: ChannelOut<u64>, gate: ChannelIn<u64>) -> Result<(), ChannelError> {
    out.write(1)?;
    gate.read()?;
    Ok(())
}

#[test]
fn a_placed_process_killed_by_sigkill_wakes_its_peers_at_once_and_is_named() {
    let ch = Channel::<u64>::named("tcp://127.0.0.1:0/victim").unwrap();
    let port = common::port_of(ch.name());
    let gate = Channel::<u64>::named(&format!("tcp://127.0.0.1:{port}/gate")).unwrap();
    let (r, _gate_writer) = (ch.reader(), gate.writer());
    let p = Spawn(write_one_then_wait(ch.writer(), gate.reader()).on(Placement::launcher("{cmd}")))
        .unwrap();
    // The first message proves the placed process is connected; then it blocks on the gate.
    assert_eq!(r.read(), Ok(1));
    let pid = p.pids()[0];
    // SAFETY: sending SIGKILL to the placed process we started (the launcher exec'd into it).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let killed = Instant::now();
    let got = r.read();
    let woke = killed.elapsed();
    eprintln!("placed process killed: its peer woke after {woke:?}");
    assert!(
        matches!(&got, Err(ChannelError::PeerDied { process, .. }) if process.contains("write_one_then_wait")),
        "{got:?}"
    );
    assert!(woke < Duration::from_secs(1), "woke after {woke:?}");
    match p.join() {
        Err(Error::ProcessFailed { name, failure, .. }) => {
            assert!(name.ends_with("write_one_then_wait"), "{name}");
            assert_eq!(failure, Failure::Signaled(libc::SIGKILL));
        }
        other => panic!("expected the killed process to be named, got {other:?}"),
    }
}

/// A placed process that hands its remote end on to a process of its own: a local child, or
/// one it places by a launcher in turn.
#[process]
fn hand_on(out: ChannelOut<u64>, from: u64, n: u64, place_again: bool) -> Result<u32, String> {
    let child = produce(out, from, n);
    let child = if place_again {
        child.on(Placement::launcher("{cmd}"))
    } else {
        child
    };
    let pid = Parallel(child).map_err(|e| e.to_string())?;
    pid.map_err(|e| e.to_string())
}

#[test]
fn a_remote_end_handed_on_by_a_placed_process_reaches_the_host_from_its_children() {
    let c = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/handed", 4).unwrap();
    let here = Placement::launcher("{cmd}");
    let (local_child, placed_child, consumed) = Parallel((
        hand_on(c.writer(), 0, 300, false).on(here.clone()),
        hand_on(c.writer(), 1000, 300, true).on(here),
        consume(c.reader()),
    ))
    .unwrap();
    let (a, b) = (local_child.unwrap(), placed_child.unwrap());
    let (n, sum) = consumed.unwrap();
    assert_ne!(a, b);
    assert!(![a, b].contains(&std::process::id()));
    assert_eq!(n, 600);
    assert_eq!(sum, (0..300u64).sum::<u64>() + (1000..1300u64).sum::<u64>());
}

#[process]
fn forward(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        out.write(inp.read()?)?;
    }
}

#[test]
fn a_placed_stage_that_returns_poisoned_poisons_its_input_before_retiring_it() {
    // The placed stage gets Poisoned from its output and returns it with `?` (it calls no
    // poison() itself): the writer of its input, here, must see Poisoned, not Retired.
    for round in 0..5 {
        let a = Channel::<u64>::named("tcp://127.0.0.1:0/in").unwrap();
        let port = common::port_of(a.name());
        let b = Channel::<u64>::named(&format!("tcp://127.0.0.1:{port}/out")).unwrap();
        let (w, r) = (a.writer(), b.reader());
        let stage =
            Spawn(forward(a.reader(), b.writer()).on(Placement::launcher("{cmd}"))).unwrap();
        let feeder = std::thread::spawn(move || {
            let mut i = 0;
            loop {
                if let Err(e) = w.write(i) {
                    return e;
                }
                i += 1;
            }
        });
        for _ in 0..20 {
            r.read().unwrap();
        }
        r.poison();
        assert_eq!(
            stage.join().unwrap(),
            Err(ChannelError::Poisoned),
            "round {round}"
        );
        assert_eq!(
            feeder.join().unwrap(),
            ChannelError::Poisoned,
            "round {round}"
        );
    }
}

/// Offers `v` on `out` against a timeout of `ms`: whether the output guard fired, and how
/// long the select took.
#[process]
fn offer_or_time_out(out: ChannelOut<u64>, v: u64, ms: u64) -> Result<(bool, u64), ChannelError> {
    let start = Instant::now();
    let sent = Alternation::new()
        .output(&out, v, || true)
        .timeout(Duration::from_millis(ms), || false)
        .pri_select()?;
    Ok((sent.value, start.elapsed().as_millis() as u64))
}

/// A remote writer's output guard on a rendezvous channel that no reader reads does not fire,
/// and its select's timeout does: the end commits to a guard only when a reader took the
/// message, as locally (once the end's pump claimed the select's offer at once, committing
/// the select to that guard, and the host waited for a reader for ever).
#[test]
fn an_output_guard_on_a_remote_rendezvous_end_nobody_reads_lets_the_timeout_fire() {
    let c = Channel::<u64>::named("tcp://127.0.0.1:0/unread").unwrap();
    let r = c.reader();
    let h = Spawn(offer_or_time_out(c.writer(), 7, 200).on(Placement::launcher("{cmd}"))).unwrap();
    let (sent, took_ms) = h.join().unwrap().unwrap();
    assert!(!sent, "the output guard fired though nobody read");
    assert!(
        took_ms < 5_000,
        "the timeout of 200 ms fired after {took_ms} ms"
    );
    // Nothing was delivered: the reader here finds the channel ended, with nothing in it.
    assert_eq!(r.read_timeout(PROMPT), Err(ChannelError::Retired));
}

/// Offers `v` on `out` against an input guard on `other`: which fired (0: the output guard).
#[process]
fn offer_or_take(out: ChannelOut<u64>, other: ChannelIn<u64>, v: u64) -> Result<u64, ChannelError> {
    let chosen = Alternation::new()
        .output(&out, v, || Ok(0))
        .input(&other, |x: u64| Ok(x))
        .pri_select()?;
    chosen.value
}

/// A remote select's output guard on a rendezvous channel fires once a reader comes, and
/// while none does its other guards can fire: each of two runs.
#[test]
fn a_remote_select_with_an_output_guard_takes_whichever_side_comes() {
    let channels = |name: &str| {
        let at = |n: &str| format!("tcp://127.0.0.1:0/{name}-{n}");
        (
            Channel::<u64>::named(&at("offered")).unwrap(),
            Channel::<u64>::named(&at("other")).unwrap(),
        )
    };
    // A reader comes (after the select began offering): the output guard fires.
    let (c, d) = channels("read");
    let h =
        Spawn(offer_or_take(c.writer(), d.reader(), 7).on(Placement::launcher("{cmd}"))).unwrap();
    assert_eq!(c.reader().read_timeout(PROMPT), Ok(7));
    assert_eq!(h.join().unwrap().unwrap(), 0);
    // A message comes on the other channel while nobody reads: the input guard fires, and
    // the offered message was not delivered.
    let (c, d) = channels("other");
    let r = c.reader();
    let h =
        Spawn(offer_or_take(c.writer(), d.reader(), 8).on(Placement::launcher("{cmd}"))).unwrap();
    d.writer().write(42).unwrap();
    assert_eq!(h.join().unwrap().unwrap(), 42);
    drop(c);
    assert_eq!(r.read_timeout(PROMPT), Err(ChannelError::Retired));
}

/// A remote select whose output guard nobody takes gets a message that comes on its remote
/// input guard, even when that end holds messages for its user only 1 ms
/// (`PYCSP_REMOTE_HOLD_MS=1`), shorter than the select takes to have its offered message
/// back (`Withdraw`): what the input end gives back comes again when the select looks.
#[test]
fn a_remote_select_gets_its_input_while_its_offer_comes_back() {
    for round in 0..5 {
        let at = |n: &str| format!("tcp://127.0.0.1:0/{n}{round}");
        let (c, d) = (
            Channel::<u64>::named(&at("offered")).unwrap(),
            Channel::<u64>::named(&at("other")).unwrap(),
        );
        let r = c.reader();
        let placed = Placement::launcher(&format!("env {}=1 {{cmd}}", pycsp::net::ENV_HOLD_MS));
        let h = Spawn(offer_or_take(c.writer(), d.reader(), 8).on(placed)).unwrap();
        d.writer().write(42).unwrap();
        let got = h
            .join_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("round {round}: the select did not end in 20 s"));
        assert_eq!(got.unwrap(), Ok(42), "round {round}");
        drop(c);
        assert_eq!(r.read_timeout(PROMPT), Err(ChannelError::Retired));
    }
}

/// Runs `op` (an operation on `out` that waits with its message at the host) while another
/// thread poisons the channel through a clone of `out` (the same connection) once a writer
/// sleeps on it (the thread watches this process's network for that); what `op` returned.
fn poison_once_it_sleeps<R>(out: &ChannelOut<u64>, op: impl FnOnce() -> R) -> R {
    let network = pycsp::Network::attach(std::process::id()).unwrap();
    let name = out.name().to_string();
    let (poisoner, network, name) = (out.clone(), &network, &name);
    std::thread::scope(|s| {
        s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !network
                .snapshot()
                .channels
                .iter()
                .any(|c| c.name == *name && c.blocked_writers > 0)
            {
                assert!(Instant::now() < deadline, "the writer never slept");
                std::thread::sleep(Duration::from_millis(1));
            }
            poisoner.poison();
        });
        op()
    })
}

/// Offers `v` on `out` in a select, poisoned at this end once it sleeps with its message
/// offered to the host ([`poison_once_it_sleeps`]); says on `said` when the select returned,
/// and returns what it returned.
#[process]
fn offer_then_poison(
    out: ChannelOut<u64>,
    said: ChannelOut<u8>,
    v: u64,
) -> Result<(), ChannelError> {
    let r = poison_once_it_sleeps(&out, || {
        Alternation::new()
            .output(&out, v, || ())
            .pri_select()
            .map(|c| c.value)
    });
    said.write(1)?;
    r
}

/// A remote select whose message waits at the host for a reader, and whose channel its own
/// process poisons meanwhile, fails with `Poisoned` only once its message came back: no
/// reader gets it afterwards (once the select failed at once while its pump kept offering
/// the message, which a reader then took: delivered, though the writer was told it was not).
///
/// Thirty rounds: the poison once came, 1 time in 30, between the remote end's pump taking the
/// message and its marking it as one it gives back when asked; the select then left it
/// without asking, and the reader here got it.
#[test]
fn a_remote_select_poisoned_while_its_offer_waits_at_the_host_delivers_nothing() {
    for round in 0..30 {
        let c = Channel::<u64>::named("tcp://127.0.0.1:0/poisoned").unwrap();
        let said = Channel::<u8>::named("tcp://127.0.0.1:0/said").unwrap();
        let r = c.reader();
        let h =
            Spawn(offer_then_poison(c.writer(), said.writer(), 7).on(Placement::launcher("{cmd}")))
                .unwrap();
        said.reader().read().unwrap();
        let read = r.read_timeout(PROMPT);
        let selected = h.join().unwrap();
        assert_eq!(
            (read, selected),
            (Err(ChannelError::Poisoned), Err(ChannelError::Poisoned)),
            "round {round}: (what the reader here read, what the select returned)"
        );
    }
}

/// Writes `v` on `out`, poisoned at this end once the write sleeps with its message at the
/// host ([`poison_once_it_sleeps`]); returns what the write returned.
#[process]
fn write_then_poison(out: ChannelOut<u64>, v: u64) -> Result<(), ChannelError> {
    poison_once_it_sleeps(&out, || out.write(v))
}

/// A remote write whose message waits at the host for a reader, and whose channel its own
/// process poisons meanwhile, fails with `Poisoned`; the message is withdrawn at the host (no
/// reader gets it) and the process ends at once. Once the pump kept the message at the host
/// until a reader took it (`Ok(7)` here) and the process took 10 s to end.
#[test]
fn a_remote_write_poisoned_while_it_waits_at_the_host_delivers_nothing_and_ends() {
    let c = Channel::<u64>::named("tcp://127.0.0.1:0/poisoned-write").unwrap();
    let r = c.reader();
    let h = Spawn(write_then_poison(c.writer(), 7).on(Placement::launcher("{cmd}"))).unwrap();
    let started = Instant::now();
    let ended = h
        .join_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the process did not end in 60 s"));
    assert_eq!(ended.unwrap(), Err(ChannelError::Poisoned));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the process took {took:?} to end after its write failed"
    );
    assert_eq!(r.read_timeout(PROMPT), Err(ChannelError::Poisoned));
}

/// Polls `jobs` once (a read with a zero timeout: the end asks its host for a message), says
/// whether it got one, and waits for `gate` before it leaves, reading no more.
#[process]
fn poll_once_then_wait(
    jobs: ChannelIn<u64>,
    polled: ChannelOut<bool>,
    gate: ChannelIn<()>,
) -> Result<(), ChannelError> {
    let got = jobs.read_timeout(Duration::ZERO).is_ok();
    polled.write(got)?;
    gate.read()?;
    Ok(())
}

/// A select here offers on a rendezvous channel whose only reader is remote; that reader
/// polls once, so its host takes the select's message for it, and does not take it: the
/// message goes back to the select, whose timeout then fires (once a copy of the message went
/// back into the channel, the select stayed committed to its output guard, and waited for a
/// reader for ever).
#[test]
fn a_select_here_whose_message_a_remote_reader_did_not_take_lets_the_timeout_fire() {
    let at = |n: &str| format!("tcp://127.0.0.1:0/{n}");
    let c = Channel::<u64>::named(&at("polled")).unwrap();
    let polled = Channel::<bool>::named(&at("said")).unwrap();
    let gate = Channel::<()>::named(&at("gate")).unwrap();
    let w = c.writer();
    let (tx, rx) = std::sync::mpsc::channel();
    let select = std::thread::spawn(move || {
        let start = Instant::now();
        let fired = Alternation::new()
            .output(&w, 5, || "output")
            .timeout(Duration::from_secs(2), || "timeout")
            .pri_select()
            .map(|c| c.value);
        tx.send((fired, start.elapsed())).unwrap();
    });
    let h = Spawn(
        poll_once_then_wait(c.reader(), polled.writer(), gate.reader())
            .on(Placement::launcher("{cmd}")),
    )
    .unwrap();
    // The poll asks the host, and the answer is a round trip away: it usually misses the
    // select's message, which then goes back to the select. A poll that finds the message
    // there already (its end's `Read` was on its way ahead of it) took it: exactly one of
    // the two, as the select must report.
    let took_it = polled.reader().read_timeout(PROMPT).unwrap();
    let (fired, took) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the select never ended");
    let expected = if took_it { "output" } else { "timeout" };
    assert_eq!(fired, Ok(expected), "after {took:?}");
    gate.writer().write(()).unwrap();
    h.join().unwrap().unwrap();
    select.join().unwrap();
}

/// Writes `v` on `out` within `ms`: whether it was taken (false: it timed out), and how long
/// the write took.
#[process]
fn write_within(out: ChannelOut<u64>, v: u64, ms: u64) -> Result<(bool, u64), ChannelError> {
    let start = Instant::now();
    let taken = match out.write_timeout(v, Duration::from_millis(ms)) {
        Ok(()) => true,
        Err(WriteTimeoutError::Timeout(_)) => false,
        Err(e) => return Err(e.error()),
    };
    Ok((taken, start.elapsed().as_millis() as u64))
}

/// A remote rendezvous write with a timeout that no reader takes times out, not delivered (the
/// end's pump took the message from the writer at once, and the writer could not withdraw it
/// while the host waited for a reader for ever).
#[test]
fn a_remote_rendezvous_write_that_nobody_takes_times_out() {
    let c = Channel::<u64>::named("tcp://127.0.0.1:0/untaken").unwrap();
    let r = c.reader();
    let h = Spawn(write_within(c.writer(), 7, 200).on(Placement::launcher("{cmd}"))).unwrap();
    let (taken, took_ms) = h.join().unwrap().unwrap();
    assert!(!taken, "taken though nobody read");
    assert!(
        took_ms < 5_000,
        "a timeout of 200 ms fired after {took_ms} ms"
    );
    drop(c);
    assert_eq!(r.read_timeout(PROMPT), Err(ChannelError::Retired));
}

/// Tries to write `v` on `out` without waiting: whether it went.
#[process]
fn try_write_once(out: ChannelOut<u64>, v: u64) -> Result<bool, ChannelError> {
    match out.try_write(v) {
        Ok(()) => Ok(true),
        Err(TryWriteError::Full(_)) => Ok(false),
        Err(e) => Err(e.error()),
    }
}

/// `try_write` on a remote rendezvous end with no reader at the host fails (`Full`), nothing
/// delivered, instead of waiting for a reader.
#[test]
fn a_remote_rendezvous_try_write_with_no_reader_fails_at_once() {
    let c = Channel::<u64>::named("tcp://127.0.0.1:0/tried").unwrap();
    let r = c.reader();
    let h = Spawn(try_write_once(c.writer(), 7).on(Placement::launcher("{cmd}"))).unwrap();
    assert!(!h.join().unwrap().unwrap(), "it went with no reader");
    drop(c);
    assert_eq!(r.read_timeout(PROMPT), Err(ChannelError::Retired));
}

/// Writes `n` messages, then poisons its channel.
#[process]
fn write_n_then_poison(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    out.poison();
    Ok(())
}

/// A remote writer whose earlier messages wait for room in a full channel at its host, and
/// which then poisons it: the poison reaches the host at once, as in shared memory (it waited
/// behind them: the writer's pump waited for their confirmations on the socket, the host's
/// connection thread for room to place the first, and a writer of the host waited for ever).
#[test]
fn a_remote_writers_poison_reaches_a_channel_whose_buffer_is_full() {
    // As many messages as the remote end holds back (the host's window of unconfirmed
    // writes and the proxy's buffer, the capacity each), so that its writes return.
    for (capacity, n) in [(1, 2), (4, 8)] {
        let c = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/full-then-poisoned", capacity)
            .unwrap();
        let w = c.writer();
        for i in 0..capacity as u64 {
            w.write(100 + i).unwrap();
        }
        let h = Spawn(write_n_then_poison(c.writer(), n).on(Placement::launcher("{cmd}"))).unwrap();
        let t = std::time::Instant::now();
        let wrote = w.write_timeout(200, std::time::Duration::from_secs(20));
        let took = t.elapsed();
        assert_eq!(h.join().unwrap(), Ok(()));
        eprintln!("capacity {capacity}: the host's write {wrote:?} after {took:?}");
        assert_eq!(
            wrote,
            Err(WriteTimeoutError::Failed(200, ChannelError::Poisoned))
        );
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    }
}
