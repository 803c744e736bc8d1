//! `GpuDecoder`: what both decoders do the same way (capacity checks, steps, prompts, the
//! state's lifetime) over `DecodeCore`. The two differ only in how they are built and in
//! how an empty decoder runs a prompt (`Prompt`): `FmaDecoder` with an `FmaPlan`,
//! `DenseDecoder` with a `DensePlan`.

use crate::config::Shape;
use crate::error::{FmaError, Result};
use crate::gpu::decode::{DecodeCore, DecodeIo};
use crate::gpu::runtime::context::GpuContext;
use crate::reference::Output;

/// Only this crate's two decoders implement `Prompt`.
pub(crate) mod sealed {
    pub trait Sealed {}
}

/// How a decoder runs a whole prompt when it holds no token yet, and what it says when a
/// sequence would outgrow it (implemented by `FmaPrompt` and `DensePrompt` only).
pub trait Prompt: sealed::Sealed {
    /// O and LSE of the causal forward over `q, k, v` of `shape` ([batch, heads, n, d]).
    #[allow(async_fn_in_trait)]
    async fn forward(
        &self,
        ctx: &GpuContext,
        shape: Shape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output>;

    /// The hint of the error past `capacity` tokens.
    fn past_hint(&self, capacity: usize) -> String;
}

/// A causal decoder on the GPU for `batch x heads` sequences of head dim d:
/// `FmaDecoder` (`GpuDecoder<FmaPrompt>`) or `DenseDecoder` (`GpuDecoder<DensePrompt>`).
pub struct GpuDecoder<P> {
    pub(crate) core: DecodeCore,
    /// One step's shape (n = 1).
    pub(crate) shape: Shape,
    pub(crate) prompt: P,
}

impl<P: Prompt> GpuDecoder<P> {
    /// Tokens decoded so far (per sequence).
    pub fn len(&self) -> usize {
        self.core.len
    }

    pub fn is_empty(&self) -> bool {
        self.core.len == 0
    }

    /// The most tokens per sequence the decoder holds.
    pub fn capacity(&self) -> usize {
        self.core.capacity
    }

    /// Coarse levels the state holds now: FMA's `Mean` adds them as the sequence grows (one
    /// each time a level's first group closes, as the CPU twin, up to what the capacity
    /// needs); the learned kinds hold all that the capacity needs from the start; the dense
    /// cache has none.
    pub fn levels(&self) -> usize {
        self.core.levels()
    }

    /// Bytes of the decoding state on the GPU (all sequences and heads).
    pub fn state_bytes(&self) -> u64 {
        self.core.state_bytes()
    }

    fn check_room(&self, tokens: usize) -> Result<()> {
        self.core.check_room(tokens, |cap| FmaError::LimitExceeded {
            what: "tokens per sequence".into(),
            needed: cap as u64 + 1,
            limit: cap as u64,
            hint: self.prompt.past_hint(cap),
        })
    }

    /// For benchmarks only: empties the state and sets the token count to `len` (at most the
    /// capacity), as if `len` tokens of zero keys and values had gone by without closing any
    /// group. The state is then no real sequence's, but a step's work depends on the count
    /// alone, so steps at a long context can be timed without decoding up to it.
    #[doc(hidden)]
    pub fn seek_for_timing(&mut self, ctx: &GpuContext, len: usize) -> Result<()> {
        self.core.seek(ctx, len)
    }

    /// Forgets every token.
    pub fn reset(&mut self, ctx: &GpuContext) -> Result<()> {
        self.core.reset(ctx)
    }

    /// Records one step over GPU-resident tensors (q, k, v, o of [batch, heads, d], lse of
    /// [batch, heads], f32) into `encoder`; nothing is submitted. Steps may be recorded back
    /// to back in one encoder: the token count lives on the GPU.
    pub fn encode_step(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &DecodeIo<'_>,
    ) -> Result<()> {
        self.check_room(1)?;
        self.core.encode_step(ctx, encoder, io)
    }

    /// Decodes one token per sequence (q, k, v of [batch, heads, d]): its output and LSE.
    pub async fn step(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        self.check_room(1)?;
        self.core.step(ctx, [q, k, v]).await
    }

    /// Decodes a prompt of n tokens per sequence ([batch, heads, n, d]): on an empty decoder
    /// one causal forward for the outputs and one state build; after earlier tokens, steps.
    /// The state is then as if every token had been stepped.
    pub async fn prefill(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
    ) -> Result<Output> {
        let shape = Shape { n, ..self.shape };
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            if n > 0 {
                shape.check_len(name, x.len())?;
            } else if !x.is_empty() {
                return Err(FmaError::BadShape {
                    what: name.into(),
                    expected: "no values for an empty prompt".into(),
                    got: format!("{} values", x.len()),
                });
            }
        }
        let mut out = Output {
            o: Vec::new(),
            lse: Vec::new(),
        };
        if n == 0 {
            return Ok(out);
        }
        self.check_room(n)?;
        if !self.is_empty() {
            for i in 0..n {
                let [q, k, v] = [q, k, v].map(|x| gather_token(x, shape, i));
                let s = self.step(ctx, &q, &k, &v).await?;
                scatter_token(&mut out, shape, i, &s);
            }
            return Ok(out);
        }
        let out = self.prompt.forward(ctx, shape, q, k, v).await?;
        absorb(&mut self.core, ctx, shape, k, v).await?;
        Ok(out)
    }

    /// Blocking `step` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_blocking(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        crate::gpu::runtime::block_on(self.step(ctx, q, k, v))
    }

    /// Blocking `prefill` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prefill_blocking(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
    ) -> Result<Output> {
        crate::gpu::runtime::block_on(self.prefill(ctx, q, k, v, n))
    }
}

/// `shape` with n = 1: one token per sequence, checked.
pub(crate) fn step_shape(batch: usize, heads: usize, d: usize) -> Result<Shape> {
    let shape = Shape::new(batch, heads, 1, d);
    shape.validate()?;
    Ok(shape)
}

/// Token i of every sequence of a [bh, n, d] tensor, as [bh, d].
fn gather_token(x: &[f32], shape: Shape, i: usize) -> Vec<f32> {
    let (bh, n, d) = (shape.bh(), shape.n, shape.d);
    (0..bh)
        .flat_map(|h| x[(h * n + i) * d..(h * n + i + 1) * d].iter().copied())
        .collect()
}

/// Places one step's outputs ([bh, d], LSE [bh]) as token i of a forward's ([bh, n, d]).
fn scatter_token(out: &mut Output, shape: Shape, i: usize, step: &Output) {
    let (bh, n, d) = (shape.bh(), shape.n, shape.d);
    if out.lse.len() != bh * n {
        *out = Output {
            o: vec![0.0; bh * n * d],
            lse: vec![0.0; bh * n],
        };
    }
    for h in 0..bh {
        out.o[(h * n + i) * d..(h * n + i + 1) * d].copy_from_slice(&step.o[h * d..(h + 1) * d]);
        out.lse[h * n + i] = step.lse[h];
    }
}

/// Uploads a prompt's k and v ([bh, n, d]) and adds them to the state (no outputs).
async fn absorb(
    core: &mut DecodeCore,
    ctx: &GpuContext,
    shape: Shape,
    k: &[f32],
    v: &[f32],
) -> Result<()> {
    let bytes = (shape.elements() * 4) as u64;
    crate::gpu::runtime::chunks::fits_binding(
        ctx,
        "one prompt's keys",
        bytes,
        "prefill a shorter prompt, then step",
    )?;
    ctx.scoped(|| -> Result<()> {
        let kb = crate::gpu::runtime::host::storage(ctx, "prompt k", bytes, true);
        let vb = crate::gpu::runtime::host::storage(ctx, "prompt v", bytes, true);
        ctx.queue.write_buffer(&kb, 0, bytemuck::cast_slice(k));
        ctx.queue.write_buffer(&vb, 0, bytemuck::cast_slice(v));
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        core.encode_absorb(ctx, &mut encoder, &kb, &vb, shape.n)?;
        ctx.queue.submit([encoder.finish()]);
        Ok(())
    })?;
    // Errors of the submission come back once the device has run it.
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| FmaError::Gpu(e.to_string()))
        .map(|_| ())?;
    ctx.take_error()
}
