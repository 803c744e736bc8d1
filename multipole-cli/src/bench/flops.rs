//! The FLOP conventions of the records: what the definition requires, never the padding or
//! masked scores a kernel's tiling evaluates, so that a faster kernel is one that finishes
//! sooner (see `Record::flops`).

use multipole::{Downsampling, FmaConfig, Geometry, Shape};

/// Dense attention's required FLOPs: 4 d per score (q.k and p.v), n^2 scores per head, and
/// exactly the n (n + 1) / 2 of the lower triangle when causal (not the tiles a kernel
/// evaluates and masks).
pub fn dense_flops(shape: Shape, causal: bool) -> f64 {
    let n = shape.n as f64;
    let scores = if causal { n * (n + 1.0) / 2.0 } else { n * n };
    4.0 * shape.bh() as f64 * scores * shape.d as f64
}

/// FMA's downsampling FLOPs over the real tokens (padding is not the definition's work): Mean
/// adds each token into its row of every level for K and V (2 d per token and level; the
/// division per row is left out, one per s tokens); learned kinds multiply-add each token into
/// the p rows of its cell (4 p d per token and level for K and V).
/// The O(n) variant downsamples Q too: half as much again.
fn downsample_flops(g: &Geometry, cfg: &FmaConfig, shape: Shape) -> f64 {
    let per_token = match cfg.downsampling {
        Downsampling::Mean => 2.0,
        _ => 4.0 * g.p as f64,
    };
    let tensors = if cfg.downsample_queries { 1.5 } else { 1.0 };
    tensors * shape.bh() as f64 * per_token * shape.d as f64 * g.n() as f64 * g.num_levels() as f64
}

/// FMA's required FLOPs: 4 d per required score (`Geometry::score_pairs`: real queries
/// against the real, allowed near keys and the coarse rows holding a real token; in the O(n)
/// variant the coarse scores are per segment, `segment_far_pairs`), plus the downsampling.
pub fn fma_flops(g: &Geometry, cfg: &FmaConfig, shape: Shape) -> f64 {
    let (near, far) = g.score_pairs();
    let far = if cfg.downsample_queries {
        segment_far_pairs(g)
    } else {
        far
    };
    let attention = 4.0 * shape.d as f64 * (near + far) as f64;
    shape.bh() as f64 * attention + downsample_flops(g, cfg, shape)
}

/// The O(n) variant's coarse scores: each coarse row holding a real token (a segment's coarse
/// query) against the rows holding a real token of its cell's interaction list.
pub fn segment_far_pairs(g: &Geometry) -> u64 {
    segment_far_rows(g).iter().map(|&(pairs, _)| pairs).sum()
}

/// (coarse scores, real tokens) of every coarse row holding a real token, level by level.
fn segment_far_rows(g: &Geometry) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for l in 1..=g.num_levels() {
        let rows = g.levels[l - 1].groups() * g.p;
        let count: Vec<usize> = (0..rows)
            .map(|row| g.multiplicity(l, row / g.p, row % g.p))
            .collect();
        for (row, &mu) in count.iter().enumerate().filter(|x| *x.1 > 0) {
            let pairs = g
                .far_cells(l, row / g.p)
                .into_iter()
                .flat_map(|h| (0..g.p).map(move |t| h * g.p + t))
                .filter(|&key| count[key] > 0)
                .count() as u64;
            out.push((pairs, mu as u64));
        }
    }
    out
}

/// FMA backward's required FLOPs: 10 d per required score (the recomputed score, dP, and the
/// dq, dk, dv updates: 2.5 times the forward's 4 d, the flash convention), plus the
/// downsampling recomputed and its adjoint (learned kinds: and the weight gradient, as many
/// FLOPs again). The scores are the forward's: in the O(n) variant the coarse ones per
/// segment (`segment_far_pairs`), as its backward forms them.
pub fn fma_backward_flops(g: &Geometry, cfg: &FmaConfig, shape: Shape) -> f64 {
    let (near, far) = g.score_pairs();
    let far = if cfg.downsample_queries {
        segment_far_pairs(g)
    } else {
        far
    };
    let scores = shape.bh() as f64 * 10.0 * shape.d as f64 * (near + far) as f64;
    let passes = if cfg.downsampling.is_learned() {
        3.0
    } else {
        2.0
    };
    scores + passes * downsample_flops(g, cfg, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fma_flops_count_required_scores_and_real_tokens() {
        // n = 10, m = 8: n' = 2m, every query sees every key (causal: i + 1 of them).
        let cfg = FmaConfig::new(8, 1);
        let g = Geometry::new(10, &cfg).unwrap();
        let s = Shape::new(1, 1, 10, 16);
        let down = 2.0 * 16.0 * 10.0 * g.num_levels() as f64;
        assert_eq!(fma_flops(&g, &cfg, s), 4.0 * 16.0 * 100.0 + down);
        assert_eq!(
            fma_backward_flops(&g, &cfg, s),
            10.0 * 16.0 * 100.0 + 2.0 * down
        );
        let causal = FmaConfig {
            causal: true,
            ..cfg
        };
        let g = Geometry::new(10, &causal).unwrap();
        assert_eq!(fma_flops(&g, &causal, s), 4.0 * 16.0 * 55.0 + down);
        // n = 100 pads to 128 with m = 16: the downsampling counts the 100 real tokens, two
        // heads, K and V.
        let cfg = FmaConfig::new(16, 4);
        let g = Geometry::new(100, &cfg).unwrap();
        assert!(g.n_pad() > 100 && g.num_levels() >= 1);
        let s = Shape::new(1, 2, 100, 8);
        let (near, far) = g.score_pairs();
        let scores = 2.0 * (near + far) as f64 * 8.0;
        let levels = g.num_levels() as f64;
        let mean = 2.0 * 2.0 * 8.0 * 100.0 * levels;
        assert_eq!(fma_flops(&g, &cfg, s), 4.0 * scores + mean);
        assert_eq!(fma_backward_flops(&g, &cfg, s), 10.0 * scores + 2.0 * mean);
        // Learned kinds: each token into the p rows of its cell, 2 FLOPs each, K and V; the
        // backward adds the weight gradient to the recomputation and the adjoint.
        let basis = FmaConfig {
            downsampling: Downsampling::Basis,
            ..cfg
        };
        let learned = 2.0 * 2.0 * 4.0 * 8.0 * 100.0 * levels * 2.0;
        assert_eq!(fma_flops(&g, &basis, s), 4.0 * scores + learned);
        assert_eq!(
            fma_backward_flops(&g, &basis, s),
            10.0 * scores + 3.0 * learned
        );
    }

    #[test]
    fn segment_scores_times_their_queries_are_the_per_query_scores() {
        // Every query of a segment sees its segment's coarse keys: weighted by the segment's
        // real tokens, the per-segment count is the other variant's per-query count.
        for (n, cfg) in [
            (1000, FmaConfig::new(8, 2)),
            (30 * 41, FmaConfig::new(2, 4).image(30, 41)),
        ] {
            let g = Geometry::new(n, &cfg).unwrap();
            let weighted: u64 = segment_far_rows(&g).iter().map(|&(p, mu)| p * mu).sum();
            assert_eq!(weighted, g.score_pairs().1, "{n}");
            assert!(segment_far_pairs(&g) < g.score_pairs().1);
        }
    }

    #[test]
    fn the_linear_variant_counts_its_per_segment_scores_forward_and_backward() {
        // 1D 16K and a 2D image: the backward counts the scores the forward counts, 10 d each
        // instead of 4 d, never the per-query far scores of the other variant.
        for (n, cfg) in [
            (16384, FmaConfig::new(32, 4)),
            (64 * 64, FmaConfig::new(4, 4).image(64, 64)),
        ] {
            let linear = FmaConfig {
                downsample_queries: true,
                ..cfg.clone()
            };
            let g = Geometry::new(n, &linear).unwrap();
            let s = Shape::new(1, 1, n, 64);
            let (near, per_query_far) = g.score_pairs();
            let far = segment_far_pairs(&g);
            let down = downsample_flops(&g, &linear, s);
            assert_eq!(
                fma_flops(&g, &linear, s),
                4.0 * 64.0 * (near + far) as f64 + down
            );
            assert_eq!(
                fma_backward_flops(&g, &linear, s),
                10.0 * 64.0 * (near + far) as f64 + 2.0 * down
            );
            assert!(far < per_query_far, "{n}");
            assert!(fma_backward_flops(&g, &linear, s) < fma_backward_flops(&g, &cfg, s));
        }
    }

    #[test]
    fn dense_flops_follow_the_convention() {
        let s = Shape::new(2, 3, 1000, 64);
        assert_eq!(dense_flops(s, false), 4.0 * 6.0 * 1e6 * 64.0);
        // Causal: exactly the lower triangle, diagonal included.
        assert_eq!(
            dense_flops(s, true),
            4.0 * 6.0 * (1000.0 * 1001.0 / 2.0) * 64.0
        );
    }
}
