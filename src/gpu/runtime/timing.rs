//! GPU timestamps around compute passes, for benchmarks and per-kernel profiles.
//!
//! A `GpuTimer` holds one query set with a begin and an end slot per stage. Plans that are
//! given a timer record each stage in its own compute pass with timestamp writes; `read`
//! returns each stage's duration. Absent `TIMESTAMP_QUERY`, `GpuTimer::new` returns None and
//! callers fall back to wall time.

use crate::error::Result;
use crate::gpu::runtime::context::GpuContext;

pub struct GpuTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    stages: u32,
    period_ns: f64,
}

impl GpuTimer {
    /// A timer for up to `stages` passes, or None when the device has no timestamp queries.
    pub fn new(ctx: &GpuContext, stages: u32) -> Option<GpuTimer> {
        if !ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            || stages == 0
        {
            return None;
        }
        let count = 2 * stages;
        let bytes = (count as u64 * 8).next_multiple_of(wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT);
        let buffer = |label, usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(GpuTimer {
            queries: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("multipole timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: buffer(
                "timestamp resolve",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            read: buffer(
                "timestamp read",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            stages,
            period_ns: ctx.queue.get_timestamp_period() as f64,
        })
    }

    pub fn stages(&self) -> u32 {
        self.stages
    }

    /// An error unless the timer has a slot for each of `needed` passes of `what`.
    pub(crate) fn check_slots(&self, needed: usize, what: &str) -> crate::error::Result<()> {
        if (self.stages as usize) < needed {
            return Err(crate::error::FmaError::InvalidConfig(format!(
                "the timer holds {} stages; {what} has {needed}",
                self.stages
            )));
        }
        Ok(())
    }

    /// The timestamp writes of stage `i`'s pass (None past the last stage).
    pub fn pass(&self, i: u32) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        (i < self.stages).then(|| wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        })
    }

    /// Records the copy of all timestamps for `read`; call after the timed passes.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2 * self.stages, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, self.stages as u64 * 16);
    }

    /// Milliseconds of each of the first `used` stages, once the submission that resolved
    /// them has finished.
    pub async fn read(&self, ctx: &GpuContext, used: u32) -> Result<Vec<f64>> {
        let used = used.min(self.stages);
        let bytes = ctx.read_bytes(&self.read, self.stages as u64 * 16).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        Ok((0..used as usize)
            .map(|i| ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * self.period_ns / 1e6)
            .collect())
    }
}

/// A compute pass for the next stage, timed in slot `*slot` when there is a timer.
pub(crate) fn begin_pass<'e>(
    encoder: &'e mut wgpu::CommandEncoder,
    label: &str,
    timer: Option<&GpuTimer>,
    slot: &mut u32,
) -> wgpu::ComputePass<'e> {
    let timestamp_writes = timer.and_then(|t| t.pass(*slot));
    *slot += 1;
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes,
    })
}
