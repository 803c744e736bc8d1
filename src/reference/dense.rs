//! Exact softmax attention, the ground truth FMA is compared with.

use super::{Output, Triple, dot, to_f64};
use crate::config::Shape;
use crate::error::Result;

/// Dense attention over [batch, heads, n, d] tensors, bidirectional or causal.
pub fn dense(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    causal: bool,
    scale: f32,
) -> Result<Output> {
    shape.validate()?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        shape.check_len(name, t.len())?;
    }
    let (n, d) = (shape.n, shape.d);
    let mut out = Output {
        o: vec![0.0; shape.elements()],
        lse: vec![0.0; shape.bh() * n],
    };
    for h in 0..shape.bh() {
        let base = h * n * d;
        let (kh, vh) = (
            to_f64(&k[base..base + n * d]),
            to_f64(&v[base..base + n * d]),
        );
        for i in 0..n {
            let qi: Vec<f64> = q[base + i * d..base + (i + 1) * d]
                .iter()
                .map(|&x| x as f64 * scale as f64)
                .collect();
            let mut t = Triple::empty(d);
            let last = if causal { i + 1 } else { n };
            for j in 0..last {
                let z = dot(&qi, &kh[j * d..(j + 1) * d]);
                t.add(z, vh[j * d..(j + 1) * d].iter().copied());
            }
            let (o, lse) = t.finish();
            for (c, x) in o.into_iter().enumerate() {
                out.o[base + i * d + c] = x as f32;
            }
            out.lse[h * n + i] = lse as f32;
        }
    }
    Ok(out)
}
