//! The GPU path: a device context, the kernels' Rust twins and the FMA dispatcher.

mod attention;
mod attention_backward;
mod backward;
#[cfg(feature = "vit")]
pub mod browser_checks;
mod buffers;
mod chunks;
mod context;
mod decoder;
mod decoder_dense;
mod decoder_fma;
mod dense;
mod downsample;
mod downsample_backward;
mod host;
#[cfg(feature = "vit")]
pub mod layers;
mod linear;
mod linear_backward;
mod params;
mod plan;
pub mod shaders;
mod timing;
#[cfg(feature = "vit")]
mod vit;

pub use backward::{BackwardIo, Tape};
pub use context::GpuContext;
pub use decoder::DecodeIo;
pub use decoder_dense::DenseDecoder;
pub use decoder_fma::FmaDecoder;
pub use dense::DensePlan;
#[cfg(feature = "vit")]
pub use layers::LayerKernels;
pub use plan::{AttentionIo, FmaPlan};
pub use shaders::ForwardKernels;
pub use timing::GpuTimer;
#[cfg(feature = "vit")]
pub use vit::VitGpu;
