//! The forward pass of a plan: downsampling, then the near and far fields (or the O(n)
//! variant's far field and merge) per chunk of heads, recorded into the caller's encoder or run
//! on host tensors.

use super::FmaPlan;
use crate::error::Result;
use crate::gpu::kernels::attention;
use crate::gpu::runtime::chunks::Chunk;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::Roles;
use crate::gpu::runtime::io::AttentionIo;
use crate::gpu::runtime::timing::{GpuTimer, begin_pass};
use crate::gpu::shaders::binding as B;
use crate::reference::Output;

impl FmaPlan {
    /// Records the forward pass over GPU-resident tensors into `encoder` (nothing is submitted).
    /// The tensors must each fit one storage binding; `forward` splits larger inputs.
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &AttentionIo<'_>,
    ) -> Result<()> {
        self.encode_checked(ctx, encoder, io, None)
    }

    pub(super) fn encode_checked(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &AttentionIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        let chunk = self.chunks.single("FmaPlan::forward")?;
        io.check(self.shape, self.config.precision)?;
        self.encode_chunk(ctx, encoder, chunk, io, timer)
    }

    /// `encode` with each stage (downsampling, near field, far field) in its own compute pass
    /// timed by `timer`; returns the names of the stages in the timer's slot order.
    pub fn encode_timed(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &AttentionIo<'_>,
        timer: &GpuTimer,
    ) -> Result<Vec<&'static str>> {
        let stages = self.stage_names();
        timer.check_slots(stages.len(), "this plan")?;
        self.encode_checked(ctx, encoder, io, Some(timer))?;
        Ok(stages)
    }

    /// The stages one forward records, in order (the O(n) variant: `linear_far`, the
    /// per-segment far field and downward pass, and `linear_merge` instead of `far_field`).
    pub fn stage_names(&self) -> Vec<&'static str> {
        let far = self.downsample.is_some();
        let linear = self.linear.is_some();
        [
            far.then_some("downsample"),
            Some("near_field"),
            (far && !linear).then_some("far_field"),
            linear.then_some("linear_far"),
            linear.then_some("linear_merge"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub(super) fn encode_chunk(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        chunk: &Chunk,
        io: &AttentionIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        // One pass per stage: timestamps need pass boundaries, and each stage reads what the
        // previous one wrote, so the passes cost nothing the dispatches did not already.
        let mut slot = 0;
        let roles = self
            .roles(chunk, [io.q, io.k, io.v])
            .with(&[B::O], io.o)
            .with(&[B::LSE], io.lse);
        self.encode_downsample(ctx, encoder, &roles, chunk.heads, timer, &mut slot)?;
        let workgroups = (self.query_tiles * chunk.heads) as u64;
        let mut pass = begin_pass(encoder, "fma near field", timer, &mut slot);
        self.attention
            .encode_near(ctx, &mut pass, &roles, workgroups)?;
        drop(pass);
        if let Some((linear, _)) = &self.linear {
            let mut pass = begin_pass(encoder, "fma linear far field", timer, &mut slot);
            linear.encode_far(ctx, &mut pass, &roles, chunk.heads as u64)?;
            drop(pass);
            let mut pass = begin_pass(encoder, "fma linear merge", timer, &mut slot);
            let queries = (chunk.heads * self.shape.n) as u64;
            linear.encode_merge(ctx, &mut pass, &roles, queries)?;
        } else if self.coarse.is_some() {
            let mut pass = begin_pass(encoder, "fma far field", timer, &mut slot);
            self.attention
                .encode_far(ctx, &mut pass, &roles, workgroups)?;
        }
        Ok(())
    }

    /// The buffers every stage of one chunk shares, forward and backward: the uniform, the
    /// tables, q, k, v, the coarse rows, the weights and the O(n) variant's downward results.
    pub(super) fn roles<'a>(&'a self, chunk: &'a Chunk, qkv: [&'a wgpu::Buffer; 3]) -> Roles<'a> {
        let roles = Roles::new()
            .with(&[B::PARAMS], &chunk.params)
            .with(&[B::GEOM], &self.geom)
            .with_some(&[B::WEIGHTS], self.weights.as_ref())
            .with_some(&[B::DOWN], self.linear.as_ref().map(|(_, down)| down));
        attention::tensor_roles(roles, qkv, self.coarse.as_ref())
    }

    /// The coarse keys and values of one chunk (and queries, in the O(n) variant; its own
    /// pass, timed in `slot`), if there are coarse levels.
    pub(super) fn encode_downsample(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        roles: &Roles<'_>,
        heads: usize,
        timer: Option<&GpuTimer>,
        slot: &mut u32,
    ) -> Result<()> {
        let Some(ds) = &self.downsample else {
            return Ok(());
        };
        let mut pass = begin_pass(encoder, "fma downsample", timer, slot);
        ds.encode(ctx, &mut pass, roles, heads as u64, self.shape.d as u64)
    }

    /// Runs FMA on host tensors ([batch, heads, n, d], f32) and returns O and LSE.
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
