//! Coarse keys and values of every group at every level (spec section 3), mirrors downsample.wgsl.

use crate::config::{DownsampleWeights, Downsampling};
use crate::geometry::Geometry;

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
    let p = g.p;
    let rows = g.total_cells() * p;
    let mut out = Coarse {
        k: vec![vec![0.0; d]; rows],
        v: vec![vec![0.0; d]; rows],
        count: vec![0; rows],
    };
    for (li, lv) in g.levels.iter().enumerate() {
        let l = li + 1;
        let s = lv.group_tokens();
        for grp in 0..lv.groups() {
            let tokens: Vec<Option<usize>> = g
                .group_positions(l, grp)
                .into_iter()
                .map(|(y, x)| g.token_at(y, x))
                .collect();
            for r in 0..p {
                let row = (lv.cell_offset + grp) * p + r;
                let count = g.multiplicity(l, grp, r);
                out.count[row] = count;
                if count == 0 {
                    continue; // skipped by the attention; left at zero
                }
                let segment = g.segment_offsets(l, r);
                for (src, dst, (w, b)) in [
                    (k, &mut out.k[row], weights_of(weights, li, true)),
                    (v, &mut out.v[row], weights_of(weights, li, false)),
                ] {
                    for c in 0..d {
                        let x = |t: usize| tokens[t].map_or(0.0, |j| src[j * d + c] as f64);
                        dst[c] = match kind {
                            Downsampling::Mean => {
                                segment.iter().map(|&t| x(t)).sum::<f64>() / count as f64
                            }
                            Downsampling::Basis => (0..s).map(|t| w[r * s + t] as f64 * x(t)).sum(),
                            Downsampling::Depthwise => {
                                let wr = &w[(c * p + r) * s..(c * p + r + 1) * s];
                                (0..s).map(|t| wr[t] as f64 * x(t)).sum::<f64>()
                                    + b[c * p + r] as f64
                            }
                        };
                    }
                }
            }
        }
    }
    out
}

fn weights_of(w: &DownsampleWeights, li: usize, key: bool) -> (&[f32], &[f32]) {
    match w.levels.get(li) {
        Some(lw) if key => (&lw.wk, &lw.bk),
        Some(lw) => (&lw.wv, &lw.bv),
        None => (&[], &[]),
    }
}

/// Gradients of the weights of one level, in f64 while they accumulate: `[wk, wv, bk, bv]`,
/// each shaped like the matching `LevelWeights` field.
pub(crate) type LevelGrads = [Vec<f64>; 4];

/// The adjoint of `downsample` for one head: given the gradients of the coarse keys and values
/// (`dkc`, `dvc`, one d-vector per coarse row), adds their share to the token gradients `dk`,
/// `dv` (n x d) and to the weight gradients `dw` (learned kinds). Rows without real tokens were
/// never used and pass nothing back.
#[allow(clippy::too_many_arguments)]
pub(crate) fn downsample_backward(
    g: &Geometry,
    kind: Downsampling,
    weights: &DownsampleWeights,
    k: &[f32],
    v: &[f32],
    d: usize,
    [dkc, dvc]: [&[Vec<f64>]; 2],
    [dk, dv]: [&mut [f64]; 2],
    dw: &mut [LevelGrads],
) {
    let p = g.p;
    for (li, lv) in g.levels.iter().enumerate() {
        let l = li + 1;
        let s = lv.group_tokens();
        for grp in 0..lv.groups() {
            let tokens: Vec<Option<usize>> = g
                .group_positions(l, grp)
                .into_iter()
                .map(|(y, x)| g.token_at(y, x))
                .collect();
            for r in 0..p {
                let row = (lv.cell_offset + grp) * p + r;
                let count = g.multiplicity(l, grp, r);
                if count == 0 {
                    continue;
                }
                let segment = g.segment_offsets(l, r);
                // Mean has no weights: its level gradients stay empty and are never indexed.
                let mut no_weights = LevelGrads::default();
                let [dwk, dwv, dbk, dbv] = dw.get_mut(li).unwrap_or(&mut no_weights);
                for (src, up, grad, (w, _), (dws, dbs)) in [
                    (
                        k,
                        &dkc[row],
                        &mut *dk,
                        weights_of(weights, li, true),
                        (dwk, dbk),
                    ),
                    (
                        v,
                        &dvc[row],
                        &mut *dv,
                        weights_of(weights, li, false),
                        (dwv, dbv),
                    ),
                ] {
                    match kind {
                        Downsampling::Mean => {
                            for &t in &segment {
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
                                    dws[r * s + t] += up[c] * src[j * d + c] as f64;
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
                                    dws[at + t] += up[c] * src[j * d + c] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
