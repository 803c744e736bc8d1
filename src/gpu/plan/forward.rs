//! The forward pass of a plan: downsampling, then the near and far fields (or the O(n)
//! variant's far field and merge) per chunk of heads, recorded into the caller's encoder or run
//! on host tensors.

use super::FmaPlan;
use crate::error::Result;
use crate::gpu::kernels::attention::AttentionBindings;
use crate::gpu::kernels::downsample::DownsampleBindings;
use crate::gpu::kernels::linear::LinearBindings;
use crate::gpu::runtime::chunks::Chunk;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::io::AttentionIo;
use crate::gpu::runtime::timing::{GpuTimer, begin_pass};
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
        self.encode_downsample(ctx, encoder, chunk, [io.q, io.k, io.v], timer, &mut slot)?;
        let b = AttentionBindings {
            params: &chunk.params,
            geom: &self.geom,
            q: io.q,
            k: io.k,
            v: io.v,
            coarse: self.coarse.as_ref(),
            o: io.o,
            lse: io.lse,
        };
        let workgroups = (self.query_tiles * chunk.heads) as u64;
        let mut pass = begin_pass(encoder, "fma near field", timer, &mut slot);
        self.attention.encode_near(ctx, &mut pass, &b, workgroups)?;
        drop(pass);
        if let (Some((linear, down)), Some(coarse)) = (&self.linear, &self.coarse) {
            let b = LinearBindings {
                params: &chunk.params,
                geom: &self.geom,
                coarse,
                down,
                o: io.o,
                lse: io.lse,
            };
            let mut pass = begin_pass(encoder, "fma linear far field", timer, &mut slot);
            linear.encode_far(ctx, &mut pass, &b, chunk.heads as u64)?;
            drop(pass);
            let mut pass = begin_pass(encoder, "fma linear merge", timer, &mut slot);
            let queries = (chunk.heads * self.shape.n) as u64;
            linear.encode_merge(ctx, &mut pass, &b, queries)?;
        } else if self.coarse.is_some() {
            let mut pass = begin_pass(encoder, "fma far field", timer, &mut slot);
            self.attention.encode_far(ctx, &mut pass, &b, workgroups)?;
        }
        Ok(())
    }

    /// The coarse keys and values of one chunk (and queries, in the O(n) variant; its own
    /// pass, timed in `slot`), if there are coarse levels.
    pub(super) fn encode_downsample(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        chunk: &Chunk,
        [q, k, v]: [&wgpu::Buffer; 3],
        timer: Option<&GpuTimer>,
        slot: &mut u32,
    ) -> Result<()> {
        let (Some(ds), Some(coarse)) = (&self.downsample, &self.coarse) else {
            return Ok(());
        };
        let b = DownsampleBindings {
            params: &chunk.params,
            geom: &self.geom,
            q,
            k,
            v,
            weights: self.weights.as_ref(),
            coarse,
        };
        let mut pass = begin_pass(encoder, "fma downsample", timer, slot);
        ds.encode(ctx, &mut pass, &b, chunk.heads as u64, self.shape.d as u64)
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
