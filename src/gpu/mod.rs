//! The GPU path, in layers that only look down: `shaders` (the WGSL sources, their
//! specialisation and every number they share with Rust), `runtime` (the device, uniforms,
//! buffers, host staging, timing), `kernels` (one Rust twin per kernel family), `plan` (the FMA
//! and dense passes, forward and backward) and `decode` (causal generation).

pub(crate) mod decode;
#[cfg(test)]
mod entries;
pub(crate) mod kernels;
pub(crate) mod plan;
pub(crate) mod runtime;
pub mod shaders;

pub use decode::DecodeIo;
pub use decode::decoder::{GpuDecoder, Prompt};
pub use decode::dense::{DenseDecoder, DensePrompt};
pub use decode::fma::{FmaDecoder, FmaPrompt};
#[cfg(feature = "vit")]
pub use kernels::layers::{self, LayerKernels};
pub use plan::FmaPlan;
pub use plan::dense::DensePlan;
pub use runtime::context::GpuContext;
pub use runtime::io::{AttentionIo, BackwardIo, Tape};
pub use runtime::timing::GpuTimer;
pub use shaders::ForwardKernels;
