//! The segmentation model for pages of digits (`canvas`): the classifier's window stem and
//! pre-norm blocks, with no position embedding, so that one set of weights runs on a canvas of
//! any size, and a per-token head that gives the classes of its patch's pixels.
//!
//! Attention is 2D FMA with `Mean` downsampling (no per-level weights, which a canvas with
//! more levels than the training canvas would lack); exact attention: FMA with one fine cell
//! over the whole grid, so that the near field is every token; or a sliding window: FMA's near
//! field alone, the same cells with no coarse level.

use burn::module::{Module, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::{Device, Tensor, TensorData};
use multipole::FmaConfig;

use crate::canvas::{CLASSES, MAX_SIDE};
use crate::model::Block;
use crate::{Error, Result};

/// Side of the depthwise convolution before each block (odd, so it is centred).
const CONV: usize = 5;

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
            // The attention's own rules (a square p for images, m at least 1, ...), on a
            // grid of four fine cells a side.
            let cells = match self.attention {
                SegAttention::Fma { m, .. } | SegAttention::Window { m } => 4 * m,
                SegAttention::Dense => 4,
            };
            self.fma_config(cells, cells).validate()?;
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
    /// Before each block, a depthwise `CONV x CONV` convolution over the token grid, added to
    /// the tokens: attention alone sees its keys as a set, without where they lie, and a
    /// digit's shape is where its strokes lie. The convolutions give each token its
    /// neighbourhood's layout, at any canvas size (no position embedding).
    convs: Vec<Conv2d>,
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
        let conv = || {
            Conv2dConfig::new([c.dim, c.dim], [CONV, CONV])
                .with_groups(c.dim)
                .with_padding(PaddingConfig2d::Explicit(
                    CONV / 2,
                    CONV / 2,
                    CONV / 2,
                    CONV / 2,
                ))
                .init(device)
        };
        Ok(SegVit {
            patch: linear(c.window * c.window, c.dim),
            convs: (0..c.depth).map(|_| conv()).collect(),
            blocks,
            norm: LayerNormConfig::new(c.dim).init(device),
            head: linear(c.dim, c.patch * c.patch * CLASSES),
            config: *c,
        })
    }

    pub fn config(&self) -> &SegConfig {
        &self.config
    }

    /// The same weights attending another way: attention has no parameters here (`Mean`
    /// downsampling), so FMA, its window and exact attention can run one trained model, as
    /// the benchmark and the page's comparison do.
    pub fn with_attention(mut self, attention: SegAttention) -> Result<SegVit> {
        let config = SegConfig {
            attention,
            ..self.config
        };
        config.validate()?;
        self.config = config;
        Ok(self)
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.head.weight.val().device()
    }

    /// The linear layers' matrices: the parameters weight decay applies to.
    pub fn decayed_params(&self) -> Vec<ParamId> {
        let mut ids = vec![self.patch.weight.id, self.head.weight.id];
        ids.extend(self.blocks.iter().flat_map(Block::matrices));
        ids.extend(self.convs.iter().map(|c| c.weight.id));
        ids
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
        for (conv, block) in self.convs.iter().zip(&self.blocks) {
            let grid = x
                .clone()
                .reshape([batch, gh, gw, c.dim])
                .permute([0, 3, 1, 2]);
            let mixed = conv
                .forward(grid)
                .permute([0, 2, 3, 1])
                .reshape([batch, gh * gw, c.dim]);
            x = block.forward(x + mixed, &|q, k, v| {
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

/// Mask colours (RGB) of the classes 0-9, then the background's: ten hues far apart, and black.
pub const PALETTE: [[u8; 3]; CLASSES] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 0, 0],
];

/// The model's input from a grey picture (`width x height`, row-major, 0-255), either
/// polarity: ink becomes bright on dark (0 to 1), as on the training canvases. The background
/// is the majority of the pixels, so a picture whose median is light is dark ink on paper.
pub fn ink_from_grey(grey: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::BadTensor {
            what: "picture".into(),
            expected: format!("1 to {MAX_SIDE} pixels a side"),
            got: format!("{width} x {height}"),
        });
    }
    if grey.len() != width * height {
        return Err(Error::BadTensor {
            what: "grey pixels".into(),
            expected: format!("{width} x {height} = {} values", width * height),
            got: grey.len().to_string(),
        });
    }
    let mut sorted = grey.to_vec();
    let mid = sorted.len() / 2;
    let median = *sorted.select_nth_unstable(mid).1;
    let light_paper = median >= 128;
    Ok(grey
        .iter()
        .map(|&g| f32::from(if light_paper { 255 - g } else { g }) / 255.0)
        .collect())
}

impl SegVit {
    /// Each pixel's class for a picture of any size up to `MAX_SIDE` a side (`ink_from_grey`'s
    /// output): padded with background to a multiple of the patch, cropped back after.
    /// Blocks until the device is done: native code only (the web uses `segment_async`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn segment(&self, ink: &[f32], width: usize, height: usize) -> Result<Vec<u8>> {
        let (images, pw) = self.padded(ink, width, height)?;
        Ok(crop(&predict(self, images)?, pw, width, height))
    }

    /// `segment` without blocking.
    pub async fn segment_async(&self, ink: &[f32], width: usize, height: usize) -> Result<Vec<u8>> {
        let (images, pw) = self.padded(ink, width, height)?;
        let classes = self.forward(images)?.argmax(3);
        let data = classes
            .into_data_async()
            .await
            .map_err(|e| Error::BadTensor {
                what: "predicted classes".into(),
                expected: "values read back from the device".into(),
                got: format!("{e:?}"),
            })?;
        Ok(crop(&labels_of(data)?, pw, width, height))
    }

    /// `ink` as a `[1, height, width]` image padded with zeros (background) on the right and
    /// bottom to multiples of the patch, and the padded width.
    fn padded(&self, ink: &[f32], width: usize, height: usize) -> Result<(Tensor<3>, usize)> {
        if ink.len() != width * height || width == 0 || height == 0 {
            return Err(Error::BadTensor {
                what: "picture".into(),
                expected: format!("{width} x {height} values, at least one"),
                got: ink.len().to_string(),
            });
        }
        let patch = self.config.patch;
        let (pw, ph) = (
            width.next_multiple_of(patch),
            height.next_multiple_of(patch),
        );
        let mut padded = vec![0.0; pw * ph];
        for (row, src) in padded.chunks_exact_mut(pw).zip(ink.chunks_exact(width)) {
            row[..width].copy_from_slice(src);
        }
        let images = Tensor::<3>::from_data(TensorData::new(padded, [1, ph, pw]), &self.device());
        Ok((images, pw))
    }
}

/// The top-left `width x height` of labels `padded_width` wide.
fn crop(labels: &[u8], padded_width: usize, width: usize, height: usize) -> Vec<u8> {
    labels
        .chunks_exact(padded_width)
        .take(height)
        .flat_map(|row| row[..width].iter().copied())
        .collect()
}

/// Each pixel's class (0-9 a digit, `BACKGROUND`), row-major per image: the largest logit,
/// chosen on the device so that only the labels come back.
pub fn predict(model: &SegVit, images: Tensor<3>) -> Result<Vec<u8>> {
    let classes = model.forward(images)?.argmax(3);
    labels_of(classes.into_data())
}

fn labels_of(data: TensorData) -> Result<Vec<u8>> {
    data.iter::<i64>()
        .map(|c| {
            u8::try_from(c)
                .ok()
                .filter(|&c| usize::from(c) < CLASSES)
                .ok_or_else(|| Error::BadTensor {
                    what: "predicted classes".into(),
                    expected: format!("values below {CLASSES}"),
                    got: c.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_classes_are_errors() {
        let data = TensorData::new(vec![0i64, 10, 11], [3]);
        assert!(labels_of(data).is_err());
        let data = TensorData::new(vec![0i64, 10, 4], [3]);
        assert_eq!(labels_of(data).unwrap(), vec![0, 10, 4]);
    }
}
