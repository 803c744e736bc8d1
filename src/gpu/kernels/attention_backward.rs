//! Rust twin of shaders/attention_backward.wgsl (with attention_backward_tiled.wgsl or
//! attention_backward_lanes.wgsl): per-query statistics, dQ (query-major), dK and dV of the
//! near keys (key-major) and the gradients of the coarse rows (row-major), in the layout that
//! suits the adapter (`Kernels`).

use crate::error::Result;
use crate::geometry::Dims;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{Entry, Kernel, Roles};
use crate::gpu::shaders::{
    BACK_ROWS, FAR_SIBLINGS, Family, ForwardKernels, QUAD_ROWS, ROW_LANES, Spec, WG_ELEMENTS,
    binding as B,
};

const fn entry(
    name: &'static str,
    forward: Option<ForwardKernels>,
    roles: &'static [u32],
) -> Entry {
    Entry {
        family: Family::AttentionBackward,
        name,
        forward,
        roles,
    }
}

const TILED: Option<ForwardKernels> = Some(ForwardKernels::Tiled);
// The Lanes kernels are in the Direct build, and read Q, K, V, dO and the coarse rows as
// vec4 rows.
const LANES: Option<ForwardKernels> = Some(ForwardKernels::Direct);

const STATS: Entry = entry(
    "backward_stats",
    None,
    &[B::PARAMS, B::D_O, B::O, B::LSE, B::STATS_OUT],
);
const DQ_NEAR: Entry = entry(
    "backward_dq_near",
    TILED,
    &[
        B::PARAMS,
        B::GEOM,
        B::Q,
        B::D_O,
        B::STATS,
        B::DQ,
        B::K,
        B::V,
    ],
);
const DQ_FAR: Entry = entry(
    "backward_dq_far",
    TILED,
    &[B::PARAMS, B::GEOM, B::Q, B::D_O, B::STATS, B::DQ, B::COARSE],
);
const DKV_NEAR: Entry = entry(
    "backward_dkv_near",
    TILED,
    &[
        B::PARAMS,
        B::GEOM,
        B::Q,
        B::K,
        B::V,
        B::D_O,
        B::STATS,
        B::DK,
        B::DV,
    ],
);
const DKV_FAR: Entry = entry(
    "backward_dkv_far",
    TILED,
    &[
        B::PARAMS,
        B::GEOM,
        B::Q,
        B::COARSE,
        B::D_O,
        B::STATS,
        B::DCOARSE,
    ],
);
const DQ_LANES: Entry = entry(
    "backward_dq_lanes",
    LANES,
    &[
        B::PARAMS,
        B::GEOM,
        B::Q4,
        B::D_O4,
        B::STATS,
        B::DQ,
        B::K4,
        B::V4,
        B::COARSE4,
    ],
);
const DKV_NEAR_LANES: Entry = entry(
    "backward_dkv_near_lanes",
    LANES,
    &[
        B::PARAMS,
        B::GEOM,
        B::Q4,
        B::K4,
        B::V4,
        B::D_O4,
        B::STATS,
        B::DK,
        B::DV,
    ],
);
const DKV_FAR_LANES: &[u32] = &[
    B::PARAMS,
    B::GEOM,
    B::Q4,
    B::COARSE4,
    B::D_O4,
    B::STATS,
    B::DCOARSE,
];
const DKV_FAR_ROWS: Entry = entry("backward_dkv_far_rows", LANES, DKV_FAR_LANES);
const DKV_FAR_QUADS: Entry = entry("backward_dkv_far_quads", LANES, DKV_FAR_LANES);

#[cfg(test)]
pub(crate) const ENTRIES: [&Entry; 9] = [
    &STATS,
    &DQ_NEAR,
    &DQ_FAR,
    &DKV_NEAR,
    &DKV_FAR,
    &DQ_LANES,
    &DKV_NEAR_LANES,
    &DKV_FAR_ROWS,
    &DKV_FAR_QUADS,
];

pub(crate) struct AttentionBackwardKernel {
    stats: Kernel,
    /// dQ: `backward_dq_near` (Tiled, then `dq_far`) or `backward_dq_lanes` (both fields).
    dq: Kernel,
    /// `backward_dq_far`: Tiled with coarse levels.
    dq_far: Option<Kernel>,
    /// `backward_dkv_near` or `backward_dkv_near_lanes`.
    dkv_near: Kernel,
    /// `backward_dkv_far`, or `backward_dkv_far_rows` (1D) or `backward_dkv_far_quads` (2D),
    /// with coarse levels.
    dkv_far: Option<Kernel>,
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
        let kernel = |entry| Kernel::new(ctx, entry, spec);
        let kernels = Kernels::for_forward(spec.forward);
        let quads = kernels == Kernels::Lanes && far_field == Some(Dims::Two);
        let far = |entry| far_field.map(|_| kernel(entry)).transpose();
        let (dq, dq_far, dkv_near, dkv_far) = match kernels {
            Kernels::Tiled => (
                kernel(&DQ_NEAR)?,
                far(&DQ_FAR)?,
                kernel(&DKV_NEAR)?,
                far(&DKV_FAR)?,
            ),
            Kernels::Lanes => (
                kernel(&DQ_LANES)?,
                None,
                kernel(&DKV_NEAR_LANES)?,
                far(if quads { &DKV_FAR_QUADS } else { &DKV_FAR_ROWS })?,
            ),
        };
        Ok(AttentionBackwardKernel {
            stats: kernel(&STATS)?,
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
        roles: &Roles<'_>,
        w: &BackwardWork,
    ) -> Result<()> {
        let workgroups = (w.heads * w.n).div_ceil(WG_ELEMENTS as u64);
        self.stats.dispatch(ctx, pass, roles, workgroups)
    }

    /// dQ: the near keys' share, then the coarse keys' (one workgroup per query tile; one
    /// pass for both with `Lanes`).
    pub fn encode_dq(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        w: &BackwardWork,
    ) -> Result<()> {
        let tiles = w.query_tiles * w.heads;
        // Without coarse levels backward_dq_lanes reads no coarse row (params.levels = 0),
        // yet its layout has the binding: the geometry, read-only too, stands in.
        let roles = match (roles.get(B::COARSE4), roles.get(B::GEOM)) {
            (None, Some(geom)) => roles.with(&[B::COARSE4], geom),
            _ => *roles,
        };
        self.dq.dispatch(ctx, pass, &roles, tiles)?;
        if let Some(dq_far) = &self.dq_far {
            dq_far.dispatch(ctx, pass, &roles, tiles)?;
        }
        Ok(())
    }

    /// dK and dV of the near field (one workgroup per key tile).
    pub fn encode_dkv_near(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        w: &BackwardWork,
    ) -> Result<()> {
        self.dkv_near
            .dispatch(ctx, pass, roles, w.query_tiles * w.heads)
    }

    /// Gradients of every coarse row: one workgroup per cell and block of BACK_ROWS rows
    /// (`Tiled`), or per block of neighbouring cells' rows (`Lanes`, as the shader counts).
    pub fn encode_dkv_far(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        roles: &Roles<'_>,
        w: &BackwardWork,
    ) -> Result<()> {
        let Some(dkv_far) = &self.dkv_far else {
            return Ok(());
        };
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
        dkv_far.dispatch(ctx, pass, roles, per_head * w.heads)
    }
}
