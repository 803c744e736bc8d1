//! The O(n) variant (`downsample_queries`, docs/fma.md §13) on the CPU reference: its backward
//! against finite differences of its forward, the spec's exact oracles (n' = 2m, `Mean` on
//! segment-wise constant inputs, the downward pass against the direct definition), the factored
//! backward against the per-query one, and its errors.

mod common;

use common::random;
use multipole::reference::{
    self, fma_backward, fma_forward_f64, linear_backward_factored, linear_forward_downward,
};
use multipole::{DownsampleWeights, Downsampling, FmaConfig, FmaError, Geometry, Shape};

const KINDS: [Downsampling; 3] = [
    Downsampling::Mean,
    Downsampling::Basis,
    Downsampling::Depthwise,
];

/// The variant over a sequence.
fn linear(m: usize, p: usize, kind: Downsampling, multiplicity: bool) -> FmaConfig {
    FmaConfig {
        downsampling: kind,
        multiplicity,
        downsample_queries: true,
        ..FmaConfig::new(m, p)
    }
}

/// Query, key and value weights near `Mean`'s (each part perturbed on its own, so that a
/// gradient sent to the wrong part shows).
fn weights(seed: u64, kind: Downsampling, g: &Geometry, d: usize) -> DownsampleWeights {
    let mut w = DownsampleWeights::mean_init(kind, g, d).with_query_weights();
    for (i, lw) in w.levels.iter_mut().enumerate() {
        let parts = [
            &mut lw.wk, &mut lw.wv, &mut lw.bk, &mut lw.bv, &mut lw.wq, &mut lw.bq,
        ];
        for (j, part) in parts.into_iter().enumerate() {
            let noise = random(seed * 131 + (i * 6 + j) as u64, part.len());
            for (x, e) in part.iter_mut().zip(noise) {
                *x += 0.05 * e;
            }
        }
    }
    w
}

/// Random q, k, v for a shape.
fn qkv(seed: u64, shape: Shape) -> [Vec<f32>; 3] {
    let e = shape.elements();
    [random(seed, e), random(seed + 1, e), random(seed + 2, e)]
}

/// The weight parts in `LevelWeights` order: wk, wv, bk, bv, wq, bq.
fn part(w: &mut DownsampleWeights, level: usize, part: usize) -> &mut Vec<f32> {
    let lw = &mut w.levels[level];
    [
        &mut lw.wk, &mut lw.wv, &mut lw.bk, &mut lw.bv, &mut lw.wq, &mut lw.bq,
    ]
    .into_iter()
    .nth(part)
    .expect("six parts")
}

/// Every entry of q, k, v and every weight part against central differences of
/// sum(d_o * O) (f64 forward, steps taken on the f32 value); the largest error relative to
/// max(1, |gradient|).
fn check(label: &str, shape: Shape, cfg: &FmaConfig, seed: u64) -> f64 {
    let [q, k, v] = qkv(seed, shape);
    let d_o = random(seed + 3, shape.elements());
    let g = Geometry::new(shape.n, cfg).unwrap();
    let w = weights(seed, cfg.downsampling, &g, shape.d);
    let grads = fma_backward(&q, &k, &v, &d_o, shape, cfg, Some(&w)).unwrap();
    if cfg.downsampling.is_learned() {
        assert_eq!(grads.dw.levels.len(), g.num_levels(), "{label}");
        for (lw, gw) in w.levels.iter().zip(&grads.dw.levels) {
            assert_eq!(gw.wq.len(), lw.wq.len(), "{label}: dwq shaped like wq");
            assert_eq!(gw.bq.len(), lw.bq.len(), "{label}: dbq shaped like bq");
        }
    }
    let loss = |inputs: &[Vec<f32>; 3], w: &DownsampleWeights| -> f64 {
        let out = fma_forward_f64(&inputs[0], &inputs[1], &inputs[2], shape, cfg, Some(w));
        out.unwrap()
            .o
            .iter()
            .zip(&d_o)
            .map(|(a, &b)| a * b as f64)
            .sum()
    };
    // (tensor 0..3 = q, k, v, or 3 + 6 * level + part for a weight part) and its gradient.
    let mut params: Vec<(usize, Vec<f32>)> = vec![
        (0, grads.dq.clone()),
        (1, grads.dk.clone()),
        (2, grads.dv.clone()),
    ];
    for (l, gw) in grads.dw.levels.iter().enumerate() {
        for (j, x) in [&gw.wk, &gw.wv, &gw.bk, &gw.bv, &gw.wq, &gw.bq]
            .into_iter()
            .enumerate()
        {
            params.push((3 + 6 * l + j, x.clone()));
        }
    }
    let h = 1e-3f32;
    let mut worst = 0.0f64;
    for (which, analytic) in params {
        for (idx, &want) in analytic.iter().enumerate() {
            let at = |x: f32| {
                let (mut inputs, mut w2) = ([q.clone(), k.clone(), v.clone()], w.clone());
                let slot = match which {
                    0..3 => &mut inputs[which][idx],
                    _ => &mut part(&mut w2, (which - 3) / 6, (which - 3) % 6)[idx],
                };
                *slot = x;
                loss(&inputs, &w2)
            };
            let x = match which {
                0..3 => [&q, &k, &v][which][idx],
                _ => part(&mut w.clone(), (which - 3) / 6, (which - 3) % 6)[idx],
            };
            let (up, down) = (x + h, x - h);
            let numeric = (at(up) - at(down)) / (up as f64 - down as f64);
            let err = (numeric - want as f64).abs() / (want as f64).abs().max(1.0);
            assert!(
                err < 1e-4,
                "{label}: d loss / d param {which}[{idx}]: backward {want}, finite difference {numeric}"
            );
            worst = worst.max(err);
        }
    }
    worst
}

#[test]
fn backward_matches_finite_differences_1d() {
    let mut worst = 0.0f64;
    for (i, kind) in KINDS.into_iter().enumerate() {
        for multiplicity in [true, false] {
            // n = 13 on m = 2 pads to 16 (two coarse levels); p = 2 splits each group.
            let cfg = linear(2, 2, kind, multiplicity);
            let label = format!("1D {kind:?} multiplicity={multiplicity}");
            worst = worst.max(check(&label, Shape::new(1, 2, 13, 3), &cfg, 300 + i as u64));
        }
    }
    // p = 1, batch 2, three levels, and a scale of the caller's.
    let cfg = FmaConfig {
        scale: Some(0.7),
        ..linear(2, 1, Downsampling::Depthwise, true)
    };
    worst = worst.max(check("1D p=1 n=30", Shape::new(2, 1, 30, 2), &cfg, 17));
    eprintln!(
        "O(n) variant, 1D backward vs finite differences: largest relative error {worst:.2e}"
    );
}

#[test]
fn backward_matches_finite_differences_2d() {
    let mut worst = 0.0f64;
    for (i, kind) in KINDS.into_iter().enumerate() {
        for multiplicity in [true, false] {
            for (h, w, p) in [(5, 7, 1), (6, 5, 4)] {
                let cfg = FmaConfig {
                    downsampling: kind,
                    multiplicity,
                    downsample_queries: true,
                    ..FmaConfig::new(2, p).image(h, w)
                };
                let label = format!("2D {h}x{w} p={p} {kind:?} multiplicity={multiplicity}");
                let shape = Shape::new(1, 2, h * w, 2);
                worst = worst.max(check(&label, shape, &cfg, 400 + i as u64));
            }
        }
    }
    // 9 x 5 on m = 2 pads to 16 x 16: two coarse levels, so the downward pass has a step.
    let cfg = FmaConfig {
        downsampling: Downsampling::Basis,
        downsample_queries: true,
        ..FmaConfig::new(2, 1).image(9, 5)
    };
    worst = worst.max(check(
        "2D 9x5 two levels",
        Shape::new(1, 1, 45, 2),
        &cfg,
        19,
    ));
    eprintln!(
        "O(n) variant, 2D backward vs finite differences: largest relative error {worst:.2e}"
    );
}

/// Configurations for the exact comparisons: sequences and images, every kind, multiplicity
/// on and off, padding, batch x heads > 1, one to three coarse levels.
fn cases() -> Vec<(String, Shape, FmaConfig)> {
    let mut out = Vec::new();
    for kind in KINDS {
        for multiplicity in [true, false] {
            for (n, m, p) in [(13, 2, 2), (64, 4, 2), (45, 4, 4), (100, 8, 2)] {
                out.push((
                    format!("1D n={n} m={m} p={p} {kind:?} mult={multiplicity}"),
                    Shape::new(2, 2, n, 4),
                    linear(m, p, kind, multiplicity),
                ));
            }
            for (h, w, m, p) in [(8, 8, 2, 4), (7, 13, 2, 1), (16, 11, 2, 4)] {
                out.push((
                    format!("2D {h}x{w} m={m} p={p} {kind:?} mult={multiplicity}"),
                    Shape::new(1, 3, h * w, 4),
                    FmaConfig {
                        downsampling: kind,
                        multiplicity,
                        downsample_queries: true,
                        ..FmaConfig::new(m, p).image(h, w)
                    },
                ));
            }
        }
    }
    out
}

/// Oracle: the downward pass (the kernels' form) equals the direct definition, in f64.
#[test]
fn downward_pass_equals_the_direct_definition() {
    let mut worst = 0.0f64;
    for (i, (label, shape, cfg)) in cases().into_iter().enumerate() {
        let [q, k, v] = qkv(500 + i as u64, shape);
        let g = Geometry::new(shape.n, &cfg).unwrap();
        let w = weights(i as u64, cfg.downsampling, &g, shape.d);
        let direct = fma_forward_f64(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
        let down = linear_forward_downward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
        for (what, a, b) in [("o", &direct.o, &down.o), ("lse", &direct.lse, &down.lse)] {
            for (x, y) in a.iter().zip(b.iter()) {
                assert!(x.is_finite() && y.is_finite(), "{label} {what}: {x} {y}");
                let err = (x - y).abs() / x.abs().max(1.0);
                assert!(err < 1e-12, "{label} {what}: direct {x}, downward {y}");
                worst = worst.max(err);
            }
        }
    }
    eprintln!("downward pass vs direct definition: largest relative difference {worst:.2e}");
}

/// The factored backward (per-segment sums from an upward pass) equals the per-query one.
#[test]
fn factored_backward_equals_the_per_query_backward() {
    for (i, (label, shape, cfg)) in cases().into_iter().enumerate() {
        let [q, k, v] = qkv(600 + i as u64, shape);
        let d_o = random(700 + i as u64, shape.elements());
        let g = Geometry::new(shape.n, &cfg).unwrap();
        let w = weights(i as u64, cfg.downsampling, &g, shape.d);
        let direct = fma_backward(&q, &k, &v, &d_o, shape, &cfg, Some(&w)).unwrap();
        let factored = linear_backward_factored(&q, &k, &v, &d_o, shape, &cfg, Some(&w)).unwrap();
        let mut pairs = vec![
            ("dq", &direct.dq, &factored.dq),
            ("dk", &direct.dk, &factored.dk),
            ("dv", &direct.dv, &factored.dv),
        ];
        for (a, b) in direct.dw.levels.iter().zip(&factored.dw.levels) {
            pairs.extend([
                ("dwk", &a.wk, &b.wk),
                ("dwv", &a.wv, &b.wv),
                ("dbk", &a.bk, &b.bk),
                ("dbv", &a.bv, &b.bv),
                ("dwq", &a.wq, &b.wq),
                ("dbq", &a.bq, &b.bq),
            ]);
        }
        assert_eq!(direct.dw.levels.len(), factored.dw.levels.len());
        for (what, a, b) in pairs {
            assert_eq!(a.len(), b.len(), "{label} {what}");
            for (x, y) in a.iter().zip(b.iter()) {
                // Both are f64 sums rounded to f32: at most a rounding step apart.
                let err = (x - y).abs() / x.abs().max(1.0);
                assert!(err < 1e-6, "{label} {what}: per query {x}, factored {y}");
            }
        }
    }
}

/// Exact dense attention in f64, to compare the f64 forward with at 1e-12.
fn dense64(q: &[f32], k: &[f32], v: &[f32], shape: Shape, scale: f64) -> Vec<f64> {
    let (n, d) = (shape.n, shape.d);
    let mut out = vec![0.0; shape.elements()];
    for h in 0..shape.bh() {
        let at = |x: &[f32], i: usize, c: usize| x[(h * n + i) * d + c] as f64;
        for i in 0..n {
            let z: Vec<f64> = (0..n)
                .map(|j| scale * (0..d).map(|c| at(q, i, c) * at(k, j, c)).sum::<f64>())
                .collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..d {
                out[(h * n + i) * d + c] = (0..n).map(|j| e[j] * at(v, j, c)).sum::<f64>() / sum;
            }
        }
    }
    out
}

fn assert_close64(label: &str, got: &[f64], want: &[f64], tol: f64) {
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        assert!((x - y).abs() <= tol, "{label}: at {i}: {x} against {y}");
    }
}

/// Oracle: n' = 2m (side' = 2m) leaves no coarse level: the variant is dense attention.
#[test]
fn two_cells_equal_dense() {
    for kind in KINDS {
        for (shape, cfg) in [
            (Shape::new(2, 1, 7, 3), linear(4, 2, kind, true)),
            (Shape::new(1, 2, 64, 8), linear(32, 4, kind, false)),
            (
                Shape::new(1, 2, 35, 3),
                FmaConfig {
                    downsampling: kind,
                    downsample_queries: true,
                    ..FmaConfig::new(4, 4).image(7, 5)
                },
            ),
        ] {
            let g = Geometry::new(shape.n, &cfg).unwrap();
            assert_eq!(g.num_levels(), 0, "{cfg:?}");
            let [q, k, v] = qkv(shape.n as u64, shape);
            // No level, no weights, whatever the kind.
            let w = DownsampleWeights::default();
            let out = fma_forward_f64(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
            let want = dense64(&q, &k, &v, shape, cfg.scale_for(shape.d) as f64);
            assert_close64(&format!("{kind:?} {shape:?}"), &out.o, &want, 1e-12);
            let down = linear_forward_downward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
            assert_close64(
                &format!("{kind:?} {shape:?} downward"),
                &down.o,
                &want,
                1e-12,
            );
        }
    }
}

/// Rows of a [bh, n, d] tensor equal within every block of tokens that `block(i)` names.
fn blockwise(seed: u64, shape: Shape, block: impl Fn(usize) -> usize) -> Vec<f32> {
    let (n, d) = (shape.n, shape.d);
    let table = random(seed, shape.bh() * n * d);
    let mut out = vec![0.0; shape.elements()];
    for h in 0..shape.bh() {
        for i in 0..n {
            for c in 0..d {
                out[(h * n + i) * d + c] = table[(h * n + block(i)) * d + c];
            }
        }
    }
    out
}

/// Oracle: `Mean` with multiplicity on, on q, k and v constant over every coarsest segment,
/// equals dense attention (every coarse query and key stands for equal tokens), padded or not.
#[test]
fn mean_on_segment_constant_inputs_equals_dense() {
    // 1D: n' = 64, m = 4: L = 3, the coarsest segments are n' / (4p) tokens long.
    for (n, p) in [(64, 2), (60, 1), (50, 4)] {
        let cfg = linear(4, p, Downsampling::Mean, true);
        let g = Geometry::new(n, &cfg).unwrap();
        assert_eq!((g.n_pad(), g.num_levels()), (64, 3));
        let len = 64 / (4 * p);
        let shape = Shape::new(2, 2, n, 4);
        let [q, k, v] = [0, 1, 2].map(|s| blockwise(10 + s, shape, |i| i / len));
        let out = fma_forward_f64(&q, &k, &v, shape, &cfg, None).unwrap();
        let want = dense64(&q, &k, &v, shape, cfg.scale_for(4) as f64);
        assert_close64(&format!("1D n={n} p={p}"), &out.o, &want, 1e-12);
        // The same inputs with varying queries are not dense: the test can fail.
        let q2 = random(99, shape.elements());
        let other = fma_forward_f64(&q2, &k, &v, shape, &cfg, None).unwrap();
        let exact = dense64(&q2, &k, &v, shape, cfg.scale_for(4) as f64);
        let gap = other.o.iter().zip(&exact).map(|(a, b)| (a - b).abs());
        assert!(gap.fold(0.0, f64::max) > 1e-6, "1D n={n} p={p}");
    }
    // 2D: a 16 x 16 grid on m = 2 (L = 2, coarsest cells 4 x 4) with p = 4: 2 x 2 sub-blocks.
    for (h, w, p) in [(16, 16, 4), (14, 16, 1), (13, 9, 4)] {
        let cfg = FmaConfig {
            downsample_queries: true,
            ..FmaConfig::new(2, p).image(h, w)
        };
        let g = Geometry::new(h * w, &cfg).unwrap();
        assert_eq!((g.pad_h, g.num_levels()), (16, 2));
        let side = 4 / p.isqrt();
        let shape = Shape::new(1, 2, h * w, 4);
        let block = |i: usize| ((i / w) / side) * w + ((i % w) / side);
        let [q, k, v] = [0, 1, 2].map(|s| blockwise(20 + s, shape, block));
        let out = fma_forward_f64(&q, &k, &v, shape, &cfg, None).unwrap();
        let want = dense64(&q, &k, &v, shape, cfg.scale_for(4) as f64);
        assert_close64(&format!("2D {h}x{w} p={p}"), &out.o, &want, 1e-12);
        // f32 output: to the f32 rounding of values of size 1.
        let out32 = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
        assert_close64(
            &format!("2D {h}x{w} p={p} f32"),
            &out32.o.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &want,
            1e-6,
        );
    }
}

/// The flag changes the result: with query weights initialised like the keys', the variant
/// still differs from the O(n log n) FMA (a query's coarse scores use its segment's mean).
#[test]
fn the_variant_differs_from_the_log_linear_fma() {
    for kind in KINDS {
        let shape = Shape::new(1, 2, 64, 4);
        let cfg = linear(4, 2, kind, true);
        let g = Geometry::new(64, &cfg).unwrap();
        let [q, k, v] = qkv(31, shape);
        let w = DownsampleWeights::mean_init(kind, &g, 4);
        let plain = FmaConfig {
            downsample_queries: false,
            ..cfg.clone()
        };
        let a = fma_forward_f64(&q, &k, &v, shape, &plain, Some(&w)).unwrap();
        let b = fma_forward_f64(&q, &k, &v, shape, &cfg, Some(&w.with_query_weights())).unwrap();
        let gap = a.o.iter().zip(&b.o).map(|(x, y)| (x - y).abs());
        assert!(
            gap.fold(0.0, f64::max) > 1e-3,
            "{kind:?}: the flag changed nothing"
        );
    }
}

/// Scores of size 1e4 stay finite in both forms and in both backwards.
#[test]
fn large_scores_stay_finite() {
    let shape = Shape::new(1, 1, 64, 4);
    let cfg = linear(4, 2, Downsampling::Mean, true);
    let [q, k, v] = qkv(41, shape);
    let q: Vec<f32> = q.iter().map(|x| x * 5e3).collect();
    let d_o = random(42, shape.elements());
    let a = fma_forward_f64(&q, &k, &v, shape, &cfg, None).unwrap();
    let b = linear_forward_downward(&q, &k, &v, shape, &cfg, None).unwrap();
    assert!(a.lse.iter().any(|x| x.abs() > 1e3), "scores are large");
    for (x, y) in a.o.iter().zip(&b.o) {
        assert!(
            x.is_finite() && (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            "{x} {y}"
        );
    }
    let g1 = fma_backward(&q, &k, &v, &d_o, shape, &cfg, None).unwrap();
    let g2 = linear_backward_factored(&q, &k, &v, &d_o, shape, &cfg, None).unwrap();
    for (x, y) in [&g1.dq, &g1.dk, &g1.dv]
        .into_iter()
        .flatten()
        .zip([&g2.dq, &g2.dk, &g2.dv].into_iter().flatten())
    {
        assert!(
            x.is_finite() && (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "{x} {y}"
        );
    }
}

#[test]
fn errors_name_the_problem() {
    let shape = Shape::new(1, 1, 32, 4);
    let [q, k, v] = qkv(1, shape);
    // Causal: a coarse query would mix later tokens.
    let causal = FmaConfig {
        causal: true,
        ..linear(4, 1, Downsampling::Mean, true)
    };
    let err = reference::fma_forward(&q, &k, &v, shape, &causal, None).unwrap_err();
    assert!(
        matches!(err, FmaError::InvalidConfig(ref s) if s.contains("later tokens")),
        "{err}"
    );
    let err = fma_backward(&q, &k, &v, &q, shape, &causal, None).unwrap_err();
    assert!(matches!(err, FmaError::InvalidConfig(_)), "{err}");
    // Learned kinds need wq (and bq) of every level, shaped like wk (bk).
    for kind in [Downsampling::Basis, Downsampling::Depthwise] {
        let cfg = linear(4, 1, kind, true);
        let g = Geometry::new(32, &cfg).unwrap();
        let plain = DownsampleWeights::mean_init(kind, &g, 4);
        let err = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&plain)).unwrap_err();
        assert!(
            matches!(err, FmaError::Weights(ref s) if s.contains("wq.1")),
            "{kind:?}: {err}"
        );
        let mut bad = plain.clone().with_query_weights();
        bad.levels[1].wq.pop();
        let err = fma_backward(&q, &k, &v, &q, shape, &cfg, Some(&bad)).unwrap_err();
        assert!(
            matches!(err, FmaError::Weights(ref s) if s.contains("wq.2")),
            "{kind:?}: {err}"
        );
        // And the plain FMA refuses query weights it would ignore.
        let plain_cfg = FmaConfig {
            downsample_queries: false,
            ..cfg
        };
        let with_q = plain.with_query_weights();
        let err = reference::fma_forward(&q, &k, &v, shape, &plain_cfg, Some(&with_q)).unwrap_err();
        assert!(
            matches!(err, FmaError::Weights(ref s) if s.contains("wq.1")),
            "{err}"
        );
    }
    let depthwise = linear(4, 1, Downsampling::Depthwise, true);
    let g = Geometry::new(32, &depthwise).unwrap();
    let mut bad = DownsampleWeights::mean_init(Downsampling::Depthwise, &g, 4).with_query_weights();
    bad.levels[0].bq.push(0.0);
    let err = reference::fma_forward(&q, &k, &v, shape, &depthwise, Some(&bad)).unwrap_err();
    assert!(
        matches!(err, FmaError::Weights(ref s) if s.contains("bq.1")),
        "{err}"
    );
    // The blueprint entry points belong to the variant.
    let plain = linear(4, 1, Downsampling::Mean, true);
    let plain = FmaConfig {
        downsample_queries: false,
        ..plain
    };
    assert!(linear_forward_downward(&q, &k, &v, shape, &plain, None).is_err());
    assert!(linear_backward_factored(&q, &k, &v, &q, shape, &plain, None).is_err());
}
