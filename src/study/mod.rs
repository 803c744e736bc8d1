//! How good is the approximation: FMA against exact attention and against other efficient
//! attentions at matched key budgets (issue 17). CPU, f64, bidirectional (non-causal)
//! attention throughout; not part of the default library build (feature `study`).
//!
//! Every method maps a [`Problem`] (one head's q, k, v) and a set of query rows to those rows'
//! outputs and the number of keys each query scored ([`Approx`]). `exact` is the ground truth;
//! `fma` runs the crate's CPU reference; the baselines live one family per file.

pub mod clustered;
pub mod datasets;
pub mod exact;
pub mod fit;
pub mod fma;
pub mod linformer;
pub mod nystrom;
pub mod performer;
pub mod records;
pub mod sweep;
pub mod window;

use crate::config::Layout;

/// One attention head: n tokens of dimension d, row-major, and where the tokens lie.
#[derive(Clone, Debug)]
pub struct Problem {
    pub n: usize,
    pub d: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// `Sequence`, or `Image` for a row-major grid (the window and FMA read it).
    pub layout: Layout,
}

impl Problem {
    /// The softmax scale 1/sqrt(d) every method uses.
    pub fn tau(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }
    /// Token i's row of `x` in f64.
    pub fn row(&self, x: &[f32], i: usize) -> Vec<f64> {
        x[i * self.d..(i + 1) * self.d]
            .iter()
            .map(|&a| a as f64)
            .collect()
    }
    /// All rows of `x` in f64, times `scale`.
    pub fn rows(&self, x: &[f32], scale: f64) -> Vec<f64> {
        x.iter().map(|&a| a as f64 * scale).collect()
    }
}

/// An approximation's output for some query rows (`rows.len() x d`) and the mean number of
/// keys (exact or summary) each of those queries scored.
#[derive(Clone, Debug)]
pub struct Approx {
    pub o: Vec<f64>,
    pub keys: f64,
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Softmax of `scores` applied to value rows: sum_j softmax(s)_j * value(j), into `out` (d).
pub(crate) fn softmax_mix<'a>(scores: &[f64], value: impl Fn(usize) -> &'a [f64], out: &mut [f64]) {
    out.fill(0.0);
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return;
    }
    let mut sum = 0.0;
    for (j, &s) in scores.iter().enumerate() {
        let w = (s - max).exp();
        sum += w;
        for (o, x) in out.iter_mut().zip(value(j)) {
            *o += w * x;
        }
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

/// Errors of an approximation against the exact output, accumulated over problems.
#[derive(Clone, Debug, Default)]
pub struct ErrorSum {
    /// sum ||O_i - E_i||^2 and sum ||E_i||^2 over all rows.
    pub diff2: f64,
    pub exact2: f64,
    /// Largest ||O_i - E_i||^2 of one row, and the number of rows.
    pub max_row2: f64,
    pub rows: usize,
    /// Sum over problems of their mean keys per query (with `problems`, for the average).
    pub keys: f64,
    pub problems: usize,
}

impl ErrorSum {
    pub fn add(&mut self, approx: &Approx, exact: &[f64], d: usize) {
        for (a, e) in approx.o.chunks_exact(d).zip(exact.chunks_exact(d)) {
            let diff: f64 = a.iter().zip(e).map(|(x, y)| (x - y) * (x - y)).sum();
            self.diff2 += diff;
            self.exact2 += e.iter().map(|x| x * x).sum::<f64>();
            self.max_row2 = self.max_row2.max(diff);
            self.rows += 1;
        }
        self.keys += approx.keys;
        self.problems += 1;
    }
    /// ||O - E||_F / ||E||_F.
    pub fn relative(&self) -> f64 {
        (self.diff2 / self.exact2).sqrt()
    }
    /// The largest row error relative to the exact output's root-mean-square row norm
    /// (a row-wise relative error would blow up on rows whose exact output is near zero).
    pub fn max_row(&self) -> f64 {
        (self.max_row2 / (self.exact2 / self.rows as f64)).sqrt()
    }
    pub fn mean_keys(&self) -> f64 {
        self.keys / self.problems.max(1) as f64
    }
}
