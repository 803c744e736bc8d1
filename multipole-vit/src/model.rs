//! The model: a convolutional stem as one linear layer over overlapping pixel windows, a
//! learned position embedding, pre-norm transformer blocks with 2D FMA attention, a final
//! norm, mean pooling and a linear head (the sizes are `VitConfig`'s).

use burn::module::{Module, Param, ParamId};
use burn::nn::{Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::{Device, Tensor, TensorData};
use multipole::DownsampleWeights;
use multipole::model::{VitConfig, VitWeights};
use multipole_burn::{Error, FmaAttention, Result};

/// One pre-norm block: `x + proj(attend(qkv(ln1 x)))`, then `x + fc2(gelu(fc1(ln2 x)))`; the
/// attention is the caller's (the classifier's `FmaAttention` with its learned weights, or the
/// segmentation model's FMA for the page at hand).
#[derive(Module, Debug)]
pub struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    /// The tanh form, which the shipped weights were trained with.
    act: Gelu,
    fc2: Linear,
    #[module(skip)]
    heads: usize,
}

/// The vision transformer: images `[batch, canvas²]` (pixels in [0, 1], the digit placed on
/// the canvas) to logits `[batch, classes]`.
#[derive(Module, Debug)]
pub struct Vit {
    patch: Linear,
    pos: Param<Tensor<2>>,
    blocks: Vec<Block>,
    /// Block b's attention.
    attention: Vec<FmaAttention>,
    norm: LayerNorm,
    head: Linear,
    #[module(skip)]
    config: VitConfig,
}

/// What a block attends with: O from q, k, v `[batch, heads, n, dim / heads]`.
pub(crate) type Attend<'a> = &'a dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Result<Tensor<4>>;

impl Block {
    /// A block of width `dim` with Burn's default initialisation.
    pub(crate) fn new(dim: usize, mlp: usize, heads: usize, device: &Device) -> Block {
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let norm = || LayerNormConfig::new(dim).init(device);
        Block {
            ln1: norm(),
            qkv: linear(dim, 3 * dim),
            proj: linear(dim, dim),
            ln2: norm(),
            fc1: linear(dim, mlp),
            act: Gelu::new_approximate(),
            fc2: linear(mlp, dim),
            heads,
        }
    }

    pub(crate) fn forward(&self, x: Tensor<3>, attend: Attend<'_>) -> Result<Tensor<3>> {
        let [batch, n, dim] = x.dims();
        let (q, k, v) = self.qkv(x.clone());
        let o = attend(q, k, v)?;
        let x = x + self
            .proj
            .forward(o.swap_dims(1, 2).reshape([batch, n, dim]));
        let h = self.fc1.forward(self.ln2.forward(x.clone()));
        Ok(x.clone() + self.fc2.forward(self.act.forward(h)))
    }
}

impl Block {
    /// The block's linear matrices (weight decay's parameters).
    pub(crate) fn matrices(&self) -> [ParamId; 4] {
        [
            self.qkv.weight.id,
            self.proj.weight.id,
            self.fc1.weight.id,
            self.fc2.weight.id,
        ]
    }

    /// The q, k, v `[batch, heads, n, dim / heads]` the block attends with, for tokens `x`.
    fn qkv(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        split_heads(self.qkv.forward(self.ln1.forward(x)), self.heads)
    }
}

/// q, k, v `[batch, heads, n, dim / heads]` from a qkv projection `[batch, n, 3 * dim]`, whose
/// columns are [q | k | v], each [head 0 | head 1 | ...].
fn split_heads(qkv: Tensor<3>, heads: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [batch, n, width] = qkv.dims();
    let qkv = qkv
        .reshape([batch, n, 3, heads, width / 3 / heads])
        .permute([2, 0, 3, 1, 4]);
    let part = |i| qkv.clone().narrow(0, i, 1).squeeze_dim::<4>(0);
    (part(0), part(1), part(2))
}

impl Vit {
    /// Logits of `images` (`[batch, canvas * canvas]`).
    pub fn forward(&self, images: Tensor<2>) -> Result<Tensor<2>> {
        let mut x = self.embed(images)?;
        for (block, attn) in self.blocks.iter().zip(&self.attention) {
            x = block.forward(x, &|q, k, v| Ok(attn.forward(q, k, v)?.0))?;
        }
        let pooled = self.norm.forward(x).mean_dim(1).squeeze_dim::<2>(1);
        Ok(self.head.forward(pooled))
    }

    /// The queries and keys `[batch, heads, tokens, head_dim]` block `block` attends with, for
    /// `images` (what the attention overlay scores; see `attention_map`).
    pub fn queries_keys(&self, images: Tensor<2>, block: usize) -> Result<(Tensor<4>, Tensor<4>)> {
        let depth = self.blocks.len();
        if block >= depth {
            return Err(Error::BadTensor {
                what: "block".into(),
                expected: format!("below {depth}"),
                got: block.to_string(),
            });
        }
        let mut x = self.embed(images)?;
        for (b, attn) in self.blocks[..block].iter().zip(&self.attention) {
            x = b.forward(x, &|q, k, v| Ok(attn.forward(q, k, v)?.0))?;
        }
        let (q, k, _) = self.blocks[block].qkv(x);
        Ok((q, k))
    }

    /// The tokens `[batch, tokens, dim]` of `images`: the stem and the position embedding.
    fn embed(&self, images: Tensor<2>) -> Result<Tensor<3>> {
        let c = &self.config;
        let [batch, pixels] = images.dims();
        if pixels != c.canvas * c.canvas {
            return Err(Error::BadTensor {
                what: "images".into(),
                expected: format!(
                    "[batch, {}] (a {} x {} canvas)",
                    c.canvas * c.canvas,
                    c.canvas,
                    c.canvas
                ),
                got: format!("[{batch}, {pixels}]"),
            });
        }
        // Each token reads a window x window block centred on its patch (zero padding at the
        // edge), flattened row by row: [batch, tokens, window²].
        let pad = (c.window - c.patch) / 2;
        let options = UnfoldOptions::new([c.patch; 2], [pad; 2], [1, 1]);
        let windows = unfold4d(
            images.reshape([batch, 1, c.canvas, c.canvas]),
            [c.window; 2],
            options,
        )
        .swap_dims(1, 2);
        Ok(self.patch.forward(windows) + self.pos.val().unsqueeze::<3>())
    }

    /// Block b's FMA attention (its learned downsampling weights, if any).
    pub fn attention(&self, block: usize) -> Option<&FmaAttention> {
        self.attention.get(block)
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.head.weight.val().device()
    }

    /// The head's first bias, read back: waits for the work queued on the model's device
    /// (timing and tests).
    pub fn first_weight_value(&self) -> f32 {
        let bias = self.head.bias.as_ref().expect("the head has a bias");
        bias.val().narrow(0, 0, 1).into_scalar::<f32>()
    }

    /// The model with trained weights (a `VitWeights` file, as shipped in `web/models/`).
    pub fn from_weights(weights: &VitWeights, device: &Device) -> Result<Vit> {
        let c = &weights.config;
        let index = c.index()?;
        let t = &weights.params.tensors;
        let linear = |[w, b]: [usize; 2], inp: usize, out: usize| {
            let mut l = LinearConfig::new(inp, out).init(device);
            l.weight = param(&t[w], [inp, out], device);
            l.bias = Some(param(&t[b], [out], device));
            l
        };
        let norm = |[g, b]: [usize; 2]| {
            let mut n = LayerNormConfig::new(c.dim).init(device);
            n.gamma = param(&t[g], [c.dim], device);
            n.beta = Some(param(&t[b], [c.dim], device));
            n
        };
        let tokens = c.tokens();
        let attention = (0..c.depth)
            .map(|b| {
                let mut attn = FmaAttention::new(&c.attention(), tokens, c.head_dim(), device)?;
                if c.downsampling.is_learned() {
                    let packed = weights.downsample_weights(b)?.packed();
                    let len = packed.len();
                    attn.weights = Some(param(&packed, [len], device));
                }
                Ok(attn)
            })
            .collect::<Result<Vec<_>>>()?;
        let blocks = index
            .blocks
            .iter()
            .map(|bi| {
                Ok(Block {
                    ln1: norm(bi.ln1),
                    qkv: linear(bi.qkv, c.dim, 3 * c.dim),
                    proj: linear(bi.proj, c.dim, c.dim),
                    ln2: norm(bi.ln2),
                    fc1: linear(bi.fc1, c.dim, c.mlp),
                    act: Gelu::new_approximate(),
                    fc2: linear(bi.fc2, c.mlp, c.dim),
                    heads: c.heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Vit {
            patch: linear(index.patch, c.patch_pixels(), c.dim),
            pos: param(&t[index.pos], [tokens, c.dim], device),
            blocks,
            attention,
            norm: norm(index.norm),
            head: linear(index.head, c.dim, c.classes),
            config: c.clone(),
        })
    }
}

impl Vit {
    /// The weights in the shipped file format (`VitWeights::save` writes them): what
    /// `classify`, the examples and the browser demo load.
    pub fn to_weights(&self) -> Result<VitWeights> {
        let c = &self.config;
        let index = c.index()?;
        let mut weights = VitWeights::init(c, 0)?;
        let t = &mut weights.params.tensors;
        let linear = |t: &mut [Vec<f32>], [w, b]: [usize; 2], l: &Linear| -> Result<()> {
            put(t, w, values(&l.weight)?)?;
            put(
                t,
                b,
                values(l.bias.as_ref().expect("every linear layer has a bias"))?,
            )
        };
        let norm = |t: &mut [Vec<f32>], [g, b]: [usize; 2], n: &LayerNorm| -> Result<()> {
            put(t, g, values(&n.gamma)?)?;
            put(
                t,
                b,
                values(n.beta.as_ref().expect("every norm has a shift"))?,
            )
        };
        linear(t, index.patch, &self.patch)?;
        put(t, index.pos, values(&self.pos)?)?;
        norm(t, index.norm, &self.norm)?;
        linear(t, index.head, &self.head)?;
        for ((bi, block), attn) in index.blocks.iter().zip(&self.blocks).zip(&self.attention) {
            norm(t, bi.ln1, &block.ln1)?;
            linear(t, bi.qkv, &block.qkv)?;
            linear(t, bi.proj, &block.proj)?;
            norm(t, bi.ln2, &block.ln2)?;
            linear(t, bi.fc1, &block.fc1)?;
            linear(t, bi.fc2, &block.fc2)?;
            let Some(packed) = &attn.weights else {
                continue;
            };
            let levels = DownsampleWeights::from_packed(
                c.downsampling,
                &c.geometry()?,
                c.head_dim(),
                c.downsample_queries,
                &values(packed)?,
            )?
            .levels;
            for (lw, slots) in levels.iter().zip(&bi.ds) {
                let parts = [&lw.wk, &lw.wv, &lw.bk, &lw.bv, &lw.wq, &lw.bq];
                for (part, slot) in parts.into_iter().zip(slots) {
                    if let Some(at) = slot {
                        put(t, *at, part.clone())?;
                    }
                }
            }
        }
        Ok(weights)
    }

    /// The parameters weight decay applies to: the linear layers' matrices (as the CPU
    /// trainer: not biases, norms, the position embedding or the downsampling weights).
    pub fn decayed_params(&self) -> Vec<ParamId> {
        let mut ids = vec![self.patch.weight.id, self.head.weight.id];
        ids.extend(self.blocks.iter().flat_map(Block::matrices));
        ids
    }
}

/// Stores parameter `at` of a weight file, which must have the length `values` has.
fn put(t: &mut [Vec<f32>], at: usize, values: Vec<f32>) -> Result<()> {
    if values.len() != t[at].len() {
        return Err(Error::BadTensor {
            what: format!("parameter {at} of the weight file"),
            expected: format!("{} values", t[at].len()),
            got: values.len().to_string(),
        });
    }
    t[at] = values;
    Ok(())
}

/// A parameter's values, read back from its device.
fn values<const D: usize>(p: &Param<Tensor<D>>) -> Result<Vec<f32>> {
    read_f32(p.val(), "a parameter")
}

/// A tensor's values read back from its device as f32 (`what` names it in the error).
/// Blocks until the device is done: native code only (the web uses `read_f32_async`).
pub(crate) fn read_f32<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    f32_values(t.into_data(), what)
}

/// `read_f32` without blocking.
pub(crate) async fn read_f32_async<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    let data = t.into_data_async().await.map_err(|e| Error::BadTensor {
        what: what.into(),
        expected: "values read back from the device".into(),
        got: format!("{e:?}"),
    })?;
    f32_values(data, what)
}

fn f32_values(data: TensorData, what: &str) -> Result<Vec<f32>> {
    data.try_to_vec::<f32>().map_err(|e| Error::BadTensor {
        what: what.into(),
        expected: "f32 values".into(),
        got: format!("{e:?}"),
    })
}

fn param<const D: usize>(values: &[f32], shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values.to_vec(), shape),
        device,
    ))
}
