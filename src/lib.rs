//! # multipole: Fast Multipole Attention on WebGPU
//!
//! FMA (Kang, Tran, De Sterck, arXiv 2310.11960) replaces O(n^2) softmax attention by a
//! hierarchy: each query sees nearby keys exactly and distant keys through learned coarse
//! summaries, at O(n log n) cost. This crate runs it as WGSL compute shaders through wgpu
//! (Vulkan, Metal, DX12, and WebGPU in the browser), with an f64 CPU reference.
//!
//! ```
//! use multipole::{FmaConfig, FmaPlan, GpuContext, Shape, reference};
//!
//! # fn main() -> multipole::Result<()> {
//! let ctx = GpuContext::new_blocking()?; // on the web: GpuContext::new().await
//! let shape = Shape::new(1, 2, 1000, 64); // [batch, heads, n, d]
//! let config = FmaConfig { causal: true, ..FmaConfig::new(32, 4) }; // m = 32, p = 4
//! let x: Vec<f32> = (0..shape.elements()).map(|i| (i as f32 * 0.37).sin()).collect();
//! let (q, k, v) = (x.clone(), x.clone(), x);
//!
//! // A plan fixes shape and options, uploads the geometry once and caches the pipelines.
//! let plan = FmaPlan::new(&ctx, shape, &config, None)?; // Mean downsampling: no weights
//! let out = plan.forward_blocking(&ctx, &q, &k, &v)?; // or `plan.forward(...).await`
//! assert_eq!(out.o.len(), shape.elements()); // O: [1, 2, 1000, 64]
//! assert_eq!(out.lse.len(), 2 * 1000); // log-sum-exp per query
//!
//! // The f64 CPU reference computes the same thing.
//! let cpu = reference::fma_forward(&q, &k, &v, shape, &config, None)?;
//! // NaN-aware and length-checked: a NaN or a short output is an infinite error.
//! let worst = multipole::compare::max_abs_diff(&out.o, &cpu.o).expect("same lengths");
//! assert!(worst.error < 1e-4);
//!
//! // Images (2D FMA): the n tokens of a head are a height x width grid, row-major.
//! let image = FmaConfig::new(4, 4).image(20, 50); // 4 x 4 fine cells; n = 20 * 50
//! let out2d = FmaPlan::new(&ctx, shape, &image, None)?.forward_blocking(&ctx, &q, &k, &v)?;
//! assert_eq!(out2d.o.len(), shape.elements());
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "vit")]
pub mod browser_checks;
pub mod compare;
pub mod config;
pub mod error;
pub mod geometry;
#[cfg(feature = "vit")]
pub mod model;
pub mod reference;
/// The seeded generator of the checks, the study and the models (reproducible everywhere).
pub mod rng;
#[cfg(feature = "study")]
pub mod study;
#[cfg(feature = "safetensors")]
pub mod tensor_file;
pub mod weights;

pub use config::{Downsampling, FmaConfig, Layout, Precision, Shape};
pub use error::{FmaError, Result};
pub use geometry::Geometry;
pub mod gpu;

pub use gpu::{
    AttentionIo, BackwardIo, DecodeIo, DenseDecoder, DensePlan, FmaDecoder, FmaPlan,
    ForwardKernels, GpuContext, GpuDecoder, GpuTimer, Tape,
};
pub use reference::{Gradients, Output};
pub use weights::{DownsampleWeights, LevelWeights};
#[cfg(all(feature = "web", target_arch = "wasm32"))]
pub mod web;
/// The wgpu this crate is built on, for callers that share a device with it.
pub use wgpu;
