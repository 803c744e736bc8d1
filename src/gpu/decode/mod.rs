//! Rust twin of shaders/decode.wgsl: the decoding state on the GPU, the three kernels of a
//! step (decode_attend, decode_update, decode_advance) and decode_seed, which fills a level
//! `Mean` adds as the sequence grows. `FmaDecoder` and the dense baseline `DenseDecoder` are
//! two configurations of this core.

pub(crate) mod decoder;
pub(crate) mod dense;
pub(crate) mod fma;

use crate::config::Downsampling;
use crate::error::{FmaError, Result};
use crate::gpu::runtime::buffers::{self, Slot};
use crate::gpu::runtime::chunks::fits_binding;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{Entry, Kernel, Roles, word};
use crate::gpu::runtime::host::{readback, storage};
use crate::gpu::shaders::structs::DecodeCount;
use crate::gpu::shaders::structs::DecodeParams;
use crate::gpu::shaders::{DEC_LEVEL_WORDS, DEC_LIST, Family, Spec, WG_ELEMENTS, binding as B};
use crate::reference::Output;

/// The kind's code in `DecodeParams::kind`.
pub(crate) fn kind_code(kind: Downsampling) -> u32 {
    match kind {
        Downsampling::Mean => 0,
        Downsampling::Basis => 1,
        Downsampling::Depthwise => 2,
    }
}

/// The words of `dgeom`: `levels` (tokens per group, per segment, weight and bias offsets of
/// each level), then the near and far lists by parity (see `Geometry::causal_lists`).
pub(crate) fn decode_tables(
    levels: &[[u32; 4]],
    near: &[Vec<usize>; 2],
    far: &[Vec<usize>; 2],
) -> Result<(Vec<u32>, u32, u32)> {
    let mut words: Vec<u32> = levels.iter().flatten().copied().collect();
    debug_assert_eq!(DEC_LEVEL_WORDS, 4);
    let mut table = |lists: &[Vec<usize>; 2]| -> Result<u32> {
        let at = word("decode table", words.len())?;
        for list in lists {
            if list.len() > DEC_LIST as usize {
                return Err(FmaError::Gpu(format!(
                    "a decoding list holds {} entries, the kernel at most {DEC_LIST}",
                    list.len()
                )));
            }
            words.push(list.len() as u32);
            let mut entries: Vec<u32> = list.iter().map(|&b| b as u32).collect();
            entries.resize(DEC_LIST as usize, 0);
            words.extend(entries);
        }
        Ok(at)
    };
    let near_at = table(near)?;
    let far_at = table(far)?;
    Ok((words, near_at, far_at))
}

/// GPU buffers of one decoding step: q, k, v of [batch, heads, d] (STORAGE, f32) in; o of
/// [batch, heads, d] and lse of [batch, heads] (STORAGE, f32) written.
pub struct DecodeIo<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub o: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
}

/// The layout of a decoder's state: `ring` slots of keys and values per head, and `levels`
/// levels of p rows (open sums and kept groups), level-major.
#[derive(Clone, Copy)]
pub(crate) struct StateLayout {
    pub bh: usize,
    pub d: usize,
    pub ring: usize,
    pub p: usize,
    pub levels: usize,
}

impl StateLayout {
    /// (ring_v, open_k, open_v, kept_k, kept_v, total) offsets in f32 words.
    fn offsets(&self) -> [usize; 6] {
        let ring = self.bh * self.ring * self.d;
        let open = self.bh * self.levels * self.p * self.d;
        let kept = open * crate::geometry::CAUSAL_KEPT_GROUPS;
        [
            ring,
            2 * ring,
            2 * ring + open,
            2 * ring + 2 * open,
            2 * ring + 2 * open + kept,
            2 * ring + 2 * open + 2 * kept,
        ]
    }

    fn with_levels(self, levels: usize) -> Self {
        StateLayout { levels, ..self }
    }
}

/// How `Mean` adds levels as the sequence grows (the learned kinds hold all theirs from the
/// start): level l + 1 (1-based) is added when group 0 of level l closes, at `group_tokens[l -
/// 1]` tokens, seeded by decode_seed from `seeds[l - 1]` (for each of its rows, count then the
/// segments of level l's group 0 it holds, `DEC_LIST + 1` words a row).
pub(crate) struct Growth {
    pub group_tokens: Vec<usize>,
    pub seeds: Vec<Vec<u32>>,
}

const fn entry(name: &'static str, roles: &'static [u32]) -> Entry {
    Entry {
        family: Family::Decode,
        name,
        forward: None,
        roles,
    }
}

pub(crate) const ENTRIES: [&Entry; 4] = [
    &entry(
        "decode_attend",
        &[
            B::DEC_PARAMS,
            B::DEC_GEOM,
            B::DEC_LEN,
            B::DEC_STATE,
            B::Q,
            B::K,
            B::V,
            B::O,
            B::LSE,
        ],
    ),
    &entry(
        "decode_update",
        &[
            B::DEC_PARAMS,
            B::DEC_COUNT,
            B::DEC_GEOM,
            B::DEC_LEN,
            B::DEC_STATE_W,
            B::WEIGHTS,
            B::K,
            B::V,
        ],
    ),
    &entry("decode_advance", &[B::DEC_COUNT, B::DEC_LEN_W]),
    &entry(
        "decode_seed",
        &[B::DEC_PARAMS, B::DEC_GEOM, B::DEC_STATE_W, B::DEC_SEED],
    ),
];

/// A decoder's GPU side: pipelines, uniforms, tables, state and host staging.
pub(crate) struct DecodeCore {
    attend: Kernel,
    update: Kernel,
    advance: Kernel,
    seed: Kernel,
    /// The uniform without the state's offsets and level count, which change as levels grow.
    base: DecodeParams,
    params: wgpu::Buffer,
    one: wgpu::Buffer,
    geom: wgpu::Buffer,
    weights: wgpu::Buffer,
    len_buf: wgpu::Buffer,
    state: wgpu::Buffer,
    /// The state's layout now (its levels) and the most levels it may grow to.
    layout: StateLayout,
    max_levels: usize,
    growth: Option<Growth>,
    bh: usize,
    d: usize,
    /// Tokens decoded (the GPU's count, as encoded) and the most the state can hold.
    pub len: usize,
    pub capacity: usize,
    /// Host staging of one step: q, k, v in; o, lse out with their readbacks.
    host_in: [wgpu::Buffer; 3],
    host_out: [(wgpu::Buffer, wgpu::Buffer); 2],
}

impl DecodeCore {
    /// `params` without the state's offsets; `layout` with the most levels the state may
    /// hold; `geom` the `dgeom` words (all those levels); `weights` packed as `FmaPlan`'s
    /// (empty: none); `growth` for `Mean`, which starts with one level and adds the others as
    /// the sequence grows.
    pub fn new(
        ctx: &GpuContext,
        params: DecodeParams,
        layout: StateLayout,
        geom: &[u32],
        weights: &[f32],
        capacity: usize,
        growth: Option<Growth>,
    ) -> Result<DecodeCore> {
        let [.., total] = layout.offsets();
        fits_binding(
            ctx,
            "the decoder's state",
            (total as u64) * 4,
            "decode fewer sequences at once, or a shorter capacity (dense)",
        )?;
        let (bh, d) = (layout.bh, layout.d);
        let groups = (bh * d).div_ceil(WG_ELEMENTS as usize);
        let max_dim = ctx.limits().max_compute_workgroups_per_dimension;
        crate::gpu::runtime::dispatch::grid(groups.max(bh) as u64, max_dim)?;
        let start = if growth.is_some() {
            layout.levels.min(1)
        } else {
            layout.levels
        };
        let core = ctx.scoped(|| -> Result<DecodeCore> {
            let pipe = |entry| Kernel::new(ctx, entry, Spec::DECODE);
            let one = DecodeCount {
                tokens: 1,
                ..Default::default()
            };
            let weights = if weights.is_empty() {
                &[0.0][..]
            } else {
                weights
            };
            let rows = (bh * d * 4) as u64;
            let mut core = DecodeCore {
                attend: pipe(ENTRIES[0])?,
                update: pipe(ENTRIES[1])?,
                advance: pipe(ENTRIES[2])?,
                seed: pipe(ENTRIES[3])?,
                base: params,
                params: ctx.buffer_with("decode params", &[0; 4], wgpu::BufferUsages::UNIFORM),
                one: ctx.buffer_with(
                    "decode count",
                    bytemuck::bytes_of(&one),
                    wgpu::BufferUsages::UNIFORM,
                ),
                geom: ctx.buffer_with(
                    "decode tables",
                    bytemuck::cast_slice(geom),
                    wgpu::BufferUsages::STORAGE,
                ),
                weights: ctx.buffer_with(
                    "decode weights",
                    bytemuck::cast_slice(weights),
                    wgpu::BufferUsages::STORAGE,
                ),
                len_buf: ctx.buffer_with("decode length", &[0; 4], wgpu::BufferUsages::STORAGE),
                state: storage(ctx, "decoder state", 4, true),
                layout,
                max_levels: layout.levels,
                growth,
                bh,
                d,
                len: 0,
                capacity,
                host_in: ["q", "k", "v"].map(|n| storage(ctx, n, rows, true)),
                host_out: [rows, bh as u64 * 4]
                    .map(|b| (storage(ctx, "decode out", b, false), readback(ctx, b))),
            };
            core.resize(ctx, start, None)?;
            Ok(core)
        })?;
        ctx.take_error()?;
        Ok(core)
    }

    /// Coarse levels the state holds now.
    pub fn levels(&self) -> usize {
        self.layout.levels
    }

    /// The levels `Mean` holds after `len` tokens: one, plus one for every level whose first
    /// group has closed (as the CPU twin), at most the state's limit.
    fn levels_after(&self, len: usize) -> usize {
        match &self.growth {
            None => self.max_levels,
            Some(g) => {
                (1 + g.group_tokens.iter().filter(|&&s| s <= len).count()).min(self.max_levels)
            }
        }
    }

    /// A new state (and uniform) of `levels` levels. With `encoder`, the old state's ring and
    /// levels are copied into it there (a level added at the end of each array); without, it
    /// starts zeroed.
    fn resize(
        &mut self,
        ctx: &GpuContext,
        levels: usize,
        encoder: Option<&mut wgpu::CommandEncoder>,
    ) -> Result<()> {
        let old = self.layout;
        let layout = old.with_levels(levels);
        let [ring_v, open_k, open_v, kept_k, kept_v, total] = layout.offsets();
        let params = DecodeParams {
            levels: word("coarse levels", levels)?,
            ring_v: word("decoder ring", ring_v)?,
            open_k: word("decoder state", open_k)?,
            open_v: word("decoder state", open_v)?,
            kept_k: word("decoder state", kept_k)?,
            kept_v: word("decoder state", kept_v)?,
            ..self.base
        };
        // A new buffer, never a write to the old one: steps recorded before in the same
        // encoder still read the old uniform.
        let params = ctx.buffer_with(
            "decode params",
            bytemuck::bytes_of(&params),
            wgpu::BufferUsages::UNIFORM,
        );
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let state = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("decoder state"),
            size: (total as u64 * 4).max(4),
            usage,
            mapped_at_creation: false,
        });
        if let Some(encoder) = encoder {
            let (from, to) = (old.offsets(), layout.offsets());
            // (old start, new start, words): the ring, then each level array's old part.
            let regions = [
                (0, 0, from[1]),
                (from[1], to[1], from[2] - from[1]),
                (from[2], to[2], from[3] - from[2]),
                (from[3], to[3], from[4] - from[3]),
                (from[4], to[4], from[5] - from[4]),
            ];
            for (src, dst, words) in regions.into_iter().filter(|r| r.2 > 0) {
                encoder.copy_buffer_to_buffer(
                    &self.state,
                    src as u64 * 4,
                    &state,
                    dst as u64 * 4,
                    words as u64 * 4,
                );
            }
        }
        self.params = params;
        self.state = state;
        self.layout = layout;
        Ok(())
    }

    /// Records the growth of `Mean` by one level after token `len - 1` closed the top level's
    /// first group: a larger state, and the new level seeded.
    fn grow(&mut self, ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let levels = self.layout.levels;
        let Some(seed) = self.growth.as_ref().and_then(|g| g.seeds.get(levels - 1)) else {
            return Ok(());
        };
        let table = ctx.buffer_with(
            "decode seed",
            bytemuck::cast_slice(seed),
            wgpu::BufferUsages::STORAGE,
        );
        self.resize(ctx, levels + 1, Some(encoder))?;
        let roles = self.roles().with(&[B::DEC_SEED], &table);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("decode new level"),
            timestamp_writes: None,
        });
        let groups = (self.bh * self.d).div_ceil(WG_ELEMENTS as usize);
        self.seed.dispatch(ctx, &mut pass, &roles, groups as u64)
    }

    /// The decoder's own buffers by role (the state and the count bound read-only and
    /// read-write under two roles each).
    fn roles(&self) -> Roles<'_> {
        Roles::new()
            .with(&[B::DEC_PARAMS], &self.params)
            .with(&[B::DEC_GEOM], &self.geom)
            .with(&[B::DEC_LEN, B::DEC_LEN_W], &self.len_buf)
            .with(&[B::DEC_STATE, B::DEC_STATE_W], &self.state)
            .with(&[B::WEIGHTS], &self.weights)
    }

    /// Bytes of the decoding state on the GPU.
    pub fn state_bytes(&self) -> u64 {
        self.state.size()
    }

    /// The error of a step past `capacity`, or None.
    pub fn check_room(&self, tokens: usize, past: impl FnOnce(usize) -> FmaError) -> Result<()> {
        if self.len + tokens > self.capacity {
            return Err(past(self.capacity));
        }
        Ok(())
    }

    /// Records one step into `encoder`: attend, update, advance (one compute pass).
    pub fn encode_step(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &DecodeIo<'_>,
    ) -> Result<()> {
        let rows = (self.bh * self.d * 4) as u64;
        buffers::check(&[
            Slot::read("q", io.q, rows),
            Slot::read("k", io.k, rows),
            Slot::read("v", io.v, rows),
            Slot::written("o", io.o, rows),
            Slot::written("lse", io.lse, self.bh as u64 * 4),
        ])?;
        let roles = self
            .roles()
            .with(&[B::Q], io.q)
            .with(&[B::K], io.k)
            .with(&[B::V], io.v)
            .with(&[B::O], io.o)
            .with(&[B::LSE], io.lse);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("decode step"),
            timestamp_writes: None,
        });
        self.attend
            .dispatch(ctx, &mut pass, &roles, self.bh as u64)?;
        self.encode_update(ctx, &mut pass, io.k, io.v, &self.one)?;
        self.encode_advance(ctx, &mut pass, &self.one)?;
        drop(pass);
        self.len += 1;
        if self.levels_after(self.len) > self.layout.levels {
            self.grow(ctx, encoder)?;
        }
        Ok(())
    }

    fn encode_update(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        count: &wgpu::Buffer,
    ) -> Result<()> {
        let roles = self
            .roles()
            .with(&[B::DEC_COUNT], count)
            .with(&[B::K], k)
            .with(&[B::V], v);
        let groups = (self.bh * self.d).div_ceil(WG_ELEMENTS as usize);
        self.update.dispatch(ctx, pass, &roles, groups as u64)
    }

    fn encode_advance(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        count: &wgpu::Buffer,
    ) -> Result<()> {
        let roles = self.roles().with(&[B::DEC_COUNT], count);
        self.advance.dispatch(ctx, pass, &roles, 1)
    }

    /// Adds n tokens per sequence (k, v of [bh, n, d] on the GPU) to the state without
    /// attending: the state build after a prefill's forward.
    pub fn encode_absorb(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        n: usize,
    ) -> Result<()> {
        // On an empty decoder every level accumulates from token 0, so the levels stepping
        // would have added by the prompt's end can be there from the start.
        if self.len == 0 {
            self.resize(ctx, self.levels_after(n), None)?;
        }
        let count = ctx.buffer_with(
            "decode count",
            bytemuck::bytes_of(&DecodeCount {
                tokens: word("prompt length", n)?,
                ..Default::default()
            }),
            wgpu::BufferUsages::UNIFORM,
        );
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("decode state build"),
            timestamp_writes: None,
        });
        self.encode_update(ctx, &mut pass, k, v, &count)?;
        self.encode_advance(ctx, &mut pass, &count)?;
        drop(pass);
        self.len += n;
        Ok(())
    }

    /// Sets the count to `len` over a zeroed state (see `FmaDecoder::seek_for_timing`).
    pub fn seek(&mut self, ctx: &GpuContext, len: usize) -> Result<()> {
        if len > self.capacity {
            return Err(FmaError::InvalidConfig(format!(
                "cannot seek to {len} tokens past the capacity of {}",
                self.capacity
            )));
        }
        self.reset(ctx)?;
        self.resize(ctx, self.levels_after(len), None)?;
        let word = word("decoder length", len)?;
        ctx.scoped(|| {
            ctx.queue
                .write_buffer(&self.len_buf, 0, &word.to_le_bytes())
        });
        ctx.take_error()?;
        self.len = len;
        Ok(())
    }

    /// Empties the state (back to its first level) and zeroes the count.
    pub fn reset(&mut self, ctx: &GpuContext) -> Result<()> {
        ctx.scoped(|| -> Result<()> {
            self.resize(ctx, self.levels_after(0), None)?;
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            encoder.clear_buffer(&self.len_buf, 0, None);
            ctx.queue.submit([encoder.finish()]);
            Ok(())
        })?;
        ctx.take_error()?;
        self.len = 0;
        Ok(())
    }

    /// One step over host tensors ([batch, heads, d] each): uploads, runs, reads back.
    pub async fn step(&mut self, ctx: &GpuContext, qkv: [&[f32]; 3]) -> Result<Output> {
        let rows = self.bh * self.d;
        for (name, x) in ["q", "k", "v"].iter().zip(qkv) {
            if x.len() != rows {
                return Err(FmaError::BadShape {
                    what: (*name).into(),
                    expected: format!(
                        "{rows} values for [batch x heads = {}, d = {}]",
                        self.bh, self.d
                    ),
                    got: format!("{} values", x.len()),
                });
            }
        }
        let [(o, o_read), (lse, lse_read)] = &self.host_out;
        let (o, lse) = (o.clone(), lse.clone());
        let (o_read, lse_read) = (o_read.clone(), lse_read.clone());
        let inputs = self.host_in.clone();
        ctx.scoped(|| -> Result<()> {
            for (buf, x) in inputs.iter().zip(qkv) {
                ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(x));
            }
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            let io = DecodeIo {
                q: &inputs[0],
                k: &inputs[1],
                v: &inputs[2],
                o: &o,
                lse: &lse,
            };
            self.encode_step(ctx, &mut encoder, &io)?;
            encoder.copy_buffer_to_buffer(&o, 0, &o_read, 0, (rows * 4) as u64);
            encoder.copy_buffer_to_buffer(&lse, 0, &lse_read, 0, (self.bh * 4) as u64);
            ctx.queue.submit([encoder.finish()]);
            Ok(())
        })?;
        let o = ctx.read_bytes(&o_read, (rows * 4) as u64).await?;
        let lse = ctx.read_bytes(&lse_read, (self.bh * 4) as u64).await?;
        Ok(Output {
            o: bytemuck::pod_collect_to_vec(&o),
            lse: bytemuck::pod_collect_to_vec(&lse),
        })
    }
}
