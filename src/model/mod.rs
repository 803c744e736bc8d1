//! The FMA vision transformer: a small ViT for 28x28 grey digits whose attention is 2D FMA.
//!
//! `config` fixes the sizes and the parameter list, `layers` holds the CPU twins of
//! shaders/layers.wgsl, `attention` the CPU FMA the model trains with.

pub mod attention;
pub mod config;
pub mod cpu;
pub mod layers;
pub mod mnist;
pub mod params;
pub mod preprocess;
pub mod rng;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;

pub use config::VitConfig;
pub use cpu::CpuVit;
pub use params::{Params, VitWeights};
