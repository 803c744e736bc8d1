//! Staging of host tensors for `forward` calls: GPU buffers sized for one chunk of heads,
//! made on first use, and the readback of O and LSE.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::context::GpuContext;
use super::plan::AttentionIo;
use crate::config::Shape;
use crate::error::{FmaError, Result};
use crate::reference::Output;

/// A plan's host buffers and the flag that keeps two `forward` calls from interleaving on them.
pub(crate) struct HostSlot<B = HostBuffers> {
    buffers: OnceLock<B>,
    busy: AtomicBool,
}

impl<B> Default for HostSlot<B> {
    fn default() -> Self {
        HostSlot {
            buffers: OnceLock::new(),
            busy: AtomicBool::new(false),
        }
    }
}

/// Clears the busy flag when the `forward` holding it ends, returns early or is dropped.
pub(crate) struct BusyGuard<'a>(&'a AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<B> HostSlot<B> {
    /// The buffers (made by `make` on first use), or `Busy` while another call holds them.
    pub fn acquire(&self, make: impl FnOnce() -> B) -> Result<(&B, BusyGuard<'_>)> {
        if self.busy.swap(true, Ordering::Acquire) {
            return Err(FmaError::Busy);
        }
        let guard = BusyGuard(&self.busy);
        Ok((self.buffers.get_or_init(make), guard))
    }
}

impl HostSlot {
    /// A forward pass over host tensors of `shape`: checks their lengths, then for each chunk
    /// of `chunk_heads` heads uploads q, k, v, lets `encode(chunk, encoder, io)` record the
    /// plan's work, and reads O and LSE back.
    pub async fn forward(
        &self,
        ctx: &GpuContext,
        shape: Shape,
        chunk_heads: usize,
        [q, k, v]: [&[f32]; 3],
        mut encode: impl FnMut(usize, &mut wgpu::CommandEncoder, &AttentionIo<'_>) -> Result<()>,
    ) -> Result<Output> {
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            shape.check_len(name, t.len())?;
        }
        let (n, d) = (shape.n, shape.d);
        let (host, _busy) = self.acquire(|| HostBuffers::new(ctx, chunk_heads, n, d))?;
        let mut out = Output {
            o: Vec::with_capacity(q.len()),
            lse: Vec::with_capacity(shape.bh() * n),
        };
        for (chunk, first) in (0..shape.bh()).step_by(chunk_heads).enumerate() {
            let heads = chunk_heads.min(shape.bh() - first);
            let span = first * n * d..(first + heads) * n * d;
            host.upload(ctx, [q, k, v].map(|t| &t[span.clone()]));
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            encode(chunk, &mut encoder, &host.io())?;
            let (o, lse) = host.finish(ctx, encoder, span.len(), heads * n).await?;
            out.o.extend(o);
            out.lse.extend(lse);
        }
        Ok(out)
    }
}

pub(crate) struct HostBuffers {
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
    o_read: wgpu::Buffer,
    lse_read: wgpu::Buffer,
}

impl HostBuffers {
    /// Buffers for `heads` heads of n x d.
    pub fn new(ctx: &GpuContext, heads: usize, n: usize, d: usize) -> HostBuffers {
        let bytes = (heads * n * d * 4) as u64;
        let lse_bytes = (heads * n * 4) as u64;
        HostBuffers {
            q: storage(ctx, "q", bytes, true),
            k: storage(ctx, "k", bytes, true),
            v: storage(ctx, "v", bytes, true),
            o: storage(ctx, "o", bytes, false),
            lse: storage(ctx, "lse", lse_bytes, false),
            o_read: readback(ctx, bytes),
            lse_read: readback(ctx, lse_bytes),
        }
    }

    pub fn io(&self) -> AttentionIo<'_> {
        AttentionIo {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            o: &self.o,
            lse: &self.lse,
        }
    }

    /// Writes one chunk of q, k and v (each at most the buffers' size).
    pub fn upload(&self, ctx: &GpuContext, qkv: [&[f32]; 3]) {
        for (buf, data) in [&self.q, &self.k, &self.v].into_iter().zip(qkv) {
            ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
        }
    }

    /// Copies the first `o_len` outputs and `lse_len` log-sum-exps out, submits `encoder`
    /// and reads them back.
    pub async fn finish(
        &self,
        ctx: &GpuContext,
        mut encoder: wgpu::CommandEncoder,
        o_len: usize,
        lse_len: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        encoder.copy_buffer_to_buffer(&self.o, 0, &self.o_read, 0, (o_len * 4) as u64);
        encoder.copy_buffer_to_buffer(&self.lse, 0, &self.lse_read, 0, (lse_len * 4) as u64);
        ctx.queue.submit([encoder.finish()]);
        let o = ctx.read_f32(&self.o_read, o_len).await?;
        let lse = ctx.read_f32(&self.lse_read, lse_len).await?;
        Ok((o, lse))
    }
}

/// A STORAGE buffer that is written from the host (`input`) or copied out.
pub(crate) fn storage(ctx: &GpuContext, label: &str, bytes: u64, input: bool) -> wgpu::Buffer {
    let usage = wgpu::BufferUsages::STORAGE
        | if input {
            wgpu::BufferUsages::COPY_DST
        } else {
            wgpu::BufferUsages::COPY_SRC
        };
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4),
        usage,
        mapped_at_creation: false,
    })
}

pub(crate) fn readback(ctx: &GpuContext, bytes: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}
