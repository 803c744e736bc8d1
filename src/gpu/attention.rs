//! Rust twin of shaders/attention.wgsl (with merge.wgsl): the near-field pass, which writes a
//! normalised partial into O and LSE, and the far-field pass, which merges into it.

use super::context::GpuContext;
use super::params::{bind, dispatch};
use super::shaders::{Family, Spec, binding as B};
use crate::error::Result;

pub(crate) struct AttentionKernel {
    near: wgpu::ComputePipeline,
    far: Option<wgpu::ComputePipeline>,
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
    pub fn new(ctx: &GpuContext, spec: Spec, far_field: bool) -> Result<Self> {
        Ok(AttentionKernel {
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
        let group = bind(
            ctx,
            "near_field",
            &self.near,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::Q, b.q),
                (B::K, b.k),
                (B::V, b.v),
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
                (B::COARSE, coarse),
                (B::O, b.o),
                (B::LSE, b.lse),
            ],
        );
        dispatch(ctx, pass, far, &group, workgroups)
    }
}
