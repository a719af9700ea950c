//! Repeated trials, medians and spread.

use serde::Serialize;

/// One row of the table: the median of several trials and their spread.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub group: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub trials: usize,
}

/// Rows whose name contains this text are measured; the others are skipped (`--only TEXT`,
/// for working on one figure; `A|B` for rows that contain `A` or `B`). The raw spinning
/// ping-pong is always measured: the ratios need it.
pub static ONLY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs `trial` `n` times and summarises the values it returns (no trials when `--only`
/// excludes the row).
pub fn measure(
    group: &'static str,
    name: &str,
    unit: &'static str,
    n: usize,
    mut trial: impl FnMut() -> f64,
) -> Row {
    if !wanted(name) {
        return summary(group, name, unit, Vec::new());
    }
    summary(group, name, unit, (0..n).map(|_| trial()).collect())
}

/// Whether `--only` lets the row `name` be measured: rows whose name contains its text, or
/// is exactly its text when it is given as `=text`; with `|`, any of the texts it separates.
pub fn wanted(name: &str) -> bool {
    ONLY.get().is_none_or(|only| {
        let hit = only.split('|').any(|o| match o.strip_prefix('=') {
            Some(exact) => name == exact,
            None => name.contains(o),
        });
        hit || name.contains("spinning")
    })
}

/// The row of the values of its trials (none: not measured), printed as it is made.
fn summary(group: &'static str, name: &str, unit: &'static str, mut v: Vec<f64>) -> Row {
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    let row = Row {
        group,
        name: name.to_string(),
        unit,
        median: pick(v.len() / 2),
        min: pick(0),
        max: pick(v.len().wrapping_sub(1)),
        trials: v.len(),
    };
    if row.trials > 0 {
        eprintln!("  {:<52} {:>12} {}", row.name, fmt(row.median), row.unit);
    }
    row
}

/// One side of [`measure_pair`]: group, name, unit and trial, as for [`measure`].
pub type Side<'a, F> = (&'static str, &'a str, &'static str, F);

/// Measures two rows whose ratio is a target in alternating trials (a, b, a, b, ...): the host
/// may move the two vCPUs closer or further apart in the middle of a run, and then rows
/// measured minutes apart would compare different machines. Returns both rows and the median
/// of the per-trial ratios a / b (NaN when `--only` leaves the pair out).
pub fn measure_pair(
    a: Side<'_, impl FnMut() -> f64>,
    b: Side<'_, impl FnMut() -> f64>,
    n: usize,
) -> (Row, Row, f64) {
    let (ga, na, ua, mut fa) = a;
    let (gb, nb, ub, mut fb) = b;
    let trials = if wanted(na) || wanted(nb) { n } else { 0 };
    let (mut va, mut vb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trials {
        let (x, y) = (fa(), fb());
        va.push(x);
        vb.push(y);
        ratios.push(x / y);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    let ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    (summary(ga, na, ua, va), summary(gb, nb, ub, vb), ratio)
}

/// [`measure_pair`] for three rows in alternating trials (a, b, c, a, b, c, ...): returns the
/// three rows and the medians of the per-trial ratios a / b and a / c.
pub fn measure_three(
    a: Side<'_, impl FnMut() -> f64>,
    b: Side<'_, impl FnMut() -> f64>,
    c: Side<'_, impl FnMut() -> f64>,
    n: usize,
) -> (Row, Row, Row, f64, f64) {
    let (ga, na, ua, mut fa) = a;
    let (gb, nb, ub, mut fb) = b;
    let (gc, nc, uc, mut fc) = c;
    let trials = if wanted(na) || wanted(nb) || wanted(nc) {
        n
    } else {
        0
    };
    let (mut va, mut vb, mut vc) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ab, mut ac) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        let (x, y, z) = (fa(), fb(), fc());
        va.push(x);
        vb.push(y);
        vc.push(z);
        ab.push(x / y);
        ac.push(x / z);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    (
        summary(ga, na, ua, va),
        summary(gb, nb, ub, vb),
        summary(gc, nc, uc, vc),
        median(ab),
        median(ac),
    )
}

/// A number with three significant digits.
pub fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}
