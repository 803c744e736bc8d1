//! The uniforms the kernels read, declared once: each `shared_struct!` below is both the
//! `#[repr(C)]` Rust struct the host fills and the WGSL `struct` written into every shader's
//! header (`source`), so a field added, removed or moved changes both or neither.

/// Field types a shared struct may hold: 4-byte scalars spelled the same in Rust and WGSL,
/// so that `#[repr(C)]` and WGSL's uniform layout put every field at the same offset.
pub(crate) trait Scalar {}
impl Scalar for u32 {}
impl Scalar for f32 {}

pub(crate) const fn scalar<T: Scalar>() {}

macro_rules! shared_struct {
    (
        $(#[$meta:meta])*
        pub(crate) struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ident,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            /// The WGSL declaration of this struct.
            pub(crate) const WGSL: &'static str = concat!(
                "struct ", stringify!($name), " {\n",
                $("    ", stringify!($field), ": ", stringify!($ty), ",\n",)*
                "}\n"
            );
        }

        $(const _: () = scalar::<$ty>();)*
        // Uniform buffers are bound in 16-byte units on some backends: pad explicitly.
        const _: () = assert!(std::mem::size_of::<$name>() % 16 == 0);
    };
}

shared_struct! {
    /// `params` of every FMA kernel: the shape, the hierarchy and where each table starts.
    pub(crate) struct Params {
        /// Real tokens.
        n: u32,
        /// Head dimension (at most the build's HEAD_TILE).
        d: u32,
        /// Heads in this dispatch (batch x heads, or a chunk of them).
        bh: u32,
        /// Coarse keys per group.
        p: u32,
        /// The real token grid (1D: 1 x n).
        real_h: u32,
        real_w: u32,
        /// The fine cell (1D: 1 x m).
        cell_h: u32,
        cell_w: u32,
        /// Fine cells per padded grid row.
        cells_x: u32,
        fine_cells: u32,
        /// Coarse levels L.
        levels: u32,
        causal: u32,
        /// The score scale tau.
        scale: f32,
        /// Offsets (in u32 words) of the geometry tables in `geom`.
        near_offsets: u32,
        near_entries: u32,
        far_offsets: u32,
        far_entries: u32,
        parent: u32,
        rows: u32,
        level_table: u32,
        /// Coarse rows per head (all cells of all levels, times p).
        total_rows: u32,
        /// Offsets of the value weights and the biases in `weights`.
        wv_base: u32,
        bk_base: u32,
        bv_base: u32,
        /// Query tiles per fine cell.
        tiles_per_cell: u32,
        /// Offset of the coarse values in `coarse`.
        coarse_v_base: u32,
        /// Table of each coarse row's finer rows (Mean, level by level).
        children: u32,
        children_per_row: u32,
        /// The transposed near and far lists (the backward: which cells see this one).
        near_t_offsets: u32,
        near_t_entries: u32,
        far_t_offsets: u32,
        far_t_entries: u32,
        /// 1 in the O(n) variant (`FmaConfig::downsample_queries`): coarse queries beside the
        /// coarse keys and values.
        queries: u32,
        /// Offsets of the query weights and biases in `weights` (the O(n) variant).
        wq_base: u32,
        bq_base: u32,
        /// Table of each coarse row's parent segment (the O(n) variant's downward pass).
        seg_parent: u32,
    }
}

shared_struct! {
    /// `B_ROW_RANGE`: the coarse rows one downsampling dispatch writes (a level, or all).
    pub(crate) struct RowRange {
        first: u32,
        count: u32,
        /// The rows' level (0-based): read by the O(n) variant's upward pass only.
        level: u32,
        _pad: u32,
    }
}

shared_struct! {
    /// `B_GRAD_RANGE`: the weight-gradient elements one dispatch covers (weights, then biases).
    pub(crate) struct GradRange {
        first: u32,
        count: u32,
        /// 1: add to dw (a later chunk of heads) instead of writing it.
        accumulate: u32,
        _pad: u32,
    }
}

shared_struct! {
    /// `dp` of decode.wgsl: one decoder's shape and where its state and tables start.
    pub(crate) struct DecodeParams {
        d: u32,
        bh: u32,
        /// Tokens per fine cell (the dense baseline: its capacity).
        cell: u32,
        /// Ring slots (two cells; the dense baseline: its capacity).
        ring: u32,
        p: u32,
        levels: u32,
        /// 0 Mean, 1 Basis, 2 Depthwise (`kind_code`).
        kind: u32,
        multiplicity: u32,
        scale: f32,
        /// Offsets of the near and far tables in `dgeom`.
        near_table: u32,
        far_table: u32,
        /// Offsets in the state: ring values, open sums, kept rows.
        ring_v: u32,
        open_k: u32,
        open_v: u32,
        kept_k: u32,
        kept_v: u32,
        /// Offsets of the value weights and the biases in `weights`.
        wv_base: u32,
        bk_base: u32,
        bv_base: u32,
        _pad: u32,
    }
}

shared_struct! {
    /// `count` of decode.wgsl: tokens one dispatch adds (1 for a step, the prompt's length
    /// for a prefill's state build).
    pub(crate) struct DecodeCount {
        tokens: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

#[cfg(feature = "vit")]
shared_struct! {
    /// `P` of layers.wgsl: the shape of one layer dispatch.
    pub(crate) struct LayerParams {
        /// Matrix rows (images x tokens, or images).
        rows: u32,
        /// Linear: input and output widths.
        inp: u32,
        out: u32,
        /// Row width (norms, softmax, pooling, position).
        dim: u32,
        /// Tokens per image.
        tokens: u32,
        heads: u32,
        /// Head dimension.
        hd: u32,
        /// Image side, patch side and pixel window per token (patches).
        side: u32,
        stride: u32,
        window: u32,
        /// Images.
        count: u32,
        /// Elements (or rows) this dispatch covers.
        len: u32,
    }
}

/// The declarations written into a family's header. Every header gets all of them: a
/// declaration no entry point uses costs nothing.
pub(crate) fn wgsl() -> String {
    let structs = [
        Params::WGSL,
        RowRange::WGSL,
        GradRange::WGSL,
        DecodeParams::WGSL,
        DecodeCount::WGSL,
        #[cfg(feature = "vit")]
        LayerParams::WGSL,
    ];
    structs.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_follow_the_rust_fields_in_order() {
        assert!(RowRange::WGSL.starts_with("struct RowRange {\n    first: u32,\n    count: u32,"));
        assert!(Params::WGSL.contains("    causal: u32,\n    scale: f32,\n    near_offsets: u32,"));
        // One line per field, each a 4-byte scalar: the offsets agree with repr(C).
        let fields = Params::WGSL.lines().filter(|l| l.ends_with(',')).count();
        assert_eq!(fields * 4, std::mem::size_of::<Params>());
    }
}
