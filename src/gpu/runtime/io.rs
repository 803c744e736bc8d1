//! The GPU buffers a caller hands to a plan (forward and backward) and their checks, and the
//! host-side tape the backward reads.

use crate::config::{Precision, Shape};
use crate::error::{FmaError, Result};
use crate::gpu::runtime::buffers::{self, Slot};
use crate::reference::Output;

/// GPU buffers of one forward pass over the plan's whole shape: q, k, v of [batch, heads, n, d]
/// (STORAGE usage), o of the same shape and lse of [batch, heads, n] (STORAGE, written).
/// Q, K, V and O hold the plan's precision (f32, or f16 with `Precision::F16`: 2 bytes a
/// value, the buffer's size rounded up to 4 bytes); LSE is always f32.
pub struct AttentionIo<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub o: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
}

impl AttentionIo<'_> {
    /// Checks the buffers against a plan's whole shape: sizes, STORAGE usage, and outputs
    /// distinct from the inputs.
    pub(crate) fn check(&self, shape: Shape, precision: Precision) -> Result<()> {
        let (e, n) = (
            tensor_bytes(shape.elements(), precision),
            (shape.bh() * shape.n * 4) as u64,
        );
        buffers::check(&[
            Slot::read("q", self.q, e),
            Slot::read("k", self.k, e),
            Slot::read("v", self.v, e),
            Slot::written("o", self.o, e),
            Slot::written("lse", self.lse, n),
        ])
    }
}

/// Bytes of a GPU tensor of `values` values at `precision`: rounded up to 4, wgpu's copy
/// granularity, so an odd count of f16 values still copies whole.
pub(crate) fn tensor_bytes(values: usize, precision: Precision) -> u64 {
    ((values * precision.bytes()) as u64).next_multiple_of(4)
}

/// GPU buffers of one backward pass over the plan's whole shape: the forward's inputs q, k, v,
/// its outputs o and lse, the upstream gradient d_o (all STORAGE), and the gradients written:
/// dq, dk, dv shaped like q, and `dw` packed like the weights (`[wk of every level][wv][bk][bv]`,
/// then `[wq][bq]` in the O(n) variant; required for the learned kinds, written, not added to).
pub struct BackwardIo<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub o: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
    pub d_o: &'a wgpu::Buffer,
    pub dq: &'a wgpu::Buffer,
    pub dk: &'a wgpu::Buffer,
    pub dv: &'a wgpu::Buffer,
    pub dw: Option<&'a wgpu::Buffer>,
}

impl BackwardIo<'_> {
    pub(crate) fn check(&self, shape: Shape, dw_bytes: u64) -> Result<()> {
        let (e, n) = (
            (shape.elements() * 4) as u64,
            (shape.bh() * shape.n * 4) as u64,
        );
        let mut slots = vec![
            Slot::read("q", self.q, e),
            Slot::read("k", self.k, e),
            Slot::read("v", self.v, e),
            Slot::read("o", self.o, e),
            Slot::read("lse", self.lse, n),
            Slot::read("d_o", self.d_o, e),
            Slot::written("dq", self.dq, e),
            Slot::written("dk", self.dk, e),
            Slot::written("dv", self.dv, e),
        ];
        if dw_bytes > 0 {
            let dw = self.dw.ok_or_else(|| {
                FmaError::Weights(
                    "learned downsampling: BackwardIo.dw must hold the weights' gradients".into(),
                )
            })?;
            slots.push(Slot::written("dw", dw, dw_bytes));
        }
        buffers::check(&slots)
    }
}

/// What `FmaPlan::backward` needs from the forward pass: its inputs and its output.
pub struct Tape<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub out: Output,
}
