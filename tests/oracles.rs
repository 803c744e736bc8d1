//! The exact oracles of docs/fma.md §11, on the CPU reference and on the GPU.

mod common;
use common::*;
use multipole::{Downsampling, FmaConfig, FmaPlan, Geometry, Shape, reference};

/// Oracle 3: near field and interaction lists partition the keys, for every query position.
#[test]
fn partition_property_1d() {
    let mut checked = 0;
    for causal in [false, true] {
        for m in [1, 2, 4, 8, 16, 32] {
            for n in [1, 2, 3, 5, 8, 17, 31, 64, 100, 129, 257, 600, 1024, 1500] {
                let cfg = FmaConfig {
                    causal,
                    ..FmaConfig::new(m, 1)
                };
                let g = Geometry::new(n, &cfg).unwrap();
                let np = g.n_pad();
                for i in 0..np {
                    let mut seen = vec![0u32; np];
                    let f = g.fine_cell_at(0, i);
                    for cell in g.near_cells(f) {
                        for (y, x) in g.fine_cell_positions(cell) {
                            let j = y * g.pad_w + x;
                            if !causal || j <= i {
                                seen[j] += 1;
                            }
                        }
                    }
                    for l in 1..=g.num_levels() {
                        for grp in g.far_cells(l, g.cell_at_level(f, l)) {
                            for (y, x) in g.group_positions(l, grp) {
                                seen[y * g.pad_w + x] += 1;
                            }
                        }
                    }
                    let end = if causal { i + 1 } else { np };
                    for (j, &c) in seen.iter().enumerate() {
                        let want = u32::from(j < end);
                        assert_eq!(
                            c, want,
                            "n={n} m={m} causal={causal} query {i}: key {j} covered {c} times"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000);
}

/// Oracle 1: with n' = 2m there are no coarse levels and FMA is dense attention.
#[test]
fn two_cells_equal_dense() {
    let ctx = gpu();
    for (n, m, d, causal) in [
        (8, 4, 16, false),
        (5, 4, 3, true),
        (64, 32, 64, false),
        (40, 32, 32, true),
        (1, 1, 1, false),
    ] {
        let shape = Shape::new(2, 1, n, d);
        let (q, k, v) = qkv(n as u64, shape);
        let cfg = FmaConfig {
            causal,
            ..FmaConfig::new(m, 1)
        };
        assert_eq!(Geometry::new(n, &cfg).unwrap().num_levels(), 0);
        let dense = reference::dense(&q, &k, &v, shape, causal, cfg.scale_for(d)).unwrap();
        let cpu = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
        assert_close("cpu o", &cpu.o, &dense.o, &v, 1e-6);
        assert_close("cpu lse", &cpu.lse, &dense.lse, &[1.0], 1e-6);
        let gpu_out = FmaPlan::new(ctx, shape, &cfg, None)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert_close("gpu o", &gpu_out.o, &dense.o, &v, 1e-4);
        assert_close("gpu lse", &gpu_out.lse, &dense.lse, &[1.0], 1e-4);
    }
}

/// Keys and values constant over every segment of length n'/(4p), the coarsest segments.
fn piecewise_constant(seed: u64, shape: Shape, seg: usize) -> Vec<f32> {
    let pieces = random(seed, shape.bh() * shape.n.div_ceil(seg) * shape.d);
    let mut out = vec![0.0; shape.elements()];
    for h in 0..shape.bh() {
        for i in 0..shape.n {
            for c in 0..shape.d {
                let piece = (h * shape.n.div_ceil(seg) + i / seg) * shape.d + c;
                out[(h * shape.n + i) * shape.d + c] = pieces[piece];
            }
        }
    }
    out
}

/// Oracle 2: `Mean` with multiplicity on piecewise-constant keys and values is exact.
#[test]
fn mean_on_piecewise_constant_equals_dense() {
    let ctx = gpu();
    for (n, m, p, d, causal) in [
        (256, 4, 1, 16, false),
        (256, 8, 2, 32, true),
        (1000, 16, 4, 16, false),
        (700, 4, 4, 8, true),
        (2048, 32, 4, 64, false),
    ] {
        let cfg = FmaConfig {
            causal,
            ..FmaConfig::new(m, p)
        };
        let g = Geometry::new(n, &cfg).unwrap();
        assert!(
            g.num_levels() >= 2,
            "the oracle should exercise several levels"
        );
        let seg = g.n_pad() / (4 * p);
        let shape = Shape::new(1, 2, n, d);
        let q = random(n as u64, shape.elements());
        let k = piecewise_constant(1 + n as u64, shape, seg);
        let v = piecewise_constant(2 + n as u64, shape, seg);
        let dense = reference::dense(&q, &k, &v, shape, causal, cfg.scale_for(d)).unwrap();
        let cpu = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
        assert_close(
            &format!("cpu n={n} m={m} p={p}"),
            &cpu.o,
            &dense.o,
            &v,
            1e-6,
        );
        assert_close("cpu lse", &cpu.lse, &dense.lse, &[1.0], 1e-6);
        let out = FmaPlan::new(ctx, shape, &cfg, None)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert_close(
            &format!("gpu n={n} m={m} p={p}"),
            &out.o,
            &dense.o,
            &v,
            1e-4,
        );
        assert_close("gpu lse", &out.lse, &dense.lse, &[1.0], 1e-4);
        // And the oracle has teeth: on generic keys FMA is not dense.
        let k2 = random(9, shape.elements());
        let approx = reference::fma_forward(&q, &k2, &v, shape, &cfg, None).unwrap();
        let exact = reference::dense(&q, &k2, &v, shape, causal, cfg.scale_for(d)).unwrap();
        assert!(max_abs_diff(&approx.o, &exact.o).0 > 1e-4);
    }
}

/// Oracle 4: in the causal variant, changing anything after position t never changes O[..=t].
#[test]
fn causal_outputs_ignore_the_future() {
    let ctx = gpu();
    for (n, m, p, kind) in [
        (300, 8, 2, Downsampling::Mean),
        (513, 4, 4, Downsampling::Depthwise),
        (200, 16, 1, Downsampling::Basis),
    ] {
        let d = 16;
        let shape = Shape::new(1, 1, n, d);
        let cfg = config(m, p, true, kind, true);
        let g = Geometry::new(n, &cfg).unwrap();
        let w = weights(5, kind, &g, d);
        let (q, k, v) = qkv(11, shape);
        let plan = FmaPlan::new(ctx, shape, &cfg, Some(&w)).unwrap();
        let base_gpu = plan.forward_blocking(ctx, &q, &k, &v).unwrap();
        let base_cpu = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
        for t in [0, m - 1, m, n / 2, n - 2] {
            let change = |x: &[f32], seed: u64| -> Vec<f32> {
                let noise = random(seed, x.len());
                x.iter()
                    .enumerate()
                    .map(|(i, &a)| if i / d > t { a + 3.0 * noise[i] } else { a })
                    .collect()
            };
            let (q2, k2, v2) = (change(&q, 1), change(&k, 2), change(&v, 3));
            let g2 = plan.forward_blocking(ctx, &q2, &k2, &v2).unwrap();
            let c2 = reference::fma_forward(&q2, &k2, &v2, shape, &cfg, Some(&w)).unwrap();
            let upto = (t + 1) * d;
            assert_eq!(g2.o[..upto], base_gpu.o[..upto], "gpu: n={n} t={t}");
            assert_eq!(c2.o[..upto], base_cpu.o[..upto], "cpu: n={n} t={t}");
            assert_ne!(
                g2.o[upto..],
                base_gpu.o[upto..],
                "the change must reach later outputs"
            );
        }
    }
}

/// Oracle 5: permuting batch x heads permutes the output the same way.
#[test]
fn permuting_heads_permutes_outputs() {
    let ctx = gpu();
    let shape = Shape::new(2, 3, 150, 32);
    let cfg = config(8, 2, false, Downsampling::Depthwise, true);
    let g = Geometry::new(shape.n, &cfg).unwrap();
    let w = weights(8, Downsampling::Depthwise, &g, 32);
    let (q, k, v) = qkv(21, shape);
    let perm = [4, 2, 5, 0, 3, 1];
    let block = shape.n * shape.d;
    let permute = |x: &[f32], len: usize| -> Vec<f32> {
        perm.iter()
            .flat_map(|&h| x[h * len..(h + 1) * len].to_vec())
            .collect()
    };
    let plan = FmaPlan::new(ctx, shape, &cfg, Some(&w)).unwrap();
    let a = plan.forward_blocking(ctx, &q, &k, &v).unwrap();
    let b = plan
        .forward_blocking(
            ctx,
            &permute(&q, block),
            &permute(&k, block),
            &permute(&v, block),
        )
        .unwrap();
    assert_eq!(b.o, permute(&a.o, block));
    assert_eq!(b.lse, permute(&a.lse, shape.n));
    let ca = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
    let cb = reference::fma_forward(
        &permute(&q, block),
        &permute(&k, block),
        &permute(&v, block),
        shape,
        &cfg,
        Some(&w),
    )
    .unwrap();
    assert_eq!(cb.o, permute(&ca.o, block));
}
