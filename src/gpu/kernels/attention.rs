//! Rust twin of shaders/attention.wgsl (with merge.wgsl): the near-field pass, which writes a
//! normalised partial into O and LSE, and the far-field pass, which merges into it.

use crate::error::Result;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{Entry, Kernel, Roles};
use crate::gpu::shaders::{Family, ForwardKernels, Spec, binding as B};

const fn entry(name: &'static str, forward: ForwardKernels, roles: &'static [u32]) -> Entry {
    Entry {
        family: Family::Attention,
        name,
        forward: Some(forward),
        roles,
    }
}

/// The Tiled kernels read K, V and the coarse rows per element; the Direct ones as vec4 rows.
pub(crate) const NEAR_TILED: Entry = entry(
    "near_field",
    ForwardKernels::Tiled,
    &[B::PARAMS, B::GEOM, B::Q, B::K, B::V, B::O, B::LSE],
);
pub(crate) const NEAR_DIRECT: Entry = entry(
    "near_field",
    ForwardKernels::Direct,
    &[B::PARAMS, B::GEOM, B::Q, B::K4, B::V4, B::O, B::LSE],
);
pub(crate) const FAR_TILED: Entry = entry(
    "far_field",
    ForwardKernels::Tiled,
    &[B::PARAMS, B::GEOM, B::Q, B::COARSE, B::O, B::LSE],
);
pub(crate) const FAR_DIRECT: Entry = entry(
    "far_field",
    ForwardKernels::Direct,
    &[B::PARAMS, B::GEOM, B::Q, B::COARSE4, B::O, B::LSE],
);
/// Exact attention (`DensePlan`), also in both builds.
pub(crate) const DENSE_TILED: Entry = entry(
    "dense_attention",
    ForwardKernels::Tiled,
    &[B::PARAMS, B::Q, B::K, B::V, B::O, B::LSE],
);
pub(crate) const DENSE_DIRECT: Entry = entry(
    "dense_attention",
    ForwardKernels::Direct,
    &[B::PARAMS, B::Q, B::K4, B::V4, B::O, B::LSE],
);

#[cfg(test)]
pub(crate) const ENTRIES: [&Entry; 6] = [
    &NEAR_TILED,
    &NEAR_DIRECT,
    &FAR_TILED,
    &FAR_DIRECT,
    &DENSE_TILED,
    &DENSE_DIRECT,
];

/// The roles an attention dispatch reads: each tensor under its per-element and vec4 names.
pub(crate) fn tensor_roles<'a>(
    roles: Roles<'a>,
    [q, k, v]: [&'a wgpu::Buffer; 3],
    coarse: Option<&'a wgpu::Buffer>,
) -> Roles<'a> {
    roles
        .with(&[B::Q, B::Q4], q)
        .with(&[B::K, B::K4], k)
        .with(&[B::V, B::V4], v)
        .with_some(&[B::COARSE, B::COARSE4], coarse)
}

pub(crate) struct AttentionKernel {
    near: Kernel,
    far: Option<Kernel>,
}

impl AttentionKernel {
    /// The kernels of `spec`'s shape for head dim `d`, with the forward kernels the context
    /// chooses.
    pub fn new(ctx: &GpuContext, spec: Spec, d: usize, far_field: bool) -> Result<Self> {
        let spec = spec.with_forward(ctx.forward_kernels(), d);
        let direct = spec.forward == ForwardKernels::Direct;
        let (near, far) = match direct {
            true => (&NEAR_DIRECT, &FAR_DIRECT),
            false => (&NEAR_TILED, &FAR_TILED),
        };
        Ok(AttentionKernel {
            near: Kernel::new(ctx, near, spec)?,
            far: far_field.then(|| Kernel::new(ctx, far, spec)).transpose()?,
        })
    }

    /// Records the near field: one workgroup per (head, query tile).
    pub fn encode_near(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        workgroups: u64,
    ) -> Result<()> {
        self.near.dispatch(ctx, pass, roles, workgroups)
    }

    /// Records the far field (merging into the near field's O and LSE), if there are coarse
    /// levels.
    pub fn encode_far(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        workgroups: u64,
    ) -> Result<()> {
        match &self.far {
            Some(far) => far.dispatch(ctx, pass, roles, workgroups),
            None => Ok(()),
        }
    }
}
