//! The message trace (`PYCSP_TRACE`): a real network writes a Chrome trace-event JSON array
//! that a trace viewer opens, with one track per process and one flow arrow per message, and
//! a process killed with SIGKILL leaves it whole line by line.
//!
//! The variable is read when a process first needs it, so each traced network runs in a root
//! of its own: this test binary started again with `PYCSP_TRACE` set, running one of the
//! ignored tests below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use pycsp::prelude::*;
use serde_json::Value;

const PIPELINE: u64 = 40;
const SPRAYED: u64 = 30;

#[process]
fn source(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    Ok(())
}

#[process]
fn double(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        match inp.read() {
            Ok(v) => out.write(2 * v)?,
            Err(ChannelError::Retired) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[process]
fn sink(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let mut n = 0;
    loop {
        match inp.read() {
            Ok(_) => n += 1,
            Err(ChannelError::Retired) => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}

/// Writes `n` messages, each to whichever of `x` and `y` a reader takes first (a select of
/// output guards on rendezvous channels: the messages are handed over between the parties).
#[process]
fn spray(x: ChannelOut<u64>, y: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        Alternation::new()
            .output(&x, i, || ())
            .output(&y, i, || ())
            .alt_select()?;
    }
    Ok(())
}

/// Reads from `x` and `y` with a select until both retired; returns how many it read.
#[process]
fn merge(x: ChannelIn<u64>, y: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let mut n = 0;
    loop {
        match Alternation::new()
            .input(&x, |_| ())
            .input(&y, |_| ())
            .alt_select()
        {
            Ok(_) => n += 1,
            Err(ChannelError::Retired) => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}

/// Writes until it is killed.
#[process]
fn victim(out: ChannelOut<u64>) -> Result<(), ChannelError> {
    for i in 0.. {
        out.write(i)?;
    }
    Ok(())
}

/// Not a test of its own: the traced root that `a_traced_network_...` runs. Prints the pid
/// and function of every process it starts.
#[test]
#[ignore = "run by a_traced_network_writes_a_trace_with_a_track_per_process_and_an_arrow_per_message"]
fn traced_network_root() {
    if std::env::var_os("PYCSP_TEST_TRACED_ROOT").is_none() {
        return;
    }
    let c1 = Channel::<u64>::new().unwrap(); // rendezvous
    let c2 = Channel::<u64>::buffered(4).unwrap();
    let (x, y) = (
        Channel::<u64>::new().unwrap(),
        Channel::<u64>::new().unwrap(),
    );
    let h = Spawn((
        source(c1.writer(), PIPELINE),
        double(c1.reader(), c2.writer()),
        sink(c2.reader()),
        spray(x.writer(), y.writer(), SPRAYED),
        merge(x.reader(), y.reader()),
    ))
    .unwrap();
    drop((c1, c2, x, y));
    let pids = h.pids();
    for (pid, f) in pids
        .iter()
        .zip(["source", "double", "sink", "spray", "merge"])
    {
        println!("PID {pid} {f}");
    }
    let (a, b, read, d, merged) = h.join().unwrap();
    a.unwrap();
    b.unwrap();
    d.unwrap();
    assert_eq!(read.unwrap(), PIPELINE);
    assert_eq!(merged.unwrap(), SPRAYED);
}

/// Not a test of its own: the traced root that `a_process_killed_...` runs.
#[test]
#[ignore = "run by a_process_killed_with_sigkill_leaves_every_line_of_the_trace_whole"]
fn traced_kill_root() {
    if std::env::var_os("PYCSP_TEST_TRACED_ROOT").is_none() {
        return;
    }
    let c = Channel::<u64>::buffered(8).unwrap();
    let inp = c.reader();
    let h = Spawn(victim(c.writer())).unwrap();
    drop(c);
    println!("PID {} victim", h.pids()[0]);
    for _ in 0..200 {
        inp.read().unwrap();
    }
    // Killed while it writes: between two lines of the trace or during one.
    h.kill();
    assert!(h.join().is_err(), "a killed process fails");
}

/// Runs `cmd` to its end, at most for a minute: a program that hangs is killed (with the
/// processes of its network, which exit when their parent dies) and the test fails.
fn output_within_a_minute(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill has no memory effects; `pid` is our child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} hung: killed after a minute");
        }
    }
}

/// Runs ignored test `name` of this binary as the root of a traced network; returns the
/// trace's text and the `PID pid function` lines it printed.
fn run_traced(name: &str, trace: &Path) -> (String, BTreeMap<u32, String>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PYCSP_TRACE", trace)
    .env("PYCSP_TEST_TRACED_ROOT", "1");
    let out = output_within_a_minute(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the traced root failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids = stdout
        .lines()
        // The harness prints `test NAME ... ` before the test's first line.
        .filter_map(|l| l.find("PID ").map(|i| &l[i + 4..]))
        .map(|l| {
            let (pid, f) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), f.to_string())
        })
        .collect();
    (std::fs::read_to_string(trace).unwrap(), pids)
}

fn trace_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pycsp-trace-{tag}-{}.json", std::process::id()))
}

/// Every line of the file is one whole event: the first after `[`, the others after `,`.
fn events_line_by_line(text: &str) -> Vec<Value> {
    assert!(text.starts_with('['), "the trace starts the JSON array");
    assert!(text.ends_with('\n'), "the trace ends with a whole line");
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let body = if i == 0 {
                line.strip_prefix('[')
            } else {
                line.strip_prefix(',')
            };
            let body = body.unwrap_or_else(|| panic!("line {i} starts wrong: {line}"));
            serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("line {i} is not one whole event ({e}): {line}"))
        })
        .collect()
}

fn ph(e: &Value) -> &str {
    e["ph"].as_str().unwrap_or("")
}

fn num(e: &Value, k: &str) -> f64 {
    e[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number: {e}"))
}

fn pid(e: &Value) -> u32 {
    e["pid"].as_u64().unwrap() as u32
}

#[test]
fn a_traced_network_writes_a_trace_with_a_track_per_process_and_an_arrow_per_message() {
    let path = trace_path("network");
    let (text, pids) = run_traced("traced_network_root", &path);
    let _ = std::fs::remove_file(&path);

    // The whole file, with the `]` the format lets a writer leave out, is one JSON array.
    let whole: Vec<Value> = serde_json::from_str(&format!("{text}]")).expect("a JSON array");
    let events = events_line_by_line(&text);
    assert_eq!(whole, events);

    // One track per process: a process_name for each pid, with its function's name.
    let mut names: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["name"] == "process_name") {
        assert_eq!(ph(e), "M");
        let name = e["args"]["name"].as_str().unwrap().to_string();
        names.entry(pid(e)).or_default().push(name);
    }
    assert_eq!(pids.len(), 5);
    for (p, f) in &pids {
        let got = names
            .get(p)
            .unwrap_or_else(|| panic!("no process_name for {f} ({p})"));
        assert_eq!(got.len(), 1, "one process_name for {f}: {got:?}");
        assert!(
            got[0].ends_with(&format!("::{f}")),
            "{f} ({p}) is named {got:?}"
        );
    }
    let roots: Vec<_> = names
        .iter()
        .filter(|(p, _)| !pids.contains_key(p))
        .collect();
    assert_eq!(roots.len(), 1, "one more track, the root's: {roots:?}");
    assert_eq!(roots[0].1, &vec!["main".to_string()]);

    // Every message has one arrow: one `s` in its writer's process and one `f` in its
    // reader's, after it, with the same id.
    let mut flows: BTreeMap<String, (Vec<&Value>, Vec<&Value>)> = BTreeMap::new();
    for e in &events {
        let side = match ph(e) {
            "s" => 0,
            "f" => 1,
            _ => continue,
        };
        assert_eq!(e["cat"], "pycsp");
        let id = e["id"].as_str().expect("a string id").to_string();
        let entry = flows.entry(id).or_default();
        if side == 0 {
            entry.0.push(e);
        } else {
            assert_eq!(e["bp"], "e", "the arrow ends in the read's slice");
            entry.1.push(e);
        }
    }
    let by_fn: BTreeMap<&str, u32> = pids.iter().map(|(p, f)| (f.as_str(), *p)).collect();
    let mut edges: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for (id, (s, f)) in &flows {
        assert_eq!((s.len(), f.len()), (1, 1), "message {id}: {s:?} {f:?}");
        assert!(
            num(f[0], "ts") > num(s[0], "ts"),
            "message {id} is read after it was written"
        );
        *edges.entry((pid(s[0]), pid(f[0]))).or_default() += 1;
    }
    let expected: BTreeMap<(u32, u32), u64> = [
        (("source", "double"), PIPELINE),
        (("double", "sink"), PIPELINE),
        (("spray", "merge"), SPRAYED),
    ]
    .into_iter()
    .map(|((w, r), n)| ((by_fn[w], by_fn[r]), n))
    .collect();
    assert_eq!(
        edges, expected,
        "arrows from writer to reader, one per message"
    );

    // Each end of an arrow lies inside a slice of its thread (a read, write or select), so
    // a viewer binds the arrow to it.
    let slices: Vec<&Value> = events.iter().filter(|e| ph(e) == "X").collect();
    for e in events.iter().filter(|e| matches!(ph(e), "s" | "f")) {
        let t = num(e, "ts");
        assert!(
            slices.iter().any(|x| x["pid"] == e["pid"]
                && x["tid"] == e["tid"]
                && num(x, "ts") <= t
                && t <= num(x, "ts") + num(x, "dur")),
            "no slice around {e}"
        );
    }
    let selects = slices.iter().filter(|x| x["name"] == "select").count();
    assert!(
        selects as u64 >= 2 * SPRAYED,
        "every select is a slice: {selects}"
    );
}

#[test]
fn a_process_killed_with_sigkill_leaves_every_line_of_the_trace_whole() {
    let path = trace_path("kill");
    let (text, pids) = run_traced("traced_kill_root", &path);
    let _ = std::fs::remove_file(&path);
    let events = events_line_by_line(&text);
    let victim = *pids.keys().next().expect("the victim's pid");
    let written = events
        .iter()
        .filter(|e| ph(e) == "s" && pid(e) == victim)
        .count();
    assert!(
        written >= 200,
        "the victim's writes are in the trace: {written}"
    );
}

/// An example built beside this test binary (`cargo test` builds the examples into
/// target/<profile>/examples; `cargo test --test trace` alone does not: `cargo build
/// --examples` first).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name)
}

/// The book's trace picture is drawn by these two commands (see "Seeing your network"):
/// `PYCSP_TRACE=target/trace.json cargo run --release --example pipeline`, then
/// `cargo run --example trace_svg -- target/trace.json book/src/trace-pipeline.svg`.
#[test]
fn the_books_trace_picture_is_drawn_from_a_real_run_of_the_pipeline_example() {
    let trace = trace_path("pipeline");
    let svg = trace.with_extension("svg");
    let mut run = Command::new(example("pipeline"));
    run.env("PYCSP_TRACE", &trace);
    let run = output_within_a_minute(run);
    assert!(run.status.success(), "{run:?}");
    let mut draw = Command::new(example("trace_svg"));
    draw.arg(&trace).arg(&svg);
    let draw = output_within_a_minute(draw);
    let _ = std::fs::remove_file(&trace);
    let picture = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(draw.status.success(), "{draw:?}");
    // Four stages and the root; three channels of ten messages each.
    assert!(
        String::from_utf8_lossy(&draw.stdout).ends_with(": 5 processes, 30 messages\n"),
        "{draw:?}"
    );
    assert!(picture.starts_with("<svg") && picture.ends_with("</svg>\n"));
    // An arrow per message in each of the two panels (the whole run, and zoomed in).
    assert_eq!(picture.matches("marker-end=").count(), 2 * 30);
    for stage in ["numbers", "square", "running_sum", "collect"] {
        assert!(
            picture.contains(&format!("pipeline::{stage} (")),
            "a lane for {stage}"
        );
    }
}
