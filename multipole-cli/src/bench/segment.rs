//! `bench --segment`: the page segmenter's whole forward (the model, then each pixel's class
//! read back, as the page and `multipole segment` run it) on canvases of growing side, with
//! FMA, its sliding window and exact attention on one set of weights, side by side.
//!
//! The weights are Burn's initialisation (the time does not depend on their values); exact
//! attention is FMA's kernels with one fine cell over the whole grid, so it needs no n x n
//! buffer and runs wherever its time allows.

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use multipole::{FmaError, Layout, Result};
use multipole_vit::segment::{SegAttention, SegConfig, SegVit, predict};

use super::BenchArgs;
use crate::burn_device::from_burn;

pub fn run(args: &BenchArgs) -> Result<()> {
    let device = multipole_burn::init_wgpu().map_err(from_burn)?;
    let ctx = multipole_burn::context(&device)
        .ok_or_else(|| FmaError::Gpu("the wgpu device was not registered".into()))?;
    let config = SegConfig::new();
    let sides: Vec<(usize, usize)> = if args.image.is_empty() {
        vec![(64, 64), (128, 128), (256, 256)]
    } else {
        args.image
            .iter()
            .map(|l| match *l {
                Layout::Image { height, width } => Ok((height, width)),
                Layout::Sequence => Err(FmaError::Model("--image takes HxW".into())),
            })
            .collect::<Result<_>>()?
    };
    // Exact attention's time grows as n²: on a software adapter it stops at 16K tokens.
    let software = ctx.info.device_type == multipole::wgpu::DeviceType::Cpu;
    let dense_max = args
        .dense_max
        .unwrap_or(if software { 16384 } else { 1 << 20 });
    let runs = args.runs.max(1);
    println!(
        "bench --segment on {}: the segmenter's forward and read-back per canvas (patch {}, width {}, {} blocks), median of {runs} after a warm-up",
        ctx.describe(),
        config.patch,
        config.dim,
        config.depth
    );
    println!(
        "{:>11} {:>7} | {:>10} {:>10} {:>10} | exact / FMA",
        "pixels", "tokens", "FMA ms", "window ms", "exact ms"
    );
    let model = SegVit::new(&config, &device).map_err(from_burn)?;
    for (h, w) in sides {
        let tokens = (h / config.patch) * (w / config.patch);
        let time = |attention| -> Result<f64> {
            let m = model.clone().with_attention(attention).map_err(from_burn)?;
            measure(&m, h, w, runs, &device)
        };
        let fma = time(config.attention)?;
        let window = time(SegAttention::Window { m: 4 })?;
        let exact = if tokens <= dense_max {
            Some(time(SegAttention::Dense)?)
        } else {
            None
        };
        println!(
            "{:>11} {tokens:>7} | {fma:>10.1} {window:>10.1} {:>10} | {}",
            format!("{h}x{w}"),
            exact.map_or("-".into(), |x| format!("{x:.1}")),
            exact.map_or(format!("not run above {dense_max} tokens"), |x| format!(
                "{:.1}x",
                x / fma
            )),
        );
    }
    Ok(())
}

/// Median ms of the forward and read-back of one `h x w` canvas, after one warm-up.
fn measure(model: &SegVit, h: usize, w: usize, runs: usize, device: &Device) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let images = Tensor::<3>::random(
            [1, h, w],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            device,
        );
        // The upload is not the model's: it is queued before the clock starts.
        let started = Instant::now();
        let labels = predict(model, images).map_err(from_burn)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if labels.len() != h * w {
            return Err(FmaError::Model(format!(
                "{} labels for {h} x {w} pixels",
                labels.len()
            )));
        }
        if i > 0 {
            times.push(ms);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
