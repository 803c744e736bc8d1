//! Exact attention on the GPU (`dense_attention` in shaders/attention.wgsl): the baseline that
//! FMA's speed is measured against, and a correct kernel in its own right. Tiled with an
//! online softmax, so memory is O(n): no n x n buffer.

use crate::config::Shape;
use crate::error::{FmaError, Result};
use crate::gpu::kernels::attention;
use crate::gpu::runtime::chunks::{Chunk, Chunks, fits_binding};
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{Kernel, Roles, grid, word};
use crate::gpu::runtime::host::{ForwardStaging, HostSlot};
use crate::gpu::runtime::io::AttentionIo;
use crate::gpu::runtime::timing::{GpuTimer, begin_pass};
use crate::gpu::shaders::structs::Params;
use crate::gpu::shaders::{ForwardKernels, MAX_QUERY_TILE, Spec, binding as B};
use crate::reference::Output;

/// A prepared exact-attention forward pass for one shape.
pub struct DensePlan {
    shape: Shape,
    /// Heads per dispatch: all of them unless a tensor exceeds one storage binding.
    chunks: Chunks,
    kernel: Kernel,
    /// Query tiles (workgroups) per head.
    tiles: usize,
    host: HostSlot<ForwardStaging>,
}

impl DensePlan {
    /// Softmax attention over `shape` with score scale `scale` (1/sqrt(d) is usual), causal
    /// or bidirectional.
    pub fn new(ctx: &GpuContext, shape: Shape, causal: bool, scale: f32) -> Result<DensePlan> {
        // In error scopes, like `FmaPlan::new`.
        let plan = ctx.scoped(|| Self::build(ctx, shape, causal, scale))?;
        ctx.take_error()?;
        Ok(plan)
    }

    fn build(ctx: &GpuContext, shape: Shape, causal: bool, scale: f32) -> Result<DensePlan> {
        shape.validate()?;
        if !scale.is_finite() {
            return Err(FmaError::InvalidConfig(format!(
                "scale {scale} must be finite"
            )));
        }
        let spec = Spec::for_shape(shape.d, MAX_QUERY_TILE as usize)
            .ok_or(FmaError::UnsupportedHeadDim(shape.d))?
            .with_forward(ctx.forward_kernels(), shape.d);
        let limits = ctx.limits();
        let head_bytes = (shape.n as u64).saturating_mul(shape.d as u64 * 4);
        fits_binding(
            ctx,
            "one head of Q, K, V or O",
            head_bytes,
            "shorten the input",
        )?;
        let chunk_heads = Chunks::heads_per_chunk(ctx, shape, head_bytes);
        let tiles = shape.n.div_ceil(spec.query_tile as usize);
        grid(
            (tiles * chunk_heads) as u64,
            limits.max_compute_workgroups_per_dimension,
        )?;
        let base = Params {
            n: word("n", shape.n)?,
            d: word("d", shape.d)?,
            causal: causal as u32,
            scale,
            ..Default::default()
        };
        let chunks = Chunks::new(ctx, "dense params", shape, chunk_heads, base);
        let entry = match spec.forward {
            ForwardKernels::Direct => &attention::DENSE_DIRECT,
            ForwardKernels::Tiled => &attention::DENSE_TILED,
        };
        let kernel = Kernel::new(ctx, entry, spec)?;
        ctx.take_error()?;
        Ok(DensePlan {
            shape,
            chunks,
            kernel,
            tiles,
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
        let chunk = self.chunks.single("DensePlan::forward")?;
        io.check(self.shape, crate::config::Precision::F32)?;
        self.encode_chunk(ctx, encoder, chunk, io, timer)
    }

    fn encode_chunk(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        chunk: &Chunk,
        io: &AttentionIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        let roles = Roles::new()
            .with(&[B::PARAMS], &chunk.params)
            .with(&[B::O], io.o)
            .with(&[B::LSE], io.lse);
        let roles = attention::tensor_roles(roles, [io.q, io.k, io.v], None);
        let mut pass = begin_pass(encoder, "dense attention", timer, &mut 0);
        let workgroups = (self.tiles * chunk.heads) as u64;
        self.kernel.dispatch(ctx, &mut pass, &roles, workgroups)
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
            .forward(ctx, &self.chunks, [q, k, v], |chunk, encoder, io| {
                self.encode_chunk(ctx, encoder, chunk, io, None)
            })
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
        crate::gpu::runtime::block_on(self.forward(ctx, q, k, v))
    }
}
