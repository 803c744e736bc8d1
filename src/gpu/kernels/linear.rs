//! Rust twin of shaders/linear.wgsl: the O(n) variant's far field (`downsample_queries`),
//! computed per segment and pushed down the tree (one dispatch per level, coarsest first),
//! then merged into each query's near-field result.

use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{Entry, Kernel, Roles};
use crate::gpu::shaders::structs::RowRange;
use crate::gpu::shaders::{Family, Spec, WG_ELEMENTS, binding as B};

/// A row-range uniform for the coarse rows of each level, coarsest first, with their count.
pub(crate) fn level_ranges(ctx: &GpuContext, g: &Geometry) -> Vec<(wgpu::Buffer, u64)> {
    g.levels
        .iter()
        .enumerate()
        .rev()
        .map(|(i, lv)| {
            let r = RowRange {
                first: (lv.cell_offset * g.p) as u32,
                count: (lv.groups() * g.p) as u32,
                level: i as u32,
                ..Default::default()
            };
            let buffer = ctx.buffer_with(
                "linear level rows",
                bytemuck::bytes_of(&r),
                wgpu::BufferUsages::UNIFORM,
            );
            (buffer, (lv.groups() * g.p) as u64)
        })
        .collect()
}

/// Floats per head of the downward pass's results: (o, lse) per coarse row.
pub(crate) fn down_floats(g: &Geometry, d: usize) -> usize {
    g.total_cells() * g.p * (d + 1)
}

pub(crate) const ENTRIES: [&Entry; 2] = [
    &Entry {
        family: Family::Linear,
        name: "linear_far",
        forward: None,
        roles: &[B::PARAMS, B::GEOM, B::COARSE, B::DOWN, B::ROW_RANGE],
    },
    &Entry {
        family: Family::Linear,
        name: "linear_merge",
        forward: None,
        roles: &[B::PARAMS, B::GEOM, B::DOWN, B::O, B::LSE],
    },
];

/// The O(n) variant's far field: its two kernels and each level's row range, coarsest first.
pub(crate) struct LinearKernel {
    far: Kernel,
    merge: Kernel,
    levels: Vec<(wgpu::Buffer, u64)>,
}

impl LinearKernel {
    pub fn new(ctx: &GpuContext, spec: Spec, g: &Geometry) -> Result<Self> {
        let spec = spec.linear();
        Ok(LinearKernel {
            far: Kernel::new(ctx, ENTRIES[0], spec)?,
            merge: Kernel::new(ctx, ENTRIES[1], spec)?,
            levels: level_ranges(ctx, g),
        })
    }

    /// The downward pass: each level's segments, coarsest first, merged with their parents'.
    pub fn encode_far(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        heads: u64,
    ) -> Result<()> {
        for (range, rows) in &self.levels {
            let roles = roles.with(&[B::ROW_RANGE], range);
            let workgroups = (rows * heads).div_ceil(WG_ELEMENTS as u64);
            self.far.dispatch(ctx, pass, &roles, workgroups)?;
        }
        Ok(())
    }

    /// Each query's level-1 segment result merged into its near field.
    pub fn encode_merge(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        queries: u64,
    ) -> Result<()> {
        let workgroups = queries.div_ceil(WG_ELEMENTS as u64);
        self.merge.dispatch(ctx, pass, roles, workgroups)
    }
}
