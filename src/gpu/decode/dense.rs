//! `DenseDecoder`: decoding with a dense key-value cache, the baseline `FmaDecoder` is measured
//! against. The same kernels and tiles (decode.wgsl) with a ring as long as the capacity and no
//! coarse levels: every step attends to all the tokens so far, O(n d) state and work.

use crate::config::Shape;
use crate::error::{FmaError, Result};
use crate::gpu::decode::decoder::{GpuDecoder, Prompt, step_shape};
use crate::gpu::decode::{DecodeCore, DecodeParams, StateLayout, decode_tables};
use crate::gpu::plan::dense::DensePlan;
use crate::gpu::runtime::context::GpuContext;
use crate::reference::Output;

/// Exact causal decoding over a key-value cache of `capacity` tokens per sequence (its
/// methods are `GpuDecoder`'s).
pub type DenseDecoder = GpuDecoder<DensePrompt>;

/// What a dense decoder keeps for prompts: the score scale.
pub struct DensePrompt {
    scale: f32,
}

impl GpuDecoder<DensePrompt> {
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
        Ok(GpuDecoder {
            core: DecodeCore::new(ctx, params, layout, &geom, &[], capacity, None)?,
            shape,
            prompt: DensePrompt { scale },
        })
    }
}

impl crate::gpu::decode::decoder::sealed::Sealed for DensePrompt {}

impl Prompt for DensePrompt {
    /// One causal `DensePlan` forward.
    async fn forward(
        &self,
        ctx: &GpuContext,
        shape: Shape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        let plan = DensePlan::new(ctx, shape, true, self.scale)?;
        plan.forward(ctx, q, k, v).await
    }

    fn past_hint(&self, _capacity: usize) -> String {
        "the dense cache holds its capacity: make it larger".into()
    }
}
