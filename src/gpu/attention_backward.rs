//! Rust twin of shaders/attention_backward.wgsl: per-query statistics, dQ (query-major), dK and
//! dV of the near keys (key-major) and the gradients of the coarse rows (row-major).

use super::context::GpuContext;
use super::params::{bind, dispatch};
use super::shaders::{BACK_ROWS, FAR_SIBLINGS, Family, ROW_LANES, Spec, WG_ELEMENTS, binding as B};
use crate::error::Result;

pub(crate) struct AttentionBackwardKernel {
    stats: wgpu::ComputePipeline,
    dq_near: wgpu::ComputePipeline,
    dkv_near: wgpu::ComputePipeline,
    /// `backward_dq_far` and the coarse rows' kernel, when there are coarse levels.
    far: Option<(wgpu::ComputePipeline, wgpu::ComputePipeline)>,
    /// Which coarse rows' kernel `far` holds.
    far_rows: FarRows,
}

/// How the coarse rows' gradients are computed; the best differs between a GPU and a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FarRows {
    /// `backward_dkv_far`: 64 lanes per block of BACK_ROWS rows, the query tiles staged in
    /// workgroup memory (scores one query per lane, gradients one channel per lane).
    Tiled,
    /// `backward_dkv_far_rows`: one lane per row, no workgroup memory and no barrier, every
    /// query read at one address by all lanes (CPU adapters, whose lanes are SIMD loops).
    Lanes,
}

impl FarRows {
    /// `Lanes` on a CPU adapter (lavapipe, SwiftShader, WARP), `Tiled` on anything else.
    pub fn for_adapter(info: &wgpu::AdapterInfo) -> FarRows {
        if info.device_type == wgpu::DeviceType::Cpu {
            FarRows::Lanes
        } else {
            FarRows::Tiled
        }
    }
}

/// Buffers of one backward dispatch over a chunk of heads. `coarse` and `dcoarse` are None
/// without coarse levels.
pub(crate) struct BackwardBindings<'a> {
    pub params: &'a wgpu::Buffer,
    pub geom: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub o: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
    pub d_o: &'a wgpu::Buffer,
    pub stats: &'a wgpu::Buffer,
    pub dq: &'a wgpu::Buffer,
    pub dk: &'a wgpu::Buffer,
    pub dv: &'a wgpu::Buffer,
    pub coarse: Option<&'a wgpu::Buffer>,
    pub dcoarse: Option<&'a wgpu::Buffer>,
}

/// Work items of one chunk: query (and key) tiles, and coarse cells, per head.
pub(crate) struct BackwardWork {
    pub heads: u64,
    pub n: u64,
    pub query_tiles: u64,
    pub cells: u64,
    pub p: u64,
    /// Cells of each coarse level.
    pub level_cells: Vec<u64>,
}

impl AttentionBackwardKernel {
    pub fn new(ctx: &GpuContext, spec: Spec, far_field: bool) -> Result<Self> {
        let pipe = |entry| ctx.pipeline(Family::AttentionBackward, entry, spec);
        let far_rows = FarRows::for_adapter(&ctx.info);
        let rows_entry = match far_rows {
            FarRows::Tiled => "backward_dkv_far",
            FarRows::Lanes => "backward_dkv_far_rows",
        };
        Ok(AttentionBackwardKernel {
            stats: pipe("backward_stats")?,
            dq_near: pipe("backward_dq_near")?,
            dkv_near: pipe("backward_dkv_near")?,
            far: if far_field {
                Some((pipe("backward_dq_far")?, pipe(rows_entry)?))
            } else {
                None
            },
            far_rows,
        })
    }

    /// (LSE_i, D_i) per query: one invocation per row.
    pub fn encode_stats(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &BackwardBindings<'_>,
        w: &BackwardWork,
    ) -> Result<()> {
        let group = bind(
            ctx,
            "backward_stats",
            &self.stats,
            &[
                (B::PARAMS, b.params),
                (B::D_O, b.d_o),
                (B::O, b.o),
                (B::LSE, b.lse),
                (B::STATS_OUT, b.stats),
            ],
        );
        let workgroups = (w.heads * w.n).div_ceil(WG_ELEMENTS as u64);
        dispatch(ctx, pass, &self.stats, &group, workgroups)
    }

    /// dQ: the near keys' share, then the coarse keys' (one workgroup per query tile).
    pub fn encode_dq(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &BackwardBindings<'_>,
        w: &BackwardWork,
    ) -> Result<()> {
        let tiles = w.query_tiles * w.heads;
        let common = [
            (B::PARAMS, b.params),
            (B::GEOM, b.geom),
            (B::Q, b.q),
            (B::D_O, b.d_o),
            (B::STATS, b.stats),
            (B::DQ, b.dq),
        ];
        let near = [&common[..], &[(B::K, b.k), (B::V, b.v)]].concat();
        let group = bind(ctx, "backward_dq_near", &self.dq_near, &near);
        dispatch(ctx, pass, &self.dq_near, &group, tiles)?;
        if let (Some((dq_far, _)), Some(coarse)) = (&self.far, b.coarse) {
            let far = [&common[..], &[(B::COARSE, coarse)]].concat();
            let group = bind(ctx, "backward_dq_far", dq_far, &far);
            dispatch(ctx, pass, dq_far, &group, tiles)?;
        }
        Ok(())
    }

    /// dK and dV of the near field (one workgroup per key tile).
    pub fn encode_dkv_near(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &BackwardBindings<'_>,
        w: &BackwardWork,
    ) -> Result<()> {
        let group = bind(
            ctx,
            "backward_dkv_near",
            &self.dkv_near,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::Q, b.q),
                (B::K, b.k),
                (B::V, b.v),
                (B::D_O, b.d_o),
                (B::STATS, b.stats),
                (B::DK, b.dk),
                (B::DV, b.dv),
            ],
        );
        dispatch(ctx, pass, &self.dkv_near, &group, w.query_tiles * w.heads)
    }

    /// Gradients of every coarse row: one workgroup per cell and block of BACK_ROWS rows
    /// (`Tiled`), or per block of neighbouring cells' rows (`Lanes`, as the shader counts).
    pub fn encode_dkv_far(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        b: &BackwardBindings<'_>,
        w: &BackwardWork,
    ) -> Result<()> {
        let (Some((_, dkv_far)), Some(coarse), Some(dcoarse)) = (&self.far, b.coarse, b.dcoarse)
        else {
            return Ok(());
        };
        let group = bind(
            ctx,
            "backward_dkv_far",
            dkv_far,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (B::Q, b.q),
                (B::COARSE, coarse),
                (B::D_O, b.d_o),
                (B::STATS, b.stats),
                (B::DCOARSE, dcoarse),
            ],
        );
        let per_head = match self.far_rows {
            FarRows::Tiled => w.cells * w.p.div_ceil(BACK_ROWS as u64),
            FarRows::Lanes => {
                let rows = w.p.min(ROW_LANES as u64);
                let cells = (ROW_LANES as u64 / rows).min(FAR_SIBLINGS as u64);
                let blocks = w.p.div_ceil(rows);
                w.level_cells
                    .iter()
                    .map(|c| c.div_ceil(cells) * blocks)
                    .sum()
            }
        };
        dispatch(ctx, pass, dkv_far, &group, per_head * w.heads)
    }
}
