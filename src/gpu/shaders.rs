//! The WGSL sources, embedded with `include_str!` so the crate works on the web, and their
//! specialisation: the head-dim tile, key tile and query tile become `const` declarations
//! (WGSL sizes private arrays only with constants, not with pipeline overrides).

pub(crate) const COMMON: &str = include_str!("../../shaders/common.wgsl");
pub(crate) const MERGE: &str = include_str!("../../shaders/merge.wgsl");
pub(crate) const ATTENTION: &str = include_str!("../../shaders/attention.wgsl");
pub(crate) const FAR_CHAIN: &str = include_str!("../../shaders/far_chain.wgsl");
pub(crate) const DOWNSAMPLE: &str = include_str!("../../shaders/downsample.wgsl");
pub(crate) const ATTENTION_BACKWARD: &str = include_str!("../../shaders/attention_backward.wgsl");
pub(crate) const DOWNSAMPLE_BACKWARD: &str = include_str!("../../shaders/downsample_backward.wgsl");
pub(crate) const LAYERS: &str = include_str!("../../shaders/layers.wgsl");

/// Head-dim tiles the kernels are built for; a head dim uses the smallest tile that holds it.
pub const HEAD_TILES: [u32; 4] = [16, 32, 64, 128];
/// Largest query tile (invocations per attention workgroup).
pub const MAX_QUERY_TILE: u32 = 64;
/// Bytes of workgroup memory the attention kernels may use: WebGPU's default limit.
pub const WORKGROUP_BYTES: u32 = 16384;
/// Most coarse levels the far-field kernels walk (MAX_LEVELS in far_chain.wgsl).
pub const MAX_LEVELS: usize = 32;
/// Workgroup bytes besides the key tiles: the far field's level chain (2 x 32 words, and one
/// word that WebGPU counts as 16: every workgroup variable is rounded up to 16 bytes).
const CHAIN_BYTES: u32 = 4 * 2 * MAX_LEVELS as u32 + 16;

/// A kernel family: one `.wgsl` file and its Rust twin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Downsample,
    Attention,
    AttentionBackward,
    DownsampleBackward,
    /// The vision transformer's layers; independent of the head-dim specialisation.
    Layers,
}

impl Family {
    /// The attention families, built per specialisation.
    pub const ALL: [Family; 4] = [
        Family::Downsample,
        Family::Attention,
        Family::AttentionBackward,
        Family::DownsampleBackward,
    ];
}

/// Coarse rows per backward_dkv_far workgroup (BACK_ROWS in attention_backward.wgsl).
pub const BACK_ROWS: u32 = 4;
/// Lanes of a backward_dkv_far workgroup (FAR_LANES in attention_backward.wgsl).
const FAR_LANES: u32 = 64;

/// The compile-time shape of one shader build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Spec {
    /// Head dimension tile (16, 32, 64, 128): the width of the private q and accumulator rows.
    pub head_tile: u32,
    /// Queries per attention workgroup: min(tokens per fine cell, 64).
    pub query_tile: u32,
}

impl Spec {
    /// The specialisation for head dim `d` and `cell_tokens` tokens per fine cell.
    pub fn for_shape(d: usize, cell_tokens: usize) -> Option<Spec> {
        let head_tile = *HEAD_TILES.iter().find(|&&t| d <= t as usize)?;
        let query_tile = (cell_tokens as u32).clamp(1, MAX_QUERY_TILE);
        Some(Spec {
            head_tile,
            query_tile,
        })
    }

    /// Keys staged per tile: as many as fit, at most 32 (one bit each in a u32 mask). A key
    /// takes a K row, a V row, a tag and a score offset.
    pub fn key_tile(&self) -> u32 {
        (1..=32)
            .rev()
            .find(|&k| Self::attention_bytes(self.head_tile, k) <= WORKGROUP_BYTES)
            .unwrap_or(1)
    }

    /// Workgroup memory of the attention kernels for this specialisation, counted as WebGPU
    /// does: K and V tiles, tags and offsets, each rounded up to 16 bytes, and the chain.
    pub fn attention_workgroup_bytes(&self) -> u32 {
        Self::attention_bytes(self.head_tile, self.key_tile())
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
    pub const LAYERS: Spec = Spec {
        head_tile: 16,
        query_tile: 1,
    };

    /// Every specialisation the crate can build (for validation tests).
    pub fn all() -> Vec<Spec> {
        let query_tiles = (0..=MAX_QUERY_TILE.trailing_zeros()).map(|s| 1u32 << s);
        query_tiles
            .flat_map(|query_tile| {
                HEAD_TILES.map(|head_tile| Spec {
                    head_tile,
                    query_tile,
                })
            })
            .collect()
    }
}

/// The complete WGSL text of a family for one specialisation.
pub fn source(family: Family, spec: Spec) -> String {
    if family == Family::Layers {
        return format!("{}{LAYERS}", super::layers::wgsl_header());
    }
    let header = format!(
        "const HEAD_TILE: u32 = {h}u;\nconst HEAD_VEC: u32 = {hv}u;\nconst KEY_TILE: u32 = {k}u;\n\
         const TILE_VECS: u32 = {tv}u;\nconst QUERY_TILE: u32 = {q}u;\n\
         const BACK_TILE: u32 = {bt}u;\nconst BACK_VECS: u32 = {bv}u;\nconst BACK_ROWS: u32 = {br}u;\n\
         const BACK_ROW_VECS: u32 = {brv}u;\n",
        h = spec.head_tile,
        hv = spec.head_tile / 4,
        k = spec.key_tile(),
        tv = spec.key_tile() * spec.head_tile / 4,
        q = spec.query_tile,
        bt = spec.back_tile(),
        bv = spec.back_tile() * spec.head_tile / 4,
        br = BACK_ROWS,
        brv = BACK_ROWS * spec.head_tile / 4,
    );
    let parts: &[&str] = match family {
        Family::Downsample => &[COMMON, DOWNSAMPLE],
        Family::Attention => &[COMMON, FAR_CHAIN, MERGE, ATTENTION],
        Family::AttentionBackward => &[COMMON, FAR_CHAIN, ATTENTION_BACKWARD],
        Family::DownsampleBackward => &[COMMON, DOWNSAMPLE_BACKWARD],
        Family::Layers => &[LAYERS],
    };
    let mut s = header;
    for p in parts {
        s.push_str(p);
        s.push('\n');
    }
    s
}
