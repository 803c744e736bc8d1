//! `multipole bench --decode`: tokens per second and state bytes of causal decoding against
//! the context length, FMA (`FmaDecoder`) and a dense key-value cache (`DenseDecoder`), on one
//! adapter in one run.
//!
//! A measurement seeks an empty decoder to the context (`seek_for_timing`: a step's work
//! depends on the token count only, not on the state's values), records `--decode-steps`
//! steps back to back into one encoder with GPU-resident q, k, v and outputs, and times the
//! submission to its end (wall clock; pipelines built and one warm-up before). Tokens per
//! second count every sequence of the batch. A host step (upload, step, readback) is timed too.

use std::time::Instant;

use multipole::wgpu;
use multipole::{
    DecodeIo, DenseDecoder, Downsampling, FmaConfig, FmaDecoder, FmaError, GpuContext, Result,
};
use serde::Serialize;

use super::BenchArgs;

/// One decoding measurement.
#[derive(Serialize, Clone, Debug)]
pub struct DecodeRecord {
    pub kernel: String,
    /// Tokens per sequence already decoded when the timed steps start.
    pub context: usize,
    pub batch: usize,
    pub heads: usize,
    pub d: usize,
    pub m: Option<usize>,
    pub p: Option<usize>,
    pub downsampling: Option<String>,
    pub steps: usize,
    pub runs: usize,
    /// Median wall time of one step (all sequences) recorded back to back in one encoder.
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    /// Median wall time of one host step: upload, step, readback of o and lse.
    pub host_ms_per_step: f64,
    /// The decoder's GPU state (FMA: ring, open sums, kept groups; dense: the cache).
    pub state_bytes: u64,
    pub levels: Option<usize>,
    pub adapter: String,
    pub backend: String,
    pub device_type: String,
}

/// A decoder under measurement.
enum Dec {
    Fma(FmaDecoder),
    Dense(DenseDecoder),
}

impl Dec {
    fn seek(&mut self, ctx: &GpuContext, len: usize) -> Result<()> {
        match self {
            Dec::Fma(x) => x.seek_for_timing(ctx, len),
            Dec::Dense(x) => x.seek_for_timing(ctx, len),
        }
    }
    fn encode(
        &mut self,
        ctx: &GpuContext,
        e: &mut wgpu::CommandEncoder,
        io: &DecodeIo,
    ) -> Result<()> {
        match self {
            Dec::Fma(x) => x.encode_step(ctx, e, io),
            Dec::Dense(x) => x.encode_step(ctx, e, io),
        }
    }
    fn host_step(&mut self, ctx: &GpuContext, x: &[f32]) -> Result<()> {
        match self {
            Dec::Fma(dec) => dec.step_blocking(ctx, x, x, x).map(|_| ()),
            Dec::Dense(dec) => dec.step_blocking(ctx, x, x, x).map(|_| ()),
        }
    }
    fn state_bytes(&self) -> u64 {
        match self {
            Dec::Fma(x) => x.state_bytes(),
            Dec::Dense(x) => x.state_bytes(),
        }
    }
}

/// Host steps timed per measurement (after one untimed).
const HOST_STEPS: usize = 16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let ctx = GpuContext::new_blocking()?;
    println!("adapter: {}", ctx.describe());
    let contexts = if args.n.is_empty() {
        (0..6).map(|i| 1024 << (2 * i)).collect() // 1K .. 1M
    } else {
        args.n.clone()
    };
    let dense_max = args.dense_max.unwrap_or(65536);
    if args.decode_steps == 0 {
        return Err(FmaError::InvalidConfig(
            "--decode-steps must be at least 1: each measurement times that many steps".into(),
        ));
    }
    let (d, steps) = (args.d, args.decode_steps);
    let config = FmaConfig {
        causal: true,
        downsampling: Downsampling::Mean,
        ..args.fma.config()
    };
    if args.fma.downsampling != Downsampling::Mean {
        return Err(FmaError::InvalidConfig(
            "bench --decode measures Mean downsampling (the learned kinds do the same work per step, and need weights for every length)".into(),
        ));
    }
    let mut records = Vec::new();
    println!(
        "{:>8} {:>6} {:>6} {:>10} {:>12} {:>10} {:>12}",
        "kernel", "ctx", "batch", "ms/step", "tokens/s", "host ms", "state bytes"
    );
    for &batch in &args.decode_batch {
        for &context in &contexts {
            let shape = [batch, args.heads(), d];
            // The timed steps, and the host steps after them.
            let capacity = context + steps.max(HOST_STEPS + 1);
            let dense = context <= dense_max;
            for (name, mut dec) in decoders(&ctx, &config, shape, capacity, dense, context)? {
                let r = record(&ctx, args, name, &mut dec, shape, context)?;
                print_row(&r, matches!(dec, Dec::Fma(_)));
                records.push(r);
            }
        }
    }
    write(args, &records)
}

/// FMA's decoder and, where `dense` says so and its cache fits one storage binding, a dense
/// one, each empty with room for `capacity` tokens.
fn decoders(
    ctx: &GpuContext,
    config: &FmaConfig,
    shape: [usize; 3],
    capacity: usize,
    dense: bool,
    context: usize,
) -> Result<Vec<(&'static str, Dec)>> {
    let mut kernels = vec![(
        "fma_decode",
        Dec::Fma(FmaDecoder::new(ctx, config, None, shape, capacity)?),
    )];
    if dense {
        let scale = config.scale_for(shape[2]);
        // Dense runs until its cache no longer fits one storage binding.
        match DenseDecoder::new(ctx, shape, capacity, scale) {
            Ok(dense) => kernels.push(("dense_decode", Dec::Dense(dense))),
            Err(e @ FmaError::LimitExceeded { .. }) => {
                println!("{:>8} {context:>6} {:>6}   skipped: {e}", "dense", shape[0])
            }
            Err(e) => return Err(e),
        }
    }
    Ok(kernels)
}

/// Measures one decoder at `context` tokens: its record.
fn record(
    ctx: &GpuContext,
    args: &BenchArgs,
    name: &str,
    dec: &mut Dec,
    [batch, heads, d]: [usize; 3],
    context: usize,
) -> Result<DecodeRecord> {
    let (steps, runs) = (args.decode_steps, args.runs.max(1));
    let rec = measure(ctx, dec, [batch, heads, d], context, steps, runs)?;
    let levels = match &dec {
        Dec::Fma(x) => Some(x.levels()),
        Dec::Dense(_) => None,
    };
    let fma = matches!(dec, Dec::Fma(_));
    Ok(DecodeRecord {
        kernel: name.into(),
        context,
        batch,
        heads,
        d,
        m: fma.then_some(args.fma.m),
        p: fma.then_some(args.fma.p),
        downsampling: fma.then(|| "mean".into()),
        steps,
        runs,
        ms_per_step: rec.0,
        tokens_per_s: (batch * heads) as f64 / (rec.0 / 1e3),
        host_ms_per_step: rec.1,
        state_bytes: dec.state_bytes(),
        levels,
        adapter: ctx.info.name.clone(),
        backend: format!("{:?}", ctx.info.backend),
        device_type: format!("{:?}", ctx.info.device_type),
    })
}

fn print_row(r: &DecodeRecord, fma: bool) {
    println!(
        "{:>8} {:>6} {:>6} {:>10.3} {:>12.0} {:>10.3} {:>12}",
        if fma { "fma" } else { "dense" },
        r.context,
        r.batch,
        r.ms_per_step,
        r.tokens_per_s,
        r.host_ms_per_step,
        r.state_bytes
    );
}

/// The JSON and the plots, where asked.
fn write(args: &BenchArgs, records: &[DecodeRecord]) -> Result<()> {
    if let Some(path) = &args.json {
        super::write_json(path, records)?;
    }
    if let Some(prefix) = &args.plot {
        for path in plot(records, &prefix.display().to_string())? {
            println!("wrote {path}");
        }
    }
    Ok(())
}

/// PREFIX-decode-time.svg (ms per step against the context) and PREFIX-decode-state.svg
/// (state MiB), one curve per kernel and batch.
fn plot(records: &[DecodeRecord], prefix: &str) -> Result<Vec<String>> {
    let adapter = records.first().map_or("", |r| r.adapter.as_str());
    let mut names: Vec<(String, usize)> = Vec::new();
    for r in records {
        let key = (r.kernel.clone(), r.batch);
        if !names.contains(&key) {
            names.push(key);
        }
    }
    let curves = |y: fn(&DecodeRecord) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        names
            .iter()
            .map(|(kernel, batch)| {
                let pts = records
                    .iter()
                    .filter(|r| &r.kernel == kernel && r.batch == *batch)
                    .map(|r| (r.context as f64, y(r)))
                    .collect();
                (format!("{kernel}, batch {batch}"), pts)
            })
            .collect()
    };
    let time = format!("{prefix}-decode-time.svg");
    let state = format!("{prefix}-decode-state.svg");
    let err = |e: String| FmaError::TensorFile {
        path: prefix.into(),
        message: e,
    };
    crate::plot::chart(
        &time,
        &format!("Decoding, ms per step (all sequences), {adapter}"),
        "median ms",
        &curves(|r| r.ms_per_step),
        false,
    )
    .map_err(err)?;
    crate::plot::chart(
        &state,
        &format!("Decoding state, {adapter}"),
        "MiB",
        &curves(|r| r.state_bytes as f64 / 1048576.0),
        false,
    )
    .map_err(err)?;
    Ok(vec![time, state])
}

/// (median ms per step recorded in one encoder, median ms per host step).
fn measure(
    ctx: &GpuContext,
    dec: &mut Dec,
    [batch, heads, d]: [usize; 3],
    context: usize,
    steps: usize,
    runs: usize,
) -> Result<(f64, f64)> {
    let rows = (batch * heads * d * 4) as u64;
    let buffer = |usage| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench decode"),
            size: rows,
            usage: wgpu::BufferUsages::STORAGE | usage,
            mapped_at_creation: false,
        })
    };
    let x: Vec<f32> = (0..batch * heads * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let [q, k, v] = [(); 3].map(|_| buffer(wgpu::BufferUsages::COPY_DST));
    for b in [&q, &k, &v] {
        ctx.queue.write_buffer(b, 0, bytemuck::cast_slice(&x));
    }
    let (o, lse) = (
        buffer(wgpu::BufferUsages::empty()),
        buffer(wgpu::BufferUsages::empty()),
    );
    let io = DecodeIo {
        q: &q,
        k: &k,
        v: &v,
        o: &o,
        lse: &lse,
    };
    let mut times = Vec::new();
    for run in 0..=runs {
        dec.seek(ctx, context)?;
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for _ in 0..steps {
            dec.encode(ctx, &mut encoder, &io)?;
        }
        let start = Instant::now();
        ctx.queue.submit([encoder.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| FmaError::Gpu(e.to_string()))?;
        if run > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3 / steps as f64);
        }
    }
    ctx.take_error()?;
    let mut host = Vec::new();
    dec.seek(ctx, context)?;
    for i in 0..=HOST_STEPS {
        let start = Instant::now();
        dec.host_step(ctx, &x)?;
        if i > 0 {
            host.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((median(times), median(host)))
}
