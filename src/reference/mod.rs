//! CPU reference: f64 accumulation, written to be read against `fma-spec.md` line by line.
//!
//! Each function mirrors one GPU kernel: `downsample` (downsample.wgsl), the near and far
//! triples (near_field.wgsl, far_field.wgsl) and `Triple::merge` (merge.wgsl).

mod dense;
mod downsample;
mod fma;
mod triple;

pub use dense::dense;
pub use downsample::{Coarse, downsample};
pub use fma::fma_forward;
pub use triple::Triple;

/// Attention output: `o` of shape [batch, heads, n, d] and `lse` of shape [batch, heads, n].
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub o: Vec<f32>,
    pub lse: Vec<f32>,
}
