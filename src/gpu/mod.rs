//! The GPU path: a device context, the kernels' Rust twins and the FMA dispatcher.

mod attention;
mod context;
mod downsample;
mod params;
mod plan;
pub mod shaders;

pub use context::GpuContext;
pub use plan::{AttentionIo, FmaPlan};
