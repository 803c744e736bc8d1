//! The O(n) variant's forward (docs/fma.md §13): coarse queries, and the far field computed once
//! per segment and passed down the tree.
//!
//! Two forms of one definition. The direct one (`far_triple` with `FarQuery::Segments`, used by `Head::triple` and
//! so by `fma_forward`) scores every coarse key a query sees with the coarse query of the
//! query's own segment at that level. The kernel form (`segment_far_triples`, `downward_pass`,
//! `linear_forward_downward`) is what the GPU computes: one triple per segment against its
//! group's interaction list, merged from the coarsest level down, so each query merges one
//! triple into its near field. Tests check that both agree.

use super::fields::{level_far_rows, near_triple, row_bias};
use super::fma::{checked, forward_heads};
use super::{Coarse, Output64, Triple, dot};
use crate::config::{FmaConfig, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::weights::DownsampleWeights;

/// F of docs/fma.md §13, one triple per coarse row `cell * p + r`: that segment's coarse query
/// against the coarse keys of its group's interaction list (rows without real tokens skipped).
/// Computed for every segment, also those without a real token: their coarse query is zero
/// (`Mean`) or the bias, so the triple is finite, and no real query ever reads it.
pub(crate) fn segment_far_triples(
    g: &Geometry,
    multiplicity: bool,
    qc: &[Vec<f64>],
    coarse: &Coarse,
    d: usize,
) -> Vec<Triple> {
    let mut out = Vec::with_capacity(g.total_cells() * g.p);
    for (l, grp) in g.cells() {
        let keys = level_far_rows(g, &coarse.count, l, grp);
        for query in &qc[out.len()..out.len() + g.p] {
            let mut t = Triple::empty(d);
            for &row in &keys {
                t.add(
                    dot(query, &coarse.k[row]) + row_bias(coarse, multiplicity, row),
                    coarse.v[row].iter().copied(),
                );
            }
            out.push(t);
        }
    }
    out
}

/// The downward pass: T[L] = F[L], then level by level towards the fine cells, each segment's
/// F merged with the T of the segment one level up that holds it (`Geometry::segment_parent`).
/// T of a level-1 segment is then the whole far field of every query in that segment.
pub(crate) fn downward_pass(g: &Geometry, mut t: Vec<Triple>) -> Vec<Triple> {
    for l in (1..g.num_levels()).rev() {
        let lv = &g.levels[l - 1];
        for grp in 0..lv.groups() {
            for r in 0..g.p {
                let row = (lv.cell_offset + grp) * g.p + r;
                let merged = t[row].merge(&t[g.segment_parent(l, grp, r)]);
                t[row] = merged;
            }
        }
    }
    t
}

/// The O(n) variant's forward in the kernels' form: per head, coarse queries, F, the downward
/// pass, then each query's near triple merged with T of its level-1 segment. Equals
/// `fma_forward_f64` with `downsample_queries` (the direct definition); the blueprint of the
/// GPU kernels, exposed for the tests that compare the two.
#[doc(hidden)]
pub fn linear_forward_downward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
) -> Result<Output64> {
    if !config.downsample_queries {
        return Err(FmaError::InvalidConfig(
            "the downward pass is the downsample_queries variant's: set the option".into(),
        ));
    }
    let (g, weights) = checked(q, k, v, shape, config, weights)?;
    let (n, d) = (shape.n, shape.d);
    Ok(forward_heads(
        &g,
        q,
        k,
        v,
        shape,
        config,
        &weights,
        |head| {
            let qc = head.qc.as_deref().unwrap_or_default();
            let f = segment_far_triples(&g, config.multiplicity, qc, &head.coarse, d);
            let t = downward_pass(&g, f);
            (0..n)
                .map(|i| {
                    let near = near_triple(&g, head.query(i), &head.k, &head.v, i, d);
                    match g.num_levels() {
                        0 => near,
                        _ => near.merge(&t[g.token_segment(1, i)]),
                    }
                })
                .collect()
        },
    ))
}
