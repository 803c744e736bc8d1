//! CPU reference: f64 accumulation, written to be read against `docs/fma.md` line by line.
//!
//! Each function mirrors one GPU kernel: `downsample` (downsample.wgsl), the near and far
//! triples (the `near_field` and `far_field` entry points of attention.wgsl) and
//! `Triple::merge` (merge.wgsl); `fma_backward`
//! mirrors the backward kernels (attention_backward.wgsl, downsample_backward.wgsl). The O(n)
//! variant (docs/fma.md §13) lives in `linear.rs` (forward) and `linear_backward.rs`.

mod backward;
mod decoder;
mod dense;
mod downsample;
mod fields;
mod fma;
mod linear;
mod linear_backward;
mod query_attention;
mod triple;

#[doc(hidden)]
pub use backward::linear_backward_factored;
pub use backward::{Gradients, fma_backward};
pub use decoder::Decoder;
pub(crate) use decoder::{decoder_geometry, past_weights};
pub use dense::dense;
pub use downsample::{Coarse, downsample};
#[cfg(feature = "vit")]
pub(crate) use fields::far_rows_of;
#[cfg(feature = "study")]
pub(crate) use fields::{far_rows, level_far_rows};
#[cfg(feature = "study")]
pub(crate) use fma::Head;
pub use fma::{Output64, fma_forward, fma_forward_f64};
#[doc(hidden)]
pub use linear::linear_forward_downward;
pub use query_attention::{FarAttention, QueryAttention, query_attention};
pub use triple::Triple;

/// Attention output: `o` of shape [batch, heads, n, d] and `lse` of shape [batch, heads, n].
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub o: Vec<f32>,
    pub lse: Vec<f32>,
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&a| a as f64).collect()
}
