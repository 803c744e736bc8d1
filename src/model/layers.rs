//! The ViT's layers on the CPU, forward and backward: the twins of shaders/layers.wgsl.
//!
//! Generic over the float type: training runs them in f32, the gradient checks in f64.
//! Matrices are row-major; a linear layer's weight is `[in, out]`, so `y = x w + b`.
//! Backward functions add into the gradients they are given (a layer used twice, or a batch
//! split into chunks, accumulates), and return the input's gradient.

use num_traits::Float;

/// A constant in the generic float type.
pub fn c<T: Float>(x: f64) -> T {
    T::from(x).unwrap_or_else(T::nan)
}

/// `y[rows, out] = x[rows, in] w[in, out] + b[out]`.
pub fn linear<T: Float>(x: &[T], w: &[T], b: &[T], inp: usize, out: usize) -> Vec<T> {
    let rows = x.len() / inp;
    let mut y = Vec::with_capacity(rows * out);
    for xr in x.chunks_exact(inp) {
        let start = y.len();
        y.extend_from_slice(b);
        let yr = &mut y[start..];
        for (kk, &a) in xr.iter().enumerate() {
            let wr = &w[kk * out..(kk + 1) * out];
            for (yj, &wj) in yr.iter_mut().zip(wr) {
                *yj = *yj + a * wj;
            }
        }
    }
    y
}

/// Backward of `linear`: adds `x^T dy` to `dw` and the column sums of `dy` to `db`; returns
/// `dx = dy w^T`.
pub fn linear_backward<T: Float>(
    x: &[T],
    w: &[T],
    dy: &[T],
    dw: &mut [T],
    db: &mut [T],
    inp: usize,
    out: usize,
) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    for ((xr, dyr), dxr) in x
        .chunks_exact(inp)
        .zip(dy.chunks_exact(out))
        .zip(dx.chunks_exact_mut(inp))
    {
        for (dbj, &g) in db.iter_mut().zip(dyr) {
            *dbj = *dbj + g;
        }
        for kk in 0..inp {
            let wr = &w[kk * out..(kk + 1) * out];
            dxr[kk] = dot(dyr, wr);
            let a = xr[kk];
            for (dwj, &g) in dw[kk * out..(kk + 1) * out].iter_mut().zip(dyr) {
                *dwj = *dwj + a * g;
            }
        }
    }
    dx
}

pub fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |s, (&x, &y)| s + x * y)
}

/// Layer norm's epsilon (added to the variance).
pub const LN_EPS: f64 = 1e-5;

/// Per row of width `dim`: `(x - mean) / sqrt(var + eps) * g + b`. Returns y and, per row,
/// (mean, 1/sqrt(var + eps)) for the backward.
pub fn layer_norm<T: Float>(x: &[T], g: &[T], b: &[T], dim: usize) -> (Vec<T>, Vec<[T; 2]>) {
    let n = c::<T>(dim as f64);
    let mut y = Vec::with_capacity(x.len());
    let mut stats = Vec::with_capacity(x.len() / dim);
    for xr in x.chunks_exact(dim) {
        let mean = xr.iter().fold(T::zero(), |s, &v| s + v) / n;
        let var = xr
            .iter()
            .fold(T::zero(), |s, &v| s + (v - mean) * (v - mean))
            / n;
        let rstd = T::one() / (var + c(LN_EPS)).sqrt();
        y.extend(
            xr.iter()
                .zip(g.iter().zip(b))
                .map(|(&v, (&gi, &bi))| (v - mean) * rstd * gi + bi),
        );
        stats.push([mean, rstd]);
    }
    (y, stats)
}

/// Backward of `layer_norm`: adds into `dg`, `db`; returns dx.
pub fn layer_norm_backward<T: Float>(
    x: &[T],
    stats: &[[T; 2]],
    g: &[T],
    dy: &[T],
    dg: &mut [T],
    db: &mut [T],
    dim: usize,
) -> Vec<T> {
    let n = c::<T>(dim as f64);
    let mut dx = Vec::with_capacity(x.len());
    for ((xr, dyr), &[mean, rstd]) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).zip(stats) {
        let (mut sum_dh, mut sum_dh_xh) = (T::zero(), T::zero());
        for i in 0..dim {
            let xh = (xr[i] - mean) * rstd;
            let dh = dyr[i] * g[i];
            sum_dh = sum_dh + dh;
            sum_dh_xh = sum_dh_xh + dh * xh;
            dg[i] = dg[i] + dyr[i] * xh;
            db[i] = db[i] + dyr[i];
        }
        let (mean_dh, mean_dh_xh) = (sum_dh / n, sum_dh_xh / n);
        dx.extend((0..dim).map(|i| {
            let xh = (xr[i] - mean) * rstd;
            rstd * (dyr[i] * g[i] - mean_dh - xh * mean_dh_xh)
        }));
    }
    dx
}

/// sqrt(2 / pi), the tanh approximation's constant.
const GELU_K: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044_715;

/// GELU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`. WGSL has no
/// erf, and this form is what both sides compute.
pub fn gelu<T: Float>(x: &[T]) -> Vec<T> {
    x.iter()
        .map(|&v| {
            let t = (c::<T>(GELU_K) * (v + c::<T>(GELU_A) * v * v * v)).tanh();
            c::<T>(0.5) * v * (T::one() + t)
        })
        .collect()
}

/// Backward of `gelu` at input `x`.
pub fn gelu_backward<T: Float>(x: &[T], dy: &[T]) -> Vec<T> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| {
            let u = c::<T>(GELU_K) * (v + c::<T>(GELU_A) * v * v * v);
            let t = u.tanh();
            let du = c::<T>(GELU_K) * (T::one() + c::<T>(3.0 * GELU_A) * v * v);
            g * (c::<T>(0.5) * (T::one() + t) + c::<T>(0.5) * v * (T::one() - t * t) * du)
        })
        .collect()
}

/// Row-wise softmax over rows of width `dim`, max-subtracted.
pub fn softmax<T: Float>(x: &[T], dim: usize) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    for xr in x.chunks_exact(dim) {
        let max = xr.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
        let start = y.len();
        y.extend(xr.iter().map(|&v| (v - max).exp()));
        let sum = y[start..].iter().fold(T::zero(), |s, &v| s + v);
        for v in &mut y[start..] {
            *v = *v / sum;
        }
    }
    y
}

/// Backward of `softmax` given its output `y`: `dx = y (dy - sum(dy y))` per row.
pub fn softmax_backward<T: Float>(y: &[T], dy: &[T], dim: usize) -> Vec<T> {
    let mut dx = Vec::with_capacity(y.len());
    for (yr, dyr) in y.chunks_exact(dim).zip(dy.chunks_exact(dim)) {
        let s = dot(yr, dyr);
        dx.extend(yr.iter().zip(dyr).map(|(&p, &g)| p * (g - s)));
    }
    dx
}

/// Mean cross-entropy of `logits` (rows of `classes`) against `labels`, and its gradient.
pub fn cross_entropy<T: Float>(logits: &[T], labels: &[u8], classes: usize) -> (T, Vec<T>) {
    let probs = softmax(logits, classes);
    let inv = T::one() / c::<T>(labels.len() as f64);
    let mut loss = T::zero();
    let mut grad = probs.clone();
    for (i, &y) in labels.iter().enumerate() {
        let y = y as usize;
        loss = loss - probs[i * classes + y].max(c(1e-30)).ln();
        grad[i * classes + y] = grad[i * classes + y] - T::one();
    }
    for g in &mut grad {
        *g = *g * inv;
    }
    (loss * inv, grad)
}

/// Cuts `images` (each `side x side`, row-major) into one window of `window x window` pixels
/// per token, tokens on the `side/stride` grid in row-major order. Windows wider than the
/// stride overlap their neighbours and are centred on the token's `stride x stride` block;
/// pixels outside the image read 0. (`window == stride` gives plain non-overlapping patches.)
pub fn patches<T: Float>(images: &[T], side: usize, stride: usize, window: usize) -> Vec<T> {
    let g = side / stride;
    let pad = (window - stride) / 2;
    let mut out = Vec::with_capacity(images.len() / (stride * stride) * window * window);
    for img in images.chunks_exact(side * side) {
        for ty in 0..g {
            for tx in 0..g {
                for wy in 0..window {
                    for wx in 0..window {
                        let y = (ty * stride + wy).checked_sub(pad).filter(|&y| y < side);
                        let x = (tx * stride + wx).checked_sub(pad).filter(|&x| x < side);
                        out.push(match (y, x) {
                            (Some(y), Some(x)) => img[y * side + x],
                            _ => T::zero(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// Adds `pos` (`[tokens, dim]`) to every image's token rows.
pub fn add_position<T: Float>(x: &mut [T], pos: &[T]) {
    for img in x.chunks_exact_mut(pos.len()) {
        for (a, &p) in img.iter_mut().zip(pos) {
            *a = *a + p;
        }
    }
}

/// Mean over the `tokens` rows of each image: `[images * tokens, dim] -> [images, dim]`.
pub fn mean_pool<T: Float>(x: &[T], tokens: usize, dim: usize) -> Vec<T> {
    let inv = T::one() / c::<T>(tokens as f64);
    x.chunks_exact(tokens * dim)
        .flat_map(|img| {
            (0..dim).map(move |j| (0..tokens).fold(T::zero(), |s, t| s + img[t * dim + j]) * inv)
        })
        .collect()
}

/// Backward of `mean_pool`: each token row receives `dy / tokens`.
pub fn mean_pool_backward<T: Float>(dy: &[T], tokens: usize, dim: usize) -> Vec<T> {
    let inv = T::one() / c::<T>(tokens as f64);
    dy.chunks_exact(dim)
        .flat_map(|r| (0..tokens).flat_map(move |_| r.iter().map(move |&g| g * inv)))
        .collect()
}

/// Splits the fused projection `qkv` (`[images, tokens, 3 * heads * hd]`, columns q | k | v,
/// each head's `hd` channels together) into q, k and v of `[images, heads, tokens, hd]`, the
/// layout FMA reads.
pub fn split_heads<T: Float>(qkv: &[T], tokens: usize, heads: usize, hd: usize) -> [Vec<T>; 3] {
    let dim = heads * hd;
    let mut out = [vec![], vec![], vec![]];
    for (part, dst) in out.iter_mut().enumerate() {
        dst.reserve(qkv.len() / 3);
        for img in qkv.chunks_exact(tokens * 3 * dim) {
            for h in 0..heads {
                for t in 0..tokens {
                    let at = t * 3 * dim + part * dim + h * hd;
                    dst.extend_from_slice(&img[at..at + hd]);
                }
            }
        }
    }
    out
}

/// The inverse of `split_heads` for one tensor: `[images, heads, tokens, hd]` to
/// `[images, tokens, heads * hd]`. (Also the backward of splitting, per part.)
pub fn merge_heads<T: Float>(x: &[T], tokens: usize, heads: usize, hd: usize) -> Vec<T> {
    let dim = heads * hd;
    let mut out = vec![T::zero(); x.len()];
    for (src, dst) in x
        .chunks_exact(tokens * dim)
        .zip(out.chunks_exact_mut(tokens * dim))
    {
        for h in 0..heads {
            for t in 0..tokens {
                let from = (h * tokens + t) * hd;
                dst[t * dim + h * hd..t * dim + (h + 1) * hd]
                    .copy_from_slice(&src[from..from + hd]);
            }
        }
    }
    out
}

/// Backward of `merge_heads`: `[images, tokens, heads * hd]` back to
/// `[images, heads, tokens, hd]`.
pub fn merge_heads_backward<T: Float>(x: &[T], tokens: usize, heads: usize, hd: usize) -> Vec<T> {
    let dim = heads * hd;
    let mut out = Vec::with_capacity(x.len());
    for img in x.chunks_exact(tokens * dim) {
        for h in 0..heads {
            for t in 0..tokens {
                out.extend_from_slice(&img[t * dim + h * hd..t * dim + (h + 1) * hd]);
            }
        }
    }
    out
}

/// Backward of `split_heads`: the gradients of q, k, v back into the fused layout.
pub fn split_heads_backward<T: Float>(
    [dq, dk, dv]: [&[T]; 3],
    tokens: usize,
    heads: usize,
    hd: usize,
) -> Vec<T> {
    let dim = heads * hd;
    let parts = [dq, dk, dv].map(|x| merge_heads(x, tokens, heads, hd));
    let images = dq.len() / (tokens * dim);
    let mut out = Vec::with_capacity(3 * dq.len());
    for r in 0..images * tokens {
        for p in &parts {
            out.extend_from_slice(&p[r * dim..(r + 1) * dim]);
        }
    }
    out
}

/// `a += b`, element-wise.
pub fn add_into<T: Float>(a: &mut [T], b: &[T]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = *x + y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i as f64 + seed) * 0.731).sin() * 1.3)
            .collect()
    }

    /// Central difference of `f` along every input entry against `grad`.
    fn check(x: &[f64], grad: &[f64], f: impl Fn(&[f64]) -> f64) {
        let h = 1e-6;
        for i in 0..x.len() {
            let (mut a, mut b) = (x.to_vec(), x.to_vec());
            a[i] += h;
            b[i] -= h;
            let fd = (f(&a) - f(&b)) / (2.0 * h);
            assert!(
                (fd - grad[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "entry {i}: finite difference {fd}, backward {}",
                grad[i]
            );
        }
    }

    /// A fixed linear functional of the output, so every output entry has its own weight.
    fn probe(y: &[f64]) -> f64 {
        y.iter()
            .enumerate()
            .map(|(i, v)| v * (i as f64 * 0.37).cos())
            .sum()
    }
    fn probe_grad(n: usize) -> Vec<f64> {
        (0..n).map(|i| (i as f64 * 0.37).cos()).collect()
    }

    #[test]
    fn linear_backward_matches_finite_differences() {
        let (rows, inp, out) = (3, 4, 5);
        let (x, w, b) = (
            values(rows * inp, 1.0),
            values(inp * out, 2.0),
            values(out, 3.0),
        );
        let dy = probe_grad(rows * out);
        let (mut dw, mut db) = (vec![0.0; inp * out], vec![0.0; out]);
        let dx = linear_backward(&x, &w, &dy, &mut dw, &mut db, inp, out);
        check(&x, &dx, |x| probe(&linear(x, &w, &b, inp, out)));
        check(&w, &dw, |w| probe(&linear(&x, w, &b, inp, out)));
        check(&b, &db, |b| probe(&linear(&x, &w, b, inp, out)));
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let dim = 6;
        let (x, g, b) = (values(3 * dim, 0.5), values(dim, 4.0), values(dim, 5.0));
        let (y, stats) = layer_norm(&x, &g, &b, dim);
        let mean: f64 = y[..dim].iter().sum::<f64>() / dim as f64;
        let dy = probe_grad(x.len());
        let (mut dg, mut db) = (vec![0.0; dim], vec![0.0; dim]);
        let dx = layer_norm_backward(&x, &stats, &g, &dy, &mut dg, &mut db, dim);
        check(&x, &dx, |x| probe(&layer_norm(x, &g, &b, dim).0));
        check(&g, &dg, |g| probe(&layer_norm(&x, g, &b, dim).0));
        check(&b, &db, |b| probe(&layer_norm(&x, &g, b, dim).0));
        // With g = 1, b = 0 each row has mean 0 and variance 1 (up to eps).
        let ones = vec![1.0; dim];
        let (z, _) = layer_norm(&x, &ones, &vec![0.0; dim], dim);
        let var: f64 = z[..dim].iter().map(|v| v * v).sum::<f64>() / dim as f64;
        assert!(z[..dim].iter().sum::<f64>().abs() < 1e-12);
        assert!((var - 1.0).abs() < 1e-3, "variance {var}");
        assert!(mean.is_finite());
    }

    #[test]
    fn gelu_and_softmax_backward_match_finite_differences() {
        let x = values(12, 7.0);
        let dy = probe_grad(12);
        check(&x, &gelu_backward(&x, &dy), |x| probe(&gelu(x)));
        let y = softmax(&x, 4);
        check(&x, &softmax_backward(&y, &dy, 4), |x| probe(&softmax(x, 4)));
        // Known values: gelu(0) = 0, gelu(x) ~ x for large x; softmax rows sum to 1.
        let g = gelu(&[0.0, 10.0, -10.0]);
        assert!(g[0] == 0.0 && (g[1] - 10.0).abs() < 1e-9 && g[2].abs() < 1e-9);
        for r in y.chunks(4) {
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let logits = values(20, 9.0);
        let labels = [3u8, 0];
        let (loss, grad) = cross_entropy(&logits, &labels, 10);
        check(&logits, &grad, |l| cross_entropy(l, &labels, 10).0);
        // Uniform logits: loss ln(10).
        let (u, _) = cross_entropy(&[0.0f64; 10], &[7], 10);
        assert!((u - 10f64.ln()).abs() < 1e-12);
        assert!(loss > 0.0);
    }

    #[test]
    fn heads_split_and_merge_are_inverse() {
        let (tokens, heads, hd) = (3, 2, 4);
        let qkv = values(2 * tokens * 3 * heads * hd, 0.2);
        let [q, k, v] = split_heads(&qkv, tokens, heads, hd);
        // Token 1, head 1 of image 0: q channels start at column 1 * hd of row 1.
        assert_eq!(
            &q[(tokens + 1) * hd..(tokens + 2) * hd],
            &qkv[24 + 4..24 + 8]
        );
        assert_eq!(&v[..hd], &qkv[16..16 + hd]);
        assert_eq!(split_heads_backward([&q, &k, &v], tokens, heads, hd), qkv);
        assert_eq!(
            merge_heads_backward(&merge_heads(&q, tokens, heads, hd), tokens, heads, hd),
            q
        );
        assert_eq!(
            split_heads(
                &split_heads_backward([&q, &k, &v], tokens, heads, hd),
                tokens,
                heads,
                hd
            ),
            [q, k, v]
        );
    }

    #[test]
    fn pooling_and_patches() {
        let x = values(2 * 3 * 4, 1.5); // 2 images, 3 tokens, dim 4
        let dy = probe_grad(8);
        check(&x, &mean_pool_backward(&dy, 3, 4), |x| {
            probe(&mean_pool(x, 3, 4))
        });
        // A 4x4 image in 2x2 patches: token 1 is the top-right block.
        let img: Vec<f64> = (0..16).map(|i| i as f64).collect();
        let p = patches(&img, 4, 2, 2);
        assert_eq!(&p[4..8], &[2.0, 3.0, 6.0, 7.0]);
        assert_eq!(&p[12..16], &[10.0, 11.0, 14.0, 15.0]);
        // Overlapping 4 x 4 windows: token 0 reads rows -1..3 and columns -1..3.
        let w = patches(&img, 4, 2, 4);
        assert_eq!(w.len(), 4 * 16);
        assert_eq!(&w[..8], &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0]);
        assert_eq!(&w[16 * 3 + 8..16 * 3 + 12], &[13.0, 14.0, 15.0, 0.0]);
    }
}
