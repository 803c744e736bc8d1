//! `FmaDecoder`: causal FMA decoding on the GPU (docs/fma.md §14), the twin of
//! `reference::Decoder`. Its state is O(d (m + p log n)) per head and one step is three
//! dispatches for every sequence and head of the batch.

use crate::config::{FmaConfig, Precision, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::gpu::decode::decoder::{GpuDecoder, Prompt, step_shape};
use crate::gpu::decode::{DecodeCore, DecodeParams, Growth, StateLayout, decode_tables, kind_code};
use crate::gpu::plan::{FmaPlan, pack_weights};
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::shaders::DEC_LIST;
use crate::reference::{Output, decoder_geometry, past_weights};
use crate::weights::DownsampleWeights;

/// A causal FMA decoder for `batch x heads` sequences of head dim d, on the GPU (its methods
/// are `GpuDecoder`'s).
pub type FmaDecoder = GpuDecoder<FmaPrompt>;

/// What an FMA decoder keeps for prompts: its options and weights.
pub struct FmaPrompt {
    config: FmaConfig,
    weights: DownsampleWeights,
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

impl GpuDecoder<FmaPrompt> {
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
        Ok(GpuDecoder {
            core: DecodeCore::new(ctx, params, layout, &geom, &weights_words, capacity, growth)?,
            shape,
            prompt: FmaPrompt {
                config: config.clone(),
                weights,
            },
        })
    }
}

impl crate::gpu::decode::decoder::sealed::Sealed for FmaPrompt {}

impl Prompt for FmaPrompt {
    /// One causal `FmaPlan` forward, with the weights of the levels the prompt has.
    async fn forward(
        &self,
        ctx: &GpuContext,
        shape: Shape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Output> {
        let levels = Geometry::new(shape.n, &self.config)?.num_levels();
        let w = DownsampleWeights {
            levels: self.weights.levels.iter().take(levels).cloned().collect(),
        };
        let plan = FmaPlan::new(ctx, shape, &self.config, Some(&w))?;
        plan.forward(ctx, q, k, v).await
    }

    fn past_hint(&self, cap: usize) -> String {
        format!(
            "this {:?} decoder was made for {cap} tokens: make it with a larger capacity",
            self.config.downsampling
        )
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
