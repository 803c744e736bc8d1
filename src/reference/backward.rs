//! FMA backward on the CPU (spec section 8), in f64: the oracle for the GPU backward kernels.
//!
//! Per query: recompute O_i and LSE_i, D_i = dO_i . O_i, then for every key it sees
//! P = exp(z - LSE_i), dS = P (dO_i . v - D_i), dq_i += tau dS k, dk += tau dS q_i,
//! dv += P dO_i. Coarse keys collect dk and dv per coarse row, which `downsample_backward`
//! passes on to the tokens and the weights.

use super::dense::dot;
use super::downsample::{LevelGrads, downsample_backward};
use super::fma::{Head, checked, far_rows, near_keys, row_bias};
use crate::config::{DownsampleWeights, FmaConfig, LevelWeights, Shape};
use crate::error::Result;

/// Gradients of a loss through FMA: `dq`, `dk`, `dv` shaped like q ([batch, heads, n, d]) and
/// `dw` shaped like the downsampling weights (summed over batch and heads, which share them;
/// no levels for `Mean`).
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
    let (g, weights) = checked(q, k, v, shape, config, weights)?;
    shape.check_len("do", d_o.len())?;
    let (n, d, p) = (shape.n, shape.d, g.p);
    let scale = config.scale_for(d) as f64;
    let kind = config.downsampling;
    let mut dw: Vec<LevelGrads> = if kind.is_learned() {
        weights
            .levels
            .iter()
            .map(|lw| [&lw.wk, &lw.wv, &lw.bk, &lw.bv].map(|x| vec![0.0; x.len()]))
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
        let (kh, vh) = (&k[span.clone()], &v[span.clone()]);
        let head = Head::new(&g, config, &weights, &q[span.clone()], kh, vh, d);
        let dout: Vec<f64> = d_o[span.clone()].iter().map(|&x| x as f64).collect();
        let (mut dk, mut dv) = (vec![0.0; n * d], vec![0.0; n * d]);
        let (mut dkc, mut dvc) = (vec![vec![0.0; d]; rows], vec![vec![0.0; d]; rows]);
        for i in 0..n {
            let (o, lse) = head.triple(&g, config.multiplicity, i).finish();
            let (qi, doi) = (head.query(i), &dout[i * d..(i + 1) * d]);
            let delta = dot(doi, &o);
            let mut dq = vec![0.0; d];
            // One key: its score offset, key and value rows, and where its dk and dv go.
            let mut visit =
                |bias: f64, key: &[f64], value: &[f64], dkey: &mut [f64], dval: &mut [f64]| {
                    let prob = (dot(qi, key) + bias - lse).exp();
                    let ds = prob * (dot(doi, value) - delta);
                    for c in 0..d {
                        dq[c] += ds * key[c];
                        dkey[c] += ds * qi[c]; // qi holds tau q_i
                        dval[c] += prob * doi[c];
                    }
                };
            for j in near_keys(&g, i) {
                let at = j * d..(j + 1) * d;
                visit(
                    0.0,
                    &head.k[at.clone()],
                    &head.v[at.clone()],
                    &mut dk[at.clone()],
                    &mut dv[at],
                );
            }
            for row in far_rows(&g, &head.coarse, i) {
                visit(
                    row_bias(&head.coarse, config.multiplicity, row),
                    &head.coarse.k[row],
                    &head.coarse.v[row],
                    &mut dkc[row],
                    &mut dvc[row],
                );
            }
            for (c, x) in dq.into_iter().enumerate() {
                out.dq[(h * n + i) * d + c] = (x * scale) as f32;
            }
        }
        downsample_backward(
            &g,
            kind,
            &weights,
            kh,
            vh,
            d,
            [&dkc, &dvc],
            [&mut dk, &mut dv],
            &mut dw,
        );
        for (dst, src) in [(&mut out.dk, &dk), (&mut out.dv, &dv)] {
            for (a, &b) in dst[span.clone()].iter_mut().zip(src) {
                *a = b as f32;
            }
        }
    }
    out.dw.levels = dw
        .into_iter()
        .map(|parts| {
            let [wk, wv, bk, bv] = parts.map(|x| x.into_iter().map(|a| a as f32).collect());
            LevelWeights {
                wk,
                wv,
                bk,
                bv,
                ..Default::default()
            }
        })
        .collect();
    Ok(out)
}
