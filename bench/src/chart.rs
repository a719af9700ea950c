//! A small SVG chart (no plotting crate): round trips and throughputs on log scales.

use crate::stats::{fmt, Row};

fn panel(out: &mut String, y0: f64, title: &str, rows: &[&Row], better: &str) -> f64 {
    let (left, width, bar_h) = (330.0, 420.0, 18.0);
    out.push_str(&format!(
        r#"<text x="10" y="{}" font-weight="bold">{title} ({better}; log scale)</text>"#,
        y0 + 14.0
    ));
    let max = rows
        .iter()
        .map(|r| r.median)
        .fold(f64::MIN, f64::max)
        .max(1e-9);
    let min = rows
        .iter()
        .map(|r| r.median)
        .fold(f64::MAX, f64::min)
        .max(1e-9);
    let lo = (min.log10().floor() - 0.2).min(max.log10() - 1.0);
    let hi = max.log10() + 0.1;
    let mut y = y0 + 26.0;
    for r in rows {
        let w = ((r.median.max(1e-9).log10() - lo) / (hi - lo) * width).max(2.0);
        let color = match r.group {
            "limit" => "#888888",
            "pycsp" => "#1f77b4",
            "sockets" => "#6baed6",
            _ => "#ff7f0e",
        };
        out.push_str(&format!(
            r#"<text x="{x}" y="{ty}" text-anchor="end" font-size="12">{name}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{color}"/><text x="{tx:.1}" y="{ty}" font-size="12">{val} {unit}</text>"#,
            x = left - 6.0,
            ty = y + 13.0,
            name = r.name.replace('&', "and").replace('<', "&lt;"),
            tx = left + w + 4.0,
            val = fmt(r.median),
            unit = r.unit,
        ));
        y += bar_h + 4.0;
    }
    y + 10.0
}

/// The chart of the rows measured in nanoseconds and in messages per second.
pub fn svg(rows: &[Row]) -> String {
    let rtt: Vec<&Row> = rows.iter().filter(|r| r.unit == "ns").collect();
    let thr: Vec<&Row> = rows.iter().filter(|r| r.unit == "msg/s").collect();
    let mut body = String::new();
    let y = panel(&mut body, 0.0, "Round trip", &rtt, "shorter is better");
    let y = panel(
        &mut body,
        y,
        "Messages per second",
        &thr,
        "longer is better",
    );
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}<text x="10" y="{fy}" font-size="11" fill="gray">grey: the limit of the machine; blue: pycsp (light: over sockets); orange: peers. Medians of one run.</text></svg>"#,
        h = y + 30.0,
        fy = y + 14.0,
    )
}
