//! What every kernel runs on: the device and its pipeline cache, the uniforms and dispatch
//! grid, buffer checks, head chunks, host staging and GPU timing.

pub(crate) mod buffers;
pub(crate) mod chunks;
pub(crate) mod context;
pub(crate) mod dispatch;
pub(crate) mod host;
pub(crate) mod io;
pub(crate) mod timing;
