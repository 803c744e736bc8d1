//! The backward pass of an `FmaPlan` (docs/fma.md §10): gradients of Q, K, V and of the learned
//! downsampling weights from dO, with O and LSE saved by the forward.
//!
//! Scores are recomputed (flash-style); the extra memory is O(n): per query (LSE, D), and the
//! gradients of the coarse rows. Every gradient element is written by one invocation that sums
//! in a fixed order (key-major passes for dK and dV, a tree reduction per weight element), so
//! two runs agree bit for bit and no atomics are needed. The kernels and their buffers are made
//! by the first backward call, so forward-only plans do not pay for them.

use crate::error::{FmaError, Result};
use crate::gpu::kernels::attention_backward::{AttentionBackwardKernel, BackwardWork};
use crate::gpu::kernels::downsample_backward::DownsampleBackwardKernel;
use crate::gpu::kernels::linear_backward::{LinearBackwardKernel, up_floats};
use crate::gpu::plan::{FmaPlan, pack_weights};

use crate::gpu::runtime::chunks::Chunk;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::host::{Extent, HostSlot, Staging, storage};
use crate::gpu::runtime::io::{BackwardIo, Tape};
use crate::gpu::runtime::timing::{GpuTimer, begin_pass};
use crate::gpu::shaders::binding as B;
use crate::reference::Gradients;
use crate::weights::DownsampleWeights;

/// The backward kernels of a plan and its scratch buffers (one chunk of heads).
pub(crate) struct Backward {
    attention: AttentionBackwardKernel,
    downsample: Option<DownsampleBackwardKernel>,
    /// (LSE, D) per query.
    stats: wgpu::Buffer,
    /// Gradients of the coarse keys and values (and queries), laid out like the coarse buffer.
    dcoarse: Option<wgpu::Buffer>,
    /// The O(n) variant's far-field backward and its per-segment aggregates.
    linear: Option<(LinearBackwardKernel, wgpu::Buffer)>,
    /// Host staging of `backward`: q, k, v, o, lse, d_o in; dq, dk, dv and dw out.
    host: HostSlot<Staging<6, 4>>,
}

impl FmaPlan {
    fn backward_parts(&self, ctx: &GpuContext) -> Result<&Backward> {
        self.require_f32_for_backward()?;
        if let Some(b) = self.backward.get() {
            return Ok(b);
        }
        let parts = ctx.scoped(|| self.build_backward(ctx))?;
        ctx.take_error()?;
        Ok(self.backward.get_or_init(|| parts))
    }

    /// The backward's kernels and buffers (in the caller's error scopes).
    fn build_backward(&self, ctx: &GpuContext) -> Result<Backward> {
        let far = self.coarse.is_some();
        let queries = self.config.downsample_queries;
        // The O(n) variant's coarse rows get their gradients from linear_backward instead.
        let attention = AttentionBackwardKernel::new(
            ctx,
            self.spec,
            self.shape.d,
            (far && !queries).then_some(self.geometry.dims),
        )?;
        let linear = if far && queries {
            let up = storage(
                ctx,
                "fma linear aggregates",
                (up_floats(&self.geometry, self.shape.d) * self.chunks.per_chunk() * 4) as u64,
                false,
            );
            Some((
                LinearBackwardKernel::new(ctx, self.spec, &self.geometry)?,
                up,
            ))
        } else {
            None
        };
        let downsample = if far {
            let kind = self.config.downsampling;
            // weight elements (wk of every level), then bias elements (bk) for depthwise
            let [wv_base, bk_base, bv_base, ..] = self.weight_bases;
            let elements = (wv_base + (bv_base - bk_base)) as usize;
            Some(DownsampleBackwardKernel::new(
                ctx, kind, self.spec, elements,
            )?)
        } else {
            None
        };
        let rows = (self.chunks.per_chunk() * self.shape.n) as u64;
        let parts = Backward {
            attention,
            downsample,
            stats: storage(ctx, "fma backward stats", rows * 8, false),
            dcoarse: self
                .coarse
                .as_ref()
                .map(|c| storage(ctx, "fma coarse gradients", c.size(), false)),
            linear,
            host: HostSlot::default(),
        };
        Ok(parts)
    }

    /// Bytes of GPU memory the backward adds to the plan's own (`extra_bytes`): (LSE, D) per
    /// query and the coarse rows' gradients (and the O(n) variant's per-segment aggregates),
    /// for one chunk of heads. O(n).
    pub fn backward_extra_bytes(&self) -> u64 {
        let stats = (self.chunks.per_chunk() * self.shape.n * 8) as u64;
        let up = if self.config.downsample_queries && self.coarse.is_some() {
            (up_floats(&self.geometry, self.shape.d) * self.chunks.per_chunk() * 4) as u64
        } else {
            0
        };
        stats + up + self.coarse.as_ref().map_or(0, |c| c.size())
    }

    /// Bytes of the weight gradients `BackwardIo::dw` must hold (0 for `Mean`).
    pub fn weight_grad_bytes(&self) -> u64 {
        if self.weights.is_some() {
            (self.weights_len * 4) as u64
        } else {
            0
        }
    }

    /// Records the backward pass over GPU-resident tensors into `encoder` (nothing is
    /// submitted). Like `encode`, the tensors must each fit one storage binding.
    pub fn encode_backward(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &BackwardIo<'_>,
    ) -> Result<()> {
        self.encode_backward_checked(ctx, encoder, io, None)
    }

    /// `encode_backward` with each stage in its own pass timed by `timer`; returns the stage
    /// names in slot order.
    pub fn encode_backward_timed(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &BackwardIo<'_>,
        timer: &GpuTimer,
    ) -> Result<Vec<&'static str>> {
        let stages = self.backward_stage_names();
        timer.check_slots(stages.len(), "this backward")?;
        self.encode_backward_checked(ctx, encoder, io, Some(timer))?;
        Ok(stages)
    }

    /// The stages one backward records, in order (the O(n) variant: `linear_far_backward`,
    /// its upward pass and the coarse rows' gradients, instead of `dkv_far`).
    pub fn backward_stage_names(&self) -> Vec<&'static str> {
        let far = self.coarse.is_some();
        let linear = far && self.config.downsample_queries;
        [
            far.then_some("downsample"),
            Some("stats"),
            Some("dq"),
            Some("dkv_near"),
            (far && !linear).then_some("dkv_far"),
            linear.then_some("linear_far_backward"),
            far.then_some("downsample_backward"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn encode_backward_checked(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &BackwardIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        let chunk = self.chunks.single("FmaPlan::backward")?;
        io.check(self.shape, self.weight_grad_bytes())?;
        let parts = self.backward_parts(ctx)?;
        self.encode_backward_chunk(ctx, encoder, parts, chunk, io, timer)
    }

    /// One chunk of heads; a chunk after the first adds its weight gradients to the previous
    /// chunks'.
    fn encode_backward_chunk(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        parts: &Backward,
        chunk: &Chunk,
        io: &BackwardIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        let mut slot = 0;
        // The coarse keys and values, recomputed rather than kept from the forward.
        let roles = self
            .roles(chunk, [io.q, io.k, io.v])
            .with(&[B::O], io.o)
            .with(&[B::LSE], io.lse)
            .with(&[B::D_O, B::D_O4], io.d_o)
            .with(&[B::STATS, B::STATS_OUT], &parts.stats)
            .with(&[B::DQ], io.dq)
            .with(&[B::DK], io.dk)
            .with(&[B::DV], io.dv)
            .with_some(&[B::DW], io.dw)
            .with_some(&[B::DCOARSE], parts.dcoarse.as_ref())
            .with_some(&[B::UP], parts.linear.as_ref().map(|(_, up)| up));
        self.encode_downsample(ctx, encoder, &roles, chunk.heads, timer, &mut slot)?;
        let work = BackwardWork {
            heads: chunk.heads as u64,
            n: self.shape.n as u64,
            query_tiles: self.query_tiles as u64,
            cells: self.geometry.total_cells() as u64,
            p: self.geometry.p as u64,
            level_cells: self
                .geometry
                .levels
                .iter()
                .map(|l| l.groups() as u64)
                .collect(),
        };
        let attention = &parts.attention;
        let mut pass = begin_pass(encoder, "fma backward stats", timer, &mut slot);
        attention.encode_stats(ctx, &mut pass, &roles, &work)?;
        drop(pass);
        let mut pass = begin_pass(encoder, "fma backward dq", timer, &mut slot);
        attention.encode_dq(ctx, &mut pass, &roles, &work)?;
        drop(pass);
        let mut pass = begin_pass(encoder, "fma backward dkv near", timer, &mut slot);
        attention.encode_dkv_near(ctx, &mut pass, &roles, &work)?;
        drop(pass);
        if let Some((linear, _)) = &parts.linear {
            let mut pass = begin_pass(encoder, "fma backward linear far", timer, &mut slot);
            linear.encode(ctx, &mut pass, &roles, chunk.heads as u64)?;
        } else if self.coarse.is_some() {
            let mut pass = begin_pass(encoder, "fma backward dkv far", timer, &mut slot);
            attention.encode_dkv_far(ctx, &mut pass, &roles, &work)?;
        }
        if let Some(ds) = &parts.downsample {
            let mut pass = begin_pass(encoder, "fma downsample backward", timer, &mut slot);
            let rows = (chunk.heads * self.shape.n) as u64;
            ds.encode_tokens(ctx, &mut pass, &roles, rows)?;
            ds.encode_weights(ctx, &mut pass, &roles, chunk.first > 0)?;
        }
        Ok(())
    }

    /// Runs the forward on host tensors and keeps what `backward` needs.
    pub async fn forward_tape<'a>(
        &self,
        ctx: &GpuContext,
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
    ) -> Result<Tape<'a>> {
        let out = self.forward(ctx, q, k, v).await?;
        Ok(Tape { q, k, v, out })
    }

    /// Gradients of `sum(d_o * O)` for the forward recorded in `tape`: dQ, dK, dV shaped like
    /// q, and the weight gradients (summed over batch and heads) shaped like the weights.
    pub async fn backward(
        &self,
        ctx: &GpuContext,
        tape: &Tape<'_>,
        d_o: &[f32],
    ) -> Result<Gradients> {
        let parts = self.backward_parts(ctx)?;
        let dw_words = self.weight_grad_bytes() as usize / 4;
        let inputs = [
            ("q", Extent::Rows, tape.q),
            ("k", Extent::Rows, tape.k),
            ("v", Extent::Rows, tape.v),
            ("o", Extent::Rows, tape.out.o.as_slice()),
            ("lse", Extent::PerQuery, tape.out.lse.as_slice()),
            ("d_o", Extent::Rows, d_o),
        ];
        let outputs = [
            ("dq", Extent::Rows),
            ("dk", Extent::Rows),
            ("dv", Extent::Rows),
            ("dw", Extent::Whole(dw_words)),
        ];
        let [dq, dk, dv, dw] = parts
            .host
            .run(
                ctx,
                &self.chunks,
                inputs,
                outputs,
                |chunk, encoder, [q, k, v, o, lse, d_o], [dq, dk, dv, dw]| {
                    let io = BackwardIo {
                        q,
                        k,
                        v,
                        o,
                        lse,
                        d_o,
                        dq,
                        dk,
                        dv,
                        dw: (dw_words > 0).then_some(dw),
                    };
                    self.encode_backward_chunk(ctx, encoder, parts, chunk, &io, None)
                },
            )
            .await?;
        let dw = if dw.is_empty() {
            DownsampleWeights::default()
        } else {
            DownsampleWeights::from_packed(
                self.config.downsampling,
                &self.geometry,
                self.shape.d,
                self.config.downsample_queries,
                &dw,
            )?
        };
        Ok(Gradients { dq, dk, dv, dw })
    }

    /// Blocking `backward` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward_blocking(
        &self,
        ctx: &GpuContext,
        tape: &Tape<'_>,
        d_o: &[f32],
    ) -> Result<Gradients> {
        crate::gpu::runtime::block_on(self.backward(ctx, tape, d_o))
    }

    /// Replaces the plan's downsampling weights (after a training step), checked as in `new`.
    pub fn set_weights(&self, ctx: &GpuContext, weights: &DownsampleWeights) -> Result<()> {
        let kind = self.config.downsampling;
        if !kind.is_learned() {
            return Err(FmaError::Weights(
                "Mean downsampling has no weights to set".into(),
            ));
        }
        let g = &self.geometry;
        weights.validate(
            kind,
            g.p,
            self.shape.d,
            &g.group_tokens(),
            self.config.downsample_queries,
        )?;
        if let Some(buf) = &self.weights {
            let (data, _) = pack_weights(weights);
            ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(&data));
        }
        Ok(())
    }
}
