//! Rust twin of shaders/linear_backward.wgsl: the O(n) variant's far-field gradients. An
//! upward pass builds each segment's aggregates of its queries (one dispatch per level, finest
//! first); then every coarse row's gradients, as a key and value and as a coarse query, go
//! into dcoarse for the downsampling backward.

use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::kernels::linear::level_ranges;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{Entry, Kernel, Roles};
use crate::gpu::shaders::{Family, Spec, WG_ELEMENTS, binding as B};

/// Floats per head of the upward pass's aggregates: (A, M, B) per coarse row.
pub(crate) fn up_floats(g: &Geometry, d: usize) -> usize {
    g.total_cells() * g.p * (d + 2)
}

pub(crate) const ENTRIES: [&Entry; 2] = [
    &Entry {
        family: Family::LinearBackward,
        name: "linear_up",
        forward: None,
        roles: &[B::PARAMS, B::GEOM, B::D_O, B::STATS, B::UP, B::ROW_RANGE],
    },
    &Entry {
        family: Family::LinearBackward,
        name: "linear_dcoarse",
        forward: None,
        roles: &[B::PARAMS, B::GEOM, B::COARSE, B::UP, B::DCOARSE],
    },
];

/// The O(n) variant's far-field backward: the upward pass's kernel and level ranges (finest
/// first), and the coarse rows' gradients.
pub(crate) struct LinearBackwardKernel {
    up: Kernel,
    dcoarse: Kernel,
    levels: Vec<(wgpu::Buffer, u64)>,
    total_rows: u64,
}

impl LinearBackwardKernel {
    pub fn new(ctx: &GpuContext, spec: Spec, g: &Geometry) -> Result<Self> {
        let spec = spec.linear();
        let mut levels = level_ranges(ctx, g);
        levels.reverse();
        Ok(LinearBackwardKernel {
            up: Kernel::new(ctx, ENTRIES[0], spec)?,
            dcoarse: Kernel::new(ctx, ENTRIES[1], spec)?,
            levels,
            total_rows: (g.total_cells() * g.p) as u64,
        })
    }

    /// The upward pass, then every coarse row's gradients into `B::DCOARSE`.
    pub fn encode(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        heads: u64,
    ) -> Result<()> {
        for (range, rows) in &self.levels {
            let roles = roles.with(&[B::ROW_RANGE], range);
            let workgroups = (rows * heads).div_ceil(WG_ELEMENTS as u64);
            self.up.dispatch(ctx, pass, &roles, workgroups)?;
        }
        let workgroups = (self.total_rows * heads).div_ceil(WG_ELEMENTS as u64);
        self.dcoarse.dispatch(ctx, pass, roles, workgroups)
    }
}
