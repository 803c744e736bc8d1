//! Helpers shared by the integration tests: seeded data, one shared GPU, error measures.
#![allow(dead_code)]

use std::sync::OnceLock;

use multipole::{
    DownsampleWeights, Downsampling, FmaConfig, ForwardKernels, Geometry, GpuContext, Layout,
    Precision, Shape,
};

/// Seeded uniform values in [-1, 1) (splitmix64), so failures reproduce.
pub fn random(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Random q, k, v for a shape.
pub fn qkv(seed: u64, shape: Shape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let e = shape.elements();
    (
        random(seed, e),
        random(seed.wrapping_add(1), e),
        random(seed.wrapping_add(2), e),
    )
}

/// The GPU every test shares. No adapter is a failure, never a silent pass: CI installs
/// lavapipe so that these tests always run.
pub fn gpu() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new_blocking() {
        Ok(ctx) => {
            eprintln!("GPU tests run on: {}", ctx.describe());
            ctx
        }
        Err(e) => panic!(
            "GPU tests need an adapter and found none ({e}). Install Mesa's lavapipe: \
             apt-get install mesa-vulkan-drivers"
        ),
    })
}

/// A GPU context (its own, besides `gpu()`'s) whose plans use the forward kernels `kernels`
/// whatever the adapter would choose, so both are tested on one adapter.
pub fn gpu_with(kernels: ForwardKernels) -> &'static GpuContext {
    static TILED: OnceLock<GpuContext> = OnceLock::new();
    static DIRECT: OnceLock<GpuContext> = OnceLock::new();
    let cell = match kernels {
        ForwardKernels::Tiled => &TILED,
        ForwardKernels::Direct => &DIRECT,
    };
    cell.get_or_init(|| {
        let ctx = GpuContext::new_blocking().expect("a GPU adapter (see gpu())");
        ctx.set_forward_kernels(kernels);
        assert_eq!(ctx.forward_kernels(), kernels);
        ctx
    })
}

/// Both kinds of forward kernels.
pub const FORWARD_KERNELS: [ForwardKernels; 2] = [ForwardKernels::Tiled, ForwardKernels::Direct];

/// Random weights near the `Mean` initialisation (perturbed so the kinds differ from Mean).
pub fn weights(seed: u64, kind: Downsampling, g: &Geometry, d: usize) -> DownsampleWeights {
    let mut w = DownsampleWeights::mean_init(kind, g, d);
    for (i, lw) in w.levels.iter_mut().enumerate() {
        for (j, part) in [&mut lw.wk, &mut lw.wv, &mut lw.bk, &mut lw.bv]
            .into_iter()
            .enumerate()
        {
            let noise = random(
                seed.wrapping_mul(131).wrapping_add((i * 4 + j) as u64),
                part.len(),
            );
            for (x, e) in part.iter_mut().zip(noise) {
                *x += 0.05 * e;
            }
        }
    }
    w
}

/// Bound on the scores of one head: max over (i, j) of scale * sum_c |q_ic k_jc|. The f32 dot
/// product's rounding error is about eps times this, which large-score tests add to their bar.
pub fn score_bound(q: &[f32], k: &[f32], n: usize, d: usize, scale: f32) -> f32 {
    (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| {
            (0..d)
                .map(|c| (q[i * d + c] * k[j * d + c]).abs())
                .sum::<f32>()
                * scale
        })
        .fold(0f32, f32::max)
}

/// Largest |a - b| and where it occurs (NaN or infinity: an infinite error; lengths must
/// match). The library's comparison, shared with the in-browser checks.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    let worst = multipole::compare::max_abs_diff(a, b).unwrap_or_else(|e| panic!("{e}"));
    (worst.error, worst.at)
}

/// The spec's f32 bar: max |a - b| <= tol * max |v| (tol = 1e-4 for f32).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], v: &[f32], tol: f32) {
    let vmax = multipole::compare::max_abs(v, 1e-30);
    let worst =
        multipole::compare::max_abs_diff(got, want).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        worst.error <= tol * vmax,
        "{what}: max abs error {} at index {} (got {}, want {}) exceeds {tol} x max|V| = {}",
        worst.error,
        worst.at,
        worst.got,
        worst.want,
        tol * vmax
    );
}

/// A config with every option spelled out.
pub fn config(
    m: usize,
    p: usize,
    causal: bool,
    kind: Downsampling,
    multiplicity: bool,
) -> FmaConfig {
    FmaConfig {
        m,
        p,
        layout: Layout::Sequence,
        causal,
        downsampling: kind,
        multiplicity,
        scale: None,
        precision: Precision::F32,
        downsample_queries: false,
        max_levels: None,
    }
}

/// A device whose storage bindings hold only 64 KiB: the tensors no longer fit one binding.
/// Made by the library (`with_limits`), so it owns the device's error handlers like `new`.
pub fn small_device() -> GpuContext {
    pollster::block_on(GpuContext::with_limits(|adapter| wgpu::Limits {
        max_storage_buffer_binding_size: 1 << 16,
        ..adapter
    }))
    .expect("an adapter (lavapipe in CI)")
}

/// The kernel specialisations the random GPU tests draw from: (head dims of one head tile,
/// m). Every head tile (16, 32, 64, 128) and every query tile (min(tokens per fine cell, 64):
/// 2 to 64) is in the set, but not every pair: each pair compiles its own pipelines, and on
/// lavapipe compiling them took most of the GPU tests' time. All the random tests share the
/// set, so a pipeline one test binary compiled is in Mesa's cache for the next.
/// `cargo xtask sweep` (`MULTIPOLE_SWEEP=1`) draws every pair instead, with 4x the cases.
pub const SPECS_1D: [(&[usize], usize); 9] = [
    (&[1, 3, 16], 2),
    (&[5, 16], 4),
    (&[1, 16], 8),
    (&[24, 32], 8),
    (&[20, 32], 32),
    (&[20, 32], 16),
    (&[33, 48, 64], 16),
    (&[100, 128], 8),
    (&[65, 128], 64),
];
/// The same for images (m x m tokens per fine cell: query tiles 4, 16 and 64); their pairs
/// are in `SPECS_1D`.
pub const SPECS_2D: [(&[usize], usize); 4] = [
    (&[1, 3, 16], 2),
    (&[24, 32], 4),
    (&[40, 64], 4),
    (&[100, 128], 8),
];

/// Whether the wide sweep runs (`cargo xtask sweep`).
pub fn wide_sweep() -> bool {
    std::env::var_os("MULTIPOLE_SWEEP").is_some()
}

/// (d, m) drawn from `specs`, or, in the wide sweep, d and m drawn independently from all
/// that `specs` names.
pub fn head_dim_and_m(
    specs: &'static [(&'static [usize], usize)],
) -> proptest::strategy::BoxedStrategy<(usize, usize)> {
    use proptest::prelude::*;
    if wide_sweep() {
        let mut ds: Vec<usize> = specs.iter().flat_map(|(d, _)| d.iter().copied()).collect();
        let mut ms: Vec<usize> = specs.iter().map(|&(_, m)| m).collect();
        ds.sort_unstable();
        ds.dedup();
        ms.sort_unstable();
        ms.dedup();
        return (prop::sample::select(ds), prop::sample::select(ms)).boxed();
    }
    prop::sample::select(specs.to_vec())
        .prop_flat_map(|(ds, m)| (prop::sample::select(ds.to_vec()), Just(m)))
        .boxed()
}

/// Runs `run` on `cases` random cases drawn from `strategy` (no failure file; proptest
/// shrinks a failing case and reports it) and prints the largest error `run` returned.
pub fn sweep<C: std::fmt::Debug>(
    name: &str,
    strategy: impl proptest::strategy::Strategy<Value = C>,
    cases: u32,
    run: impl Fn(&C) -> f32,
) {
    let cases = if wide_sweep() { 4 * cases } else { cases };
    let config = proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..Default::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let stats = std::cell::Cell::new((0usize, 0f32));
    let result = runner.run(&strategy, |c| {
        let (n, worst) = stats.get();
        stats.set((n + 1, worst.max(run(&c))));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (n, worst) = stats.get();
    eprintln!("{name}: {n} random cases passed, largest error {worst:.3e}");
}
