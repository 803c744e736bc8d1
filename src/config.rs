//! What a caller chooses: the FMA options, the tensor shape and the learned downsampling weights.

use crate::error::{FmaError, Result};

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
    /// Keep at most this many coarse levels (`None`: all of them). With `Some(0)` each query
    /// sees its own fine cell and the neighbouring ones only: sliding-window attention on the
    /// same cells, the baseline FMA's far field is measured against. Decoders refuse a cap.
    pub max_levels: Option<usize>,
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
            max_levels: None,
        }
    }

    /// The same options with at most `levels` coarse levels; 0 gives sliding-window
    /// attention over each query's near field.
    pub fn max_levels(self, levels: usize) -> Self {
        FmaConfig {
            max_levels: Some(levels),
            ..self
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
