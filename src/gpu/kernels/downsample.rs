//! Rust twin of shaders/downsample.wgsl: coarse keys and values of every level.
//! `Mean` runs level 1 from the tokens, then each coarser level from the one below it;
//! the learned kinds run all levels from the tokens in one dispatch.

use crate::config::Downsampling;
use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{Entry, Kernel, Roles};
use crate::gpu::shaders::structs::RowRange;
use crate::gpu::shaders::{Family, ROW_BLOCK, Spec, WG_ELEMENTS, binding as B};

const fn entry(name: &'static str, roles: &'static [u32]) -> Entry {
    Entry {
        family: Family::Downsample,
        name,
        forward: None,
        roles,
    }
}

// The token kernels bind Q for the O(n) variant's coarse queries, read only there.
const TOKENS: &[u32] = &[
    B::PARAMS,
    B::GEOM,
    B::COARSE,
    B::ROW_RANGE,
    B::Q,
    B::K,
    B::V,
];
const LEARNED: &[u32] = &[
    B::PARAMS,
    B::GEOM,
    B::COARSE,
    B::ROW_RANGE,
    B::Q,
    B::K,
    B::V,
    B::WEIGHTS,
];
pub(crate) const ENTRIES: [&Entry; 4] = [
    &entry("downsample_mean", TOKENS),
    &entry(
        "downsample_mean_merge",
        &[B::PARAMS, B::GEOM, B::COARSE, B::ROW_RANGE],
    ),
    &entry("downsample_basis", LEARNED),
    &entry("downsample_depthwise", LEARNED),
];
const MEAN: &Entry = ENTRIES[0];
const MEAN_MERGE: &Entry = ENTRIES[1];
const BASIS: &Entry = ENTRIES[2];
const DEPTHWISE: &Entry = ENTRIES[3];

/// One dispatch: its pipeline, its work items (rows, or cells x row blocks), and whether it
/// reads tokens (one workgroup per item) or the finer level (one invocation per row element).
struct Step {
    kernel: Kernel,
    range: wgpu::Buffer,
    items: u64,
    from_tokens: bool,
}

pub(crate) struct DownsampleKernel {
    steps: Vec<Step>,
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
                // Level 1 from the tokens, each coarser level from the one below.
                let kernel = |i| Kernel::new(ctx, if i == 0 { MEAN } else { MEAN_MERGE }, spec);
                g.levels
                    .iter()
                    .enumerate()
                    .map(|(i, lv)| {
                        let (first, rows) = (lv.cell_offset * p, lv.groups() * p);
                        Ok(Step {
                            kernel: kernel(i)?,
                            range: range(first, rows),
                            items: rows as u64,
                            from_tokens: i == 0,
                        })
                    })
                    .collect::<Result<_>>()?
            }
            Downsampling::Basis | Downsampling::Depthwise => {
                let entry = if kind == Downsampling::Basis {
                    BASIS
                } else {
                    DEPTHWISE
                };
                // one workgroup per (cell, block of ROW_BLOCK rows)
                let items = g.total_cells() * p.div_ceil(ROW_BLOCK as usize);
                vec![Step {
                    kernel: Kernel::new(ctx, entry, spec)?,
                    range: range(0, items),
                    items: items as u64,
                    from_tokens: true,
                }]
            }
        };
        Ok(DownsampleKernel { steps })
    }

    /// Records the dispatches for `heads` heads of `d` channels, finest level first.
    pub fn encode(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        heads: u64,
        d: u64,
    ) -> Result<()> {
        for step in &self.steps {
            let roles = roles.with(&[B::ROW_RANGE], &step.range);
            let workgroups = if step.from_tokens {
                step.items * heads
            } else {
                (step.items * heads * d).div_ceil(WG_ELEMENTS as u64)
            };
            step.kernel.dispatch(ctx, pass, &roles, workgroups)?;
        }
        Ok(())
    }
}
