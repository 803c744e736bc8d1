//! FMA attention for the model on the CPU, forward and backward, generic over the float type.
//!
//! The reference (`crate::reference`) re-derives each query's keys from the geometry on every
//! call, in f64; training runs this attention millions of times on one small grid, so here the
//! geometry is turned once into lists: each query's near keys and coarse rows, and each coarse
//! row's member tokens. The computation is the same (tests compare it with the reference).
//!
//! The O(n) variant (`downsample_queries`, docs/fma.md §13) is computed here per query, directly
//! from its definition: a query scores its coarse rows with its segment's coarse query. The
//! lists of the 16 x 16 grid are short, so the downward pass (the GPU's way) would not pay.

use num_traits::Float;

use super::layers::{c, dot};
use crate::config::{Downsampling, FmaConfig};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::reference::far_rows_of;

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
    /// The O(n) variant: queries are downsampled too.
    queries: bool,
    /// Tokens per group per level, and the levels' layout.
    group_tokens: Vec<usize>,
    levels: Vec<crate::geometry::Level>,
    rows: Vec<Row>,
    /// Per query: its near keys, then its coarse rows with their score offsets and the coarse
    /// row whose query scores them (the query itself, `None`, unless `downsample_queries`).
    near: Vec<Vec<usize>>,
    far: Vec<Vec<(usize, f64, Option<usize>)>>,
}

/// What the backward needs from one head's forward.
#[derive(Clone, Debug, Default)]
pub struct HeadCache<T> {
    kc: Vec<T>,
    vc: Vec<T>,
    /// Coarse queries (`downsample_queries` only, else empty).
    qc: Vec<T>,
    /// Softmax probabilities, per query near keys first then coarse rows, concatenated.
    probs: Vec<T>,
}

/// One level's downsampling weights: wk, wv, bk, bv, wq, bq (empty where the kind or the
/// variant has none).
pub type LevelRefs<'a, T> = [&'a [T]; 6];

/// Which tensor a downsampling reads: (weight, bias) indices into `LevelRefs`.
const KEYS: (usize, usize) = (0, 2);
const VALUES: (usize, usize) = (1, 3);
const QUERIES: (usize, usize) = (4, 5);

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
        let near = (0..n).map(|i| g.near_keys(i)).collect();
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
                        let query = config
                            .downsample_queries
                            .then(|| g.token_segment(rows[row].level + 1, i));
                        (row, bias, query)
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
            queries: config.downsample_queries,
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
            .map(|&(row, ..)| (row, self.rows[row].level))
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

    /// Coarse rows of one head's `x` with the weights `part` (`KEYS`, `VALUES`, `QUERIES`),
    /// `[rows, d]`.
    fn downsample<T: Float>(
        &self,
        x: &[T],
        weights: &[LevelRefs<T>],
        part: (usize, usize),
    ) -> Vec<T> {
        let d = self.d;
        let mut out = vec![T::zero(); self.rows.len() * d];
        for (row, dst) in self.rows.iter().zip(out.chunks_exact_mut(d)) {
            if row.count == 0 {
                continue;
            }
            let lw = weights.get(row.level).copied().unwrap_or([&[]; 6]);
            let (w, b) = (lw[part.0], lw[part.1]);
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
        let kc = self.downsample(k, weights, KEYS);
        let vc = self.downsample(v, weights, VALUES);
        let qc = if self.queries {
            self.downsample(q, weights, QUERIES)
        } else {
            Vec::new()
        };
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
            scores.extend(self.far[i].iter().map(|&(row, bias, query)| {
                let qr = query.map_or(qi, |s| &qc[s * d..(s + 1) * d]);
                dot(qr, &kc[row * d..(row + 1) * d]) * scale + c(bias)
            }));
            let max = scores.iter().fold(T::neg_infinity(), |m, &s| m.max(s));
            let start = probs.len();
            probs.extend(scores.iter().map(|&s| (s - max).exp()));
            let sum = probs[start..].iter().fold(T::zero(), |a, &b| a + b);
            let oi = &mut o[i * d..(i + 1) * d];
            let values = self.near[i].iter().map(|&j| &v[j * d..(j + 1) * d]).chain(
                self.far[i]
                    .iter()
                    .map(|&(row, ..)| &vc[row * d..(row + 1) * d]),
            );
            for (pr, vr) in probs[start..].iter_mut().zip(values) {
                *pr = *pr / sum;
                for (a, &b) in oi.iter_mut().zip(vr) {
                    *a = *a + *pr * b;
                }
            }
        }
        (o, HeadCache { kc, vc, qc, probs })
    }

    /// Backward of `forward` for upstream `d_o`: returns dq, dk, dv (`[n, d]`) and adds the
    /// weight gradients into `dw` (per level wk, wv, bk, bv, wq, bq, shaped like the weights).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        weights: &[LevelRefs<T>],
        cache: &HeadCache<T>,
        d_o: &[T],
        dw: &mut [[&mut [T]; 6]],
    ) -> [Vec<T>; 3] {
        let d = self.d;
        let scale = c::<T>(self.scale);
        let (kc, vc, qc) = (&cache.kc, &cache.vc, &cache.qc);
        let mut dq = vec![T::zero(); self.n * d];
        let mut dk = vec![T::zero(); self.n * d];
        let mut dv = vec![T::zero(); self.n * d];
        let mut dkc = vec![T::zero(); kc.len()];
        let mut dvc = vec![T::zero(); vc.len()];
        let mut dqc = vec![T::zero(); qc.len()];
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
                            .map(|&(row, ..)| dot(doi, &vc[row * d..(row + 1) * d])),
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
            let far = self.far[i].iter().map(|&(row, _, query)| (row * d, query));
            for (idx, off) in near.enumerate() {
                let (p, g) = (probs[idx], ds[idx]);
                for ch in 0..d {
                    dqi[ch] = dqi[ch] + g * k[off + ch];
                    dk[off + ch] = dk[off + ch] + g * qi[ch];
                    dv[off + ch] = dv[off + ch] + p * doi[ch];
                }
            }
            let skip = self.near[i].len();
            for (idx, (off, query)) in far.enumerate() {
                let (p, g) = (probs[skip + idx], ds[skip + idx]);
                // The score's query: q_i itself, or its segment's coarse query.
                let (qr, dqr) = match query {
                    None => (qi, &mut *dqi),
                    Some(s) => (&qc[s * d..(s + 1) * d], &mut dqc[s * d..(s + 1) * d]),
                };
                for ch in 0..d {
                    dqr[ch] = dqr[ch] + g * kc[off + ch];
                    dkc[off + ch] = dkc[off + ch] + g * qr[ch];
                    dvc[off + ch] = dvc[off + ch] + p * doi[ch];
                }
            }
        }
        // The coarse rows' gradients flow to their member tokens and to the weights.
        for (ri, row) in self.rows.iter().enumerate() {
            if row.count == 0 {
                continue;
            }
            let lw = weights.get(row.level).copied().unwrap_or([&[]; 6]);
            let parts = [
                (KEYS, &dkc, k, &mut dk),
                (VALUES, &dvc, v, &mut dv),
                (QUERIES, &dqc, q, &mut dq),
            ];
            for ((part, bias), up, x, dx) in parts {
                if up.is_empty() {
                    continue;
                }
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
                            let b = &mut lg[bias][ch * self.p + row.r];
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
    use crate::config::Shape;
    use crate::reference::{fma_backward, fma_forward_f64};
    use crate::weights::DownsampleWeights;

    fn values(n: usize, seed: f64) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f64 + seed) * 0.613).sin() as f32)
            .collect()
    }

    fn level_refs(w: &[[Vec<f64>; 6]]) -> Vec<LevelRefs<'_, f64>> {
        w.iter().map(|l| l.each_ref().map(|x| &x[..])).collect()
    }

    fn grad_refs(g: &mut [[Vec<f64>; 6]]) -> Vec<[&mut [f64]; 6]> {
        g.iter_mut()
            .map(|l| l.each_mut().map(|x| &mut x[..]))
            .collect()
    }

    /// Same O and gradients as the reference, for every kind, with and without coarse levels
    /// and with padding (a 12 x 12 grid pads to 16 x 16); the O(n) variant too (`true`).
    #[test]
    fn matches_the_reference() {
        let cases = [
            (16, 2, 1, Downsampling::Depthwise, false),
            (16, 2, 1, Downsampling::Basis, false),
            (16, 4, 4, Downsampling::Mean, false),
            (16, 8, 1, Downsampling::Mean, false),
            (12, 2, 4, Downsampling::Depthwise, false),
            (16, 2, 1, Downsampling::Depthwise, true),
            (12, 2, 4, Downsampling::Basis, true),
            (12, 2, 4, Downsampling::Mean, true),
        ];
        let d = 5;
        for (side, m, p, kind, queries) in cases {
            let cfg = FmaConfig {
                downsampling: kind,
                downsample_queries: queries,
                ..FmaConfig::new(m, p)
            }
            .image(side, side);
            let n = side * side;
            let g = Geometry::new(n, &cfg).unwrap();
            let mut w = DownsampleWeights::mean_init(kind, &g, d);
            if queries {
                w = w.with_query_weights();
            }
            for (i, lw) in w.levels.iter_mut().enumerate() {
                for x in lw.wk.iter_mut().chain(&mut lw.bv) {
                    *x += 0.05 * ((i as f32 + *x) * 7.0).sin();
                }
                for x in lw.wq.iter_mut().chain(&mut lw.bq) {
                    *x -= 0.05 * ((i as f32 + *x) * 5.0).sin();
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
            let wl: Vec<[Vec<f64>; 6]> = w
                .levels
                .iter()
                .map(|l| [&l.wk, &l.wv, &l.bk, &l.bv, &l.wq, &l.bq].map(|x| f(x)))
                .collect();
            let refs = level_refs(&wl);
            let sparse = SparseFma::new(n, d, &cfg).unwrap();
            let (q64, k64, v64, do64) = (f(&q), f(&k), f(&v), f(&d_o));
            let (o, cache) = sparse.forward(&q64, &k64, &v64, &refs);
            let close = |what: &str, a: &[f64], b: &[f64], tol: f64| {
                assert_eq!(a.len(), b.len(), "{what}");
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= tol,
                        "{side}x{side} m={m} p={p} {kind:?} {queries} {what}[{i}]: {x} vs {y}"
                    );
                }
            };
            close("o", &o, &want.o, 1e-12);
            let mut gw: Vec<[Vec<f64>; 6]> = wl
                .iter()
                .map(|l| l.clone().map(|x| vec![0.0; x.len()]))
                .collect();
            let mut gw_refs = grad_refs(&mut gw);
            let [dq, dk, dv] =
                sparse.backward(&q64, &k64, &v64, &refs, &cache, &do64, &mut gw_refs);
            // The reference rounds its gradients to f32.
            close("dq", &dq, &f(&grads.dq), 1e-6);
            close("dk", &dk, &f(&grads.dk), 1e-6);
            close("dv", &dv, &f(&grads.dv), 1e-6);
            for (l, lw) in grads.dw.levels.iter().enumerate() {
                let parts = [&lw.wk, &lw.wv, &lw.bk, &lw.bv, &lw.wq, &lw.bq];
                for (part, want) in parts.into_iter().enumerate() {
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

/// The O(n) variant (`downsample_queries`) against its definition, its oracle and finite
/// differences.
#[cfg(test)]
mod downsampled_queries {
    use super::*;
    use crate::weights::DownsampleWeights;

    fn values(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64 + seed) * 0.613).sin()).collect()
    }

    /// Mean-initialised weights (queries' too) moved off the mean, in f64: per level wk, wv,
    /// bk, bv, wq, bq.
    fn weights(g: &Geometry, kind: Downsampling, d: usize) -> Vec<[Vec<f64>; 6]> {
        let w = DownsampleWeights::mean_init(kind, g, d).with_query_weights();
        w.levels
            .iter()
            .enumerate()
            .map(|(l, lw)| {
                [&lw.wk, &lw.wv, &lw.bk, &lw.bv, &lw.wq, &lw.bq].map(|x| {
                    x.iter()
                        .enumerate()
                        .map(|(i, &a)| a as f64 + 0.1 * ((l * 7 + i) as f64 * 1.3).sin())
                        .collect()
                })
            })
            .collect()
    }

    fn refs(w: &[[Vec<f64>; 6]]) -> Vec<LevelRefs<'_, f64>> {
        w.iter().map(|l| l.each_ref().map(|x| &x[..])).collect()
    }

    /// docs/fma.md §13 written out for one head, independently of `SparseFma`'s lists: near
    /// keys from the fine cells' Chebyshev distance, every coarse row made from the grid, and
    /// the query's segment found by searching its group's segments for its position.
    #[allow(clippy::too_many_arguments)]
    fn direct(
        g: &Geometry,
        cfg: &FmaConfig,
        w: &[[Vec<f64>; 6]],
        q: &[f64],
        k: &[f64],
        v: &[f64],
        n: usize,
        d: usize,
    ) -> Vec<f64> {
        let (p, tau) = (g.p, cfg.scale_for(d) as f64);
        // Row (l, grp, r) of `x` with weight `wi` and bias `bi`, and its real-token count.
        let coarse = |x: &[f64], l: usize, grp: usize, r: usize, wi: usize, bi: usize| {
            let pos = g.group_positions(l, grp);
            let seg = g.segment_offsets(l, r);
            let real = |t: &usize| g.token_at(pos[*t].0, pos[*t].1).is_some();
            let count = seg.iter().filter(|t| real(t)).count();
            let lw = &w[l - 1];
            let row: Vec<f64> = (0..d)
                .map(|ch| {
                    let mut acc = match cfg.downsampling {
                        Downsampling::Depthwise => lw[bi][ch * p + r],
                        _ => 0.0,
                    };
                    for (t, &(y, xx)) in pos.iter().enumerate() {
                        let Some(j) = g.token_at(y, xx) else { continue };
                        let wt = match cfg.downsampling {
                            Downsampling::Mean if seg.contains(&t) => 1.0 / count as f64,
                            Downsampling::Mean => 0.0,
                            Downsampling::Basis => lw[wi][r * pos.len() + t],
                            Downsampling::Depthwise => lw[wi][(ch * p + r) * pos.len() + t],
                        };
                        acc += wt * x[j * d + ch];
                    }
                    acc
                })
                .collect();
            (count, row)
        };
        let mut o = vec![0.0; n * d];
        for i in 0..n {
            let (yi, xi) = g.position(i);
            let mut list: Vec<(f64, Vec<f64>)> = Vec::new();
            for j in 0..n {
                let (yj, xj) = g.position(j);
                let dy = (yi / g.cell_h).abs_diff(yj / g.cell_h);
                let dx = (xi / g.cell_w).abs_diff(xj / g.cell_w);
                if dy.max(dx) <= 1 {
                    let z = tau * dot(&q[i * d..(i + 1) * d], &k[j * d..(j + 1) * d]);
                    list.push((z, v[j * d..(j + 1) * d].to_vec()));
                }
            }
            for l in 1..=g.num_levels() {
                let own = g.cell_at_level(g.fine_cell_of(i), l);
                let pos = g.group_positions(l, own);
                let r_own = (0..p)
                    .find(|&r| g.segment_offsets(l, r).iter().any(|&t| pos[t] == (yi, xi)))
                    .expect("a token lies in one segment of its group");
                let (_, qc) = coarse(q, l, own, r_own, 4, 5);
                for grp in g.far_cells(l, own) {
                    for r in 0..p {
                        let (count, kc) = coarse(k, l, grp, r, 0, 2);
                        if count == 0 {
                            continue;
                        }
                        let (_, vc) = coarse(v, l, grp, r, 1, 3);
                        let mu = if cfg.multiplicity { count as f64 } else { 1.0 };
                        list.push((tau * dot(&qc, &kc) + mu.ln(), vc));
                    }
                }
            }
            let max = list.iter().fold(f64::NEG_INFINITY, |m, e| m.max(e.0));
            let sum: f64 = list.iter().map(|e| (e.0 - max).exp()).sum();
            for (z, vr) in &list {
                for (a, b) in o[i * d..(i + 1) * d].iter_mut().zip(vr) {
                    *a += (z - max).exp() / sum * b;
                }
            }
        }
        o
    }

    fn config(side: usize, m: usize, p: usize, kind: Downsampling, mult: bool) -> FmaConfig {
        FmaConfig {
            downsampling: kind,
            multiplicity: mult,
            downsample_queries: true,
            ..FmaConfig::new(m, p)
        }
        .image(side, side)
    }

    /// Every kind, p = 1 and 4, multiplicity on and off, padding (12 x 12 pads to 16 x 16),
    /// three levels (32 x 32): the same O as the definition; and the coarse queries matter.
    #[test]
    fn forward_matches_the_definition() {
        let d = 3;
        let cases = [
            (16, 2, 1, Downsampling::Depthwise, true),
            (16, 2, 4, Downsampling::Basis, true),
            (12, 2, 4, Downsampling::Mean, true),
            (12, 2, 1, Downsampling::Depthwise, false),
            (32, 2, 1, Downsampling::Mean, false),
        ];
        for (side, m, p, kind, mult) in cases {
            let cfg = config(side, m, p, kind, mult);
            let n = side * side;
            let g = Geometry::new(n, &cfg).unwrap();
            let w = weights(&g, kind, d);
            let (q, k, v) = (values(n * d, 1.0), values(n * d, 2.0), values(n * d, 3.0));
            let (o, _) = SparseFma::new(n, d, &cfg)
                .unwrap()
                .forward(&q, &k, &v, &refs(&w));
            let want = direct(&g, &cfg, &w, &q, &k, &v, n, d);
            for (i, (a, b)) in o.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-12,
                    "{side} {m} {p} {kind:?} o[{i}]: {a} vs {b}"
                );
            }
            // The O(n log n) variant differs: the test sees the coarse queries.
            let plain = FmaConfig {
                downsample_queries: false,
                ..cfg
            };
            let (o2, _) = SparseFma::new(n, d, &plain)
                .unwrap()
                .forward(&q, &k, &v, &refs(&w));
            let diff = o
                .iter()
                .zip(&o2)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff > 1e-4, "{side} {m} {p} {kind:?}: {diff}");
        }
    }

    /// Spec oracle: `Mean` with Q, K, V constant over every coarsest segment equals dense.
    #[test]
    fn mean_on_constant_segments_is_dense() {
        let (side, d) = (16, 3);
        for p in [1, 4] {
            let cfg = config(side, 2, p, Downsampling::Mean, true);
            let n = side * side;
            // Coarsest segments: 4 x 4 tokens (p = 1) or 2 x 2 (p = 4).
            let seg = if p == 1 { 4 } else { 2 };
            let field = |seed: f64| -> Vec<f64> {
                (0..n * d)
                    .map(|e| {
                        let (t, ch) = (e / d, e % d);
                        let (y, x) = (t / side / seg, t % side / seg);
                        ((y * 5 + x * 3 + ch) as f64 * 0.77 + seed).sin() * 2.0
                    })
                    .collect()
            };
            let (q, k, v) = (field(1.0), field(2.0), field(3.0));
            let (o, _) = SparseFma::new(n, d, &cfg).unwrap().forward(&q, &k, &v, &[]);
            let tau = cfg.scale_for(d) as f64;
            for i in 0..n {
                let z: Vec<f64> = (0..n)
                    .map(|j| tau * dot(&q[i * d..(i + 1) * d], &k[j * d..(j + 1) * d]))
                    .collect();
                let max = z.iter().fold(f64::NEG_INFINITY, |m, &a| m.max(a));
                let sum: f64 = z.iter().map(|a| (a - max).exp()).sum();
                for ch in 0..d {
                    let want: f64 = (0..n)
                        .map(|j| (z[j] - max).exp() / sum * v[j * d + ch])
                        .sum();
                    let got = o[i * d + ch];
                    assert!(
                        (got - want).abs() < 1e-12,
                        "p={p} o[{i}][{ch}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// dQ (through the coarse queries too), dK, dV and every weight's gradient, wq and bq
    /// included, against central finite differences of sum(dO * O), in f64.
    #[test]
    fn backward_matches_finite_differences() {
        let d = 3;
        for (side, p, kind) in [
            (16, 1, Downsampling::Depthwise),
            (12, 4, Downsampling::Basis),
            (12, 1, Downsampling::Mean),
        ] {
            let cfg = config(side, 2, p, kind, true);
            let n = side * side;
            let g = Geometry::new(n, &cfg).unwrap();
            let sparse = SparseFma::new(n, d, &cfg).unwrap();
            let w = weights(&g, kind, d);
            let x = [values(n * d, 1.0), values(n * d, 2.0), values(n * d, 3.0)];
            let d_o = values(n * d, 4.0);
            let loss = |x: &[Vec<f64>; 3], w: &[[Vec<f64>; 6]]| {
                let (o, _) = sparse.forward(&x[0], &x[1], &x[2], &refs(w));
                dot(&o, &d_o)
            };
            let (_, cache) = sparse.forward(&x[0], &x[1], &x[2], &refs(&w));
            let mut gw: Vec<[Vec<f64>; 6]> = w
                .iter()
                .map(|l| l.clone().map(|t| vec![0.0; t.len()]))
                .collect();
            let mut gw_refs: Vec<[&mut [f64]; 6]> = gw
                .iter_mut()
                .map(|l| l.each_mut().map(|t| &mut t[..]))
                .collect();
            let grads = sparse.backward(&x[0], &x[1], &x[2], &refs(&w), &cache, &d_o, &mut gw_refs);
            let h = 1e-5;
            let check = |what: String, got: f64, plus: f64, minus: f64| {
                let fd = (plus - minus) / (2.0 * h);
                assert!(
                    (fd - got).abs() <= 1e-7 + 1e-6 * fd.abs(),
                    "{side} p={p} {kind:?} {what}: finite difference {fd}, backward {got}"
                );
            };
            for part in 0..3 {
                for j in (0..n * d).step_by(13) {
                    let mut a = x.clone();
                    a[part][j] += h;
                    let mut b = x.clone();
                    b[part][j] -= h;
                    let got = grads[part][j];
                    check(
                        format!("d{}[{j}]", ["q", "k", "v"][part]),
                        got,
                        loss(&a, &w),
                        loss(&b, &w),
                    );
                }
            }
            for l in 0..w.len() {
                for part in 0..6 {
                    for j in 0..w[l][part].len() {
                        let mut a = w.clone();
                        a[l][part][j] += h;
                        let mut b = w.clone();
                        b[l][part][j] -= h;
                        let what = format!(
                            "level {} {}[{j}]",
                            l + 1,
                            ["wk", "wv", "bk", "bv", "wq", "bq"][part]
                        );
                        check(what, gw[l][part][j], loss(&x, &a), loss(&x, &b));
                    }
                }
            }
        }
    }
}
