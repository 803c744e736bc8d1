//! Rust twin of shaders/linear_backward.wgsl: the O(n) variant's far-field gradients. An
//! upward pass builds each segment's aggregates of its queries (one dispatch per level, finest
//! first); then every coarse row's gradients, as a key and value and as a coarse query, go
//! into dcoarse for the downsampling backward.

use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::kernels::linear::level_ranges;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{bind, dispatch};
use crate::gpu::shaders::{Family, Spec, WG_ELEMENTS, binding as B};

/// Floats per head of the upward pass's aggregates: (A, M, B) per coarse row.
pub(crate) fn up_floats(g: &Geometry, d: usize) -> usize {
    g.total_cells() * g.p * (d + 2)
}

pub(crate) struct LinearBackwardKernel {
    up: wgpu::ComputePipeline,
    dcoarse: wgpu::ComputePipeline,
    /// Finest level first.
    levels: Vec<(wgpu::Buffer, u64)>,
    total_rows: u64,
}

/// Buffers of the O(n) variant's far-field backward over one chunk of heads.
pub(crate) struct LinearBackwardBindings<'a> {
    pub params: &'a wgpu::Buffer,
    pub geom: &'a wgpu::Buffer,
    pub coarse: &'a wgpu::Buffer,
    pub d_o: &'a wgpu::Buffer,
    pub stats: &'a wgpu::Buffer,
    pub up: &'a wgpu::Buffer,
    pub dcoarse: &'a wgpu::Buffer,
}

impl LinearBackwardKernel {
    pub fn new(ctx: &GpuContext, spec: Spec, g: &Geometry) -> Result<Self> {
        let spec = spec.linear();
        let mut levels = level_ranges(ctx, g);
        levels.reverse();
        Ok(LinearBackwardKernel {
            up: ctx.pipeline(Family::LinearBackward, "linear_up", spec)?,
            dcoarse: ctx.pipeline(Family::LinearBackward, "linear_dcoarse", spec)?,
            levels,
            total_rows: (g.total_cells() * g.p) as u64,
        })
    }

    /// The upward pass, then every coarse row's gradients (written, not added).
    pub fn encode(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &LinearBackwardBindings<'_>,
        heads: u64,
    ) -> Result<()> {
        for (range, rows) in &self.levels {
            let group = bind(
                ctx,
                "linear_up",
                &self.up,
                &[
                    (B::PARAMS, b.params),
                    (B::GEOM, b.geom),
                    (B::D_O, b.d_o),
                    (B::STATS, b.stats),
                    (B::UP, b.up),
                    (B::ROW_RANGE, range),
                ],
            );
            let workgroups = (rows * heads).div_ceil(WG_ELEMENTS as u64);
            dispatch(ctx, pass, &self.up, &group, workgroups)?;
        }
        let group = bind(
            ctx,
            "linear_dcoarse",
            &self.dcoarse,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::COARSE, b.coarse),
                (B::UP, b.up),
                (B::DCOARSE, b.dcoarse),
            ],
        );
        let workgroups = (self.total_rows * heads).div_ceil(WG_ELEMENTS as u64);
        dispatch(ctx, pass, &self.dcoarse, &group, workgroups)
    }
}
