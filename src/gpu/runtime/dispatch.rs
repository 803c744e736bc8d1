//! What every kernel call does: its uniform's words checked, its workgroups laid out on a grid
//! within the device's limits, its bind group made and its dispatch recorded.

use crate::error::{FmaError, Result};
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::shaders::{Family, ForwardKernels, ROLE_COUNT, Spec};

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

/// A kernel entry point and the binding roles (`shaders::binding`) its WGSL reads and writes,
/// declared once by its twin. A unit test compiles every build with naga and checks each
/// list against the bindings the entry point actually uses, and that every entry point of
/// every build has its declaration.
#[derive(Debug)]
pub(crate) struct Entry {
    pub family: Family,
    pub name: &'static str,
    /// The forward build the declaration holds for (`None`: every build of the family).
    pub forward: Option<ForwardKernels>,
    pub roles: &'static [u32],
}

/// The buffers of one kernel call, by role: a plan fills them once per chunk and each entry
/// binds the roles it declares.
#[derive(Clone, Copy)]
pub(crate) struct Roles<'a>([Option<&'a wgpu::Buffer>; ROLE_COUNT]);

impl<'a> Roles<'a> {
    pub fn new() -> Self {
        Roles([None; ROLE_COUNT])
    }

    /// The same roles with `buffer` at each of `roles` (one buffer may fill several, e.g. K
    /// and its vec4 view K4).
    pub fn with(mut self, roles: &[u32], buffer: &'a wgpu::Buffer) -> Self {
        for &r in roles {
            self.0[r as usize] = Some(buffer);
        }
        self
    }

    /// `with`, when there is a buffer.
    pub fn with_some(self, roles: &[u32], buffer: Option<&'a wgpu::Buffer>) -> Self {
        match buffer {
            Some(b) => self.with(roles, b),
            None => self,
        }
    }

    pub fn get(&self, role: u32) -> Option<&'a wgpu::Buffer> {
        self.0[role as usize]
    }
}

/// A pipeline with its entry's declaration.
pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub entry: &'static Entry,
}

impl Kernel {
    /// The cached pipeline of `entry` built for `spec`.
    pub fn new(ctx: &GpuContext, entry: &'static Entry, spec: Spec) -> Result<Kernel> {
        debug_assert!(entry.forward.is_none_or(|f| f == spec.forward));
        Ok(Kernel {
            pipeline: ctx.pipeline(entry.family, entry.name, spec)?,
            entry,
        })
    }

    /// Binds the entry's roles from `roles` and dispatches `workgroups` (see `dispatch`). A
    /// role left empty is this crate's bug, reported as an error rather than a wgpu panic.
    pub fn dispatch(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        workgroups: u64,
    ) -> Result<()> {
        let buffers = self
            .entry
            .roles
            .iter()
            .map(|&r| {
                roles.get(r).map(|b| (r, b)).ok_or_else(|| {
                    FmaError::Gpu(format!("{}: no buffer for binding {r}", self.entry.name))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let group = bind(ctx, self.entry.name, &self.pipeline, &buffers);
        dispatch(ctx, pass, &self.pipeline, &group, workgroups)
    }
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
