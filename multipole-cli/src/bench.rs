//! `multipole bench`: FMA against exact (dense) attention on the same adapter, in one run.
//!
//! Each measurement builds its plan first (pipeline creation is not timed), puts random
//! Q, K, V on the GPU, runs one warm-up forward and then `--runs` timed ones, and records the
//! median. GPU time comes from timestamp queries around each stage's pass where the adapter
//! has them (wall time, submit to finish, is recorded too). Memory is what the GPU allocator
//! reports for the measurement's buffers (Q, K, V, O, LSE and the plan's own).
//!
//! Every run first times the calibration (`matmul.rs`: an f32 matrix product, the best of a
//! few variants), and every record carries `fraction_of_matmul`, its rate over the
//! calibration's in the same run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use multipole::wgpu;
use multipole::{
    AttentionIo, BackwardIo, DensePlan, Downsampling, FmaConfig, FmaError, FmaPlan, Geometry,
    GpuContext, GpuTimer, Layout, Precision, Result, Shape,
};
use serde::{Deserialize, Serialize};

mod burn;
mod decode;

use super::matmul;
use super::plot;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Sequence lengths (1D), comma separated.
    #[arg(long, value_delimiter = ',')]
    n: Vec<usize>,
    /// Images (2D), comma separated, e.g. 32x32,64x64.
    #[arg(long, value_delimiter = ',', value_name = "HxW,...")]
    image: Vec<Layout>,
    /// Head dimension.
    #[arg(long, default_value_t = 64)]
    d: usize,
    /// Fine cell size for sequences.
    #[arg(long, default_value_t = 32)]
    m: usize,
    /// Coarse keys per group for sequences.
    #[arg(long, default_value_t = 4)]
    p: usize,
    /// Fine cell side for images.
    #[arg(long, default_value_t = 4)]
    image_m: usize,
    /// Coarse keys per cell for images (a square).
    #[arg(long, default_value_t = 4)]
    image_p: usize,
    /// Causal attention (sequences only).
    #[arg(long)]
    causal: bool,
    /// FMA downsampling: mean, basis or depthwise (learned kinds at their initial weights).
    #[arg(long, default_value = "mean")]
    downsampling: Downsampling,
    /// batch x heads of every input (default 1; 8 with --burn).
    #[arg(long)]
    heads: Option<usize>,
    /// Timed runs per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Largest n for dense attention (default: 16384 on a software adapter, else 1048576).
    #[arg(long)]
    dense_max: Option<usize>,
    /// Write one JSON record per measurement here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw PREFIX-time.svg and PREFIX-memory.svg.
    #[arg(long, value_name = "PREFIX")]
    plot: Option<PathBuf>,
    /// Redraw the table and plots from a JSON file written earlier; measures nothing.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["n", "image", "quick"])]
    replot: Option<PathBuf>,
    /// Also time FMA's backward pass (dQ, dK, dV and weight gradients) at every input, next to
    /// its forward.
    #[arg(long)]
    backward: bool,
    /// A sweep that finishes in well under a minute on a 2-core software GPU (CI runs it):
    /// n = 1024, 4096, a 32x32 image, 3 runs, a 1024^3 calibration, unless --n, --image or
    /// --matmul-size say otherwise.
    #[arg(long)]
    quick: bool,
    /// Side of the calibration's square f32 matrix product (a multiple of 64; default 2048,
    /// 1024 with --quick).
    #[arg(long)]
    matmul_size: Option<usize>,
    /// Storage precisions of FMA's forward, comma separated: f32, f16 (f16 needs the adapter's
    /// SHADER_F16; its records are kernel "fma_f16"). The backward and dense run in f32.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// With --backward, where the adapter has subgroups: time the backward again with them
    /// turned off (kernel "fma_backward_no_subgroups"), the path browsers take.
    #[arg(long, requires = "backward")]
    without_subgroups: bool,
    /// Time causal decoding instead (FMA's decoder and a dense key-value cache, Mean, d, m,
    /// p as given): tokens/s and state bytes at contexts --n (default 1K..1M; dense up to
    /// --dense-max, default 64K), one record per (kernel, context, batch); --plot draws
    /// PREFIX-decode-time.svg and PREFIX-decode-state.svg.
    #[arg(long)]
    decode: bool,
    /// Batches (sequences of --heads heads) of --decode, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    decode_batch: Vec<usize>,
    /// Steps recorded into one encoder per --decode measurement.
    #[arg(long, default_value_t = 64)]
    decode_steps: usize,
    /// Also time the O(n) variant (coarse queries, docs/fma.md §13; kernel "fma-linear", and
    /// "fma-linear_backward" with --backward) next to FMA and dense at every input.
    #[arg(long)]
    downsample_queries: bool,
    /// Time one training step (forward, backward) of Burn's own attention against Burn + FMA
    /// (`multipole-burn`) on Burn's wgpu device instead: n = --n (default 1K, 4K, 16K, 64K),
    /// --heads (default 8) heads of --d, FMA with --m, --p, --downsampling, --causal; where
    /// Burn's n x n scores exceed the device's binding or buffer limits it reports the limit.
    #[arg(long, conflicts_with_all = ["decode", "image", "backward", "replot"])]
    burn: bool,
}

impl BenchArgs {
    /// Heads of every input: --heads, else 8 for --burn and 1 otherwise.
    pub fn heads(&self) -> usize {
        self.heads.unwrap_or(if self.burn { 8 } else { 1 })
    }
}

/// One measurement: the fields anyone needs to recompute the ratios.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    pub kernel: String,
    pub layout: String,
    pub n: usize,
    pub d: usize,
    pub heads: usize,
    pub m: Option<usize>,
    pub p: Option<usize>,
    pub causal: bool,
    pub downsampling: Option<String>,
    /// How Q, K, V, O and the coarse rows were stored ("f32" or "f16"; absent for the
    /// calibration and in records written before f16 existed).
    #[serde(default)]
    pub precision: Option<String>,
    pub runs: usize,
    /// GPU time of one forward (timestamps), or wall time where there are none.
    pub median_ms: f64,
    pub min_ms: f64,
    pub wall_median_ms: f64,
    pub timing: String,
    /// Median GPU time of each stage (FMA: downsample, near_field, far_field; its backward:
    /// downsample, stats, dq, dkv_near, dkv_far, downsample_backward).
    pub stage_ms: BTreeMap<String, f64>,
    /// FLOPs the definition needs, never the padding or masked scores a kernel's tiling may
    /// evaluate, so a faster kernel is one that finishes sooner: 4 d per required score (a real
    /// query against a real key, or a coarse row holding a real token, that it must see),
    /// i.e. dense n^2 per head and exactly n (n + 1) / 2 when causal, FMA its near and coarse
    /// scores (`Geometry::score_pairs`), plus FMA's downsampling over the real tokens (Mean:
    /// 2 d per token and level; learned kinds: 4 p d). FMA's backward: 10 d per required score
    /// (recomputed score, dP, dq, dk, dv: the flash convention) plus the downsampling twice
    /// (recomputed and its adjoint; learned kinds three times: the weight gradient too).
    /// The calibration ("matmul"): 2 n^3.
    pub flops: f64,
    pub gflops: f64,
    /// This record's GFLOP/s over the best rate measured in the same run: the fastest of the
    /// matmul variants and dense attention (`yardstick`). An attained rate, not the
    /// hardware's peak: dense attention sometimes beats every matmul variant, and then it is
    /// the yardstick. Absent in records written before the calibration existed.
    #[serde(default)]
    pub fraction_of_matmul: Option<f64>,
    /// The yardstick's GFLOP/s and what reached it (a matmul variant, or "dense attention").
    #[serde(default)]
    pub matmul_gflops: Option<f64>,
    #[serde(default)]
    pub matmul_variant: Option<String>,
    /// Calibration records only (kernel "matmul", one per variant): the variant measured.
    #[serde(default)]
    pub variant: Option<String>,
    /// Dense attention's FLOPs over this kernel's time: the rate dense would need to match it.
    pub dense_equivalent_gflops: f64,
    pub peak_bytes: u64,
    pub peak_source: String,
    /// Bytes of the tensors in and out: Q + K + V + O (forward); Q, K, V, O, dO, dQ, dK,
    /// dV (backward).
    pub qkvo_bytes: u64,
    /// (peak - those tensors) / those tensors.
    pub extra_ratio: f64,
    pub adapter: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub features: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.decode {
        return decode::run(args);
    }
    if args.burn {
        return burn::run(args);
    }
    if let Some(path) = &args.replot {
        let file_err = |message: String| FmaError::TensorFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let records: Vec<Record> =
            serde_json::from_str(&text).map_err(|e| file_err(format!("not bench records: {e}")))?;
        return report(args, &records);
    }
    let ctx = GpuContext::new_blocking()?;
    let info = &ctx.info;
    let software = info.device_type == wgpu::DeviceType::Cpu;
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
    if runs == 0 {
        return Err(FmaError::InvalidConfig("--runs must be at least 1".into()));
    }
    // One slot per pass: FMA's backward has six (its forward three, dense one).
    let timer = GpuTimer::new(&ctx, 6);
    println!("adapter: {}", ctx.describe());
    println!(
        "features: {:?}; timing: {}",
        ctx.device.features(),
        if timer.is_some() {
            "GPU timestamps"
        } else {
            "wall clock (no timestamp queries)"
        }
    );
    let image_inputs = images.iter().filter_map(|&l| match l {
        // Saturates: an image too large for usize is then refused by the shape checks.
        Layout::Image { height, width } => Some((height.saturating_mul(width), l)),
        Layout::Sequence => None,
    });
    let inputs: Vec<(usize, FmaConfig)> = ns
        .iter()
        .map(|&n| (n, Layout::Sequence))
        .chain(image_inputs)
        .map(|(n, layout)| {
            let image = layout != Layout::Sequence;
            let (m, p) = if image {
                (args.image_m, args.image_p)
            } else {
                (args.m, args.p)
            };
            let cfg = FmaConfig {
                causal: args.causal && !image,
                layout,
                downsampling: args.downsampling,
                ..FmaConfig::new(m, p)
            };
            (n, cfg)
        })
        .collect();
    // Refuse a bad input before the calibration's minute, not after it.
    for (n, cfg) in &inputs {
        Shape::new(1, args.heads(), *n, args.d).validate()?;
        Geometry::new(*n, cfg)?;
    }
    let size = args
        .matmul_size
        .unwrap_or(if args.quick { 1024 } else { 2048 });
    matmul::check_dims(size, size, size)?;
    let mut records = calibration(&ctx, timer.as_ref(), size, runs.min(3))?;
    for (n, cfg) in &inputs {
        let bench = Bench {
            ctx: &ctx,
            timer: timer.as_ref(),
            shape: Shape::new(1, args.heads(), *n, args.d),
            runs,
        };
        for &precision in &args.precision {
            let fma = bench.measure(&Kernel::Fma(&FmaConfig {
                precision,
                ..cfg.clone()
            }))?;
            print_progress(&fma);
            records.push(fma);
        }
        let linear = FmaConfig {
            downsample_queries: true,
            ..cfg.clone()
        };
        if args.downsample_queries {
            let fma = bench.measure(&Kernel::Fma(&linear))?;
            print_progress(&fma);
            records.push(fma);
        }
        if args.backward {
            let back = bench.measure(&Kernel::FmaBackward(cfg))?;
            print_progress(&back);
            records.push(back);
            if args.without_subgroups && ctx.subgroups() {
                ctx.set_subgroups(false);
                let plain = bench.measure(&Kernel::FmaBackward(cfg));
                ctx.set_subgroups(true);
                let mut plain = plain?;
                plain.kernel = "fma_backward_no_subgroups".into();
                print_progress(&plain);
                records.push(plain);
            }
            if args.downsample_queries {
                let back = bench.measure(&Kernel::FmaBackward(&linear))?;
                print_progress(&back);
                records.push(back);
            }
        }
        if *n <= dense_max {
            let dense = bench.measure(&Kernel::Dense(cfg))?;
            print_progress(&dense);
            records.push(dense);
        }
    }
    apply_calibration(&mut records);
    report(args, &records)
}

/// The calibration: one record (kernel "matmul") per variant of a `size`^3 f32 product.
pub fn calibration(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    size: usize,
    runs: usize,
) -> Result<Vec<Record>> {
    let measured = matmul::measure(ctx, timer, size, runs)?;
    let flops = 2.0 * (size as f64).powi(3);
    let bytes = 3 * (size * size * 4) as u64;
    let records: Vec<Record> = measured
        .iter()
        .map(|m| Record {
            kernel: "matmul".into(),
            layout: "matmul".into(),
            n: size,
            d: size,
            variant: Some(m.variant.name()),
            runs,
            median_ms: m.median_ms,
            min_ms: m.min_ms,
            wall_median_ms: m.wall_median_ms,
            timing: m.timing.into(),
            stage_ms: BTreeMap::from([("matmul".to_string(), m.median_ms)]),
            flops,
            gflops: flops / m.median_ms / 1e6,
            dense_equivalent_gflops: flops / m.median_ms / 1e6,
            peak_bytes: bytes,
            peak_source: "computed".into(),
            qkvo_bytes: bytes,
            extra_ratio: 0.0,
            ..adapter_record(ctx)
        })
        .collect();
    for (r, m) in records.iter().zip(&measured) {
        println!(
            "matmul {:>12} {}^3 {:>10.2} ms ({}) {:>8.1} GFLOP/s  (spot check: {:.2} of the rounding bound)",
            r.variant.as_deref().unwrap_or("?"),
            size,
            r.median_ms,
            r.timing,
            r.gflops,
            m.error
        );
    }
    Ok(records)
}

/// The best matmul record (the calibration), if the records hold one.
pub fn best_matmul(records: &[Record]) -> Option<&Record> {
    records
        .iter()
        .filter(|r| r.kernel == "matmul" && r.gflops.is_finite())
        .max_by(|a, b| a.gflops.total_cmp(&b.gflops))
}

/// The best rate measured among `records`, the denominator of `fraction_of_matmul`: the
/// fastest matmul variant or, where it was faster, dense attention; with what reached it.
/// None without a calibration.
pub fn yardstick(records: &[Record]) -> Option<(f64, Option<String>)> {
    let matmul = best_matmul(records)?;
    let dense = records
        .iter()
        .filter(|r| r.kernel == "dense" && r.gflops.is_finite())
        .max_by(|a, b| a.gflops.total_cmp(&b.gflops));
    Some(match dense {
        Some(d) if d.gflops > matmul.gflops => (d.gflops, Some("dense attention".into())),
        _ => (matmul.gflops, matmul.variant.clone()),
    })
}

/// Sets every record's `fraction_of_matmul` against the run's yardstick (`yardstick`).
pub fn apply_calibration(records: &mut [Record]) {
    let Some((gflops, variant)) = yardstick(records) else {
        return;
    };
    for r in records.iter_mut() {
        r.fraction_of_matmul = Some(r.gflops / gflops);
        r.matmul_gflops = Some(gflops);
        r.matmul_variant = variant.clone();
    }
}

/// A record with the adapter's fields filled in and the measurement's left empty.
pub fn adapter_record(ctx: &GpuContext) -> Record {
    let info = &ctx.info;
    Record {
        kernel: String::new(),
        layout: String::new(),
        n: 0,
        d: 0,
        heads: 1,
        m: None,
        p: None,
        causal: false,
        downsampling: None,
        precision: None,
        runs: 0,
        median_ms: f64::NAN,
        min_ms: f64::NAN,
        wall_median_ms: f64::NAN,
        timing: String::new(),
        stage_ms: BTreeMap::new(),
        flops: 0.0,
        gflops: f64::NAN,
        fraction_of_matmul: None,
        matmul_gflops: None,
        matmul_variant: None,
        variant: None,
        dense_equivalent_gflops: f64::NAN,
        peak_bytes: 0,
        peak_source: String::new(),
        qkvo_bytes: 0,
        extra_ratio: 0.0,
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info),
        features: format!("{:?}", ctx.device.features()),
    }
}

/// Prints the summary, then writes the JSON and the plots where asked.
fn report(args: &BenchArgs, records: &[Record]) -> Result<()> {
    summarise(records);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(records)
            .map_err(|e| FmaError::InvalidConfig(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| FmaError::TensorFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        println!("wrote {} records to {}", records.len(), path.display());
    }
    if let Some(prefix) = &args.plot {
        let files = plot::draw(records, prefix).map_err(|e| FmaError::TensorFile {
            path: prefix.display().to_string(),
            message: e,
        })?;
        println!("plots: {}", files.join(", "));
    }
    Ok(())
}

pub enum Kernel<'a> {
    Fma(&'a FmaConfig),
    FmaBackward(&'a FmaConfig),
    Dense(&'a FmaConfig),
}

enum Plan {
    Fma(Box<FmaPlan>),
    FmaBackward(Box<FmaPlan>),
    Dense(Box<DensePlan>),
}

pub struct Bench<'a> {
    pub ctx: &'a GpuContext,
    pub timer: Option<&'a GpuTimer>,
    pub shape: Shape,
    pub runs: usize,
}

impl Bench<'_> {
    pub fn measure(&self, kernel: &Kernel<'_>) -> Result<Record> {
        let (ctx, shape) = (self.ctx, self.shape);
        settle(ctx)?;
        let before = allocated(ctx);
        // Plans first: pipeline creation is not part of any timing.
        let (plan, cfg) = match kernel {
            Kernel::Fma(cfg) | Kernel::FmaBackward(cfg) => {
                let g = Geometry::new(shape.n, cfg)?;
                let kind = cfg.downsampling;
                let w = kind.is_learned().then(|| {
                    let w = multipole::DownsampleWeights::mean_init(kind, &g, shape.d);
                    if cfg.downsample_queries {
                        w.with_query_weights()
                    } else {
                        w
                    }
                });
                let plan = Box::new(FmaPlan::new(ctx, shape, cfg, w.as_ref())?);
                match kernel {
                    Kernel::Fma(_) => (Plan::Fma(plan), *cfg),
                    _ => (Plan::FmaBackward(plan), *cfg),
                }
            }
            Kernel::Dense(cfg) => {
                let scale = cfg.scale_for(shape.d);
                (
                    Plan::Dense(Box::new(DensePlan::new(ctx, shape, cfg.causal, scale)?)),
                    *cfg,
                )
            }
        };
        // Q, K, V and O at the plan's precision (dense: f32); LSE and the backward's tensors f32.
        let precision = match kernel {
            Kernel::Fma(cfg) => cfg.precision,
            _ => Precision::F32,
        };
        let bytes = ((shape.elements() * precision.bytes()) as u64).next_multiple_of(4);
        let qkv: Vec<wgpu::Buffer> = (0..3)
            .map(|i| input(ctx, shape.elements(), precision, 7 + i as u64 * 1_000_003))
            .collect();
        let out = |b: u64| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench output"),
                size: b.max(4),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (o, lse) = (out(bytes), out((shape.bh() * shape.n * 4) as u64));
        let io = AttentionIo {
            q: &qkv[0],
            k: &qkv[1],
            v: &qkv[2],
            o: &o,
            lse: &lse,
        };
        // The backward's own tensors: dO in, dQ, dK, dV (and the weight gradients) out; O and
        // LSE come from one forward run first.
        let backward = match &plan {
            Plan::FmaBackward(p) => {
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                p.encode(ctx, &mut enc, &io)?;
                ctx.queue.submit([enc.finish()]);
                let grads: Vec<wgpu::Buffer> = (0..3).map(|_| out(bytes)).collect();
                let dw = (p.weight_grad_bytes() > 0).then(|| out(p.weight_grad_bytes()));
                Some((input(ctx, shape.elements(), precision, 11), grads, dw))
            }
            _ => None,
        };
        let bio = backward.as_ref().map(|(d_o, g, dw)| BackwardIo {
            q: io.q,
            k: io.k,
            v: io.v,
            o: io.o,
            lse: io.lse,
            d_o,
            dq: &g[0],
            dk: &g[1],
            dv: &g[2],
            dw: dw.as_ref(),
        });
        let mut gpu_ms: Vec<f64> = Vec::new();
        let mut wall_ms: Vec<f64> = Vec::new();
        let mut stages: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for run in 0..=self.runs {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            let names = match (&plan, self.timer, &bio) {
                (Plan::Fma(plan), Some(t), _) => plan.encode_timed(ctx, &mut enc, &io, t)?,
                (Plan::Fma(plan), None, _) => {
                    plan.encode(ctx, &mut enc, &io)?;
                    Vec::new()
                }
                (Plan::FmaBackward(plan), t, b) => {
                    let b = b.as_ref().ok_or_else(|| {
                        FmaError::InvalidConfig("backward buffers missing".into())
                    })?;
                    match t {
                        Some(t) => plan.encode_backward_timed(ctx, &mut enc, b, t)?,
                        None => {
                            plan.encode_backward(ctx, &mut enc, b)?;
                            Vec::new()
                        }
                    }
                }
                (Plan::Dense(plan), t, _) => {
                    plan.encode(ctx, &mut enc, &io, t)?;
                    t.map_or(Vec::new(), |_| vec!["dense"])
                }
            };
            if let Some(t) = self.timer {
                t.resolve(&mut enc);
            }
            let start = Instant::now();
            ctx.queue.submit([enc.finish()]);
            ctx.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| FmaError::Gpu(e.to_string()))?;
            let wall = start.elapsed().as_secs_f64() * 1e3;
            ctx.take_error()?;
            let per_stage = match self.timer {
                Some(t) => pollster::block_on(t.read(ctx, names.len() as u32))?,
                None => Vec::new(),
            };
            if run == 0 {
                continue; // warm-up
            }
            wall_ms.push(wall);
            if !per_stage.is_empty() {
                gpu_ms.push(per_stage.iter().sum());
            }
            for (name, ms) in names.iter().zip(&per_stage) {
                stages.entry(name).or_default().push(*ms);
            }
        }
        let after = allocated(ctx);
        let lse_bytes = (shape.bh() * shape.n * 4) as u64;
        // Tensors in and out: q, k, v, o (and dO, dQ, dK, dV for the backward).
        let io_bytes = if backward.is_some() { 8 } else { 4 } * bytes;
        let computed = io_bytes
            + lse_bytes
            + match &plan {
                Plan::Fma(p) => p.extra_bytes(),
                Plan::FmaBackward(p) => {
                    p.extra_bytes() + p.backward_extra_bytes() + p.weight_grad_bytes()
                }
                Plan::Dense(_) => 0,
            };
        let (peak_bytes, peak_source) = match (before, after) {
            (Some(b), Some(a)) if a > b => (a - b, "allocator"),
            _ => (computed, "computed"),
        };
        let (timing, times) = if gpu_ms.is_empty() {
            ("wall", wall_ms.clone())
        } else {
            ("timestamps", gpu_ms)
        };
        let median_ms = median(&times);
        let dense_flops = dense_flops(shape, cfg.causal);
        let (name, flops) = match &plan {
            Plan::Fma(p) if precision == Precision::F16 => {
                ("fma_f16", fma_flops(p.geometry(), cfg, shape))
            }
            Plan::Fma(p) if cfg.downsample_queries => {
                ("fma-linear", fma_flops(p.geometry(), cfg, shape))
            }
            Plan::Fma(p) => ("fma", fma_flops(p.geometry(), cfg, shape)),
            Plan::FmaBackward(p) if cfg.downsample_queries => (
                "fma-linear_backward",
                fma_backward_flops(p.geometry(), cfg, shape),
            ),
            Plan::FmaBackward(p) => ("fma_backward", fma_backward_flops(p.geometry(), cfg, shape)),
            Plan::Dense(_) => ("dense", dense_flops),
        };
        let is_fma = name != "dense";
        Ok(Record {
            kernel: name.into(),
            layout: match cfg.layout {
                Layout::Sequence => "1d".into(),
                Layout::Image { height, width } => format!("2d {height}x{width}"),
            },
            n: shape.n,
            d: shape.d,
            heads: shape.bh(),
            m: is_fma.then_some(cfg.m),
            p: is_fma.then_some(cfg.p),
            causal: cfg.causal,
            downsampling: is_fma.then(|| format!("{:?}", cfg.downsampling).to_lowercase()),
            precision: Some(format!("{precision:?}").to_lowercase()),
            runs: self.runs,
            median_ms,
            min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
            wall_median_ms: median(&wall_ms),
            timing: timing.into(),
            stage_ms: stages
                .iter()
                .map(|(k, v)| (k.to_string(), median(v)))
                .collect(),
            flops,
            gflops: flops / median_ms / 1e6,
            dense_equivalent_gflops: dense_flops / median_ms / 1e6,
            peak_bytes,
            peak_source: peak_source.into(),
            qkvo_bytes: io_bytes,
            extra_ratio: (peak_bytes as f64 - io_bytes as f64) / io_bytes as f64,
            ..adapter_record(ctx)
        })
    }
}

/// Waits for the GPU to finish and free what earlier measurements dropped.
fn settle(ctx: &GpuContext) -> Result<()> {
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| FmaError::Gpu(e.to_string()))
}

/// Bytes the device's allocator holds, where the backend reports it (Vulkan, DX12).
fn allocated(ctx: &GpuContext) -> Option<u64> {
    ctx.device
        .generate_allocator_report()
        .map(|r| r.total_allocated_bytes)
}

/// A STORAGE buffer of `bytes` filled with values in [-1, 1) (seeded, so runs repeat).
/// A STORAGE buffer of `values` seeded values in [-1, 1), stored at `precision`.
fn input(ctx: &GpuContext, values: usize, precision: Precision, seed: u64) -> wgpu::Buffer {
    let data = matmul::values(values, seed);
    let mut bytes: Vec<u8> = match precision {
        Precision::F32 => bytemuck::cast_slice(&data).to_vec(),
        Precision::F16 => data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
    };
    bytes.resize(bytes.len().next_multiple_of(4).max(4), 0);
    let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench input"),
        size: bytes.len() as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue.write_buffer(&buf, 0, &bytes);
    buf
}

fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Dense attention's required FLOPs: 4 d per score (q.k and p.v), n^2 scores per head, and
/// exactly the n (n + 1) / 2 of the lower triangle when causal (not the tiles a kernel
/// evaluates and masks).
pub fn dense_flops(shape: Shape, causal: bool) -> f64 {
    let n = shape.n as f64;
    let scores = if causal { n * (n + 1.0) / 2.0 } else { n * n };
    4.0 * shape.bh() as f64 * scores * shape.d as f64
}

/// FMA's downsampling FLOPs over the real tokens (padding is not the definition's work): Mean
/// adds each token into its row of every level for K and V (2 d per token and level; the
/// division per row is left out, one per s tokens); learned kinds multiply-add each token into
/// the p rows of its cell (4 p d per token and level for K and V).
/// The O(n) variant downsamples Q too: half as much again.
fn downsample_flops(g: &Geometry, cfg: &FmaConfig, shape: Shape) -> f64 {
    let per_token = match cfg.downsampling {
        Downsampling::Mean => 2.0,
        _ => 4.0 * g.p as f64,
    };
    let tensors = if cfg.downsample_queries { 1.5 } else { 1.0 };
    tensors * shape.bh() as f64 * per_token * shape.d as f64 * g.n() as f64 * g.num_levels() as f64
}

/// FMA's required FLOPs: 4 d per required score (`Geometry::score_pairs`: real queries
/// against the real, allowed near keys and the coarse rows holding a real token; in the O(n)
/// variant the coarse scores are per segment, `segment_far_pairs`), plus the downsampling.
pub fn fma_flops(g: &Geometry, cfg: &FmaConfig, shape: Shape) -> f64 {
    let (near, far) = g.score_pairs();
    let far = if cfg.downsample_queries {
        segment_far_pairs(g)
    } else {
        far
    };
    let attention = 4.0 * shape.d as f64 * (near + far) as f64;
    shape.bh() as f64 * attention + downsample_flops(g, cfg, shape)
}

/// The O(n) variant's coarse scores: each coarse row holding a real token (a segment's coarse
/// query) against the rows holding a real token of its cell's interaction list.
pub fn segment_far_pairs(g: &Geometry) -> u64 {
    segment_far_rows(g).iter().map(|&(pairs, _)| pairs).sum()
}

/// (coarse scores, real tokens) of every coarse row holding a real token, level by level.
fn segment_far_rows(g: &Geometry) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for l in 1..=g.num_levels() {
        let rows = g.levels[l - 1].groups() * g.p;
        let count: Vec<usize> = (0..rows)
            .map(|row| g.multiplicity(l, row / g.p, row % g.p))
            .collect();
        for (row, &mu) in count.iter().enumerate().filter(|x| *x.1 > 0) {
            let pairs = g
                .far_cells(l, row / g.p)
                .into_iter()
                .flat_map(|h| (0..g.p).map(move |t| h * g.p + t))
                .filter(|&key| count[key] > 0)
                .count() as u64;
            out.push((pairs, mu as u64));
        }
    }
    out
}

/// FMA backward's required FLOPs: 10 d per required score (the recomputed score, dP, and the
/// dq, dk, dv updates: 2.5 times the forward's 4 d, the flash convention), plus the
/// downsampling recomputed and its adjoint (learned kinds: and the weight gradient, as many
/// FLOPs again). The scores are the forward's: in the O(n) variant the coarse ones per
/// segment (`segment_far_pairs`), as its backward forms them.
pub fn fma_backward_flops(g: &Geometry, cfg: &FmaConfig, shape: Shape) -> f64 {
    let (near, far) = g.score_pairs();
    let far = if cfg.downsample_queries {
        segment_far_pairs(g)
    } else {
        far
    };
    let scores = shape.bh() as f64 * 10.0 * shape.d as f64 * (near + far) as f64;
    let passes = if cfg.downsampling.is_learned() {
        3.0
    } else {
        2.0
    };
    scores + passes * downsample_flops(g, cfg, shape)
}

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

/// The table of ratios (FMA next to dense at the same input) and the growth exponents.
pub fn summarise(records: &[Record]) {
    println!();
    if let Some(best) = best_matmul(records) {
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
        let dense = records
            .iter()
            .find(|r| r.kernel == "dense" && r.layout == f.layout && r.n == f.n);
        let (dms, speed, dgf, dfrac) = match dense {
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
    for l in records.iter().filter(|r| r.kernel == "fma-linear") {
        if let Some(f) = records
            .iter()
            .find(|r| r.kernel == "fma" && r.layout == l.layout && r.n == l.n)
        {
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
    for b in records.iter().filter(|r| r.kernel == "fma_backward") {
        if let Some(f) = records
            .iter()
            .find(|r| r.kernel == "fma" && r.layout == b.layout && r.n == b.n)
        {
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
    for plain in records
        .iter()
        .filter(|r| r.kernel == "fma_backward_no_subgroups")
    {
        if let Some(b) = records
            .iter()
            .find(|r| r.kernel == "fma_backward" && r.layout == plain.layout && r.n == plain.n)
        {
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
    for h in records.iter().filter(|r| r.kernel == "fma_f16") {
        if let Some(f) = records
            .iter()
            .find(|r| r.kernel == "fma" && r.layout == h.layout && r.n == h.n)
        {
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

    #[test]
    fn fma_flops_count_required_scores_and_real_tokens() {
        // n = 10, m = 8: n' = 2m, every query sees every key (causal: i + 1 of them).
        let cfg = FmaConfig::new(8, 1);
        let g = Geometry::new(10, &cfg).unwrap();
        let s = Shape::new(1, 1, 10, 16);
        let down = 2.0 * 16.0 * 10.0 * g.num_levels() as f64;
        assert_eq!(fma_flops(&g, &cfg, s), 4.0 * 16.0 * 100.0 + down);
        assert_eq!(
            fma_backward_flops(&g, &cfg, s),
            10.0 * 16.0 * 100.0 + 2.0 * down
        );
        let causal = FmaConfig {
            causal: true,
            ..cfg
        };
        let g = Geometry::new(10, &causal).unwrap();
        assert_eq!(fma_flops(&g, &causal, s), 4.0 * 16.0 * 55.0 + down);
        // n = 100 pads to 128 with m = 16: the downsampling counts the 100 real tokens, two
        // heads, K and V.
        let cfg = FmaConfig::new(16, 4);
        let g = Geometry::new(100, &cfg).unwrap();
        assert!(g.n_pad() > 100 && g.num_levels() >= 1);
        let s = Shape::new(1, 2, 100, 8);
        let (near, far) = g.score_pairs();
        let scores = 2.0 * (near + far) as f64 * 8.0;
        let levels = g.num_levels() as f64;
        let mean = 2.0 * 2.0 * 8.0 * 100.0 * levels;
        assert_eq!(fma_flops(&g, &cfg, s), 4.0 * scores + mean);
        assert_eq!(fma_backward_flops(&g, &cfg, s), 10.0 * scores + 2.0 * mean);
        // Learned kinds: each token into the p rows of its cell, 2 FLOPs each, K and V; the
        // backward adds the weight gradient to the recomputation and the adjoint.
        let basis = FmaConfig {
            downsampling: Downsampling::Basis,
            ..cfg
        };
        let learned = 2.0 * 2.0 * 4.0 * 8.0 * 100.0 * levels * 2.0;
        assert_eq!(fma_flops(&g, &basis, s), 4.0 * scores + learned);
        assert_eq!(
            fma_backward_flops(&g, &basis, s),
            10.0 * scores + 3.0 * learned
        );
    }

    #[test]
    fn segment_scores_times_their_queries_are_the_per_query_scores() {
        // Every query of a segment sees its segment's coarse keys: weighted by the segment's
        // real tokens, the per-segment count is the other variant's per-query count.
        for (n, cfg) in [
            (1000, FmaConfig::new(8, 2)),
            (30 * 41, FmaConfig::new(2, 4).image(30, 41)),
        ] {
            let g = Geometry::new(n, &cfg).unwrap();
            let weighted: u64 = segment_far_rows(&g).iter().map(|&(p, mu)| p * mu).sum();
            assert_eq!(weighted, g.score_pairs().1, "{n}");
            assert!(segment_far_pairs(&g) < g.score_pairs().1);
        }
    }

    #[test]
    fn the_linear_variant_counts_its_per_segment_scores_forward_and_backward() {
        // 1D 16K and a 2D image: the backward counts the scores the forward counts, 10 d each
        // instead of 4 d, never the per-query far scores of the other variant.
        for (n, cfg) in [
            (16384, FmaConfig::new(32, 4)),
            (64 * 64, FmaConfig::new(4, 4).image(64, 64)),
        ] {
            let linear = FmaConfig {
                downsample_queries: true,
                ..cfg.clone()
            };
            let g = Geometry::new(n, &linear).unwrap();
            let s = Shape::new(1, 1, n, 64);
            let (near, per_query_far) = g.score_pairs();
            let far = segment_far_pairs(&g);
            let down = downsample_flops(&g, &linear, s);
            assert_eq!(
                fma_flops(&g, &linear, s),
                4.0 * 64.0 * (near + far) as f64 + down
            );
            assert_eq!(
                fma_backward_flops(&g, &linear, s),
                10.0 * 64.0 * (near + far) as f64 + 2.0 * down
            );
            assert!(far < per_query_far, "{n}");
            assert!(fma_backward_flops(&g, &linear, s) < fma_backward_flops(&g, &cfg, s));
        }
    }

    #[test]
    fn dense_flops_follow_the_convention() {
        let s = Shape::new(2, 3, 1000, 64);
        assert_eq!(dense_flops(s, false), 4.0 * 6.0 * 1e6 * 64.0);
        // Causal: exactly the lower triangle, diagonal included.
        assert_eq!(
            dense_flops(s, true),
            4.0 * 6.0 * (1000.0 * 1001.0 / 2.0) * 64.0
        );
    }
}
