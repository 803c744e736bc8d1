//! The FMA vision transformer on the GPU: the layers of shaders/layers.wgsl around one FMA
//! plan per block, encoded into one command buffer per batch of images.

use super::context::GpuContext;
use super::host::{readback, storage};
use super::layers::LayerKernels;
use super::plan::{AttentionIo, FmaPlan};
use crate::config::Shape;
use crate::error::{FmaError, Result};
use crate::model::config::ParamIndex;
use crate::model::{VitConfig, VitWeights};

/// A model on the GPU for batches of up to `batch` images.
pub struct VitGpu {
    config: VitConfig,
    index: ParamIndex,
    batch: usize,
    layers: LayerKernels,
    params: Vec<wgpu::Buffer>,
    plans: Vec<FmaPlan>,
    act: Activations,
    /// Staging for the logits.
    read: wgpu::Buffer,
}

/// The intermediate tensors of one batch.
struct Activations {
    images: wgpu::Buffer,
    patches: wgpu::Buffer,
    x: wgpu::Buffer,
    a: wgpu::Buffer,
    stats: wgpu::Buffer,
    qkv: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
    merged: wgpu::Buffer,
    y: wgpu::Buffer,
    hidden: wgpu::Buffer,
    hidden_act: wgpu::Buffer,
    pooled: wgpu::Buffer,
    logits: wgpu::Buffer,
}

impl VitGpu {
    /// Uploads `weights` and prepares every kernel for batches of up to `batch` images.
    pub fn new(ctx: &GpuContext, weights: &VitWeights, batch: usize) -> Result<VitGpu> {
        let config = weights.config.clone();
        let infos = config.params()?;
        if weights.params.tensors.len() != infos.len()
            || weights
                .params
                .tensors
                .iter()
                .zip(&infos)
                .any(|(t, p)| t.len() != p.len())
        {
            return Err(FmaError::Model(
                "weights do not match their own sizes".into(),
            ));
        }
        if batch == 0 {
            return Err(FmaError::Model("batch must be at least 1".into()));
        }
        let params = weights
            .params
            .tensors
            .iter()
            .zip(&infos)
            .map(|(t, p)| {
                ctx.buffer_with(
                    &p.name,
                    bytemuck::cast_slice(t),
                    wgpu::BufferUsages::STORAGE,
                )
            })
            .collect();
        let (t, d, hd) = (config.tokens(), config.dim, config.head_dim());
        let shape = Shape::new(batch, config.heads, t, hd);
        let attention = config.attention();
        let plans = (0..config.depth)
            .map(|b| {
                let w = weights.downsample_weights(b)?;
                let w = config.downsampling.is_learned().then_some(&w);
                FmaPlan::new(ctx, shape, &attention, w)
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = batch * t;
        let f = |n: usize| (n * 4) as u64;
        let buf = |label: &str, n: usize| storage(ctx, label, f(n), false);
        let act = Activations {
            images: storage(
                ctx,
                "vit images",
                f(batch * config.canvas * config.canvas),
                true,
            ),
            patches: buf("vit patches", rows * config.patch_pixels()),
            x: buf("vit x", rows * d),
            a: buf("vit normed", rows * d),
            stats: buf("vit norm stats", rows * 2),
            qkv: buf("vit qkv", rows * 3 * d),
            q: buf("vit q", rows * d),
            k: buf("vit k", rows * d),
            v: buf("vit v", rows * d),
            o: buf("vit o", rows * d),
            lse: buf("vit lse", rows * config.heads),
            merged: buf("vit merged", rows * d),
            y: buf("vit y", rows * d),
            hidden: buf("vit hidden", rows * config.mlp),
            hidden_act: buf("vit hidden gelu", rows * config.mlp),
            pooled: buf("vit pooled", batch * d),
            logits: buf("vit logits", batch * config.classes),
        };
        Ok(VitGpu {
            index: config.index()?,
            read: readback(ctx, f(batch * config.classes)),
            config,
            batch,
            layers: LayerKernels::new(ctx)?,
            params,
            plans,
            act,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Logits `[images, classes]` of `images` (`[images, canvas, canvas]`, values in [0, 1]),
    /// in batches of the model's batch size.
    pub async fn logits(&self, ctx: &GpuContext, images: &[f32]) -> Result<Vec<f32>> {
        let px = self.config.canvas * self.config.canvas;
        if images.is_empty() || !images.len().is_multiple_of(px) {
            return Err(FmaError::BadShape {
                what: "images".into(),
                expected: format!(
                    "a positive multiple of {0} x {0} values",
                    self.config.canvas
                ),
                got: format!("{} values", images.len()),
            });
        }
        let mut out = Vec::with_capacity(images.len() / px * self.config.classes);
        for chunk in images.chunks(self.batch * px) {
            let count = chunk.len() / px;
            let mut padded = chunk.to_vec();
            // The plans are built for whole batches; the padding images are ignored.
            padded.resize(self.batch * px, 0.0);
            ctx.queue
                .write_buffer(&self.act.images, 0, bytemuck::cast_slice(&padded));
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("vit forward"),
                });
            self.encode(ctx, &mut encoder)?;
            let bytes = (count * self.config.classes * 4) as u64;
            encoder.copy_buffer_to_buffer(&self.act.logits, 0, &self.read, 0, bytes);
            ctx.queue.submit([encoder.finish()]);
            ctx.take_error()?;
            out.extend(
                ctx.read_f32(&self.read, count * self.config.classes)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Blocking `logits` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn logits_blocking(&self, ctx: &GpuContext, images: &[f32]) -> Result<Vec<f32>> {
        pollster::block_on(self.logits(ctx, images))
    }

    /// Records the forward of one full batch from `images` to `logits`.
    fn encode(&self, ctx: &GpuContext, enc: &mut wgpu::CommandEncoder) -> Result<()> {
        let cfg = &self.config;
        let (b, t, d, h, hd) = (self.batch, cfg.tokens(), cfg.dim, cfg.heads, cfg.head_dim());
        let rows = b * t;
        let (a, p, ix, l) = (&self.act, &self.params, &self.index, &self.layers);
        l.patches(
            ctx, enc, &a.images, &a.patches, b, cfg.canvas, cfg.patch, cfg.window,
        )?;
        l.linear(
            ctx,
            enc,
            &a.patches,
            &p[ix.patch[0]],
            &p[ix.patch[1]],
            &a.x,
            rows,
            cfg.patch_pixels(),
            d,
        )?;
        l.add_position(ctx, enc, &a.x, &p[ix.pos], b, t, d)?;
        for (bi, blk) in ix.blocks.iter().enumerate() {
            l.layer_norm(
                ctx,
                enc,
                &a.x,
                &p[blk.ln1[0]],
                &p[blk.ln1[1]],
                &a.a,
                &a.stats,
                rows,
                d,
            )?;
            l.linear(
                ctx,
                enc,
                &a.a,
                &p[blk.qkv[0]],
                &p[blk.qkv[1]],
                &a.qkv,
                rows,
                d,
                3 * d,
            )?;
            l.split_heads(ctx, enc, &a.qkv, [&a.q, &a.k, &a.v], b, t, h, hd)?;
            self.plans[bi].encode(
                ctx,
                enc,
                &AttentionIo {
                    q: &a.q,
                    k: &a.k,
                    v: &a.v,
                    o: &a.o,
                    lse: &a.lse,
                },
            )?;
            l.merge_heads(ctx, enc, &a.o, &a.merged, b, t, h, hd)?;
            l.linear(
                ctx,
                enc,
                &a.merged,
                &p[blk.proj[0]],
                &p[blk.proj[1]],
                &a.y,
                rows,
                d,
                d,
            )?;
            l.add_into(ctx, enc, &a.x, &a.y, rows * d)?;
            l.layer_norm(
                ctx,
                enc,
                &a.x,
                &p[blk.ln2[0]],
                &p[blk.ln2[1]],
                &a.a,
                &a.stats,
                rows,
                d,
            )?;
            l.linear(
                ctx,
                enc,
                &a.a,
                &p[blk.fc1[0]],
                &p[blk.fc1[1]],
                &a.hidden,
                rows,
                d,
                cfg.mlp,
            )?;
            l.gelu(ctx, enc, &a.hidden, &a.hidden_act, rows * cfg.mlp)?;
            l.linear(
                ctx,
                enc,
                &a.hidden_act,
                &p[blk.fc2[0]],
                &p[blk.fc2[1]],
                &a.y,
                rows,
                cfg.mlp,
                d,
            )?;
            l.add_into(ctx, enc, &a.x, &a.y, rows * d)?;
        }
        l.layer_norm(
            ctx,
            enc,
            &a.x,
            &p[ix.norm[0]],
            &p[ix.norm[1]],
            &a.a,
            &a.stats,
            rows,
            d,
        )?;
        l.mean_pool(ctx, enc, &a.a, &a.pooled, b, t, d)?;
        l.linear(
            ctx,
            enc,
            &a.pooled,
            &p[ix.head[0]],
            &p[ix.head[1]],
            &a.logits,
            b,
            d,
            cfg.classes,
        )
    }
}
