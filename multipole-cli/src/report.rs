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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use multipole::browser_checks;
use multipole::model::rng::Rng;
use multipole::{
    Downsampling, FmaConfig, FmaError, Geometry, GpuContext, GpuTimer, Layout, Precision, Result,
    Shape, wgpu,
};
use serde::Serialize;

use super::bench::{self, Bench, Kernel, Record};
use super::matmul;
use super::plot;

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

/// One GPU-vs-CPU check.
#[derive(Serialize)]
struct CheckResult {
    /// "browser" (the page's checks), "random" (the sweep) or "calibration" (only when the
    /// matmul failed).
    group: &'static str,
    name: String,
    passed: bool,
    /// The errors on success, what went wrong on failure.
    detail: String,
    seconds: f64,
}

/// A measurement the report did not make, and why.
#[derive(Serialize)]
struct Skipped {
    kernel: String,
    layout: String,
    n: usize,
    reason: String,
}

#[derive(Serialize)]
struct AdapterReport {
    name: String,
    backend: String,
    device_type: String,
    driver: String,
    driver_info: String,
    vendor: u32,
    device: u32,
    subgroup_min_size: u32,
    subgroup_max_size: u32,
    /// Every feature the adapter offers.
    features: Vec<String>,
    /// The ones the library's device enables (timestamps, where offered).
    device_features: Vec<String>,
    limits: BTreeMap<&'static str, u64>,
    /// "timestamps" (GPU time of each pass) or "wall".
    timing: String,
}

#[derive(Serialize)]
struct Report {
    multipole_version: &'static str,
    adapter: AdapterReport,
    budget_s: f64,
    elapsed_s: f64,
    checks_passed: bool,
    checks: Vec<CheckResult>,
    /// Random cases not run because the budget's share for checks was spent.
    random_cases_skipped: usize,
    /// The calibration's best variant and rate (its records, kernel "matmul", are in
    /// `records`).
    matmul_variant: Option<String>,
    matmul_gflops: Option<f64>,
    records: Vec<Record>,
    skipped: Vec<Skipped>,
}

/// One kernel's sizes, smallest first, and how its time grows from one size to the next.
struct Series {
    kernel: &'static str,
    image: bool,
    /// n for sequences, the side for (square) images.
    sizes: Vec<usize>,
    /// Expected time ratio between consecutive sizes (n grows 4x: n log n or n^2), rounded up.
    growth: f64,
    /// Set once the series stops growing: why.
    stopped: Option<String>,
    /// Seconds the last measurement took (plan, inputs, warm-up and runs).
    last: Option<(usize, f64)>,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let start = Instant::now();
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
    let elapsed = || start.elapsed().as_secs_f64();
    let ctx = GpuContext::new_blocking()?;
    let timer = GpuTimer::new(&ctx, 6);
    let adapter = adapter_report(&ctx, timer.is_some());
    println!(
        "adapter: {} ({} {}, {}, driver {} {})",
        adapter.name,
        adapter.device_type,
        adapter.backend,
        adapter.timing,
        adapter.driver,
        adapter.driver_info
    );
    println!("features: {}", adapter.features.join(", "));
    let limits: Vec<String> = adapter
        .limits
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("limits: {}", limits.join(", "));

    // 1. Correctness: the browser page's checks, then random cases while a share of the
    // budget lasts.
    println!("\nGPU against the CPU reference:");
    let mut checks = Vec::new();
    let t = Instant::now();
    let browser = pollster::block_on(browser_checks::run(&ctx));
    let per = t.elapsed().as_secs_f64() / browser.len().max(1) as f64;
    for (name, r) in browser {
        checks.push(check_result("browser", name, r, per));
    }
    let cases = if args.quick {
        args.cases.min(3)
    } else {
        args.cases
    };
    let checks_budget = 0.35 * args.budget_s;
    let mut rng = Rng::new(args.seed);
    let mut random_cases_skipped = 0;
    for i in 0..cases {
        if elapsed() > checks_budget {
            random_cases_skipped = cases - i;
            println!(
                "  random cases: {random_cases_skipped} of {cases} skipped: the checks' share of the budget ({checks_budget:.0} s) is spent"
            );
            break;
        }
        let (name, shape, cfg) = random_case(&mut rng);
        let t = Instant::now();
        let r = pollster::block_on(browser_checks::fma_check(
            &ctx,
            shape,
            &cfg,
            1000 + i as u64,
        ));
        checks.push(check_result("random", name, r, t.elapsed().as_secs_f64()));
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    println!(
        "  {} of {} checks passed",
        checks.len() - failed,
        checks.len()
    );

    // 2. The calibration, at the largest size that fits a share of the budget.
    println!("\ncalibration (f32 matmul):");
    let calibrated = if args.quick {
        Ok(256)
    } else {
        calibration_size(&ctx, timer.as_ref(), args.budget_s * 0.15)
    }
    .and_then(|size| bench::calibration(&ctx, timer.as_ref(), size, args.runs));
    // A failed calibration (a wrong product, a refused size) is a failed check; the sweep
    // still runs, without fractions.
    let mut records = match calibrated {
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
    };
    let failed = checks.iter().filter(|c| !c.passed).count();

    // 3. The sweep, every kernel one size at a time.
    println!("\nsweep (d = 64; sequences m = 32, p = 4; images m = 4, p = 4):");
    // The last step of each series: FMA to n = 1M (4^5 x 1024), dense to 64K.
    let (fma_max, dense_max) = if args.quick { (1, 0) } else { (5, 3) };
    let steps = |last: usize| (0..=last).collect::<Vec<usize>>();
    // f16 storage where the adapter has it (kernel "fma_f16"); a missing feature is said.
    let f16 = ctx.device.features().contains(wgpu::Features::SHADER_F16);
    if !f16 {
        println!("  no SHADER_F16 on this adapter: the f16 series is left out");
    }
    let mut series: Vec<Series> = [
        ("fma", false, fma_max, 5.0),
        ("fma_f16", false, fma_max, 5.0),
        ("fma_backward", false, fma_max, 5.0),
        ("dense", false, dense_max, 16.0),
        ("fma", true, fma_max, 5.0),
        ("fma_f16", true, fma_max, 5.0),
        ("fma_backward", true, fma_max, 5.0),
        ("dense", true, dense_max, 16.0),
    ]
    .into_iter()
    .filter(|&(kernel, ..)| f16 || kernel != "fma_f16")
    .map(|(kernel, image, last, growth)| Series {
        kernel,
        image,
        // 1D: n = 1K, 4K, .., 1M; 2D: sides 32, 64, .., 1024 (the same n).
        sizes: steps(last)
            .into_iter()
            .map(|i| if image { 32 << i } else { 1024 << (2 * i) })
            .collect(),
        growth,
        stopped: None,
        last: None,
    })
    .collect();
    let mut skipped = Vec::new();
    // Seconds kept for writing the files at the end.
    let reserve = 5.0;
    let step_cap = 0.2 * args.budget_s;
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
            let s = &mut series[i];
            let Some(&size) = s.sizes.get(step) else {
                continue;
            };
            let (n, layout) = if s.image {
                (
                    size * size,
                    Layout::Image {
                        height: size,
                        width: size,
                    },
                )
            } else {
                (size, Layout::Sequence)
            };
            let layout_name = if s.image {
                format!("2d {size}x{size}")
            } else {
                "1d".into()
            };
            let reason = match &s.stopped {
                // Larger sizes of a stopped series name where and why it stopped.
                Some(why) => Some(format!("stopped growing before: {why}")),
                None => {
                    let budget = Budget {
                        total: args.budget_s,
                        left: args.budget_s - elapsed() - reserve,
                        active,
                        step_cap,
                    };
                    s.stopped = budget.stop(s.last, s.growth, n);
                    s.stopped.clone()
                }
            };
            if let Some(reason) = reason {
                println!("  skipped {} {layout_name} n={n}: {reason}", s.kernel);
                skipped.push(Skipped {
                    kernel: s.kernel.into(),
                    layout: layout_name,
                    n,
                    reason,
                });
                continue;
            }
            let (m, p) = if s.image { (4, 4) } else { (32, 4) };
            let cfg = FmaConfig {
                layout,
                ..FmaConfig::new(m, p)
            };
            let bench = Bench {
                ctx: &ctx,
                timer: timer.as_ref(),
                shape: Shape::new(1, 1, n, 64),
                runs: args.runs,
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
                // Compile this kernel's pipelines on a small input first, so that the first
                // size's time (which predicts the next ones) is not mostly compilation.
                let (small, layout) = if s.image {
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
                    ..kernel_config(&kernel).clone()
                };
                let warm_kernel = match kernel {
                    Kernel::Fma(_) => Kernel::Fma(&warm_cfg),
                    Kernel::FmaBackward(_) => Kernel::FmaBackward(&warm_cfg),
                    Kernel::Dense(_) => Kernel::Dense(&warm_cfg),
                };
                let warm = Bench {
                    shape: Shape::new(1, 1, small, 64),
                    runs: 1,
                    ..bench
                };
                // A failure here shows again, with its reason, at the real size.
                let _ = warm.measure(&warm_kernel);
            }
            let t = Instant::now();
            match bench.measure(&kernel) {
                Ok(r) => {
                    bench::print_progress(&r);
                    records.push(r);
                    s.last = Some((n, t.elapsed().as_secs_f64()));
                }
                Err(e) => {
                    // A size the adapter cannot hold: larger ones cannot either.
                    let reason = format!("n = {n} failed: {e}");
                    println!("  skipped {} {layout_name} n={n}: {reason}", s.kernel);
                    skipped.push(Skipped {
                        kernel: s.kernel.into(),
                        layout: layout_name,
                        n,
                        reason: reason.clone(),
                    });
                    s.stopped = Some(reason);
                }
            }
        }
    }
    bench::apply_calibration(&mut records);
    bench::summarise(&records);

    // 4. The files.
    let best = bench::yardstick(&records);
    let report = Report {
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
    let stem = args.name.clone().unwrap_or_else(|| slug(&report.adapter));
    let files = write_files(&report, &args.out, &stem)?;
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

/// The options a kernel runs with.
fn kernel_config<'a>(kernel: &Kernel<'a>) -> &'a FmaConfig {
    match kernel {
        Kernel::Fma(c) | Kernel::FmaBackward(c) | Kernel::Dense(c) => c,
    }
}

/// What a series may still spend.
struct Budget {
    /// The whole report's seconds.
    total: f64,
    /// Seconds left (less what writing the files needs).
    left: f64,
    /// Series still growing, among which `left` is shared.
    active: usize,
    /// Seconds one measurement may take at most.
    step_cap: f64,
}

impl Budget {
    /// Why a series whose last measurement (n, seconds) was `last` must not measure `n`
    /// next, if it must not: that one took too long, the next one (predicted as `growth`
    /// times longer) would not fit in the series' share of what is left, or nothing is left.
    fn stop(&self, last: Option<(usize, f64)>, growth: f64, n: usize) -> Option<String> {
        let share = self.left / self.active.max(1) as f64;
        match last {
            Some((prev, secs)) if secs > self.step_cap => Some(format!(
                "n = {prev} took {secs:.1} s, more than the {:.0} s a size may take",
                self.step_cap
            )),
            Some((prev, secs)) if secs * growth > share => Some(format!(
                "n = {prev} took {secs:.1} s; n = {n} would take about {:.0} s ({growth}x), more than its share ({:.0} s) of the {:.0} s left of the {:.0} s budget",
                secs * growth,
                share.max(0.0),
                self.left.max(0.0),
                self.total
            )),
            None if self.left <= 0.0 => Some(format!("the {:.0} s budget is spent", self.total)),
            _ => None,
        }
    }
}

fn check_result(
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

fn adapter_report(ctx: &GpuContext, timestamps: bool) -> AdapterReport {
    let info = &ctx.info;
    // The adapter's own features (the context's device enables only timestamps).
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        ..Default::default()
    }))
    .ok();
    let names = |f: wgpu::Features| -> Vec<String> {
        f.iter_names().map(|(name, _)| name.to_string()).collect()
    };
    let l = ctx.limits();
    let limits = BTreeMap::from([
        ("max_buffer_size", l.max_buffer_size),
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x as u64,
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension as u64,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage as u64,
        ),
    ]);
    AdapterReport {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        vendor: info.vendor,
        device: info.device,
        subgroup_min_size: info.subgroup_min_size,
        subgroup_max_size: info.subgroup_max_size,
        features: adapter.map_or_else(Vec::new, |a| names(a.features())),
        device_features: names(ctx.device.features()),
        limits,
        timing: if timestamps { "timestamps" } else { "wall" }.into(),
    }
}

/// A file name from the adapter's name and backend: lower case, runs of anything but
/// letters and digits as one '-'.
fn slug(a: &AdapterReport) -> String {
    let raw = format!("{} {}", a.name, a.backend).to_lowercase();
    let mut out = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "adapter".into()
    } else {
        out
    }
}

fn write_files(report: &Report, dir: &Path, stem: &str) -> Result<Vec<String>> {
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
        files.extend(plot::draw(&plotted, &prefix).map_err(|e| io(&prefix, e))?);
    }
    Ok(files)
}

/// The summary: adapter, checks, calibration, one row per measurement, what was skipped.
fn markdown(r: &Report) -> String {
    let a = &r.adapter;
    let mut s = String::new();
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
    if let (Some(v), Some(g)) = (&r.matmul_variant, r.matmul_gflops) {
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
    if !r.skipped.is_empty() {
        let _ = writeln!(s, "\nSkipped (the budget, or the adapter's limits):\n");
        for k in &r.skipped {
            let _ = writeln!(s, "- {} {} n={}: {}", k.kernel, k.layout, k.n, k.reason);
        }
    }
    s
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

    #[test]
    fn the_budget_stops_a_series_that_would_not_fit() {
        let b = Budget {
            total: 420.0,
            left: 300.0,
            active: 3,
            step_cap: 84.0,
        };
        // The first size runs while anything is left; 10 s x 5 = 50 s fits a 100 s share.
        assert_eq!(b.stop(None, 5.0, 1024), None);
        assert_eq!(b.stop(Some((1024, 10.0)), 5.0, 4096), None);
        // 10 s x 16 = 160 s does not.
        let why = b.stop(Some((1024, 10.0)), 16.0, 4096).unwrap();
        assert!(
            why.contains("would take about 160 s") && why.contains("share (100 s)"),
            "{why}"
        );
        // A size over the cap stops the series whatever is left.
        let why = b.stop(Some((1024, 90.0)), 1.0, 4096).unwrap();
        assert!(why.contains("more than the 84 s a size may take"), "{why}");
        let spent = Budget { left: -1.0, ..b };
        assert!(
            spent
                .stop(None, 5.0, 1024)
                .unwrap()
                .contains("budget is spent")
        );
    }

    #[test]
    fn slugs_are_file_names() {
        let mut a = AdapterReport {
            name: "llvmpipe (LLVM 19.1.7, 256 bits)".into(),
            backend: "Vulkan".into(),
            device_type: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            vendor: 0,
            device: 0,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            features: Vec::new(),
            device_features: Vec::new(),
            limits: BTreeMap::new(),
            timing: String::new(),
        };
        assert_eq!(slug(&a), "llvmpipe-llvm-19-1-7-256-bits-vulkan");
        a.name = "NVIDIA H100 80GB HBM3".into();
        assert_eq!(slug(&a), "nvidia-h100-80gb-hbm3-vulkan");
        a.name = "/..".into();
        a.backend = String::new();
        assert_eq!(slug(&a), "adapter");
    }
}
