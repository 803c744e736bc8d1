//! What every kernel runs on: the device and its pipeline cache, the uniforms and dispatch
//! grid, buffer checks, head chunks, host staging and GPU timing.

pub(crate) mod buffers;
pub(crate) mod chunks;
pub(crate) mod context;
pub(crate) mod dispatch;
pub(crate) mod host;
pub(crate) mod io;
pub(crate) mod timing;

/// Runs a future of this crate to completion on the calling thread: the one place the
/// `_blocking` conveniences wait (native only; on the web every call stays async).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    pollster::block_on(future)
}
