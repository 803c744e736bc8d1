//! Sliding window: each query attends exactly to the `width` tokens nearest to it.
//!
//! Sequences: the `width` consecutive tokens centred on the query, shifted inwards at the
//! ends so every query sees `width` keys. Images: the `width` tokens nearest in Euclidean
//! distance on the grid (ties broken by token index), a disc around the query.

use super::{Approx, Problem, dot, softmax_mix};
use crate::config::Layout;

/// The keys query i sees with a window of `width` tokens (all tokens if width >= n).
pub fn window_keys(prob: &Problem, i: usize, width: usize) -> Vec<usize> {
    let (n, w) = (prob.n, width.clamp(1, prob.n));
    match prob.layout {
        Layout::Sequence => {
            let start = i.saturating_sub(w / 2).min(n - w);
            (start..start + w).collect()
        }
        Layout::Image { width: cols, .. } => {
            let (y, x) = ((i / cols) as i64, (i % cols) as i64);
            let mut all: Vec<(i64, usize)> = (0..n)
                .map(|j| {
                    let (dy, dx) = ((j / cols) as i64 - y, (j % cols) as i64 - x);
                    (dy * dy + dx * dx, j)
                })
                .collect();
            all.sort_unstable();
            let mut keys: Vec<usize> = all[..w].iter().map(|&(_, j)| j).collect();
            keys.sort_unstable();
            keys
        }
    }
}

pub fn window(prob: &Problem, rows: &[usize], width: usize) -> Approx {
    let d = prob.d;
    let (k, v) = (prob.rows(&prob.k, 1.0), prob.rows(&prob.v, 1.0));
    let mut o = vec![0.0; rows.len() * d];
    let mut keys = 0;
    for (out, &i) in o.chunks_exact_mut(d).zip(rows) {
        let qi: Vec<f64> = prob
            .row(&prob.q, i)
            .iter()
            .map(|x| x * prob.tau())
            .collect();
        let seen = window_keys(prob, i, width);
        let scores: Vec<f64> = seen
            .iter()
            .map(|&j| dot(&qi, &k[j * d..(j + 1) * d]))
            .collect();
        softmax_mix(&scores, |t| &v[seen[t] * d..(seen[t] + 1) * d], out);
        keys += seen.len();
    }
    Approx {
        o,
        keys: keys as f64 / rows.len().max(1) as f64,
    }
}
