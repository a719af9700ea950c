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
/// for working on one figure). The raw spinning ping-pong is always measured: the ratios need it.
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
    let wanted = ONLY
        .get()
        .is_none_or(|o| name.contains(o.as_str()) || name.contains("spinning"));
    if !wanted {
        return Row {
            group,
            name: name.to_string(),
            unit,
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            trials: 0,
        };
    }
    let mut v: Vec<f64> = (0..n).map(|_| trial()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let row = Row {
        group,
        name: name.to_string(),
        unit,
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
        trials: n,
    };
    eprintln!("  {:<52} {:>12} {}", row.name, fmt(row.median), row.unit);
    row
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
