//! Rust twin of shaders/attention_backward.wgsl (with attention_backward_tiled.wgsl or
//! attention_backward_lanes.wgsl): per-query statistics, dQ (query-major), dK and dV of the
//! near keys (key-major) and the gradients of the coarse rows (row-major), in the layout that
//! suits the adapter (`Kernels`).

use crate::error::Result;
use crate::geometry::Dims;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{bind, dispatch};
use crate::gpu::shaders::{
    BACK_ROWS, FAR_SIBLINGS, Family, ForwardKernels, QUAD_ROWS, ROW_LANES, Spec, WG_ELEMENTS,
    binding as B,
};

pub(crate) struct AttentionBackwardKernel {
    stats: wgpu::ComputePipeline,
    /// dQ: `backward_dq_near` (Tiled, then `dq_far`) or `backward_dq_lanes` (both fields).
    dq: wgpu::ComputePipeline,
    /// `backward_dq_far`: Tiled with coarse levels.
    dq_far: Option<wgpu::ComputePipeline>,
    /// `backward_dkv_near` or `backward_dkv_near_lanes`.
    dkv_near: wgpu::ComputePipeline,
    /// `backward_dkv_far`, or `backward_dkv_far_rows` (1D) or `backward_dkv_far_quads` (2D),
    /// with coarse levels.
    dkv_far: Option<wgpu::ComputePipeline>,
    kernels: Kernels,
    /// Lanes in 2D: `dkv_far` is `backward_dkv_far_quads`.
    quads: bool,
}

/// Which backward kernels a device runs: the best layout differs between a GPU and a CPU.
/// Both give the same gradients (to rounding) and are deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernels {
    /// GPUs: rows staged in workgroup memory and shared by the workgroup's lanes; the coarse
    /// rows' gradients by 64 lanes per block of BACK_ROWS rows (scores one query per lane,
    /// gradients one channel per lane).
    Tiled,
    /// CPU adapters, which run a workgroup's lanes as SIMD loops: there a load whose address
    /// differs per lane costs one load per lane and a barrier switches every lane's context,
    /// so each lane owns its queries, keys or coarse row, and all lanes read the other side at
    /// one address from storage, a vec4 at a time: no workgroup memory, no barrier.
    Lanes,
}

impl Kernels {
    /// The backward that goes with the forward a plan runs: `Lanes` with the Direct forward
    /// (a CPU adapter and d a multiple of 4, `GpuContext::forward_kernels`), else `Tiled`.
    pub fn for_forward(forward: ForwardKernels) -> Kernels {
        match forward {
            ForwardKernels::Direct => Kernels::Lanes,
            ForwardKernels::Tiled => Kernels::Tiled,
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
    /// The kernels of `spec`'s shape for head dim `d`, in the layout of the forward the
    /// context chooses; those of the coarse rows with `far_field`, the geometry's dims.
    pub fn new(ctx: &GpuContext, spec: Spec, d: usize, far_field: Option<Dims>) -> Result<Self> {
        let spec = spec.with_forward(ctx.forward_kernels(), d);
        let pipe = |entry| ctx.pipeline(Family::AttentionBackward, entry, spec);
        let kernels = Kernels::for_forward(spec.forward);
        let quads = kernels == Kernels::Lanes && far_field == Some(Dims::Two);
        let far = |entry| far_field.map(|_| pipe(entry)).transpose();
        let (dq, dq_far, dkv_near, dkv_far) = match kernels {
            Kernels::Tiled => (
                pipe("backward_dq_near")?,
                far("backward_dq_far")?,
                pipe("backward_dkv_near")?,
                far("backward_dkv_far")?,
            ),
            Kernels::Lanes => (
                pipe("backward_dq_lanes")?,
                None,
                pipe("backward_dkv_near_lanes")?,
                far(if quads {
                    "backward_dkv_far_quads"
                } else {
                    "backward_dkv_far_rows"
                })?,
            ),
        };
        Ok(AttentionBackwardKernel {
            stats: pipe("backward_stats")?,
            dq,
            dq_far,
            dkv_near,
            dkv_far,
            kernels,
            quads,
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

    /// dQ: the near keys' share, then the coarse keys' (one workgroup per query tile; one
    /// pass for both with `Lanes`).
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
        if self.kernels == Kernels::Lanes {
            // Without coarse levels the kernel reads no coarse row (params.levels = 0), yet
            // its layout has the binding: the geometry, read-only too, stands in.
            let coarse = b.coarse.unwrap_or(b.geom);
            let group = bind(
                ctx,
                "backward_dq_lanes",
                &self.dq,
                &[
                    (B::PARAMS, b.params),
                    (B::GEOM, b.geom),
                    (B::Q4, b.q),
                    (B::D_O4, b.d_o),
                    (B::STATS, b.stats),
                    (B::DQ, b.dq),
                    (B::K4, b.k),
                    (B::V4, b.v),
                    (B::COARSE4, coarse),
                ],
            );
            return dispatch(ctx, pass, &self.dq, &group, tiles);
        }
        let near = [&common[..], &[(B::K, b.k), (B::V, b.v)]].concat();
        let group = bind(ctx, "backward_dq_near", &self.dq, &near);
        dispatch(ctx, pass, &self.dq, &group, tiles)?;
        if let (Some(dq_far), Some(coarse)) = (&self.dq_far, b.coarse) {
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
        let lanes = self.kernels == Kernels::Lanes;
        let [q, k, v, d_o] = if lanes {
            [B::Q4, B::K4, B::V4, B::D_O4]
        } else {
            [B::Q, B::K, B::V, B::D_O]
        };
        let group = bind(
            ctx,
            "backward_dkv_near",
            &self.dkv_near,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (q, b.q),
                (k, b.k),
                (v, b.v),
                (d_o, b.d_o),
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
        let (Some(dkv_far), Some(coarse), Some(dcoarse)) = (&self.dkv_far, b.coarse, b.dcoarse)
        else {
            return Ok(());
        };
        let [q, coarse_binding, d_o] = match self.kernels {
            Kernels::Lanes => [B::Q4, B::COARSE4, B::D_O4],
            Kernels::Tiled => [B::Q, B::COARSE, B::D_O],
        };
        let group = bind(
            ctx,
            "backward_dkv_far",
            dkv_far,
            &[
                (B::PARAMS, b.params),
                (B::GEOM, b.geom),
                (q, b.q),
                (coarse_binding, coarse),
                (d_o, b.d_o),
                (B::STATS, b.stats),
                (B::DCOARSE, dcoarse),
            ],
        );
        let per_head = match self.kernels {
            Kernels::Tiled => w.cells * w.p.div_ceil(BACK_ROWS as u64),
            // A quad of sibling cells per workgroup (a 2D level's side is even).
            Kernels::Lanes if self.quads => {
                let blocks = w.p.div_ceil(QUAD_ROWS as u64);
                w.level_cells.iter().map(|c| c / 4 * blocks).sum()
            }
            Kernels::Lanes => {
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
