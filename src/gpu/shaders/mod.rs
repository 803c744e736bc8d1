//! The WGSL sources, embedded with `include_str!` so the crate works on the web, and their
//! specialisation: the head-dim tile, key tile and query tile become `const` declarations
//! (WGSL sizes private arrays only with constants, not with pipeline overrides).
//!
//! Every number the shaders and their Rust twins share (binding indices, workgroup sizes,
//! table strides) is defined here once and written into the same header, so the WGSL names it
//! and the two cannot drift apart.

use crate::geometry::tables::LEVEL_WORDS;

#[cfg(feature = "vit")]
pub(crate) mod layers;
pub(crate) mod structs;

pub(crate) const COMMON: &str = include_str!("../../../shaders/common.wgsl");
pub(crate) const MERGE: &str = include_str!("../../../shaders/merge.wgsl");
pub(crate) const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
pub(crate) const ATTENTION_TILED: &str = include_str!("../../../shaders/attention_tiled.wgsl");
pub(crate) const ATTENTION_DIRECT: &str = include_str!("../../../shaders/attention_direct.wgsl");
pub(crate) const FAR_CHAIN: &str = include_str!("../../../shaders/far_chain.wgsl");
pub(crate) const DOWNSAMPLE: &str = include_str!("../../../shaders/downsample.wgsl");
pub(crate) const ATTENTION_BACKWARD: &str =
    include_str!("../../../shaders/attention_backward.wgsl");
pub(crate) const ATTENTION_BACKWARD_TILED: &str =
    include_str!("../../../shaders/attention_backward_tiled.wgsl");
pub(crate) const ATTENTION_BACKWARD_LANES: &str =
    include_str!("../../../shaders/attention_backward_lanes.wgsl");
pub(crate) const DOWNSAMPLE_BACKWARD: &str =
    include_str!("../../../shaders/downsample_backward.wgsl");
pub(crate) const DOWNSAMPLE_BACKWARD_REDUCE: &str =
    include_str!("../../../shaders/downsample_backward_reduce.wgsl");
pub(crate) const DOWNSAMPLE_BACKWARD_SUBGROUPS: &str =
    include_str!("../../../shaders/downsample_backward_subgroups.wgsl");
pub(crate) const DECODE: &str = include_str!("../../../shaders/decode.wgsl");
pub(crate) const LINEAR: &str = include_str!("../../../shaders/linear.wgsl");
pub(crate) const LINEAR_BACKWARD: &str = include_str!("../../../shaders/linear_backward.wgsl");
#[cfg(feature = "vit")]
pub(crate) const LAYERS: &str = include_str!("../../../shaders/layers.wgsl");

/// Head-dim tiles the kernels are built for; a head dim uses the smallest tile that holds it.
pub const HEAD_TILES: [u32; 4] = [16, 32, 64, 128];
/// Largest query tile (invocations per attention workgroup).
pub const MAX_QUERY_TILE: u32 = 64;
/// Bytes of workgroup memory the attention kernels may use: WebGPU's default limit.
pub const WORKGROUP_BYTES: u32 = 16384;
/// Most coarse levels the far-field kernels walk (the length of far_chain.wgsl's level chain).
pub const MAX_LEVELS: usize = 32;
/// Workgroup bytes besides the key tiles: the far field's level chain (2 x 32 words, and one
/// word that WebGPU counts as 16: every workgroup variable is rounded up to 16 bytes).
const CHAIN_BYTES: u32 = 4 * 2 * MAX_LEVELS as u32 + 16;
/// Invocations per workgroup of the kernels that give each element (or row) one invocation.
pub(crate) const WG_ELEMENTS: u32 = 64;
/// Invocations per workgroup of the kernels that reduce over a group's tokens (downsampling,
/// weight gradients) in workgroup memory.
pub(crate) const REDUCE_THREADS: u32 = 256;
/// Rows of one cell that a learned-downsampling workgroup computes together.
pub(crate) const ROW_BLOCK: u32 = 4;
/// Lanes per channel of a downsampling workgroup (HEAD_TILE x DOWNSAMPLE_LANES invocations).
/// One lane: workgroups of HEAD_TILE invocations instead of 256 (1 to 16 lanes reduced
/// through workgroup memory). The large workgroups' barriers made downsampling 70% of the
/// ViT's time on SwiftShader (75 ms of 106 per digit, 4.3 ms with one lane), and they were no
/// faster on lavapipe. A GPU with long learned groups
/// may want more lanes: measure there (`multipole bench`) before raising it.
pub(crate) const DOWNSAMPLE_LANES: u32 = 1;
/// decode.wgsl: the largest head dim (its q row lives in workgroup memory), the channels each
/// invocation of a head's workgroup owns, the most entries of a near or far list, and the
/// words per level of its table.
pub(crate) const DEC_MAX_D: u32 = crate::config::MAX_HEAD_DIM as u32;
pub(crate) const DEC_CHANNELS: u32 = DEC_MAX_D.div_ceil(WG_ELEMENTS);
pub(crate) const DEC_LIST: u32 = 4;
pub(crate) const DEC_LEVEL_WORDS: u32 = 4;
/// decode_advance moves one counter: a single invocation.
pub(crate) const DEC_ADVANCE_THREADS: u32 = 1;

/// Declares the binding indices of group 0 once: as Rust constants in `binding`, and as the
/// `B_<NAME>` list written into every attention family's header. Each buffer role has its own
/// index across the families, so one name means one buffer everywhere.
macro_rules! bindings {
    ($($(#[$doc:meta])* $name:ident = $index:literal,)*) => {
        /// Binding indices of group 0 in the attention families (`B_<NAME>` in WGSL).
        pub(crate) mod binding {
            $($(#[$doc])* pub const $name: u32 = $index;)*
        }
        const BINDINGS: &[(&str, u32)] = &[$((concat!("B_", stringify!($name)), $index),)*];
        /// How many binding indices there are (they run from 0 without gaps).
        pub(crate) const ROLE_COUNT: usize = [$($index),*].len();
    };
}

bindings! {
    /// `Params` (uniform).
    PARAMS = 0,
    /// The geometry tables.
    GEOM = 1,
    Q = 2,
    K = 3,
    V = 4,
    /// Coarse keys, then coarse values, of every level.
    COARSE = 5,
    /// The forward's output (written by the forward, read by the backward).
    O = 6,
    LSE = 7,
    /// The coarse rows one downsampling dispatch writes (`RowRange`, uniform).
    ROW_RANGE = 8,
    /// Packed downsampling weights.
    WEIGHTS = 9,
    /// The upstream gradient dO.
    D_O = 10,
    /// (LSE, D) per query: written by backward_stats, read by the other backward kernels.
    STATS_OUT = 11,
    STATS = 12,
    DQ = 13,
    DK = 14,
    DV = 15,
    DCOARSE = 16,
    DW = 17,
    /// The weight elements one gradient dispatch writes (`GradRange`, uniform).
    GRAD_RANGE = 18,
    /// K, V and the coarse rows bound again as rows of vec4s, for the Direct forward kernels
    /// and the backward's `Lanes` kernels (which read Q and dO that way too).
    K4 = 19,
    V4 = 20,
    COARSE4 = 21,
    /// The decoders' uniforms (`DecodeParams`, `DecodeCount`), tables, token count (read, and
    /// written by decode_advance) and state (read by decode_attend, written by decode_update).
    DEC_PARAMS = 22,
    DEC_COUNT = 23,
    DEC_GEOM = 24,
    DEC_LEN = 25,
    DEC_LEN_W = 26,
    DEC_STATE = 27,
    DEC_STATE_W = 28,
    /// decode_seed's table: a new level's rows and their children in the level below.
    DEC_SEED = 29,
    Q4 = 30,
    D_O4 = 31,
    /// The O(n) variant: each segment's far-field result, (o, lse), of the downward pass.
    DOWN = 32,
    /// The O(n) variant's backward: each segment's aggregates of its queries (the upward pass).
    UP = 33,
}

/// A kernel family: one `.wgsl` file and its Rust twin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Downsample,
    Attention,
    AttentionBackward,
    DownsampleBackward,
    /// The vision transformer's layers; independent of the head-dim specialisation.
    #[cfg(feature = "vit")]
    Layers,
    /// The decoders (decode.wgsl); one build, independent of the head-dim tile.
    Decode,
    /// The O(n) variant's far field (linear.wgsl), f32, one build per head tile
    /// (`Spec::linear`).
    Linear,
    /// Its backward (linear_backward.wgsl), likewise.
    LinearBackward,
}

impl Family {
    /// The attention families, built per specialisation.
    pub const ALL: [Family; 4] = [
        Family::Downsample,
        Family::Attention,
        Family::AttentionBackward,
        Family::DownsampleBackward,
    ];

    /// The families with f16 builds: the forward pass. The backward reads and writes f32.
    pub const STORES_F16: [Family; 2] = [Family::Downsample, Family::Attention];

    /// Whether `spec.f16` changes this family's build.
    pub fn stores_f16(self) -> bool {
        Self::STORES_F16.contains(&self)
    }
}

/// Coarse rows per backward_dkv_far workgroup.
pub const BACK_ROWS: u32 = 4;
/// Lanes of a backward_dkv_far workgroup.
const FAR_LANES: u32 = 64;

/// backward_dkv_far_rows (the CPU adapters' dK~, dV~ kernel): lanes per workgroup, one coarse
/// row each (a SIMD vector of llvmpipe on AVX2), and at most this many neighbouring cells of a
/// level per workgroup (two share 3 of 4 sources in 1D, 27 of 30 in 2D; more share fewer).
pub(crate) const ROW_LANES: u32 = 8;
pub(crate) const FAR_SIBLINGS: u32 = 2;
// The kernel merges the siblings' transposed far lists with four cursors.
const _: () = assert!(FAR_SIBLINGS <= 4);
/// backward_dkv_far_quads (2D): rows of each cell of a 2 x 2 quad per workgroup, two per lane
/// over a quarter of the ROW_LANES lanes.
pub(crate) const QUAD_ROWS: u32 = ROW_LANES / 4 * 2;
/// Channels of one kind of private row (q, dO, an accumulator) an invocation of the CPU
/// adapters' kernels holds over its rows (`Spec::lane_rows`).
const LANE_CHANNELS: u32 = 256;

impl Spec {
    /// Rows (head, token) per workgroup of downsample_backward.wgsl's `tokens_*` kernels, a
    /// lane per channel: one from a 32-wide head tile up (the row's index arithmetic is then
    /// the workgroup's, computed once per SIMD loop on a CPU adapter), two at 16 so that a
    /// GPU's 32-lane warps stay full.
    pub(crate) fn token_rows(&self) -> u32 {
        (32 / self.head_tile).max(1)
    }
}

/// How the forward kernels (`near_field`, `far_field`, `dense_attention`) feed keys to their
/// queries. Both compute the same thing; `GpuContext` picks one per adapter
/// ([`GpuContext::forward_kernels`](super::GpuContext::forward_kernels)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ForwardKernels {
    /// A workgroup stages tiles of keys and values in workgroup memory, loaded by all its
    /// invocations together, and every query reads them from there: for GPUs, where barriers
    /// are cheap and coalesced loads matter.
    #[default]
    Tiled,
    /// Every invocation reads the keys straight from storage, in the same order as the rest of
    /// its workgroup, with no staging and no barriers: for CPU adapters (lavapipe), which run a
    /// workgroup as SIMD loops over its invocations, so a load shared by all of them is one
    /// broadcast while a barrier switches between the loops.
    Direct,
}

/// The compile-time shape of one shader build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Spec {
    /// Head dimension tile (16, 32, 64, 128): the width of the private q and accumulator rows.
    pub head_tile: u32,
    /// Queries per attention workgroup: min(tokens per fine cell, 64).
    pub query_tile: u32,
    /// Q, K, V, O and the coarse rows stored as f16 (`STORE` in WGSL; needs `SHADER_F16`).
    /// Only the forward families (`Family::STORES_F16`) have f16 builds.
    pub f16: bool,
    /// How the attention kernels read keys: `Family::Attention`'s forward, and which of
    /// `Family::AttentionBackward`'s kernels a build holds (Direct: the CPU adapters' `Lanes`).
    pub forward: ForwardKernels,
    /// Reductions with subgroup operations (wgpu's `SUBGROUP`, native only): only
    /// `Family::DownsampleBackward`'s weight gradients depend on it.
    pub subgroups: bool,
}

impl Spec {
    /// The specialisation for head dim `d` and `cell_tokens` tokens per fine cell.
    pub fn for_shape(d: usize, cell_tokens: usize) -> Option<Spec> {
        let head_tile = *HEAD_TILES.iter().find(|&&t| d <= t as usize)?;
        let query_tile = (cell_tokens as u32).clamp(1, MAX_QUERY_TILE);
        Some(Spec {
            head_tile,
            query_tile,
            f16: false,
            forward: ForwardKernels::Tiled,
            subgroups: false,
        })
    }

    /// The same build with the tensors stored as f16 (`f16 = true`) or f32.
    pub fn with_f16(self, f16: bool) -> Spec {
        Spec { f16, ..self }
    }

    /// The same build with subgroup reductions (`subgroups = true`) or without.
    pub fn with_subgroups(self, subgroups: bool) -> Spec {
        Spec { subgroups, ..self }
    }

    /// This shape with the forward kernels `kernels`, where they can serve head dim `d`: the
    /// Direct kernels read rows as vec4s, so they need d a multiple of 4 (else Tiled).
    pub fn with_forward(self, kernels: ForwardKernels, d: usize) -> Spec {
        let forward = match kernels {
            ForwardKernels::Direct if d.is_multiple_of(4) => ForwardKernels::Direct,
            _ => ForwardKernels::Tiled,
        };
        Spec { forward, ..self }
    }

    /// Queries per invocation of the forward kernels. Direct: enough that a workgroup is one
    /// SIMD row of a CPU (8 lanes) where the tile allows, with at most 256 channels of q rows
    /// (each key element read then serves up to 4 queries per lane: at n = 16K, m = 32,
    /// d = 64 on lavapipe 4 rows took the near and far fields from 133 + 131 ms to 102 + 92).
    /// Tiled: 1, so that a GPU's workgroup keeps its invocations and its registers hold one q
    /// row and one accumulator.
    pub fn query_rows(&self) -> u32 {
        match self.forward {
            ForwardKernels::Tiled => 1,
            ForwardKernels::Direct => self.lane_rows(),
        }
    }

    /// Rows per invocation where a CPU adapter's workgroup reads shared rows straight from
    /// storage (the Direct forward, the backward's `Lanes` dQ and near dK, dV): enough that a
    /// workgroup is one SIMD row of a CPU (8 lanes) where the tile allows, with at most
    /// LANE_CHANNELS channels per kind of private row.
    pub fn lane_rows(&self) -> u32 {
        (self.query_tile / 8).clamp(1, LANE_CHANNELS / self.head_tile)
    }

    /// Keys staged per tile (Tiled): a multiple of 4 (the kernels add keys four at a time), as
    /// many as fit, at most 32. A key takes a K row, a V row, a tag and a score offset.
    pub fn key_tile(&self) -> u32 {
        (1..=8)
            .rev()
            .map(|b| 4 * b)
            .find(|&k| Self::attention_bytes(self.head_tile, k) <= WORKGROUP_BYTES)
            .unwrap_or(4)
    }

    /// Workgroup memory of the attention kernels for this specialisation, counted as WebGPU
    /// does: K and V tiles, tags and offsets, each rounded up to 16 bytes, and the chain (the
    /// Direct kernels use none).
    pub fn attention_workgroup_bytes(&self) -> u32 {
        match self.forward {
            ForwardKernels::Tiled => Self::attention_bytes(self.head_tile, self.key_tile()),
            ForwardKernels::Direct => 0,
        }
    }

    fn attention_bytes(head_tile: u32, key_tile: u32) -> u32 {
        let round = |b: u32| b.div_ceil(16) * 16;
        2 * round(4 * key_tile * head_tile) + 2 * round(4 * key_tile) + CHAIN_BYTES
    }

    /// Rows staged per tile by the backward kernels: as many as fit beside the coarse rows of
    /// backward_dkv_far and the level chain of backward_dq_far, at most 32.
    pub fn back_tile(&self) -> u32 {
        (1..=32)
            .rev()
            .find(|&t| Self::backward_bytes(self.head_tile, t) <= WORKGROUP_BYTES)
            .unwrap_or(1)
    }

    /// Workgroup memory of attention_backward.wgsl, counted as WebGPU does.
    pub fn backward_workgroup_bytes(&self) -> u32 {
        Self::backward_bytes(self.head_tile, self.back_tile())
    }

    fn backward_bytes(head_tile: u32, tile: u32) -> u32 {
        let round = |b: u32| b.div_ceil(16) * 16;
        2 * round(4 * tile * head_tile)
            + 3 * round(4 * tile)
            + CHAIN_BYTES
            + 2 * round(4 * BACK_ROWS * head_tile)
            + round(4 * FAR_LANES)
            + 2 * round(4 * FAR_LANES * BACK_ROWS)
    }

    /// The one build of `Family::Layers`, which has no specialisation.
    #[cfg(feature = "vit")]
    pub const LAYERS: Spec = Spec {
        head_tile: 16,
        query_tile: 1,
        f16: false,
        forward: ForwardKernels::Tiled,
        subgroups: false,
    };

    /// The build of `Family::Linear` and `Family::LinearBackward` for this head tile: they
    /// depend on nothing else (one invocation per row, rows read from storage, f32).
    pub fn linear(self) -> Spec {
        Spec {
            head_tile: self.head_tile,
            query_tile: 1,
            f16: false,
            forward: ForwardKernels::Tiled,
            subgroups: false,
        }
    }

    /// The one build of `Family::Decode`, which has no specialisation.
    pub const DECODE: Spec = Spec {
        head_tile: 16,
        query_tile: 1,
        f16: false,
        forward: ForwardKernels::Tiled,
        subgroups: false,
    };

    /// Every f32 specialisation with the Tiled forward (the one WebGPU adapters get); each
    /// has an f16 twin for the families in `Family::STORES_F16` (see `builds`).
    pub fn all() -> Vec<Spec> {
        let query_tiles = (0..=MAX_QUERY_TILE.trailing_zeros()).map(|s| 1u32 << s);
        query_tiles
            .flat_map(|query_tile| {
                HEAD_TILES.map(|head_tile| Spec {
                    head_tile,
                    query_tile,
                    f16: false,
                    forward: ForwardKernels::Tiled,
                    subgroups: false,
                })
            })
            .collect()
    }

    /// `all()` with the Direct forward as well: every build of `Family::Attention` a native
    /// program can make.
    pub fn all_forward() -> Vec<Spec> {
        let tiled = Self::all();
        let direct = tiled.iter().map(|&s| Spec {
            forward: ForwardKernels::Direct,
            ..s
        });
        tiled.iter().copied().chain(direct).collect()
    }

    /// Every (family, specialisation) build the crate can make: every family in f32, the
    /// forward families in f16 too, the Direct attention kernels (CPU adapters) in both, with
    /// the backward's in f32, the downsampling backward with subgroups, the decoders' one
    /// build, and the O(n) variant's two families once per head tile.
    /// Tests validate each, and the browser check compiles each.
    pub fn builds() -> Vec<(Family, Spec)> {
        let mut out = Vec::new();
        for spec in Self::all() {
            for family in Family::ALL {
                out.push((family, spec));
            }
            for family in Family::STORES_F16 {
                out.push((family, spec.with_f16(true)));
            }
            let direct = Spec {
                forward: ForwardKernels::Direct,
                ..spec
            };
            out.push((Family::Attention, direct));
            out.push((Family::Attention, direct.with_f16(true)));
            out.push((Family::AttentionBackward, direct));
            out.push((Family::DownsampleBackward, spec.with_subgroups(true)));
        }
        out.push((Family::Decode, Spec::DECODE));
        for head_tile in HEAD_TILES {
            let spec = Self::all()[0].linear();
            let spec = Spec { head_tile, ..spec };
            out.push((Family::Linear, spec));
            out.push((Family::LinearBackward, spec));
        }
        out
    }
}

/// The complete WGSL text of a family for one specialisation.
pub fn source(family: Family, spec: Spec) -> String {
    let key_tile = spec.key_tile();
    let back_tile = spec.back_tile();
    let vecs = |rows: u32| rows * spec.head_tile / 4;
    let consts = [
        ("HEAD_TILE", spec.head_tile),
        ("HEAD_VEC", vecs(1)),
        ("KEY_TILE", key_tile),
        ("TILE_VECS", vecs(key_tile)),
        ("QUERY_TILE", spec.query_tile),
        ("QUERY_ROWS", spec.query_rows()),
        ("QUERY_LANES", spec.query_tile / spec.query_rows()),
        ("LANE_ROWS", spec.lane_rows()),
        ("LANE_COUNT", spec.query_tile / spec.lane_rows()),
        ("BACK_TILE", back_tile),
        ("BACK_VECS", vecs(back_tile)),
        ("BACK_ROWS", BACK_ROWS),
        ("BACK_ROW_VECS", vecs(BACK_ROWS)),
        ("FAR_LANES", FAR_LANES),
        ("ROW_LANES", ROW_LANES),
        ("FAR_SIBLINGS", FAR_SIBLINGS),
        ("QUAD_ROWS", QUAD_ROWS),
        ("TOKEN_ROWS", spec.token_rows()),
        ("TOKEN_LANES", spec.token_rows() * spec.head_tile),
        ("MAX_LEVELS", MAX_LEVELS as u32),
        ("LEVEL_WORDS", LEVEL_WORDS as u32),
        ("WG_ELEMENTS", WG_ELEMENTS),
        ("REDUCE_THREADS", REDUCE_THREADS),
        ("ROW_BLOCK", ROW_BLOCK),
        ("DOWNSAMPLE_LANES", DOWNSAMPLE_LANES),
        ("DEC_MAX_D", DEC_MAX_D),
        ("DEC_CHANNELS", DEC_CHANNELS),
        ("DEC_LIST", DEC_LIST),
        ("DEC_LEVEL_WORDS", DEC_LEVEL_WORDS),
        ("DEC_ADVANCE_THREADS", DEC_ADVANCE_THREADS),
        ("KEPT_GROUPS", crate::geometry::CAUSAL_KEPT_GROUPS as u32),
    ];
    // `enable` must come before every declaration. STORE is the element type of the tensors
    // (Q, K, V, O, coarse rows); the kernels convert to f32 on every read.
    let f16 = spec.f16 && family.stores_f16();
    let mut header = String::from(if f16 {
        "enable f16;\nalias STORE = f16;\n"
    } else {
        "alias STORE = f32;\n"
    });
    header.push_str(&structs::wgsl());
    for (name, value) in consts.iter().chain(BINDINGS) {
        header.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    let parts: &[&str] = match family {
        Family::Downsample => &[COMMON, DOWNSAMPLE],
        Family::Attention => match spec.forward {
            ForwardKernels::Tiled => &[COMMON, FAR_CHAIN, MERGE, ATTENTION, ATTENTION_TILED],
            ForwardKernels::Direct => &[COMMON, MERGE, ATTENTION, ATTENTION_DIRECT],
        },
        Family::AttentionBackward => match spec.forward {
            ForwardKernels::Tiled => &[
                COMMON,
                FAR_CHAIN,
                ATTENTION_BACKWARD,
                ATTENTION_BACKWARD_TILED,
            ],
            ForwardKernels::Direct => &[COMMON, ATTENTION_BACKWARD, ATTENTION_BACKWARD_LANES],
        },
        Family::DownsampleBackward => match spec.subgroups {
            false => &[COMMON, DOWNSAMPLE_BACKWARD, DOWNSAMPLE_BACKWARD_REDUCE],
            true => &[COMMON, DOWNSAMPLE_BACKWARD, DOWNSAMPLE_BACKWARD_SUBGROUPS],
        },
        Family::Decode => &[DECODE],
        Family::Linear => &[COMMON, LINEAR],
        Family::LinearBackward => &[COMMON, LINEAR_BACKWARD],
        // The layers have a header of their own (shaders::layers::wgsl_header).
        #[cfg(feature = "vit")]
        Family::Layers => return [&structs::wgsl(), &layers::wgsl_header(), LAYERS].concat(),
    };
    let mut s = header;
    for p in parts {
        s.push_str(p);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files whose numbers come from a header (layers.wgsl: with the vit feature).
    const CONVERTED: [(&str, &str); 16] = [
        ("common.wgsl", COMMON),
        ("merge.wgsl", MERGE),
        ("attention.wgsl", ATTENTION),
        ("attention_tiled.wgsl", ATTENTION_TILED),
        ("attention_direct.wgsl", ATTENTION_DIRECT),
        ("far_chain.wgsl", FAR_CHAIN),
        ("downsample.wgsl", DOWNSAMPLE),
        ("attention_backward.wgsl", ATTENTION_BACKWARD),
        ("attention_backward_tiled.wgsl", ATTENTION_BACKWARD_TILED),
        ("attention_backward_lanes.wgsl", ATTENTION_BACKWARD_LANES),
        ("downsample_backward.wgsl", DOWNSAMPLE_BACKWARD),
        (
            "downsample_backward_reduce.wgsl",
            DOWNSAMPLE_BACKWARD_REDUCE,
        ),
        (
            "downsample_backward_subgroups.wgsl",
            DOWNSAMPLE_BACKWARD_SUBGROUPS,
        ),
        ("decode.wgsl", DECODE),
        ("linear.wgsl", LINEAR),
        ("linear_backward.wgsl", LINEAR_BACKWARD),
    ];

    /// Byte offsets of `@binding(` or `@workgroup_size(` followed by a literal number.
    fn bare_numbers(text: &str) -> Vec<usize> {
        ["@binding(", "@workgroup_size("]
            .iter()
            .flat_map(|attr| text.match_indices(attr).map(|(at, _)| at + attr.len()))
            .filter(|&at| {
                text[at..]
                    .trim_start()
                    .starts_with(|c: char| c.is_ascii_digit())
            })
            .collect()
    }

    #[test]
    fn converted_shaders_name_their_bindings_and_workgroup_sizes() {
        #[cfg(feature = "vit")]
        let layers = [("layers.wgsl", LAYERS)];
        #[cfg(not(feature = "vit"))]
        let layers: [(&str, &str); 0] = [];
        for (file, text) in CONVERTED.into_iter().chain(layers) {
            let bare = bare_numbers(text);
            assert!(
                bare.is_empty(),
                "{file} has a bare number at bytes {bare:?}: use a constant from src/gpu/shaders/"
            );
        }
    }

    #[test]
    fn the_scan_catches_a_bare_number() {
        let old = "@group(0) @binding( 3) var k: u32;\n@compute @workgroup_size(64)\nfn f() {}";
        assert_eq!(bare_numbers(old).len(), 2);
        let new = "@group(0) @binding(B_K) var k: u32;\n@compute @workgroup_size(WG_ELEMENTS)";
        assert!(bare_numbers(new).is_empty());
    }

    #[test]
    fn each_buffer_role_has_its_own_binding() {
        let mut indices: Vec<u32> = BINDINGS.iter().map(|&(_, i)| i).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), BINDINGS.len(), "{BINDINGS:?}");
        assert_eq!(binding::Q, 2);
        assert_eq!(BINDINGS[0], ("B_PARAMS", 0));
    }

    #[test]
    fn the_header_declares_the_shared_constants() {
        let spec = Spec::for_shape(64, 64).unwrap();
        let text = source(Family::AttentionBackward, spec);
        for line in [
            "const MAX_LEVELS: u32 = 32u;",
            "const LEVEL_WORDS: u32 = 12u;",
            "const FAR_LANES: u32 = 64u;",
            "const WG_ELEMENTS: u32 = 64u;",
            "const B_D_O: u32 = 10u;",
            "const HEAD_TILE: u32 = 64u;",
        ] {
            assert_eq!(text.matches(line).count(), 1, "{line}");
        }
    }
}
