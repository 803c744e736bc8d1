//! FMA forward on the CPU (spec sections 2-4 and 6): near triple, far triple, merge.

use super::dense::dot;
use super::{Coarse, Output, Triple, downsample};
use crate::config::{DownsampleWeights, FmaConfig, Shape};
use crate::error::Result;
use crate::geometry::Geometry;

/// FMA attention over [batch, heads, n, d] tensors, laid out as `config.layout` says (1D or 2D).
/// `weights` is required for learned downsampling kinds and ignored for `Mean`.
pub fn fma_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
) -> Result<Output> {
    shape.validate()?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        shape.check_len(name, t.len())?;
    }
    let g = Geometry::new(shape.n, config)?;
    let empty = DownsampleWeights::default();
    let weights = weights.unwrap_or(&empty);
    weights.validate(config.downsampling, g.p, shape.d, &g.group_tokens())?;
    forward_geometry(&g, q, k, v, shape, config, weights)
}

pub(crate) fn forward_geometry(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: &DownsampleWeights,
) -> Result<Output> {
    let (n, d) = (shape.n, shape.d);
    let scale = config.scale_for(d) as f64;
    let mut out = Output {
        o: vec![0.0; shape.elements()],
        lse: vec![0.0; shape.bh() * n],
    };
    for h in 0..shape.bh() {
        let span = h * n * d..(h + 1) * n * d;
        let (qh, kh, vh) = (&q[span.clone()], &k[span.clone()], &v[span]);
        let coarse = downsample(g, config.downsampling, weights, kh, vh, d);
        let (k64, v64) = (to_f64(kh), to_f64(vh));
        for i in 0..n {
            let qi: Vec<f64> = qh[i * d..(i + 1) * d]
                .iter()
                .map(|&x| x as f64 * scale)
                .collect();
            let near = near_triple(g, &qi, &k64, &v64, i, d);
            let far = far_triple(g, config.multiplicity, &qi, &coarse, i, d);
            let (o, lse) = near.merge(&far).finish();
            for (c, x) in o.into_iter().enumerate() {
                out.o[(h * n + i) * d + c] = x as f32;
            }
            out.lse[h * n + i] = lse as f32;
        }
    }
    Ok(out)
}

/// Query i against the real keys of its near field (mirrors near_field.wgsl).
fn near_triple(g: &Geometry, qi: &[f64], k: &[f64], v: &[f64], i: usize, d: usize) -> Triple {
    let mut t = Triple::empty(d);
    for cell in g.near_cells(g.fine_cell_of(i)) {
        for (y, x) in g.fine_cell_positions(cell) {
            let Some(j) = g.token_at(y, x) else { continue };
            if !g.near_key_allowed(i, j) {
                continue;
            }
            t.add(
                dot(qi, &k[j * d..(j + 1) * d]),
                v[j * d..(j + 1) * d].iter().copied(),
            );
        }
    }
    t
}

/// Query i against the coarse keys of its interaction lists at every level (far_field.wgsl).
fn far_triple(
    g: &Geometry,
    multiplicity: bool,
    qi: &[f64],
    coarse: &Coarse,
    i: usize,
    d: usize,
) -> Triple {
    let mut t = Triple::empty(d);
    let f = g.fine_cell_of(i);
    for (li, lv) in g.levels.iter().enumerate() {
        let l = li + 1;
        for grp in g.far_cells(l, g.cell_at_level(f, l)) {
            for r in 0..g.p {
                let row = (lv.cell_offset + grp) * g.p + r;
                let mu = coarse.count[row];
                if mu == 0 {
                    continue;
                }
                let log_mu = if multiplicity { (mu as f64).ln() } else { 0.0 };
                t.add(
                    dot(qi, &coarse.k[row]) + log_mu,
                    coarse.v[row].iter().copied(),
                );
            }
        }
    }
    t
}

pub(crate) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&a| a as f64).collect()
}
