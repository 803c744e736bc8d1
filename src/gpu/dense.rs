//! Exact attention on the GPU (`dense_attention` in shaders/attention.wgsl): the baseline that
//! FMA's speed is measured against, and a correct kernel in its own right. Tiled with an
//! online softmax, so memory is O(n): no n x n buffer.

use super::context::GpuContext;
use super::downsample::entry;
use super::host::HostSlot;
use super::params::{Params, dispatch, grid};
use super::plan::{AttentionIo, begin_pass};
use super::shaders::{Family, MAX_QUERY_TILE, Spec};
use super::timing::GpuTimer;
use crate::config::Shape;
use crate::error::{FmaError, Result};
use crate::reference::Output;

/// A prepared exact-attention forward pass for one shape.
pub struct DensePlan {
    shape: Shape,
    /// Heads per dispatch (all of them unless a tensor exceeds one storage binding), and each
    /// chunk's head count and uniform.
    chunk_heads: usize,
    chunks: Vec<(usize, wgpu::Buffer)>,
    pipeline: wgpu::ComputePipeline,
    host: HostSlot,
}

impl DensePlan {
    /// Softmax attention over `shape` with score scale `scale` (1/sqrt(d) is usual), causal
    /// or bidirectional.
    pub fn new(ctx: &GpuContext, shape: Shape, causal: bool, scale: f32) -> Result<DensePlan> {
        shape.validate()?;
        if !scale.is_finite() {
            return Err(FmaError::InvalidConfig(format!(
                "scale {scale} must be finite"
            )));
        }
        let spec = Spec::for_shape(shape.d, MAX_QUERY_TILE as usize)
            .ok_or(FmaError::UnsupportedHeadDim(shape.d))?;
        let limits = ctx.limits();
        let max_binding = ctx.max_binding();
        let head_bytes = (shape.n * shape.d * 4) as u64;
        if head_bytes > max_binding {
            return Err(FmaError::LimitExceeded {
                what: "one head of Q, K, V or O".into(),
                needed: head_bytes,
                limit: max_binding,
                hint: "shorten the input".into(),
            });
        }
        let chunk_heads = ((max_binding / head_bytes) as usize).clamp(1, shape.bh());
        let tiles = shape.n.div_ceil(spec.query_tile as usize);
        grid(
            (tiles * chunk_heads) as u64,
            limits.max_compute_workgroups_per_dimension,
        )?;
        let chunks = (0..shape.bh())
            .step_by(chunk_heads)
            .map(|first| {
                let heads = chunk_heads.min(shape.bh() - first);
                let params = Params {
                    n: shape.n as u32,
                    d: shape.d as u32,
                    bh: heads as u32,
                    causal: causal as u32,
                    scale,
                    ..Default::default()
                };
                let buf = ctx.buffer_with(
                    "dense params",
                    bytemuck::bytes_of(&params),
                    wgpu::BufferUsages::UNIFORM,
                );
                (heads, buf)
            })
            .collect();
        let pipeline = ctx.pipeline(Family::Attention, "dense_attention", spec)?;
        ctx.take_error()?;
        Ok(DensePlan {
            shape,
            chunk_heads,
            chunks,
            pipeline,
            host: HostSlot::default(),
        })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Records exact attention over GPU-resident tensors into `encoder`; `timer`, if given,
    /// times the pass in its slot 0. The tensors must each fit one storage binding.
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &AttentionIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        let [(_, params)] = self.chunks.as_slice() else {
            return Err(FmaError::LimitExceeded {
                what: "Q, K, V or O in one storage binding".into(),
                needed: (self.shape.elements() * 4) as u64,
                limit: (self.chunk_heads * self.shape.n * self.shape.d * 4) as u64,
                hint: "use DensePlan::forward, which splits batch x heads".into(),
            });
        };
        io.check(self.shape)?;
        self.encode_chunk(ctx, encoder, params, self.shape.bh(), io, timer)
    }

    fn encode_chunk(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        params: &wgpu::Buffer,
        heads: usize,
        io: &AttentionIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("dense_attention"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[
                entry(0, params.as_entire_binding()),
                entry(2, io.q.as_entire_binding()),
                entry(3, io.k.as_entire_binding()),
                entry(4, io.v.as_entire_binding()),
                entry(6, io.o.as_entire_binding()),
                entry(7, io.lse.as_entire_binding()),
            ],
        });
        let tiles = self.shape.n.div_ceil(MAX_QUERY_TILE as usize);
        let mut pass = begin_pass(encoder, "dense attention", timer, &mut 0);
        dispatch(
            ctx,
            &mut pass,
            &self.pipeline,
            &group,
            (tiles * heads) as u64,
        )
    }

    /// Exact attention on host tensors ([batch, heads, n, d], f32): O and LSE.
    pub async fn forward(
        &self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        self.host
            .forward(
                ctx,
                self.shape,
                self.chunk_heads,
                [q, k, v],
                |i, encoder, io| {
                    let (heads, params) = &self.chunks[i];
                    self.encode_chunk(ctx, encoder, params, *heads, io, None)
                },
            )
            .await
    }

    /// Blocking `forward` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        pollster::block_on(self.forward(ctx, q, k, v))
    }
}
