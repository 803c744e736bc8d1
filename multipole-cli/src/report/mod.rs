//! `multipole gpu-report`: everything one wants to know about an adapter, in one command that
//! runs from the release binary alone (the shaders and the CPU reference are inside it) and
//! stays within a time budget (default 7 minutes):
//!
//! 1. the adapter: name, backend, type, driver, features, key limits;
//! 2. the GPU-vs-CPU checks the browser page runs, then a sweep of random shapes, kinds and
//!    layouts (forward and backward, same tolerances);
//! 3. the calibration (an f32 matmul, `matmul.rs`) and the bench sweep: FMA forward and
//!    backward to n = 1M and dense to 64K, in 1D and 2D, growing n one step at a time for
//!    every kernel together. A kernel stops growing when its previous size took too long or
//!    its next size would not fit in the budget left; what was skipped, and why, is printed
//!    and recorded;
//! 4. OUT/<adapter>.json (all of it), OUT/<adapter>.md (the summary table) and the plots
//!    OUT/<adapter>-time.svg, OUT/<adapter>-memory.svg.
//!
//! It fails (after writing the files) when any check failed.
//!
//! The modules, in the order the report runs: `adapter`, `checks`, `calibration`, `series`
//! and `sweep` (the bench sweep and its budget), `files`.

use std::path::PathBuf;
use std::time::Instant;

use multipole::{FmaError, GpuContext, GpuTimer, Result};

use crate::bench;

mod adapter;
mod calibration;
mod checks;
mod files;
mod series;
mod sweep;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Folder for <adapter>.json, <adapter>.md and <adapter>-{time,memory}.svg.
    #[arg(long, default_value = "examples/results")]
    out: PathBuf,
    /// Seconds the whole report may take: a measurement that would not fit in what is left is
    /// skipped, and said so. The default leaves a minute of an 8-minute slot spare.
    #[arg(long, default_value_t = 420.0)]
    budget_s: f64,
    /// Random GPU-vs-CPU cases after the browser page's checks.
    #[arg(long, default_value_t = 24)]
    cases: usize,
    /// Seed of the random cases.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timed runs per measurement (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A short report (for tests): a 256^3 calibration, FMA to n = 4096, dense at 1024, at
    /// most 3 random cases.
    #[arg(long)]
    quick: bool,
    /// File name stem instead of the adapter's name.
    #[arg(long)]
    name: Option<String>,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let start = Instant::now();
    check_args(args)?;
    let elapsed = || start.elapsed().as_secs_f64();
    let ctx = GpuContext::new_blocking()?;
    let timer = GpuTimer::new(&ctx, 6);
    let adapter = adapter::adapter_report(&ctx, timer.is_some());
    adapter::print(&adapter);

    // 1. Correctness: the browser page's checks, then random cases while a share of the
    // budget lasts.
    let (mut checks, random_cases_skipped) = checks::run(&ctx, args, start);
    // 2. The calibration, at the largest size that fits a share of the budget.
    let mut records = calibration::run(&ctx, timer.as_ref(), args, &mut checks);
    let failed = checks.iter().filter(|c| !c.passed).count();
    // 3. The sweep, every kernel one size at a time.
    let skipped = sweep::run(&ctx, timer.as_ref(), args, start, &mut records);
    bench::apply_calibration(&mut records);
    bench::summarise(&records);

    // 4. The files.
    let best = bench::yardstick(&records);
    let report = files::Report {
        multipole_version: env!("CARGO_PKG_VERSION"),
        matmul_variant: best.as_ref().and_then(|b| b.1.clone()),
        matmul_gflops: best.as_ref().map(|b| b.0),
        adapter,
        budget_s: args.budget_s,
        elapsed_s: elapsed(),
        checks_passed: failed == 0,
        checks,
        random_cases_skipped,
        records,
        skipped,
    };
    let stem = args
        .name
        .clone()
        .unwrap_or_else(|| adapter::slug(&report.adapter));
    let files = files::write(&report, &args.out, &stem)?;
    println!(
        "\nwrote {} in {:.0} s (budget {:.0} s)",
        files.join(", "),
        elapsed(),
        args.budget_s
    );
    if failed > 0 {
        return Err(FmaError::Gpu(format!(
            "{failed} GPU-vs-CPU checks failed (listed above and in the JSON)"
        )));
    }
    Ok(())
}

/// Refuses what would fail only after minutes of measuring: no runs, no budget, an --out
/// that cannot be a folder.
fn check_args(args: &ReportArgs) -> Result<()> {
    if args.runs == 0 {
        return Err(FmaError::InvalidConfig("--runs must be at least 1".into()));
    }
    if args.budget_s.is_nan() || args.budget_s <= 0.0 {
        return Err(FmaError::InvalidConfig(
            "--budget-s must be positive".into(),
        ));
    }
    // The report's files go into a folder: a path that cannot be one fails now, not after
    // minutes of measuring.
    std::fs::create_dir_all(&args.out).map_err(|e| FmaError::TensorFile {
        path: args.out.display().to_string(),
        message: format!("--out must be a folder the report can write into: {e}"),
    })?;
    Ok(())
}
