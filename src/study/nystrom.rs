//! Nystromformer (Xiong et al. 2021): r landmarks, the means of r consecutive segments of the
//! (scaled) queries and of the keys, and O = softmax(Q Kl^T) pinv(softmax(Ql Kl^T))
//! softmax(Ql K^T) V, each softmax row-wise. The pseudo-inverse is the paper's: 6 iterations of
//! its Newton-Schulz scheme from Z0 = A^T / (||A||_1 ||A||_inf) ([`Pinv::NewtonSchulz`]).
//! [`Pinv::Exact`] (normal equations with a 1e-12 relative ridge, by Cholesky) is there for the
//! exact limit; on real landmarks it amplifies the noise of ill-conditioned A (errors of 10x
//! the output were seen), which the few iterations damp.

use super::{Approx, Problem, dot, softmax_mix};

/// Segment f of r over n tokens: [f n / r, (f + 1) n / r).
fn segment(f: usize, r: usize, n: usize) -> std::ops::Range<usize> {
    f * n / r..(f + 1) * n / r
}

/// Row means of x (n x d) over the r segments.
fn landmarks(x: &[f64], r: usize, n: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * d];
    for (f, row) in out.chunks_exact_mut(d).enumerate() {
        let seg = segment(f, r, n);
        let len = seg.len() as f64;
        for j in seg {
            for (a, b) in row.iter_mut().zip(&x[j * d..(j + 1) * d]) {
                *a += b / len;
            }
        }
    }
    out
}

/// Row-wise softmax of a rows x cols score matrix, in place.
fn softmax_rows(s: &mut [f64], cols: usize) {
    for row in s.chunks_exact_mut(cols) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.iter_mut().for_each(|x| *x = (*x - max).exp());
        let sum: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= sum);
    }
}

/// Solves min_X ||A X - B|| (A: r x r, B: r x d) through (A^T A + ridge I) X = A^T B.
pub(crate) fn least_squares(a: &[f64], b: &[f64], r: usize, d: usize) -> Vec<f64> {
    let mut g = vec![0.0; r * r];
    for i in 0..r {
        for j in 0..=i {
            let s: f64 = (0..r).map(|t| a[t * r + i] * a[t * r + j]).sum();
            g[i * r + j] = s;
            g[j * r + i] = s;
        }
    }
    let trace: f64 = (0..r).map(|i| g[i * r + i]).sum();
    let ridge = 1e-12 * trace / r as f64;
    (0..r).for_each(|i| g[i * r + i] += ridge);
    let mut rhs = vec![0.0; r * d];
    for i in 0..r {
        for t in 0..r {
            let w = a[t * r + i];
            for c in 0..d {
                rhs[i * d + c] += w * b[t * d + c];
            }
        }
    }
    // Cholesky G = L L^T, L stored in the lower triangle of g.
    for j in 0..r {
        let s = g[j * r + j] - (0..j).map(|t| g[j * r + t] * g[j * r + t]).sum::<f64>();
        let diag = s.max(f64::MIN_POSITIVE).sqrt();
        g[j * r + j] = diag;
        for i in j + 1..r {
            let s = g[i * r + j] - (0..j).map(|t| g[i * r + t] * g[j * r + t]).sum::<f64>();
            g[i * r + j] = s / diag;
        }
    }
    for c in 0..d {
        let mut y = vec![0.0; r];
        for i in 0..r {
            let s = rhs[i * d + c] - (0..i).map(|t| g[i * r + t] * y[t]).sum::<f64>();
            y[i] = s / g[i * r + i];
        }
        for i in (0..r).rev() {
            let s = y[i]
                - (i + 1..r)
                    .map(|t| g[t * r + i] * rhs[t * d + c])
                    .sum::<f64>();
            rhs[i * d + c] = s / g[i * r + i];
        }
    }
    rhs
}

/// How pinv(A) is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinv {
    NewtonSchulz(usize),
    Exact,
}

/// The paper's iterations: Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4.
pub(crate) fn newton_schulz(a: &[f64], r: usize, iters: usize) -> Vec<f64> {
    let norm_1 = (0..r)
        .map(|c| (0..r).map(|i| a[i * r + c].abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let norm_inf = (0..r)
        .map(|i| a[i * r..(i + 1) * r].iter().map(|x| x.abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let s = 1.0 / (norm_1 * norm_inf);
    let mut z: Vec<f64> = (0..r * r).map(|x| a[(x % r) * r + x / r] * s).collect();
    // c I - x, in place.
    let shift = |c: f64, x: &mut [f64]| {
        x.iter_mut().for_each(|v| *v = -*v);
        (0..r).for_each(|i| x[i * r + i] += c);
    };
    for _ in 0..iters {
        let az = matmul(a, &z, r);
        let mut t = az.clone();
        shift(7.0, &mut t);
        let mut t = matmul(&az, &t, r);
        shift(15.0, &mut t);
        let mut t = matmul(&az, &t, r);
        shift(13.0, &mut t);
        z = matmul(&z, &t, r);
        z.iter_mut().for_each(|v| *v /= 4.0);
    }
    z
}

/// r x r product, i-k-j order so the inner loop runs over contiguous rows.
fn matmul(a: &[f64], b: &[f64], r: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * r];
    for i in 0..r {
        let row = &mut out[i * r..(i + 1) * r];
        for k in 0..r {
            let x = a[i * r + k];
            for (o, y) in row.iter_mut().zip(&b[k * r..(k + 1) * r]) {
                *o += x * y;
            }
        }
    }
    out
}

pub fn nystrom(prob: &Problem, rows: &[usize], r: usize, pinv: Pinv) -> Approx {
    let (n, d) = (prob.n, prob.d);
    let r = r.clamp(1, n);
    let q = prob.rows(&prob.q, prob.tau());
    let (k, v) = (prob.rows(&prob.k, 1.0), prob.rows(&prob.v, 1.0));
    let (ql, kl) = (landmarks(&q, r, n, d), landmarks(&k, r, n, d));
    let scores = |a: &[f64], b: &[f64], cols: usize| -> Vec<f64> {
        let mut s = Vec::with_capacity(a.len() / d * cols);
        for x in a.chunks_exact(d) {
            s.extend(b.chunks_exact(d).map(|y| dot(x, y)));
        }
        s
    };
    let mut a = scores(&ql, &kl, r);
    softmax_rows(&mut a, r);
    let mut b = scores(&ql, &k, n);
    softmax_rows(&mut b, n);
    let mut bv = vec![0.0; r * d];
    for f in 0..r {
        for j in 0..n {
            let w = b[f * n + j];
            for c in 0..d {
                bv[f * d + c] += w * v[j * d + c];
            }
        }
    }
    let x = match pinv {
        Pinv::Exact => least_squares(&a, &bv, r, d),
        Pinv::NewtonSchulz(iters) => {
            let z = newton_schulz(&a, r, iters);
            let mut x = vec![0.0; r * d];
            for i in 0..r {
                for t in 0..r {
                    let w = z[i * r + t];
                    for c in 0..d {
                        x[i * d + c] += w * bv[t * d + c];
                    }
                }
            }
            x
        }
    };
    let mut o = vec![0.0; rows.len() * d];
    for (out, &i) in o.chunks_exact_mut(d).zip(rows) {
        let qi = &q[i * d..(i + 1) * d];
        let s: Vec<f64> = kl.chunks_exact(d).map(|y| dot(qi, y)).collect();
        // softmax(s) times X: softmax_mix with X's rows as the "values".
        softmax_mix(&s, |f| &x[f * d..(f + 1) * d], out);
    }
    Approx { o, keys: r as f64 }
}
