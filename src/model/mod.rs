//! The FMA vision transformer: a small ViT for 28x28 grey digits whose attention is 2D FMA.
//!
//! `config` fixes the sizes and the parameter list, `layers` holds the CPU twins of
//! shaders/layers.wgsl, `attention` the CPU FMA the model trains with.

pub mod attention;
pub mod config;
pub mod cpu;
mod gpu;
pub mod layers;
pub mod mnist;
pub mod params;
pub mod preprocess;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;

pub use config::VitConfig;
pub use cpu::{AttentionMap, CpuVit, FarCell};
/// The model on the GPU.
pub use gpu::VitGpu;
pub use params::{Params, VitWeights};

/// A classification: the top class and the probability of every class.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub class: usize,
    pub probs: Vec<f32>,
}

impl Prediction {
    /// Softmax of each row of `logits` (`[images, classes]`).
    pub fn from_logits(logits: &[f32], classes: usize) -> Vec<Prediction> {
        layers::softmax(logits, classes.max(1))
            .chunks_exact(classes.max(1))
            .map(|probs| Prediction {
                class: probs
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (i, &p)| if p > b.1 { (i, p) } else { b },
                    )
                    .0,
                probs: probs.to_vec(),
            })
            .collect()
    }

    /// (class, probability), most probable first.
    pub fn ranked(&self) -> Vec<(usize, f32)> {
        let mut r: Vec<(usize, f32)> = self.probs.iter().copied().enumerate().collect();
        r.sort_by(|a, b| b.1.total_cmp(&a.1));
        r
    }
}
