//! The learned downsampling weights (docs/fma.md §5): their layout per level, the mean
//! initialisation and their checks against a hierarchy.

use crate::config::Downsampling;
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;

/// Learned weights of one coarse level (docs/fma.md §5). Empty vectors for `Mean`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LevelWeights {
    /// Keys: `[p, S]` (basis) or `[d, p, S]` (depthwise), S = tokens per group at this level.
    pub wk: Vec<f32>,
    /// Values: same shape as `wk`.
    pub wv: Vec<f32>,
    /// Key bias `[d, p]` (depthwise only).
    pub bk: Vec<f32>,
    /// Value bias `[d, p]` (depthwise only).
    pub bv: Vec<f32>,
    /// Queries (`downsample_queries` only, else empty): same shape as `wk`.
    pub wq: Vec<f32>,
    /// Query bias `[d, p]` (`downsample_queries` and depthwise only).
    pub bq: Vec<f32>,
}

/// Weights for every coarse level l = 1..L, index 0 holding level 1.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownsampleWeights {
    pub levels: Vec<LevelWeights>,
}

impl DownsampleWeights {
    /// The initialisation of docs/fma.md §5 for hierarchy `g`: the `Mean` weights (each
    /// coarse key the average of its segment, which in 2D is a sub-block of the cell, taken in
    /// row-major order), and zero bias. Empty levels for `Mean`, which has no weights.
    pub fn mean_init(kind: Downsampling, g: &Geometry, d: usize) -> Self {
        let p = g.p;
        let levels = (1..=g.num_levels())
            .map(|l| {
                let s = g.levels[l - 1].group_tokens();
                let mut basis = vec![0.0f32; p * s];
                for r in 0..p {
                    let seg = g.segment_offsets(l, r);
                    for &t in &seg {
                        basis[r * s + t] = 1.0 / seg.len() as f32;
                    }
                }
                match kind {
                    Downsampling::Mean => LevelWeights::default(),
                    Downsampling::Basis => LevelWeights {
                        wk: basis.clone(),
                        wv: basis,
                        ..Default::default()
                    },
                    Downsampling::Depthwise => {
                        let w: Vec<f32> = (0..d).flat_map(|_| basis.iter().copied()).collect();
                        LevelWeights {
                            wk: w.clone(),
                            wv: w,
                            bk: vec![0.0; d * p],
                            bv: vec![0.0; d * p],
                            ..Default::default()
                        }
                    }
                }
            })
            .collect();
        DownsampleWeights { levels }
    }

    /// All weights in one vector, `[wk of every level][wv][bk][bv][wq][bq]`: the layout the
    /// GPU binds, `BackwardIo::dw` returns and `from_packed` reads.
    pub fn packed(&self) -> Vec<f32> {
        let parts: [fn(&LevelWeights) -> &Vec<f32>; 6] = [
            |l| &l.wk,
            |l| &l.wv,
            |l| &l.bk,
            |l| &l.bv,
            |l| &l.wq,
            |l| &l.bq,
        ];
        parts
            .iter()
            .flat_map(|part| self.levels.iter().flat_map(|lw| part(lw).iter().copied()))
            .collect()
    }

    /// The weights of `kind` for hierarchy `g` and head dim `d` read from the `packed` layout
    /// (`queries`: the O(n) variant's `wq` and `bq` are present). The length must match.
    pub fn from_packed(
        kind: Downsampling,
        g: &Geometry,
        d: usize,
        queries: bool,
        packed: &[f32],
    ) -> Result<Self> {
        let mut out = Self::mean_init(kind, g, d);
        if queries {
            out = out.with_query_weights();
        }
        let want: usize = out.packed().len();
        if packed.len() != want {
            return Err(FmaError::Weights(format!(
                "packed {kind:?} weights must hold {want} values for this input size, got {}",
                packed.len()
            )));
        }
        let mut at = 0;
        for part in 0..6 {
            for lw in &mut out.levels {
                let dst = match part {
                    0 => &mut lw.wk,
                    1 => &mut lw.wv,
                    2 => &mut lw.bk,
                    3 => &mut lw.bv,
                    4 => &mut lw.wq,
                    _ => &mut lw.bq,
                };
                let len = dst.len();
                dst.copy_from_slice(&packed[at..at + len]);
                at += len;
            }
        }
        Ok(out)
    }

    /// The same weights with the query weights of the O(n) variant added, initialised like
    /// the keys' (the `Mean` weights at `mean_init`): `wq` = `wk`, `bq` = `bk` at every level.
    pub fn with_query_weights(mut self) -> Self {
        for lw in &mut self.levels {
            lw.wq = lw.wk.clone();
            lw.bq = lw.bk.clone();
        }
        self
    }

    /// Checks count and shapes against the hierarchy: `group_tokens[l]` tokens per group at
    /// level l+1. `queries` (the O(n) variant) requires `wq` and `bq` shaped like `wk` and `bk`;
    /// without it they must be empty.
    pub fn validate(
        &self,
        kind: Downsampling,
        p: usize,
        d: usize,
        group_tokens: &[usize],
        queries: bool,
    ) -> Result<()> {
        if !kind.is_learned() {
            return Ok(());
        }
        if self.levels.len() != group_tokens.len() {
            return Err(FmaError::Weights(format!(
                "{:?} downsampling needs weights for {} coarse levels for this input size, got {}",
                kind,
                group_tokens.len(),
                self.levels.len()
            )));
        }
        for (i, (lw, &s)) in self.levels.iter().zip(group_tokens).enumerate() {
            let l = i + 1;
            // Saturating: a shape too large to count can match no real vector.
            let (w_len, w_shape, b_len) = match kind {
                Downsampling::Basis => (p.saturating_mul(s), format!("[{p}, {s}]"), 0),
                _ => (
                    d.saturating_mul(p).saturating_mul(s),
                    format!("[{d}, {p}, {s}]"),
                    d.saturating_mul(p),
                ),
            };
            let (wq_len, bq_len) = if queries { (w_len, b_len) } else { (0, 0) };
            for (name, v, want) in [
                ("wk", &lw.wk, w_len),
                ("wv", &lw.wv, w_len),
                ("bk", &lw.bk, b_len),
                ("bv", &lw.bv, b_len),
                ("wq", &lw.wq, wq_len),
                ("bq", &lw.bq, bq_len),
            ] {
                if v.len() != want {
                    let shape = if name.starts_with('w') {
                        w_shape.clone()
                    } else {
                        format!("[{d}, {p}]")
                    };
                    let shape = if want == 0 && name.ends_with('q') {
                        "nothing without downsample_queries".to_string()
                    } else if want == 0 {
                        "nothing (basis has no bias)".to_string()
                    } else {
                        shape
                    };
                    return Err(FmaError::Weights(format!(
                        "{name}.{l} must hold {want} values, shape {shape}; got {}",
                        v.len()
                    )));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(FmaError::Weights(format!(
                        "{name}.{l} holds a non-finite value"
                    )));
                }
            }
        }
        Ok(())
    }
}
