//! One Rust twin per WGSL kernel family: its pipelines, bindings and dispatches.

pub(crate) mod attention;
pub(crate) mod attention_backward;
pub(crate) mod downsample;
pub(crate) mod downsample_backward;
#[cfg(feature = "vit")]
pub mod layers;
pub(crate) mod linear;
pub(crate) mod linear_backward;
