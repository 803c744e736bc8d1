//! Rust twin of shaders/attention.wgsl (with merge.wgsl): the near-field pass, which writes a
//! normalised partial into O and LSE, and the far-field pass, which merges into it.

use crate::error::Result;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{bind, dispatch};
use crate::gpu::shaders::{Family, ForwardKernels, Spec, binding as B};

pub(crate) struct AttentionKernel {
    near: wgpu::ComputePipeline,
    far: Option<wgpu::ComputePipeline>,
    /// Direct kernels bind K, V and the coarse rows as vec4 rows instead.
    direct: bool,
}

/// Buffers of one attention dispatch. `coarse` is None when there are no coarse levels.
pub(crate) struct AttentionBindings<'a> {
    pub params: &'a wgpu::Buffer,
    pub geom: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub coarse: Option<&'a wgpu::Buffer>,
    pub o: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
}

impl AttentionKernel {
    /// The kernels of `spec`'s shape for head dim `d`, with the forward kernels the context
    /// chooses.
    pub fn new(ctx: &GpuContext, spec: Spec, d: usize, far_field: bool) -> Result<Self> {
        let spec = spec.with_forward(ctx.forward_kernels(), d);
        Ok(AttentionKernel {
            direct: spec.forward == ForwardKernels::Direct,
            near: ctx.pipeline(Family::Attention, "near_field", spec)?,
            far: if far_field {
                Some(ctx.pipeline(Family::Attention, "far_field", spec)?)
            } else {
                None
            },
        })
    }

    /// Records the near field: one workgroup per (head, query tile).
    pub fn encode_near(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &AttentionBindings<'_>,
        workgroups: u64,
    ) -> Result<()> {
        let (k, v) = if self.direct {
            (B::K4, B::V4)
        } else {
            (B::K, B::V)
        };
        let group = bind(
            ctx,
            "near_field",
            &self.near,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::Q, b.q),
                (k, b.k),
                (v, b.v),
                (B::O, b.o),
                (B::LSE, b.lse),
            ],
        );
        dispatch(ctx, pass, &self.near, &group, workgroups)
    }

    /// Records the far field (merging into the near field's O and LSE), if there are coarse
    /// levels.
    pub fn encode_far(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &AttentionBindings<'_>,
        workgroups: u64,
    ) -> Result<()> {
        let (Some(far), Some(coarse)) = (&self.far, b.coarse) else {
            return Ok(());
        };
        let group = bind(
            ctx,
            "far_field",
            far,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::Q, b.q),
                (if self.direct { B::COARSE4 } else { B::COARSE }, coarse),
                (B::O, b.o),
                (B::LSE, b.lse),
            ],
        );
        dispatch(ctx, pass, far, &group, workgroups)
    }
}
