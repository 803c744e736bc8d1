//! One query's near and far fields as softmax triples, and the coarse rows each far field
//! reads: what the forward references (`fma`, the O(n) variant's `linear`) and the decoder
//! share.

use super::{Coarse, Triple, dot};
use crate::geometry::Geometry;

/// The coarse rows query i sees: every level's interaction list, rows without real tokens
/// skipped.
pub(crate) fn far_rows(g: &Geometry, coarse: &Coarse, i: usize) -> Vec<usize> {
    far_rows_of(g, &coarse.count, i)
}

/// `far_rows` given each coarse row's multiplicity.
pub(crate) fn far_rows_of(g: &Geometry, count: &[usize], i: usize) -> Vec<usize> {
    let f = g.fine_cell_of(i);
    (1..=g.num_levels())
        .flat_map(|l| level_far_rows(g, count, l, g.cell_at_level(f, l)))
        .collect()
}

/// The coarse rows of level l that cell `cell` of that level sees: its interaction list,
/// rows without real tokens skipped.
pub(crate) fn level_far_rows(g: &Geometry, count: &[usize], l: usize, cell: usize) -> Vec<usize> {
    let offset = g.levels[l - 1].cell_offset;
    g.far_cells(l, cell)
        .into_iter()
        .flat_map(|grp| (0..g.p).map(move |r| (offset + grp) * g.p + r))
        .filter(|&row| count[row] > 0)
        .collect()
}

/// Score offset of a coarse row: log(multiplicity), or 0 with the option off.
pub(crate) fn row_bias(coarse: &Coarse, multiplicity: bool, row: usize) -> f64 {
    if multiplicity {
        (coarse.count[row] as f64).ln()
    } else {
        0.0
    }
}

/// Query i's scores against the real keys of its near field, as (key token, z).
pub(crate) fn near_scores(
    g: &Geometry,
    qi: &[f64],
    k: &[f64],
    i: usize,
    d: usize,
) -> Vec<(usize, f64)> {
    g.near_keys(i)
        .into_iter()
        .map(|j| (j, dot(qi, &k[j * d..(j + 1) * d])))
        .collect()
}

/// What scores a query's far field: its own (tau-scaled) row, or, in the O(n) variant, the
/// coarse query of the level-l segment holding it (docs/fma.md §13).
#[derive(Clone, Copy)]
pub(crate) enum FarQuery<'a> {
    Token(&'a [f64]),
    Segments(&'a [Vec<f64>]),
}

/// Query i's scores against the coarse keys of its interaction lists at every level, level 1
/// first, as (coarse row, z), log-multiplicity offsets included.
pub(crate) fn far_scores(
    g: &Geometry,
    multiplicity: bool,
    query: FarQuery<'_>,
    coarse: &Coarse,
    i: usize,
) -> Vec<(usize, f64)> {
    let f = g.fine_cell_of(i);
    let mut out = Vec::new();
    for l in 1..=g.num_levels() {
        let q = match query {
            FarQuery::Token(q) => q,
            FarQuery::Segments(qc) => &qc[g.token_segment(l, i)],
        };
        for row in level_far_rows(g, &coarse.count, l, g.cell_at_level(f, l)) {
            let z = dot(q, &coarse.k[row]) + row_bias(coarse, multiplicity, row);
            out.push((row, z));
        }
    }
    out
}

/// Query i against the real keys of its near field (mirrors attention.wgsl's `near_field`).
pub(crate) fn near_triple(
    g: &Geometry,
    qi: &[f64],
    k: &[f64],
    v: &[f64],
    i: usize,
    d: usize,
) -> Triple {
    let mut t = Triple::empty(d);
    for (j, z) in near_scores(g, qi, k, i, d) {
        t.add(z, v[j * d..(j + 1) * d].iter().copied());
    }
    t
}

/// Query i against the coarse keys of its interaction lists at every level (attention.wgsl's
/// `far_field`); with `FarQuery::Segments`, the O(n) variant's far field by its direct
/// definition.
pub(crate) fn far_triple(
    g: &Geometry,
    multiplicity: bool,
    query: FarQuery<'_>,
    coarse: &Coarse,
    i: usize,
    d: usize,
) -> Triple {
    let mut t = Triple::empty(d);
    for (row, z) in far_scores(g, multiplicity, query, coarse, i) {
        t.add(z, coarse.v[row].iter().copied());
    }
    t
}
