//! A picture of a running network, from what its processes already publish: the census
//! records (name, pid, what each parked thread waits on), the ledgers (which process holds
//! which ends) and the channel headers (name, kind, capacity, messages passed, sleepers).
//!
//! A [`Picture`] is Graphviz DOT text; [`Picture::svg`] lays it out and draws it in pure Rust
//! (the `layout-rs` crate), so nothing needs to be installed. `PYCSP_PICTURE=path.svg` (or
//! `path.dot`) makes the root process write the picture of a network when its `Parallel` ends
//! and when it deadlocks (the deadlock error names the file); `PYCSP_PICTURE_DETAIL=structure`
//! leaves out what changes from run to run (pids, states, counts), for pictures kept in a
//! repository.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::shm::arena::Arena;
use crate::shm::census::{self, Kind, Proc};
use crate::shm::ring::Chan;

/// Environment variable: where the root process writes the picture of its network (`.svg`
/// or `.dot`), when its `Parallel` (or `Spawned::join`) ends and when the network deadlocks.
pub const ENV_PICTURE: &str = "PYCSP_PICTURE";

/// Environment variable: `structure` draws only what a program builds (process names,
/// channel names, kinds and capacities, who writes and reads), the same on every run.
pub const ENV_PICTURE_DETAIL: &str = "PYCSP_PICTURE_DETAIL";

/// A picture of a process network, as Graphviz DOT; see [`network_picture`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    dot: String,
}

impl Picture {
    /// The picture as Graphviz DOT text (`dot -Tsvg` draws it too).
    pub fn dot(&self) -> &str {
        &self.dot
    }

    /// The picture drawn as SVG (laid out in pure Rust; nothing to install).
    pub fn svg(&self) -> String {
        let mut parser = layout::gv::DotParser::new(&self.dot);
        let Ok(graph) = parser.process() else {
            return String::new();
        };
        let mut builder = layout::gv::GraphBuilder::new();
        builder.visit_graph(&graph);
        let mut vg = builder.get();
        let mut svg = layout::backends::svg::SVGWriter::new();
        vg.do_it(false, false, false, &mut svg);
        svg.finalize()
    }

    /// Writes the picture to `path`: DOT if its name ends in `.dot`, else SVG.
    pub fn write(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "dot") {
            std::fs::write(path, &self.dot)
        } else {
            std::fs::write(path, self.svg())
        }
    }
}

/// A picture of this process's network as it is now: every process (name, pid, and whether
/// it runs or what it waits on) and every channel its processes hold ends of (name, kind,
/// capacity, messages passed, who is blocked on it), with an arrow from each writer to the
/// channel and from the channel to each reader; an arrow a process is blocked on is red.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let picture = pycsp_core::network_picture();
/// picture.write("network.svg")?;
/// println!("{}", picture.dot());
/// # Ok(())
/// # }
/// ```
pub fn network_picture() -> Picture {
    draw(&census::processes_now(), Detail::Full)
}

/// How much a picture shows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Detail {
    /// Pids, states, counts.
    Full,
    /// What the program builds, the same on every run.
    Structure,
}

/// The detail `PYCSP_PICTURE_DETAIL` asks for.
pub(crate) fn detail() -> Detail {
    match std::env::var(ENV_PICTURE_DETAIL).as_deref() {
        Ok("structure") => Detail::Structure,
        _ => Detail::Full,
    }
}

/// The picture of the network as it was when the last deadlock was declared.
pub(crate) fn deadlock_picture() -> Option<Picture> {
    // A deadlock through socket channels lists the processes of other networks too, whose
    // channel keys are theirs: the picture shows this network's (the report names them all).
    let own = Arena::get().map_or(0, |a| a.network());
    census::last_snapshot().map(|mut procs| {
        procs.retain(|p| p.net.0 == 0 || p.net.0 == own);
        draw(&procs, Detail::Full)
    })
}

/// One process of a set that was started, for [`set_picture`]: its function, pid, how it
/// ended (if it did), and the ends it was started with (channel key, is a writer).
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) pid: u32,
    pub(crate) ended: Option<String>,
    pub(crate) ends: Vec<(u64, bool)>,
}

/// The picture of a set of processes as it was started: each process and the ends it was
/// given (what a `Parallel` builds).
pub(crate) fn set_picture(members: &[Member], detail: Detail) -> Picture {
    let procs: Vec<Proc> = members
        .iter()
        .map(|m| {
            let mut holds: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
            for &(k, w) in &m.ends {
                let e = holds.entry(k).or_default();
                if w {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
            let mut p = Proc::new(m.pid, &m.name);
            p.holds = holds.into_iter().map(|(k, (w, r))| (k, w, r)).collect();
            p
        })
        .collect();
    let states: Vec<Option<String>> = members.iter().map(|m| m.ended.clone()).collect();
    draw_with(&procs, detail, &states)
}

/// Writes `picture` where `PYCSP_PICTURE` says, if it is set; the path written.
pub(crate) fn write_requested(picture: &Picture) -> Option<String> {
    let path = std::env::var(ENV_PICTURE).ok().filter(|p| !p.is_empty())?;
    match picture.write(&path) {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!("pycsp: could not write the picture of the network to {path}: {e}");
            None
        }
    }
}

fn draw(procs: &[Proc], detail: Detail) -> Picture {
    draw_with(procs, detail, &[])
}

/// What a channel looks like in a picture.
struct ChanInfo {
    name: String,
    kind: String,
    passed: Option<u64>,
    held: Option<usize>,
    sleepers: Option<(u32, u32)>,
}

fn chan_info(arena: Option<&'static Arena>, key: u64, fallback: &str) -> ChanInfo {
    match arena.and_then(|a| Chan::attach(a, key)) {
        Some(c) => {
            let kind = match c.capacity() {
                0 => "rendezvous".to_string(),
                n => format!("buffered ({n})"),
            };
            let (rx, tx) = c.events();
            ChanInfo {
                name: c.name().to_string(),
                kind,
                passed: Some(c.passed()),
                held: (!c.is_rendezvous()).then(|| c.len()),
                sleepers: Some((rx.sleepers(), tx.sleepers())),
            }
        }
        None => ChanInfo {
            name: if fallback.is_empty() {
                format!("channel {key:#x}")
            } else {
                fallback.to_string()
            },
            kind: String::new(),
            passed: None,
            held: None,
            sleepers: None,
        },
    }
}

/// Quotes `s` for a DOT string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn draw_with(procs: &[Proc], detail: Detail, ended: &[Option<String>]) -> Picture {
    let procs = &users_only(procs);
    let arena = Arena::get().ok();
    let full = detail == Detail::Full;
    // Channels in the order processes first hold them; their names from waits if freed.
    let mut order: Vec<u64> = Vec::new();
    let mut wait_names: BTreeMap<u64, String> = BTreeMap::new();
    for p in procs {
        for &(k, w, r) in &p.holds {
            if (w > 0 || r > 0) && !order.contains(&k) {
                order.push(k);
            }
        }
        for wt in &p.waits {
            if !wt.kind.joins() {
                for (k, _, name) in &wt.items {
                    wait_names.entry(*k).or_insert_with(|| name.clone());
                    if !order.contains(k) {
                        order.push(*k);
                    }
                }
            }
        }
    }
    let mut dot = String::from("digraph network {\n  rankdir=LR;\n");
    let shown: Vec<usize> = (0..procs.len())
        .filter(|&i| full || procs[i].holds.iter().any(|&(_, w, r)| w + r > 0))
        .collect();
    for &i in &shown {
        let p = &procs[i];
        let mut label = p.name.clone();
        if full {
            if p.pid != 0 {
                let _ = write!(label, "\npid {}", p.pid);
            }
            let state = match ended.get(i).cloned().flatten() {
                Some(s) => s,
                None if p.pid == 0 => "starting".into(),
                None if !p.waits.is_empty() && p.waits.len() as u32 == p.user_threads => {
                    "blocked".into()
                }
                None if !p.waits.is_empty() => format!("{} threads parked", p.waits.len()),
                None => "running".into(),
            };
            let _ = write!(label, "\n{state}");
        }
        let _ = writeln!(dot, "  p{i} [shape=box, label={}];", q(&label));
    }
    for (j, &k) in order.iter().enumerate() {
        let info = chan_info(arena, k, wait_names.get(&k).map_or("", String::as_str));
        let mut label = info.name.clone();
        if !info.kind.is_empty() {
            let _ = write!(label, "\n{}", info.kind);
        }
        if full {
            if let Some(n) = info.passed {
                let _ = write!(label, "\n{n} passed");
            }
            if let Some(h) = info.held.filter(|&h| h > 0) {
                let _ = write!(label, ", {h} held");
            }
            if let Some((r, w)) = info.sleepers.filter(|&(r, w)| r + w > 0) {
                let _ = write!(label, "\nasleep: {r} readers, {w} writers");
            }
        }
        let _ = writeln!(dot, "  c{j} [shape=ellipse, label={}];", q(&label));
    }
    let blocked_on = |p: &Proc, k: u64, write: bool| {
        p.waits.iter().any(|w| {
            !w.kind.joins() && w.items.iter().any(|(key, wr, _)| *key == k && *wr == write)
        })
    };
    for &i in &shown {
        let p = &procs[i];
        for (j, &k) in order.iter().enumerate() {
            let (w, r) = p
                .holds
                .iter()
                .filter(|h| h.0 == k)
                .fold((0, 0), |(a, b), h| (a + h.1, b + h.2));
            let waits_w = full && blocked_on(p, k, true);
            let waits_r = full && blocked_on(p, k, false);
            if w > 0 || waits_w {
                let attr = if waits_w {
                    " [color=red, label=\"waits to write\"]"
                } else {
                    ""
                };
                let _ = writeln!(dot, "  p{i} -> c{j}{attr};");
            }
            if r > 0 || waits_r {
                let attr = if waits_r {
                    " [color=red, label=\"waits to read\"]"
                } else {
                    ""
                };
                let _ = writeln!(dot, "  c{j} -> p{i}{attr};");
            }
        }
        if full {
            for wt in p.waits.iter().filter(|w| w.kind.joins()) {
                for (pid, _, _) in &wt.items {
                    if let Some(c) = procs.iter().position(|o| u64::from(o.pid) == *pid) {
                        let _ = writeln!(
                            dot,
                            "  p{i} -> p{c} [style=dashed, color=red, label=\"waits for\"];"
                        );
                    }
                }
            }
        }
    }
    dot.push_str("}\n");
    Picture { dot }
}

// ---------------------------------------------------------------------------------------
// Seeing a network from outside (`pycsp-top`).

/// A running network seen from another process (what `pycsp-top` shows): its shared memory,
/// mapped **read-only**, so looking never disturbs it. Attach with [`Network::attach`], then
/// take [`Snapshot`]s as often as you like.
pub struct Network {
    arena: &'static Arena,
    root: u32,
}

/// A process of a network, as a [`Snapshot`] saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessView {
    /// Its pid (0 while it is starting).
    pub pid: u32,
    /// The function it runs (`main` for the root).
    pub name: String,
    /// `running`, or what it waits on when every one of its threads is parked in a channel
    /// operation, a select or a join (`reads numbers`, `writes jobs`, `selects over 3
    /// channels`, `joins 2 processes`), or how many of its threads are parked.
    pub state: String,
    /// Whether all its threads are parked (with no deadline) in pycsp operations.
    pub blocked: bool,
    /// CPU time it has used (user and system), from `/proc/<pid>/stat`.
    pub cpu: std::time::Duration,
    /// Messages it has read and written (each thread adds its count every 64 messages and
    /// when it parks, so a busy thread's last few may not be in yet).
    pub messages_in: u64,
    /// See [`messages_in`](Self::messages_in).
    pub messages_out: u64,
}

/// A channel of a network, as a [`Snapshot`] saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelView {
    /// The channel's key (stable while it lives).
    pub key: u64,
    /// Its name (`#N` for an anonymous channel).
    pub name: String,
    /// Its buffer (0: rendezvous).
    pub capacity: usize,
    /// Messages in its buffer now.
    pub occupancy: usize,
    /// Messages that have passed through it so far (taken by readers).
    pub passed: u64,
    /// Readers asleep on it now (blocked in a read or a select).
    pub blocked_readers: u32,
    /// Writers asleep on it now (a full buffer, or a rendezvous write not yet taken).
    pub blocked_writers: u32,
    /// Writing and reading ends the processes of the network hold.
    pub writers: u32,
    /// See [`writers`](Self::writers).
    pub readers: u32,
}

/// What a network looked like at one moment: see [`Network::snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Its live processes, a parent before the children it started.
    pub processes: Vec<ProcessView>,
    /// Every channel some process holds an end of, in the order processes first hold them.
    pub channels: Vec<ChannelView>,
}

impl Network {
    /// Attaches, read-only, to the network whose root process has pid `root_pid`: finds the
    /// network's shared memory among the root's open files (`/proc/<pid>/fd`). Needs the
    /// right to read the root's files (the same user, or root). Fails if that process has
    /// no pycsp network (it has not made a channel or started a process yet).
    pub fn attach(root_pid: u32) -> std::io::Result<Network> {
        let dir = format!("/proc/{root_pid}/fd");
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Ok(target) = std::fs::read_link(&path) else {
                continue;
            };
            if !target.to_string_lossy().starts_with("/memfd:pycsp-arena") {
                continue;
            }
            let file = std::fs::File::open(&path)?;
            return Ok(Network {
                arena: Arena::observe(file)?,
                root: root_pid,
            });
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("process {root_pid} has no pycsp network (no shared memory among its files)"),
        ))
    }

    /// The pid of the network's root process.
    pub fn root(&self) -> u32 {
        self.root
    }

    /// Whether the root process still runs.
    pub fn is_alive(&self) -> bool {
        proc_times(self.root).is_some()
    }

    /// The network now: every live process and every channel they hold.
    pub fn snapshot(&self) -> Snapshot {
        let procs = census::read_processes(self.arena, false).unwrap_or_default();
        snapshot_of(self.arena, &procs)
    }
}

/// `procs` with only their user threads' waits: a socket thread's wait (see
/// `census::park_socket`) is its peer's operation or an idle connection, not a channel this
/// process waits on.
fn users_only(procs: &[Proc]) -> Vec<Proc> {
    let mut procs = procs.to_vec();
    for p in &mut procs {
        p.waits.retain(|w| !w.socket);
    }
    procs
}

/// The snapshot of `procs` in `arena`.
fn snapshot_of(arena: &'static Arena, procs: &[Proc]) -> Snapshot {
    let procs = &users_only(procs);
    let mut order: Vec<u64> = Vec::new();
    let mut ends: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    for p in procs {
        for &(k, w, r) in &p.holds {
            if w + r == 0 {
                continue;
            }
            if !order.contains(&k) {
                order.push(k);
            }
            let e = ends.entry(k).or_default();
            e.0 += w;
            e.1 += r;
        }
    }
    let channels = order
        .iter()
        .filter_map(|&k| {
            let c = Chan::attach(arena, k)?;
            let (rx, tx) = c.events();
            let (writers, readers) = ends.get(&k).copied().unwrap_or_default();
            Some(ChannelView {
                key: k,
                name: c.name().to_string(),
                capacity: c.capacity(),
                occupancy: if c.is_rendezvous() { 0 } else { c.len() },
                passed: c.passed(),
                blocked_readers: rx.sleepers(),
                blocked_writers: tx.sleepers(),
                writers,
                readers,
            })
        })
        .collect();
    let processes = procs
        .iter()
        .map(|p| {
            let blocked = p.pid != 0 && p.user_threads > 0 && p.parked >= p.user_threads;
            ProcessView {
                pid: p.pid,
                name: p.name.clone(),
                state: state_of(p, blocked),
                blocked,
                cpu: proc_times(p.pid).unwrap_or_default(),
                messages_in: p.msgs.0,
                messages_out: p.msgs.1,
            }
        })
        .collect();
    Snapshot {
        processes,
        channels,
    }
}

/// What a process is doing, in words.
fn state_of(p: &Proc, blocked: bool) -> String {
    if p.pid == 0 {
        return "starting".into();
    }
    if !blocked {
        return match p.waits.len() {
            0 => "running".into(),
            n => format!("running ({n} threads parked)"),
        };
    }
    let one = |w: &census::Wait| match (w.kind, w.items.as_slice()) {
        (Kind::Read, [(_, _, name), ..]) => format!("reads {name}"),
        (Kind::Write, [(_, _, name), ..]) => format!("writes {name}"),
        (Kind::Select, items) => format!("selects over {} channels", items.len()),
        (Kind::Join | Kind::Sequence, items) => format!("joins {} processes", items.len()),
        // Socket threads' waits are left out (`users_only`).
        (Kind::Remote, _) | (_, []) => "waits".into(),
    };
    let all: Vec<String> = p.waits.iter().map(one).collect();
    if all.is_empty() {
        "blocked".into()
    } else {
        all.join("; ")
    }
}

/// The CPU time (user + system) process `pid` has used, if it runs.
fn proc_times(pid: u32) -> Option<std::time::Duration> {
    let ticks = census::cpu_ticks(pid)?;
    Some(std::time::Duration::from_secs_f64(
        ticks as f64 / crate::sys::clock_ticks_per_second() as f64,
    ))
}
