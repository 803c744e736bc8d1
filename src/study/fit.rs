//! Fitting the learned downsampling weights (Basis, Depthwise) by gradient descent on the
//! approximation error itself: loss = ||O - O_exact||^2 / ||O_exact||^2 over a training set of
//! heads, gradients from the reference backward (`reference::fma_backward`, its weight
//! gradients), Adam steps, starting from `Mean`'s weights. The weights are per level and shared
//! by all heads, as in a model layer.

use super::Problem;
use super::exact::exact;
use crate::config::{Downsampling, FmaConfig, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::reference::{fma_backward, fma_forward_f64};
use crate::weights::DownsampleWeights;

/// How to fit: Adam steps and the base learning rate (relative: a weight's step is
/// `lr * p / S`, its initial size; a bias's `lr` times the keys' root-mean-square).
#[derive(Clone, Copy, Debug)]
pub struct FitOptions {
    pub steps: usize,
    pub lr: f64,
}

/// The fitted weights and the training loss (relative squared error) before each step and
/// after the last; the weights returned are those with the lowest training loss seen.
pub struct Fitted {
    pub weights: DownsampleWeights,
    pub losses: Vec<f64>,
}

/// Fits `config.downsampling` (Basis or Depthwise) on `train` (heads of equal n, d, layout).
pub fn fit(train: &[Problem], config: &FmaConfig, opts: FitOptions) -> Result<Fitted> {
    let first = train
        .first()
        .ok_or_else(|| FmaError::InvalidConfig("fitting needs at least one head".into()))?;
    let (n, d) = (first.n, first.d);
    if !config.downsampling.is_learned()
        || train
            .iter()
            .any(|t| t.n != n || t.d != d || t.layout != first.layout)
    {
        return Err(FmaError::InvalidConfig(
            "fitting needs a learned kind and heads of one shape".into(),
        ));
    }
    let shape = Shape::new(1, train.len(), n, d);
    let cat = |f: fn(&Problem) -> &Vec<f32>| -> Vec<f32> {
        train.iter().flat_map(|t| f(t).iter().copied()).collect()
    };
    let (q, k, v) = (cat(|t| &t.q), cat(|t| &t.k), cat(|t| &t.v));
    let all: Vec<usize> = (0..n).collect();
    let target: Vec<f64> = train.iter().flat_map(|t| exact(t, &all).o).collect();
    let norm2: f64 = target.iter().map(|x| x * x).sum();
    let key_rms = (k.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / k.len() as f64).sqrt();
    let g = Geometry::new(n, config)?;
    let mut w = DownsampleWeights::mean_init(config.downsampling, &g, d);
    let steps: Vec<[f64; 2]> = g
        .levels
        .iter()
        .map(|lv| {
            [
                opts.lr * g.p as f64 / lv.group_tokens() as f64,
                opts.lr * key_rms,
            ]
        })
        .collect();
    let mut adam = Adam::new(&w);
    let (mut best, mut best_loss) = (w.clone(), f64::INFINITY);
    let mut losses = Vec::with_capacity(opts.steps + 1);
    for step in 0..=opts.steps {
        let o = fma_forward_f64(&q, &k, &v, shape, config, Some(&w))?.o;
        let loss = o
            .iter()
            .zip(&target)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / norm2;
        losses.push(loss);
        if loss < best_loss {
            (best, best_loss) = (w.clone(), loss);
        }
        if step == opts.steps {
            break;
        }
        let d_o: Vec<f32> = o
            .iter()
            .zip(&target)
            .map(|(a, b)| (2.0 * (a - b) / norm2) as f32)
            .collect();
        let grads = fma_backward(&q, &k, &v, &d_o, shape, config, Some(&w))?;
        adam.step(&mut w, &grads.dw, &steps);
    }
    Ok(Fitted {
        weights: best,
        losses,
    })
}

/// Adam (beta1 0.9, beta2 0.999) over every tensor of the weights, with a step size per level
/// for weights and biases.
struct Adam {
    m: Vec<[Vec<f64>; 4]>,
    v: Vec<[Vec<f64>; 4]>,
    t: i32,
}

impl Adam {
    fn new(w: &DownsampleWeights) -> Adam {
        let zeros: Vec<[Vec<f64>; 4]> = w
            .levels
            .iter()
            .map(|l| [&l.wk, &l.wv, &l.bk, &l.bv].map(|x| vec![0.0; x.len()]))
            .collect();
        Adam {
            m: zeros.clone(),
            v: zeros,
            t: 0,
        }
    }

    fn step(&mut self, w: &mut DownsampleWeights, g: &DownsampleWeights, lr: &[[f64; 2]]) {
        self.t += 1;
        let (b1, b2) = (0.9f64, 0.999f64);
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for (li, (lw, lg)) in w.levels.iter_mut().zip(&g.levels).enumerate() {
            let params = [&mut lw.wk, &mut lw.wv, &mut lw.bk, &mut lw.bv];
            let grads = [&lg.wk, &lg.wv, &lg.bk, &lg.bv];
            for (ti, (p, gr)) in params.into_iter().zip(grads).enumerate() {
                let rate = lr[li][ti / 2];
                for (j, (x, &gx)) in p.iter_mut().zip(gr.iter()).enumerate() {
                    let gx = gx as f64;
                    let m = &mut self.m[li][ti][j];
                    let v = &mut self.v[li][ti][j];
                    *m = b1 * *m + (1.0 - b1) * gx;
                    *v = b2 * *v + (1.0 - b2) * gx * gx;
                    *x -= (rate * (*m / c1) / ((*v / c2).sqrt() + 1e-12)) as f32;
                }
            }
        }
    }
}

/// `Downsampling` names as the study's records spell them.
pub fn method_name(kind: Downsampling, fitted: bool) -> &'static str {
    match (kind, fitted) {
        (Downsampling::Mean, _) => "fma-mean",
        (Downsampling::Basis, false) => "fma-basis",
        (Downsampling::Depthwise, false) => "fma-depthwise",
        (Downsampling::Basis, true) => "fma-basis-fitted",
        (Downsampling::Depthwise, true) => "fma-depthwise-fitted",
    }
}
