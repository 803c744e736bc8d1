//! The segmentation model for pages of digits (`canvas`): the classifier's window stem and
//! pre-norm blocks, with no position embedding, so that one set of weights runs on a canvas of
//! any size, and a per-token head that gives the classes of its patch's pixels.
//!
//! Attention is 2D FMA with `Mean` downsampling (no per-level weights, which a canvas with
//! more levels than the training canvas would lack); exact attention: FMA with one fine cell
//! over the whole grid, so that the near field is every token; or a sliding window: FMA's near
//! field alone, the same cells with no coarse level.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::{Device, Tensor};
use multipole::FmaConfig;

use crate::canvas::CLASSES;
use crate::model::Block;
use crate::{Error, Result};

/// How the blocks attend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegAttention {
    /// FMA over the token grid: fine cells of `m x m` tokens, `p` coarse keys per cell;
    /// `linear` is the O(n) variant.
    Fma { m: usize, p: usize, linear: bool },
    /// Every token attends to every token.
    Dense,
    /// Each token attends to the tokens of its `m x m` fine cell and the 8 around it: FMA's
    /// near field without the far field.
    Window { m: usize },
}

/// The model's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegConfig {
    /// Pixels per token side.
    pub patch: usize,
    /// Side of the pixel window a token's embedding reads, centred on its patch.
    pub window: usize,
    pub dim: usize,
    pub heads: usize,
    pub depth: usize,
    pub mlp: usize,
    pub attention: SegAttention,
}

impl SegConfig {
    /// The classifier's sizes (2 x 2 patches, 4 x 4 windows, width 32, 2 heads, 3 blocks)
    /// with FMA over 4 x 4 fine cells and 4 coarse keys per cell.
    pub fn new() -> SegConfig {
        SegConfig {
            patch: 2,
            window: 4,
            dim: 32,
            heads: 2,
            depth: 3,
            mlp: 64,
            attention: SegAttention::Fma {
                m: 4,
                p: 4,
                linear: false,
            },
        }
    }

    /// The attention of a `grid_h x grid_w` token grid.
    pub fn fma_config(&self, grid_h: usize, grid_w: usize) -> FmaConfig {
        match self.attention {
            SegAttention::Fma { m, p, linear } => FmaConfig {
                downsample_queries: linear,
                ..FmaConfig::new(m, p).image(grid_h, grid_w)
            },
            SegAttention::Dense => {
                FmaConfig::new(grid_h.max(grid_w).next_power_of_two(), 1).image(grid_h, grid_w)
            }
            SegAttention::Window { m } => FmaConfig::new(m, 1).image(grid_h, grid_w).max_levels(0),
        }
    }

    fn validate(&self) -> Result<()> {
        let ok = self.patch > 0
            && self.window >= self.patch
            && (self.window - self.patch).is_multiple_of(2)
            && self.heads > 0
            && self.dim.is_multiple_of(self.heads)
            && self.depth > 0
            && self.mlp > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::Fma(multipole::FmaError::Model(format!(
                "segmentation model sizes {self:?}: the window must cover the patch by the same \
                 margin on each side and the heads must divide the width"
            ))))
        }
    }
}

impl Default for SegConfig {
    fn default() -> Self {
        SegConfig::new()
    }
}

/// Images `[batch, height, width]` (pixels in [0, 1]) to class logits `[batch, height, width,
/// CLASSES]`, for any height and width that are multiples of the patch.
#[derive(Module, Debug)]
pub struct SegVit {
    patch: Linear,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
    #[module(skip)]
    config: SegConfig,
}

impl SegVit {
    /// A model of `config` with Burn's default initialisation.
    pub fn new(config: &SegConfig, device: &Device) -> Result<SegVit> {
        config.validate()?;
        let c = config;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let blocks = (0..c.depth)
            .map(|_| Block::new(c.dim, c.mlp, c.heads, device))
            .collect();
        Ok(SegVit {
            patch: linear(c.window * c.window, c.dim),
            blocks,
            norm: LayerNormConfig::new(c.dim).init(device),
            head: linear(c.dim, c.patch * c.patch * CLASSES),
            config: *c,
        })
    }

    pub fn config(&self) -> &SegConfig {
        &self.config
    }

    /// Class logits of every pixel.
    pub fn forward(&self, images: Tensor<3>) -> Result<Tensor<4>> {
        let c = &self.config;
        let [batch, height, width] = images.dims();
        if height == 0
            || width == 0
            || !height.is_multiple_of(c.patch)
            || !width.is_multiple_of(c.patch)
        {
            return Err(Error::BadTensor {
                what: "images".into(),
                expected: format!(
                    "[batch, height, width] with sides multiples of the patch ({})",
                    c.patch
                ),
                got: format!("[{batch}, {height}, {width}]"),
            });
        }
        let (gh, gw) = (height / c.patch, width / c.patch);
        let attention = c.fma_config(gh, gw);
        let pad = (c.window - c.patch) / 2;
        let options = UnfoldOptions::new([c.patch; 2], [pad; 2], [1, 1]);
        let windows = unfold4d(
            images.reshape([batch, 1, height, width]),
            [c.window; 2],
            options,
        )
        .swap_dims(1, 2);
        let mut x = self.patch.forward(windows);
        for block in &self.blocks {
            x = block.forward(x, &|q, k, v| {
                Ok(multipole_burn::fma_attention(q, k, v, None, &attention)?.0)
            })?;
        }
        // Token (ty, tx) predicts pixels (ty * patch + dy, tx * patch + dx).
        let logits = self
            .head
            .forward(self.norm.forward(x))
            .reshape([batch, gh, gw, c.patch, c.patch, CLASSES])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([batch, height, width, CLASSES]);
        Ok(logits)
    }
}
