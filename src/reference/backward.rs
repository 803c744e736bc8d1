//! FMA backward on the CPU (docs/fma.md §10), in f64: the oracle for the GPU backward kernels.
//!
//! Per query: recompute O_i and LSE_i, D_i = dO_i . O_i, then for every key it sees
//! P = exp(z - LSE_i), dS = P (dO_i . v - D_i), dq += tau dS k, dk += tau dS q,
//! dv += P dO_i, where q is the query that scored the key: q_i itself, or in the O(n) variant
//! (docs/fma.md §13) for a coarse key the coarse query of i's segment. Coarse keys, values and
//! queries collect their gradients per coarse row, which `downsample_backward` passes on to the
//! tokens and the weights.

use super::dot;
use super::downsample::{LevelGrads, Source, downsample_backward};
use super::fields::{far_rows, level_far_rows, row_bias};
use super::fma::{Head, checked};
use super::linear_backward::{factored_far_grads, upward_pass};
use crate::config::{FmaConfig, Shape};
use crate::error::{FmaError, Result};
use crate::weights::{DownsampleWeights, LevelWeights};

/// Gradients of a loss through FMA: `dq`, `dk`, `dv` shaped like q ([batch, heads, n, d]) and
/// `dw` shaped like the downsampling weights (summed over batch and heads, which share them;
/// no levels for `Mean`; `wq` and `bq` filled only with `downsample_queries`).
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    pub dw: DownsampleWeights,
}

/// Gradients of `sum(d_o * O)` with O = FMA(q, k, v): the backward pass for an upstream
/// gradient `d_o` shaped like O.
pub fn fma_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
) -> Result<Gradients> {
    backward(q, k, v, d_o, shape, config, weights, FarGrads::PerQuery)
}

/// `fma_backward` of the O(n) variant with the coarse gradients in the factored form the GPU
/// uses (docs/fma.md §13, "Backward"): per-segment sums of the queries' statistics built by an
/// upward pass, then one visit per (segment, coarse key) instead of one per (query, coarse
/// key). Equal to `fma_backward`; exposed for the test that checks it.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_factored(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
) -> Result<Gradients> {
    if !config.downsample_queries {
        return Err(FmaError::InvalidConfig(
            "the factored backward is the downsample_queries variant's: set the option".into(),
        ));
    }
    backward(q, k, v, d_o, shape, config, weights, FarGrads::PerSegment)
}

/// How the far field's gradients are gathered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FarGrads {
    /// Every query visits every coarse key it scored (the definition).
    PerQuery,
    /// O(n) variant: every segment visits its coarse keys once, with its queries' sums.
    PerSegment,
}

/// One query's backward statistics: its upstream gradient, D_i and LSE_i.
struct QueryGrad<'a> {
    d_o: &'a [f64],
    delta: f64,
    lse: f64,
}

impl QueryGrad<'_> {
    /// One scored key: `query` (tau-scaled) met `key` with score offset `bias`. Adds
    /// dS key to `dquery` (tau applied by the caller), dS query to `dkey` and P dO to `dval`.
    fn visit(
        &self,
        query: &[f64],
        bias: f64,
        [key, value]: [&[f64]; 2],
        [dquery, dkey, dval]: [&mut [f64]; 3],
    ) {
        let prob = (dot(query, key) + bias - self.lse).exp();
        let ds = prob * (dot(self.d_o, value) - self.delta);
        for c in 0..query.len() {
            dquery[c] += ds * key[c];
            dkey[c] += ds * query[c];
            dval[c] += prob * self.d_o[c];
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
    far: FarGrads,
) -> Result<Gradients> {
    let (g, weights) = checked(q, k, v, shape, config, weights)?;
    shape.check_len("do", d_o.len())?;
    let (n, d, p) = (shape.n, shape.d, g.p);
    let scale = config.scale_for(d) as f64;
    let kind = config.downsampling;
    let mut dw: Vec<LevelGrads> = if kind.is_learned() {
        weights
            .levels
            .iter()
            .map(|lw| [&lw.wk, &lw.wv, &lw.bk, &lw.bv, &lw.wq, &lw.bq].map(|x| vec![0.0; x.len()]))
            .collect()
    } else {
        Vec::new()
    };
    let mut out = Gradients {
        dq: vec![0.0; shape.elements()],
        dk: vec![0.0; shape.elements()],
        dv: vec![0.0; shape.elements()],
        dw: DownsampleWeights::default(),
    };
    let rows = g.total_cells() * p;
    for h in 0..shape.bh() {
        let span = h * n * d..(h + 1) * n * d;
        let (qh, kh, vh) = (&q[span.clone()], &k[span.clone()], &v[span.clone()]);
        let head = Head::new(&g, config, &weights, qh, kh, vh, d);
        let dout: Vec<f64> = d_o[span.clone()].iter().map(|&x| x as f64).collect();
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n * d]);
        let mut dkc = vec![vec![0.0; d]; rows];
        let mut dvc = dkc.clone();
        let mut dqc = dkc.clone();
        let (mut lse_all, mut delta_all) = (vec![0.0; n], vec![0.0; n]);
        for i in 0..n {
            let (o, lse) = head.triple(&g, config.multiplicity, i).finish();
            let at = i * d..(i + 1) * d;
            let (qi, doi) = (head.query(i), &dout[at.clone()]);
            let grad = QueryGrad {
                d_o: doi,
                delta: dot(doi, &o),
                lse,
            };
            (lse_all[i], delta_all[i]) = (lse, grad.delta);
            let dqi = &mut dq[at];
            for j in g.near_keys(i) {
                let kv = j * d..(j + 1) * d;
                grad.visit(
                    qi,
                    0.0,
                    [&head.k[kv.clone()], &head.v[kv.clone()]],
                    [&mut *dqi, &mut dk[kv.clone()], &mut dv[kv]],
                );
            }
            let bias = |row| row_bias(&head.coarse, config.multiplicity, row);
            let kv = |row: usize| [&head.coarse.k[row][..], &head.coarse.v[row][..]];
            match (&head.qc, far) {
                (None, _) => {
                    for row in far_rows(&g, &head.coarse, i) {
                        grad.visit(
                            qi,
                            bias(row),
                            kv(row),
                            [&mut *dqi, &mut dkc[row], &mut dvc[row]],
                        );
                    }
                }
                (Some(qc), FarGrads::PerQuery) => {
                    let f = g.fine_cell_of(i);
                    for l in 1..=g.num_levels() {
                        let seg = g.token_segment(l, i);
                        let cell = g.cell_at_level(f, l);
                        for row in level_far_rows(&g, &head.coarse.count, l, cell) {
                            grad.visit(
                                &qc[seg],
                                bias(row),
                                kv(row),
                                [&mut dqc[seg], &mut dkc[row], &mut dvc[row]],
                            );
                        }
                    }
                }
                // Gathered per segment once every query's LSE and D are known.
                (Some(_), FarGrads::PerSegment) => {}
            }
        }
        if let (Some(qc), FarGrads::PerSegment) = (&head.qc, far) {
            let sums = upward_pass(&g, &lse_all, &delta_all, &dout, d);
            factored_far_grads(
                &g,
                config.multiplicity,
                qc,
                &head.coarse,
                &sums,
                [&mut dqc, &mut dkc, &mut dvc],
            );
        }
        // The scores hold tau q (or tau Qc): the query gradients carry one more tau.
        dq.iter_mut().for_each(|x| *x *= scale);
        let mut parts = vec![
            (Source::Keys, kh, &dkc, &mut dk),
            (Source::Values, vh, &dvc, &mut dv),
        ];
        if head.qc.is_some() {
            dqc.iter_mut().flatten().for_each(|x| *x *= scale);
            parts.push((Source::Queries, qh, &dqc, &mut dq));
        }
        for (source, x, up, grad) in parts {
            downsample_backward(&g, kind, &weights, source, x, d, up, grad, &mut dw);
        }
        for (dst, src) in [(&mut out.dq, &dq), (&mut out.dk, &dk), (&mut out.dv, &dv)] {
            for (a, &b) in dst[span.clone()].iter_mut().zip(src) {
                *a = b as f32;
            }
        }
    }
    out.dw.levels = dw
        .into_iter()
        .map(|parts| {
            let [wk, wv, bk, bv, wq, bq] = parts.map(|x| x.into_iter().map(|a| a as f32).collect());
            LevelWeights {
                wk,
                wv,
                bk,
                bv,
                wq,
                bq,
            }
        })
        .collect();
    Ok(out)
}
