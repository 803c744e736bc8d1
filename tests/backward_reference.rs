//! The CPU backward against central finite differences of the CPU forward, in f64, for every
//! configuration: 1D (bidirectional and causal) and 2D, every downsampling kind, multiplicity on
//! and off, lengths and images that need padding, and batch x heads > 1.

mod common;

use common::{config, random, weights};
use multipole::reference::{fma_backward, fma_forward_f64};
use multipole::{DownsampleWeights, Downsampling, FmaConfig, Geometry, Shape};

/// The loss whose gradient `fma_backward(.., d_o, ..)` returns: sum(d_o * O), in f64.
fn loss(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
    shape: Shape,
    cfg: &FmaConfig,
    w: &DownsampleWeights,
) -> f64 {
    let out = fma_forward_f64(q, k, v, shape, cfg, Some(w)).unwrap();
    out.o.iter().zip(d_o).map(|(a, &b)| a * b as f64).sum()
}

/// Which tensor a finite difference perturbs.
#[derive(Clone, Copy, Debug)]
enum Param {
    Q,
    K,
    V,
    /// Level index, part 0..4 = wk, wv, bk, bv.
    W(usize, usize),
}

/// Checks every entry of every input and weight against (L(x + h) - L(x - h)) / (2h), with
/// the step taken on the f32 value and measured exactly. Returns the largest error relative to
/// max(1, |gradient|).
fn check(label: &str, shape: Shape, cfg: &FmaConfig, seed: u64) -> f64 {
    let n = shape.elements();
    let (q, k, v) = (random(seed, n), random(seed + 1, n), random(seed + 2, n));
    let d_o = random(seed + 3, n);
    let g = Geometry::new(shape.n, cfg).unwrap();
    let w = weights(seed, cfg.downsampling, &g, shape.d);
    let grads = fma_backward(&q, &k, &v, &d_o, shape, cfg, Some(&w)).unwrap();
    assert!(
        !cfg.downsampling.is_learned() || grads.dw.levels.len() == g.num_levels(),
        "{label}: one gradient per level"
    );

    let mut params = vec![Param::Q, Param::K, Param::V];
    for l in 0..grads.dw.levels.len() {
        params.extend((0..4).map(|part| Param::W(l, part)));
    }
    let mut worst = 0.0f64;
    let h = 1e-3f32;
    for param in params {
        let analytic: &[f32] = match param {
            Param::Q => &grads.dq,
            Param::K => &grads.dk,
            Param::V => &grads.dv,
            Param::W(l, part) => {
                let lw = &grads.dw.levels[l];
                [&lw.wk, &lw.wv, &lw.bk, &lw.bv][part]
            }
        };
        for (idx, &want) in analytic.iter().enumerate() {
            let (mut q2, mut k2, mut v2, mut w2) = (q.clone(), k.clone(), v.clone(), w.clone());
            let value: &mut f32 = match param {
                Param::Q => &mut q2[idx],
                Param::K => &mut k2[idx],
                Param::V => &mut v2[idx],
                Param::W(l, part) => {
                    let lw = &mut w2.levels[l];
                    &mut [&mut lw.wk, &mut lw.wv, &mut lw.bk, &mut lw.bv][part][idx]
                }
            };
            let x = *value;
            let (up, down) = (x + h, x - h);
            *value = up;
            let lu = loss(&q2, &k2, &v2, &d_o, shape, cfg, &w2);
            let value: &mut f32 = match param {
                Param::Q => &mut q2[idx],
                Param::K => &mut k2[idx],
                Param::V => &mut v2[idx],
                Param::W(l, part) => {
                    let lw = &mut w2.levels[l];
                    &mut [&mut lw.wk, &mut lw.wv, &mut lw.bk, &mut lw.bv][part][idx]
                }
            };
            *value = down;
            let ld = loss(&q2, &k2, &v2, &d_o, shape, cfg, &w2);
            let numeric = (lu - ld) / (up as f64 - down as f64);
            let err = (numeric - want as f64).abs() / (want as f64).abs().max(1.0);
            assert!(
                err < 1e-4,
                "{label}: d loss / d {param:?}[{idx}]: backward {want}, finite difference {numeric}"
            );
            worst = worst.max(err);
        }
    }
    worst
}

#[test]
fn backward_matches_finite_differences_1d() {
    let mut worst = 0.0f64;
    let mut cases = 0;
    for (i, kind) in [
        Downsampling::Mean,
        Downsampling::Basis,
        Downsampling::Depthwise,
    ]
    .into_iter()
    .enumerate()
    {
        for causal in [false, true] {
            for multiplicity in [true, false] {
                // n = 13 on m = 2 pads to 16 (two coarse levels); p = 2 splits each group.
                let cfg = config(2, 2, causal, kind, multiplicity);
                let shape = Shape::new(1, 2, 13, 3);
                let label = format!("1D {kind:?} causal={causal} multiplicity={multiplicity}");
                worst = worst.max(check(&label, shape, &cfg, 100 + i as u64));
                cases += 1;
            }
        }
    }
    // p = 1 and a longer sequence with three levels.
    let cfg = config(2, 1, false, Downsampling::Depthwise, true);
    worst = worst.max(check("1D p=1 n=30", Shape::new(2, 1, 30, 2), &cfg, 7));
    eprintln!(
        "1D backward vs finite differences: {} configurations, largest relative error {worst:.2e}",
        cases + 1
    );
}

#[test]
fn backward_matches_finite_differences_2d() {
    let mut worst = 0.0f64;
    let mut cases = 0;
    for (i, kind) in [
        Downsampling::Mean,
        Downsampling::Basis,
        Downsampling::Depthwise,
    ]
    .into_iter()
    .enumerate()
    {
        for multiplicity in [true, false] {
            for (h, w, p) in [(5, 7, 1), (6, 5, 4)] {
                // 5 x 7 on m = 2 pads to 8 x 8: one coarse level of 2 x 2 cells;
                // p = 4 splits each cell into four 1 x 1 sub-blocks.
                let cfg = FmaConfig {
                    downsampling: kind,
                    multiplicity,
                    ..FmaConfig::new(2, p).image(h, w)
                };
                let label = format!("2D {h}x{w} p={p} {kind:?} multiplicity={multiplicity}");
                worst = worst.max(check(
                    &label,
                    Shape::new(1, 2, h * w, 2),
                    &cfg,
                    200 + i as u64,
                ));
                cases += 1;
            }
        }
    }
    // 9 x 5 on m = 2 pads to 16 x 16: two coarse levels.
    let cfg = FmaConfig {
        downsampling: Downsampling::Basis,
        ..FmaConfig::new(2, 1).image(9, 5)
    };
    worst = worst.max(check("2D 9x5 two levels", Shape::new(1, 1, 45, 2), &cfg, 9));
    eprintln!(
        "2D backward vs finite differences: {} configurations, largest relative error {worst:.2e}",
        cases + 1
    );
}

#[test]
fn backward_rejects_a_gradient_of_the_wrong_shape() {
    let shape = Shape::new(1, 1, 8, 4);
    let x = random(1, shape.elements());
    let err = fma_backward(&x, &x, &x, &x[..7], shape, &FmaConfig::new(2, 1), None).unwrap_err();
    assert!(err.to_string().contains("do"), "{err}");
}
