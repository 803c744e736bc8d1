//! Rust twin of shaders/decode.wgsl: the decoding state on the GPU and the three kernels of a
//! step (decode_attend, decode_update, decode_advance). `FmaDecoder` and the dense baseline
//! `DenseDecoder` are two configurations of this core.

use bytemuck::{Pod, Zeroable};

use super::buffers::{self, Slot};
use super::chunks::fits_binding;
use super::context::GpuContext;
use super::host::{readback, storage};
use super::params::{bind, dispatch, word};
use super::shaders::{DEC_LEVEL_WORDS, DEC_LIST, Family, Spec, WG_ELEMENTS, binding as B};
use crate::config::Downsampling;
use crate::error::{FmaError, Result};
use crate::reference::Output;

/// `DecodeParams` of decode.wgsl (same fields, same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct DecodeParams {
    pub d: u32,
    pub bh: u32,
    pub cell: u32,
    pub ring: u32,
    pub p: u32,
    pub levels: u32,
    pub kind: u32,
    pub multiplicity: u32,
    pub scale: f32,
    pub near_table: u32,
    pub far_table: u32,
    pub ring_v: u32,
    pub open_k: u32,
    pub open_v: u32,
    pub kept_k: u32,
    pub kept_v: u32,
    pub wv_base: u32,
    pub bk_base: u32,
    pub bv_base: u32,
    pub _pad: u32,
}

/// `DecodeCount` of decode.wgsl: the tokens one update or advance adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct DecodeCount {
    tokens: u32,
    _pad: [u32; 3],
}

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
/// levels of p rows (open sums and kept groups).
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
}

/// A decoder's GPU side: pipelines, uniforms, tables, state and host staging.
pub(crate) struct DecodeCore {
    attend: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
    advance: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    one: wgpu::Buffer,
    geom: wgpu::Buffer,
    weights: wgpu::Buffer,
    len_buf: wgpu::Buffer,
    state: wgpu::Buffer,
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
    /// `params` with the state offsets filled in from `layout`; `geom` the `dgeom` words;
    /// `weights` packed as `FmaPlan`'s (empty: none).
    pub fn new(
        ctx: &GpuContext,
        mut params: DecodeParams,
        layout: StateLayout,
        geom: &[u32],
        weights: &[f32],
        capacity: usize,
    ) -> Result<DecodeCore> {
        let [ring_v, open_k, open_v, kept_k, kept_v, total] = layout.offsets();
        params.ring_v = word("decoder ring", ring_v)?;
        params.open_k = word("decoder state", open_k)?;
        params.open_v = word("decoder state", open_v)?;
        params.kept_k = word("decoder state", kept_k)?;
        params.kept_v = word("decoder state", kept_v)?;
        let state_bytes = (total as u64) * 4;
        fits_binding(
            ctx,
            "the decoder's state",
            state_bytes,
            "decode fewer sequences at once, or a shorter capacity (dense)",
        )?;
        let (bh, d) = (layout.bh, layout.d);
        let groups = (bh * d).div_ceil(WG_ELEMENTS as usize);
        let max_dim = ctx.limits().max_compute_workgroups_per_dimension;
        super::params::grid(groups.max(bh) as u64, max_dim)?;
        let core = ctx.scoped(|| -> Result<DecodeCore> {
            let pipe = |entry| ctx.pipeline(Family::Decode, entry, Spec::DECODE);
            let uniform =
                |label, bytes: &[u8]| ctx.buffer_with(label, bytes, wgpu::BufferUsages::UNIFORM);
            let one = DecodeCount {
                tokens: 1,
                ..Default::default()
            };
            let state = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("decoder state"),
                size: state_bytes.max(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let weights = if weights.is_empty() {
                &[0.0][..]
            } else {
                weights
            };
            let rows = (bh * d * 4) as u64;
            Ok(DecodeCore {
                attend: pipe("decode_attend")?,
                update: pipe("decode_update")?,
                advance: pipe("decode_advance")?,
                params: uniform("decode params", bytemuck::bytes_of(&params)),
                one: uniform("decode count", bytemuck::bytes_of(&one)),
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
                state,
                bh,
                d,
                len: 0,
                capacity,
                host_in: ["q", "k", "v"].map(|n| storage(ctx, n, rows, true)),
                host_out: [rows, bh as u64 * 4]
                    .map(|b| (storage(ctx, "decode out", b, false), readback(ctx, b))),
            })
        })?;
        ctx.take_error()?;
        Ok(core)
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
        let attend = bind(
            ctx,
            "decode_attend",
            &self.attend,
            &[
                (B::DEC_PARAMS, &self.params),
                (B::DEC_GEOM, &self.geom),
                (B::DEC_LEN, &self.len_buf),
                (B::DEC_STATE, &self.state),
                (B::Q, io.q),
                (B::K, io.k),
                (B::V, io.v),
                (B::O, io.o),
                (B::LSE, io.lse),
            ],
        );
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("decode step"),
            timestamp_writes: None,
        });
        dispatch(ctx, &mut pass, &self.attend, &attend, self.bh as u64)?;
        self.encode_update(ctx, &mut pass, io.k, io.v, &self.one)?;
        self.encode_advance(ctx, &mut pass, &self.one)?;
        drop(pass);
        self.len += 1;
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
        let group = bind(
            ctx,
            "decode_update",
            &self.update,
            &[
                (B::DEC_PARAMS, &self.params),
                (B::DEC_COUNT, count),
                (B::DEC_GEOM, &self.geom),
                (B::DEC_LEN, &self.len_buf),
                (B::DEC_STATE_W, &self.state),
                (B::WEIGHTS, &self.weights),
                (B::K, k),
                (B::V, v),
            ],
        );
        let groups = (self.bh * self.d).div_ceil(WG_ELEMENTS as usize);
        dispatch(ctx, pass, &self.update, &group, groups as u64)
    }

    fn encode_advance(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        count: &wgpu::Buffer,
    ) -> Result<()> {
        let group = bind(
            ctx,
            "decode_advance",
            &self.advance,
            &[(B::DEC_COUNT, count), (B::DEC_LEN_W, &self.len_buf)],
        );
        dispatch(ctx, pass, &self.advance, &group, 1)
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
        let word = word("decoder length", len)?;
        ctx.scoped(|| {
            ctx.queue
                .write_buffer(&self.len_buf, 0, &word.to_le_bytes())
        });
        ctx.take_error()?;
        self.len = len;
        Ok(())
    }

    /// Zeroes the state and the count.
    pub fn reset(&mut self, ctx: &GpuContext) -> Result<()> {
        ctx.scoped(|| {
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            encoder.clear_buffer(&self.state, 0, None);
            encoder.clear_buffer(&self.len_buf, 0, None);
            ctx.queue.submit([encoder.finish()]);
        });
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
