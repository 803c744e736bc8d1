//! The benchmark's figures: time against n and memory against n, on log-log axes.

use std::path::Path;

use super::records::Record;
use crate::plot::chart;

/// Draws PREFIX-time.svg and PREFIX-memory.svg; returns the paths written.
pub fn draw(records: &[Record], prefix: &Path) -> Result<Vec<String>, String> {
    let adapter = records.first().map_or("", |r| r.adapter.as_str());
    let series = series(records);
    if series.is_empty() {
        return Err("no measurements to plot".into());
    }
    let time = with_suffix(prefix, "time.svg");
    let memory = with_suffix(prefix, "memory.svg");
    let times: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, rs)| {
            (
                name.clone(),
                rs.iter().map(|r| (r.n as f64, r.median_ms)).collect(),
            )
        })
        .collect();
    chart(
        &time,
        &format!("Forward time, {adapter}"),
        "median ms",
        &times,
        true,
    )?;
    let mut mem: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, rs)| {
            let pts = rs
                .iter()
                .map(|r| (r.n as f64, r.peak_bytes as f64 / 1048576.0));
            (format!("{name} peak"), pts.collect())
        })
        .collect();
    if let Some((_, rs)) = series.iter().find(|(name, _)| name.starts_with("fma 1d")) {
        let qkvo = rs
            .iter()
            .map(|r| (r.n as f64, r.qkvo_bytes as f64 / 1048576.0));
        mem.push(("Q+K+V+O".into(), qkvo.collect()));
    }
    chart(
        &memory,
        &format!("GPU memory per forward, {adapter}"),
        "MiB",
        &mem,
        false,
    )?;
    Ok(vec![time, memory])
}

/// Records grouped by kernel and dimension (`fma 1d`, `dense 2d`, ...), ordered by n.
fn series(records: &[Record]) -> Vec<(String, Vec<&Record>)> {
    let mut out: Vec<(String, Vec<&Record>)> = Vec::new();
    // The calibration is one size, not a curve against n.
    for r in records.iter().filter(|r| r.kernel != "matmul") {
        let dims = if r.layout == "1d" { "1d" } else { "2d" };
        let name = format!("{} {dims}", r.kernel);
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(r),
            None => out.push((name, vec![r])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by_key(|r| r.n);
    }
    out
}

fn with_suffix(prefix: &Path, suffix: &str) -> String {
    format!("{}-{suffix}", prefix.display())
}
