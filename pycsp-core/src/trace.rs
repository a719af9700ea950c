//! Seeing a network run: `tracing` events for its life, and the opt-in message trace.
//!
//! **Events** ([`tracing`], the ecosystem's standard; with no subscriber interested an event
//! costs one relaxed load). Targets and fields:
//!
//! | target | event | level | fields |
//! |---|---|---|---|
//! | `pycsp::process` | a process started (in its parent, and in itself) | `INFO` | `name`, `pid`, `parent` |
//! | `pycsp::process` | a process returned | `INFO` | `name`, `pid`, `outcome` |
//! | `pycsp::process` | a process failed | `WARN` | `name`, `pid`, `failure` |
//! | `pycsp::channel` | an end retired | `DEBUG` | `channel`, `side` (`reader`/`writer`) |
//! | `pycsp::channel` | a channel was poisoned | `INFO` | `channel` |
//! | `pycsp::channel` | an operation saw `PeerDied` | `WARN` | `channel`, `process`, `pid` |
//! | `pycsp::deadlock` | a deadlock was found | `ERROR` | `report` |
//!
//! A subscriber lives in one process: each process of a network that should report installs
//! its own (in a root's `main`, in a child's `#[process]` body).
//!
//! **Message trace.** With `PYCSP_TRACE=path` in the environment of the root process (the
//! children inherit it), every process of the network appends to that file: one line per
//! event, each written with one `write` to a file opened with `O_APPEND`, so that lines of
//! different processes never interleave and a process killed at any moment leaves only whole
//! lines. The format is the Chrome trace-event JSON array: the root truncates the file and
//! writes `[` and its first event; every later line is `,{event}`; the closing `]` is left out
//! (the format allows it, and no process knows it is the last). Per process a `process_name`
//! metadata event (the OS pid, the process's name) and per thread a `thread_name`; a complete
//! event (`ph: "X"`) for each read, write, select and join, and a flow arrow for each message
//! (`ph: "s"` in the write, `ph: "f"`, `bp: "e"` in the read, with the message's id).
//! Timestamps are microseconds of `CLOCK_MONOTONIC`, one clock for all processes of the host.
//!
//! With no trace the hot path pays one relaxed load of [`STATE`] and a branch per operation.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::sys;

/// The environment variable naming the message trace's file.
pub(crate) const ENV_TRACE: &str = "PYCSP_TRACE";

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

/// Whether this process writes a message trace: unknown until the first operation asks.
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
/// Set before `main` in a process started by a combinator: it appends, the root truncates.
static CHILD: AtomicBool = AtomicBool::new(false);
/// The name of this process's function (`main` in a root).
static NAME: OnceLock<&'static str> = OnceLock::new();
/// The trace file, once opened (`None`: no trace).
static SINK: OnceLock<Option<File>> = OnceLock::new();
/// The pid whose `process_name` was written (a forked copy writes its own).
static NAMED: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's (pid, tid) once its `thread_name` was written.
    static IDS: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// Whether this process writes a message trace (one relaxed load once that is known).
#[inline(always)]
pub(crate) fn on() -> bool {
    STATE.load(Ordering::Relaxed) != OFF && on_slow()
}

/// [`on`] while the state is unknown (the first operation opens the trace, or not) or on.
#[cold]
#[inline(never)]
fn on_slow() -> bool {
    sink().is_some()
}

/// The timestamp (ns of `CLOCK_MONOTONIC`) of the start of an operation, or 0 when no trace is
/// written: the operation reports itself at its end only if this is not 0.
#[inline(always)]
pub(crate) fn begin() -> u64 {
    if on() {
        sys::monotonic_ns()
    } else {
        0
    }
}

/// Says, before `main`, that this process was started by a combinator: its trace appends to
/// the root's file instead of starting it.
pub(crate) fn enter_child() {
    CHILD.store(true, Ordering::SeqCst);
}

#[cold]
fn sink() -> Option<&'static File> {
    SINK.get_or_init(open).as_ref()
}

/// Opens the trace file named by `PYCSP_TRACE`, if there is one; the root truncates it and
/// writes the array's `[` with its own `process_name`.
#[cold]
fn open() -> Option<File> {
    let file = std::env::var_os(ENV_TRACE)
        .filter(|p| !p.is_empty())
        .and_then(|path| {
            let child = CHILD.load(Ordering::SeqCst);
            let mut o = OpenOptions::new();
            o.append(true).create(true);
            if !child {
                o.custom_flags(libc::O_TRUNC);
            }
            match o.open(&path) {
                Ok(mut f) => {
                    if !child {
                        let pid = std::process::id();
                        NAMED.store(pid, Ordering::SeqCst);
                        let mut line = String::from("[");
                        metadata(&mut line, "process_name", pid, pid, name());
                        let _ = f.write(line.as_bytes());
                    }
                    Some(f)
                }
                Err(e) => {
                    eprintln!("pycsp: cannot open the trace file {path:?}: {e}");
                    None
                }
            }
        });
    STATE.store(if file.is_some() { ON } else { OFF }, Ordering::Relaxed);
    file
}

fn name() -> &'static str {
    NAME.get().copied().unwrap_or("main")
}

/// A metadata event (`process_name`, `thread_name`) as a line.
fn metadata(line: &mut String, what: &str, pid: u32, tid: u32, name: &str) {
    let _ = write!(
        line,
        r#"{{"name":"{what}","ph":"M","pid":{pid},"tid":{tid},"args":{{"name":"#
    );
    json_str(line, name);
    line.push_str("}}\n");
}

/// Appends `s` to `out` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Microseconds with three decimals (nanosecond resolution), as the format's `ts` and `dur`.
fn micros(out: &mut String, ns: u64) {
    let _ = write!(out, "{}.{:03}", ns / 1000, ns % 1000);
}

/// This thread's pid and tid; writes the `process_name` and `thread_name` events the first
/// time a process or thread writes (into `line`, before the event).
fn ids(line: &mut String) -> (u32, u32) {
    let pid = std::process::id();
    let (p, t) = IDS.with(Cell::get);
    if p == pid {
        return (p, t);
    }
    let tid = sys::thread_id();
    IDS.with(|c| c.set((pid, tid)));
    if NAMED.swap(pid, Ordering::SeqCst) != pid {
        line.push(',');
        metadata(line, "process_name", pid, pid, name());
    }
    let thread = std::thread::current();
    let tname = if tid == pid {
        name().to_string()
    } else {
        thread.name().unwrap_or("thread").to_string()
    };
    line.push(',');
    metadata(line, "thread_name", pid, tid, &tname);
    (pid, tid)
}

/// Writes `line` with one `write` (the file is opened with `O_APPEND`).
fn put(line: &str) {
    if let Some(f) = sink() {
        let _ = (&*f).write(line.as_bytes());
    }
}

/// Writes one event: `ph`, `name`, times, and `extra` fields (already JSON, starting with `,`).
fn event(ph: &str, name: &str, ts: u64, dur: Option<u64>, extra: &str) {
    let mut line = String::with_capacity(192);
    push_event(&mut line, ph, name, ts, dur, extra);
    put(&line);
}

/// Appends one event's line to `line` (after the metadata lines of a thread's first event).
fn push_event(line: &mut String, ph: &str, name: &str, ts: u64, dur: Option<u64>, extra: &str) {
    let (pid, tid) = ids(line);
    let _ = write!(line, r#",{{"ph":"{ph}","cat":"pycsp","name":"#);
    json_str(line, name);
    line.push_str(r#","ts":"#);
    micros(line, ts);
    if let Some(d) = dur {
        line.push_str(r#","dur":"#);
        micros(line, d);
    }
    let _ = write!(line, r#","pid":{pid},"tid":{tid}{extra}}}"#);
    line.push('\n');
}

/// The id of a message that went through slot position `pos` of the channel with key `key`:
/// the position is unique in the channel's life; the mixed key keeps channels apart.
pub(crate) fn slot_message(key: u64, pos: u64) -> u64 {
    mix(key) ^ pos
}

/// The id of a message handed over directly between two parties of an alternation: the
/// waiter record, the round and the guard of the party whose offer was claimed (both know
/// them).
pub(crate) fn offer_message(record: u64, round: u32, guard: u64) -> u64 {
    mix(record ^ 0x6f66_6665_7200_0000) ^ (u64::from(round) << 28 | guard)
}

/// splitmix64's finaliser: spreads a key over 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A write of message `id` on `channel` that began at `t0` ([`begin`]) and placed the message
/// after that: a complete event for the write, and the start of the message's flow arrow
/// (just after `t0`, so before any reader can have taken it); both lines in one `write`.
#[cold]
#[inline(never)]
pub(crate) fn wrote(channel: &str, id: u64, t0: u64) {
    let end = sys::monotonic_ns().max(t0 + 2);
    let mut lines = String::with_capacity(384);
    let args = format!(r#","args":{{"channel":{}}}"#, json(channel));
    let name = format!("write {channel}");
    push_event(&mut lines, "X", &name, t0, Some(end - t0), &args);
    push_flow(&mut lines, "s", id, t0 + 1);
    put(&lines);
}

/// A read that began at `t0` ([`begin`]; 0: just now) and took message `id` from `channel`
/// just now: a complete event for the read, and the end of the message's flow arrow; both
/// lines in one `write`.
#[cold]
#[inline(never)]
pub(crate) fn took(channel: &str, id: u64, t0: u64) {
    let at = sys::monotonic_ns();
    let t0 = if t0 == 0 { at - 1 } else { t0.min(at - 1) };
    let mut lines = String::with_capacity(384);
    let args = format!(r#","args":{{"channel":{}}}"#, json(channel));
    let name = format!("read {channel}");
    push_event(&mut lines, "X", &name, t0, Some(at + 1 - t0), &args);
    push_flow(&mut lines, "f", id, at);
    put(&lines);
}

/// The start of the flow arrow of message `id` at `ts`, for a write whose complete event
/// another part reports (a selecting writer: its select).
#[cold]
#[inline(never)]
pub(crate) fn sent(id: u64, ts: u64) {
    let mut line = String::with_capacity(192);
    push_flow(&mut line, "s", id, ts);
    put(&line);
}

/// Appends the line of one end of message `id`'s flow arrow.
fn push_flow(line: &mut String, ph: &str, id: u64, ts: u64) {
    let bp = if ph == "f" { r#","bp":"e""# } else { "" };
    let extra = format!(r#","id":"0x{id:016x}"{bp}"#);
    push_event(line, ph, "message", ts, None, &extra);
}

/// An operation (`what`, e.g. `select`, `join producer`) that began at `t0` ([`begin`]) and
/// ends now: a complete event.
#[cold]
#[inline(never)]
pub(crate) fn span(what: &str, t0: u64) {
    let end = sys::monotonic_ns().max(t0 + 2);
    event("X", what, t0, Some(end - t0), "");
}

/// Something that happened at one moment (a poison, a retirement, a death seen): an instant
/// event on this thread.
#[cold]
#[inline(never)]
fn instant(what: &str) {
    event("i", what, sys::monotonic_ns(), None, r#","s":"t""#);
}

fn json(s: &str) -> String {
    let mut out = String::new();
    json_str(&mut out, s);
    out
}

/// Process `name` was started as `pid` by this process.
pub(crate) fn process_started(name: &str, pid: u32) {
    tracing::info!(target: "pycsp::process", name, pid, parent = std::process::id(), "process started");
}

/// This process (started by a combinator) begins to run its function `name`.
pub(crate) fn process_running(name: &'static str) {
    let _ = NAME.set(name);
    // SAFETY: getppid has no arguments and cannot fail.
    let parent = unsafe { libc::getppid() } as u32;
    tracing::info!(target: "pycsp::process", name, pid = std::process::id(), parent, "process started");
    if on() {
        let mut line = String::new();
        ids(&mut line);
        put(&line);
    }
}

/// Process `name` (`pid`) returned normally.
pub(crate) fn process_returned(name: &str, pid: u32) {
    tracing::info!(target: "pycsp::process", name, pid, outcome = "returned", "process ended");
}

/// Process `name` (`pid`) failed (`failure` says how).
pub(crate) fn process_failed(name: &str, pid: u32, failure: &dyn std::fmt::Display) {
    tracing::warn!(target: "pycsp::process", name, pid, failure = %failure, "process failed");
}

/// A reader (`writer` false) or writer end of `channel` retired.
pub(crate) fn retired(channel: &str, writer: bool) {
    let side = if writer { "writer" } else { "reader" };
    tracing::debug!(target: "pycsp::channel", channel, side, "end retired");
    if on() {
        instant(&format!("retire {side} {channel}"));
    }
}

/// `channel` was poisoned by this process.
pub(crate) fn poisoned(channel: &str) {
    tracing::info!(target: "pycsp::channel", channel, "channel poisoned");
    if on() {
        instant(&format!("poison {channel}"));
    }
}

/// An operation on `channel` found that process `process` (`pid`) died holding an end.
pub(crate) fn peer_died(channel: &str, process: &str, pid: u32) {
    tracing::warn!(target: "pycsp::channel", channel, process, pid, "peer died");
    if on() {
        instant(&format!("peer died on {channel}: {process} ({pid})"));
    }
}

/// A deadlock was found: `report` says who waits on what. Logged at `ERROR` with target
/// `pycsp::deadlock`, and an instant event in the message trace.
pub(crate) fn deadlock(report: &str) {
    tracing::error!(target: "pycsp::deadlock", report, "deadlock");
    if on() {
        instant("deadlock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json("a\"b\\c\nd"), r#""a\"b\\c\u000ad""#);
    }

    #[test]
    fn timestamps_have_nanosecond_decimals() {
        let mut s = String::new();
        micros(&mut s, 1_234_567);
        assert_eq!(s, "1234.567");
    }

    #[test]
    fn message_ids_differ_by_position_and_channel() {
        let a = slot_message(7, 0);
        assert_ne!(a, slot_message(7, 1));
        assert_ne!(a, slot_message(8, 0));
        assert_ne!(offer_message(1, 2, 3), offer_message(1, 3, 3));
    }
}
