//! The FMA vision transformer on the GPU: the layers of shaders/layers.wgsl around one FMA
//! plan per block. Every layer dispatch (its uniform and bind group) is prepared in `new`; a
//! forward writes the images, records the prepared work into one command buffer and reads
//! back the logits.

use crate::config::Shape;
use crate::error::{FmaError, Result};
use crate::gpu::AttentionIo;
use crate::gpu::FmaPlan;
use crate::gpu::GpuContext;
use crate::gpu::kernels::layers::{
    HeadDims, LayerDispatch, LayerKernels, LinearDims, PatchDims, RowDims, TokenDims,
};
use crate::gpu::runtime::host::{readback, storage};
use crate::model::config::ParamIndex;
use crate::model::{VitConfig, VitWeights};

/// A model on the GPU for batches of up to `batch` images.
pub struct VitGpu {
    config: VitConfig,
    batch: usize,
    /// The weights, bound by `steps`.
    _params: Vec<wgpu::Buffer>,
    plans: Vec<FmaPlan>,
    act: Activations,
    /// The forward's layer dispatches and attention, prepared once.
    steps: Vec<Step>,
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
        // In error scopes, so that a device shared through `from_device` reports the model's
        // errors (out of memory, most likely) here rather than to its owner's handler.
        let model = ctx.scoped(|| Self::build(ctx, weights, batch))?;
        ctx.take_error()?;
        Ok(model)
    }

    fn build(ctx: &GpuContext, weights: &VitWeights, batch: usize) -> Result<VitGpu> {
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
        let params: Vec<wgpu::Buffer> = weights
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
        let index = config.index()?;
        let steps = prepare_steps(ctx, &config, &index, &params, &act, batch)?;
        Ok(VitGpu {
            read: readback(ctx, f(batch * config.classes)),
            config,
            batch,
            _params: params,
            plans,
            act,
            steps,
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
            ctx.scoped(|| -> Result<()> {
                ctx.queue
                    .write_buffer(&self.act.images, 0, bytemuck::cast_slice(&padded));
                let mut encoder =
                    ctx.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("vit forward"),
                        });
                self.encode(ctx, &mut encoder)?;
                let bytes = (count * self.config.classes * 4) as u64;
                encoder.copy_buffer_to_buffer(&self.act.logits, 0, &self.read, 0, bytes);
                ctx.queue.submit([encoder.finish()]);
                Ok(())
            })?;
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
        crate::gpu::runtime::block_on(self.logits(ctx, images))
    }

    /// Records the forward of one full batch from `images` to `logits`: each run of layer
    /// kernels in one compute pass, each block's attention as its plan records it.
    fn encode(&self, ctx: &GpuContext, enc: &mut wgpu::CommandEncoder) -> Result<()> {
        let a = &self.act;
        let io = AttentionIo {
            q: &a.q,
            k: &a.k,
            v: &a.v,
            o: &a.o,
            lse: &a.lse,
        };
        for step in &self.steps {
            match step {
                Step::Layers(dispatches) => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("vit layers"),
                        timestamp_writes: None,
                    });
                    for d in dispatches {
                        d.record(&mut pass);
                    }
                }
                Step::Attention(block) => {
                    let plan = self.plans.get(*block).ok_or_else(|| {
                        FmaError::Model(format!("no attention plan for block {block}"))
                    })?;
                    plan.encode(ctx, enc, &io)?;
                }
            }
        }
        Ok(())
    }
}

/// The forward of one batch as prepared work: runs of layer dispatches (one compute pass each)
/// between the blocks' attention.
enum Step {
    Layers(Vec<LayerDispatch>),
    Attention(usize),
}

/// Prepares every layer dispatch of the forward (uniforms and bind groups made here, once).
fn prepare_steps(
    ctx: &GpuContext,
    config: &VitConfig,
    index: &ParamIndex,
    params: &[wgpu::Buffer],
    a: &Activations,
    batch: usize,
) -> Result<Vec<Step>> {
    let l = LayerKernels::new(ctx)?;
    let (t, d) = (config.tokens(), config.dim);
    let rows = batch * t;
    let p = |i: usize| {
        params
            .get(i)
            .ok_or_else(|| FmaError::Model(format!("weights have no tensor {i}")))
    };
    let linear = |inp, out| LinearDims { rows, inp, out };
    let norm = RowDims { rows, dim: d };
    let heads = HeadDims {
        count: batch,
        tokens: t,
        heads: config.heads,
        hd: config.head_dim(),
    };
    let tokens = TokenDims {
        count: batch,
        tokens: t,
        dim: d,
    };
    let mut steps = Vec::new();
    let mut run = vec![
        l.patches(
            ctx,
            &a.images,
            &a.patches,
            PatchDims {
                count: batch,
                side: config.canvas,
                stride: config.patch,
                window: config.window,
            },
        )?,
        l.linear(
            ctx,
            [&a.patches, p(index.patch[0])?, p(index.patch[1])?],
            &a.x,
            linear(config.patch_pixels(), d),
        )?,
        l.add_position(ctx, &a.x, p(index.pos)?, tokens)?,
    ];
    for (bi, blk) in index.blocks.iter().enumerate() {
        run.extend([
            l.layer_norm(
                ctx,
                [&a.x, p(blk.ln1[0])?, p(blk.ln1[1])?],
                [&a.a, &a.stats],
                norm,
            )?,
            l.linear(
                ctx,
                [&a.a, p(blk.qkv[0])?, p(blk.qkv[1])?],
                &a.qkv,
                linear(d, 3 * d),
            )?,
            l.split_heads(ctx, &a.qkv, [&a.q, &a.k, &a.v], heads)?,
        ]);
        steps.push(Step::Layers(std::mem::take(&mut run)));
        steps.push(Step::Attention(bi));
        run.extend([
            l.merge_heads(ctx, &a.o, &a.merged, heads)?,
            l.linear(
                ctx,
                [&a.merged, p(blk.proj[0])?, p(blk.proj[1])?],
                &a.y,
                linear(d, d),
            )?,
            l.add_into(ctx, &a.x, &a.y, rows * d)?,
            l.layer_norm(
                ctx,
                [&a.x, p(blk.ln2[0])?, p(blk.ln2[1])?],
                [&a.a, &a.stats],
                norm,
            )?,
            l.linear(
                ctx,
                [&a.a, p(blk.fc1[0])?, p(blk.fc1[1])?],
                &a.hidden,
                linear(d, config.mlp),
            )?,
            l.gelu(ctx, &a.hidden, &a.hidden_act, rows * config.mlp)?,
            l.linear(
                ctx,
                [&a.hidden_act, p(blk.fc2[0])?, p(blk.fc2[1])?],
                &a.y,
                linear(config.mlp, d),
            )?,
            l.add_into(ctx, &a.x, &a.y, rows * d)?,
        ]);
    }
    run.extend([
        l.layer_norm(
            ctx,
            [&a.x, p(index.norm[0])?, p(index.norm[1])?],
            [&a.a, &a.stats],
            norm,
        )?,
        l.mean_pool(ctx, &a.a, &a.pooled, tokens)?,
        l.linear(
            ctx,
            [&a.pooled, p(index.head[0])?, p(index.head[1])?],
            &a.logits,
            LinearDims {
                rows: batch,
                inp: d,
                out: config.classes,
            },
        )?,
    ]);
    steps.push(Step::Layers(run));
    Ok(steps)
}
