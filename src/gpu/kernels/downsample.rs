//! Rust twin of shaders/downsample.wgsl: coarse keys and values of every level.
//! `Mean` runs level 1 from the tokens, then each coarser level from the one below it;
//! the learned kinds run all levels from the tokens in one dispatch.

use crate::config::Downsampling;
use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{bind, dispatch};
use crate::gpu::shaders::structs::RowRange;
use crate::gpu::shaders::{Family, ROW_BLOCK, Spec, WG_ELEMENTS, binding as B};

/// One dispatch: its pipeline, its work items (rows, or cells x row blocks), and whether it
/// reads tokens (one workgroup per item) or the finer level (one invocation per row element).
struct Step {
    pipeline: wgpu::ComputePipeline,
    range: wgpu::Buffer,
    items: u64,
    from_tokens: bool,
}

pub(crate) struct DownsampleKernel {
    steps: Vec<Step>,
    learned: bool,
}

/// Buffers one downsampling pass reads and writes.
pub(crate) struct DownsampleBindings<'a> {
    pub params: &'a wgpu::Buffer,
    pub geom: &'a wgpu::Buffer,
    /// Read only in the O(n) variant (coarse queries), but bound by every token kernel.
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub weights: Option<&'a wgpu::Buffer>,
    pub coarse: &'a wgpu::Buffer,
}

impl DownsampleKernel {
    pub fn new(ctx: &GpuContext, kind: Downsampling, spec: Spec, g: &Geometry) -> Result<Self> {
        let range = |first: usize, count: usize| {
            let r = RowRange {
                first: first as u32,
                count: count as u32,
                ..Default::default()
            };
            ctx.buffer_with(
                "downsample rows",
                bytemuck::bytes_of(&r),
                wgpu::BufferUsages::UNIFORM,
            )
        };
        let p = g.p;
        let steps = match kind {
            Downsampling::Mean => {
                let tokens = ctx.pipeline(Family::Downsample, "downsample_mean", spec)?;
                let merge = ctx.pipeline(Family::Downsample, "downsample_mean_merge", spec)?;
                g.levels
                    .iter()
                    .enumerate()
                    .map(|(i, lv)| {
                        let (first, rows) = (lv.cell_offset * p, lv.groups() * p);
                        Step {
                            pipeline: if i == 0 {
                                tokens.clone()
                            } else {
                                merge.clone()
                            },
                            range: range(first, rows),
                            items: rows as u64,
                            from_tokens: i == 0,
                        }
                    })
                    .collect()
            }
            Downsampling::Basis | Downsampling::Depthwise => {
                let entry = if kind == Downsampling::Basis {
                    "downsample_basis"
                } else {
                    "downsample_depthwise"
                };
                // one workgroup per (cell, block of ROW_BLOCK rows)
                let items = g.total_cells() * p.div_ceil(ROW_BLOCK as usize);
                vec![Step {
                    pipeline: ctx.pipeline(Family::Downsample, entry, spec)?,
                    range: range(0, items),
                    items: items as u64,
                    from_tokens: true,
                }]
            }
        };
        Ok(DownsampleKernel {
            steps,
            learned: kind.is_learned(),
        })
    }

    /// Records the dispatches for `heads` heads of `d` channels, finest level first.
    pub fn encode(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &DownsampleBindings<'_>,
        heads: u64,
        d: u64,
    ) -> Result<()> {
        for step in &self.steps {
            let mut buffers = vec![
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::COARSE, b.coarse),
                (B::ROW_RANGE, &step.range),
            ];
            if step.from_tokens {
                buffers.extend([(B::Q, b.q), (B::K, b.k), (B::V, b.v)]);
            }
            if let (true, Some(w)) = (self.learned, b.weights) {
                buffers.push((B::WEIGHTS, w));
            }
            let group = bind(ctx, "downsample", &step.pipeline, &buffers);
            let workgroups = if step.from_tokens {
                step.items * heads
            } else {
                (step.items * heads * d).div_ceil(WG_ELEMENTS as u64)
            };
            dispatch(ctx, pass, &step.pipeline, &group, workgroups)?;
        }
        Ok(())
    }
}
