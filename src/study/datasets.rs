//! The study's data: three seeded 1D generators and the shipped ViT's own activations.
//!
//! - `gaussian`: q, k, v i.i.d. N(0, 1). No structure at all: nothing a summary of distant
//!   keys can exploit, FMA's worst case.
//! - `smooth`: q i.i.d. N(0, 1); k and v each an AR(1) process along the sequence (a
//!   low-pass random walk, x_t = a x_{t-1} + sqrt(1 - a^2) e_t with a = exp(-1/32), unit
//!   variance, correlation length 32 tokens) plus N(0, 0.25^2) noise per token. Neighbouring
//!   keys are alike, so segment means summarise them well.
//! - `local`: q_t = c + e_t and k_t = c + e'_t with one shared c ~ N(0, 1.5^2 I) and e, e'
//!   ~ N(0, I), then rotary position encoding (RoPE, base 10000, channel pairs (2j, 2j + 1)
//!   rotated by t 10000^(-2j/d)); v i.i.d. N(0, 1). The shared part makes q_i . k_j
//!   = c^T R(j - i) c + noise, which decays with |i - j|: attention is mostly local.
//! - `vit`: the shipped MNIST ViT's q, k, v at each of its blocks and heads on held-out digits
//!   (2D, 16 x 16 tokens, d = 16).

use super::Problem;
use crate::config::Layout;
use crate::error::{FmaError, Result};
use crate::model::mnist::{Digits, place_centred};
use crate::model::{CpuVit, VitWeights};
use crate::rng::Rng;

/// The 1D data set kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gaussian,
    Smooth,
    Local,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Gaussian, Kind::Smooth, Kind::Local];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gaussian => "gaussian",
            Kind::Smooth => "smooth",
            Kind::Local => "local",
        }
    }
}

fn normals(rng: &mut Rng, len: usize, sd: f64) -> Vec<f64> {
    (0..len).map(|_| rng.normal() * sd).collect()
}

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&a| a as f32).collect()
}

/// A unit-variance AR(1) walk along the sequence (per channel) plus N(0, noise^2).
fn smooth_walk(rng: &mut Rng, n: usize, d: usize, a: f64, noise: f64) -> Vec<f64> {
    let mut x = normals(rng, d, 1.0);
    let b = (1.0 - a * a).sqrt();
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        for xc in x.iter_mut() {
            *xc = a * *xc + b * rng.normal();
            out.push(*xc + noise * rng.normal());
        }
    }
    out
}

/// Rotary position encoding of row t, in place.
fn rope(x: &mut [f64], n: usize, d: usize) {
    for t in 0..n {
        for j in 0..d / 2 {
            let theta = t as f64 * 10000f64.powf(-2.0 * j as f64 / d as f64);
            let (s, c) = theta.sin_cos();
            let (a, b) = (x[t * d + 2 * j], x[t * d + 2 * j + 1]);
            x[t * d + 2 * j] = a * c - b * s;
            x[t * d + 2 * j + 1] = a * s + b * c;
        }
    }
}

/// One head of a 1D data set: n tokens of dimension d from `seed`.
pub fn sequence(kind: Kind, n: usize, d: usize, seed: u64) -> Problem {
    let mut rng = Rng::new(seed);
    let (q, k, v) = match kind {
        Kind::Gaussian => (
            normals(&mut rng, n * d, 1.0),
            normals(&mut rng, n * d, 1.0),
            normals(&mut rng, n * d, 1.0),
        ),
        Kind::Smooth => {
            let q = normals(&mut rng, n * d, 1.0);
            let a = (-1.0f64 / 32.0).exp();
            let k = smooth_walk(&mut rng, n, d, a, 0.25);
            (q, k, smooth_walk(&mut rng, n, d, a, 0.25))
        }
        Kind::Local => {
            let c = normals(&mut rng, d, 1.5);
            let shared = |rng: &mut Rng| -> Vec<f64> {
                let mut x = normals(rng, n * d, 1.0);
                x.iter_mut().enumerate().for_each(|(i, a)| *a += c[i % d]);
                rope(&mut x, n, d);
                x
            };
            let q = shared(&mut rng);
            let k = shared(&mut rng);
            (q, k, normals(&mut rng, n * d, 1.0))
        }
    };
    Problem {
        n,
        d,
        q: to_f32(&q),
        k: to_f32(&k),
        v: to_f32(&v),
        layout: Layout::Sequence,
    }
}

/// The ViT's heads at every block for `digits` (one `Vec` per block, images x heads heads
/// each), from a CPU forward pass of the model in f32.
pub fn vit(weights: &VitWeights, digits: &Digits) -> Result<Vec<Vec<Problem>>> {
    let cfg = &weights.config;
    let mut images = Vec::new();
    for i in 0..digits.len() {
        place_centred(digits.image(i), cfg, &mut images)?;
    }
    let model = CpuVit::new(cfg)?;
    let (_, cache) = model.forward(&weights.params, &images)?;
    let (t, hd, side) = (cfg.tokens(), cfg.head_dim(), cfg.grid());
    (0..cfg.depth)
        .map(|b| {
            let [q, k, v] = cache
                .qkv(b)
                .ok_or_else(|| FmaError::Model(format!("no block {b}")))?;
            Ok((0..q.len() / (t * hd))
                .map(|h| {
                    let span = h * t * hd..(h + 1) * t * hd;
                    Problem {
                        n: t,
                        d: hd,
                        q: q[span.clone()].to_vec(),
                        k: k[span.clone()].to_vec(),
                        v: v[span].to_vec(),
                        layout: Layout::Image {
                            height: side,
                            width: side,
                        },
                    }
                })
                .collect())
        })
        .collect()
}
