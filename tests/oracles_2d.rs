//! The exact oracles of docs/fma.md §11 for images (§8), on the CPU reference and
//! on the GPU.

mod common;
use common::*;
use multipole::{FmaConfig, FmaPlan, Geometry, Shape, reference};

/// Oracle 3 in 2D: for every padded query position, the 3 x 3 near cells and the interaction
/// lists of all levels cover every padded grid position exactly once.
#[test]
fn partition_property_2d() {
    let (mut checked, mut widest_far, mut widest_near) = (0, 0, 0);
    for (h, w, m) in [
        (1, 1, 1),
        (3, 5, 1),
        (16, 16, 1),
        (7, 13, 2),
        (17, 9, 2),
        (32, 32, 2),
        (20, 48, 4),
        (33, 33, 4),
        (64, 64, 8),
        (100, 30, 8),
    ] {
        let cfg = FmaConfig::new(m, 1).image(h, w);
        let g = Geometry::new(h * w, &cfg).unwrap();
        assert_eq!(g.pad_h, g.pad_w, "the grid is padded to a square");
        assert!(g.pad_h >= h.max(w) && g.pad_h >= 2 * m);
        let side = g.pad_w;
        for y in 0..side {
            for x in 0..side {
                let mut seen = vec![0u32; side * side];
                let f = g.fine_cell_at(y, x);
                let near = g.near_cells(f);
                widest_near = widest_near.max(near.len());
                for cell in near {
                    for (a, b) in g.fine_cell_positions(cell) {
                        seen[a * side + b] += 1;
                    }
                }
                for l in 1..=g.num_levels() {
                    let far = g.far_cells(l, g.cell_at_level(f, l));
                    widest_far = widest_far.max(far.len());
                    for grp in far {
                        for (a, b) in g.group_positions(l, grp) {
                            seen[a * side + b] += 1;
                        }
                    }
                }
                if let Some((at, &c)) = seen.iter().enumerate().find(|&(_, &c)| c != 1) {
                    panic!(
                        "{h}x{w} m={m}: query ({y}, {x}) covers position ({}, {}) {c} times",
                        at / side,
                        at % side
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20_000);
    // The lists reach the sizes of docs/fma.md §8 somewhere: 3 x 3 near, 6 x 6 - 3 x 3 far.
    assert_eq!(widest_near, 9);
    assert_eq!(widest_far, 27);
}

/// Oracle 1 in 2D: with side' = 2m there are no coarse levels and FMA is dense attention.
#[test]
fn two_cells_per_side_equal_dense() {
    let ctx = gpu();
    for (h, w, m, d) in [
        (8, 8, 4, 16),
        (5, 7, 4, 3),
        (16, 16, 8, 64),
        (1, 2, 1, 8),
        (9, 16, 8, 32),
    ] {
        let shape = Shape::new(2, 1, h * w, d);
        let (q, k, v) = qkv((h * 100 + w) as u64, shape);
        let cfg = FmaConfig::new(m, 1).image(h, w);
        assert_eq!(Geometry::new(h * w, &cfg).unwrap().num_levels(), 0);
        let dense = reference::dense(&q, &k, &v, shape, false, cfg.scale_for(d)).unwrap();
        let cpu = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
        assert_close("cpu o", &cpu.o, &dense.o, &v, 1e-6);
        assert_close("cpu lse", &cpu.lse, &dense.lse, &[1.0], 1e-6);
        let out = FmaPlan::new(ctx, shape, &cfg, None)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert_close("gpu o", &out.o, &dense.o, &v, 1e-4);
        assert_close("gpu lse", &out.lse, &dense.lse, &[1.0], 1e-4);
    }
}

/// Keys or values constant over every `block x block` square of the padded grid (the coarsest
/// sub-blocks), for an image of `h x w` tokens.
fn blockwise_constant(seed: u64, shape: Shape, w: usize, block: usize) -> Vec<f32> {
    let h = shape.n / w;
    let (by, bx) = (h.div_ceil(block), w.div_ceil(block));
    let pieces = random(seed, shape.bh() * by * bx * shape.d);
    let mut out = vec![0.0; shape.elements()];
    for head in 0..shape.bh() {
        for i in 0..shape.n {
            let (y, x) = (i / w, i % w);
            let piece = head * by * bx + (y / block) * bx + x / block;
            for c in 0..shape.d {
                out[(head * shape.n + i) * shape.d + c] = pieces[piece * shape.d + c];
            }
        }
    }
    out
}

/// Oracle 2 in 2D: `Mean` with multiplicity, on keys and values constant over the coarsest
/// sub-blocks (side S / (4 sqrt(p))), is exact.
#[test]
fn mean_on_blockwise_constant_equals_dense() {
    let ctx = gpu();
    for (h, w, m, p, d) in [
        (32, 32, 4, 4, 16),
        (40, 24, 4, 1, 8),
        (20, 20, 2, 4, 32),
        (64, 64, 4, 16, 16),
        (50, 13, 2, 1, 64),
    ] {
        let cfg = FmaConfig::new(m, p).image(h, w);
        let g = Geometry::new(h * w, &cfg).unwrap();
        assert!(
            g.num_levels() >= 2,
            "the oracle should exercise several levels"
        );
        let block = g.pad_w / (4 * p.isqrt());
        let shape = Shape::new(1, 2, h * w, d);
        let q = random(h as u64, shape.elements());
        let k = blockwise_constant(1 + w as u64, shape, w, block);
        let v = blockwise_constant(2 + w as u64, shape, w, block);
        let dense = reference::dense(&q, &k, &v, shape, false, cfg.scale_for(d)).unwrap();
        let cpu = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
        let what = format!("{h}x{w} m={m} p={p}");
        assert_close(&format!("cpu {what}"), &cpu.o, &dense.o, &v, 1e-6);
        assert_close("cpu lse", &cpu.lse, &dense.lse, &[1.0], 1e-6);
        let out = FmaPlan::new(ctx, shape, &cfg, None)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert_close(&format!("gpu {what}"), &out.o, &dense.o, &v, 1e-4);
        assert_close("gpu lse", &out.lse, &dense.lse, &[1.0], 1e-4);
        // The oracle has teeth: on generic keys FMA is not dense.
        let k2 = random(9, shape.elements());
        let approx = reference::fma_forward(&q, &k2, &v, shape, &cfg, None).unwrap();
        let exact = reference::dense(&q, &k2, &v, shape, false, cfg.scale_for(d)).unwrap();
        assert!(max_abs_diff(&approx.o, &exact.o).0 > 1e-4, "{what}");
    }
}

/// The learned kinds start as `Mean`: with the initial weights (sub-block averages, row-major
/// within the cell) they give the same output where no segment holds padding.
#[test]
fn learned_kinds_start_as_mean_on_images() {
    use multipole::{DownsampleWeights, Downsampling};
    let ctx = gpu();
    let (h, w, d) = (32, 32, 8);
    let shape = Shape::new(1, 1, h * w, d);
    let (q, k, v) = qkv(77, shape);
    let mean_cfg = FmaConfig::new(4, 4).image(h, w);
    let g = Geometry::new(h * w, &mean_cfg).unwrap();
    let want = reference::fma_forward(&q, &k, &v, shape, &mean_cfg, None).unwrap();
    for kind in [Downsampling::Basis, Downsampling::Depthwise] {
        let cfg = FmaConfig {
            downsampling: kind,
            ..mean_cfg.clone()
        };
        let init = DownsampleWeights::mean_init(kind, &g, d);
        let cpu = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&init)).unwrap();
        assert_close(&format!("{kind:?} cpu"), &cpu.o, &want.o, &v, 1e-6);
        let out = FmaPlan::new(ctx, shape, &cfg, Some(&init))
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert_close(&format!("{kind:?} gpu"), &out.o, &want.o, &v, 1e-4);
    }
}
