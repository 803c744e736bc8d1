//! GPU checks that run anywhere the library runs, the browser included: the kernels against
//! the CPU reference (compiled into the same binary), with the tolerances of the native tests.
//! `web::run_gpu_checks` runs them on WebGPU; `tests/browser_checks.rs` runs them natively.

use crate::compare;
use crate::config::{Downsampling, FmaConfig, Shape};
use crate::geometry::Geometry;
use crate::gpu::FmaPlan;
use crate::gpu::GpuContext;
use crate::model::VitGpu;
use crate::model::{CpuVit, VitConfig, VitWeights};
use crate::reference;
use crate::rng::Rng;
use crate::weights::DownsampleWeights;

/// One check's outcome: a short detail on success, what went wrong on failure.
pub type Check = (String, Result<String, String>);

fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect()
}

/// The largest |got - want| over the largest |want| (at least `floor`), if it is at most
/// `bar`; otherwise what went wrong. A NaN, an infinity or a missing value fails (see
/// `compare::max_abs_diff`), so a broken kernel cannot pass by producing garbage.
pub fn within(what: &str, got: &[f32], want: &[f32], floor: f32, bar: f32) -> Result<f32, String> {
    let worst = compare::max_abs_diff(got, want).map_err(|e| format!("{what}: {e}"))?;
    let err = worst.error / compare::max_abs(want, floor);
    // A NaN error cannot come out of `max_abs_diff`; refusing it anyway costs nothing.
    if err.is_nan() || err > bar {
        return Err(format!(
            "{what} error {err:.2e} (bar {bar:.0e}) at index {}: got {}, want {}",
            worst.at, worst.got, worst.want
        ));
    }
    Ok(err)
}

fn perturbed(kind: Downsampling, g: &Geometry, d: usize, rng: &mut Rng) -> DownsampleWeights {
    let mut w = DownsampleWeights::mean_init(kind, g, d);
    for lw in &mut w.levels {
        for part in [&mut lw.wk, &mut lw.wv, &mut lw.bk, &mut lw.bv] {
            for x in part.iter_mut() {
                *x += 0.1 * (2.0 * rng.uniform() as f32 - 1.0);
            }
        }
    }
    w
}

/// FMA forward and backward on the GPU against the reference for one configuration (inputs
/// and learned weights drawn from `seed`), with the native tests' tolerances: O and LSE within
/// 1e-4 of max(max |want|, 1), the gradients within 1e-4 of max(max |want|, 1e-2). The
/// checks below and `multipole gpu-report`'s random sweep run it.
pub async fn fma_check(
    ctx: &GpuContext,
    shape: Shape,
    config: &FmaConfig,
    seed: u64,
) -> Result<String, String> {
    let mut rng = Rng::new(seed);
    let e = shape.elements();
    let (q, k, v, d_o) = (
        values(&mut rng, e),
        values(&mut rng, e),
        values(&mut rng, e),
        values(&mut rng, e),
    );
    let g = Geometry::new(shape.n, config).map_err(|e| e.to_string())?;
    let w = perturbed(config.downsampling, &g, shape.d, &mut rng);
    let w = config.downsampling.is_learned().then_some(&w);
    let plan = FmaPlan::new(ctx, shape, config, w).map_err(|e| e.to_string())?;
    let tape = plan
        .forward_tape(ctx, &q, &k, &v)
        .await
        .map_err(|e| e.to_string())?;
    let want = reference::fma_forward(&q, &k, &v, shape, config, w).map_err(|e| e.to_string())?;
    // The spec's bar for O scales with max |V| (inputs in [-1, 1), so 1).
    let err_o = within("forward o", &tape.out.o, &want.o, 1.0, 1e-4)?;
    within("forward lse", &tape.out.lse, &want.lse, 1.0, 1e-4)?;
    let grads = plan
        .backward(ctx, &tape, &d_o)
        .await
        .map_err(|e| e.to_string())?;
    let want =
        reference::fma_backward(&q, &k, &v, &d_o, shape, config, w).map_err(|e| e.to_string())?;
    let mut worst = 0.0f32;
    for (name, a, b) in [
        ("dq", &grads.dq, &want.dq),
        ("dk", &grads.dk, &want.dk),
        ("dv", &grads.dv, &want.dv),
    ] {
        worst = worst.max(within(name, a, b, 1e-2, 1e-4)?);
    }
    if grads.dw.levels.len() != want.dw.levels.len() {
        return Err(format!(
            "weight gradients for {} levels where {} were expected",
            grads.dw.levels.len(),
            want.dw.levels.len()
        ));
    }
    for (l, (lg, lw)) in grads.dw.levels.iter().zip(&want.dw.levels).enumerate() {
        for (name, a, b) in [
            ("wk", &lg.wk, &lw.wk),
            ("wv", &lg.wv, &lw.wv),
            ("bk", &lg.bk, &lw.bk),
            ("bv", &lg.bv, &lw.bv),
        ] {
            let what = format!("weight gradient {name} of level {}", l + 1);
            worst = worst.max(within(&what, a, b, 1e-2, 1e-4)?);
        }
    }
    Ok(format!("forward {err_o:.1e}, backward {worst:.1e}"))
}

/// The ViT on the GPU against the CPU model (f64) on perturbed initial weights.
async fn vit_check(ctx: &GpuContext, config: &VitConfig, seed: u64) -> Result<String, String> {
    let mut rng = Rng::new(seed);
    let mut w = VitWeights::init(config, seed).map_err(|e| e.to_string())?;
    for t in &mut w.params.tensors {
        for x in t.iter_mut() {
            *x += 0.1 * (2.0 * rng.uniform() as f32 - 1.0);
        }
    }
    let px = config.canvas * config.canvas;
    let images: Vec<f32> = (0..3 * px).map(|_| rng.uniform() as f32).collect();
    let gpu = VitGpu::new(ctx, &w, 2)
        .map_err(|e| e.to_string())?
        .logits(ctx, &images)
        .await
        .map_err(|e| e.to_string())?;
    let images64: Vec<f64> = images.iter().map(|&x| x as f64).collect();
    let cpu = CpuVit::new(config)
        .and_then(|m| m.logits(&w.params.cast::<f64>(), &images64))
        .map_err(|e| e.to_string())?;
    let cpu32: Vec<f32> = cpu.iter().map(|&x| x as f32).collect();
    let err = within("logits", &gpu, &cpu32, 1.0, 1e-4)?;
    Ok(format!("logits {err:.1e}"))
}

/// Every check, in order, each with its name.
pub async fn run(ctx: &GpuContext) -> Vec<Check> {
    let seq = |m, p, kind, causal| FmaConfig {
        causal,
        downsampling: kind,
        ..FmaConfig::new(m, p)
    };
    let cases: Vec<(String, Shape, FmaConfig)> = vec![
        (
            "1D n=300 m=8 p=2 mean causal".into(),
            Shape::new(1, 2, 300, 16),
            seq(8, 2, Downsampling::Mean, true),
        ),
        (
            "1D n=257 m=16 p=4 depthwise".into(),
            Shape::new(2, 1, 257, 24),
            seq(16, 4, Downsampling::Depthwise, false),
        ),
        (
            "1D n=100 m=4 p=1 basis causal".into(),
            Shape::new(1, 1, 100, 64),
            seq(4, 1, Downsampling::Basis, true),
        ),
        (
            "2D 16x16 m=2 p=1 depthwise".into(),
            Shape::new(1, 2, 256, 16),
            seq(2, 1, Downsampling::Depthwise, false).image(16, 16),
        ),
        (
            "2D 12x20 m=4 p=4 mean".into(),
            Shape::new(1, 1, 240, 8),
            seq(4, 4, Downsampling::Mean, false).image(12, 20),
        ),
    ];
    let mut out = Vec::new();
    for (i, (name, shape, config)) in cases.into_iter().enumerate() {
        let r = fma_check(ctx, shape, &config, 100 + i as u64).await;
        out.push((name, r));
    }
    let small = VitConfig {
        depth: 2,
        ..VitConfig::fma()
    };
    out.push(("ViT (FMA)".into(), vit_check(ctx, &small, 7).await));
    out.push((
        "ViT (dense twin)".into(),
        vit_check(ctx, &small.dense_twin(), 8).await,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::within;

    const WANT: [f32; 4] = [0.5, -1.0, 2.0, 0.25];

    #[test]
    fn a_close_output_passes() {
        let got = [0.5, -1.0, 2.0001, 0.25];
        let err = within("o", &got, &WANT, 1.0, 1e-4).unwrap();
        assert!(err > 0.0 && err <= 1e-4, "{err}");
    }

    #[test]
    fn a_nan_fails() {
        let mut got = WANT;
        got[2] = f32::NAN;
        let e = within("o", &got, &WANT, 1.0, 1e-4).unwrap_err();
        assert!(e.contains("index 2"), "{e}");
        assert!(within("o", &[f32::NAN; 4], &WANT, 1.0, 1e-4).is_err());
    }

    #[test]
    fn an_infinity_fails() {
        for bad in [f32::INFINITY, f32::NEG_INFINITY] {
            let mut got = WANT;
            got[0] = bad;
            assert!(within("o", &got, &WANT, 1.0, 1e-4).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_short_or_long_output_fails() {
        let e = within("o", &WANT[..3], &WANT, 1.0, 1e-4).unwrap_err();
        assert!(e.contains("3 values where 4"), "{e}");
        assert!(within("o", &[], &WANT, 1.0, 1e-4).is_err());
        let long = [0.5, -1.0, 2.0, 0.25, 9.0];
        assert!(within("o", &long, &WANT, 1.0, 1e-4).is_err());
    }

    #[test]
    fn an_error_over_the_bar_fails() {
        let got = [0.5, -1.0, 2.01, 0.25];
        let e = within("o", &got, &WANT, 1.0, 1e-4).unwrap_err();
        assert!(e.contains("index 2"), "{e}");
    }
}
