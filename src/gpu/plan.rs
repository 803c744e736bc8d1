//! The FMA dispatcher: a plan fixes the shape and options, uploads the geometry tables and
//! weights once, and encodes the forward pass (downsample, near field, far field) into one
//! compute pass. Inputs too large for one storage binding are split over batch x heads.

use std::sync::OnceLock;

use super::attention::{AttentionBindings, AttentionKernel};
use super::backward::Backward;
use super::buffers::{self, Slot};
use super::chunks::{Chunk, Chunks, fits_binding};
use super::context::GpuContext;
use super::downsample::{DownsampleBindings, DownsampleKernel};
use super::host::{self, ForwardStaging, HostSlot};
use super::linear::{LinearBindings, LinearKernel, down_floats};
use super::params::{Params, grid, word};
use super::shaders::{MAX_LEVELS, Spec};
use super::timing::GpuTimer;
use crate::config::{DownsampleWeights, FmaConfig, Precision, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::geometry::tables::GeomTables;
use crate::reference::Output;

/// GPU buffers of one forward pass over the plan's whole shape: q, k, v of [batch, heads, n, d]
/// (STORAGE usage), o of the same shape and lse of [batch, heads, n] (STORAGE, written).
/// Q, K, V and O hold the plan's precision (f32, or f16 with `Precision::F16`: 2 bytes a
/// value, the buffer's size rounded up to 4 bytes); LSE is always f32.
pub struct AttentionIo<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub o: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
}

impl AttentionIo<'_> {
    /// Checks the buffers against a plan's whole shape: sizes, STORAGE usage, and outputs
    /// distinct from the inputs.
    pub(crate) fn check(&self, shape: Shape, precision: Precision) -> Result<()> {
        let (e, n) = (
            tensor_bytes(shape.elements(), precision),
            (shape.bh() * shape.n * 4) as u64,
        );
        buffers::check(&[
            Slot::read("q", self.q, e),
            Slot::read("k", self.k, e),
            Slot::read("v", self.v, e),
            Slot::written("o", self.o, e),
            Slot::written("lse", self.lse, n),
        ])
    }
}

/// Bytes of a GPU tensor of `values` values at `precision`: rounded up to 4, wgpu's copy
/// granularity, so an odd count of f16 values still copies whole.
pub(crate) fn tensor_bytes(values: usize, precision: Precision) -> u64 {
    ((values * precision.bytes()) as u64).next_multiple_of(4)
}

/// A prepared FMA forward (and backward) pass for one shape and configuration. Build it once,
/// run it often.
pub struct FmaPlan {
    pub(super) shape: Shape,
    pub(super) geometry: Geometry,
    pub(super) config: FmaConfig,
    pub(super) spec: Spec,
    pub(super) chunks: Chunks,
    /// Attention workgroups per head: fine cells x query tiles per cell.
    pub(super) query_tiles: usize,
    pub(super) geom: wgpu::Buffer,
    pub(super) weights: Option<wgpu::Buffer>,
    /// Where wv, bk, bv, wq and bq start in the packed weights, and their total length.
    pub(super) weight_bases: [u32; 5],
    pub(super) weights_len: usize,
    pub(super) coarse: Option<wgpu::Buffer>,
    pub(super) downsample: Option<DownsampleKernel>,
    attention: AttentionKernel,
    /// The O(n) variant's far field and its per-segment results (with coarse levels only).
    linear: Option<(LinearKernel, wgpu::Buffer)>,
    host: HostSlot<ForwardStaging>,
    /// The backward kernels and buffers, made by the first backward call.
    pub(super) backward: OnceLock<Backward>,
}

impl FmaPlan {
    /// Prepares FMA over `shape`, whose n tokens form a sequence or an image as
    /// `config.layout` says. `weights` are required for the learned
    /// downsampling kinds (see `DownsampleWeights::mean_init` for the initialisation).
    pub fn new(
        ctx: &GpuContext,
        shape: Shape,
        config: &FmaConfig,
        weights: Option<&DownsampleWeights>,
    ) -> Result<FmaPlan> {
        // In error scopes, so that a device shared through `from_device` reports the plan's
        // errors (out of memory, most likely) here rather than to its owner's handler.
        let plan = ctx.scoped(|| Self::build(ctx, shape, config, weights))?;
        ctx.take_error()?;
        Ok(plan)
    }

    fn build(
        ctx: &GpuContext,
        shape: Shape,
        config: &FmaConfig,
        weights: Option<&DownsampleWeights>,
    ) -> Result<FmaPlan> {
        shape.validate()?;
        let geometry = Geometry::new(shape.n, config)?;
        let d = shape.d;
        let f16 = config.precision == Precision::F16;
        let queries = config.downsample_queries;
        if queries && f16 {
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
        let spec = Spec::for_shape(d, geometry.cell_tokens())
            .ok_or(FmaError::UnsupportedHeadDim(d))?
            .with_f16(f16);
        let value_bytes = config.precision.bytes() as u64;
        let kind = config.downsampling;
        // Weights given are always checked; they are needed once there is a coarse level.
        let packed_weights = match (kind.is_learned(), weights) {
            (false, _) => None,
            (true, Some(w)) => {
                w.validate(
                    kind,
                    geometry.p,
                    d,
                    &geometry.group_tokens(),
                    config.downsample_queries,
                )?;
                (geometry.num_levels() > 0).then(|| pack_weights(w))
            }
            (true, None) if geometry.num_levels() == 0 => None,
            (true, None) => {
                return Err(FmaError::Weights(format!(
                    "{kind:?} downsampling needs weights for {} levels (DownsampleWeights::mean_init gives the initial ones)",
                    geometry.num_levels()
                )));
            }
        };
        if geometry.num_levels() > MAX_LEVELS {
            return Err(FmaError::LimitExceeded {
                what: "coarse levels".into(),
                needed: geometry.num_levels() as u64,
                limit: MAX_LEVELS as u64,
                hint: "use a larger m".into(),
            });
        }

        // Every binding must fit the device; split the heads when the tensors do not.
        let limits = ctx.limits();
        let check = |what: &str, bytes: u64, hint: &str| fits_binding(ctx, what, bytes, hint);
        let total_rows = geometry.total_cells() * geometry.p;
        let head_bytes = (shape.n as u64) * (d as u64) * value_bytes;
        // Storage bindings are sized in whole 4-byte words. The O(n) variant adds the coarse
        // queries, and per coarse row its downward result (o, lse) and its backward's
        // aggregates (A, M, B).
        let coarse_parts = if queries { 3 } else { 2 };
        let coarse_head_bytes =
            (coarse_parts * (total_rows as u64) * (d as u64) * value_bytes).next_multiple_of(4);
        let linear_head_bytes = if queries {
            (total_rows * (d + 2) * 4) as u64
        } else {
            0
        };
        // The backward's (LSE, D) per query is 8 n bytes a head: more than Q's when d = 1.
        let stats_head_bytes = (shape.n as u64) * 8;
        let per_head = head_bytes
            .max(coarse_head_bytes)
            .max(stats_head_bytes)
            .max(linear_head_bytes);
        check(
            "one head of Q, K, V, O, of the coarse rows or of the backward's statistics",
            per_head,
            "shorten the input, or use a smaller p",
        )?;
        // Checked before the tables are built: their size follows from the head's.
        let tables = GeomTables::build(&geometry, config.multiplicity, kind, d);
        check(
            "the geometry tables",
            tables.data.len() as u64 * 4,
            "use a larger m",
        )?;
        if let Some((w, _)) = &packed_weights {
            check(
                "the downsampling weights",
                w.len() as u64 * 4,
                "use a larger m or a smaller p",
            )?;
        }
        let chunk_heads = Chunks::heads_per_chunk(ctx, shape, per_head);

        let query_tile = spec.query_tile as usize;
        let tiles_per_cell = geometry.cell_tokens() / query_tile;
        let max_dim = limits.max_compute_workgroups_per_dimension;
        grid(
            (geometry.fine_cells() * tiles_per_cell * chunk_heads) as u64,
            max_dim,
        )?;
        grid((total_rows * chunk_heads) as u64, max_dim)?;

        let base = Params {
            n: word("n", shape.n)?,
            d: word("d", d)?,
            bh: 0, // per chunk
            p: word("p", geometry.p)?,
            real_h: word("the image height", geometry.real_h)?,
            real_w: word("the image width (1D: n)", geometry.real_w)?,
            cell_h: word("the fine cell height", geometry.cell_h)?,
            cell_w: word("the fine cell width", geometry.cell_w)?,
            cells_x: word("fine cells per row", geometry.cells_x())?,
            fine_cells: word("fine cells", geometry.fine_cells())?,
            levels: word("coarse levels", geometry.num_levels())?,
            causal: config.causal as u32,
            scale: config.scale_for(d),
            near_offsets: tables.near_offsets,
            near_entries: tables.near_entries,
            far_offsets: tables.far_offsets,
            far_entries: tables.far_entries,
            parent: tables.parent,
            rows: tables.rows,
            level_table: tables.levels,
            total_rows: word("coarse rows", total_rows)?,
            wv_base: packed_weights.as_ref().map_or(0, |(_, b)| b[0]),
            bk_base: packed_weights.as_ref().map_or(0, |(_, b)| b[1]),
            bv_base: packed_weights.as_ref().map_or(0, |(_, b)| b[2]),
            tiles_per_cell: word("query tiles per cell", tiles_per_cell)?,
            coarse_v_base: word(
                "coarse key values per chunk of heads",
                chunk_heads * total_rows * d,
            )?,
            children: tables.children,
            children_per_row: tables.children_per_row,
            near_t_offsets: tables.near_t_offsets,
            near_t_entries: tables.near_t_entries,
            far_t_offsets: tables.far_t_offsets,
            far_t_entries: tables.far_t_entries,
            queries: queries as u32,
            wq_base: packed_weights.as_ref().map_or(0, |(_, b)| b[3]),
            bq_base: packed_weights.as_ref().map_or(0, |(_, b)| b[4]),
            seg_parent: tables.seg_parent,
        };
        let chunks = Chunks::new(ctx, "fma params", shape, chunk_heads, base)
            .with_precision(config.precision);
        let geom = ctx.buffer_with(
            "fma geometry",
            bytemuck::cast_slice(&tables.data),
            wgpu::BufferUsages::STORAGE,
        );
        let weight_bases = packed_weights.as_ref().map_or([0; 5], |(_, b)| *b);
        let weights_len = packed_weights.as_ref().map_or(0, |(w, _)| w.len());
        let weights = packed_weights.map(|(w, _)| {
            ctx.buffer_with(
                "fma weights",
                bytemuck::cast_slice(&w),
                wgpu::BufferUsages::STORAGE,
            )
        });
        let query_tiles = geometry.fine_cells() * tiles_per_cell;
        let has_far = geometry.num_levels() > 0;
        let coarse = has_far.then(|| {
            host::storage(
                ctx,
                "fma coarse",
                coarse_head_bytes * chunk_heads as u64,
                false,
            )
        });
        let downsample = if has_far {
            Some(DownsampleKernel::new(ctx, kind, spec, &geometry)?)
        } else {
            None
        };
        // The O(n) variant replaces far_field by its own far field.
        let attention = AttentionKernel::new(ctx, spec, d, has_far && !queries)?;
        let linear = if has_far && queries {
            let down = host::storage(
                ctx,
                "fma linear downward results",
                (down_floats(&geometry, d) * chunk_heads * 4) as u64,
                false,
            );
            Some((LinearKernel::new(ctx, spec, &geometry)?, down))
        } else {
            None
        };
        ctx.take_error()?;
        Ok(FmaPlan {
            shape,
            geometry,
            config: config.clone(),
            spec,
            chunks,
            query_tiles,
            geom,
            weights,
            weight_bases,
            weights_len,
            coarse,
            downsample,
            attention,
            linear,
            host: HostSlot::default(),
            backward: OnceLock::new(),
        })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// An error unless the plan stores f32: the backward kernels read and write f32 only.
    pub(super) fn require_f32_for_backward(&self) -> Result<()> {
        match self.config.precision {
            Precision::F32 => Ok(()),
            Precision::F16 => Err(FmaError::InvalidConfig(
                "the backward runs in f32: build the plan with Precision::F32 to train (Precision::F16 is for inference)".into(),
            )),
        }
    }

    /// Passes over chunks of heads that `forward` and `backward` split the shape into (the
    /// tensors of one pass fit one storage binding); `encode` needs exactly one.
    pub fn chunk_count(&self) -> usize {
        self.chunks.iter().count()
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The plan's downsampling weights on the GPU, packed as `DownsampleWeights::packed` lays
    /// them out (None for `Mean`, or without coarse levels). COPY_DST: a caller that keeps
    /// trainable weights on the GPU copies them in before encoding a pass.
    pub fn weights_buffer(&self) -> Option<&wgpu::Buffer> {
        self.weights.as_ref()
    }

    /// Bytes of GPU memory the plan holds besides Q, K, V, O and LSE: the coarse keys and
    /// values (and queries, in the O(n) variant, with each segment's downward result), for
    /// one chunk of heads, the geometry tables and the weights.
    pub fn extra_bytes(&self) -> u64 {
        [
            Some(&self.geom),
            self.weights.as_ref(),
            self.coarse.as_ref(),
            self.linear.as_ref().map(|(_, down)| down),
        ]
        .into_iter()
        .flatten()
        .map(|b| b.size())
        .sum()
    }

    /// Records the forward pass over GPU-resident tensors into `encoder` (nothing is submitted).
    /// The tensors must each fit one storage binding; `forward` splits larger inputs.
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &AttentionIo<'_>,
    ) -> Result<()> {
        self.encode_checked(ctx, encoder, io, None)
    }

    pub(super) fn encode_checked(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &AttentionIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        let chunk = self.chunks.single("FmaPlan::forward")?;
        io.check(self.shape, self.config.precision)?;
        self.encode_chunk(ctx, encoder, chunk, io, timer)
    }

    /// `encode` with each stage (downsampling, near field, far field) in its own compute pass
    /// timed by `timer`; returns the names of the stages in the timer's slot order.
    pub fn encode_timed(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &AttentionIo<'_>,
        timer: &GpuTimer,
    ) -> Result<Vec<&'static str>> {
        let stages = self.stage_names();
        timer.check_slots(stages.len(), "this plan")?;
        self.encode_checked(ctx, encoder, io, Some(timer))?;
        Ok(stages)
    }

    /// The stages one forward records, in order (the O(n) variant: `linear_far`, the
    /// per-segment far field and downward pass, and `linear_merge` instead of `far_field`).
    pub fn stage_names(&self) -> Vec<&'static str> {
        let far = self.downsample.is_some();
        let linear = self.linear.is_some();
        [
            far.then_some("downsample"),
            Some("near_field"),
            (far && !linear).then_some("far_field"),
            linear.then_some("linear_far"),
            linear.then_some("linear_merge"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub(super) fn encode_chunk(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        chunk: &Chunk,
        io: &AttentionIo<'_>,
        timer: Option<&GpuTimer>,
    ) -> Result<()> {
        // One pass per stage: timestamps need pass boundaries, and each stage reads what the
        // previous one wrote, so the passes cost nothing the dispatches did not already.
        let mut slot = 0;
        self.encode_downsample(ctx, encoder, chunk, [io.q, io.k, io.v], timer, &mut slot)?;
        let b = AttentionBindings {
            params: &chunk.params,
            geom: &self.geom,
            q: io.q,
            k: io.k,
            v: io.v,
            coarse: self.coarse.as_ref(),
            o: io.o,
            lse: io.lse,
        };
        let workgroups = (self.query_tiles * chunk.heads) as u64;
        let mut pass = begin_pass(encoder, "fma near field", timer, &mut slot);
        self.attention.encode_near(ctx, &mut pass, &b, workgroups)?;
        drop(pass);
        if let (Some((linear, down)), Some(coarse)) = (&self.linear, &self.coarse) {
            let b = LinearBindings {
                params: &chunk.params,
                geom: &self.geom,
                coarse,
                down,
                o: io.o,
                lse: io.lse,
            };
            let mut pass = begin_pass(encoder, "fma linear far field", timer, &mut slot);
            linear.encode_far(ctx, &mut pass, &b, chunk.heads as u64)?;
            drop(pass);
            let mut pass = begin_pass(encoder, "fma linear merge", timer, &mut slot);
            let queries = (chunk.heads * self.shape.n) as u64;
            linear.encode_merge(ctx, &mut pass, &b, queries)?;
        } else if self.coarse.is_some() {
            let mut pass = begin_pass(encoder, "fma far field", timer, &mut slot);
            self.attention.encode_far(ctx, &mut pass, &b, workgroups)?;
        }
        Ok(())
    }

    /// The coarse keys and values of one chunk (and queries, in the O(n) variant; its own
    /// pass, timed in `slot`), if there are coarse levels.
    pub(super) fn encode_downsample(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        chunk: &Chunk,
        [q, k, v]: [&wgpu::Buffer; 3],
        timer: Option<&GpuTimer>,
        slot: &mut u32,
    ) -> Result<()> {
        let (Some(ds), Some(coarse)) = (&self.downsample, &self.coarse) else {
            return Ok(());
        };
        let b = DownsampleBindings {
            params: &chunk.params,
            geom: &self.geom,
            q,
            k,
            v,
            weights: self.weights.as_ref(),
            coarse,
        };
        let mut pass = begin_pass(encoder, "fma downsample", timer, slot);
        ds.encode(ctx, &mut pass, &b, chunk.heads as u64, self.shape.d as u64)
    }

    /// Runs FMA on host tensors ([batch, heads, n, d], f32) and returns O and LSE.
    pub async fn forward(
        &self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        self.host
            .forward(ctx, &self.chunks, [q, k, v], |chunk, encoder, io| {
                self.encode_chunk(ctx, encoder, chunk, io, None)
            })
            .await
    }

    /// Blocking `forward` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        pollster::block_on(self.forward(ctx, q, k, v))
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

/// The weights packed as the kernels read them (`DownsampleWeights::packed`, never empty, so
/// that it can be bound), and where wv, bk, bv, wq and bq start.
pub(super) fn pack_weights(w: &DownsampleWeights) -> (Vec<f32>, [u32; 5]) {
    let total = |part: fn(&crate::config::LevelWeights) -> usize| -> u32 {
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
