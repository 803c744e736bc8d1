//! `FmaPlan::new` in steps: check the options against the adapter, pack the weights, budget
//! each binding against the device's limits, fill the uniform, then allocate and build the
//! kernels. Every refusal happens before the first GPU allocation.

use std::sync::OnceLock;

use super::FmaPlan;
use crate::config::{FmaConfig, Precision, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::geometry::tables::GeomTables;
use crate::gpu::kernels::attention::AttentionKernel;
use crate::gpu::kernels::downsample::DownsampleKernel;
use crate::gpu::kernels::linear::{LinearKernel, down_floats};
use crate::gpu::runtime::chunks::{Chunks, fits_binding};
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{grid, word};
use crate::gpu::runtime::host::{self, HostSlot};
use crate::gpu::shaders::structs::Params;
use crate::gpu::shaders::{MAX_LEVELS, Spec};
use crate::weights::{DownsampleWeights, LevelWeights};

/// The weights packed as the kernels read them and where wv, bk, bv, wq and bq start.
type Packed = (Vec<f32>, [u32; 5]);

/// What one chunk of heads needs, in bytes per head, and how many heads a chunk holds.
struct Budget {
    coarse_head_bytes: u64,
    chunk_heads: usize,
    total_rows: usize,
    tiles_per_cell: usize,
}

impl FmaPlan {
    pub(super) fn build(
        ctx: &GpuContext,
        shape: Shape,
        config: &FmaConfig,
        weights: Option<&DownsampleWeights>,
    ) -> Result<FmaPlan> {
        shape.validate()?;
        let geometry = Geometry::new(shape.n, config)?;
        let spec = specialise(ctx, shape, config, &geometry)?;
        let packed = pack_checked(config, &geometry, shape.d, weights)?;
        let (tables, budget) = budget(ctx, shape, config, &geometry, spec, packed.as_ref())?;
        let bases = packed.as_ref().map_or([0; 5], |(_, b)| *b);
        let base = params(shape, config, &geometry, &tables, bases, &budget)?;

        let chunks = Chunks::new(ctx, "fma params", shape, budget.chunk_heads, base)
            .with_precision(config.precision);
        let geom = ctx.buffer_with(
            "fma geometry",
            bytemuck::cast_slice(&tables.data),
            wgpu::BufferUsages::STORAGE,
        );
        let weights_len = packed.as_ref().map_or(0, |(w, _)| w.len());
        let weights = packed.map(|(w, _)| {
            ctx.buffer_with(
                "fma weights",
                bytemuck::cast_slice(&w),
                wgpu::BufferUsages::STORAGE,
            )
        });
        let has_far = geometry.num_levels() > 0;
        let queries = config.downsample_queries;
        let coarse = has_far.then(|| {
            let bytes = budget.coarse_head_bytes * budget.chunk_heads as u64;
            host::storage(ctx, "fma coarse", bytes, false)
        });
        let downsample = match has_far {
            true => Some(DownsampleKernel::new(
                ctx,
                config.downsampling,
                spec,
                &geometry,
            )?),
            false => None,
        };
        // The O(n) variant replaces far_field by its own far field.
        let attention = AttentionKernel::new(ctx, spec, shape.d, has_far && !queries)?;
        let linear = if has_far && queries {
            let bytes = down_floats(&geometry, shape.d) * budget.chunk_heads * 4;
            let down = host::storage(ctx, "fma linear downward results", bytes as u64, false);
            Some((LinearKernel::new(ctx, spec, &geometry)?, down))
        } else {
            None
        };
        ctx.take_error()?;
        Ok(FmaPlan {
            shape,
            query_tiles: geometry.fine_cells() * budget.tiles_per_cell,
            geometry,
            config: config.clone(),
            spec,
            chunks,
            geom,
            weights,
            weight_bases: bases,
            weights_len,
            coarse,
            downsample,
            attention,
            linear,
            host: HostSlot::default(),
            backward: OnceLock::new(),
        })
    }
}

/// The kernels' specialisation, once the options are known to run on this adapter.
fn specialise(
    ctx: &GpuContext,
    shape: Shape,
    config: &FmaConfig,
    geometry: &Geometry,
) -> Result<Spec> {
    let f16 = config.precision == Precision::F16;
    if config.downsample_queries && f16 {
        return Err(FmaError::InvalidConfig(
            "downsample_queries (the O(n) variant) runs in f32 on the GPU so far: use Precision::F32".into(),
        ));
    }
    if f16 && !ctx.device.features().contains(wgpu::Features::SHADER_F16) {
        return Err(FmaError::MissingFeature {
            feature: "SHADER_F16".into(),
            needed_by: "Precision::F16".into(),
            hint: "use Precision::F32, which every adapter runs".into(),
        });
    }
    if geometry.num_levels() > MAX_LEVELS {
        return Err(FmaError::LimitExceeded {
            what: "coarse levels".into(),
            needed: geometry.num_levels() as u64,
            limit: MAX_LEVELS as u64,
            hint: "use a larger m".into(),
        });
    }
    Ok(Spec::for_shape(shape.d, geometry.cell_tokens())
        .ok_or(FmaError::UnsupportedHeadDim(shape.d))?
        .with_f16(f16))
}

/// The learned kinds' weights, checked whenever given and packed once there is a coarse
/// level; `None` for `Mean` and for inputs too short to have a coarse level.
fn pack_checked(
    config: &FmaConfig,
    geometry: &Geometry,
    d: usize,
    weights: Option<&DownsampleWeights>,
) -> Result<Option<Packed>> {
    let kind = config.downsampling;
    match (kind.is_learned(), weights) {
        (false, _) => Ok(None),
        (true, Some(w)) => {
            let groups = geometry.group_tokens();
            w.validate(kind, geometry.p, d, &groups, config.downsample_queries)?;
            Ok((geometry.num_levels() > 0).then(|| pack_weights(w)))
        }
        (true, None) if geometry.num_levels() == 0 => Ok(None),
        (true, None) => Err(FmaError::Weights(format!(
            "{kind:?} downsampling needs weights for {} levels (DownsampleWeights::mean_init gives the initial ones)",
            geometry.num_levels()
        ))),
    }
}

/// Every binding against the device: one head of each per-head buffer, the geometry tables
/// (built here, since their size follows from the head's) and the weights; then how many
/// heads a chunk holds, and the dispatch grids that chunk needs.
fn budget(
    ctx: &GpuContext,
    shape: Shape,
    config: &FmaConfig,
    geometry: &Geometry,
    spec: Spec,
    packed: Option<&Packed>,
) -> Result<(GeomTables, Budget)> {
    let check = |what: &str, bytes: u64, hint: &str| fits_binding(ctx, what, bytes, hint);
    let (n, d) = (shape.n as u64, shape.d as u64);
    let value_bytes = config.precision.bytes() as u64;
    let total_rows = geometry.total_cells() * geometry.p;
    let head_bytes = n * d * value_bytes;
    // Storage bindings are sized in whole 4-byte words. The O(n) variant adds the coarse
    // queries, and per coarse row its downward result (o, lse) and its backward's aggregates
    // (A, M, B).
    let queries = config.downsample_queries;
    let coarse_parts = if queries { 3 } else { 2 };
    let coarse_head_bytes =
        (coarse_parts * total_rows as u64 * d * value_bytes).next_multiple_of(4);
    let linear_head_bytes = match queries {
        true => total_rows as u64 * (d + 2) * 4,
        false => 0,
    };
    // The backward's (LSE, D) per query is 8 n bytes a head: more than Q's when d = 1.
    let stats_head_bytes = n * 8;
    let per_head = head_bytes
        .max(coarse_head_bytes)
        .max(stats_head_bytes)
        .max(linear_head_bytes);
    check(
        "one head of Q, K, V, O, of the coarse rows or of the backward's statistics",
        per_head,
        "shorten the input, or use a smaller p",
    )?;
    let tables = GeomTables::build(geometry, config.multiplicity, config.downsampling, shape.d);
    check(
        "the geometry tables",
        tables.data.len() as u64 * 4,
        "use a larger m",
    )?;
    if let Some((w, _)) = packed {
        let hint = "use a larger m or a smaller p";
        check("the downsampling weights", w.len() as u64 * 4, hint)?;
    }
    let chunk_heads = Chunks::heads_per_chunk(ctx, shape, per_head);
    let tiles_per_cell = geometry.cell_tokens() / spec.query_tile as usize;
    let max_dim = ctx.limits().max_compute_workgroups_per_dimension;
    let query_tiles = geometry.fine_cells() * tiles_per_cell;
    grid((query_tiles * chunk_heads) as u64, max_dim)?;
    grid((total_rows * chunk_heads) as u64, max_dim)?;
    let budget = Budget {
        coarse_head_bytes,
        chunk_heads,
        total_rows,
        tiles_per_cell,
    };
    Ok((tables, budget))
}

/// The uniform every kernel of the plan reads; `bh` is set per chunk.
fn params(
    shape: Shape,
    config: &FmaConfig,
    geometry: &Geometry,
    tables: &GeomTables,
    bases: [u32; 5],
    budget: &Budget,
) -> Result<Params> {
    let g = geometry;
    let coarse_values = budget.chunk_heads * budget.total_rows * shape.d;
    Ok(Params {
        n: word("n", shape.n)?,
        d: word("d", shape.d)?,
        bh: 0,
        p: word("p", g.p)?,
        real_h: word("the image height", g.real_h)?,
        real_w: word("the image width (1D: n)", g.real_w)?,
        cell_h: word("the fine cell height", g.cell_h)?,
        cell_w: word("the fine cell width", g.cell_w)?,
        cells_x: word("fine cells per row", g.cells_x())?,
        fine_cells: word("fine cells", g.fine_cells())?,
        levels: word("coarse levels", g.num_levels())?,
        causal: config.causal as u32,
        scale: config.scale_for(shape.d),
        near_offsets: tables.near_offsets,
        near_entries: tables.near_entries,
        far_offsets: tables.far_offsets,
        far_entries: tables.far_entries,
        parent: tables.parent,
        rows: tables.rows,
        level_table: tables.levels,
        total_rows: word("coarse rows", budget.total_rows)?,
        wv_base: bases[0],
        bk_base: bases[1],
        bv_base: bases[2],
        tiles_per_cell: word("query tiles per cell", budget.tiles_per_cell)?,
        coarse_v_base: word("coarse key values per chunk of heads", coarse_values)?,
        children: tables.children,
        children_per_row: tables.children_per_row,
        near_t_offsets: tables.near_t_offsets,
        near_t_entries: tables.near_t_entries,
        far_t_offsets: tables.far_t_offsets,
        far_t_entries: tables.far_t_entries,
        queries: config.downsample_queries as u32,
        wq_base: bases[3],
        bq_base: bases[4],
        seg_parent: tables.seg_parent,
    })
}

/// The weights packed as the kernels read them (`DownsampleWeights::packed`, never empty, so
/// that it can be bound), and where wv, bk, bv, wq and bq start.
pub(crate) fn pack_weights(w: &DownsampleWeights) -> Packed {
    let total = |part: fn(&LevelWeights) -> usize| -> u32 {
        w.levels.iter().map(part).sum::<usize>() as u32
    };
    let sizes = [
        total(|l| l.wk.len()),
        total(|l| l.wv.len()),
        total(|l| l.bk.len()),
        total(|l| l.bv.len()),
        total(|l| l.wq.len()),
    ];
    let mut bases = [0u32; 5];
    let mut at = 0;
    for (base, size) in bases.iter_mut().zip(sizes) {
        at += size;
        *base = at;
    }
    let mut data = w.packed();
    if data.is_empty() {
        data.push(0.0);
    }
    (data, bases)
}
