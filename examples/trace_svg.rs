//! Draws a message trace (`PYCSP_TRACE`, Chrome trace-event JSON) as an SVG timeline: one
//! lane per thread that did something (named after its process), a bar for each read, write,
//! select and join, and an arrow for each message, from its write to its read. A small,
//! offline stand-in for a trace viewer (ui.perfetto.dev, chrome://tracing open the same file).
//!
//! Run:
//! ```sh
//! PYCSP_TRACE=target/trace.json cargo run --example pipeline
//! cargo run --example trace_svg -- target/trace.json target/trace.svg
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// The events of a trace file: the JSON array, closed if its writers left it open.
fn events(text: &str) -> Result<Vec<Value>, serde_json::Error> {
    let t = text.trim_end();
    if t.ends_with(']') {
        serde_json::from_str(t)
    } else {
        serde_json::from_str(&format!("{t}]"))
    }
}

fn f(e: &Value, k: &str) -> f64 {
    e[k].as_f64().unwrap_or(0.0)
}

fn ids(e: &Value) -> (u64, u64) {
    (
        e["pid"].as_u64().unwrap_or(0),
        e["tid"].as_u64().unwrap_or(0),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The lanes of a trace: one per thread that has slices, a process's threads together, with
/// their labels.
fn lanes(events: &[Value]) -> Vec<((u64, u64), String)> {
    let mut procs: BTreeMap<u64, String> = BTreeMap::new();
    let mut threads: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for e in events.iter().filter(|e| e["ph"] == "M") {
        let name = e["args"]["name"].as_str().unwrap_or("?").to_string();
        match e["name"].as_str() {
            Some("process_name") => {
                procs.insert(ids(e).0, name);
            }
            Some("thread_name") => {
                threads.insert(ids(e), name);
            }
            _ => {}
        }
    }
    let mut keys: Vec<(u64, u64)> = events.iter().filter(|e| e["ph"] == "X").map(ids).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let p = procs.get(&k.0).cloned().unwrap_or_default();
            let label = match threads.get(&k) {
                Some(t) if *t != p => format!("{p} / {t}"),
                _ => p,
            };
            (k, format!("{label} ({})", k.1))
        })
        .collect()
}

const LEFT: f64 = 230.0;
const WIDTH: f64 = 900.0;
const LANE: f64 = 34.0;

/// Draws the events between `t0` and `t1` (µs) as a panel whose top is at `top`; returns
/// the panel's height.
fn panel(
    svg: &mut String,
    events: &[Value],
    lanes: &[((u64, u64), String)],
    (t0, t1): (f64, f64),
    top: f64,
    title: &str,
) -> f64 {
    let span = (t1 - t0).max(0.001);
    let x = |ts: f64| LEFT + ((ts - t0) / span).clamp(0.0, 1.0) * WIDTH;
    let lanes_top = top + 28.0;
    let lane_y = |k: (u64, u64)| {
        lanes
            .iter()
            .position(|l| l.0 == k)
            .map(|i| lanes_top + i as f64 * LANE)
    };
    let bottom = lanes_top + lanes.len() as f64 * LANE;
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="14">{}</text>"#,
        top + 16.0,
        escape(title)
    );
    for (i, (_, label)) in lanes.iter().enumerate() {
        let y = lanes_top + i as f64 * LANE;
        let fill = if i % 2 == 0 { "#f4f6f8" } else { "#ffffff" };
        let _ = writeln!(
            svg,
            r#"<rect x="0" y="{y}" width="{}" height="{LANE}" fill="{fill}"/><text x="6" y="{}">{}</text>"#,
            LEFT + WIDTH + 20.0,
            y + LANE / 2.0 + 4.0,
            escape(label)
        );
    }
    // Time axis: ticks at round steps, at most ten.
    let step = [1.0, 2.0, 5.0]
        .iter()
        .flat_map(|m| (-3..9).map(move |p| m * 10f64.powi(p)))
        .filter(|s| span / s <= 10.0)
        .fold(f64::MAX, f64::min);
    let mut since: f64 = 0.0;
    while since <= span {
        let xx = x(t0 + since);
        let label = if step >= 1000.0 {
            format!("+{} ms", since / 1000.0)
        } else {
            format!("+{since} µs")
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.2}" y1="{lanes_top}" x2="{xx:.2}" y2="{bottom}" stroke="#ddd"/><text x="{xx:.2}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            bottom + 14.0,
        );
        since += step;
    }
    // Slices, longest first so that a read inside a select stays visible.
    let mut slices: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && f(e, "ts") <= t1 && f(e, "ts") + f(e, "dur") >= t0)
        .collect();
    slices.sort_by(|a, b| f(b, "dur").total_cmp(&f(a, "dur")));
    for s in slices {
        let Some(y) = lane_y(ids(s)) else { continue };
        let name = s["name"].as_str().unwrap_or("");
        let color = match name.split(' ').next() {
            Some("write") => "#e67e22",
            Some("read") => "#2e86c1",
            Some("select") => "#8e44ad",
            _ => "#95a5a6",
        };
        let x0 = x(f(s, "ts"));
        let w = (x(f(s, "ts") + f(s, "dur")) - x0).max(1.5);
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.2}" y="{}" width="{w:.2}" height="{}" fill="{color}" fill-opacity="0.85"><title>{} {:.3} µs</title></rect>"#,
            y + 6.0,
            LANE - 12.0,
            escape(name),
            f(s, "dur")
        );
        if w > 7.0 * name.chars().count() as f64 {
            let _ = writeln!(
                svg,
                r#"<text x="{:.2}" y="{}" fill="white">{}</text>"#,
                x0 + 4.0,
                y + LANE / 2.0 + 4.0,
                escape(name)
            );
        }
    }
    // Instants (retire, poison, a death seen): a tick.
    for e in events.iter().filter(|e| e["ph"] == "i") {
        let (Some(y), ts) = (lane_y(ids(e)), f(e, "ts")) else {
            continue;
        };
        if ts < t0 || ts > t1 {
            continue;
        }
        let xx = x(ts);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.2}" y1="{}" x2="{xx:.2}" y2="{}" stroke="#111" stroke-width="1.5"><title>{}</title></line>"##,
            y + 2.0,
            y + LANE - 2.0,
            escape(e["name"].as_str().unwrap_or(""))
        );
    }
    // One arrow per message: from the `s` in its write to the `f` in its read.
    let mut starts: BTreeMap<&str, &Value> = BTreeMap::new();
    for e in events.iter().filter(|e| e["ph"] == "s") {
        if let Some(id) = e["id"].as_str() {
            starts.insert(id, e);
        }
    }
    for e in events.iter().filter(|e| e["ph"] == "f") {
        let Some(s) = e["id"].as_str().and_then(|id| starts.get(id)) else {
            continue;
        };
        let (Some(ys), Some(yf)) = (lane_y(ids(s)), lane_y(ids(e))) else {
            continue;
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{:.2}" y1="{}" x2="{:.2}" y2="{}" stroke="#c0392b" stroke-width="1" marker-end="url(#arrow)"/>"##,
            x(f(s, "ts")),
            ys + LANE / 2.0,
            x(f(e, "ts")),
            yf + LANE / 2.0
        );
    }
    bottom + 24.0 - top
}

/// The SVG of the trace `events`: the whole run, then the stretch in which messages moved.
fn render(events: &[Value]) -> String {
    let lanes = lanes(events);
    let slices = events.iter().filter(|e| e["ph"] == "X");
    let t0 = slices.clone().map(|s| f(s, "ts")).fold(f64::MAX, f64::min);
    let t1 = slices
        .map(|s| f(s, "ts") + f(s, "dur"))
        .fold(f64::MIN, f64::max);
    // Reads of messages: a first write may wait long for its reader to start.
    let reads = events.iter().filter(|e| e["ph"] == "f");

    let m0 = reads.clone().map(|e| f(e, "ts")).fold(f64::MAX, f64::min);
    let m1 = reads.map(|e| f(e, "ts")).fold(f64::MIN, f64::max);
    let messages = events.iter().filter(|e| e["ph"] == "s").count();
    let processes = events
        .iter()
        .filter(|e| e["name"] == "process_name")
        .count();
    let panels = if messages > 0 { 2.0 } else { 1.0 };
    let height = panels * (28.0 + lanes.len() as f64 * LANE + 24.0) + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        LEFT + WIDTH + 20.0
    );
    svg.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#c0392b"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
"##,
    );
    let whole = format!(
        "The whole run: {processes} processes, {messages} messages, {:.3} ms",
        (t1 - t0) / 1000.0
    );
    let mut top = 4.0;
    top += panel(&mut svg, events, &lanes, (t0, t1), top, &whole);
    if messages > 0 {
        let pad = ((m1 - m0) * 0.1).max(1.0);
        let zoom = format!(
            "Zoomed in: the {:.1} µs from the first read of a message to the last (arrows from earlier writes start at the left edge)",
            m1 - m0
        );
        top += panel(&mut svg, events, &lanes, (m0 - pad, m1 + pad), top, &zoom);
    }
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{}" fill="#555">bars: write (orange), read (blue), select (purple), join (grey); ticks: retire, poison, a death seen; arrows: one per message, write to read; time: CLOCK_MONOTONIC</text>"##,
        top + 14.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: trace_svg TRACE.json OUT.svg");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(input).unwrap_or_else(|e| {
        eprintln!("cannot read {input}: {e}");
        std::process::exit(1);
    });
    let events = events(&text).unwrap_or_else(|e| {
        eprintln!("{input} is not a trace: {e}");
        std::process::exit(1);
    });
    std::fs::write(output, render(&events)).unwrap_or_else(|e| {
        eprintln!("cannot write {output}: {e}");
        std::process::exit(1);
    });
    let lanes = events
        .iter()
        .filter(|e| e["name"] == "process_name")
        .count();
    let arrows = events.iter().filter(|e| e["ph"] == "f").count();
    println!("{output}: {lanes} processes, {arrows} messages");
}
