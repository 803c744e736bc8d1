//! Rust twin of shaders/downsample.wgsl: coarse keys and values for every level in one dispatch.

use super::context::GpuContext;
use super::params::grid;
use super::shaders::{Family, Spec};
use crate::config::Downsampling;
use crate::error::Result;

pub(crate) struct DownsampleKernel {
    pipeline: wgpu::ComputePipeline,
    learned: bool,
}

/// Buffers one downsampling dispatch reads and writes.
pub(crate) struct DownsampleBindings<'a> {
    pub params: &'a wgpu::Buffer,
    pub geom: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub weights: Option<&'a wgpu::Buffer>,
    pub coarse: &'a wgpu::Buffer,
}

impl DownsampleKernel {
    pub fn new(ctx: &GpuContext, kind: Downsampling, spec: Spec) -> Result<Self> {
        let entry = match kind {
            Downsampling::Mean => "downsample_mean",
            Downsampling::Basis => "downsample_basis",
            Downsampling::Depthwise => "downsample_depthwise",
        };
        Ok(DownsampleKernel {
            pipeline: ctx.pipeline(Family::Downsample, entry, spec)?,
            learned: kind.is_learned(),
        })
    }

    /// Records the dispatch: one workgroup per (head, coarse row).
    pub fn encode(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &DownsampleBindings<'_>,
        workgroups: u64,
    ) -> Result<()> {
        let mut entries = vec![
            entry(0, b.params.as_entire_binding()),
            entry(1, b.geom.as_entire_binding()),
            entry(2, b.k.as_entire_binding()),
            entry(3, b.v.as_entire_binding()),
            entry(5, b.coarse.as_entire_binding()),
        ];
        if let (true, Some(w)) = (self.learned, b.weights) {
            entries.push(entry(4, w.as_entire_binding()));
        }
        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("downsample"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let (x, y) = grid(
            workgroups,
            ctx.limits().max_compute_workgroups_per_dimension,
        )?;
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(x, y, 1);
        Ok(())
    }
}

pub(crate) fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}
