//! Linformer (Wang et al. 2020) with a fixed random projection instead of a learned one: the n
//! keys and the n values are projected along the sequence to r rows by one r x n matrix E
//! (entries N(0, 1/n), Glorot's scale for r << n: a projected key is about as long as one
//! key), and each query attends exactly to the r projected keys: O_i = softmax(tau q_i (E K)^T) (E V).

use super::{Approx, Problem, dot, softmax_mix};
use crate::rng::Rng;

/// The r x n projection, from `seed`.
pub fn random_projection(r: usize, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let s = 1.0 / (n as f64).sqrt();
    (0..r * n).map(|_| rng.normal() * s).collect()
}

/// Attention of the chosen queries over E K and E V, with E given (r x n, row-major).
pub fn linformer(prob: &Problem, rows: &[usize], e: &[f64]) -> Approx {
    let (n, d) = (prob.n, prob.d);
    let r = e.len() / n;
    let (k, v) = (prob.rows(&prob.k, 1.0), prob.rows(&prob.v, 1.0));
    let project = |x: &[f64]| {
        let mut out = vec![0.0; r * d];
        for (f, row) in out.chunks_exact_mut(d).enumerate() {
            for j in 0..n {
                let w = e[f * n + j];
                if w != 0.0 {
                    for (a, b) in row.iter_mut().zip(&x[j * d..(j + 1) * d]) {
                        *a += w * b;
                    }
                }
            }
        }
        out
    };
    let (pk, pv) = (project(&k), project(&v));
    let mut o = vec![0.0; rows.len() * d];
    for (out, &i) in o.chunks_exact_mut(d).zip(rows) {
        let qi: Vec<f64> = prob
            .row(&prob.q, i)
            .iter()
            .map(|x| x * prob.tau())
            .collect();
        let scores: Vec<f64> = pk.chunks_exact(d).map(|kr| dot(&qi, kr)).collect();
        softmax_mix(&scores, |f| &pv[f * d..(f + 1) * d], out);
    }
    Approx { o, keys: r as f64 }
}
