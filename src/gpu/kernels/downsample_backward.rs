//! Rust twin of shaders/downsample_backward.wgsl: the coarse rows' gradients passed on to the
//! tokens (every kind) and to the learned weights (basis, depthwise), whose reduction uses
//! subgroups where the device has them (downsample_backward_subgroups.wgsl).

use crate::config::Downsampling;
use crate::error::Result;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{Entry, Kernel, Roles};
use crate::gpu::shaders::structs::GradRange;
use crate::gpu::shaders::{Family, ForwardKernels, Spec, WG_ELEMENTS, binding as B};

const fn entry(name: &'static str, roles: &'static [u32]) -> Entry {
    Entry {
        family: Family::DownsampleBackward,
        name,
        forward: None,
        roles,
    }
}

const TOKENS: &[u32] = &[B::PARAMS, B::GEOM, B::DCOARSE, B::DQ, B::DK, B::DV];
const TOKENS_LEARNED: &[u32] = &[
    B::PARAMS,
    B::GEOM,
    B::DCOARSE,
    B::DQ,
    B::DK,
    B::DV,
    B::WEIGHTS,
];
const WEIGHT_GRADS: &[u32] = &[
    B::PARAMS,
    B::GEOM,
    B::Q,
    B::K,
    B::V,
    B::DCOARSE,
    B::DW,
    B::GRAD_RANGE,
];
const TOKENS_MEAN: Entry = entry("tokens_mean", TOKENS);
const TOKENS_MEAN_QUADS: Entry = entry("tokens_mean_quads", TOKENS);
const TOKENS_BASIS: Entry = entry("tokens_basis", TOKENS_LEARNED);
const TOKENS_DEPTHWISE: Entry = entry("tokens_depthwise", TOKENS_LEARNED);
const GRADS_BASIS: Entry = entry("weight_grads_basis", WEIGHT_GRADS);
const GRADS_BASIS_SERIAL: Entry = entry("weight_grads_basis_serial", WEIGHT_GRADS);
const GRADS_DEPTHWISE: Entry = entry("weight_grads_depthwise", WEIGHT_GRADS);
const GRADS_DEPTHWISE_SERIAL: Entry = entry("weight_grads_depthwise_serial", WEIGHT_GRADS);

#[cfg(test)]
pub(crate) const ENTRIES: [&Entry; 8] = [
    &TOKENS_MEAN,
    &TOKENS_MEAN_QUADS,
    &TOKENS_BASIS,
    &TOKENS_DEPTHWISE,
    &GRADS_BASIS,
    &GRADS_BASIS_SERIAL,
    &GRADS_DEPTHWISE,
    &GRADS_DEPTHWISE_SERIAL,
];

pub(crate) struct DownsampleBackwardKernel {
    tokens: Kernel,
    /// Rows (head, token) per workgroup of `tokens`.
    token_rows: u64,
    /// The weight-gradient pipeline, its element count (weights, then biases) and its range
    /// uniforms: [overwrite, accumulate].
    weights: Option<(Kernel, u64, [wgpu::Buffer; 2])>,
    /// Elements per workgroup of `weights`: one (a workgroup reduction, GPUs), or WG_ELEMENTS
    /// (`weight_grads_*_serial`, one invocation each, CPU adapters).
    weights_per_group: u64,
}

impl DownsampleBackwardKernel {
    /// `elements`: how many weight-gradient elements one dispatch writes (the key weights of
    /// all levels, plus the key biases for depthwise): a workgroup each on GPUs, an invocation
    /// each on CPU adapters.
    pub fn new(ctx: &GpuContext, kind: Downsampling, spec: Spec, elements: usize) -> Result<Self> {
        let spec = spec.with_subgroups(ctx.subgroups());
        let pipe = |entry| Kernel::new(ctx, entry, spec);
        let range = |accumulate: u32| {
            let r = GradRange {
                first: 0,
                count: elements as u32,
                accumulate,
                _pad: 0,
            };
            ctx.buffer_with(
                "weight gradient range",
                bytemuck::bytes_of(&r),
                wgpu::BufferUsages::UNIFORM,
            )
        };
        // A CPU adapter (the Direct forward) pays index arithmetic per lane and a barrier per
        // reduction step: Mean takes four channels per lane, the weight gradients one element
        // per invocation with no division per term.
        let cpu = ctx.forward_kernels() == ForwardKernels::Direct;
        let quads = kind == Downsampling::Mean && cpu;
        let grads = |serial, reduced| pipe(if cpu { serial } else { reduced });
        let (tokens, weights) = match kind {
            Downsampling::Mean if quads => (pipe(&TOKENS_MEAN_QUADS)?, None),
            Downsampling::Mean => (pipe(&TOKENS_MEAN)?, None),
            Downsampling::Basis => (
                pipe(&TOKENS_BASIS)?,
                Some(grads(&GRADS_BASIS_SERIAL, &GRADS_BASIS)?),
            ),
            Downsampling::Depthwise => (
                pipe(&TOKENS_DEPTHWISE)?,
                Some(grads(&GRADS_DEPTHWISE_SERIAL, &GRADS_DEPTHWISE)?),
            ),
        };
        Ok(DownsampleBackwardKernel {
            tokens,
            token_rows: (spec.token_rows() * if quads { 4 } else { 1 }) as u64,
            weights: weights.map(|w| (w, elements as u64, [range(0), range(1)])),
            weights_per_group: if cpu { WG_ELEMENTS as u64 } else { 1 },
        })
    }

    /// The coarse rows' gradients passed on to the tokens' dK, dV (and dQ in the O(n)
    /// variant).
    pub fn encode_tokens(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        rows: u64,
    ) -> Result<()> {
        let workgroups = rows.div_ceil(self.token_rows);
        self.tokens.dispatch(ctx, pass, roles, workgroups)
    }

    /// Writes the weight gradients into `dw` (packed like the weights), or adds to them for a
    /// later chunk of heads.
    pub fn encode_weights(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        accumulate: bool,
    ) -> Result<()> {
        let Some((kernel, elements, ranges)) = &self.weights else {
            return Ok(());
        };
        let roles = roles.with(&[B::GRAD_RANGE], &ranges[accumulate as usize]);
        let groups = elements.div_ceil(self.weights_per_group);
        kernel.dispatch(ctx, pass, &roles, groups)
    }
}
