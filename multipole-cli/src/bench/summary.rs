//! What a run prints: a line per measurement as it is made, then the table of ratios (FMA
//! next to dense at the same input), the comparisons of the other kernels with FMA's
//! forward, and the growth exponents.

use super::calibration::{best_matmul, yardstick};
use super::records::Record;

pub fn print_progress(r: &Record) {
    let stages: Vec<String> = r
        .stage_ms
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    println!(
        "{:>5} {:>12} n={:<8} {:>10.2} ms ({}) {:>8.1} GFLOP/s  peak {:>7.1} MiB  {}",
        r.kernel,
        r.layout,
        r.n,
        r.median_ms,
        r.timing,
        r.gflops,
        r.peak_bytes as f64 / (1 << 20) as f64,
        stages.join(", ")
    );
}

/// A fraction of the calibration, or "-" where the run had none.
fn fraction(r: &Record) -> String {
    r.fraction_of_matmul
        .map_or("-".into(), |f| format!("{f:.2}"))
}

/// The record of `kernel` at the same input (layout and n) as `r`, if the run measured it.
fn at_same_input<'a>(records: &'a [Record], kernel: &str, r: &Record) -> Option<&'a Record> {
    records
        .iter()
        .find(|x| x.kernel == kernel && x.layout == r.layout && x.n == r.n)
}

/// The table of ratios (FMA next to dense at the same input) and the growth exponents.
pub fn summarise(records: &[Record]) {
    println!();
    print_calibration(records);
    print_table(records);
    print_linear(records);
    print_backward(records);
    print_without_subgroups(records);
    print_f16(records);
    print_growth(records);
}

/// The calibration's variants and the yardstick the fractions are of, where the run had one.
fn print_calibration(records: &[Record]) {
    let Some(best) = best_matmul(records) else {
        return;
    };
    let others: Vec<String> = records
        .iter()
        .filter(|r| r.kernel == "matmul")
        .map(|r| format!("{} {:.1}", r.variant.as_deref().unwrap_or("?"), r.gflops))
        .collect();
    println!(
        "calibration: f32 matmul {n}x{n}x{n}, best {} at {:.1} GFLOP/s (variants: {})",
        best.variant.as_deref().unwrap_or("?"),
        best.gflops,
        others.join(", "),
        n = best.n
    );
    if let Some((rate, what)) = yardstick(records) {
        println!(
            "fractions below are of the best rate measured in this run: {} at {rate:.1} GFLOP/s",
            what.as_deref().unwrap_or("?")
        );
    }
}

/// One row per FMA forward: its time and rate next to dense attention's at the same input.
fn print_table(records: &[Record]) {
    println!(
        "{:>12} {:>9} {:>11} {:>11} {:>8} {:>11} {:>8} {:>11} {:>8} {:>13} {:>10}",
        "input",
        "n",
        "fma ms",
        "dense ms",
        "speedup",
        "fma GF/s",
        "fma/mm",
        "dense GF/s",
        "dense/mm",
        "fma dense-eq",
        "fma extra"
    );
    for f in records.iter().filter(|r| r.kernel == "fma") {
        let (dms, speed, dgf, dfrac) = match at_same_input(records, "dense", f) {
            Some(d) => (
                format!("{:.2}", d.median_ms),
                format!("{:.1}x", d.median_ms / f.median_ms),
                format!("{:.1}", d.gflops),
                fraction(d),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:>12} {:>9} {:>11.2} {:>11} {:>8} {:>11.1} {:>8} {:>11} {:>8} {:>13.1} {:>9.2}x",
            f.layout,
            f.n,
            f.median_ms,
            dms,
            speed,
            f.gflops,
            fraction(f),
            dgf,
            dfrac,
            f.dense_equivalent_gflops,
            f.extra_ratio
        );
    }
}

/// The O(n) variant against FMA at the same input: time and extra memory.
fn print_linear(records: &[Record]) {
    for l in records.iter().filter(|r| r.kernel == "fma-linear") {
        if let Some(f) = at_same_input(records, "fma", l) {
            println!(
                "{:>12} n={:<8} O(n) variant (fma-linear) {:.2} ms = {:.2}x fma ({:.2} ms); extra memory {:.2}x its tensors (fma: {:.2}x)",
                l.layout,
                l.n,
                l.median_ms,
                l.median_ms / f.median_ms,
                f.median_ms,
                l.extra_ratio,
                f.extra_ratio
            );
        }
    }
}

/// FMA's backward against its forward at the same input.
fn print_backward(records: &[Record]) {
    for b in records.iter().filter(|r| r.kernel == "fma_backward") {
        if let Some(f) = at_same_input(records, "fma", b) {
            println!(
                "{:>12} n={:<8} backward {:.2} ms = {:.2}x forward ({:.2} ms), {:.1} GFLOP/s = {} of matmul; extra memory {:.2}x its tensors",
                b.layout,
                b.n,
                b.median_ms,
                b.median_ms / f.median_ms,
                f.median_ms,
                b.gflops,
                fraction(b),
                b.extra_ratio
            );
        }
    }
}

/// The backward without subgroups (the browsers' path) against the backward with them.
fn print_without_subgroups(records: &[Record]) {
    for plain in records
        .iter()
        .filter(|r| r.kernel == "fma_backward_no_subgroups")
    {
        if let Some(b) = at_same_input(records, "fma_backward", plain) {
            let stage = |r: &Record| {
                r.stage_ms
                    .get("downsample_backward")
                    .copied()
                    .unwrap_or(0.0)
            };
            println!(
                "{:>12} n={:<8} backward with subgroups {:.2} ms, without {:.2} ms ({:.2}x); downsample_backward {:.2} against {:.2} ms",
                b.layout,
                b.n,
                b.median_ms,
                plain.median_ms,
                plain.median_ms / b.median_ms,
                stage(b),
                stage(plain)
            );
        }
    }
}

/// f16 storage against f32 at the same input: time and peak memory.
fn print_f16(records: &[Record]) {
    for h in records.iter().filter(|r| r.kernel == "fma_f16") {
        if let Some(f) = at_same_input(records, "fma", h) {
            println!(
                "{:>12} n={:<8} f16 storage {:.2} ms = {:.2}x f32 ({:.2} ms); peak {:.1} MiB = {:.2}x f32's {:.1} MiB",
                h.layout,
                h.n,
                h.median_ms,
                h.median_ms / f.median_ms,
                f.median_ms,
                h.peak_bytes as f64 / (1 << 20) as f64,
                h.peak_bytes as f64 / f.peak_bytes as f64,
                f.peak_bytes as f64 / (1 << 20) as f64,
            );
        }
    }
}

/// How 1D time grows with n, per kernel.
fn print_growth(records: &[Record]) {
    // Over the whole sweep, and from n = 4096 on (the window of the project's growth target).
    for (kernel, from) in [
        ("fma", 0),
        ("fma", 4096),
        ("fma-linear", 0),
        ("fma-linear", 4096),
        ("dense", 0),
    ] {
        let pts: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.kernel == kernel && r.layout == "1d" && r.n >= from)
            .map(|r| (r.n as f64, r.median_ms))
            .collect();
        if from > 0
            && pts.len()
                == records
                    .iter()
                    .filter(|r| r.kernel == kernel && r.layout == "1d")
                    .count()
        {
            continue; // same window as the whole sweep
        }
        if let Some((e_ends, e_fit)) = growth_exponent(&pts) {
            println!(
                "{kernel} 1d time grows as n^{e_ends:.2} between n = {} and {} (least squares over {} points: n^{e_fit:.2})",
                pts.first().map_or(0.0, |p| p.0),
                pts.last().map_or(0.0, |p| p.0),
                pts.len()
            );
        }
    }
}

/// The exponent of time against n between the smallest and the largest n, and the slope of
/// a least-squares line through all points on log-log axes.
pub fn growth_exponent(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0 > 0.0 && p.1 > 0.0)
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (first, last) = (pts.first()?, pts.last()?);
    if first.0 == last.0 {
        return None;
    }
    let ends = (last.1 / first.1).ln() / (last.0 / first.0).ln();
    let logs: Vec<(f64, f64)> = pts.iter().map(|p| (p.0.ln(), p.1.ln())).collect();
    let k = logs.len() as f64;
    let (mx, my) = (
        logs.iter().map(|p| p.0).sum::<f64>() / k,
        logs.iter().map(|p| p.1).sum::<f64>() / k,
    );
    let cov: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    Some((ends, cov / var))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_exponent_recovers_a_power_law() {
        let pts: Vec<(f64, f64)> = [1024.0, 4096.0, 16384.0, 65536.0]
            .map(|n: f64| (n, 3e-4 * n.powf(1.5)))
            .to_vec();
        let (ends, fit) = growth_exponent(&pts).unwrap();
        assert!((ends - 1.5).abs() < 1e-9 && (fit - 1.5).abs() < 1e-9);
        // n log n between 4K and 256K is about n^1.2 at most: the target exponent.
        let nlogn: Vec<(f64, f64)> = [4096.0, 262144.0].map(|n: f64| (n, n * n.ln())).to_vec();
        let (e, _) = growth_exponent(&nlogn).unwrap();
        assert!(e > 1.0 && e < 1.2, "{e}");
        assert!(growth_exponent(&[(10.0, 1.0)]).is_none());
    }
}
