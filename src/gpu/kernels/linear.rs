//! Rust twin of shaders/linear.wgsl: the O(n) variant's far field (`downsample_queries`),
//! computed per segment and pushed down the tree (one dispatch per level, coarsest first),
//! then merged into each query's near-field result.

use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{bind, dispatch};
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

pub(crate) struct LinearKernel {
    far: wgpu::ComputePipeline,
    merge: wgpu::ComputePipeline,
    /// Coarsest level first.
    levels: Vec<(wgpu::Buffer, u64)>,
}

/// Buffers of the O(n) variant's far field over one chunk of heads.
pub(crate) struct LinearBindings<'a> {
    pub params: &'a wgpu::Buffer,
    pub geom: &'a wgpu::Buffer,
    pub coarse: &'a wgpu::Buffer,
    pub down: &'a wgpu::Buffer,
    pub o: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
}

impl LinearKernel {
    pub fn new(ctx: &GpuContext, spec: Spec, g: &Geometry) -> Result<Self> {
        let spec = spec.linear();
        Ok(LinearKernel {
            far: ctx.pipeline(Family::Linear, "linear_far", spec)?,
            merge: ctx.pipeline(Family::Linear, "linear_merge", spec)?,
            levels: level_ranges(ctx, g),
        })
    }

    /// The downward pass: every segment's far-field result, coarsest level first.
    pub fn encode_far(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &LinearBindings<'_>,
        heads: u64,
    ) -> Result<()> {
        for (range, rows) in &self.levels {
            let group = bind(
                ctx,
                "linear_far",
                &self.far,
                &[
                    (B::PARAMS, b.params),
                    (B::GEOM, b.geom),
                    (B::COARSE, b.coarse),
                    (B::DOWN, b.down),
                    (B::ROW_RANGE, range),
                ],
            );
            let workgroups = (rows * heads).div_ceil(WG_ELEMENTS as u64);
            dispatch(ctx, pass, &self.far, &group, workgroups)?;
        }
        Ok(())
    }

    /// Merges each query's level-1 segment result into its near-field (O, LSE).
    pub fn encode_merge(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &LinearBindings<'_>,
        queries: u64,
    ) -> Result<()> {
        let group = bind(
            ctx,
            "linear_merge",
            &self.merge,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::DOWN, b.down),
                (B::O, b.o),
                (B::LSE, b.lse),
            ],
        );
        dispatch(
            ctx,
            pass,
            &self.merge,
            &group,
            queries.div_ceil(WG_ELEMENTS as u64),
        )
    }
}
