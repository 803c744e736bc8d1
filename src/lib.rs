//! # multipole: Fast Multipole Attention on WebGPU
//!
//! FMA (Kang, Tran, De Sterck, arXiv 2310.11960) replaces O(n^2) softmax attention by a
//! hierarchy: each query sees nearby keys exactly and distant keys through learned coarse
//! summaries, at O(n log n) cost. This crate runs it as WGSL compute shaders through wgpu
//! (Vulkan, Metal, DX12, and WebGPU in the browser), with an f64 CPU reference.

pub mod config;
pub mod error;
pub mod geometry;
pub mod reference;
pub mod tensor_file;

pub use config::{DownsampleWeights, Downsampling, FmaConfig, LevelWeights, Shape};
pub use error::{FmaError, Result};
pub use geometry::Geometry;
pub mod gpu;

pub use gpu::{AttentionIo, FmaPlan, GpuContext};
pub use reference::Output;
/// The wgpu this crate is built on, for callers that share a device with it.
pub use wgpu;
