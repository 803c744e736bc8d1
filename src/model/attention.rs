//! FMA attention for the model on the CPU, forward and backward, generic over the float type.
//!
//! The reference (`crate::reference`) re-derives each query's keys from the geometry on every
//! call, in f64; training runs this attention millions of times on one small grid, so here the
//! geometry is turned once into lists: each query's near keys and coarse rows, and each coarse
//! row's member tokens. The computation is the same (tests compare it with the reference).

use num_traits::Float;

use super::layers::{c, dot};
use crate::config::{Downsampling, FmaConfig};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::reference::{far_rows_of, near_keys};

/// One coarse row: its level, its segment index and the real tokens it summarises, each with
/// its position in the group (the weights' last index).
#[derive(Clone, Debug, Default)]
struct Row {
    level: usize,
    group: usize,
    r: usize,
    count: usize,
    /// (position in the group, token), real tokens only. For `Mean`, the segment's tokens.
    members: Vec<(usize, usize)>,
}

/// The key lists of one geometry, built once.
#[derive(Clone, Debug)]
pub struct SparseFma {
    n: usize,
    d: usize,
    p: usize,
    scale: f64,
    kind: Downsampling,
    /// Tokens per group per level, and the levels' layout.
    group_tokens: Vec<usize>,
    levels: Vec<crate::geometry::Level>,
    rows: Vec<Row>,
    /// Per query: its near keys, then its coarse rows with their score offsets.
    near: Vec<Vec<usize>>,
    far: Vec<Vec<(usize, f64)>>,
}

/// What the backward needs from one head's forward.
#[derive(Clone, Debug, Default)]
pub struct HeadCache<T> {
    kc: Vec<T>,
    vc: Vec<T>,
    /// Softmax probabilities, per query near keys first then coarse rows, concatenated.
    probs: Vec<T>,
}

/// One level's downsampling weights: wk, wv, bk, bv (empty where the kind has none).
pub type LevelRefs<'a, T> = [&'a [T]; 4];

impl SparseFma {
    /// Lists for `n` tokens and head dimension `d` under `config`.
    pub fn new(n: usize, d: usize, config: &FmaConfig) -> Result<SparseFma> {
        let g = Geometry::new(n, config)?;
        let p = g.p;
        let mut rows = vec![Row::default(); g.total_cells() * p];
        for (li, lv) in g.levels.iter().enumerate() {
            let l = li + 1;
            for grp in 0..lv.groups() {
                let tokens: Vec<Option<usize>> = g
                    .group_positions(l, grp)
                    .into_iter()
                    .map(|(y, x)| g.token_at(y, x))
                    .collect();
                for r in 0..p {
                    let row = &mut rows[(lv.cell_offset + grp) * p + r];
                    row.level = li;
                    row.group = grp;
                    row.r = r;
                    row.count = g.multiplicity(l, grp, r);
                    let positions: Vec<usize> = match config.downsampling {
                        Downsampling::Mean => g.segment_offsets(l, r),
                        _ => (0..tokens.len()).collect(),
                    };
                    row.members = positions
                        .into_iter()
                        .filter_map(|t| tokens[t].map(|j| (t, j)))
                        .collect();
                }
            }
        }
        let counts: Vec<usize> = rows.iter().map(|r| r.count).collect();
        let near = (0..n).map(|i| near_keys(&g, i)).collect();
        let far = (0..n)
            .map(|i| {
                far_rows_of(&g, &counts, i)
                    .into_iter()
                    .map(|row| {
                        let bias = if config.multiplicity {
                            (counts[row] as f64).ln()
                        } else {
                            0.0
                        };
                        (row, bias)
                    })
                    .collect()
            })
            .collect();
        Ok(SparseFma {
            n,
            d,
            p,
            scale: config.scale_for(d) as f64,
            kind: config.downsampling,
            group_tokens: g.group_tokens(),
            levels: g.levels.clone(),
            rows,
            near,
            far,
        })
    }

    /// Keys plus coarse rows query i sees.
    pub fn keys_seen(&self, i: usize) -> usize {
        self.near[i].len() + self.far[i].len()
    }

    /// The coarse rows and the near keys of query i: (near tokens, coarse rows with their level).
    pub fn lists(&self, i: usize) -> (&[usize], Vec<(usize, usize)>) {
        let far = self.far[i]
            .iter()
            .map(|&(row, _)| (row, self.rows[row].level))
            .collect();
        (&self.near[i], far)
    }

    /// Query i's attention probabilities in `cache`, in the order of `lists(i)`: near keys,
    /// then coarse rows.
    pub fn query_probs<'a, T>(&self, cache: &'a HeadCache<T>, i: usize) -> &'a [T] {
        let start: usize = (0..i).map(|j| self.keys_seen(j)).sum();
        &cache.probs[start..start + self.keys_seen(i)]
    }

    /// The token-grid rectangle a coarse row summarises: (level l = 1.., top, left, height,
    /// width), in padded grid coordinates.
    pub fn row_rect(&self, row: usize) -> (usize, usize, usize, usize, usize) {
        let r = &self.rows[row];
        let lv = &self.levels[r.level];
        let (gy, gx) = (r.group / lv.groups_x, r.group % lv.groups_x);
        (
            r.level + 1,
            gy * lv.group_h,
            gx * lv.group_w,
            lv.group_h,
            lv.group_w,
        )
    }

    /// The weight of row `row`'s member at group position `t` for channel `ch`.
    fn weight<T: Float>(&self, w: &[T], row: &Row, t: usize, ch: usize) -> T {
        let s = self.group_tokens[row.level];
        match self.kind {
            Downsampling::Mean => T::one() / c::<T>(row.count as f64),
            Downsampling::Basis => w[row.r * s + t],
            Downsampling::Depthwise => w[(ch * self.p + row.r) * s + t],
        }
    }

    /// Coarse rows of one head's `x` (keys: part 0, values: part 1), `[rows, d]`.
    fn downsample<T: Float>(&self, x: &[T], weights: &[LevelRefs<T>], part: usize) -> Vec<T> {
        let d = self.d;
        let mut out = vec![T::zero(); self.rows.len() * d];
        for (row, dst) in self.rows.iter().zip(out.chunks_exact_mut(d)) {
            if row.count == 0 {
                continue;
            }
            let lw = weights.get(row.level).copied().unwrap_or([&[]; 4]);
            let (w, b) = (lw[part], lw[part + 2]);
            for (ch, o) in dst.iter_mut().enumerate() {
                let mut acc = if self.kind == Downsampling::Depthwise {
                    b[ch * self.p + row.r]
                } else {
                    T::zero()
                };
                for &(t, j) in &row.members {
                    acc = acc + self.weight(w, row, t, ch) * x[j * d + ch];
                }
                *o = acc;
            }
        }
        out
    }

    /// One head: `q`, `k`, `v` are `[n, d]`; returns O `[n, d]` and what the backward needs.
    pub fn forward<T: Float>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        weights: &[LevelRefs<T>],
    ) -> (Vec<T>, HeadCache<T>) {
        let d = self.d;
        let scale = c::<T>(self.scale);
        let kc = self.downsample(k, weights, 0);
        let vc = self.downsample(v, weights, 1);
        let mut o = vec![T::zero(); self.n * d];
        let mut probs = Vec::new();
        let mut scores = Vec::new();
        for i in 0..self.n {
            let qi = &q[i * d..(i + 1) * d];
            scores.clear();
            scores.extend(
                self.near[i]
                    .iter()
                    .map(|&j| dot(qi, &k[j * d..(j + 1) * d]) * scale),
            );
            scores.extend(
                self.far[i]
                    .iter()
                    .map(|&(row, bias)| dot(qi, &kc[row * d..(row + 1) * d]) * scale + c(bias)),
            );
            let max = scores.iter().fold(T::neg_infinity(), |m, &s| m.max(s));
            let start = probs.len();
            probs.extend(scores.iter().map(|&s| (s - max).exp()));
            let sum = probs[start..].iter().fold(T::zero(), |a, &b| a + b);
            let oi = &mut o[i * d..(i + 1) * d];
            let values = self.near[i].iter().map(|&j| &v[j * d..(j + 1) * d]).chain(
                self.far[i]
                    .iter()
                    .map(|&(row, _)| &vc[row * d..(row + 1) * d]),
            );
            for (pr, vr) in probs[start..].iter_mut().zip(values) {
                *pr = *pr / sum;
                for (a, &b) in oi.iter_mut().zip(vr) {
                    *a = *a + *pr * b;
                }
            }
        }
        (o, HeadCache { kc, vc, probs })
    }

    /// Backward of `forward` for upstream `d_o`: returns dq, dk, dv (`[n, d]`) and adds the
    /// weight gradients into `dw` (per level wk, wv, bk, bv, shaped like the weights).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        weights: &[LevelRefs<T>],
        cache: &HeadCache<T>,
        d_o: &[T],
        dw: &mut [[&mut [T]; 4]],
    ) -> [Vec<T>; 3] {
        let d = self.d;
        let scale = c::<T>(self.scale);
        let (kc, vc) = (&cache.kc, &cache.vc);
        let mut dq = vec![T::zero(); self.n * d];
        let mut dk = vec![T::zero(); self.n * d];
        let mut dv = vec![T::zero(); self.n * d];
        let mut dkc = vec![T::zero(); kc.len()];
        let mut dvc = vec![T::zero(); vc.len()];
        let mut at = 0;
        let mut ds = Vec::new();
        for i in 0..self.n {
            let (qi, doi) = (&q[i * d..(i + 1) * d], &d_o[i * d..(i + 1) * d]);
            let seen = self.keys_seen(i);
            let probs = &cache.probs[at..at + seen];
            at += seen;
            // dP_j = dO . v_j; dS_j = P_j (dP_j - sum_k P_k dP_k).
            ds.clear();
            ds.extend(
                self.near[i]
                    .iter()
                    .map(|&j| dot(doi, &v[j * d..(j + 1) * d]))
                    .chain(
                        self.far[i]
                            .iter()
                            .map(|&(row, _)| dot(doi, &vc[row * d..(row + 1) * d])),
                    ),
            );
            let delta = probs
                .iter()
                .zip(&ds)
                .fold(T::zero(), |s, (&p, &g)| s + p * g);
            for (g, &p) in ds.iter_mut().zip(probs) {
                *g = p * (*g - delta) * scale;
            }
            let dqi = &mut dq[i * d..(i + 1) * d];
            let near = self.near[i].iter().map(|&j| j * d);
            let far = self.far[i].iter().map(|&(row, _)| row * d);
            for (idx, off) in near.enumerate() {
                let (p, g) = (probs[idx], ds[idx]);
                for ch in 0..d {
                    dqi[ch] = dqi[ch] + g * k[off + ch];
                    dk[off + ch] = dk[off + ch] + g * qi[ch];
                    dv[off + ch] = dv[off + ch] + p * doi[ch];
                }
            }
            let skip = self.near[i].len();
            for (idx, off) in far.enumerate() {
                let (p, g) = (probs[skip + idx], ds[skip + idx]);
                for ch in 0..d {
                    dqi[ch] = dqi[ch] + g * kc[off + ch];
                    dkc[off + ch] = dkc[off + ch] + g * qi[ch];
                    dvc[off + ch] = dvc[off + ch] + p * doi[ch];
                }
            }
        }
        // The coarse rows' gradients flow to their member tokens and to the weights.
        for (ri, row) in self.rows.iter().enumerate() {
            if row.count == 0 {
                continue;
            }
            let lw = weights.get(row.level).copied().unwrap_or([&[]; 4]);
            for (part, up, x, dx) in [(0, &dkc, k, &mut dk), (1, &dvc, v, &mut dv)] {
                let up = &up[ri * d..(ri + 1) * d];
                for ch in 0..d {
                    let g = up[ch];
                    for &(t, j) in &row.members {
                        dx[j * d + ch] = dx[j * d + ch] + self.weight(lw[part], row, t, ch) * g;
                    }
                }
                let s = self.group_tokens[row.level];
                let Some(lg) = dw.get_mut(row.level) else {
                    continue;
                };
                match self.kind {
                    Downsampling::Mean => {}
                    Downsampling::Basis => {
                        for &(t, j) in &row.members {
                            let w = &mut lg[part][row.r * s + t];
                            *w = *w + dot(up, &x[j * d..(j + 1) * d]);
                        }
                    }
                    Downsampling::Depthwise => {
                        for ch in 0..d {
                            let g = up[ch];
                            for &(t, j) in &row.members {
                                let w = &mut lg[part][(ch * self.p + row.r) * s + t];
                                *w = *w + g * x[j * d + ch];
                            }
                            let b = &mut lg[part + 2][ch * self.p + row.r];
                            *b = *b + g;
                        }
                    }
                }
            }
        }
        [dq, dk, dv]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DownsampleWeights, Shape};
    use crate::reference::{fma_backward, fma_forward_f64};

    fn values(n: usize, seed: f64) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f64 + seed) * 0.613).sin() as f32)
            .collect()
    }

    /// Same O and gradients as the reference, for every kind, with and without coarse levels
    /// and with padding (a 12 x 12 grid pads to 16 x 16).
    #[test]
    fn matches_the_reference() {
        let cases = [
            (16, 2, 1, Downsampling::Depthwise),
            (16, 2, 1, Downsampling::Basis),
            (16, 4, 4, Downsampling::Mean),
            (16, 8, 1, Downsampling::Mean),
            (12, 2, 4, Downsampling::Depthwise),
        ];
        let d = 5;
        for (side, m, p, kind) in cases {
            let cfg = FmaConfig {
                downsampling: kind,
                ..FmaConfig::new(m, p)
            }
            .image(side, side);
            let n = side * side;
            let g = Geometry::new(n, &cfg).unwrap();
            let mut w = DownsampleWeights::mean_init(kind, &g, d);
            for (i, lw) in w.levels.iter_mut().enumerate() {
                for x in lw.wk.iter_mut().chain(&mut lw.bv) {
                    *x += 0.05 * ((i as f32 + *x) * 7.0).sin();
                }
            }
            let (q, k, v, d_o) = (
                values(n * d, 1.0),
                values(n * d, 2.0),
                values(n * d, 3.0),
                values(n * d, 4.0),
            );
            let shape = Shape::new(1, 1, n, d);
            let want = fma_forward_f64(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
            let grads = fma_backward(&q, &k, &v, &d_o, shape, &cfg, Some(&w)).unwrap();

            let f = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let wl: Vec<[Vec<f64>; 4]> = w
                .levels
                .iter()
                .map(|l| [f(&l.wk), f(&l.wv), f(&l.bk), f(&l.bv)])
                .collect();
            let refs: Vec<LevelRefs<f64>> = wl
                .iter()
                .map(|l| [&l[0][..], &l[1][..], &l[2][..], &l[3][..]])
                .collect();
            let sparse = SparseFma::new(n, d, &cfg).unwrap();
            let (q64, k64, v64, do64) = (f(&q), f(&k), f(&v), f(&d_o));
            let (o, cache) = sparse.forward(&q64, &k64, &v64, &refs);
            let close = |what: &str, a: &[f64], b: &[f64], tol: f64| {
                assert_eq!(a.len(), b.len(), "{what}");
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= tol,
                        "{side}x{side} m={m} p={p} {kind:?} {what}[{i}]: {x} vs {y}"
                    );
                }
            };
            close("o", &o, &want.o, 1e-12);
            let mut gw: Vec<[Vec<f64>; 4]> = wl
                .iter()
                .map(|l| l.clone().map(|x| vec![0.0; x.len()]))
                .collect();
            let mut gw_refs: Vec<[&mut [f64]; 4]> = gw
                .iter_mut()
                .map(|l| {
                    let [a, b, c, e] = l;
                    [&mut a[..], &mut b[..], &mut c[..], &mut e[..]]
                })
                .collect();
            let [dq, dk, dv] =
                sparse.backward(&q64, &k64, &v64, &refs, &cache, &do64, &mut gw_refs);
            // The reference rounds its gradients to f32.
            close("dq", &dq, &f(&grads.dq), 1e-6);
            close("dk", &dk, &f(&grads.dk), 1e-6);
            close("dv", &dv, &f(&grads.dv), 1e-6);
            for (l, lw) in grads.dw.levels.iter().enumerate() {
                for (part, want) in [&lw.wk, &lw.wv, &lw.bk, &lw.bv].into_iter().enumerate() {
                    close(
                        &format!("dw level {l} part {part}"),
                        &gw[l][part],
                        &f(want),
                        1e-5,
                    );
                }
            }
        }
    }
}
