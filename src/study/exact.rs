//! Exact softmax attention for chosen query rows: the ground truth of the study.

use super::{Approx, Problem, dot, softmax_mix};

/// O_i = softmax_j(tau q_i . k_j) v_j for every i in `rows`, over all n keys.
pub fn exact(prob: &Problem, rows: &[usize]) -> Approx {
    let d = prob.d;
    let (k, v) = (prob.rows(&prob.k, 1.0), prob.rows(&prob.v, 1.0));
    let mut o = vec![0.0; rows.len() * d];
    let mut scores = vec![0.0; prob.n];
    for (out, &i) in o.chunks_exact_mut(d).zip(rows) {
        let qi: Vec<f64> = prob
            .row(&prob.q, i)
            .iter()
            .map(|x| x * prob.tau())
            .collect();
        for (j, s) in scores.iter_mut().enumerate() {
            *s = dot(&qi, &k[j * d..(j + 1) * d]);
        }
        softmax_mix(&scores, |j| &v[j * d..(j + 1) * d], out);
    }
    Approx {
        o,
        keys: prob.n as f64,
    }
}
