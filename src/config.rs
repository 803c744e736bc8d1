//! What a caller chooses: the FMA options, the tensor shape and the learned downsampling weights.

use crate::error::{FmaError, Result};
use crate::geometry::Geometry;

/// Largest head dimension the kernels are compiled for.
pub const MAX_HEAD_DIM: usize = 128;

/// How a group of keys (or values) is summarised into `p` coarse keys (docs/fma.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Downsampling {
    /// Fixed average of each of the `p` segments of a group (no parameters).
    Mean,
    /// Learned `p x S` weights per level, shared across channels.
    Basis,
    /// Learned `d x p x S` weights and a `d x p` bias per level (grouped conv1d).
    Depthwise,
}

impl Downsampling {
    /// Whether this kind reads weights.
    pub fn is_learned(self) -> bool {
        !matches!(self, Downsampling::Mean)
    }
}

impl std::str::FromStr for Downsampling {
    type Err = FmaError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Ok(Downsampling::Mean),
            "basis" => Ok(Downsampling::Basis),
            "depthwise" => Ok(Downsampling::Depthwise),
            other => Err(FmaError::InvalidConfig(format!(
                "unknown downsampling '{other}': use mean, basis or depthwise"
            ))),
        }
    }
}

/// How the n tokens of a head are arranged: the hierarchy FMA builds over them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// A sequence (docs/fma.md §4): 1D cells of m tokens.
    #[default]
    Sequence,
    /// An image of `height x width` tokens in row-major order (docs/fma.md §8): m x m cells,
    /// Chebyshev neighbourhoods. n must equal `height * width`.
    Image { height: usize, width: usize },
}

impl std::str::FromStr for Layout {
    type Err = FmaError;
    /// Parses `HxW` (e.g. `16x16`) as an image layout.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            FmaError::InvalidConfig(format!(
                "image size '{s}' must be HEIGHTxWIDTH with both at least 1, e.g. 16x16"
            ))
        };
        let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let height: usize = h.trim().parse().map_err(|_| bad())?;
        let width: usize = w.trim().parse().map_err(|_| bad())?;
        if height == 0 || width == 0 {
            return Err(bad());
        }
        Ok(Layout::Image { height, width })
    }
}

/// How the GPU stores Q, K, V, O and the coarse keys and values (spec: the same math at either
/// precision). Scores, softmax statistics (max, sum, LSE) and accumulators are f32 in both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 4 bytes a value: works on every adapter.
    #[default]
    F32,
    /// 2 bytes a value (IEEE half): half the memory and bandwidth of the tensors, about three
    /// significant decimal digits per stored value, values beyond 65504 become infinite. Needs
    /// the adapter's `SHADER_F16` feature (`FmaError::MissingFeature` otherwise); GPU buffers
    /// given to `encode` hold f16, host calls convert. Forward only: the backward runs in f32.
    F16,
}

impl Precision {
    /// Bytes of one stored value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = FmaError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(FmaError::InvalidConfig(format!(
                "unknown precision '{other}': use f32 or f16"
            ))),
        }
    }
}

/// Options of one FMA attention call.
///
/// A fine cell larger than the input: where two fine cells cover the whole input (the
/// sequence, or an image's longer side), FMA has no coarse level and is exactly dense
/// attention, whatever `m` and `p` are. The hierarchy (`Geometry`) is then built with the
/// smallest power-of-two cell that still covers the input in two, and with `p` (sqrt(p) for
/// images) clipped to that cell, so a huge `m` gives dense attention without padding the
/// input to 2m tokens. `Geometry::cell_w` and `Geometry::p` hold the sizes actually used.
/// Inputs whose padding would still be far larger than the input (a long thin image padded
/// to a square) are refused with `FmaError::LimitExceeded`.
#[derive(Clone, Debug, PartialEq)]
pub struct FmaConfig {
    /// Fine cell size (tokens per fine cell in 1D; cell side in 2D). A power of two.
    pub m: usize,
    /// Coarse keys per group. 1D: divides `m`. 2D: a square whose root divides `m` (each
    /// cell splits into sqrt(p) x sqrt(p) sub-blocks).
    pub p: usize,
    /// Sequence (1D) or image (2D).
    pub layout: Layout,
    /// Autoregressive masking (sequences only).
    pub causal: bool,
    /// How groups are summarised.
    pub downsampling: Downsampling,
    /// Add log(number of real tokens a coarse key stands for) to its score (docs/fma.md §6-7).
    pub multiplicity: bool,
    /// Score scale; `None` means 1/sqrt(d).
    pub scale: Option<f32>,
    /// Storage precision of the tensors on the GPU (the CPU reference ignores it).
    pub precision: Precision,
    /// The O(n) variant (docs/fma.md §13): queries are downsampled like keys, and a query
    /// scores coarse keys through its segment's coarse query, so the far field is computed
    /// once per segment and passed down the tree. Bidirectional only. Learned kinds then also
    /// read `wq` (and `bq`) of every level.
    pub downsample_queries: bool,
}

impl FmaConfig {
    /// Bidirectional FMA with `Mean` downsampling and multiplicity on.
    pub fn new(m: usize, p: usize) -> Self {
        FmaConfig {
            m,
            p,
            layout: Layout::Sequence,
            causal: false,
            downsampling: Downsampling::Mean,
            multiplicity: true,
            scale: None,
            precision: Precision::F32,
            downsample_queries: false,
        }
    }

    /// The same options over an image of `height x width` tokens (2D FMA).
    pub fn image(self, height: usize, width: usize) -> Self {
        FmaConfig {
            layout: Layout::Image { height, width },
            ..self
        }
    }

    /// Checks m, p and the layout (rules that do not depend on n).
    pub fn validate(&self) -> Result<()> {
        if self.m == 0 || !self.m.is_power_of_two() {
            return Err(FmaError::InvalidConfig(format!(
                "m = {} must be a power of two (1, 2, 4, ..., e.g. 32)",
                self.m
            )));
        }
        match self.layout {
            Layout::Sequence => {
                if self.p == 0 || !self.m.is_multiple_of(self.p) {
                    return Err(FmaError::InvalidConfig(format!(
                        "p = {} must be at least 1 and divide m = {}",
                        self.p, self.m
                    )));
                }
            }
            Layout::Image { height, width } => {
                if height == 0 || width == 0 {
                    return Err(FmaError::InvalidConfig(format!(
                        "image {height}x{width}: height and width must be at least 1"
                    )));
                }
                let root = self.p.isqrt();
                if self.p == 0 || root * root != self.p {
                    return Err(FmaError::InvalidConfig(format!(
                        "p = {} must be a square (1, 4, 16, ...) for images: each cell splits into sqrt(p) x sqrt(p) sub-blocks",
                        self.p
                    )));
                }
                if !self.m.is_multiple_of(root) {
                    return Err(FmaError::InvalidConfig(format!(
                        "p = {} does not divide the {m} x {m} fine cell: sqrt(p) = {root} must divide m = {m}",
                        self.p,
                        m = self.m
                    )));
                }
                if self.causal {
                    return Err(FmaError::InvalidConfig(
                        "causal masking is defined for sequences only, not for images".into(),
                    ));
                }
            }
        }
        if self.causal && self.downsample_queries {
            return Err(FmaError::InvalidConfig(
                "downsample_queries cannot be causal: a coarse query averages the queries of a \
                 whole segment, later tokens included, so token i would depend on tokens after it"
                    .into(),
            ));
        }
        if let Some(s) = self.scale
            && !s.is_finite()
        {
            return Err(FmaError::InvalidConfig(format!("scale {s} must be finite")));
        }
        Ok(())
    }

    /// The score scale for head dimension `d`.
    pub fn scale_for(&self, d: usize) -> f32 {
        self.scale.unwrap_or(1.0 / (d as f32).sqrt())
    }
}

/// Shape of Q, K, V and O: `[batch, heads, n, d]`, f32, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub n: usize,
    pub d: usize,
}

impl Shape {
    pub fn new(batch: usize, heads: usize, n: usize, d: usize) -> Self {
        Shape { batch, heads, n, d }
    }

    /// batch * heads: the number of independent attention problems.
    pub fn bh(&self) -> usize {
        self.batch * self.heads
    }

    /// Elements of Q (and K, V, O).
    pub fn elements(&self) -> usize {
        self.bh() * self.n * self.d
    }

    /// Checks that every dimension is usable and that the head dim is supported.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.heads == 0 || self.n == 0 {
            return Err(FmaError::BadShape {
                what: "tensor shape [batch, heads, n, d]".into(),
                expected: "batch, heads and n at least 1".into(),
                got: format!("{:?}", [self.batch, self.heads, self.n, self.d]),
            });
        }
        if self.d == 0 || self.d > MAX_HEAD_DIM {
            return Err(FmaError::UnsupportedHeadDim(self.d));
        }
        self.batch
            .checked_mul(self.heads)
            .and_then(|x| x.checked_mul(self.n))
            .and_then(|x| x.checked_mul(self.d))
            .ok_or_else(|| FmaError::BadShape {
                what: "tensor shape".into(),
                expected: "batch*heads*n*d to fit in memory".into(),
                got: format!("{:?}", [self.batch, self.heads, self.n, self.d]),
            })?;
        Ok(())
    }

    /// Checks that a tensor named `what` holds `elements()` values.
    pub fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.elements() {
            return Err(FmaError::BadShape {
                what: what.into(),
                expected: format!(
                    "{} values for [batch={}, heads={}, n={}, d={}]",
                    self.elements(),
                    self.batch,
                    self.heads,
                    self.n,
                    self.d
                ),
                got: format!("{len} values"),
            });
        }
        Ok(())
    }
}

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
