//! Socket channels facing hostile or broken peers (issue 12): deadlines on every handshake,
//! a host that stays bounded and idle under a flood of silent connections and at its
//! descriptor limit, a placed process that cannot be hijacked, over-size messages refused
//! before they are sent, a hosted channel that outlives one client's crash, and secrets that
//! stay out of environments, command lines and loose key files.
//!
//! Every test that could hang on a defect runs the blocking part under a watchdog
//! ([`within`]), so a hang is a failure.

mod common;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use pycsp::net::{ENV_KEY, ENV_KEY_FILE};
use pycsp::prelude::*;
use serde::Serialize;
use sha2::Sha256;

/// How long a test waits for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(5);
/// The default handshake deadline.
const HANDSHAKE: Duration = pycsp::net::HANDSHAKE_TIMEOUT;
/// How long anything may block before a test calls it a hang.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Runs `f` on a thread of its own and returns its result, or fails the test if it is still
/// running after `limit` (a hang becomes a failure instead of a stuck test run).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still blocked after {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// This process's key: what a trusted program is given.
fn key() -> Vec<u8> {
    pycsp::net::key_env().unwrap().1.into_encoded_bytes()
}

// ---------------------------------------------------------------------------------------
// A separate program (this test binary again), hosting channels or opening one.

/// This test binary again, as a separate program running only the ignored test
/// `separate_program` in `role`, with no key unless the caller gives one.
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

/// As `host`: hosts `AT/requests` and `AT/replies` (answering each request with its square)
/// and `AT/bytes` (reading and dropping every message), says `READY` and the address it
/// listens on (`AT` with the port the system picked, for port 0), and waits to be killed.
/// As `open`: opens `AT` and says how that went.
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
        "host" => {
            let requests = Channel::<u64>::named(&format!("{at}/requests")).unwrap();
            // On port 0 the first channel says the port the system picked: the others join it.
            let at = requests
                .name()
                .strip_suffix("/requests")
                .unwrap()
                .to_string();
            let replies = Channel::<u64>::named(&format!("{at}/replies")).unwrap();
            let bytes = Channel::<Vec<u8>>::named(&format!("{at}/bytes")).unwrap();
            let (r, w) = (requests.reader(), replies.writer());
            // Held, so that clients coming and going never retire the channels.
            let _held = (requests.writer(), replies.reader(), bytes.writer());
            std::thread::spawn(move || {
                while let Ok(v) = r.read() {
                    if w.write(v * v).is_err() {
                        break;
                    }
                }
            });
            let b = bytes.reader();
            std::thread::spawn(move || while b.read().is_ok() {});
            println!("READY {at}");
            loop {
                std::thread::park();
            }
        }
        "open" => println!("RESULT: {:?}", Channel::<u64>::open(&at).map(|_| ())),
        _ => panic!("unknown role {role}"),
    }
}

/// A host program at `at` (port 0: one the system picks), given this program's key, once it
/// said READY, and the address it listens on. `nofile` limits its open descriptors (`ulimit
/// -n`).
fn start_host(at: &str, nofile: Option<u64>, env: &[(&str, &str)]) -> (Child, String) {
    let (var, key) = pycsp::net::key_env().unwrap();
    let mut c = program("host", at);
    c.env(var, key).stdout(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(n) = nofile {
        // SAFETY: runs in the child between fork and exec; setrlimit is async-signal-safe and
        // the closure allocates nothing.
        unsafe {
            c.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut host = c.spawn().unwrap();
    let mut lines = std::io::BufReader::new(host.stdout.take().unwrap()).lines();
    let listening = lines
        .find_map(|l| l.unwrap().strip_prefix("READY ").map(str::to_string))
        .expect("the host did not start");
    (host, listening)
}

/// Kills and reaps a host program.
fn stop(mut host: Child) {
    let _ = host.kill();
    let _ = host.wait();
}

/// A legitimate client of a host program: one request, its answer.
fn legitimate_client(at: &str) -> Result<u64, ChannelError> {
    let requests = Channel::<u64>::open(&format!("{at}/requests"))?;
    let replies = Channel::<u64>::open(&format!("{at}/replies"))?;
    let (w, r) = (requests.writer(), replies.reader());
    w.write(5)?;
    r.read()
}

/// A field of `/proc/PID/status` (`Threads`, ...).
fn status_field(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// How many descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The CPU time (user + system) process `pid` has used.
fn cpu_of(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// `n` TCP connections to `port` that never say anything.
fn silent_connections(port: u16, n: usize) -> Vec<TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    (0..n)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The protocol by hand (from the wire-format chapter), for fake hosts and raw clients.

const CHALLENGE: u8 = 0x01;
const ANSWER: u8 = 0x02;
const PROOF: u8 = 0x03;
const OPEN: u8 = 0x10;
const OPENED: u8 = 0x11;
const WRITE: u8 = 0x20;
const DONE: u8 = 0x21;
const READ: u8 = 0x30;
const MESSAGE: u8 = 0x31;

fn hmac(key: &[u8], label: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(label);
    m.update(nonce);
    m.finalize().into_bytes().to_vec()
}

#[derive(Serialize)]
struct Open<'a> {
    channel: &'a str,
    type_name: &'a str,
    fingerprint: u64,
    writer: bool,
    token: Option<u64>,
    process: &'a str,
    pid: u32,
}

fn fingerprint(type_name: &str, size: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in type_name.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ size.rotate_left(56)
}

/// A connection that speaks the protocol by hand.
struct Raw(TcpStream);

impl Raw {
    fn send(&mut self, kind: u8, body: &[u8]) {
        let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        f.push(kind);
        f.extend_from_slice(body);
        self.0.write_all(&f).unwrap();
    }

    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.0.read_exact(&mut head).ok()?;
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 1];
        self.0.read_exact(&mut body).ok()?;
        Some((head[4], body))
    }

    /// A client that authenticated with this process's key and opened an end of `channel`
    /// (carrying `u64`).
    fn open_u64(port: u16, channel: &str, writer: bool) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(PROMPT)).unwrap();
        let mut r = Raw(s);
        let (kind, challenge) = r.recv().expect("a challenge");
        assert_eq!(kind, CHALLENGE);
        let mine = [9u8; 32];
        let mut answer = hmac(&key(), b"pycsp-1 client", &challenge);
        answer.extend_from_slice(&mine);
        r.send(ANSWER, &answer);
        assert_eq!(r.recv().expect("a proof").0, PROOF);
        let open = Open {
            channel,
            type_name: "u64",
            fingerprint: fingerprint("u64", 8),
            writer,
            token: None,
            process: "a hand-written client",
            pid: 4242,
        };
        r.send(OPEN, &rmp_serde::to_vec_named(&open).unwrap());
        assert_eq!(r.recv().expect("an answer to Open").0, OPENED);
        r
    }

    fn write_u64(&mut self, v: u64) -> u8 {
        self.send(WRITE, &rmp_serde::to_vec(&v).unwrap());
        self.recv().expect("an answer to Write").0
    }

    /// The server's half of the handshake, then the client's `Open`.
    fn serve_until_open(s: TcpStream) -> Raw {
        s.set_read_timeout(Some(PROMPT)).unwrap();
        let mut r = Raw(s);
        let challenge = [3u8; 32];
        r.send(CHALLENGE, &challenge);
        let (kind, answer) = r.recv().expect("an answer");
        assert_eq!(kind, ANSWER);
        assert_eq!(
            answer[..32],
            hmac(&key(), b"pycsp-1 client", &challenge)[..]
        );
        r.send(PROOF, &hmac(&key(), b"pycsp-1 server", &answer[32..]));
        assert_eq!(r.recv().expect("an Open").0, OPEN);
        r
    }
}

// ---------------------------------------------------------------------------------------
// Item 2: every handshake has a deadline.

/// What a fake host does with each connection.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// Accepts and says nothing.
    Silent,
    /// Sends a challenge, then nothing.
    ChallengeThenSilence,
    /// Sends the length of a frame, then nothing.
    LengthThenSilence,
}

fn fake_host(behaviour: Fake) -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in l.incoming().flatten() {
            match behaviour {
                Fake::Silent => {}
                Fake::ChallengeThenSilence => {
                    let mut f = 33u32.to_le_bytes().to_vec();
                    f.push(CHALLENGE);
                    f.extend_from_slice(&[1; 32]);
                    let _ = s.write_all(&f);
                }
                Fake::LengthThenSilence => {
                    let _ = s.write_all(&100u32.to_le_bytes());
                }
            }
            held.push(s);
        }
    });
    port
}

#[test]
fn opening_at_a_host_that_never_finishes_the_handshake_fails_within_the_deadline() {
    let runs: Vec<_> = [
        Fake::Silent,
        Fake::ChallengeThenSilence,
        Fake::LengthThenSilence,
    ]
    .into_iter()
    .map(|b| {
        let port = fake_host(b);
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = within(WATCHDOG, &format!("open at a {b:?} host"), move || {
                Channel::<u64>::open(&format!("tcp://127.0.0.1:{port}/x")).map(|_| ())
            });
            (b, r, t.elapsed())
        })
    })
    .collect();
    for run in runs {
        let (b, r, took) = run.join().unwrap();
        eprintln!("{b:?} host: {r:?} after {took:?}");
        assert!(
            matches!(&r, Err(ChannelError::Connection { reason, .. }) if reason.contains("in time")),
            "{b:?}: {r:?}"
        );
        assert!(took < HANDSHAKE + Duration::from_secs(3), "{b:?}: {took:?}");
    }
}

#[test]
fn the_handshake_deadline_is_set_by_pycsp_handshake_timeout() {
    let port = fake_host(Fake::Silent);
    let t = Instant::now();
    let out = program("open", &format!("tcp://127.0.0.1:{port}/x"))
        .env(pycsp::net::ENV_HANDSHAKE_TIMEOUT, "0.5")
        .output()
        .unwrap();
    let took = t.elapsed();
    let line = result_line(&out);
    eprintln!("PYCSP_HANDSHAKE_TIMEOUT=0.5: {line} after {took:?}");
    assert!(line.starts_with("Err(Connection"), "{line}");
    assert!(line.contains("the deadline is 500ms"), "{line}");
    assert!(took < HANDSHAKE, "{took:?}");
}

#[test]
fn opening_at_a_stopped_host_fails_within_the_deadline() {
    let (host, at) = start_host("tcp://127.0.0.1:0", None, &[]);
    // SAFETY: stopping the host program we started.
    unsafe { libc::kill(host.id() as libc::pid_t, libc::SIGSTOP) };
    let t = Instant::now();
    let a = at.clone();
    let r = within(WATCHDOG, "open at a stopped host", move || {
        Channel::<u64>::open(&format!("{a}/requests")).map(|_| ())
    });
    let took = t.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(host.id() as libc::pid_t, libc::SIGCONT) };
    stop(host);
    eprintln!("stopped host: {r:?} after {took:?}");
    assert!(matches!(r, Err(ChannelError::Connection { .. })), "{r:?}");
    assert!(took < HANDSHAKE + Duration::from_secs(3), "{took:?}");
}

#[test]
fn an_end_whose_host_goes_silent_after_open_fails_within_the_deadline() {
    // The host answers the probe of `Channel::open`, then, for the end's own connection,
    // authenticates and reads `Open` but never answers it.
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut incoming = l.incoming().flatten();
        let mut probe = Raw::serve_until_open(incoming.next().unwrap());
        probe.send(
            OPENED,
            &rmp_serde::to_vec_named(
                &[("capacity", 0u64)]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap(),
        );
        let _silent = Raw::serve_until_open(incoming.next().unwrap());
        for _ in incoming {}
    });
    let t = Instant::now();
    let r = within(
        WATCHDOG,
        "an end at a host that does not answer Open",
        move || {
            let ch = Channel::<u64>::open(&format!("tcp://127.0.0.1:{port}/x")).unwrap();
            ch.writer().write(1)
        },
    );
    let took = t.elapsed();
    eprintln!("silent after Open: {r:?} after {took:?}");
    assert!(matches!(r, Err(ChannelError::Connection { .. })), "{r:?}");
    assert!(took < HANDSHAKE + Duration::from_secs(3), "{took:?}");
}

// ---------------------------------------------------------------------------------------
// Item 3: a placed process cannot be hijacked.

#[process]
fn forty_two() -> u64 {
    42
}

/// A named pipe at `path`.
fn mkfifo(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn a_placed_process_is_started_although_strangers_connect_first_to_its_call_back() {
    let dir = std::env::temp_dir().join(format!("pycsp-hijack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (args, go) = (dir.join("args"), dir.join("go"));
    mkfifo(&args);
    mkfifo(&go);
    // The launcher tells us its command (where the call-back listens), then waits for us.
    let template = format!(
        "sh -c 'printf \"%s\\n\" \"$*\" > {}; read go < {}; exec \"$@\"' launcher {{cmd}}",
        args.display(),
        go.display()
    );
    let started = Instant::now();
    let placed = std::thread::spawn(move || {
        Spawn(forty_two().on(Placement::launcher(&template))).and_then(|s| s.join())
    });
    let a = args.clone();
    let line = within(WATCHDOG, "the launcher's command", move || {
        std::fs::read_to_string(a).unwrap()
    });
    let port: u16 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("PYCSP_CONTROL=127.0.0.1:"))
        .unwrap_or_else(|| panic!("no call-back address in {line:?}"))
        .parse()
        .unwrap();
    // Strangers connect first: one says nothing, one sends garbage.
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    std::fs::write(&go, "go\n").unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(placed.join().unwrap());
    });
    let r = rx
        .recv_timeout(WATCHDOG)
        .expect("Spawn of a placed process hangs after a stranger connected first");
    let took = started.elapsed();
    drop((silent, garbage));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("placed process with two strangers first: {r:?} after {took:?}");
    assert_eq!(r, Ok(42));
    assert!(took < Duration::from_secs(15), "{took:?}");
}

// ---------------------------------------------------------------------------------------
// Item 5 and the ulimit test: silent connections cost the host little.

#[test]
fn a_host_flooded_by_1000_silent_connections_serves_a_client_with_bounded_threads_and_fds() {
    let (host, at) = start_host("tcp://127.0.0.1:0", None, &[]);
    let port = common::port_of(&format!("{at}/requests"));
    let pid = host.id();
    let silent = silent_connections(port, 1000);
    // The accept queue is served in order: once the client is served, the host has taken
    // every silent connection.
    let a = at.clone();
    let t = Instant::now();
    let served = within(
        WATCHDOG,
        "a client behind 1000 silent connections",
        move || legitimate_client(&a),
    );
    let took = t.elapsed();
    let (threads, fds) = (status_field(pid, "Threads"), open_fds(pid));
    eprintln!(
        "1000 silent connections: client served ({served:?}) in {took:?}; host threads {threads}, fds {fds}"
    );
    drop(silent);
    stop(host);
    assert_eq!(served, Ok(25));
    assert!(threads <= 100, "host threads: {threads}");
    assert!(fds <= 120, "host fds: {fds}");
}

#[test]
fn a_host_at_its_descriptor_limit_serves_a_client_and_stays_idle() {
    // `ulimit -n 256` and 400 idle connections: with the default cap on unauthenticated
    // connections, and with a cap above the limit so that accept meets EMFILE.
    for cap in [None, Some("1000")] {
        let env: Vec<(&str, &str)> = cap.map(|c| ("PYCSP_MAX_STARTUPS", c)).into_iter().collect();
        let (host, at) = start_host("tcp://127.0.0.1:0", Some(256), &env);
        let port = common::port_of(&format!("{at}/requests"));
        let pid = host.id();
        let idle = silent_connections(port, 400);
        let a = at.clone();
        let t = Instant::now();
        let served = within(WATCHDOG, "a client of a host at its fd limit", move || {
            legitimate_client(&a)
        });
        let took = t.elapsed();
        // CPU over a window of 1.5 s with the 400 connections still open.
        let (c0, t0) = (cpu_of(pid), Instant::now());
        std::thread::sleep(Duration::from_millis(1500));
        let (cpu, wall) = (cpu_of(pid) - c0, t0.elapsed());
        let (threads, fds) = (status_field(pid, "Threads"), open_fds(pid));
        eprintln!(
            "ulimit -n 256, 400 idle, cap {cap:?}: client {served:?} in {took:?}; host CPU {cpu:?} in {wall:?}, threads {threads}, fds {fds}"
        );
        drop(idle);
        stop(host);
        assert_eq!(served, Ok(25), "cap {cap:?}");
        assert!(
            cpu < wall / 5,
            "cap {cap:?}: the host used {cpu:?} of CPU in {wall:?}"
        );
        if cap.is_some() {
            // The cap was above the limit: the host ran out of descriptors (and coped).
            assert!(fds > 200, "fds {fds}: the descriptor limit was not reached");
        } else {
            assert!(threads <= 100 && fds <= 120, "threads {threads}, fds {fds}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Item 6: an over-size message is refused before anything is sent.

#[test]
fn an_over_size_message_is_refused_at_the_writer_before_anything_is_sent() {
    let max = pycsp::net::frame::MAX_MESSAGE;
    // A remote end (a proxy in this process).
    let (host, at) = start_host("tcp://127.0.0.1:0", None, &[]);
    let a = at.clone();
    let r = within(WATCHDOG, "an over-size remote write", move || {
        let w = Channel::<Vec<u8>>::open(&format!("{a}/bytes"))?.writer();
        // MessagePack: a 5-byte header, then one byte per zero: one byte over the limit.
        let big = vec![0u8; max - 4];
        let t = Instant::now();
        let e = w.write(big);
        let took = t.elapsed();
        // The end still works.
        let after = w.write(vec![1, 2, 3]);
        Ok::<_, ChannelError>((e, took, after))
    })
    .unwrap();
    stop(host);
    eprintln!("over-size remote write: {r:?}");
    assert!(
        matches!(&r.0, Err(ChannelError::TooLarge { len, max: m, .. }) if *len == max as u64 + 1 && *m == max as u64),
        "{:?}",
        r.0
    );
    assert_eq!(r.2, Ok(()));
    // A hosted channel too: its messages may go to remote readers.
    let ch = Channel::<Vec<u8>>::named_buffered("tcp://127.0.0.1:0/big", 1).unwrap();
    let e = ch.writer().write(vec![0u8; max - 4]);
    assert!(matches!(e, Err(ChannelError::TooLarge { .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// Item 7: one client's crash does not fail a hosted channel for the others.

#[test]
fn a_client_cut_off_in_the_middle_of_a_frame_is_retired_and_the_others_are_served() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/shared", 100).unwrap();
    let port = common::port_of(ch.name());
    let at = format!("tcp://127.0.0.1:{port}");
    let reader = ch.reader();
    let (mut a, mut b) = (
        Raw::open_u64(port, "shared", true),
        Raw::open_u64(port, "shared", true),
    );
    for v in 0..3 {
        assert_eq!(a.write_u64(v), DONE);
    }
    for v in 10..13 {
        assert_eq!(b.write_u64(v), DONE);
    }
    // A Write announcing 100 bytes, 10 sent, then the connection closes: the client died.
    let mut f = 100u32.to_le_bytes().to_vec();
    f.push(WRITE);
    f.extend_from_slice(&[0; 9]);
    a.0.write_all(&f).unwrap();
    drop(a);
    match pycsp::net::next_connection_error(&at, PROMPT) {
        Some(ChannelError::Connection { reason, .. }) => {
            assert!(reason.contains("middle of a frame"), "{reason}")
        }
        other => panic!("expected the host to record the lost client, got {other:?}"),
    }
    // The other client, and a new one, are served.
    assert_eq!(b.write_u64(20), DONE);
    let mut c = Raw::open_u64(port, "shared", true);
    assert_eq!(c.write_u64(30), DONE);
    let got: Vec<u64> = (0..8)
        .map(|_| reader.read_timeout(PROMPT).unwrap())
        .collect();
    assert_eq!(got, [0, 1, 2, 10, 11, 12, 20, 30]);
    assert_eq!(
        reader.read_timeout(Duration::from_millis(100)),
        Err(ChannelError::Timeout)
    );
}

#[test]
fn a_client_reader_that_dies_holding_a_message_gives_it_back_and_the_channel_lives() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/held", 4).unwrap();
    let port = common::port_of(ch.name());
    let at = format!("tcp://127.0.0.1:{port}");
    // The host holds a reader too: the channel's readers do not all retire with the client.
    let (w, host_reader) = (ch.writer(), ch.reader());
    w.write(11).unwrap();
    let mut r = Raw::open_u64(port, "held", false);
    r.send(READ, &[]);
    let (kind, body) = r.recv().unwrap();
    assert_eq!(
        (kind, rmp_serde::from_slice::<u64>(&body).unwrap()),
        (MESSAGE, 11)
    );
    drop(r); // dies without acknowledging it
    assert!(matches!(
        pycsp::net::next_connection_error(&at, PROMPT),
        Some(ChannelError::Connection { .. })
    ));
    assert_eq!(host_reader.read_timeout(PROMPT), Ok(11));
    assert_eq!(w.write(12), Ok(()));
    let mut r2 = Raw::open_u64(port, "held", false);
    r2.send(READ, &[]);
    let (kind, body) = r2.recv().unwrap();
    assert_eq!(
        (kind, rmp_serde::from_slice::<u64>(&body).unwrap()),
        (MESSAGE, 12)
    );
}

// ---------------------------------------------------------------------------------------
// Item 8: secrets.

/// What a started process can see of the key: in its own environment, and in that of a
/// program it starts; and whether it can use the key (a request to a host elsewhere).
#[process]
fn what_a_child_sees(at: String, key: Vec<u8>) -> (bool, bool, Result<u64, String>) {
    let own = std::env::var_os(ENV_KEY).is_some();
    let out = Command::new("env").output().unwrap().stdout;
    let text = String::from_utf8_lossy(&out);
    let key = String::from_utf8_lossy(&key);
    let started = text.contains(ENV_KEY) || text.contains(&*key);
    (
        own,
        started,
        legitimate_client(&at).map_err(|e| e.to_string()),
    )
}

#[test]
fn started_processes_get_the_key_but_not_in_their_environment() {
    let (host, at) = start_host("tcp://127.0.0.1:0", None, &[]);
    let k = key();
    let (local, placed) = within(WATCHDOG, "two started processes", {
        let at = at.clone();
        move || {
            Parallel((
                what_a_child_sees(at.clone(), k.clone()),
                what_a_child_sees(at, k).on(Placement::launcher("{cmd}")),
            ))
            .unwrap()
        }
    });
    stop(host);
    assert_eq!(local, (false, false, Ok(25)), "a local child");
    assert_eq!(placed, (false, false, Ok(25)), "a placed process");
}

#[test]
fn the_launchers_command_line_and_environment_hold_no_secret() {
    let dir = std::env::temp_dir().join(format!("pycsp-launcher-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (args, env) = (dir.join("args"), dir.join("env"));
    let template = format!(
        "sh -c 'printf \"%s\\n\" \"$*\" > {}; tr \"\\0\" \"\\n\" < /proc/$$/environ > {}; exec \"$@\"' launcher {{cmd}}",
        args.display(),
        env.display()
    );
    let r = within(WATCHDOG, "a placed process", move || {
        Spawn(forty_two().on(Placement::launcher(&template))).and_then(|s| s.join())
    });
    assert_eq!(r, Ok(42));
    let (line, vars) = (
        std::fs::read_to_string(&args).unwrap(),
        std::fs::read_to_string(&env).unwrap(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let k = String::from_utf8_lossy(&key()).into_owned();
    assert!(line.contains("PYCSP_CONTROL"), "{line}");
    for (what, text) in [("command line", &line), ("environment", &vars)] {
        // The command says where the ticket is (`PYCSP_TICKET=stdin`), never the ticket.
        assert!(
            !text
                .split_whitespace()
                .any(|w| w.contains("TICKET=") && w != "PYCSP_TICKET=stdin"),
            "a ticket in the launcher's {what}: {text}"
        );
        assert!(
            !text.contains(ENV_KEY),
            "a key in the launcher's {what}: {text}"
        );
        assert!(!text.contains(&k), "the key in the launcher's {what}");
    }
}

#[test]
fn a_key_file_that_others_may_read_or_write_is_refused_with_a_chmod_600_hint() {
    use std::os::unix::fs::PermissionsExt;
    let ch = Channel::<u64>::named("tcp://127.0.0.1:0/requests").unwrap();
    let file = std::env::temp_dir().join(format!("pycsp-key-mode-{}", std::process::id()));
    std::fs::write(&file, key()).unwrap();
    for mode in [0o644, 0o640, 0o620, 0o602, 0o600] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = program("open", ch.name())
            .env(ENV_KEY_FILE, &file)
            .output()
            .unwrap();
        let line = result_line(&out);
        eprintln!("key file mode {mode:o}: {line}");
        if mode == 0o600 {
            assert_eq!(line, "Ok(())");
        } else {
            assert!(line.contains("chmod 600"), "mode {mode:o}: {line}");
        }
    }
    let _ = std::fs::remove_file(&file);
}

/// How long a remote write or select whose deadline passed waits for a stopped host to
/// answer its `Withdraw`, at most, and some slack for a loaded machine.
const UNANSWERED: Duration = Duration::from_secs(5 + 3);

/// Opens two writing ends of the host's `requests` (two connections), each checked with one
/// request answered on `replies`, then stops the host: the ends and the host's pid.
fn ends_at_a_stopped_host(
    at: &str,
    host: &Child,
) -> (ChannelOut<u64>, ChannelOut<u64>, ChannelIn<u64>) {
    let requests = Channel::<u64>::open(&format!("{at}/requests")).unwrap();
    let replies = Channel::<u64>::open(&format!("{at}/replies")).unwrap();
    let r = replies.reader();
    let ends = (requests.writer(), requests.writer());
    for (w, v) in [(&ends.0, 3), (&ends.1, 4)] {
        w.write(v).unwrap();
        assert_eq!(r.read(), Ok(v * v));
    }
    // SAFETY: stopping the host program the test started (continued by the test).
    unsafe { libc::kill(host.id() as libc::pid_t, libc::SIGSTOP) };
    (ends.0, ends.1, r)
}

#[test]
fn a_remote_write_or_select_with_a_deadline_at_a_stopped_host_ends() {
    let (host, at) = start_host("tcp://127.0.0.1:0", None, &[]);
    let pid = host.id() as libc::pid_t;
    let (w1, w2, r) = ends_at_a_stopped_host(&at, &host);
    let (wrote, selected) = within(
        WATCHDOG,
        "a write and a select at a stopped host",
        move || {
            // A read needs no answer: it times out at its deadline.
            let t = Instant::now();
            let read = r.read_timeout(Duration::from_millis(300));
            assert_eq!(read, Err(ChannelError::Timeout));
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            let t = Instant::now();
            let wrote = w1.write_timeout(5, Duration::from_millis(300));
            let wrote = (format!("{wrote:?}"), wrote.is_ok(), t.elapsed());
            let t = Instant::now();
            let selected = Alternation::new()
                .output(&w2, 6, || true)
                .timeout(Duration::from_millis(300), || false)
                .pri_select()
                .map(|c| c.value);
            (wrote, (selected, t.elapsed()))
        },
    );
    // SAFETY: continuing the host stopped above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    stop(host);
    eprintln!("at a stopped host: write_timeout {wrote:?}, select {selected:?}");
    // Whether a reader took the message cannot be known without the host: never `Ok`.
    assert!(
        !wrote.1 && wrote.0.starts_with("Err(Uncertain(Connection"),
        "{wrote:?}"
    );
    assert!(wrote.2 < UNANSWERED, "{wrote:?}");
    // Neither the output (its message may not have been taken) nor the timeout (it may have
    // been): the connection's error.
    assert!(
        matches!(selected.0, Err(ChannelError::Connection { .. })),
        "{selected:?}"
    );
    assert!(selected.1 < UNANSWERED, "{selected:?}");
}

/// Says its pid on `pid`, then reads `c` until it fails.
#[process]
fn read_on(c: ChannelIn<u64>, pid: ChannelOut<u32>) -> Result<(), ChannelError> {
    pid.write(std::process::id())?;
    loop {
        c.read()?;
    }
}

/// A placed reader of this process's rendezvous channel `c` (which it read `n` messages
/// from, so that it asked for the next one), stopped: its pid, and the writing end.
type Reading = pycsp::Spawned<Process<Result<(), ChannelError>>>;

fn stopped_remote_reader(name: &str) -> (u32, ChannelOut<u64>, Reading) {
    let c = Channel::<u64>::named(&format!("tcp://127.0.0.1:0/{name}")).unwrap();
    let port = common::port_of(c.name());
    let pids = Channel::<u32>::named(&format!("tcp://127.0.0.1:{port}/{name}-pid")).unwrap();
    let (w, said) = (c.writer(), pids.reader());
    let h = Spawn(read_on(c.reader(), pids.writer()).on(Placement::launcher("{cmd}"))).unwrap();
    let pid = said.read().unwrap();
    // Each `Ok` is the reader's acknowledgement, which travels with its next `Read`.
    for v in 0..3 {
        w.write(v).unwrap();
    }
    // SAFETY: stopping the child the test started (continued by the test).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    (pid, w, h)
}

#[test]
fn a_write_with_a_deadline_whose_remote_reader_is_stopped_with_it_ends() {
    let (pid, w, h) = stopped_remote_reader("held");
    let (wrote, took) = within(WATCHDOG, "a write to a stopped remote reader", move || {
        let t = Instant::now();
        let wrote = w.write_timeout(9, Duration::from_millis(300));
        (format!("{wrote:?}"), t.elapsed())
    });
    // SAFETY: continuing the child stopped above; it ends once its channel fails.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    let _ = h.join();
    eprintln!("write_timeout to a stopped remote reader: {wrote} after {took:?}");
    // The host sent it to the reader, which may have taken it: never `Timeout`, never `Ok`;
    // the error names that reader.
    assert!(wrote.starts_with("Err(Uncertain(Connection"), "{wrote}");
    assert!(
        wrote.contains("read_on") && wrote.contains(&format!("pid {pid}")),
        "{wrote}"
    );
    assert!(took < UNANSWERED, "{took:?}");
}

#[test]
fn a_select_whose_output_went_to_a_remote_reader_that_is_stopped_ends() {
    let (pid, w, h) = stopped_remote_reader("held-alt");
    let (selected, took) = within(WATCHDOG, "a select to a stopped remote reader", move || {
        let t = Instant::now();
        let selected = Alternation::new()
            .output(&w, 9, || true)
            .timeout(Duration::from_millis(300), || false)
            .pri_select()
            .map(|c| c.value);
        (selected, t.elapsed())
    });
    // SAFETY: continuing the child stopped above; it ends once its channel fails.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    let _ = h.join();
    eprintln!("select to a stopped remote reader: {selected:?} after {took:?}");
    // The reader may have taken the message: neither the output nor the timeout; the error
    // names that reader.
    match &selected {
        Err(ChannelError::Connection { reason, .. }) => {
            assert!(reason.contains("read_on"), "{reason}")
        }
        other => panic!("expected the silent reader's error, got {other:?}"),
    }
    assert!(took < UNANSWERED, "{took:?}");
}

#[test]
fn a_large_remote_write_with_a_deadline_to_a_stopped_host_on_a_local_socket_ends() {
    let at = format!("local://pycsp-test-{}-stopped-large", std::process::id());
    let (host, _) = start_host(&at, None, &[]);
    let pid = host.id() as libc::pid_t;
    let bytes = Channel::<Vec<u8>>::open(&format!("{at}/bytes")).unwrap();
    let w = bytes.writer();
    w.write(vec![1; 16]).unwrap();
    // SAFETY: stopping the host program the test started (continued below).
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let (wrote, took) = within(WATCHDOG, "a large write to a stopped host", move || {
        let t = Instant::now();
        // Far more than a local socket buffers: the write blocks in the kernel.
        let wrote = w.write_timeout(vec![7; 8 << 20], Duration::from_millis(300));
        (
            format!("{:?}", wrote.map_err(|e| e.error().to_string())),
            t.elapsed(),
        )
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    stop(host);
    eprintln!("a large write_timeout to a stopped host: {wrote} after {took:?}");
    assert!(wrote.starts_with("Err("), "{wrote}");
    assert!(took < UNANSWERED, "{took:?}");
}
