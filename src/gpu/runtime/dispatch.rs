//! What every kernel call does: its uniform's words checked, its workgroups laid out on a grid
//! within the device's limits, its bind group made and its dispatch recorded.

use crate::error::{FmaError, Result};
use crate::gpu::runtime::context::GpuContext;

/// `v` as a 32-bit word of the kernels' uniform, or `LimitExceeded` (never a silent wrap).
pub(crate) fn word(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| FmaError::LimitExceeded {
        what: format!("{what} (a 32-bit word on the GPU)"),
        needed: v as u64,
        limit: u32::MAX as u64,
        hint: "shorten the input".into(),
    })
}

/// Splits `total` workgroups over x and y so that neither exceeds the device's per-axis limit;
/// the shaders flatten (x, y) back and skip the surplus of the last row.
pub(crate) fn grid(total: u64, max_per_dim: u32) -> Result<(u32, u32)> {
    let max = max_per_dim.max(1) as u64;
    let x = total.clamp(1, max);
    let y = total.div_ceil(x).max(1);
    if y > max {
        return Err(FmaError::LimitExceeded {
            what: "dispatch".into(),
            needed: total,
            limit: max * max,
            hint: "split the batch or the sequence".into(),
        });
    }
    Ok((x as u32, y as u32))
}

/// Binds `group` and dispatches `workgroups` of `pipeline` over a 2D grid within the device's
/// per-axis limit (see `grid`).
pub(crate) fn dispatch(
    ctx: &GpuContext,
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    group: &wgpu::BindGroup,
    workgroups: u64,
) -> Result<()> {
    let (x, y) = grid(
        workgroups,
        ctx.limits().max_compute_workgroups_per_dimension,
    )?;
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, group, &[]);
    pass.dispatch_workgroups(x, y, 1);
    Ok(())
}

/// A bind group for `pipeline` from (binding, buffer) pairs, whole buffers bound.
pub(crate) fn bind(
    ctx: &GpuContext,
    label: &str,
    pipeline: &wgpu::ComputePipeline,
    buffers: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .map(|&(binding, b)| wgpu::BindGroupEntry {
            binding,
            resource: b.as_entire_binding(),
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_total_within_limits() {
        for total in [1u64, 7, 65_535, 65_536, 1_000_000] {
            let (x, y) = grid(total, 65_535).unwrap();
            assert!(x <= 65_535 && y <= 65_535);
            assert!(x as u64 * y as u64 >= total);
            assert!((x as u64) * (y as u64 - 1) < total);
        }
        assert!(grid(5_000_000_000, 65_535).is_err());
    }
}
