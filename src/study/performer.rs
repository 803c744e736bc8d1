//! Performer (Choromanski et al. 2021) with positive random features (FAVOR+ without the
//! orthogonalisation of the projections): exp(q.k) ~ phi(q) . phi(k) with
//! phi(x) = exp(w_f . x - |x|^2 / 2) / sqrt(r), w_f ~ N(0, I_d) i.i.d., f = 1..r, and
//! x = tau^(1/2) q or tau^(1/2) k, so that phi(q) . phi(k) estimates exp(tau q . k).

use super::{Approx, Problem, dot};
use crate::rng::Rng;

/// r random directions of dimension d (r x d), from `seed`.
pub fn features(r: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..r * d).map(|_| rng.normal()).collect()
}

/// log phi(x) without the constant -log(r)/2 (it cancels in the ratio).
fn log_phi(w: &[f64], x: &[f64], d: usize) -> Vec<f64> {
    let half = dot(x, x) / 2.0;
    w.chunks_exact(d).map(|wf| dot(wf, x) - half).collect()
}

/// O_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j), computed in linear time:
/// S = sum_j phi(k_j) v_j^T (r x d) and z = sum_j phi(k_j) (r) once, then per query
/// phi(q_i)^T S / phi(q_i)^T z. Feature exponents are shifted by their maximum (the key
/// side's over all keys, the query side's per query): both shifts cancel in the ratio.
pub fn performer(prob: &Problem, rows: &[usize], w: &[f64]) -> Approx {
    let (n, d) = (prob.n, prob.d);
    let r = w.len() / d;
    let root = prob.tau().sqrt();
    let k = prob.rows(&prob.k, root);
    let v = prob.rows(&prob.v, 1.0);
    let logs: Vec<Vec<f64>> = (0..n)
        .map(|j| log_phi(w, &k[j * d..(j + 1) * d], d))
        .collect();
    let shift = logs
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let (mut s, mut z) = (vec![0.0; r * d], vec![0.0; r]);
    for (j, lj) in logs.iter().enumerate() {
        for f in 0..r {
            let phi = (lj[f] - shift).exp();
            z[f] += phi;
            for (a, x) in s[f * d..(f + 1) * d].iter_mut().zip(&v[j * d..(j + 1) * d]) {
                *a += phi * x;
            }
        }
    }
    let mut o = vec![0.0; rows.len() * d];
    for (out, &i) in o.chunks_exact_mut(d).zip(rows) {
        let qi: Vec<f64> = prob.row(&prob.q, i).iter().map(|x| x * root).collect();
        let lq = log_phi(w, &qi, d);
        let top = lq.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut den = 0.0;
        for f in 0..r {
            let phi = (lq[f] - top).exp();
            den += phi * z[f];
            for (a, x) in out.iter_mut().zip(&s[f * d..(f + 1) * d]) {
                *a += phi * x;
            }
        }
        out.iter_mut().for_each(|a| *a /= den);
    }
    Approx { o, keys: r as f64 }
}
