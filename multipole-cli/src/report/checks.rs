//! The report's GPU-vs-CPU checks: the browser page's, then random shapes, kinds and layouts
//! (forward and backward, same tolerances) while the checks' share of the budget lasts.

use std::time::Instant;

use multipole::browser_checks;
use multipole::rng::Rng;
use multipole::{Downsampling, FmaConfig, Geometry, GpuContext, Shape};
use serde::Serialize;

use super::ReportArgs;

/// One GPU-vs-CPU check.
#[derive(Serialize)]
pub struct CheckResult {
    /// "browser" (the page's checks), "random" (the sweep) or "calibration" (only when the
    /// matmul failed).
    pub group: &'static str,
    pub name: String,
    pub passed: bool,
    /// The errors on success, what went wrong on failure.
    pub detail: String,
    pub seconds: f64,
}

/// The checks, and how many random cases were not run because the checks' share of the
/// budget was spent.
pub fn run(ctx: &GpuContext, args: &ReportArgs, start: Instant) -> (Vec<CheckResult>, usize) {
    println!("\nGPU against the CPU reference:");
    let mut checks = Vec::new();
    let t = Instant::now();
    let browser = pollster::block_on(browser_checks::run(ctx));
    let per = t.elapsed().as_secs_f64() / browser.len().max(1) as f64;
    for (name, r) in browser {
        checks.push(check_result("browser", name, r, per));
    }
    let random_cases_skipped = random_cases(ctx, args, start, &mut checks);
    let failed = checks.iter().filter(|c| !c.passed).count();
    println!(
        "  {} of {} checks passed",
        checks.len() - failed,
        checks.len()
    );
    (checks, random_cases_skipped)
}

/// Runs random cases until --cases (at most 3 with --quick) or 35% of the budget, counted
/// from `start`, is spent; the number of cases left out.
fn random_cases(
    ctx: &GpuContext,
    args: &ReportArgs,
    start: Instant,
    checks: &mut Vec<CheckResult>,
) -> usize {
    let cases = if args.quick {
        args.cases.min(3)
    } else {
        args.cases
    };
    let checks_budget = 0.35 * args.budget_s;
    let mut rng = Rng::new(args.seed);
    for i in 0..cases {
        if start.elapsed().as_secs_f64() > checks_budget {
            let random_cases_skipped = cases - i;
            println!(
                "  random cases: {random_cases_skipped} of {cases} skipped: the checks' share of the budget ({checks_budget:.0} s) is spent"
            );
            return random_cases_skipped;
        }
        let (name, shape, cfg) = random_case(&mut rng);
        let t = Instant::now();
        let r = pollster::block_on(browser_checks::fma_check(ctx, shape, &cfg, 1000 + i as u64));
        checks.push(check_result("random", name, r, t.elapsed().as_secs_f64()));
    }
    0
}

/// A check's result, printed as it comes.
pub fn check_result(
    group: &'static str,
    name: String,
    r: std::result::Result<String, String>,
    seconds: f64,
) -> CheckResult {
    let (passed, detail) = match r {
        Ok(d) => (true, d),
        Err(e) => (false, e),
    };
    println!(
        "  {} {name}: {detail}",
        if passed { "ok  " } else { "FAIL" }
    );
    CheckResult {
        group,
        name,
        passed,
        detail,
        seconds,
    }
}

/// A random configuration the library accepts: 1D or 2D, any downsampling, causal or not
/// (sequences), d up to 72, one or two batches and heads, a few hundred tokens (small enough
/// for the f64 reference).
fn random_case(rng: &mut Rng) -> (String, Shape, FmaConfig) {
    let kinds = [
        Downsampling::Mean,
        Downsampling::Basis,
        Downsampling::Depthwise,
    ];
    loop {
        let kind = kinds[rng.below(3)];
        let d = 1 + rng.below(72);
        let (batch, heads) = (1 + rng.below(2), 1 + rng.below(2));
        let image = rng.below(2) == 1;
        let (n, cfg, what) = if image {
            let m = 2usize << rng.below(3); // 2, 4, 8
            let root = 1usize << rng.below(m.trailing_zeros() as usize + 1);
            let (h, w) = (2 + rng.below(30), 2 + rng.below(30));
            let cfg = FmaConfig {
                downsampling: kind,
                ..FmaConfig::new(m, root * root)
            }
            .image(h, w);
            (h * w, cfg, format!("2D {h}x{w}"))
        } else {
            let m = 2usize << rng.below(5); // 2 .. 32
            let p = 1usize << rng.below(m.trailing_zeros() as usize + 1);
            let n = 1 + rng.below(700);
            let cfg = FmaConfig {
                downsampling: kind,
                causal: rng.below(2) == 1,
                ..FmaConfig::new(m, p)
            };
            (n, cfg, format!("1D n={n}"))
        };
        let shape = Shape::new(batch, heads, n, d);
        if shape.validate().is_err() || Geometry::new(n, &cfg).is_err() {
            continue;
        }
        let name = format!(
            "{what} m={} p={} {}{} d={d} {batch}x{heads}",
            cfg.m,
            cfg.p,
            format!("{:?}", kind).to_lowercase(),
            if cfg.causal { " causal" } else { "" }
        );
        return (name, shape, cfg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_cases_are_valid_and_varied() {
        let mut rng = Rng::new(1);
        let cases: Vec<(String, Shape, FmaConfig)> =
            (0..40).map(|_| random_case(&mut rng)).collect();
        for (name, shape, cfg) in &cases {
            assert!(shape.validate().is_ok(), "{name}");
            assert!(Geometry::new(shape.n, cfg).is_ok(), "{name}");
        }
        let images = cases.iter().filter(|c| c.0.starts_with("2D")).count();
        assert!(images > 5 && images < 35, "{images} images of 40");
        for kind in ["mean", "basis", "depthwise"] {
            assert!(cases.iter().any(|c| c.0.contains(kind)), "{kind}");
        }
        assert!(cases.iter().any(|c| c.0.contains("causal")));
    }
}
