//! The FMA dispatcher: a plan fixes the shape and options, uploads the geometry tables and
//! weights once, and encodes the forward pass (downsample, near field, far field) into one
//! compute pass. Inputs too large for one storage binding are split over batch x heads.

pub(crate) mod backward;
mod build;
pub(crate) mod dense;
mod forward;

pub(crate) use build::pack_weights;

use std::sync::OnceLock;

use crate::config::{FmaConfig, Precision, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::gpu::kernels::attention::AttentionKernel;
use crate::gpu::kernels::downsample::DownsampleKernel;
use crate::gpu::kernels::linear::LinearKernel;
use crate::gpu::plan::backward::Backward;

use crate::gpu::runtime::chunks::Chunks;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::host::{ForwardStaging, HostSlot};
use crate::gpu::shaders::Spec;
use crate::weights::DownsampleWeights;

/// A prepared FMA forward (and backward) pass for one shape and configuration. Build it once,
/// run it often.
pub struct FmaPlan {
    pub(super) shape: Shape,
    pub(super) geometry: Geometry,
    pub(super) config: FmaConfig,
    pub(super) spec: Spec,
    pub(super) chunks: Chunks,
    /// Attention workgroups per head: fine cells x query tiles per cell.
    pub(super) query_tiles: usize,
    pub(super) geom: wgpu::Buffer,
    pub(super) weights: Option<wgpu::Buffer>,
    /// Where wv, bk, bv, wq and bq start in the packed weights, and their total length.
    pub(super) weight_bases: [u32; 5],
    pub(super) weights_len: usize,
    pub(super) coarse: Option<wgpu::Buffer>,
    pub(super) downsample: Option<DownsampleKernel>,
    pub(super) attention: AttentionKernel,
    /// The O(n) variant's far field and its per-segment results (with coarse levels only).
    pub(super) linear: Option<(LinearKernel, wgpu::Buffer)>,
    pub(super) host: HostSlot<ForwardStaging>,
    /// The backward kernels and buffers, made by the first backward call.
    pub(super) backward: OnceLock<Backward>,
}

impl FmaPlan {
    /// Prepares FMA over `shape`, whose n tokens form a sequence or an image as
    /// `config.layout` says. `weights` are required for the learned
    /// downsampling kinds (see `DownsampleWeights::mean_init` for the initialisation).
    pub fn new(
        ctx: &GpuContext,
        shape: Shape,
        config: &FmaConfig,
        weights: Option<&DownsampleWeights>,
    ) -> Result<FmaPlan> {
        // In error scopes, so that a device shared through `from_device` reports the plan's
        // errors (out of memory, most likely) here rather than to its owner's handler.
        let plan = ctx.scoped(|| Self::build(ctx, shape, config, weights))?;
        ctx.take_error()?;
        Ok(plan)
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// An error unless the plan stores f32: the backward kernels read and write f32 only.
    pub(super) fn require_f32_for_backward(&self) -> Result<()> {
        match self.config.precision {
            Precision::F32 => Ok(()),
            Precision::F16 => Err(FmaError::InvalidConfig(
                "the backward runs in f32: build the plan with Precision::F32 to train (Precision::F16 is for inference)".into(),
            )),
        }
    }

    /// Passes over chunks of heads that `forward` and `backward` split the shape into (the
    /// tensors of one pass fit one storage binding); `encode` needs exactly one.
    pub fn chunk_count(&self) -> usize {
        self.chunks.iter().count()
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The plan's downsampling weights on the GPU, packed as `DownsampleWeights::packed` lays
    /// them out (None for `Mean`, or without coarse levels). COPY_DST: a caller that keeps
    /// trainable weights on the GPU copies them in before encoding a pass.
    pub fn weights_buffer(&self) -> Option<&wgpu::Buffer> {
        self.weights.as_ref()
    }

    /// Bytes of GPU memory the plan holds besides Q, K, V, O and LSE: the coarse keys and
    /// values (and queries, in the O(n) variant, with each segment's downward result), for
    /// one chunk of heads, the geometry tables and the weights.
    pub fn extra_bytes(&self) -> u64 {
        [
            Some(&self.geom),
            self.weights.as_ref(),
            self.coarse.as_ref(),
            self.linear.as_ref().map(|(_, down)| down),
        ]
        .into_iter()
        .flatten()
        .map(|b| b.size())
        .sum()
    }
}
