//! Where one query's attention goes: the softmax probability the forward gives each key the
//! query sees at full resolution and each coarse row it sees (docs/fma.md §3-5, §13), for
//! displays such as the demo's attention overlay. The scores are the forward reference's own
//! (`fields.rs`), so the probabilities are the weights `fma_forward` mixes values with.

use super::downsample::{Coarse, Source, coarse_rows, row_counts};
use super::fields::{FarQuery, far_scores, near_scores};
use super::to_f64;
use crate::config::{FmaConfig, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::weights::DownsampleWeights;

/// One query's attention in one head: probabilities summing to 1 over `near` and `far`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryAttention {
    /// (key token, probability), in the near field's cell order.
    pub near: Vec<(usize, f64)>,
    /// The coarse rows seen, level 1 first.
    pub far: Vec<FarAttention>,
}

/// A coarse row's share of a query's attention: segment `r` of group `group` at level
/// `level` (1 = the first coarse level; `Geometry::group_rect` gives its tokens' rectangle).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FarAttention {
    pub level: usize,
    pub group: usize,
    pub r: usize,
    pub probability: f64,
}

/// Query `i`'s attention in head `bh` (batch-major: `batch * heads + head`) of q, k
/// (`[batch, heads, n, d]`), with the forward's options and downsampling weights (`None` for
/// `Mean`).
pub fn query_attention(
    q: &[f32],
    k: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
    bh: usize,
    i: usize,
) -> Result<QueryAttention> {
    // The same validation as the forward (v is not read: k stands in for it).
    let (g, weights) = super::fma::checked(q, k, k, shape, config, weights)?;
    if bh >= shape.bh() || i >= shape.n {
        return Err(FmaError::InvalidConfig(format!(
            "query {i} of head {bh}: the shape has {} heads of {} queries",
            shape.bh(),
            shape.n
        )));
    }
    let (n, d) = (shape.n, shape.d);
    let span = bh * n * d..(bh + 1) * n * d;
    let (q, k) = (&q[span.clone()], &k[span]);
    let scale = config.scale_for(d) as f64;
    let qi: Vec<f64> = q[i * d..(i + 1) * d]
        .iter()
        .map(|&x| x as f64 * scale)
        .collect();
    let kind = config.downsampling;
    let coarse = Coarse {
        k: coarse_rows(&g, kind, &weights, Source::Keys, k, d),
        v: Vec::new(),
        count: row_counts(&g),
    };
    let qc = config.downsample_queries.then(|| {
        let mut rows = coarse_rows(&g, kind, &weights, Source::Queries, q, d);
        rows.iter_mut().flatten().for_each(|x| *x *= scale);
        rows
    });
    let query = match &qc {
        Some(qc) => FarQuery::Segments(qc),
        None => FarQuery::Token(&qi),
    };
    let near = near_scores(&g, &qi, &to_f64(k), i, d);
    let far = far_scores(&g, config.multiplicity, query, &coarse, i);
    let max = near
        .iter()
        .chain(&far)
        .map(|&(_, z)| z)
        .fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = near.iter().chain(&far).map(|&(_, z)| (z - max).exp()).sum();
    let p = |z: f64| (z - max).exp() / total;
    Ok(QueryAttention {
        near: near.iter().map(|&(j, z)| (j, p(z))).collect(),
        far: far
            .iter()
            .map(|&(row, z)| far_attention(&g, row, p(z)))
            .collect(),
    })
}

fn far_attention(g: &Geometry, row: usize, probability: f64) -> FarAttention {
    let (level, group) = g
        .cell_level(row / g.p)
        .expect("far_scores returns rows of coarse levels");
    FarAttention {
        level,
        group,
        r: row % g.p,
        probability,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Downsampling;
    use crate::reference::{downsample, fma_forward_f64};

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.731 + seed).sin() * 1.5)
            .collect()
    }

    /// Mixing the values with the probabilities must give the forward reference's output:
    /// the probabilities are the weights the forward uses, for every query of every head.
    fn mixes_to_the_forward(shape: Shape, config: &FmaConfig) {
        let g = Geometry::new(shape.n, config).unwrap();
        let mut weights = DownsampleWeights::mean_init(config.downsampling, &g, shape.d);
        if config.downsample_queries {
            weights = weights.with_query_weights();
        }
        for (i, x) in weights
            .levels
            .iter_mut()
            .flat_map(|l| {
                [&mut l.wk, &mut l.bk, &mut l.wq, &mut l.bq]
                    .into_iter()
                    .flatten()
            })
            .enumerate()
        {
            *x += 0.05 * (i as f32 * 1.3).cos();
        }
        let e = shape.elements();
        let (q, k, v) = (values(e, 0.1), values(e, 1.7), values(e, 2.9));
        let want = fma_forward_f64(&q, &k, &v, shape, config, Some(&weights)).unwrap();
        let (n, d) = (shape.n, shape.d);
        for bh in 0..shape.bh() {
            let span = bh * n * d..(bh + 1) * n * d;
            let kind = config.downsampling;
            let coarse = downsample(&g, kind, &weights, &k[span.clone()], &v[span.clone()], d);
            for i in 0..n {
                let a = query_attention(&q, &k, shape, config, Some(&weights), bh, i).unwrap();
                let mut o = vec![0.0f64; d];
                let mut total = 0.0;
                for &(j, p) in &a.near {
                    total += p;
                    let vj = &v[span.start + j * d..span.start + (j + 1) * d];
                    for (y, &x) in o.iter_mut().zip(vj) {
                        *y += p * x as f64;
                    }
                }
                for f in &a.far {
                    total += f.probability;
                    let lv = &g.levels[f.level - 1];
                    let row = (lv.cell_offset + f.group) * g.p + f.r;
                    for (y, &x) in o.iter_mut().zip(&coarse.v[row]) {
                        *y += f.probability * x;
                    }
                }
                assert!((total - 1.0).abs() < 1e-12, "probabilities sum to {total}");
                let row = &want.o[(bh * n + i) * d..(bh * n + i + 1) * d];
                for (&got, &w) in o.iter().zip(row) {
                    assert!((got - w).abs() < 1e-9, "head {bh} query {i}: {got} vs {w}");
                }
            }
        }
    }

    #[test]
    fn probabilities_mix_to_the_forward_output() {
        let causal = FmaConfig {
            causal: true,
            ..FmaConfig::new(4, 2)
        };
        mixes_to_the_forward(Shape::new(1, 2, 37, 4), &causal);
        let image = FmaConfig {
            downsampling: Downsampling::Depthwise,
            ..FmaConfig::new(2, 4)
        }
        .image(9, 10);
        mixes_to_the_forward(Shape::new(2, 1, 90, 3), &image);
        let linear = FmaConfig {
            downsampling: Downsampling::Basis,
            downsample_queries: true,
            ..FmaConfig::new(4, 1)
        };
        mixes_to_the_forward(Shape::new(1, 1, 64, 4), &linear);
        let plain = FmaConfig {
            multiplicity: false,
            ..FmaConfig::new(4, 2)
        };
        mixes_to_the_forward(Shape::new(1, 1, 50, 2), &plain);
    }

    #[test]
    fn out_of_range_queries_are_errors() {
        let shape = Shape::new(1, 1, 16, 2);
        let x = values(shape.elements(), 0.0);
        let config = FmaConfig::new(4, 1);
        assert!(query_attention(&x, &x, shape, &config, None, 0, 16).is_err());
        assert!(query_attention(&x, &x, shape, &config, None, 1, 0).is_err());
        assert!(query_attention(&x[1..], &x, shape, &config, None, 0, 0).is_err());
    }
}
