//! `FmaDecoder`: causal FMA decoding on the GPU (docs/fma.md §14), the twin of
//! `reference::Decoder`. Its state is O(d (m + p log n)) per head and one step is three
//! dispatches for every sequence and head of the batch.

use crate::config::{FmaConfig, Precision, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::gpu::decode::{
    DecodeCore, DecodeIo, DecodeParams, Growth, StateLayout, decode_tables, kind_code,
};
use crate::gpu::plan::{FmaPlan, pack_weights};
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::shaders::DEC_LIST;
use crate::reference::{Output, decoder_geometry, past_weights};
use crate::weights::DownsampleWeights;

/// A causal FMA decoder for `batch x heads` sequences of head dim d, on the GPU.
pub struct FmaDecoder {
    core: DecodeCore,
    config: FmaConfig,
    weights: DownsampleWeights,
    shape: Shape,
}

/// `shape` with n = 1: one token per sequence, checked.
pub(crate) fn step_shape(batch: usize, heads: usize, d: usize) -> Result<Shape> {
    let shape = Shape::new(batch, heads, 1, d);
    shape.validate()?;
    Ok(shape)
}

/// The error of a decoder asked for f16 storage: its state is f32.
pub(crate) fn require_f32(precision: Precision) -> Result<()> {
    match precision {
        Precision::F32 => Ok(()),
        Precision::F16 => Err(FmaError::InvalidConfig(
            "the decoders keep their state in f32: use Precision::F32".into(),
        )),
    }
}

impl FmaDecoder {
    /// A decoder for up to `capacity` tokens per sequence. `config` must be causal; the
    /// learned kinds need `weights`, whose levels 1..L must cover the capacity
    /// (m * 2^(L + 1) tokens at most). `Mean` starts with one level and adds the others
    /// as the sequence grows, up to those the capacity needs.
    pub fn new(
        ctx: &GpuContext,
        config: &FmaConfig,
        weights: Option<&DownsampleWeights>,
        [batch, heads, d]: [usize; 3],
        capacity: usize,
    ) -> Result<FmaDecoder> {
        let shape = step_shape(batch, heads, d)?;
        let (full, weights) = decoder_geometry(config, weights, d)?;
        require_f32(config.precision)?;
        // The fewest levels whose line holds `capacity` tokens.
        let mut levels = 0;
        while config
            .m
            .checked_shl(levels as u32 + 1)
            .is_some_and(|n| n < capacity)
        {
            levels += 1;
        }
        let kind = config.downsampling;
        if kind.is_learned() && levels > full.num_levels() {
            return Err(past_weights(kind, full.num_levels(), full.capacity()));
        }
        let g = Geometry::causal_line(config, levels)?;
        let used = DownsampleWeights {
            levels: weights.levels.iter().take(levels).cloned().collect(),
        };
        let (packed, bases) = pack_weights(&used);
        let (mut w_at, mut b_at) = (0, 0);
        let mut level_words = Vec::new();
        for (lv, lw) in g
            .levels
            .iter()
            .zip(used.levels.iter().map(Some).chain(std::iter::repeat(None)))
        {
            level_words.push([
                lv.group_tokens() as u32,
                lv.seg_w as u32,
                w_at as u32,
                b_at as u32,
            ]);
            w_at += lw.map_or(0, |w| w.wk.len());
            b_at += lw.map_or(0, |w| w.bk.len());
        }
        let (near, far) = Geometry::causal_lists();
        let (geom, near_table, far_table) = decode_tables(&level_words, &near, &far)?;
        let params = DecodeParams {
            d: d as u32,
            bh: shape.bh() as u32,
            cell: config.m as u32,
            ring: 2 * config.m as u32,
            p: g.p as u32,
            levels: levels as u32,
            kind: kind_code(kind),
            multiplicity: config.multiplicity as u32,
            scale: config.scale_for(d),
            near_table,
            far_table,
            wv_base: bases[0],
            bk_base: bases[1],
            bv_base: bases[2],
            ..Default::default()
        };
        crate::gpu::runtime::dispatch::word("the fine cell m (twice)", 2 * config.m)?;
        let layout = StateLayout {
            bh: shape.bh(),
            d,
            ring: 2 * config.m,
            p: g.p,
            levels,
        };
        let weights_words = if kind.is_learned() {
            packed
        } else {
            Vec::new()
        };
        let growth = (!kind.is_learned()).then(|| mean_growth(&g));
        Ok(FmaDecoder {
            core: DecodeCore::new(ctx, params, layout, &geom, &weights_words, capacity, growth)?,
            config: config.clone(),
            weights,
            shape,
        })
    }

    /// Tokens decoded so far (per sequence).
    pub fn len(&self) -> usize {
        self.core.len
    }

    pub fn is_empty(&self) -> bool {
        self.core.len == 0
    }

    /// The most tokens per sequence the decoder holds.
    pub fn capacity(&self) -> usize {
        self.core.capacity
    }

    /// Coarse levels the state holds now: `Mean` adds them as the sequence grows (one each
    /// time a level's first group closes, as the CPU twin, up to what the capacity needs);
    /// the learned kinds hold all that the capacity needs from the start.
    pub fn levels(&self) -> usize {
        self.core.levels()
    }

    /// Bytes of the decoding state on the GPU (all sequences and heads).
    pub fn state_bytes(&self) -> u64 {
        self.core.state_bytes()
    }

    fn past(&self) -> impl FnOnce(usize) -> FmaError + '_ {
        move |cap| FmaError::LimitExceeded {
            what: "tokens per sequence".into(),
            needed: cap as u64 + 1,
            limit: cap as u64,
            hint: format!(
                "this {:?} decoder was made for {cap} tokens: make it with a larger capacity",
                self.config.downsampling
            ),
        }
    }

    /// For benchmarks only: empties the state and sets the token count to `len` (at most the
    /// capacity), as if `len` tokens of zero keys and values had gone by without closing any
    /// group. The state is then no real sequence's, but a step's work depends on the count
    /// alone, so steps at a long context can be timed without decoding up to it.
    #[doc(hidden)]
    pub fn seek_for_timing(&mut self, ctx: &GpuContext, len: usize) -> Result<()> {
        self.core.seek(ctx, len)
    }

    /// Forgets every token.
    pub fn reset(&mut self, ctx: &GpuContext) -> Result<()> {
        self.core.reset(ctx)
    }

    /// Records one step over GPU-resident tensors (q, k, v, o of [batch, heads, d], lse of
    /// [batch, heads], f32) into `encoder`; nothing is submitted. Steps may be recorded back
    /// to back in one encoder: the token count lives on the GPU.
    pub fn encode_step(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &DecodeIo<'_>,
    ) -> Result<()> {
        self.core.check_room(1, self.past())?;
        self.core.encode_step(ctx, encoder, io)
    }

    /// Decodes one token per sequence (q, k, v of [batch, heads, d]): its output and LSE.
    pub async fn step(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        self.core.check_room(1, self.past())?;
        self.core.step(ctx, [q, k, v]).await
    }

    /// Decodes a prompt of n tokens per sequence ([batch, heads, n, d]): on an empty decoder
    /// one causal forward (`FmaPlan`) for the outputs and one state build; after earlier
    /// tokens, steps. The state is then as if every token had been stepped.
    pub async fn prefill(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
    ) -> Result<Output> {
        let shape = Shape { n, ..self.shape };
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            if n > 0 {
                shape.check_len(name, x.len())?;
            } else if !x.is_empty() {
                return Err(FmaError::BadShape {
                    what: name.into(),
                    expected: "no values for an empty prompt".into(),
                    got: format!("{} values", x.len()),
                });
            }
        }
        if n == 0 {
            return Ok(Output {
                o: Vec::new(),
                lse: Vec::new(),
            });
        }
        self.core.check_room(n, self.past())?;
        if !self.is_empty() {
            let mut out = Output {
                o: Vec::new(),
                lse: Vec::new(),
            };
            for i in 0..n {
                let [q, k, v] = [q, k, v].map(|x| gather_token(x, shape, i));
                let s = self.step(ctx, &q, &k, &v).await?;
                scatter_token(&mut out, shape, i, &s);
            }
            return Ok(out);
        }
        let levels = Geometry::new(n, &self.config)?.num_levels();
        let w = DownsampleWeights {
            levels: self.weights.levels.iter().take(levels).cloned().collect(),
        };
        let plan = FmaPlan::new(ctx, shape, &self.config, Some(&w))?;
        let out = plan.forward(ctx, q, k, v).await?;
        absorb(&mut self.core, ctx, shape, k, v).await?;
        Ok(out)
    }

    /// Blocking `step` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_blocking(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        pollster::block_on(self.step(ctx, q, k, v))
    }

    /// Blocking `prefill` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prefill_blocking(
        &mut self,
        ctx: &GpuContext,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
    ) -> Result<Output> {
        pollster::block_on(self.prefill(ctx, q, k, v, n))
    }
}

/// How `Mean` grows on the line `g`: level l + 1 is added when group 0 of level l closes, its
/// rows seeded from the segments of that group they hold (`Geometry::segment_children`).
fn mean_growth(g: &Geometry) -> Growth {
    let p = g.p;
    let seeds = (2..=g.num_levels())
        .map(|l| {
            let below = g.levels[l - 2].cell_offset;
            (0..p)
                .flat_map(|r| {
                    let segs: Vec<u32> = g
                        .segment_children(l, 0, r)
                        .into_iter()
                        .filter(|&row| row / p == below) // group 0 of level l - 1
                        .map(|row| (row % p) as u32)
                        .collect();
                    let mut words = vec![segs.len() as u32];
                    words.extend(&segs);
                    words.resize(DEC_LIST as usize + 1, 0);
                    words
                })
                .collect()
        })
        .collect();
    Growth {
        group_tokens: g.group_tokens(),
        seeds,
    }
}

/// Token i of every sequence of a [bh, n, d] tensor, as [bh, d].
pub(crate) fn gather_token(x: &[f32], shape: Shape, i: usize) -> Vec<f32> {
    let (bh, n, d) = (shape.bh(), shape.n, shape.d);
    (0..bh)
        .flat_map(|h| x[(h * n + i) * d..(h * n + i + 1) * d].iter().copied())
        .collect()
}

/// Places one step's outputs ([bh, d], LSE [bh]) as token i of a forward's ([bh, n, d]).
pub(crate) fn scatter_token(out: &mut Output, shape: Shape, i: usize, step: &Output) {
    let (bh, n, d) = (shape.bh(), shape.n, shape.d);
    if out.lse.len() != bh * n {
        *out = Output {
            o: vec![0.0; bh * n * d],
            lse: vec![0.0; bh * n],
        };
    }
    for h in 0..bh {
        out.o[(h * n + i) * d..(h * n + i + 1) * d].copy_from_slice(&step.o[h * d..(h + 1) * d]);
        out.lse[h * n + i] = step.lse[h];
    }
}

/// Uploads a prompt's k and v ([bh, n, d]) and adds them to the state (no outputs).
pub(crate) async fn absorb(
    core: &mut DecodeCore,
    ctx: &GpuContext,
    shape: Shape,
    k: &[f32],
    v: &[f32],
) -> Result<()> {
    let bytes = (shape.elements() * 4) as u64;
    crate::gpu::runtime::chunks::fits_binding(
        ctx,
        "one prompt's keys",
        bytes,
        "prefill a shorter prompt, then step",
    )?;
    ctx.scoped(|| -> Result<()> {
        let kb = crate::gpu::runtime::host::storage(ctx, "prompt k", bytes, true);
        let vb = crate::gpu::runtime::host::storage(ctx, "prompt v", bytes, true);
        ctx.queue.write_buffer(&kb, 0, bytemuck::cast_slice(k));
        ctx.queue.write_buffer(&vb, 0, bytemuck::cast_slice(v));
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        core.encode_absorb(ctx, &mut encoder, &kb, &vb, shape.n)?;
        ctx.queue.submit([encoder.finish()]);
        Ok(())
    })?;
    // Errors of the submission come back once the device has run it.
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| FmaError::Gpu(e.to_string()))
        .map(|_| ())?;
    ctx.take_error()
}
