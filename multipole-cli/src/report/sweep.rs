//! The report's bench sweep: every series grows one size at a time, all together, until the
//! budget stops it or the adapter refuses a size; what was skipped, and why, is printed and
//! recorded.

use std::time::Instant;

use multipole::{FmaConfig, GpuContext, GpuTimer, Layout, Precision, Shape, wgpu};
use serde::Serialize;

use super::ReportArgs;
use super::series::{Budget, Series};
use crate::bench::{self, Bench, Kernel, Record};

/// Seconds kept for writing the files at the end.
const RESERVE: f64 = 5.0;

/// A measurement the report did not make, and why.
#[derive(Serialize)]
pub struct Skipped {
    pub kernel: String,
    pub layout: String,
    pub n: usize,
    pub reason: String,
}

/// What the sweep's steps share.
struct Sweep<'a> {
    ctx: &'a GpuContext,
    timer: Option<&'a GpuTimer>,
    args: &'a ReportArgs,
    /// When the report started: the budget counts from there.
    start: Instant,
    /// Seconds one measurement may take at most.
    step_cap: f64,
    records: &'a mut Vec<Record>,
    skipped: Vec<Skipped>,
}

/// Runs the sweep, adding its records to `records`; what it skipped.
pub fn run(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    args: &ReportArgs,
    start: Instant,
    records: &mut Vec<Record>,
) -> Vec<Skipped> {
    println!("\nsweep (d = 64; sequences m = 32, p = 4; images m = 4, p = 4):");
    // f16 storage where the adapter has it (kernel "fma_f16"); a missing feature is said.
    let f16 = ctx.device.features().contains(wgpu::Features::SHADER_F16);
    if !f16 {
        println!("  no SHADER_F16 on this adapter: the f16 series is left out");
    }
    let mut series = Series::all(args.quick, f16);
    let mut sweep = Sweep {
        ctx,
        timer,
        args,
        start,
        step_cap: 0.2 * args.budget_s,
        records,
        skipped: Vec::new(),
    };
    let longest = series.iter().map(|s| s.sizes.len()).max().unwrap_or(0);
    for step in 0..longest {
        for i in 0..series.len() {
            // The time left is shared by the kernels still growing, so that a slow one (dense)
            // cannot spend what the others' next sizes need.
            let active = series
                .iter()
                .filter(|s| s.stopped.is_none() && s.sizes.len() > step)
                .count()
                .max(1);
            sweep.grow(&mut series[i], step, active);
        }
    }
    sweep.skipped
}

impl Sweep<'_> {
    /// Measures the series at its size of this step, unless it stopped growing before or the
    /// budget stops it now; a size that fails stops it too.
    fn grow(&mut self, s: &mut Series, step: usize, active: usize) {
        let Some(&size) = s.sizes.get(step) else {
            return;
        };
        let (n, layout) = s.input(size);
        let layout_name = s.layout_name(size);
        let reason = match &s.stopped {
            // Larger sizes of a stopped series name where and why it stopped.
            Some(why) => Some(format!("stopped growing before: {why}")),
            None => {
                let budget = Budget {
                    total: self.args.budget_s,
                    left: self.args.budget_s - self.start.elapsed().as_secs_f64() - RESERVE,
                    active,
                    step_cap: self.step_cap,
                };
                s.stopped = budget.stop(s.last, s.growth, n);
                s.stopped.clone()
            }
        };
        if let Some(reason) = reason {
            self.skip(s.kernel, layout_name, n, reason);
            return;
        }
        let (m, p) = s.m_p();
        let cfg = FmaConfig {
            layout,
            ..FmaConfig::new(m, p)
        };
        let bench = Bench {
            ctx: self.ctx,
            timer: self.timer,
            shape: Shape::new(1, 1, n, 64),
            runs: self.args.runs,
        };
        let cfg16 = FmaConfig {
            precision: Precision::F16,
            ..cfg.clone()
        };
        let kernel = match s.kernel {
            "fma" => Kernel::Fma(&cfg),
            "fma_f16" => Kernel::Fma(&cfg16),
            "fma_backward" => Kernel::FmaBackward(&cfg),
            _ => Kernel::Dense(&cfg),
        };
        if s.last.is_none() {
            warm_up(&bench, &kernel, s.image, m);
        }
        let t = Instant::now();
        match bench.measure(&kernel) {
            Ok(r) => {
                bench::print_progress(&r);
                self.records.push(r);
                s.last = Some((n, t.elapsed().as_secs_f64()));
            }
            Err(e) => {
                // A size the adapter cannot hold: larger ones cannot either.
                let reason = format!("n = {n} failed: {e}");
                self.skip(s.kernel, layout_name, n, reason.clone());
                s.stopped = Some(reason);
            }
        }
    }

    fn skip(&mut self, kernel: &str, layout: String, n: usize, reason: String) {
        println!("  skipped {kernel} {layout} n={n}: {reason}");
        self.skipped.push(Skipped {
            kernel: kernel.into(),
            layout,
            n,
            reason,
        });
    }
}

/// Compiles the kernel's pipelines on a small input first, so that the first size's time
/// (which predicts the next ones) is not mostly compilation.
fn warm_up(bench: &Bench, kernel: &Kernel, image: bool, m: usize) {
    let (small, layout) = if image {
        let side = 4 * m;
        let layout = Layout::Image {
            height: side,
            width: side,
        };
        (side * side, layout)
    } else {
        (8 * m, Layout::Sequence)
    };
    let warm_cfg = FmaConfig {
        layout,
        ..kernel_config(kernel).clone()
    };
    let warm_kernel = match kernel {
        Kernel::Fma(_) => Kernel::Fma(&warm_cfg),
        Kernel::FmaBackward(_) => Kernel::FmaBackward(&warm_cfg),
        Kernel::Dense(_) => Kernel::Dense(&warm_cfg),
    };
    let warm = Bench {
        shape: Shape::new(1, 1, small, 64),
        runs: 1,
        ..*bench
    };
    // A failure here shows again, with its reason, at the real size.
    let _ = warm.measure(&warm_kernel);
}

/// The options a kernel runs with.
fn kernel_config<'a>(kernel: &Kernel<'a>) -> &'a FmaConfig {
    match kernel {
        Kernel::Fma(c) | Kernel::FmaBackward(c) | Kernel::Dense(c) => c,
    }
}
