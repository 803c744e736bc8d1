//! The report's calibration: the bench's f32 matmul at the largest size that fits its share
//! of the budget.

use std::time::Instant;

use multipole::{GpuContext, GpuTimer, Result};

use super::ReportArgs;
use super::checks::{CheckResult, check_result};
use crate::bench::{self, Record};
use crate::matmul;

/// The calibration's records (256^3 with --quick, else as large as 15% of the budget
/// allows). A failed calibration (a wrong product, a refused size) is a failed check; the
/// sweep still runs, without fractions.
pub fn run(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    args: &ReportArgs,
    checks: &mut Vec<CheckResult>,
) -> Vec<Record> {
    println!("\ncalibration (f32 matmul):");
    let calibrated = if args.quick {
        Ok(256)
    } else {
        calibration_size(ctx, timer, args.budget_s * 0.15)
    }
    .and_then(|size| bench::calibration(ctx, timer, size, args.runs));
    match calibrated {
        Ok(records) => records,
        Err(e) => {
            checks.push(check_result(
                "calibration",
                "f32 matmul".into(),
                Err(e.to_string()),
                0.0,
            ));
            Vec::new()
        }
    }
}

/// The largest calibration side (2048, 1024 or 512) whose variants, timed as the report
/// times them, fit in `seconds`: measured at 512 first, the rest predicted as n^3.
fn calibration_size(ctx: &GpuContext, timer: Option<&GpuTimer>, seconds: f64) -> Result<usize> {
    let t = Instant::now();
    matmul::measure(ctx, timer, 512, 1)?;
    let at_512 = t.elapsed().as_secs_f64();
    let size = [2048usize, 1024, 512]
        .into_iter()
        .find(|&s| at_512 * (s as f64 / 512.0).powi(3) * 2.0 <= seconds)
        .unwrap_or(512);
    if size < 2048 {
        println!(
            "  a 512^3 trial took {at_512:.1} s: calibrating at {size}^3 to stay within {seconds:.0} s"
        );
    }
    Ok(size)
}
