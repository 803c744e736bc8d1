//! The O(n) variant (`FmaConfig::downsample_queries`, docs/fma.md §13) on the GPU: its exact
//! oracles, and the GPU against the direct definition (every query's score list with its
//! segments' coarse queries, one softmax, in f64), on both kernel paths. Few distinct shapes:
//! lavapipe compiles every pipeline cold in CI.

mod common;
use common::*;
use multipole::{
    DownsampleWeights, Downsampling, FmaConfig, FmaError, FmaPlan, ForwardKernels, Geometry,
    LevelWeights, Shape, reference,
};

/// A config of the variant: sequence, or image when `image` is given.
fn linear_config(
    m: usize,
    p: usize,
    kind: Downsampling,
    multiplicity: bool,
    image: Option<(usize, usize)>,
) -> FmaConfig {
    let cfg = FmaConfig {
        downsample_queries: true,
        ..config(m, p, false, kind, multiplicity)
    };
    match image {
        Some((h, w)) => cfg.image(h, w),
        None => cfg,
    }
}

/// Random learned weights near `Mean` for keys, values and queries (None for `Mean`).
fn linear_weights(seed: u64, cfg: &FmaConfig, g: &Geometry, d: usize) -> Option<DownsampleWeights> {
    let kind = cfg.downsampling;
    if !kind.is_learned() {
        return None;
    }
    let mut w = weights(seed, kind, g, d).with_query_weights();
    for (i, lw) in w.levels.iter_mut().enumerate() {
        for (j, part) in [&mut lw.wq, &mut lw.bq].into_iter().enumerate() {
            let noise = random(seed ^ (1000 + 2 * i + j) as u64, part.len());
            for (x, e) in part.iter_mut().zip(noise) {
                *x += 0.05 * e;
            }
        }
    }
    Some(w)
}

/// The direct definition of docs/fma.md §13 in f64, from the reference's downsampling: for
/// each query, its near keys and, at every level, the coarse keys of its cell's interaction
/// list scored with the coarse query of its segment; one softmax.
fn direct(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    cfg: &FmaConfig,
    w: Option<&DownsampleWeights>,
) -> (Vec<f32>, Vec<f32>) {
    let (o, lse) = direct64(q, k, v, shape, cfg, w);
    (
        o.iter().map(|&x| x as f32).collect(),
        lse.iter().map(|&x| x as f32).collect(),
    )
}

fn direct64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    cfg: &FmaConfig,
    w: Option<&DownsampleWeights>,
) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (shape.n, shape.d);
    let g = Geometry::new(n, cfg).unwrap();
    let kind = cfg.downsampling;
    let w = w.cloned().unwrap_or_default();
    // Coarse queries: the downsampling of Q with the query weights in the keys' place.
    let mut wq = w.clone();
    for lw in &mut wq.levels {
        lw.wk = lw.wq.clone();
        lw.bk = lw.bq.clone();
    }
    let tau = cfg.scale_for(d) as f64;
    let (mut o, mut lse) = (vec![0f64; shape.elements()], vec![0f64; shape.bh() * n]);
    for h in 0..shape.bh() {
        let at = h * n * d..(h + 1) * n * d;
        let (qh, kh, vh) = (&q[at.clone()], &k[at.clone()], &v[at]);
        let kv = reference::downsample(&g, kind, &w, kh, vh, d);
        let qc = reference::downsample(&g, kind, &wq, qh, qh, d);
        for i in 0..n {
            let mut scores: Vec<(f64, Vec<f64>)> = Vec::new();
            for f in g.near_cells(g.fine_cell_of(i)) {
                for (y, x) in g.fine_cell_positions(f) {
                    if let Some(j) = g.token_at(y, x) {
                        let z = (0..d)
                            .map(|c| qh[i * d + c] as f64 * kh[j * d + c] as f64)
                            .sum::<f64>();
                        let vj = (0..d).map(|c| vh[j * d + c] as f64).collect();
                        scores.push((tau * z, vj));
                    }
                }
            }
            for l in 1..=g.num_levels() {
                let seg = g.token_segment(l, i);
                let (_, grp) = g.cell_level(seg / g.p).unwrap();
                let base = g.levels[l - 1].cell_offset;
                for far in g.far_cells(l, grp) {
                    for t in 0..g.p {
                        let key = (base + far) * g.p + t;
                        let mu = kv.count[key];
                        if mu == 0 {
                            continue;
                        }
                        let z = (0..d).map(|c| qc.k[seg][c] * kv.k[key][c]).sum::<f64>();
                        let bias = if cfg.multiplicity {
                            (mu as f64).ln()
                        } else {
                            0.0
                        };
                        scores.push((tau * z + bias, kv.v[key].clone()));
                    }
                }
            }
            let mx = scores.iter().map(|s| s.0).fold(f64::MIN, f64::max);
            let sum: f64 = scores.iter().map(|s| (s.0 - mx).exp()).sum();
            for c in 0..d {
                let x: f64 = scores.iter().map(|s| (s.0 - mx).exp() * s.1[c]).sum();
                o[(h * n + i) * d + c] = x / sum;
            }
            lse[h * n + i] = mx + sum.ln();
        }
    }
    (o, lse)
}

/// One shape of the sweep.
#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    heads: usize,
    n: usize,
    d: usize,
    m: usize,
    p: usize,
    kind: Downsampling,
    multiplicity: bool,
    image: Option<(usize, usize)>,
}

/// Sequences and images, every kind, multiplicity on and off, padding, batch x heads > 1, a
/// head dim that is no multiple of 4 (the Direct kernels then fall back to Tiled).
const CASES: [Case; 5] = [
    Case {
        batch: 2,
        heads: 1,
        n: 200,
        d: 16,
        m: 8,
        p: 2,
        kind: Downsampling::Mean,
        multiplicity: true,
        image: None,
    },
    Case {
        batch: 1,
        heads: 2,
        n: 256,
        d: 16,
        m: 8,
        p: 4,
        kind: Downsampling::Basis,
        multiplicity: false,
        image: None,
    },
    Case {
        batch: 1,
        heads: 1,
        n: 77,
        d: 3,
        m: 8,
        p: 1,
        kind: Downsampling::Depthwise,
        multiplicity: true,
        image: None,
    },
    Case {
        batch: 2,
        heads: 1,
        n: 13 * 11,
        d: 16,
        m: 2,
        p: 4,
        kind: Downsampling::Depthwise,
        multiplicity: true,
        image: Some((13, 11)),
    },
    Case {
        batch: 1,
        heads: 2,
        n: 16 * 16,
        d: 16,
        m: 2,
        p: 1,
        kind: Downsampling::Mean,
        multiplicity: false,
        image: Some((16, 16)),
    },
];

fn case_config(c: &Case) -> FmaConfig {
    linear_config(c.m, c.p, c.kind, c.multiplicity, c.image)
}

#[test]
fn gpu_forward_matches_the_direct_definition() {
    for c in CASES {
        let shape = Shape::new(c.batch, c.heads, c.n, c.d);
        let cfg = case_config(&c);
        let g = Geometry::new(c.n, &cfg).unwrap();
        assert!(g.num_levels() >= 2, "{c:?} should have several levels");
        let w = linear_weights(c.n as u64, &cfg, &g, c.d);
        let (q, k, v) = qkv(7 + c.n as u64, shape);
        let (o, lse) = direct(&q, &k, &v, shape, &cfg, w.as_ref());
        for kernels in FORWARD_KERNELS {
            let ctx = gpu_with(kernels);
            let got = FmaPlan::new(ctx, shape, &cfg, w.as_ref())
                .unwrap()
                .forward_blocking(ctx, &q, &k, &v)
                .unwrap();
            let what = format!("{c:?} {kernels:?}");
            assert_close(&format!("o {what}"), &got.o, &o, &v, 1e-4);
            assert_close(&format!("lse {what}"), &got.lse, &lse, &[1.0], 1e-4);
        }
        // The variant is not the O(n log n) one: the test sees the coarse queries.
        let w = w.map(|mut w| {
            for lw in &mut w.levels {
                (lw.wq, lw.bq) = (Vec::new(), Vec::new());
            }
            w
        });
        let fma = reference::fma_forward(
            &q,
            &k,
            &v,
            shape,
            &FmaConfig {
                downsample_queries: false,
                ..cfg.clone()
            },
            w.as_ref(),
        )
        .unwrap();
        assert!(max_abs_diff(&fma.o, &o).0 > 1e-4, "{c:?}");
    }
}

/// Values constant over every `block`-token piece of each padded row (1D: `w` = n) or square
/// (2D) of the grid.
fn blockwise_constant(seed: u64, shape: Shape, w: usize, block: usize) -> Vec<f32> {
    let h = shape.n / w;
    let (by, bx) = (h.div_ceil(block), w.div_ceil(block));
    let pieces = random(seed, shape.bh() * by * bx * shape.d);
    let mut out = vec![0.0; shape.elements()];
    for head in 0..shape.bh() {
        for i in 0..shape.n {
            let piece = head * by * bx + ((i / w) / block) * bx + (i % w) / block;
            let row = (head * shape.n + i) * shape.d;
            out[row..row + shape.d].copy_from_slice(&pieces[piece * shape.d..][..shape.d]);
        }
    }
    out
}

/// Oracles 1 and 2 of docs/fma.md §13: n' = 2m equals dense; `Mean` with Q, K and V constant
/// over every coarsest segment equals dense (each coarse query and key stands for tokens
/// equal to it).
#[test]
fn gpu_oracles_equal_dense() {
    // (n, image, m, p, d): 1D n' = 2m, 1D and 2D constant pieces (with padding in 2D).
    for (n, image, m, p, d) in [
        (13, None, 8, 2, 16),
        (256, None, 8, 2, 16),
        (30 * 32, Some((30, 32)), 2, 4, 16),
    ] {
        let cfg = linear_config(m, p, Downsampling::Mean, true, image);
        let g = Geometry::new(n, &cfg).unwrap();
        let shape = Shape::new(1, 2, n, d);
        let (width, block) = match image {
            Some((_, w)) => (w, g.pad_w / (4 * p.isqrt())),
            None if g.num_levels() == 0 => (n, 1),
            None => (n, g.n_pad() / (4 * p)),
        };
        let [q, k, v] = [1, 2, 3].map(|s| blockwise_constant(s + n as u64, shape, width, block));
        let dense = reference::dense(&q, &k, &v, shape, false, cfg.scale_for(d)).unwrap();
        for kernels in FORWARD_KERNELS {
            let ctx = gpu_with(kernels);
            let out = FmaPlan::new(ctx, shape, &cfg, None)
                .unwrap()
                .forward_blocking(ctx, &q, &k, &v)
                .unwrap();
            let what = format!("n={n} {image:?} {kernels:?}");
            assert_close(&format!("o {what}"), &out.o, &dense.o, &v, 1e-4);
            assert_close(&format!("lse {what}"), &out.lse, &dense.lse, &[1.0], 1e-4);
        }
    }
}

/// What the GPU does not run is refused with a typed error that says so.
#[test]
fn unsupported_combinations_are_refused() {
    let ctx = gpu_with(ForwardKernels::Tiled);
    let shape = Shape::new(1, 1, 64, 8);
    let causal = FmaConfig {
        causal: true,
        ..linear_config(8, 2, Downsampling::Mean, true, None)
    };
    assert!(matches!(
        FmaPlan::new(ctx, shape, &causal, None),
        Err(FmaError::InvalidConfig(_))
    ));
    let f16 = FmaConfig {
        precision: multipole::Precision::F16,
        ..linear_config(8, 2, Downsampling::Mean, true, None)
    };
    match FmaPlan::new(ctx, shape, &f16, None) {
        Err(FmaError::InvalidConfig(m)) => assert!(m.contains("f32"), "{m}"),
        Err(FmaError::MissingFeature { .. }) => {}
        other => panic!("f16 with downsample_queries: {:?}", other.err()),
    }
}

/// Central finite differences of the direct definition's loss sum(dO * O), in f64 from f32
/// inputs (the step is the f32 difference actually taken).
struct Loss<'a> {
    shape: Shape,
    cfg: &'a FmaConfig,
    d_o: Vec<f32>,
}

impl Loss<'_> {
    fn eval(&self, qkv: &[Vec<f32>; 3], w: Option<&DownsampleWeights>) -> f64 {
        let (o, _) = direct64(&qkv[0], &qkv[1], &qkv[2], self.shape, self.cfg, w);
        o.iter().zip(&self.d_o).map(|(a, &b)| a * b as f64).sum()
    }

    /// d loss / d x for the value `x` that `set` replaces.
    fn slope(&self, x: f32, mut at: impl FnMut(f32) -> f64) -> f32 {
        let h = 1.0 / 64.0;
        let (up, down) = (x + h, x - h);
        ((at(up) - at(down)) / (up - down) as f64) as f32
    }
}

/// The weight vectors of a level in `pack_weights` order, by index.
fn part(lw: &mut LevelWeights, j: usize) -> &mut Vec<f32> {
    match j {
        0 => &mut lw.wk,
        1 => &mut lw.wv,
        2 => &mut lw.bk,
        3 => &mut lw.bv,
        4 => &mut lw.wq,
        _ => &mut lw.bq,
    }
}

/// The GPU backward (both kernel paths) against finite differences of the direct definition:
/// dQ, dK, dV and every weight gradient, wq and bq included. Small shapes: each difference
/// runs the f64 forward twice.
#[test]
fn gpu_backward_matches_finite_differences() {
    for c in [
        Case {
            batch: 1,
            heads: 2,
            n: 61,
            d: 4,
            m: 4,
            p: 2,
            kind: Downsampling::Depthwise,
            multiplicity: true,
            image: None,
        },
        Case {
            batch: 1,
            heads: 1,
            n: 7 * 9,
            d: 3,
            m: 2,
            p: 4,
            kind: Downsampling::Basis,
            multiplicity: false,
            image: Some((7, 9)),
        },
        Case {
            batch: 2,
            heads: 1,
            n: 64,
            d: 4,
            m: 4,
            p: 4,
            kind: Downsampling::Mean,
            multiplicity: true,
            image: None,
        },
    ] {
        let shape = Shape::new(c.batch, c.heads, c.n, c.d);
        let cfg = case_config(&c);
        let g = Geometry::new(c.n, &cfg).unwrap();
        assert!(g.num_levels() >= 2, "{c:?}");
        let w = linear_weights(3 + c.n as u64, &cfg, &g, c.d);
        let (q, k, v) = qkv(11 + c.n as u64, shape);
        let loss = Loss {
            shape,
            cfg: &cfg,
            d_o: random(99, shape.elements()),
        };
        let qkv = [q, k, v];
        // Finite differences of every input element and weight.
        let mut want = Vec::new();
        for t in 0..3 {
            let mut x = qkv.clone();
            want.push(
                (0..shape.elements())
                    .map(|e| {
                        let x0 = qkv[t][e];
                        loss.slope(x0, |y| {
                            x[t][e] = y;
                            let l = loss.eval(&x, w.as_ref());
                            x[t][e] = x0;
                            l
                        })
                    })
                    .collect::<Vec<f32>>(),
            );
        }
        let mut want_w = Vec::new();
        if let Some(w0) = &w {
            let mut wx = w0.clone();
            for (i, lw0) in w0.levels.iter().enumerate() {
                for j in 0..6 {
                    let mut lw0 = lw0.clone();
                    for e in 0..part(&mut lw0, j).len() {
                        let x0 = part(&mut lw0, j)[e];
                        want_w.push(loss.slope(x0, |y| {
                            part(&mut wx.levels[i], j)[e] = y;
                            let l = loss.eval(&qkv, Some(&wx));
                            part(&mut wx.levels[i], j)[e] = x0;
                            l
                        }));
                    }
                }
            }
        }
        for kernels in FORWARD_KERNELS {
            let ctx = gpu_with(kernels);
            let plan = FmaPlan::new(ctx, shape, &cfg, w.as_ref()).unwrap();
            let out = plan
                .forward_blocking(ctx, &qkv[0], &qkv[1], &qkv[2])
                .unwrap();
            let tape = multipole::Tape {
                q: &qkv[0],
                k: &qkv[1],
                v: &qkv[2],
                out,
            };
            let got = plan.backward_blocking(ctx, &tape, &loss.d_o).unwrap();
            let what = format!("{c:?} {kernels:?}");
            // Finite differences of an f64 forward: 1e-3 of the largest gradient.
            for (name, got, want) in [
                ("dq", &got.dq, &want[0]),
                ("dk", &got.dk, &want[1]),
                ("dv", &got.dv, &want[2]),
            ] {
                assert_close(&format!("{name} {what}"), got, want, want, 1e-3);
            }
            if w.is_some() {
                let mut dw = got.dw.clone();
                let flat: Vec<f32> = dw
                    .levels
                    .iter_mut()
                    .flat_map(|lw| (0..6).flat_map(|j| part(lw, j).clone()).collect::<Vec<_>>())
                    .collect();
                assert_close(&format!("dw {what}"), &flat, &want_w, &want_w, 1e-3);
            }
        }
    }
}

/// The tolerance of tests/backward_gpu.rs: max |g_gpu - g_ref| <= 1e-4 * max(max |g_ref|, 1e-2).
fn compare_grad(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1e-2f32, |m, x| m.max(x.abs()));
    assert_close(what, got, want, &[scale], 1e-4);
}

/// The GPU against the CPU reference of the variant (`reference::fma_forward` and
/// `fma_backward` with `downsample_queries`), forward and backward, every gradient, on both
/// kernel paths, at the tolerances of tests/gpu_vs_reference.rs and tests/backward_gpu.rs.
#[test]
fn gpu_matches_the_reference() {
    for c in CASES {
        let shape = Shape::new(c.batch, c.heads, c.n, c.d);
        let cfg = case_config(&c);
        let g = Geometry::new(c.n, &cfg).unwrap();
        let w = linear_weights(5 + c.n as u64, &cfg, &g, c.d);
        let (q, k, v) = qkv(13 + c.n as u64, shape);
        let d_o = random(17 + c.n as u64, shape.elements());
        let want = reference::fma_forward(&q, &k, &v, shape, &cfg, w.as_ref()).unwrap();
        let want_grads =
            reference::fma_backward(&q, &k, &v, &d_o, shape, &cfg, w.as_ref()).unwrap();
        for kernels in FORWARD_KERNELS {
            let ctx = gpu_with(kernels);
            let what = format!("{c:?} {kernels:?}");
            let plan = FmaPlan::new(ctx, shape, &cfg, w.as_ref()).unwrap();
            let out = plan.forward_blocking(ctx, &q, &k, &v).unwrap();
            assert_close(&format!("o {what}"), &out.o, &want.o, &v, 1e-4);
            assert_close(&format!("lse {what}"), &out.lse, &want.lse, &[1.0], 1e-4);
            let tape = multipole::Tape {
                q: &q,
                k: &k,
                v: &v,
                out,
            };
            let got = plan.backward_blocking(ctx, &tape, &d_o).unwrap();
            for (name, a, b) in [
                ("dq", &got.dq, &want_grads.dq),
                ("dk", &got.dk, &want_grads.dk),
                ("dv", &got.dv, &want_grads.dv),
            ] {
                compare_grad(&format!("{name} {what}"), a, b);
            }
            assert_eq!(got.dw.levels.len(), want_grads.dw.levels.len(), "{what}");
            for (l, (a, b)) in got.dw.levels.iter().zip(&want_grads.dw.levels).enumerate() {
                for (name, x, y) in [
                    ("dwk", &a.wk, &b.wk),
                    ("dwv", &a.wv, &b.wv),
                    ("dbk", &a.bk, &b.bk),
                    ("dbv", &a.bv, &b.bv),
                    ("dwq", &a.wq, &b.wq),
                    ("dbq", &a.bq, &b.bq),
                ] {
                    compare_grad(&format!("{name}.{} {what}", l + 1), x, y);
                }
            }
            // Deterministic, as the other variant: a second run gives the same bits.
            let again = plan.backward_blocking(ctx, &tape, &d_o).unwrap();
            assert_eq!(again.dq, got.dq, "{what}");
            assert_eq!(again.dw, got.dw, "{what}");
        }
    }
}

/// Inputs over the binding limit are split over heads: the coarse queries, the per-segment
/// buffers and the query weights' gradients (added over chunks) follow the chunks. Every
/// output and gradient against the reference: `Basis` (wk, wv, wq) and `Depthwise`, whose
/// biases bk, bv and bq are gradients too.
#[test]
fn gpu_splits_the_variant_over_heads() {
    let ctx = small_device();
    // Depthwise's weights (d per coarse key) fit the small binding at d = 8.
    for (kind, d) in [(Downsampling::Basis, 16), (Downsampling::Depthwise, 8)] {
        let c = Case {
            batch: 2,
            heads: 3,
            n: 500,
            d,
            m: 8,
            p: 2,
            kind,
            multiplicity: true,
            image: None,
        };
        let shape = Shape::new(c.batch, c.heads, c.n, c.d);
        let cfg = case_config(&c);
        let g = Geometry::new(c.n, &cfg).unwrap();
        let w = linear_weights(23, &cfg, &g, c.d);
        let (q, k, v) = qkv(29, shape);
        let d_o = random(31, shape.elements());
        let plan = FmaPlan::new(&ctx, shape, &cfg, w.as_ref()).unwrap();
        assert!(plan.chunk_count() > 1, "{kind:?}: the test must split");
        let out = plan.forward_blocking(&ctx, &q, &k, &v).unwrap();
        let want = reference::fma_forward(&q, &k, &v, shape, &cfg, w.as_ref()).unwrap();
        assert_close(&format!("o {kind:?}"), &out.o, &want.o, &v, 1e-4);
        assert_close(&format!("lse {kind:?}"), &out.lse, &want.lse, &[1.0], 1e-4);
        let tape = multipole::Tape {
            q: &q,
            k: &k,
            v: &v,
            out,
        };
        let got = plan.backward_blocking(&ctx, &tape, &d_o).unwrap();
        let want = reference::fma_backward(&q, &k, &v, &d_o, shape, &cfg, w.as_ref()).unwrap();
        for (name, a, b) in [
            ("dq", &got.dq, &want.dq),
            ("dk", &got.dk, &want.dk),
            ("dv", &got.dv, &want.dv),
        ] {
            compare_grad(&format!("{name} {kind:?}"), a, b);
        }
        assert_eq!(got.dw.levels.len(), g.num_levels(), "{kind:?}");
        assert_eq!(want.dw.levels.len(), g.num_levels(), "{kind:?}");
        let biases = kind == Downsampling::Depthwise;
        for (l, (a, b)) in got.dw.levels.iter().zip(&want.dw.levels).enumerate() {
            for (name, x, y, present) in [
                ("dwk", &a.wk, &b.wk, true),
                ("dwv", &a.wv, &b.wv, true),
                ("dbk", &a.bk, &b.bk, biases),
                ("dbv", &a.bv, &b.bv, biases),
                ("dwq", &a.wq, &b.wq, true),
                ("dbq", &a.bq, &b.bq, biases),
            ] {
                let what = format!("{name}.{} {kind:?}", l + 1);
                // Basis has no biases: their gradients are empty on both sides.
                assert_eq!(!y.is_empty(), present, "{what}");
                compare_grad(&what, x, y);
            }
        }
    }
}
