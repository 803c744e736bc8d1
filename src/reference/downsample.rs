//! Coarse keys and values of every group at every level (docs/fma.md §5), mirrors downsample.wgsl.

use crate::config::Downsampling;

use crate::geometry::Geometry;
use crate::weights::DownsampleWeights;

/// Coarse keys and values of one head: row `cell * p + r`, each a d-vector, and the number
/// of real tokens each row stands for (its multiplicity; 0 means the row is skipped).
pub struct Coarse {
    pub k: Vec<Vec<f64>>,
    pub v: Vec<Vec<f64>>,
    pub count: Vec<usize>,
}

/// Summarises one head's keys `k` and values `v` (each n x d, row-major).
pub fn downsample(
    g: &Geometry,
    kind: Downsampling,
    weights: &DownsampleWeights,
    k: &[f32],
    v: &[f32],
    d: usize,
) -> Coarse {
    Coarse {
        k: coarse_rows(g, kind, weights, Source::Keys, k, d),
        v: coarse_rows(g, kind, weights, Source::Values, v, d),
        count: row_counts(g),
    }
}

/// The number of real tokens each coarse row stands for.
pub(crate) fn row_counts(g: &Geometry) -> Vec<usize> {
    (1..=g.num_levels())
        .flat_map(|l| {
            (0..g.levels[l - 1].groups() * g.p)
                .map(move |row| g.multiplicity(l, row / g.p, row % g.p))
        })
        .collect()
}

/// Which tensor a downsampling summarises: each has its own learned weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Keys,
    Values,
    /// The O(n) variant's coarse queries (docs/fma.md §13), from `wq` and `bq`.
    Queries,
}

/// The coarse rows (`cell * p + r`, each a d-vector) of one head's tensor `x` (n x d): the
/// one downsampling of docs/fma.md §5, for keys, values and (O(n) variant) queries alike.
/// Rows without real tokens are left at zero; they are never scored.
pub(crate) fn coarse_rows(
    g: &Geometry,
    kind: Downsampling,
    weights: &DownsampleWeights,
    source: Source,
    x: &[f32],
    d: usize,
) -> Vec<Vec<f64>> {
    let p = g.p;
    let mut out = vec![vec![0.0; d]; g.total_cells() * p];
    for (li, lv) in g.levels.iter().enumerate() {
        let l = li + 1;
        let s = lv.group_tokens();
        let (w, b) = weights_of(weights, li, source);
        for grp in 0..lv.groups() {
            let tokens = group_tokens(g, l, grp);
            for r in 0..p {
                let count = g.multiplicity(l, grp, r);
                if count == 0 {
                    continue;
                }
                let dst = &mut out[(lv.cell_offset + grp) * p + r];
                let segment = g.segment_offsets(l, r);
                for (c, y) in dst.iter_mut().enumerate() {
                    let at = |t: usize| tokens[t].map_or(0.0, |j| x[j * d + c] as f64);
                    *y = match kind {
                        Downsampling::Mean => {
                            segment.iter().map(|&t| at(t)).sum::<f64>() / count as f64
                        }
                        Downsampling::Basis => (0..s).map(|t| w[r * s + t] as f64 * at(t)).sum(),
                        Downsampling::Depthwise => {
                            let wr = &w[(c * p + r) * s..(c * p + r + 1) * s];
                            (0..s).map(|t| wr[t] as f64 * at(t)).sum::<f64>() + b[c * p + r] as f64
                        }
                    };
                }
            }
        }
    }
    out
}

/// The real token at each position `t` of group `grp` at level l (None for padding).
fn group_tokens(g: &Geometry, l: usize, grp: usize) -> Vec<Option<usize>> {
    g.group_positions(l, grp)
        .into_iter()
        .map(|(y, x)| g.token_at(y, x))
        .collect()
}

fn weights_of(w: &DownsampleWeights, li: usize, source: Source) -> (&[f32], &[f32]) {
    match (w.levels.get(li), source) {
        (Some(lw), Source::Keys) => (&lw.wk, &lw.bk),
        (Some(lw), Source::Values) => (&lw.wv, &lw.bv),
        (Some(lw), Source::Queries) => (&lw.wq, &lw.bq),
        (None, _) => (&[], &[]),
    }
}

/// Gradients of the weights of one level, in f64 while they accumulate:
/// `[wk, wv, bk, bv, wq, bq]`, each shaped like the matching `LevelWeights` field.
pub(crate) type LevelGrads = [Vec<f64>; 6];

/// Where a source's weight and bias gradients sit in `LevelGrads`.
fn grad_parts(source: Source) -> (usize, usize) {
    match source {
        Source::Keys => (0, 2),
        Source::Values => (1, 3),
        Source::Queries => (4, 5),
    }
}

/// The adjoint of `coarse_rows` for one head: given the gradients of the coarse rows of
/// `source` (`up`, one d-vector per coarse row), adds their share to the token gradients
/// `grad` (n x d) and to the weight gradients `dw` (learned kinds). Rows without real tokens
/// were never used and pass nothing back.
#[allow(clippy::too_many_arguments)]
pub(crate) fn downsample_backward(
    g: &Geometry,
    kind: Downsampling,
    weights: &DownsampleWeights,
    source: Source,
    x: &[f32],
    d: usize,
    up: &[Vec<f64>],
    grad: &mut [f64],
    dw: &mut [LevelGrads],
) {
    let p = g.p;
    let (wi, bi) = grad_parts(source);
    for (li, lv) in g.levels.iter().enumerate() {
        let l = li + 1;
        let s = lv.group_tokens();
        let (w, _) = weights_of(weights, li, source);
        // Mean has no weights: its level gradients stay empty and are never indexed.
        let mut no_weights = LevelGrads::default();
        let parts = dw.get_mut(li).unwrap_or(&mut no_weights);
        let [dws, dbs] = parts
            .get_disjoint_mut([wi, bi])
            .expect("two distinct gradient parts");
        for grp in 0..lv.groups() {
            let tokens = group_tokens(g, l, grp);
            for r in 0..p {
                let row = (lv.cell_offset + grp) * p + r;
                let count = g.multiplicity(l, grp, r);
                if count == 0 {
                    continue;
                }
                let up = &up[row];
                match kind {
                    Downsampling::Mean => {
                        for t in g.segment_offsets(l, r) {
                            let Some(j) = tokens[t] else { continue };
                            for c in 0..d {
                                grad[j * d + c] += up[c] / count as f64;
                            }
                        }
                    }
                    Downsampling::Basis => {
                        for (t, tok) in tokens.iter().enumerate() {
                            let Some(j) = *tok else { continue };
                            let wt = w[r * s + t] as f64;
                            for c in 0..d {
                                grad[j * d + c] += wt * up[c];
                                dws[r * s + t] += up[c] * x[j * d + c] as f64;
                            }
                        }
                    }
                    Downsampling::Depthwise => {
                        for c in 0..d {
                            let at = (c * p + r) * s;
                            dbs[c * p + r] += up[c];
                            for (t, tok) in tokens.iter().enumerate() {
                                let Some(j) = *tok else { continue };
                                grad[j * d + c] += w[at + t] as f64 * up[c];
                                dws[at + t] += up[c] * x[j * d + c] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
}
