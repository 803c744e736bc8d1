//! FMA forward on the CPU (docs/fma.md §3-7): near triple, far triple, merge. With
//! `downsample_queries` the far triple is the O(n) variant's (docs/fma.md §13, `linear.rs`).

use super::downsample::{Source, coarse_rows};
use super::fields::{FarQuery, far_triple, near_triple};
use super::{Coarse, Output, Triple, downsample, to_f64};
use crate::config::{FmaConfig, Shape};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::weights::DownsampleWeights;

/// FMA attention over [batch, heads, n, d] tensors, laid out as `config.layout` says (1D or 2D).
/// `weights` is required for learned downsampling kinds and ignored for `Mean`.
pub fn fma_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
) -> Result<Output> {
    let out = fma_forward_f64(q, k, v, shape, config, weights)?;
    Ok(Output {
        o: out.o.iter().map(|&x| x as f32).collect(),
        lse: out.lse.iter().map(|&x| x as f32).collect(),
    })
}

/// O and LSE in f64, before rounding to f32: what finite-difference checks differentiate.
#[derive(Clone, Debug)]
pub struct Output64 {
    pub o: Vec<f64>,
    pub lse: Vec<f64>,
}

/// `fma_forward` without the final rounding to f32.
pub fn fma_forward_f64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
) -> Result<Output64> {
    let (g, weights) = checked(q, k, v, shape, config, weights)?;
    Ok(forward_f64(&g, q, k, v, shape, config, &weights))
}

/// Validates the inputs of a reference call; returns the geometry and the weights to use.
pub(crate) fn checked(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
) -> Result<(Geometry, DownsampleWeights)> {
    shape.validate()?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        shape.check_len(name, t.len())?;
    }
    let g = Geometry::new(shape.n, config)?;
    let weights = weights.cloned().unwrap_or_default();
    weights.validate(
        config.downsampling,
        g.p,
        shape.d,
        &g.group_tokens(),
        config.downsample_queries,
    )?;
    Ok((g, weights))
}

fn forward_f64(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: &DownsampleWeights,
) -> Output64 {
    forward_heads(g, q, k, v, shape, config, weights, |head| {
        (0..shape.n)
            .map(|i| head.triple(g, config.multiplicity, i))
            .collect()
    })
}

/// The loop every reference forward shares: per head, its inputs and coarse rows (`Head`),
/// then `per_head(&head)` gives the triple of each of its n queries, finished into O and LSE.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_heads(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    config: &FmaConfig,
    weights: &DownsampleWeights,
    per_head: impl Fn(&Head) -> Vec<Triple>,
) -> Output64 {
    let (n, d) = (shape.n, shape.d);
    let mut out = Output64 {
        o: vec![0.0; shape.elements()],
        lse: vec![0.0; shape.bh() * n],
    };
    for h in 0..shape.bh() {
        let span = h * n * d..(h + 1) * n * d;
        let head = Head::new(
            g,
            config,
            weights,
            &q[span.clone()],
            &k[span.clone()],
            &v[span],
            d,
        );
        for (i, triple) in per_head(&head).iter().enumerate() {
            let (o, lse) = triple.finish();
            out.o[(h * n + i) * d..(h * n + i + 1) * d].copy_from_slice(&o);
            out.lse[h * n + i] = lse;
        }
    }
    out
}

/// One head's inputs in f64 (queries scaled by tau) and its coarse keys and values.
pub(crate) struct Head {
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub coarse: Coarse,
    /// The O(n) variant's coarse queries, scaled by tau like `q` (one per coarse row);
    /// `None` without `downsample_queries`.
    pub qc: Option<Vec<Vec<f64>>>,
    pub d: usize,
}

impl Head {
    pub fn new(
        g: &Geometry,
        config: &FmaConfig,
        weights: &DownsampleWeights,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d: usize,
    ) -> Head {
        let scale = config.scale_for(d) as f64;
        // tau scales the whole coarse query, bias included: z = tau (Qc . Kc) (docs/fma.md §13).
        let qc = config.downsample_queries.then(|| {
            let mut rows = coarse_rows(g, config.downsampling, weights, Source::Queries, q, d);
            rows.iter_mut().flatten().for_each(|x| *x *= scale);
            rows
        });
        Head {
            q: q.iter().map(|&x| x as f64 * scale).collect(),
            k: to_f64(k),
            v: to_f64(v),
            coarse: downsample(g, config.downsampling, weights, k, v, d),
            qc,
            d,
        }
    }

    /// Query i's scaled row.
    pub fn query(&self, i: usize) -> &[f64] {
        &self.q[i * self.d..(i + 1) * self.d]
    }

    /// Query i's softmax triple over its near and far keys (the O(n) variant: its far keys
    /// scored by its segments' coarse queries, the direct definition of docs/fma.md §13).
    pub fn triple(&self, g: &Geometry, multiplicity: bool, i: usize) -> Triple {
        let qi = self.query(i);
        let near = near_triple(g, qi, &self.k, &self.v, i, self.d);
        let far = match &self.qc {
            Some(qc) => FarQuery::Segments(qc),
            None => FarQuery::Token(qi),
        };
        near.merge(&far_triple(g, multiplicity, far, &self.coarse, i, self.d))
    }
}
