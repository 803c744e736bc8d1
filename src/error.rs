//! The one error type of the crate. Every public path returns it; messages say what to do.

use thiserror::Error;

/// Everything that can go wrong in `multipole`, from a bad argument to a lost GPU.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FmaError {
    /// A configuration value is out of range (m not a power of two, p not dividing m, ...).
    #[error("invalid FMA configuration: {0}")]
    InvalidConfig(String),

    /// A tensor's length or a dimension does not match what the call expects.
    #[error("bad shape for {what}: expected {expected}, got {got}")]
    BadShape {
        what: String,
        expected: String,
        got: String,
    },

    /// The head dimension is outside what the kernels are compiled for.
    #[error(
        "unsupported head dimension d = {0}: the kernels support 1 <= d <= 128 (tiles 16, 32, 64, 128)"
    )]
    UnsupportedHeadDim(usize),

    /// Downsampling weights are missing, of the wrong count or of the wrong shape.
    #[error("downsampling weights: {0}")]
    Weights(String),

    /// A buffer or a dispatch would exceed a limit of the device.
    #[error("{what} needs {needed} but the device allows {limit} ({hint})")]
    LimitExceeded {
        what: String,
        needed: u64,
        limit: u64,
        hint: String,
    },

    /// The adapter lacks an optional feature that the chosen option needs.
    #[error("the GPU adapter lacks {feature}, which {needed_by} needs ({hint})")]
    MissingFeature {
        feature: String,
        needed_by: String,
        hint: String,
    },

    /// No GPU adapter was found.
    #[error(
        "no GPU adapter found: install a Vulkan, Metal or DX12 driver (on Linux without a GPU, Mesa's lavapipe: apt-get install mesa-vulkan-drivers); in a browser, WebGPU must be enabled"
    )]
    NoAdapter,

    /// The adapter refused to create a device.
    #[error("could not create a GPU device: {0}")]
    RequestDevice(String),

    /// The device reported an error (validation, out of memory, lost) or a readback failed.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// `FmaPlan::forward` was called while another `forward` on the same plan is running.
    #[error(
        "this plan is already running a forward (or backward) pass: await it first, or build a second plan for concurrent calls"
    )]
    Busy,

    /// The vision transformer's sizes, weights or input images are unusable.
    #[error("model: {0}")]
    Model(String),

    /// A picture given to the digit classifier holds no ink: blank, one colour, or too faint.
    #[error(
        "no digit found: the image is blank (one colour, or too faint to tell ink from background); draw a digit or give a picture of one, dark on light or light on dark"
    )]
    NoDigit,

    /// A tensor file could not be read or written.
    #[error("tensor file {path}: {message}")]
    TensorFile { path: String, message: String },
}

/// Result with the crate's error.
pub type Result<T> = std::result::Result<T, FmaError>;
