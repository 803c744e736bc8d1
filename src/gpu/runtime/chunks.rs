//! The split of batch x heads into chunks whose tensors each fit one storage binding, and each
//! chunk's uniform. Host calls (`forward`, `backward`) walk every chunk; the `encode` family
//! binds the caller's buffers whole, so it takes the plan only when there is one chunk.

use crate::config::{Precision, Shape};
use crate::error::{FmaError, Result};
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::shaders::structs::Params;

/// One dispatch's share of batch x heads, with its uniform (`Params::bh` = `heads`).
pub(crate) struct Chunk {
    /// The chunk's first head (of batch x heads).
    pub first: usize,
    pub heads: usize,
    pub params: wgpu::Buffer,
}

/// An error unless `bytes` fit one storage binding of the device; `hint` says what to change.
pub(crate) fn fits_binding(ctx: &GpuContext, what: &str, bytes: u64, hint: &str) -> Result<()> {
    let limit = ctx.max_binding();
    if bytes > limit {
        return Err(FmaError::LimitExceeded {
            what: what.into(),
            needed: bytes,
            limit,
            hint: hint.into(),
        });
    }
    Ok(())
}

pub(crate) struct Chunks {
    shape: Shape,
    per_chunk: usize,
    /// How Q, K, V and O are stored on the GPU (host calls convert to and from f32).
    precision: Precision,
    list: Vec<Chunk>,
}

impl Chunks {
    /// Heads per chunk when one head's largest binding takes `head_bytes`.
    pub fn heads_per_chunk(ctx: &GpuContext, shape: Shape, head_bytes: u64) -> usize {
        (ctx.max_binding() / head_bytes.max(1)).clamp(1, shape.bh() as u64) as usize
    }

    /// Consecutive chunks of `per_chunk` heads (the last may be smaller), each with `base`
    /// as its uniform but for the head count.
    pub fn new(
        ctx: &GpuContext,
        label: &str,
        shape: Shape,
        per_chunk: usize,
        base: Params,
    ) -> Self {
        let per_chunk = per_chunk.max(1);
        let list = (0..shape.bh())
            .step_by(per_chunk)
            .map(|first| {
                let heads = per_chunk.min(shape.bh() - first);
                let params = Params {
                    bh: heads as u32,
                    ..base
                };
                Chunk {
                    first,
                    heads,
                    params: ctx.buffer_with(
                        label,
                        bytemuck::bytes_of(&params),
                        wgpu::BufferUsages::UNIFORM,
                    ),
                }
            })
            .collect();
        Chunks {
            shape,
            per_chunk,
            precision: Precision::F32,
            list,
        }
    }

    /// The same chunks over tensors stored at `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Chunks { precision, ..self }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Heads of a full chunk: what the staging and scratch buffers are sized for.
    pub fn per_chunk(&self) -> usize {
        self.per_chunk
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Chunk> {
        self.list.iter()
    }

    /// The only chunk, or an error that sends the caller to `host_call` (which splits).
    pub fn single(&self, host_call: &str) -> Result<&Chunk> {
        match self.list.as_slice() {
            [chunk] => Ok(chunk),
            _ => {
                let head_bytes = (self.shape.n * self.shape.d * self.precision.bytes()) as u64;
                Err(FmaError::LimitExceeded {
                    what: "Q, K, V or O in one storage binding".into(),
                    needed: self.shape.bh() as u64 * head_bytes,
                    limit: self.per_chunk as u64 * head_bytes,
                    hint: format!(
                        "use {host_call}, which splits batch x heads over several dispatches"
                    ),
                })
            }
        }
    }
}
