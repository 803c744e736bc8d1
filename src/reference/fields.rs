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
    for j in g.near_keys(i) {
        t.add(
            dot(qi, &k[j * d..(j + 1) * d]),
            v[j * d..(j + 1) * d].iter().copied(),
        );
    }
    t
}

/// Query i against the coarse keys of its interaction lists at every level (attention.wgsl's `far_field`).
pub(crate) fn far_triple(
    g: &Geometry,
    multiplicity: bool,
    qi: &[f64],
    coarse: &Coarse,
    i: usize,
    d: usize,
) -> Triple {
    let mut t = Triple::empty(d);
    for row in far_rows(g, coarse, i) {
        t.add(
            dot(qi, &coarse.k[row]) + row_bias(coarse, multiplicity, row),
            coarse.v[row].iter().copied(),
        );
    }
    t
}

/// Query i's far triple by the direct definition: at every level l, the coarse keys of its
/// level-l cell's interaction list, scored by the coarse query `qc` (tau-scaled) of the level-l
/// segment holding i.
pub(crate) fn linear_far_triple(
    g: &Geometry,
    multiplicity: bool,
    qc: &[Vec<f64>],
    coarse: &Coarse,
    i: usize,
    d: usize,
) -> Triple {
    let f = g.fine_cell_of(i);
    let mut t = Triple::empty(d);
    for l in 1..=g.num_levels() {
        let query = &qc[g.token_segment(l, i)];
        for row in level_far_rows(g, &coarse.count, l, g.cell_at_level(f, l)) {
            t.add(
                dot(query, &coarse.k[row]) + row_bias(coarse, multiplicity, row),
                coarse.v[row].iter().copied(),
            );
        }
    }
    t
}
