//! The backward pass of an `FmaPlan` (spec section 8): gradients of Q, K, V and of the learned
//! downsampling weights from dO, with O and LSE saved by the forward.
//!
//! Scores are recomputed (flash-style); the extra memory is O(n): per query (LSE, D), and the
//! gradients of the coarse rows. Every gradient element is written by one invocation that sums
//! in a fixed order (key-major passes for dK and dV, a tree reduction per weight element), so
//! two runs agree bit for bit and no atomics are needed. The kernels and their buffers are made
//! by the first backward call, so forward-only plans do not pay for them.

use super::attention_backward::{AttentionBackwardKernel, BackwardBindings, BackwardWork};
use super::context::GpuContext;
use super::downsample_backward::{DownsampleBackwardBindings, DownsampleBackwardKernel};
use super::host::{HostSlot, readback, storage};
use super::plan::{Chunk, FmaPlan, begin_pass, pack_weights};
use super::timing::GpuTimer;
use crate::config::{DownsampleWeights, Shape};
use crate::error::{FmaError, Result};
use crate::reference::{Gradients, Output};

/// GPU buffers of one backward pass over the plan's whole shape: the forward's inputs q, k, v,
/// its outputs o and lse, the upstream gradient d_o (all STORAGE), and the gradients written:
/// dq, dk, dv shaped like q, and `dw` packed like the weights (`[wk of every level][wv][bk][bv]`,
/// required for the learned kinds, written, not added to).
pub struct BackwardIo<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub o: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
    pub d_o: &'a wgpu::Buffer,
    pub dq: &'a wgpu::Buffer,
    pub dk: &'a wgpu::Buffer,
    pub dv: &'a wgpu::Buffer,
    pub dw: Option<&'a wgpu::Buffer>,
}

impl BackwardIo<'_> {
    fn check(&self, shape: Shape, dw_bytes: u64) -> Result<()> {
        let (e, n) = (
            (shape.elements() * 4) as u64,
            (shape.bh() * shape.n * 4) as u64,
        );
        let mut named = vec![
            ("q", self.q, e),
            ("k", self.k, e),
            ("v", self.v, e),
            ("o", self.o, e),
            ("lse", self.lse, n),
            ("d_o", self.d_o, e),
            ("dq", self.dq, e),
            ("dk", self.dk, e),
            ("dv", self.dv, e),
        ];
        if dw_bytes > 0 {
            let dw = self.dw.ok_or_else(|| {
                FmaError::Weights(
                    "learned downsampling: BackwardIo.dw must hold the weights' gradients".into(),
                )
            })?;
            named.push(("dw", dw, dw_bytes));
        }
        for &(name, buf, need) in &named {
            if buf.size() < need || !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(FmaError::BadShape {
                    what: format!("GPU buffer {name}"),
                    expected: format!("STORAGE usage and at least {need} bytes"),
                    got: format!("{:?}, {} bytes", buf.usage(), buf.size()),
                });
            }
        }
        // Written buffers may alias nothing else (WebGPU forbids it within a dispatch).
        for (i, &(name, buf, _)) in named.iter().enumerate().skip(6) {
            if named.iter().enumerate().any(|(j, x)| j != i && x.1 == buf) {
                return Err(FmaError::BadShape {
                    what: format!("GPU buffer {name}"),
                    expected: "a buffer distinct from every other one of the pass".into(),
                    got: "a buffer used twice".into(),
                });
            }
        }
        Ok(())
    }
}

/// What `FmaPlan::backward` needs from the forward pass: its inputs and its output.
pub struct Tape<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub out: Output,
}

/// The backward kernels of a plan and its scratch buffers (one chunk of heads).
pub(super) struct Backward {
    attention: AttentionBackwardKernel,
    downsample: Option<DownsampleBackwardKernel>,
    /// (LSE, D) per query.
    stats: wgpu::Buffer,
    /// Gradients of the coarse keys and values, laid out like the coarse buffer.
    dcoarse: Option<wgpu::Buffer>,
    host: HostSlot<BackwardHost>,
}

/// Host staging of `backward`: q, k, v, o, lse, d_o in; dq, dk, dv (and dw) out.
struct BackwardHost {
    inputs: [wgpu::Buffer; 6],
    grads: [wgpu::Buffer; 3],
    reads: [wgpu::Buffer; 3],
    dw: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

impl FmaPlan {
    fn backward_parts(&self, ctx: &GpuContext) -> Result<&Backward> {
        if let Some(b) = self.backward.get() {
            return Ok(b);
        }
        let far = self.coarse.is_some();
        let attention = AttentionBackwardKernel::new(ctx, self.spec, far)?;
        let downsample = if far {
            let kind = self.config.downsampling;
            // weight elements (wk of every level), then bias elements (bk) for depthwise
            let [wv_base, bk_base, bv_base] = self.weight_bases;
            let elements = (wv_base + (bv_base - bk_base)) as usize;
            Some(DownsampleBackwardKernel::new(
                ctx, kind, self.spec, elements,
            )?)
        } else {
            None
        };
        let rows = (self.chunk_heads * self.shape.n) as u64;
        let parts = Backward {
            attention,
            downsample,
            stats: storage(ctx, "fma backward stats", rows * 8, false),
            dcoarse: self
                .coarse
                .as_ref()
                .map(|c| storage(ctx, "fma coarse gradients", c.size(), false)),
            host: HostSlot::default(),
        };
        ctx.take_error()?;
        Ok(self.backward.get_or_init(|| parts))
    }

    /// Bytes of GPU memory the backward adds to the plan's own (`extra_bytes`): (LSE, D) per
    /// query and the coarse rows' gradients, for one chunk of heads. O(n).
    pub fn backward_extra_bytes(&self) -> u64 {
        let stats = (self.chunk_heads * self.shape.n * 8) as u64;
        stats + self.coarse.as_ref().map_or(0, |c| c.size())
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

    /// The stages one backward records, in order.
    pub fn backward_stage_names(&self) -> Vec<&'static str> {
        let far = self.coarse.is_some();
        [
            far.then_some("downsample"),
            Some("stats"),
            Some("dq"),
            Some("dkv_near"),
            far.then_some("dkv_far"),
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
        let [chunk] = self.chunks.as_slice() else {
            return Err(FmaError::LimitExceeded {
                what: "Q, K, V or O in one storage binding".into(),
                needed: (self.shape.elements() * 4) as u64,
                limit: (self.chunk_heads * self.shape.n * self.shape.d * 4) as u64,
                hint: "use FmaPlan::backward, which splits batch x heads over several dispatches"
                    .into(),
            });
        };
        io.check(self.shape, self.weight_grad_bytes())?;
        let parts = self.backward_parts(ctx)?;
        self.encode_backward_chunk(ctx, encoder, parts, chunk, io, false, timer)
    }

    /// One chunk of heads; `accumulate` adds its weight gradients to the previous chunks'.
    #[allow(clippy::too_many_arguments)]
    fn encode_backward_chunk(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        parts: &Backward,
        chunk: &Chunk,
        io: &BackwardIo<'_>,
        accumulate: bool,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        let mut slot = 0;
        // The coarse keys and values, recomputed rather than kept from the forward.
        self.encode_downsample(ctx, encoder, chunk, [io.k, io.v], timer, &mut slot)?;
        let b = BackwardBindings {
            params: &chunk.params,
            geom: &self.geom,
            q: io.q,
            k: io.k,
            v: io.v,
            o: io.o,
            lse: io.lse,
            d_o: io.d_o,
            stats: &parts.stats,
            dq: io.dq,
            dk: io.dk,
            dv: io.dv,
            coarse: self.coarse.as_ref(),
            dcoarse: parts.dcoarse.as_ref(),
        };
        let work = BackwardWork {
            heads: chunk.heads as u64,
            n: self.shape.n as u64,
            query_tiles: self.query_tiles as u64,
            cells: self.geometry.total_cells() as u64,
            p: self.geometry.p as u64,
        };
        let attention = &parts.attention;
        let mut pass = begin_pass(encoder, "fma backward stats", timer, &mut slot);
        attention.encode_stats(ctx, &mut pass, &b, &work)?;
        drop(pass);
        let mut pass = begin_pass(encoder, "fma backward dq", timer, &mut slot);
        attention.encode_dq(ctx, &mut pass, &b, &work)?;
        drop(pass);
        let mut pass = begin_pass(encoder, "fma backward dkv near", timer, &mut slot);
        attention.encode_dkv_near(ctx, &mut pass, &b, &work)?;
        drop(pass);
        if self.coarse.is_some() {
            let mut pass = begin_pass(encoder, "fma backward dkv far", timer, &mut slot);
            attention.encode_dkv_far(ctx, &mut pass, &b, &work)?;
        }
        if let (Some(ds), Some(dcoarse)) = (&parts.downsample, &parts.dcoarse) {
            let b = DownsampleBackwardBindings {
                params: &chunk.params,
                geom: &self.geom,
                k: io.k,
                v: io.v,
                weights: self.weights.as_ref(),
                dcoarse,
                dk: io.dk,
                dv: io.dv,
                dw: io.dw,
            };
            let mut pass = begin_pass(encoder, "fma downsample backward", timer, &mut slot);
            let elements = (chunk.heads * self.shape.n * self.shape.d) as u64;
            ds.encode_tokens(ctx, &mut pass, &b, elements)?;
            ds.encode_weights(ctx, &mut pass, &b, accumulate)?;
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
        let shape = self.shape;
        for (name, t) in [
            ("q", tape.q),
            ("k", tape.k),
            ("v", tape.v),
            ("o", &tape.out.o),
        ] {
            shape.check_len(name, t.len())?;
        }
        shape.check_len("d_o", d_o.len())?;
        if tape.out.lse.len() != shape.bh() * shape.n {
            return Err(FmaError::BadShape {
                what: "lse".into(),
                expected: format!("{} values (batch x heads x n)", shape.bh() * shape.n),
                got: format!("{} values", tape.out.lse.len()),
            });
        }
        let parts = self.backward_parts(ctx)?;
        let (n, d) = (shape.n, shape.d);
        let dw_bytes = self.weight_grad_bytes();
        let (host, _busy) = parts
            .host
            .acquire(|| BackwardHost::new(ctx, self.chunk_heads, n, d, dw_bytes))?;
        let mut grads = Gradients {
            dq: Vec::with_capacity(shape.elements()),
            dk: Vec::with_capacity(shape.elements()),
            dv: Vec::with_capacity(shape.elements()),
            dw: DownsampleWeights::default(),
        };
        for (c, first) in (0..shape.bh()).step_by(self.chunk_heads).enumerate() {
            let heads = self.chunk_heads.min(shape.bh() - first);
            let span = first * n * d..(first + heads) * n * d;
            let lse = &tape.out.lse[first * n..(first + heads) * n];
            let inputs = [tape.q, tape.k, tape.v, &tape.out.o, lse, d_o];
            for (i, (buf, data)) in host.inputs.iter().zip(inputs).enumerate() {
                let data = if i == 4 { data } else { &data[span.clone()] };
                ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
            }
            let [q, k, v, o, lse, d_o] = &host.inputs;
            let [dq, dk, dv] = &host.grads;
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
                dw: host.dw.as_ref().map(|(b, _)| b),
            };
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            let chunk = &self.chunks[c];
            self.encode_backward_chunk(ctx, &mut encoder, parts, chunk, &io, c > 0, None)?;
            let bytes = (span.len() * 4) as u64;
            for (src, dst) in host.grads.iter().zip(&host.reads) {
                encoder.copy_buffer_to_buffer(src, 0, dst, 0, bytes);
            }
            let last = first + heads == shape.bh();
            if let (true, Some((dw, read))) = (last, &host.dw) {
                encoder.copy_buffer_to_buffer(dw, 0, read, 0, dw_bytes);
            }
            ctx.queue.submit([encoder.finish()]);
            for (read, out) in host
                .reads
                .iter()
                .zip([&mut grads.dq, &mut grads.dk, &mut grads.dv])
            {
                out.extend(ctx.read_f32(read, span.len()).await?);
            }
            if let (true, Some((_, read))) = (last, &host.dw) {
                let packed = ctx.read_f32(read, self.weights_len).await?;
                grads.dw = self.unpack_weights(&packed);
            }
        }
        Ok(grads)
    }

    /// Blocking `backward` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward_blocking(
        &self,
        ctx: &GpuContext,
        tape: &Tape<'_>,
        d_o: &[f32],
    ) -> Result<Gradients> {
        pollster::block_on(self.backward(ctx, tape, d_o))
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
        weights.validate(kind, g.p, self.shape.d, &g.group_tokens())?;
        if let Some(buf) = &self.weights {
            let (data, _) = pack_weights(weights);
            ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(&data));
        }
        Ok(())
    }

    /// The packed layout `[wk of every level][wv][bk][bv]` back into per-level weights.
    fn unpack_weights(&self, packed: &[f32]) -> DownsampleWeights {
        let g = &self.geometry;
        let mut out = DownsampleWeights::mean_init(self.config.downsampling, g, self.shape.d);
        let mut at = 0;
        for part in 0..4 {
            for lw in &mut out.levels {
                let dst = match part {
                    0 => &mut lw.wk,
                    1 => &mut lw.wv,
                    2 => &mut lw.bk,
                    _ => &mut lw.bv,
                };
                let len = dst.len();
                dst.copy_from_slice(&packed[at..at + len]);
                at += len;
            }
        }
        out
    }
}

impl BackwardHost {
    fn new(ctx: &GpuContext, heads: usize, n: usize, d: usize, dw_bytes: u64) -> Self {
        let bytes = (heads * n * d * 4) as u64;
        let lse = (heads * n * 4) as u64;
        let input = |label| storage(ctx, label, bytes, true);
        BackwardHost {
            inputs: [
                input("q"),
                input("k"),
                input("v"),
                input("o"),
                storage(ctx, "lse", lse, true),
                input("d_o"),
            ],
            grads: ["dq", "dk", "dv"].map(|l| storage(ctx, l, bytes, false)),
            reads: [0; 3].map(|_| readback(ctx, bytes)),
            dw: (dw_bytes > 0)
                .then(|| (storage(ctx, "dw", dw_bytes, false), readback(ctx, dw_bytes))),
        }
    }
}
