//! `pycsp-top`: a live view of a running pycsp network, like `top` for one network.
//!
//! ```text
//! pycsp-top ROOT_PID [--interval SECONDS] [--once]
//! ```
//!
//! It attaches, read-only, to the shared memory of the network whose root process is
//! `ROOT_PID` ([`pycsp_core::Network::attach`]) and shows, refreshed every second (or
//! `--interval`), every process (pid, name, state, CPU, messages in and out) and every channel
//! (kind, occupancy, messages passed, rate, blocked readers and writers, ends). `q` (or `Esc`,
//! `Ctrl-C`) quits; so does the end of the network. `--once` prints one snapshot as plain text
//! and exits (for scripts).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pycsp_core::{ChannelView, Network, ProcessView, Snapshot};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row, Table};
use ratatui::Frame;

const USAGE: &str = "usage: pycsp-top ROOT_PID [--interval SECONDS] [--once]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pid = None;
    let mut interval = Duration::from_secs(1);
    let mut once = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--once" => once = true,
            "--interval" => {
                let secs = it
                    .next()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|s| s.is_finite() && (0.05..=3600.0).contains(s));
                match secs {
                    Some(s) => interval = Duration::from_secs_f64(s),
                    None => fail("--interval takes seconds, from 0.05 to 3600"),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            s => match s.parse::<u32>() {
                Ok(p) if pid.is_none() => pid = Some(p),
                _ => fail(&format!("unexpected argument {s:?}")),
            },
        }
    }
    let Some(pid) = pid else {
        fail("which network? give its root process's pid")
    };
    let network = match Network::attach(pid) {
        Ok(n) => n,
        Err(e) => fail(&format!("cannot attach to process {pid}: {e}")),
    };
    if once {
        let view = View::new(&network, None, Duration::ZERO);
        print!("{}", view.text());
        return;
    }
    if let Err(e) = live(&network, interval) {
        fail(&format!("terminal: {e}"));
    }
}

fn fail(why: &str) -> ! {
    eprintln!("pycsp-top: {why}\n{USAGE}");
    std::process::exit(2);
}

/// The refreshed view, until `q` or the end of the network.
fn live(network: &Network, interval: Duration) -> std::io::Result<()> {
    let mut terminal = ratatui::init();
    let r = (|| {
        let mut last: Option<(Snapshot, Instant)> = None;
        loop {
            let now = Instant::now();
            let dt = last.as_ref().map_or(Duration::ZERO, |(_, t)| now - *t);
            let view = View::new(network, last.as_ref().map(|(s, _)| s), dt);
            terminal.draw(|f| view.draw(f))?;
            if !view.alive {
                // Leave the last picture up for a moment, then go.
                std::thread::sleep(Duration::from_millis(500));
                return Ok(());
            }
            last = Some((view.snapshot, now));
            // Wait for a key until the next refresh is due.
            let due = now + interval;
            while let Some(left) = due.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if k.kind == KeyEventKind::Press
                        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                    {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    r
}

/// One refresh: the snapshot, and the rates against the one before.
struct View {
    root: u32,
    alive: bool,
    snapshot: Snapshot,
    /// CPU share of each process since the last refresh (percent of one CPU).
    cpu: HashMap<u32, f64>,
    /// Messages per second through each channel since the last refresh.
    rate: HashMap<u64, f64>,
}

impl View {
    fn new(network: &Network, before: Option<&Snapshot>, dt: Duration) -> View {
        let snapshot = network.snapshot();
        let secs = dt.as_secs_f64();
        let mut cpu = HashMap::new();
        let mut rate = HashMap::new();
        if let Some(b) = before.filter(|_| secs > 0.0) {
            for p in &snapshot.processes {
                if let Some(q) = b.processes.iter().find(|q| q.pid == p.pid) {
                    let used = p.cpu.saturating_sub(q.cpu).as_secs_f64();
                    cpu.insert(p.pid, 100.0 * used / secs);
                }
            }
            for c in &snapshot.channels {
                if let Some(d) = b.channels.iter().find(|d| d.key == c.key) {
                    rate.insert(c.key, c.passed.saturating_sub(d.passed) as f64 / secs);
                }
            }
        }
        View {
            root: network.root(),
            alive: network.is_alive(),
            snapshot,
            cpu,
            rate,
        }
    }

    fn title(&self) -> String {
        format!(
            "pycsp-top: network of pid {}{}, {} processes, {} channels",
            self.root,
            if self.alive { "" } else { " (ended)" },
            self.snapshot.processes.len(),
            self.snapshot.channels.len()
        )
    }

    fn process_cells(&self, p: &ProcessView) -> [String; 7] {
        [
            p.pid.to_string(),
            p.name.clone(),
            p.state.clone(),
            self.cpu
                .get(&p.pid)
                .map_or_else(|| "-".into(), |c| format!("{c:.0}%")),
            format!("{:.2}", p.cpu.as_secs_f64()),
            p.messages_in.to_string(),
            p.messages_out.to_string(),
        ]
    }

    fn channel_cells(&self, c: &ChannelView) -> [String; 8] {
        let (kind, occupancy) = match c.capacity {
            0 => ("rendezvous".to_string(), "-".to_string()),
            n => (format!("buffered({n})"), format!("{}/{n}", c.occupancy)),
        };
        [
            c.name.clone(),
            kind,
            occupancy,
            c.passed.to_string(),
            self.rate
                .get(&c.key)
                .map_or_else(|| "-".into(), |r| format!("{r:.0}")),
            c.blocked_readers.to_string(),
            c.blocked_writers.to_string(),
            format!("{}/{}", c.writers, c.readers),
        ]
    }

    fn draw(&self, f: &mut Frame) {
        let procs = self.snapshot.processes.len() as u16;
        let [head, top, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(procs + 3),
            Constraint::Min(3),
        ])
        .areas(f.area());
        f.render_widget(
            Line::from(format!("{}   q quits", self.title()))
                .style(Style::new().add_modifier(Modifier::BOLD)),
            head,
        );
        let bold = Style::new().add_modifier(Modifier::BOLD);
        let rows = self
            .snapshot
            .processes
            .iter()
            .map(|p| Row::new(self.process_cells(p)));
        let table = Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Length(20),
                Constraint::Min(24),
                Constraint::Length(6),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
        .header(Row::new(PROCESS_HEADER).style(bold))
        .block(Block::bordered().title("processes"));
        f.render_widget(table, top);
        let rows = self
            .snapshot
            .channels
            .iter()
            .map(|c| Row::new(self.channel_cells(c)));
        let table = Table::new(
            rows,
            [
                Constraint::Length(24),
                Constraint::Length(14),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(9),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Min(8),
            ],
        )
        .header(Row::new(CHANNEL_HEADER).style(bold))
        .block(Block::bordered().title("channels"));
        f.render_widget(table, bottom);
    }

    /// The view as plain text (`--once`).
    fn text(&self) -> String {
        let mut out = format!("{}\n\n", self.title());
        let procs: Vec<[String; 7]> = self
            .snapshot
            .processes
            .iter()
            .map(|p| self.process_cells(p))
            .collect();
        out.push_str(&columns(&PROCESS_HEADER, &procs));
        out.push('\n');
        let chans: Vec<[String; 8]> = self
            .snapshot
            .channels
            .iter()
            .map(|c| self.channel_cells(c))
            .collect();
        out.push_str(&columns(&CHANNEL_HEADER, &chans));
        out
    }
}

const PROCESS_HEADER: [&str; 7] = [
    "PID", "PROCESS", "STATE", "CPU", "CPU s", "MSGS IN", "MSGS OUT",
];
const CHANNEL_HEADER: [&str; 8] = [
    "CHANNEL",
    "KIND",
    "OCCUPANCY",
    "PASSED",
    "RATE/s",
    "BLOCKED R",
    "BLOCKED W",
    "ENDS W/R",
];

/// Rows as left-aligned columns.
fn columns<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (c, w) in cells.iter().zip(&width) {
            s.push_str(&format!("{c:<w$}  "));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
