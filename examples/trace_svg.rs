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

/// The SVG of the trace `events`.
fn render(events: &[Value]) -> String {
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
    // Lanes: the threads that have slices, in the order they first did something.
    let mut lanes: Vec<(u64, u64)> = Vec::new();
    let mut slices: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    slices.sort_by(|a, b| f(a, "ts").total_cmp(&f(b, "ts")));
    for s in &slices {
        if !lanes.contains(&ids(s)) {
            lanes.push(ids(s));
        }
    }
    // A process's threads together, processes in the order of their pids.
    lanes.sort();
    let t0 = slices.iter().map(|s| f(s, "ts")).fold(f64::MAX, f64::min);
    let t1 = slices
        .iter()
        .map(|s| f(s, "ts") + f(s, "dur"))
        .fold(f64::MIN, f64::max);
    let span = (t1 - t0).max(1.0);
    let (left, width, lane_h, top) = (230.0, 900.0, 34.0, 48.0);
    let x = |ts: f64| left + (ts - t0) / span * width;
    let lane_y = |k: (u64, u64)| {
        lanes
            .iter()
            .position(|l| *l == k)
            .map(|i| top + i as f64 * lane_h)
    };
    let height = top + lanes.len() as f64 * lane_h + 40.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        left + width + 20.0
    );
    svg.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#c0392b"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
"##,
    );
    let flows_n = events.iter().filter(|e| e["ph"] == "s").count();
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14">{} processes, {} messages, {:.3} ms (CLOCK_MONOTONIC)</text>"#,
        procs.len(),
        flows_n,
        span / 1000.0
    );
    // Lanes and their names.
    for (i, k) in lanes.iter().enumerate() {
        let y = top + i as f64 * lane_h;
        let proc_name = procs.get(&k.0).cloned().unwrap_or_default();
        let label = match threads.get(k) {
            Some(t) if *t != proc_name => format!("{proc_name} / {t}"),
            _ => proc_name,
        };
        let fill = if i % 2 == 0 { "#f4f6f8" } else { "#ffffff" };
        let _ = writeln!(
            svg,
            r#"<rect x="0" y="{y}" width="{}" height="{lane_h}" fill="{fill}"/><text x="6" y="{}">{} ({})</text>"#,
            left + width + 20.0,
            y + lane_h / 2.0 + 4.0,
            escape(&label),
            k.1
        );
    }
    // Time axis: ticks at round fractions of the span.
    let step = [1.0, 2.0, 5.0]
        .iter()
        .flat_map(|m| (0..9).map(move |p| m * 10f64.powi(p)))
        .find(|s| span / s <= 10.0)
        .unwrap_or(span);
    let mut t = 0.0;
    while t <= span {
        let xx = x(t0 + t);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx}" y1="{}" x2="{xx}" y2="{}" stroke="#ddd"/><text x="{xx}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            top - 4.0,
            height - 36.0,
            height - 22.0,
            if step >= 1000.0 {
                format!("{} ms", t / 1000.0)
            } else {
                format!("{t} µs")
            }
        );
        t += step;
    }
    // Slices, longest first so that a read inside a select stays visible.
    let mut by_len = slices.clone();
    by_len.sort_by(|a, b| f(b, "dur").total_cmp(&f(a, "dur")));
    for s in by_len {
        let Some(y) = lane_y(ids(s)) else { continue };
        let name = s["name"].as_str().unwrap_or("");
        let color = match name.split(' ').next() {
            Some("write") => "#e67e22",
            Some("read") => "#2e86c1",
            Some("select") => "#8e44ad",
            _ => "#95a5a6",
        };
        let (x0, w) = (x(f(s, "ts")), (f(s, "dur") / span * width).max(1.5));
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.2}" y="{}" width="{w:.2}" height="{}" fill="{color}" fill-opacity="0.85"><title>{} {:.3} µs</title></rect>"#,
            y + 6.0,
            lane_h - 12.0,
            escape(name),
            f(s, "dur")
        );
        if w > 7.0 * name.len() as f64 {
            let _ = writeln!(
                svg,
                r#"<text x="{:.2}" y="{}" fill="white">{}</text>"#,
                x0 + 4.0,
                y + lane_h / 2.0 + 4.0,
                escape(name)
            );
        }
    }
    // Instants (retire, poison, a death seen): a tick.
    for e in events.iter().filter(|e| e["ph"] == "i") {
        let Some(y) = lane_y(ids(e)) else { continue };
        let xx = x(f(e, "ts"));
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.2}" y1="{}" x2="{xx:.2}" y2="{}" stroke="#111" stroke-width="1.5"><title>{}</title></line>"##,
            y + 2.0,
            y + lane_h - 2.0,
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
            ys + lane_h / 2.0,
            x(f(e, "ts")),
            yf + lane_h / 2.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{}" fill="#555">bars: write (orange), read (blue), select (purple), join (grey); ticks: retire, poison; arrows: one per message, write to read</text>"##,
        height - 6.0
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
