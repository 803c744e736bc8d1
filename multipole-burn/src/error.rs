//! The one error type of the Burn integration.

use multipole::FmaError;

/// What can go wrong when FMA is called on Burn tensors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The attention library refused the shape, the options or the weights, or the GPU failed.
    #[error(transparent)]
    Fma(#[from] FmaError),
    /// A tensor of the wrong rank, size or dtype.
    #[error("{what}: expected {expected}, got {got}")]
    BadTensor {
        what: String,
        expected: String,
        got: String,
    },
    /// A kernel call on a tensor whose device is not a wgpu device registered here.
    #[error(
        "the tensors live on {device}, not on a wgpu device registered with multipole-burn: create it with `multipole_burn::init_wgpu` (or register Burn's setup with `register_wgpu`), or call `fma_attention`, which runs Burn tensor ops on any backend"
    )]
    NotWgpu { device: String },
    /// Burn could not open its wgpu device.
    #[error("Burn's wgpu device: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, Error>;
