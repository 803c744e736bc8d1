//! Clustered keys, the idea of Multipole Attention / MuSe (arXiv 2509.10406) reduced to its
//! core, as implemented here: the keys are grouped by content with k-means (Lloyd's
//! algorithm, Euclidean, `iters` rounds from C distinct keys picked by a seeded shuffle; an
//! empty cluster keeps its centroid), and each query
//! - scores the C centroids, picks the `top` clusters whose centroids score highest, and
//!   attends exactly to every key of those clusters;
//! - sees every other non-empty cluster as one summary key, the mean of its keys with score
//!   offset log(size), and the mean of its values (FMA's `Mean` with multiplicity, but over
//!   clusters of similar keys instead of runs of neighbouring tokens).
//!
//! MuSe itself also clusters queries and adds dipole corrections; neither is done here.
//! Keys per query: the keys of the top clusters plus the other clusters' summaries.

use super::{Approx, Problem, dot, softmax_mix};
use crate::rng::Rng;

/// A k-means clustering of the keys: each key's cluster, and each cluster's size and mean key
/// and value.
pub struct Clusters {
    pub assign: Vec<usize>,
    pub size: Vec<usize>,
    pub key: Vec<f64>,
    pub value: Vec<f64>,
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means of the n keys into `c` clusters.
pub fn kmeans(prob: &Problem, c: usize, iters: usize, seed: u64) -> Clusters {
    let (n, d) = (prob.n, prob.d);
    let c = c.clamp(1, n);
    let (k, v) = (prob.rows(&prob.k, 1.0), prob.rows(&prob.v, 1.0));
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut cent: Vec<f64> = order[..c]
        .iter()
        .flat_map(|&j| k[j * d..(j + 1) * d].to_vec())
        .collect();
    let mut assign = vec![0; n];
    for round in 0..=iters {
        for (j, a) in assign.iter_mut().enumerate() {
            let kj = &k[j * d..(j + 1) * d];
            *a = (0..c)
                .map(|t| (dist2(kj, &cent[t * d..(t + 1) * d]), t))
                .fold((f64::INFINITY, 0), |b, x| if x.0 < b.0 { x } else { b })
                .1;
        }
        if round == iters {
            break;
        }
        let (sums, size) = means(&k, &assign, c, d);
        for t in 0..c {
            if size[t] > 0 {
                cent[t * d..(t + 1) * d].copy_from_slice(&sums[t * d..(t + 1) * d]);
            }
        }
    }
    let (key, size) = means(&k, &assign, c, d);
    let (value, _) = means(&v, &assign, c, d);
    Clusters {
        assign,
        size,
        key,
        value,
    }
}

/// Per-cluster means of x's rows (zero for an empty cluster) and the cluster sizes.
fn means(x: &[f64], assign: &[usize], c: usize, d: usize) -> (Vec<f64>, Vec<usize>) {
    let (mut sums, mut size) = (vec![0.0; c * d], vec![0usize; c]);
    for (j, &a) in assign.iter().enumerate() {
        size[a] += 1;
        for (s, y) in sums[a * d..(a + 1) * d]
            .iter_mut()
            .zip(&x[j * d..(j + 1) * d])
        {
            *s += y;
        }
    }
    for t in 0..c {
        if size[t] > 0 {
            sums[t * d..(t + 1) * d]
                .iter_mut()
                .for_each(|s| *s /= size[t] as f64);
        }
    }
    (sums, size)
}

/// Attention of the chosen queries: exact on the `top` best-scoring clusters, one summary key
/// for each other non-empty cluster.
pub fn clustered(prob: &Problem, rows: &[usize], cl: &Clusters, top: usize) -> Approx {
    let d = prob.d;
    let c = cl.size.len();
    let (k, v) = (prob.rows(&prob.k, 1.0), prob.rows(&prob.v, 1.0));
    let mut members = vec![Vec::new(); c];
    for (j, &a) in cl.assign.iter().enumerate() {
        members[a].push(j);
    }
    let mut o = vec![0.0; rows.len() * d];
    let mut keys = 0;
    for (out, &i) in o.chunks_exact_mut(d).zip(rows) {
        let qi: Vec<f64> = prob
            .row(&prob.q, i)
            .iter()
            .map(|x| x * prob.tau())
            .collect();
        let mut ranked: Vec<(f64, usize)> = (0..c)
            .filter(|&t| cl.size[t] > 0)
            .map(|t| (dot(&qi, &cl.key[t * d..(t + 1) * d]), t))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let (mut scores, mut vals): (Vec<f64>, Vec<&[f64]>) = (Vec::new(), Vec::new());
        for (rank, &(s, t)) in ranked.iter().enumerate() {
            if rank < top {
                for &j in &members[t] {
                    scores.push(dot(&qi, &k[j * d..(j + 1) * d]));
                    vals.push(&v[j * d..(j + 1) * d]);
                }
            } else {
                scores.push(s + (cl.size[t] as f64).ln());
                vals.push(&cl.value[t * d..(t + 1) * d]);
            }
        }
        softmax_mix(&scores, |t| vals[t], out);
        keys += scores.len();
    }
    Approx {
        o,
        keys: keys as f64 / rows.len().max(1) as f64,
    }
}
