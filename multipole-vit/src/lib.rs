//! The MNIST vision transformer of the `multipole` demo, rebuilt on Burn: Burn's `Linear`,
//! `LayerNorm` and `Gelu` around `multipole_burn::FmaAttention`, so that it trains with Burn's
//! autodiff and optimisers and runs on any Burn backend (FMA's kernels on the wgpu device
//! `multipole_burn::init_wgpu` opens, Burn tensor ops elsewhere).
//!
//! `Vit::from_weights` loads the shipped weight files (`web/models/*.safetensors`) into it.

mod attention_map;
pub mod canvas;
mod model;
mod seg_weights;
pub mod segment;
#[cfg(not(target_arch = "wasm32"))]
pub mod segment_train;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
#[cfg(all(feature = "web", target_arch = "wasm32"))]
pub mod web;
#[cfg(all(feature = "web", target_arch = "wasm32"))]
pub mod web_segment;

pub use attention_map::{AttentionMap, FarCell, attention_map};
pub use model::{Block, Vit};
pub use multipole_burn::{Error, Result};
