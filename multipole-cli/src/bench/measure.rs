//! One measurement (`Bench::measure`): the kernel's plan (built first: pipeline creation is
//! not timed), seeded random Q, K, V on the GPU, one warm-up and `runs` timed submissions,
//! and the record of their median, FLOPs and memory.

use std::collections::BTreeMap;
use std::time::Instant;

use multipole::wgpu;
use multipole::{
    AttentionIo, BackwardIo, DensePlan, FmaConfig, FmaError, FmaPlan, Geometry, GpuContext,
    GpuTimer, Layout, Precision, Result, Shape,
};

use super::flops::{dense_flops, fma_backward_flops, fma_flops};
use super::records::{Record, adapter_record};
use crate::matmul;

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

/// A measurement's GPU buffers: Q, K, V in, O and LSE out, and for the backward its own
/// tensors (dO in; dQ, dK, dV and the weight gradients out).
struct Buffers {
    qkv: Vec<wgpu::Buffer>,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
    backward: Option<(wgpu::Buffer, Vec<wgpu::Buffer>, Option<wgpu::Buffer>)>,
}

impl Buffers {
    fn io(&self) -> AttentionIo<'_> {
        AttentionIo {
            q: &self.qkv[0],
            k: &self.qkv[1],
            v: &self.qkv[2],
            o: &self.o,
            lse: &self.lse,
        }
    }

    fn backward_io(&self) -> Option<BackwardIo<'_>> {
        self.backward.as_ref().map(|(d_o, g, dw)| BackwardIo {
            q: &self.qkv[0],
            k: &self.qkv[1],
            v: &self.qkv[2],
            o: &self.o,
            lse: &self.lse,
            d_o,
            dq: &g[0],
            dk: &g[1],
            dv: &g[2],
            dw: dw.as_ref(),
        })
    }
}

/// The timed runs' times (the warm-up left out): GPU time where there are timestamps, the
/// wall clock always, and each stage's GPU time.
#[derive(Default)]
struct Timings {
    gpu_ms: Vec<f64>,
    wall_ms: Vec<f64>,
    stages: BTreeMap<&'static str, Vec<f64>>,
}

/// The measurement's memory: its peak bytes, where that number comes from, and the bytes of
/// the tensors in and out.
struct Memory {
    peak_bytes: u64,
    peak_source: &'static str,
    io_bytes: u64,
}

impl Bench<'_> {
    pub fn measure(&self, kernel: &Kernel<'_>) -> Result<Record> {
        let ctx = self.ctx;
        settle(ctx)?;
        let before = allocated(ctx);
        // Plans first: pipeline creation is not part of any timing.
        let (plan, cfg) = self.plan(kernel)?;
        // Q, K, V and O at the plan's precision (dense: f32); LSE and the backward's tensors f32.
        let precision = match kernel {
            Kernel::Fma(cfg) => cfg.precision,
            _ => Precision::F32,
        };
        let buffers = self.buffers(&plan, precision)?;
        let timings = self.time_runs(&plan, &buffers)?;
        let after = allocated(ctx);
        let memory = self.memory(&plan, precision, before, after);
        Ok(self.record(&plan, cfg, precision, memory, timings))
    }

    /// The kernel's plan (learned kinds at their initial weights) and the options it runs.
    fn plan<'k>(&self, kernel: &Kernel<'k>) -> Result<(Plan, &'k FmaConfig)> {
        let (ctx, shape) = (self.ctx, self.shape);
        Ok(match kernel {
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
        })
    }

    /// The inputs (seeded, so runs repeat) and outputs; for the backward also its own
    /// tensors, with O and LSE from one forward run first.
    fn buffers(&self, plan: &Plan, precision: Precision) -> Result<Buffers> {
        let (ctx, shape) = (self.ctx, self.shape);
        let bytes = tensor_bytes(shape, precision);
        let qkv: Vec<wgpu::Buffer> = (0..3)
            .map(|i| input(ctx, shape.elements(), precision, 7 + i as u64 * 1_000_003))
            .collect();
        let (o, lse) = (output(ctx, bytes), output(ctx, lse_bytes(shape)));
        let mut buffers = Buffers {
            qkv,
            o,
            lse,
            backward: None,
        };
        if let Plan::FmaBackward(p) = plan {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            p.encode(ctx, &mut enc, &buffers.io())?;
            ctx.queue.submit([enc.finish()]);
            let grads: Vec<wgpu::Buffer> = (0..3).map(|_| output(ctx, bytes)).collect();
            let dw = (p.weight_grad_bytes() > 0).then(|| output(ctx, p.weight_grad_bytes()));
            buffers.backward = Some((input(ctx, shape.elements(), precision, 11), grads, dw));
        }
        Ok(buffers)
    }

    /// One warm-up and `runs` timed submissions, each waited for.
    fn time_runs(&self, plan: &Plan, buffers: &Buffers) -> Result<Timings> {
        let ctx = self.ctx;
        let (io, bio) = (buffers.io(), buffers.backward_io());
        let mut timings = Timings::default();
        for run in 0..=self.runs {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            let names = encode(ctx, plan, self.timer, &io, bio.as_ref(), &mut enc)?;
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
            timings.wall_ms.push(wall);
            if !per_stage.is_empty() {
                timings.gpu_ms.push(per_stage.iter().sum());
            }
            for (name, ms) in names.iter().zip(&per_stage) {
                timings.stages.entry(name).or_default().push(*ms);
            }
        }
        Ok(timings)
    }

    /// The peak: what the allocator gained over the measurement where the backend reports
    /// it, else the buffers' sizes added up.
    fn memory(
        &self,
        plan: &Plan,
        precision: Precision,
        before: Option<u64>,
        after: Option<u64>,
    ) -> Memory {
        let shape = self.shape;
        // Tensors in and out: q, k, v, o (and dO, dQ, dK, dV for the backward).
        let tensors = if matches!(plan, Plan::FmaBackward(_)) {
            8
        } else {
            4
        };
        let io_bytes = tensors * tensor_bytes(shape, precision);
        let computed = io_bytes
            + lse_bytes(shape)
            + match plan {
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
        Memory {
            peak_bytes,
            peak_source,
            io_bytes,
        }
    }

    fn record(
        &self,
        plan: &Plan,
        cfg: &FmaConfig,
        precision: Precision,
        memory: Memory,
        timings: Timings,
    ) -> Record {
        let shape = self.shape;
        let (timing, times) = if timings.gpu_ms.is_empty() {
            ("wall", timings.wall_ms.clone())
        } else {
            ("timestamps", timings.gpu_ms)
        };
        let median_ms = median(&times);
        let (name, flops) = kernel_flops(plan, cfg, precision, shape);
        let is_fma = name != "dense";
        let io_bytes = memory.io_bytes;
        Record {
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
            scale: Some(cfg.scale_for(shape.d)),
            multiplicity: is_fma.then_some(cfg.multiplicity),
            max_levels: cfg.max_levels.filter(|_| is_fma),
            runs: self.runs,
            median_ms,
            min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
            wall_median_ms: median(&timings.wall_ms),
            timing: timing.into(),
            stage_ms: timings
                .stages
                .iter()
                .map(|(k, v)| (k.to_string(), median(v)))
                .collect(),
            flops,
            gflops: flops / median_ms / 1e6,
            dense_equivalent_gflops: dense_flops(shape, cfg.causal) / median_ms / 1e6,
            peak_bytes: memory.peak_bytes,
            peak_source: memory.peak_source.into(),
            qkvo_bytes: io_bytes,
            extra_ratio: (memory.peak_bytes as f64 - io_bytes as f64) / io_bytes as f64,
            ..adapter_record(self.ctx)
        }
    }
}

/// Records one run of the plan into `enc`; the names of its timed stages (none without a
/// timer).
fn encode(
    ctx: &GpuContext,
    plan: &Plan,
    timer: Option<&GpuTimer>,
    io: &AttentionIo,
    bio: Option<&BackwardIo>,
    enc: &mut wgpu::CommandEncoder,
) -> Result<Vec<&'static str>> {
    Ok(match (plan, timer) {
        (Plan::Fma(plan), Some(t)) => plan.encode_timed(ctx, enc, io, t)?,
        (Plan::Fma(plan), None) => {
            plan.encode(ctx, enc, io)?;
            Vec::new()
        }
        (Plan::FmaBackward(plan), t) => {
            let b =
                bio.ok_or_else(|| FmaError::InvalidConfig("backward buffers missing".into()))?;
            match t {
                Some(t) => plan.encode_backward_timed(ctx, enc, b, t)?,
                None => {
                    plan.encode_backward(ctx, enc, b)?;
                    Vec::new()
                }
            }
        }
        (Plan::Dense(plan), t) => {
            plan.encode(ctx, enc, io, t)?;
            t.map_or(Vec::new(), |_| vec!["dense"])
        }
    })
}

/// The record's kernel name and the FLOPs its convention counts (`flops.rs`).
fn kernel_flops(
    plan: &Plan,
    cfg: &FmaConfig,
    precision: Precision,
    shape: Shape,
) -> (&'static str, f64) {
    match plan {
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
        Plan::Dense(_) => ("dense", dense_flops(shape, cfg.causal)),
    }
}

/// Bytes of one of Q, K, V, O at `precision`, padded to whole words as buffers are.
fn tensor_bytes(shape: Shape, precision: Precision) -> u64 {
    ((shape.elements() * precision.bytes()) as u64).next_multiple_of(4)
}

/// Bytes of the f32 LSE, one per query.
fn lse_bytes(shape: Shape) -> u64 {
    (shape.bh() * shape.n * 4) as u64
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

/// A STORAGE buffer the kernels write (at least one word).
fn output(ctx: &GpuContext, bytes: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench output"),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
