//! `max_levels`: FMA with its coarse levels capped. With no level left it is sliding-window
//! attention, checked here against a softmax over a mask built from token coordinates alone
//! (not from the geometry), on the reference and on the GPU, forward and backward.

mod common;
use common::*;
use multipole::{Downsampling, FmaConfig, FmaError, FmaPlan, Geometry, Shape, reference};

/// Softmax attention of every query over the keys `near(i, j)` allows, in f64.
fn masked(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    near: impl Fn(usize, usize) -> bool,
) -> Vec<f64> {
    let (n, d) = (shape.n, shape.d);
    let scale = 1.0 / (d as f64).sqrt();
    let mut o = vec![0.0; shape.elements()];
    for bh in 0..shape.bh() {
        let at = |x: &[f32], t: usize| x[(bh * n + t) * d..(bh * n + t + 1) * d].to_vec();
        for i in 0..n {
            let qi = at(q, i);
            let keys: Vec<usize> = (0..n).filter(|&j| near(i, j)).collect();
            let scores: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    let kj = at(k, j);
                    scale * (0..d).map(|c| qi[c] as f64 * kj[c] as f64).sum::<f64>()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (&j, w) in keys.iter().zip(&e) {
                let vj = at(v, j);
                for c in 0..d {
                    o[(bh * n + i) * d + c] += w / sum * vj[c] as f64;
                }
            }
        }
    }
    o
}

/// The cases: 1D with padding (100 tokens in cells of 8), causal, and an image of 20 x 12
/// tokens in 4 x 4 cells (padded to 32 x 32), each with its window written out by hand.
/// A named case: its shape, its config and which keys its window lets query i see.
type Case = (
    &'static str,
    Shape,
    FmaConfig,
    Box<dyn Fn(usize, usize) -> bool>,
);

fn cases() -> Vec<Case> {
    let m = 8;
    let cell = move |t: usize| (t / m) as i64;
    let (h, w, mi) = (20, 12, 4);
    let yx = move |t: usize| (((t / w) / mi) as i64, ((t % w) / mi) as i64);
    vec![
        (
            "1D",
            Shape::new(1, 2, 100, 8),
            FmaConfig::new(m, 2).max_levels(0),
            Box::new(move |i, j| (cell(i) - cell(j)).abs() <= 1),
        ),
        (
            "1D causal",
            Shape::new(2, 1, 100, 8),
            FmaConfig {
                causal: true,
                ..FmaConfig::new(m, 2)
            }
            .max_levels(0),
            Box::new(move |i, j| j <= i && cell(i) - cell(j) <= 1),
        ),
        (
            "2D",
            Shape::new(1, 2, h * w, 8),
            FmaConfig::new(mi, 4).image(h, w).max_levels(0),
            Box::new(move |i, j| {
                let ((yi, xi), (yj, xj)) = (yx(i), yx(j));
                (yi - yj).abs().max((xi - xj).abs()) <= 1
            }),
        ),
    ]
}

#[test]
fn no_coarse_level_is_sliding_window_attention() {
    let ctx = gpu();
    for (seed, (what, shape, cfg, near)) in cases().into_iter().enumerate() {
        let (q, k, v) = qkv(seed as u64 + 7, shape);
        let want = masked(&q, &k, &v, shape, near);
        let cpu = reference::fma_forward_f64(&q, &k, &v, shape, &cfg, None).unwrap();
        let err = cpu
            .o
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // The reference scales by 1/sqrt(d) rounded to f32: about 1e-8 apart, no more.
        assert!(err < 1e-7, "{what}: the reference is {err} from the window");
        let want32: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        let out = FmaPlan::new(ctx, shape, &cfg, None)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert_close(&format!("{what} on the GPU"), &out.o, &want32, &v, 1e-4);
    }
}

#[test]
fn the_window_backward_on_the_gpu_matches_the_reference() {
    let ctx = gpu();
    for (seed, (what, shape, cfg, _)) in cases().into_iter().enumerate() {
        let (q, k, v) = qkv(seed as u64 + 11, shape);
        let d_o = random(seed as u64 + 13, shape.elements());
        let want = reference::fma_backward(&q, &k, &v, &d_o, shape, &cfg, None).unwrap();
        let plan = FmaPlan::new(ctx, shape, &cfg, None).unwrap();
        let tape = pollster::block_on(plan.forward_tape(ctx, &q, &k, &v)).unwrap();
        let got = plan.backward_blocking(ctx, &tape, &d_o).unwrap();
        for (name, g, r) in [
            ("dq", &got.dq, &want.dq),
            ("dk", &got.dk, &want.dk),
            ("dv", &got.dv, &want.dv),
        ] {
            // Relative to the largest reference gradient.
            assert_close(&format!("{what}: {name}"), g, r, r, 1e-4);
        }
    }
}

#[test]
fn a_cap_keeps_the_finest_levels() {
    let cfg = FmaConfig {
        downsampling: Downsampling::Depthwise,
        ..FmaConfig::new(8, 2)
    };
    let all = Geometry::new(1024, &cfg).unwrap();
    assert_eq!(all.num_levels(), 6);
    for cap in [0, 1, 3, 6, 100] {
        let g = Geometry::new(1024, &cfg.clone().max_levels(cap)).unwrap();
        assert_eq!(g.num_levels(), cap.min(6), "cap {cap}");
        assert_eq!(g.levels[..], all.levels[..g.num_levels()], "cap {cap}");
        assert_eq!(
            g.n_pad(),
            all.n_pad(),
            "cap {cap}: the padding does not change"
        );
    }
}

#[test]
fn decoders_refuse_a_cap() {
    let cfg = FmaConfig::new(8, 2).max_levels(1);
    assert!(matches!(
        Geometry::causal_line(&cfg, 3),
        Err(FmaError::InvalidConfig(_))
    ));
}
