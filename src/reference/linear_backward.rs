//! The O(n) variant's far-field backward in factored form (docs/fma.md §13, "Backward"): the
//! blueprint of the GPU's O(n) backward, tested equal to the per-query definition.
//!
//! Every query i of a level-l segment scores a coarse key with the same z (its segment's coarse
//! query), so P_i = exp(z - LSE_i) = exp(z - M) exp(M - LSE_i) for any M. With M the least LSE
//! of the segment's queries, the sums over the segment that the coarse gradients need are
//!   sum_i P_i dO_i                = exp(z - M) B,  B = sum_i exp(M - LSE_i) dO_i
//!   sum_i P_i (dO_i . v - D_i)    = exp(z - M) (B . v - C),  C = sum_i exp(M - LSE_i) D_i
//! and no factor exceeds 1 (z <= LSE_i for every i, so z <= M). (M, B, C) of a segment merge
//! from its children with the usual rescaling, so one upward pass builds them for all levels.

use super::Coarse;
use super::dot;
use super::fields::{level_far_rows, row_bias};
use crate::geometry::Geometry;

/// (M, B, C) of one segment: M the least LSE of its real queries (+inf with none), B and C
/// their dO and D weighted by exp(M - LSE_i).
#[derive(Clone, Debug)]
pub(crate) struct SegmentSums {
    pub min_lse: f64,
    pub d_o: Vec<f64>,
    pub delta: f64,
}

impl SegmentSums {
    fn empty(d: usize) -> Self {
        SegmentSums {
            min_lse: f64::INFINITY,
            d_o: vec![0.0; d],
            delta: 0.0,
        }
    }

    /// Rescaled merge, associative and commutative like `Triple::merge` (min for max).
    fn merge(&self, other: &SegmentSums) -> SegmentSums {
        let min = self.min_lse.min(other.min_lse);
        let (a, b) = (rescale(self.min_lse, min), rescale(other.min_lse, min));
        SegmentSums {
            min_lse: min,
            d_o: self
                .d_o
                .iter()
                .zip(&other.d_o)
                .map(|(x, y)| x * a + y * b)
                .collect(),
            delta: self.delta * a + other.delta * b,
        }
    }
}

/// exp(min - m), with an empty side (m = +inf) weighing nothing.
fn rescale(m: f64, min: f64) -> f64 {
    if m == f64::INFINITY {
        0.0
    } else {
        (min - m).exp()
    }
}

/// The upward pass: level-1 sums from the real queries (their `lse`, `delta` = D_i and rows of
/// `d_o`, n x d), then each coarser segment as the merge of the 2 (1D) or 4 (2D) finer ones
/// that tile it. One entry per coarse row `cell * p + r`.
pub(crate) fn upward_pass(
    g: &Geometry,
    lse: &[f64],
    delta: &[f64],
    d_o: &[f64],
    d: usize,
) -> Vec<SegmentSums> {
    let mut sums = vec![SegmentSums::empty(d); g.total_cells() * g.p];
    if g.num_levels() == 0 {
        return sums;
    }
    for i in 0..lse.len() {
        let one = SegmentSums {
            min_lse: lse[i],
            d_o: d_o[i * d..(i + 1) * d].to_vec(),
            delta: delta[i],
        };
        let seg = g.token_segment(1, i);
        sums[seg] = sums[seg].merge(&one);
    }
    for l in 2..=g.num_levels() {
        let lv = &g.levels[l - 1];
        for grp in 0..lv.groups() {
            for r in 0..g.p {
                let merged = g
                    .segment_children(l, grp, r)
                    .into_iter()
                    .fold(SegmentSums::empty(d), |acc, c| acc.merge(&sums[c]));
                sums[(lv.cell_offset + grp) * g.p + r] = merged;
            }
        }
    }
    sums
}

/// The coarse queries', keys' and values' gradients of the far field, one visit per (segment,
/// coarse key of its group's interaction list). `qc` is tau-scaled, and so `dqc` lacks the
/// final factor tau, as the per-query form's does.
pub(crate) fn factored_far_grads(
    g: &Geometry,
    multiplicity: bool,
    qc: &[Vec<f64>],
    coarse: &Coarse,
    sums: &[SegmentSums],
    [dqc, dkc, dvc]: [&mut [Vec<f64>]; 3],
) {
    for (seg, (l, grp)) in g
        .cells()
        .flat_map(|cell| std::iter::repeat_n(cell, g.p))
        .enumerate()
    {
        let s = &sums[seg];
        if s.min_lse == f64::INFINITY {
            continue; // no real query in this segment
        }
        let query = &qc[seg];
        for row in level_far_rows(g, &coarse.count, l, grp) {
            let (key, value) = (&coarse.k[row], &coarse.v[row]);
            let w = (dot(query, key) + row_bias(coarse, multiplicity, row) - s.min_lse).exp();
            let ds = w * (dot(&s.d_o, value) - s.delta);
            for c in 0..query.len() {
                dqc[seg][c] += ds * key[c];
                dkc[row][c] += ds * query[c];
                dvc[row][c] += w * s.d_o[c];
            }
        }
    }
}
