//! Rust twin of shaders/downsample_backward.wgsl: the coarse rows' gradients passed on to the
//! tokens (every kind) and to the learned weights (basis, depthwise), whose reduction uses
//! subgroups where the device has them (downsample_backward_subgroups.wgsl).

use crate::config::Downsampling;
use crate::error::Result;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{bind, dispatch};
use crate::gpu::shaders::structs::GradRange;
use crate::gpu::shaders::{Family, ForwardKernels, Spec, WG_ELEMENTS, binding as B};

pub(crate) struct DownsampleBackwardKernel {
    tokens: wgpu::ComputePipeline,
    /// Rows (head, token) per workgroup of `tokens`.
    token_rows: u64,
    /// The weight-gradient pipeline, its element count (weights, then biases) and its range
    /// uniforms: [overwrite, accumulate].
    weights: Option<(wgpu::ComputePipeline, u64, [wgpu::Buffer; 2])>,
    /// Elements per workgroup of `weights`: one (a workgroup reduction, GPUs), or WG_ELEMENTS
    /// (`weight_grads_*_serial`, one invocation each, CPU adapters).
    weights_per_group: u64,
}

/// Buffers of the downsampling backward over one chunk of heads.
pub(crate) struct DownsampleBackwardBindings<'a> {
    pub params: &'a wgpu::Buffer,
    pub geom: &'a wgpu::Buffer,
    /// Q and dQ: read and added to only in the O(n) variant, bound always.
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub weights: Option<&'a wgpu::Buffer>,
    pub dcoarse: &'a wgpu::Buffer,
    pub dq: &'a wgpu::Buffer,
    pub dk: &'a wgpu::Buffer,
    pub dv: &'a wgpu::Buffer,
    pub dw: Option<&'a wgpu::Buffer>,
}

impl DownsampleBackwardKernel {
    /// `elements`: how many weight-gradient elements one dispatch writes (the key weights of
    /// all levels, plus the key biases for depthwise): a workgroup each on GPUs, an invocation
    /// each on CPU adapters.
    pub fn new(ctx: &GpuContext, kind: Downsampling, spec: Spec, elements: usize) -> Result<Self> {
        let spec = spec.with_subgroups(ctx.subgroups());
        let pipe = |entry| ctx.pipeline(Family::DownsampleBackward, entry, spec);
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
            Downsampling::Mean if quads => (pipe("tokens_mean_quads")?, None),
            Downsampling::Mean => (pipe("tokens_mean")?, None),
            Downsampling::Basis => (
                pipe("tokens_basis")?,
                Some(grads("weight_grads_basis_serial", "weight_grads_basis")?),
            ),
            Downsampling::Depthwise => (
                pipe("tokens_depthwise")?,
                Some(grads(
                    "weight_grads_depthwise_serial",
                    "weight_grads_depthwise",
                )?),
            ),
        };
        Ok(DownsampleBackwardKernel {
            tokens,
            token_rows: (spec.token_rows() * if quads { 4 } else { 1 }) as u64,
            weights: weights.map(|w| (w, elements as u64, [range(0), range(1)])),
            weights_per_group: if cpu { WG_ELEMENTS as u64 } else { 1 },
        })
    }

    /// Adds the coarse rows' share to dK and dV (and dQ in the O(n) variant): one invocation
    /// per element of `rows` rows
    /// (head, token), `token_rows` rows per workgroup.
    pub fn encode_tokens(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &DownsampleBackwardBindings<'_>,
        rows: u64,
    ) -> Result<()> {
        let mut buffers = vec![
            (B::PARAMS, b.params),
            (B::GEOM, b.geom),
            (B::DCOARSE, b.dcoarse),
            (B::DQ, b.dq),
            (B::DK, b.dk),
            (B::DV, b.dv),
        ];
        if let (true, Some(w)) = (self.weights.is_some(), b.weights) {
            buffers.push((B::WEIGHTS, w));
        }
        let group = bind(ctx, "downsample tokens backward", &self.tokens, &buffers);
        dispatch(
            ctx,
            pass,
            &self.tokens,
            &group,
            rows.div_ceil(self.token_rows),
        )
    }

    /// Writes the weight gradients into `dw` (packed like the weights), or adds to them for a
    /// later chunk of heads.
    pub fn encode_weights(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &DownsampleBackwardBindings<'_>,
        accumulate: bool,
    ) -> Result<()> {
        let (Some((pipeline, elements, ranges)), Some(dw)) = (&self.weights, b.dw) else {
            return Ok(());
        };
        let group = bind(
            ctx,
            "weight gradients",
            pipeline,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::Q, b.q),
                (B::K, b.k),
                (B::V, b.v),
                (B::DCOARSE, b.dcoarse),
                (B::DW, dw),
                (B::GRAD_RANGE, &ranges[accumulate as usize]),
            ],
        );
        let groups = elements.div_ceil(self.weights_per_group);
        dispatch(ctx, pass, pipeline, &group, groups)
    }
}
