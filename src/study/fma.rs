//! FMA through the crate's CPU reference (`reference::Head`), for chosen query rows, and its
//! cost. Bidirectional, multiplicity on, scale 1/sqrt(d), as every other method here.

use super::{Approx, Problem};
use crate::config::{Downsampling, FmaConfig};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::reference::{Head, far_rows, level_far_rows};
use crate::weights::DownsampleWeights;

/// The FMA configuration of a problem: its layout, (m, p) and downsampling kind.
pub fn config(prob: &Problem, m: usize, p: usize, kind: Downsampling) -> FmaConfig {
    FmaConfig {
        layout: prob.layout,
        downsampling: kind,
        ..FmaConfig::new(m, p)
    }
}

/// The O(n) variant of `config` (docs/fma.md §13): coarse queries, the far field per segment.
pub fn linear_config(prob: &Problem, m: usize, p: usize) -> FmaConfig {
    FmaConfig {
        downsample_queries: true,
        ..config(prob, m, p, Downsampling::Mean)
    }
}

/// FMA's output for the chosen rows (either variant); `weights` for the learned kinds
/// (`None`: `Mean`'s own weights, so Basis and Depthwise start where Mean is).
pub fn fma(
    prob: &Problem,
    rows: &[usize],
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
) -> Result<Approx> {
    let g = Geometry::new(prob.n, config)?;
    let init;
    let weights = match weights {
        Some(w) => w,
        None => {
            let mean = DownsampleWeights::mean_init(config.downsampling, &g, prob.d);
            // The O(n) variant's query weights start where the keys' do.
            init = match config.downsample_queries {
                true => mean.with_query_weights(),
                false => mean,
            };
            &init
        }
    };
    weights.validate(
        config.downsampling,
        g.p,
        prob.d,
        &g.group_tokens(),
        config.downsample_queries,
    )?;
    let head = Head::new(&g, config, weights, &prob.q, &prob.k, &prob.v, prob.d);
    let d = prob.d;
    let mut o = vec![0.0; rows.len() * d];
    let mut keys = 0;
    for (out, &i) in o.chunks_exact_mut(d).zip(rows) {
        let (row, _) = head.triple(&g, config.multiplicity, i).finish();
        out.copy_from_slice(&row);
        keys += g.near_keys(i).len() + far_rows(&g, &head.coarse, i).len();
    }
    Ok(Approx {
        o,
        keys: keys as f64 / rows.len().max(1) as f64,
    })
}

/// Mean keys per query (near keys plus coarse keys) of FMA over all n queries: the budget the
/// other methods are matched to.
pub fn keys_per_query(prob: &Problem, m: usize, p: usize) -> Result<f64> {
    let cfg = config(prob, m, p, Downsampling::Mean);
    let g = Geometry::new(prob.n, &cfg)?;
    let w = DownsampleWeights::default();
    let empty = crate::reference::downsample(&g, Downsampling::Mean, &w, &[], &[], 0);
    let total: usize = (0..prob.n)
        .map(|i| g.near_keys(i).len() + far_rows(&g, &empty, i).len())
        .sum();
    Ok(total as f64 / prob.n as f64)
}

/// The O(n) variant's work per query over all n queries, in scored keys: (near keys per query,
/// coarse keys scored once per segment and shared by its queries, divided by n). Every query's
/// softmax still covers `keys_per_query` keys; only the far ones are scored per segment.
pub fn linear_keys(prob: &Problem, m: usize, p: usize) -> Result<(f64, f64)> {
    let g = Geometry::new(prob.n, &linear_config(prob, m, p))?;
    let w = DownsampleWeights::default();
    let empty = crate::reference::downsample(&g, Downsampling::Mean, &w, &[], &[], 0);
    let near: usize = (0..prob.n).map(|i| g.near_keys(i).len()).sum();
    let far: usize = g
        .cells()
        .flat_map(|cell| std::iter::repeat_n(cell, g.p))
        .enumerate()
        .filter(|&(row, _)| empty.count[row] > 0)
        .map(|(_, (l, grp))| level_far_rows(&g, &empty.count, l, grp).len())
        .sum();
    Ok((near as f64 / prob.n as f64, far as f64 / prob.n as f64))
}
