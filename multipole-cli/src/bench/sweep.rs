//! The default `bench`: the calibration, then FMA (and what else the flags ask for) against
//! dense attention at every sequence length and image.

use multipole::wgpu;
use multipole::{FmaConfig, FmaError, Geometry, GpuContext, GpuTimer, Layout, Result, Shape};

use super::BenchArgs;
use super::calibration::{apply_calibration, calibration};
use super::measure::{Bench, Kernel};
use super::records::Record;
use super::summary::print_progress;
use crate::matmul;

/// What the sweep measures once the defaults are filled in.
struct Sweep {
    ns: Vec<usize>,
    images: Vec<Layout>,
    runs: usize,
    /// Largest n dense attention runs at.
    dense_max: usize,
}

impl Sweep {
    /// --n and --image, or the default sweep (--quick's is small enough for CI); --quick also
    /// caps the runs and dense's n.
    fn new(args: &BenchArgs, software: bool) -> Sweep {
        let (mut ns, mut images, mut runs) = (args.n.clone(), args.image.clone(), args.runs);
        let quick_default = args.quick && ns.is_empty() && images.is_empty();
        if quick_default {
            ns = vec![1024, 4096];
            images = vec![Layout::Image {
                height: 32,
                width: 32,
            }];
        } else if ns.is_empty() && images.is_empty() {
            ns = (0..5).map(|i| 1024 << (2 * i)).collect(); // 1K .. 256K
            images = [32, 64, 128, 256]
                .map(|s| Layout::Image {
                    height: s,
                    width: s,
                })
                .to_vec();
        }
        if args.quick {
            runs = runs.min(3);
        }
        let dense_max = args.dense_max.unwrap_or(match (args.quick, software) {
            (true, _) => 4096,
            (false, true) => 16384,
            (false, false) => 1 << 20,
        });
        Sweep {
            ns,
            images,
            runs,
            dense_max,
        }
    }

    /// Each input's n and FMA options: sequences with --m and --p, images with --image-m and
    /// --image-p (and never causal).
    fn inputs(&self, args: &BenchArgs) -> Vec<(usize, FmaConfig)> {
        let image_inputs = self.images.iter().filter_map(|&l| match l {
            // Saturates: an image too large for usize is then refused by the shape checks.
            Layout::Image { height, width } => Some((height.saturating_mul(width), l)),
            Layout::Sequence => None,
        });
        self.ns
            .iter()
            .map(|&n| (n, Layout::Sequence))
            .chain(image_inputs)
            .map(|(n, layout)| {
                let image = layout != Layout::Sequence;
                let (m, p) = if image {
                    (args.image_m, args.image_p)
                } else {
                    (args.fma.m, args.fma.p)
                };
                let cfg = FmaConfig {
                    m,
                    p,
                    causal: args.causal && !image,
                    layout,
                    ..args.fma.config()
                };
                (n, cfg)
            })
            .collect()
    }
}

/// The sweep's records, calibration first, with every record's fraction of the yardstick.
pub fn run(args: &BenchArgs) -> Result<Vec<Record>> {
    let ctx = GpuContext::new_blocking()?;
    let software = ctx.info.device_type == wgpu::DeviceType::Cpu;
    let sweep = Sweep::new(args, software);
    if sweep.runs == 0 {
        return Err(FmaError::InvalidConfig("--runs must be at least 1".into()));
    }
    // One slot per pass: FMA's backward has six (its forward three, dense one).
    let timer = GpuTimer::new(&ctx, 6);
    print_adapter(&ctx, timer.is_some());
    let inputs = sweep.inputs(args);
    // Refuse a bad input before the calibration's minute, not after it.
    for (n, cfg) in &inputs {
        Shape::new(1, args.heads(), *n, args.d).validate()?;
        Geometry::new(*n, cfg)?;
    }
    let size = args
        .matmul_size
        .unwrap_or(if args.quick { 1024 } else { 2048 });
    matmul::check_dims(size, size, size)?;
    let mut records = calibration(&ctx, timer.as_ref(), size, sweep.runs.min(3))?;
    for (n, cfg) in &inputs {
        let bench = Bench {
            ctx: &ctx,
            timer: timer.as_ref(),
            shape: Shape::new(1, args.heads(), *n, args.d),
            runs: sweep.runs,
        };
        let dense = *n <= sweep.dense_max;
        measure_input(args, &bench, cfg, dense, &mut records)?;
    }
    apply_calibration(&mut records);
    Ok(records)
}

fn print_adapter(ctx: &GpuContext, timestamps: bool) {
    println!("adapter: {}", ctx.describe());
    println!(
        "features: {:?}; timing: {}",
        ctx.device.features(),
        if timestamps {
            "GPU timestamps"
        } else {
            "wall clock (no timestamp queries)"
        }
    );
}

/// Every kernel the flags ask for at one input, each printed as it is measured: FMA at each
/// precision, the O(n) variant, the backwards, and dense where `dense` says it runs.
fn measure_input(
    args: &BenchArgs,
    bench: &Bench,
    cfg: &FmaConfig,
    dense: bool,
    records: &mut Vec<Record>,
) -> Result<()> {
    let mut keep = |r: Record| {
        print_progress(&r);
        records.push(r);
    };
    for &precision in &args.precision {
        keep(bench.measure(&Kernel::Fma(&FmaConfig {
            precision,
            ..cfg.clone()
        }))?);
    }
    let linear = FmaConfig {
        downsample_queries: true,
        ..cfg.clone()
    };
    if args.downsample_queries {
        keep(bench.measure(&Kernel::Fma(&linear))?);
    }
    if args.backward {
        keep(bench.measure(&Kernel::FmaBackward(cfg))?);
        if args.without_subgroups && bench.ctx.subgroups() {
            keep(backward_without_subgroups(bench, cfg)?);
        }
        if args.downsample_queries {
            keep(bench.measure(&Kernel::FmaBackward(&linear))?);
        }
    }
    if dense {
        keep(bench.measure(&Kernel::Dense(cfg))?);
    }
    Ok(())
}

/// The backward with the adapter's subgroups turned off (the path browsers take), under its
/// own kernel name; subgroups are back on afterwards, whether it succeeded or not.
fn backward_without_subgroups(bench: &Bench, cfg: &FmaConfig) -> Result<Record> {
    bench.ctx.set_subgroups(false);
    let plain = bench.measure(&Kernel::FmaBackward(cfg));
    bench.ctx.set_subgroups(true);
    let mut plain = plain?;
    plain.kernel = "fma_backward_no_subgroups".into();
    Ok(plain)
}
