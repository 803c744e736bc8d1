//! `DenseDecoder`: decoding with a dense key-value cache, the baseline `FmaDecoder` is measured
//! against. The same kernels and tiles (decode.wgsl) with a ring as long as the capacity and no
//! coarse levels: every step attends to all the tokens so far, O(n d) state and work.

use crate::config::Shape;
use crate::error::{FmaError, Result};
use crate::gpu::decode::fma::{gather_token, scatter_token, step_shape};
use crate::gpu::decode::{DecodeCore, DecodeIo, DecodeParams, StateLayout, decode_tables};
use crate::gpu::plan::dense::DensePlan;
use crate::gpu::runtime::context::GpuContext;
use crate::reference::Output;

/// Exact causal decoding over a key-value cache of `capacity` tokens per sequence.
pub struct DenseDecoder {
    core: DecodeCore,
    shape: Shape,
    scale: f32,
}

impl DenseDecoder {
    /// A cache for `batch x heads` sequences of head dim d, up to `capacity` tokens each,
    /// with score scale `scale` (1/sqrt(d) is usual).
    pub fn new(
        ctx: &GpuContext,
        [batch, heads, d]: [usize; 3],
        capacity: usize,
        scale: f32,
    ) -> Result<DenseDecoder> {
        let shape = step_shape(batch, heads, d)?;
        if capacity == 0 || !scale.is_finite() {
            return Err(FmaError::InvalidConfig(format!(
                "a dense decoder needs a capacity of at least 1 token and a finite scale (got {capacity}, {scale})"
            )));
        }
        let ring = crate::gpu::runtime::dispatch::word("the dense decoder's capacity", capacity)?;
        // One "cell" as long as the cache: the near field is every token so far.
        let (geom, near_table, far_table) =
            decode_tables(&[], &[vec![0], vec![0]], &[vec![], vec![]])?;
        let params = DecodeParams {
            d: d as u32,
            bh: shape.bh() as u32,
            cell: ring,
            ring,
            p: 1,
            scale,
            near_table,
            far_table,
            ..Default::default()
        };
        let layout = StateLayout {
            bh: shape.bh(),
            d,
            ring: capacity,
            p: 1,
            levels: 0,
        };
        Ok(DenseDecoder {
            core: DecodeCore::new(ctx, params, layout, &geom, &[], capacity, None)?,
            shape,
            scale,
        })
    }

    pub fn len(&self) -> usize {
        self.core.len
    }

    pub fn is_empty(&self) -> bool {
        self.core.len == 0
    }

    /// Bytes of the key-value cache (all sequences and heads).
    pub fn state_bytes(&self) -> u64 {
        self.core.state_bytes()
    }

    fn past(cap: usize) -> FmaError {
        FmaError::LimitExceeded {
            what: "tokens per sequence".into(),
            needed: cap as u64 + 1,
            limit: cap as u64,
            hint: "the dense cache holds its capacity: make it larger".into(),
        }
    }

    /// For benchmarks only: empties the state and sets the token count to `len` (at most the
    /// capacity), as if `len` tokens of zero keys and values had gone by without closing any
    /// group. The state is then no real sequence's, but a step's work depends on the count
    /// alone, so steps at a long context can be timed without decoding up to it.
    #[doc(hidden)]
    pub fn seek_for_timing(&mut self, ctx: &GpuContext, len: usize) -> Result<()> {
        self.core.seek(ctx, len)
    }

    pub fn reset(&mut self, ctx: &GpuContext) -> Result<()> {
        self.core.reset(ctx)
    }

    /// Records one step over GPU-resident tensors (as `FmaDecoder::encode_step`).
    pub fn encode_step(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &DecodeIo<'_>,
    ) -> Result<()> {
        self.core.check_room(1, Self::past)?;
        self.core.encode_step(ctx, encoder, io)
    }

    /// Decodes one token per sequence (q, k, v of [batch, heads, d]).
    pub async fn step(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        self.core.check_room(1, Self::past)?;
        self.core.step(ctx, [q, k, v]).await
    }

    /// Decodes a prompt ([batch, heads, n, d]): one causal `DensePlan` forward and the cache
    /// filled, on an empty decoder; steps after earlier tokens.
    pub async fn prefill(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
    ) -> Result<Output> {
        let shape = Shape { n, ..self.shape };
        if n == 0 {
            return Ok(Output {
                o: Vec::new(),
                lse: Vec::new(),
            });
        }
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            shape.check_len(name, x.len())?;
        }
        self.core.check_room(n, Self::past)?;
        if !self.is_empty() {
            let mut out = Output {
                o: Vec::new(),
                lse: Vec::new(),
            };
            for i in 0..n {
                let [q, k, v] = [q, k, v].map(|x| gather_token(x, shape, i));
                let s = self.step(ctx, &q, &k, &v).await?;
                scatter_token(&mut out, shape, i, &s);
            }
            return Ok(out);
        }
        let plan = DensePlan::new(ctx, shape, true, self.scale)?;
        let out = plan.forward(ctx, q, k, v).await?;
        crate::gpu::decode::fma::absorb(&mut self.core, ctx, shape, k, v).await?;
        Ok(out)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_blocking(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        pollster::block_on(self.step(ctx, q, k, v))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn prefill_blocking(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
    ) -> Result<Output> {
        pollster::block_on(self.prefill(ctx, q, k, v, n))
    }
}
