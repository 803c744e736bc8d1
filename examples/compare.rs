//! FMA against dense attention on random data: the error of both, and the time of each.
//!
//!   cargo run --release --example compare -- [--n 1024,4096] [--image 32x32,64x64] [--d 64]
//!       [--m 32] [--p 4] [--causal] [--dense-max N] [--gpu-only]
//!
//! `--image HxW` runs 2D FMA on an image of H x W tokens (n = H * W) after the sequences
//! (alone when --n is not given).
//!
//! Times: GPU FMA forward (median of 5 after a warm-up, GPU-resident tensors, submit to
//! finish, pipelines already built); the f64 CPU reference of FMA; f64 CPU dense attention
//! (skipped above --dense-max, since it grows as n^2).

use std::time::Instant;

use multipole::wgpu::util::DeviceExt;
use multipole::{AttentionIo, FmaConfig, FmaPlan, GpuContext, Layout, Shape, reference, wgpu};

struct Args {
    /// Sequence lengths; 1024 and 4096 when neither --n nor --image is given.
    ns: Option<Vec<usize>>,
    images: Vec<(usize, usize)>,
    d: usize,
    m: usize,
    p: usize,
    causal: bool,
    dense_max: usize,
    cpu: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        ns: None,
        images: Vec::new(),
        d: 64,
        m: 32,
        p: 4,
        causal: false,
        dense_max: 8192,
        cpu: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--n" => {
                a.ns = Some(
                    value()?
                        .split(',')
                        .map(|s| num(s.to_string()))
                        .collect::<Result<_, _>>()?,
                )
            }
            "--image" => {
                a.images = value()?
                    .split(',')
                    .map(|s| match s.parse::<Layout>() {
                        Ok(Layout::Image { height, width }) => Ok((height, width)),
                        Ok(Layout::Sequence) => Err(format!("--image {s}: not an image size")),
                        Err(e) => Err(e.to_string()),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--d" => a.d = num(value()?)?,
            "--m" => a.m = num(value()?)?,
            "--p" => a.p = num(value()?)?,
            "--dense-max" => a.dense_max = num(value()?)?,
            "--causal" => a.causal = true,
            "--gpu-only" => a.cpu = false,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The largest difference; a NaN, an infinity or a length mismatch shows as infinite.
fn max_err(a: &[f32], b: &[f32]) -> f32 {
    multipole::compare::max_abs_diff(a, b).map_or(f32::INFINITY, |w| w.error)
}

/// Median wall time of the GPU forward alone (tensors already on the GPU).
fn gpu_time(
    ctx: &GpuContext,
    plan: &FmaPlan,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> multipole::Result<f64> {
    let shape = plan.shape();
    let init = |data: &[f32]| {
        ctx.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
    };
    let (qb, kb, vb) = (init(q), init(k), init(v));
    let ob = init(&vec![0.0; shape.elements()]);
    let lb = init(&vec![0.0; shape.bh() * shape.n]);
    let io = AttentionIo {
        q: &qb,
        k: &kb,
        v: &vb,
        o: &ob,
        lse: &lb,
    };
    let mut times = Vec::new();
    for run in 0..6 {
        let t = Instant::now();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        plan.encode(ctx, &mut enc, &io)?;
        ctx.queue.submit([enc.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| multipole::FmaError::Gpu(e.to_string()))?;
        if run > 0 {
            times.push(ms(t));
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    let ctx = GpuContext::new_blocking()?;
    println!("adapter: {}", ctx.describe());
    println!(
        "FMA: m = {}, p = {}, d = {}, mean downsampling, {}",
        a.m,
        a.p,
        a.d,
        if a.causal { "causal" } else { "bidirectional" }
    );
    println!(
        "{:>9} {:>12} {:>12} {:>13} {:>16} {:>14} {:>12}",
        "n",
        "gpu fma ms",
        "cpu fma ms",
        "cpu dense ms",
        "gpu-cpu fma err",
        "fma-dense err",
        "extra/QKVO"
    );
    let ns = match (&a.ns, a.images.is_empty()) {
        (Some(ns), _) => ns.clone(),
        (None, true) => vec![1024, 4096],
        (None, false) => Vec::new(),
    };
    let inputs = ns.iter().map(|&n| (n.to_string(), n, Layout::Sequence));
    let images = a.images.iter().map(|&(height, width)| {
        let layout = Layout::Image { height, width };
        (format!("{height}x{width}"), height * width, layout)
    });
    for (label, n, layout) in inputs.chain(images) {
        let shape = Shape::new(1, 1, n, a.d);
        let (q, k, v) = (
            random(1, shape.elements()),
            random(2, shape.elements()),
            random(3, shape.elements()),
        );
        let cfg = FmaConfig {
            causal: a.causal && layout == Layout::Sequence,
            layout,
            ..FmaConfig::new(a.m, a.p)
        };
        let plan = FmaPlan::new(&ctx, shape, &cfg, None)?;
        let gpu_ms = gpu_time(&ctx, &plan, &q, &k, &v)?;
        let gpu = plan.forward_blocking(&ctx, &q, &k, &v)?;
        if !a.cpu {
            println!("{label:>9} {gpu_ms:>12.2}");
            continue;
        }
        let t = Instant::now();
        let cpu = reference::fma_forward(&q, &k, &v, shape, &cfg, None)?;
        let cpu_ms = ms(t);
        let (dense_ms, dense_err) = if n <= a.dense_max {
            let t = Instant::now();
            let dense = reference::dense(&q, &k, &v, shape, cfg.causal, cfg.scale_for(a.d))?;
            (
                format!("{:.1}", ms(t)),
                format!("{:.3e}", max_err(&cpu.o, &dense.o)),
            )
        } else {
            ("skipped".into(), "-".into())
        };
        // GPU memory the plan holds besides Q, K, V, O, LSE, relative to Q+K+V+O.
        let extra = plan.extra_bytes() as f64 / (4.0 * 4.0 * shape.elements() as f64);
        println!(
            "{label:>9} {gpu_ms:>12.2} {cpu_ms:>12.1} {dense_ms:>13} {:>16.3e} {dense_err:>14} {extra:>12.3}",
            max_err(&gpu.o, &cpu.o)
        );
    }
    println!("errors: max |difference| of O; values are uniform in [-1, 1).");
    println!(
        "extra/QKVO: coarse keys and values, geometry tables, weights over the bytes of Q+K+V+O."
    );
    Ok(())
}
