//! The report's files: OUT/<stem>.json (all of it), OUT/<stem>.md (the summary) and the
//! plots OUT/<stem>-time.svg, OUT/<stem>-memory.svg.

use std::fmt::Write as _;
use std::path::Path;

use multipole::{FmaError, Result};
use serde::Serialize;

use super::adapter::AdapterReport;
use super::checks::CheckResult;
use super::sweep::Skipped;
use crate::bench::Record;

/// Everything the report found: its JSON file.
#[derive(Serialize)]
pub struct Report {
    pub multipole_version: &'static str,
    pub adapter: AdapterReport,
    pub budget_s: f64,
    pub elapsed_s: f64,
    pub checks_passed: bool,
    pub checks: Vec<CheckResult>,
    /// Random cases not run because the budget's share for checks was spent.
    pub random_cases_skipped: usize,
    /// The calibration's best variant and rate (its records, kernel "matmul", are in
    /// `records`).
    pub matmul_variant: Option<String>,
    pub matmul_gflops: Option<f64>,
    pub records: Vec<Record>,
    pub skipped: Vec<Skipped>,
}

/// Writes the files; their paths.
pub fn write(report: &Report, dir: &Path, stem: &str) -> Result<Vec<String>> {
    let io = |path: &Path, e: String| FmaError::TensorFile {
        path: path.display().to_string(),
        message: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    let json = dir.join(format!("{stem}.json"));
    let text = serde_json::to_string_pretty(report).map_err(|e| io(&json, e.to_string()))?;
    std::fs::write(&json, text).map_err(|e| io(&json, e.to_string()))?;
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, markdown(report)).map_err(|e| io(&md, e.to_string()))?;
    let mut files = vec![json.display().to_string(), md.display().to_string()];
    let plotted: Vec<Record> = report
        .records
        .iter()
        .filter(|r| r.kernel != "matmul")
        .cloned()
        .collect();
    if !plotted.is_empty() {
        let prefix = dir.join(stem);
        files.extend(crate::bench::draw(&plotted, &prefix).map_err(|e| io(&prefix, e))?);
    }
    Ok(files)
}

/// The summary: adapter, checks, calibration, one row per measurement, what was skipped.
fn markdown(r: &Report) -> String {
    let mut s = String::new();
    header(&mut s, r);
    checks(&mut s, r);
    calibration(&mut s, r);
    table(&mut s, r);
    backward_ratios(&mut s, r);
    skipped(&mut s, r);
    s
}

// Each section below appends to the summary; writing to a String cannot fail, hence the
// ignored results.

/// The title and the adapter's line.
fn header(s: &mut String, r: &Report) {
    let a = &r.adapter;
    let _ = writeln!(s, "# GPU report: {}\n", a.name);
    let _ = writeln!(
        s,
        "{} on {}, driver {} {}; timing: {}; multipole {}; {:.0} s of a {:.0} s budget.\n",
        a.device_type,
        a.backend,
        a.driver,
        a.driver_info,
        a.timing,
        r.multipole_version,
        r.elapsed_s,
        r.budget_s
    );
}

/// How many checks passed, and every one that failed.
fn checks(s: &mut String, r: &Report) {
    let passed = r.checks.iter().filter(|c| c.passed).count();
    let _ = writeln!(
        s,
        "GPU-vs-CPU checks: {passed} of {} passed ({} random cases skipped for time).\n",
        r.checks.len(),
        r.random_cases_skipped
    );
    for c in r.checks.iter().filter(|c| !c.passed) {
        let _ = writeln!(s, "- FAILED {} ({}): {}", c.name, c.group, c.detail);
    }
}

/// The calibration's best variant and rate, where there was one.
fn calibration(s: &mut String, r: &Report) {
    let (Some(v), Some(g)) = (&r.matmul_variant, r.matmul_gflops) else {
        return;
    };
    let all: Vec<String> = r
        .records
        .iter()
        .filter(|x| x.kernel == "matmul")
        .map(|x| format!("{} {:.1}", x.variant.as_deref().unwrap_or("?"), x.gflops))
        .collect();
    let size = r
        .records
        .iter()
        .find(|x| x.kernel == "matmul")
        .map_or(0, |x| x.n);
    let _ = writeln!(
        s,
        "Calibration: f32 matmul {size}^3, best variant {v} at {g:.1} GFLOP/s (all: {}). `of matmul` is a kernel's GFLOP/s over that rate.\n",
        all.join(", ")
    );
}

/// One row per measurement (the calibration's records left out).
fn table(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "| kernel | input | n | median ms | GFLOP/s | of matmul | peak MiB | stages (ms) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|");
    for x in r.records.iter().filter(|x| x.kernel != "matmul") {
        let stages: Vec<String> = x
            .stage_ms
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.1} | {} | {:.1} | {} |",
            x.kernel,
            x.layout,
            x.n,
            x.median_ms,
            x.gflops,
            x.fraction_of_matmul
                .map_or("-".into(), |f| format!("{f:.2}")),
            x.peak_bytes as f64 / 1048576.0,
            stages.join(", ")
        );
    }
}

/// FMA's backward over its forward time, at every input that has both.
fn backward_ratios(s: &mut String, r: &Report) {
    let ratios: Vec<String> = r
        .records
        .iter()
        .filter(|b| b.kernel == "fma_backward")
        .filter_map(|b| {
            let f = r
                .records
                .iter()
                .find(|f| f.kernel == "fma" && f.layout == b.layout && f.n == b.n)?;
            Some(format!(
                "{} n={}: {:.2}x",
                b.layout,
                b.n,
                b.median_ms / f.median_ms
            ))
        })
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(s, "\nBackward over forward time: {}.", ratios.join("; "));
    }
}

/// What the sweep did not measure, and why.
fn skipped(s: &mut String, r: &Report) {
    if !r.skipped.is_empty() {
        let _ = writeln!(s, "\nSkipped (the budget, or the adapter's limits):\n");
        for k in &r.skipped {
            let _ = writeln!(s, "- {} {} n={}: {}", k.kernel, k.layout, k.n, k.reason);
        }
    }
}
