//! The FMA vision transformer: a small ViT for 28x28 grey digits whose attention is 2D FMA.
//!
//! `layers` holds the CPU twins of shaders/layers.wgsl.

pub mod layers;
