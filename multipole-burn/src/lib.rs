//! # multipole-burn: Fast Multipole Attention in Burn
//!
//! [`fma_attention`] runs FMA (see the `multipole` crate) on Burn tensors, and
//! [`FmaAttention`] is the Burn module that owns the learned downsampling weights. On a wgpu
//! device shared with multipole ([`init_wgpu`]) the call runs multipole's WGSL kernels and,
//! under `Autodiff`, their backward: memory linear in n, no n x n buffer, no host round trip.
//! On every other Burn backend the same definition runs in Burn tensor ops (memory
//! O(n log n)), so a model stays portable.
//!
//! (`examples/fma_in_burn.rs` compiles and runs this.)
//!
//! ```ignore
//! use burn::tensor::{Distribution, Tensor};
//! use multipole::FmaConfig;
//!
//! let device = multipole_burn::init_wgpu()?.autodiff();
//! let x = || Tensor::<4>::random([1, 8, 4096, 64], Distribution::Default, &device).require_grad();
//! let (q, k, v) = (x(), x(), x());
//! let (o, _lse) = multipole_burn::fma_attention(q.clone(), k, v, None, &FmaConfig::new(32, 4))?;
//! let grads = o.sum().backward();
//! let dq = q.grad(&grads).expect("q is tracked");
//! ```

mod attention;
mod autodiff;
mod device;
mod error;
mod kernels;
mod layout;
mod module;
mod ops;
mod tables;

pub use attention::{
    fma_attention, fma_attention_kernels, fma_attention_ops, kernel_bytes, release_plans,
};
#[cfg(not(target_family = "wasm"))]
pub use device::init_wgpu;
pub use device::{context, init_wgpu_async, register_wgpu};
pub use error::{Error, Result};
pub use kernels::{FmaKernelOps, PlanHandle};
pub use module::FmaAttention;
