//! The one host loop of `forward` and `backward` calls: GPU staging buffers sized for one chunk
//! of heads (made on first use), and for each chunk the upload of the host tensors, the plan's
//! work, the copy out and the readback.

use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Precision, Shape};
use crate::error::{FmaError, Result};
use crate::gpu::runtime::chunks::{Chunk, Chunks};
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::io::{AttentionIo, tensor_bytes};
use crate::reference::Output;

/// A plan's host buffers and the flag that keeps two host calls from interleaving on them.
pub(crate) struct HostSlot<B> {
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

/// Clears the busy flag when the call holding it ends, returns early or is dropped.
pub(crate) struct BusyGuard<'a>(&'a AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<B> HostSlot<B> {
    /// The buffers (made by `make` on first use), or `Busy` while another call holds them.
    /// Buffers that `make` fails to create are not kept: the next call tries again.
    pub fn acquire(&self, make: impl FnOnce() -> Result<B>) -> Result<(&B, BusyGuard<'_>)> {
        if self.busy.swap(true, Ordering::Acquire) {
            return Err(FmaError::Busy);
        }
        let guard = BusyGuard(&self.busy);
        if let Some(b) = self.buffers.get() {
            return Ok((b, guard));
        }
        // The busy flag keeps a second caller out, so nothing else can fill the cell here.
        let made = make()?;
        Ok((self.buffers.get_or_init(|| made), guard))
    }
}

/// How a host tensor of [batch, heads, ...] splits over the chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extent {
    /// n x d per head (Q, K, V, O and their gradients).
    Rows,
    /// n per head (LSE).
    PerQuery,
    /// Not split: `words` f32 for the whole call, read back after the last chunk (weight
    /// gradients, summed over the heads). Zero words: nothing read, an empty result.
    Whole(usize),
}

impl Extent {
    /// The f32 range of `heads` heads from `first` in a host tensor (all of it for `Whole`).
    fn span(self, shape: Shape, first: usize, heads: usize) -> Range<usize> {
        let per_head = match self {
            Extent::Rows => shape.n * shape.d,
            Extent::PerQuery => shape.n,
            Extent::Whole(words) => return 0..words,
        };
        first * per_head..(first + heads) * per_head
    }

    /// How this tensor is stored on the GPU: Q, K, V, O and their gradients at the chunks'
    /// precision, LSE and weight gradients always f32.
    fn precision(self, chunks: &Chunks) -> Precision {
        match self {
            Extent::Rows => chunks.precision(),
            _ => Precision::F32,
        }
    }

    /// The host tensor's length, checked: a wrong length is the caller's error, not a panic.
    fn check(self, shape: Shape, name: &str, len: usize) -> Result<()> {
        let want = self.span(shape, 0, shape.bh()).len();
        match self {
            Extent::Rows => shape.check_len(name, len),
            _ if len == want => Ok(()),
            _ => Err(FmaError::BadShape {
                what: name.into(),
                expected: format!("{want} values (batch x heads x n)"),
                got: format!("{len} values"),
            }),
        }
    }
}

/// The staging of one kind of host call: `N` inputs written from the host, `M` outputs
/// copied out and read back.
pub(crate) struct Staging<const N: usize, const M: usize> {
    inputs: [wgpu::Buffer; N],
    outputs: [(wgpu::Buffer, wgpu::Buffer); M],
}

impl<const N: usize, const M: usize> HostSlot<Staging<N, M>> {
    /// For each chunk: uploads its share of each input, lets `encode` record the plan's work
    /// on the staging buffers (inputs, then outputs), copies the outputs out and reads them
    /// back. Returns each output concatenated over the chunks.
    pub async fn run(
        &self,
        ctx: &GpuContext,
        chunks: &Chunks,
        inputs: [(&str, Extent, &[f32]); N],
        outputs: [(&str, Extent); M],
        mut encode: impl FnMut(
            &Chunk,
            &mut wgpu::CommandEncoder,
            [&wgpu::Buffer; N],
            [&wgpu::Buffer; M],
        ) -> Result<()>,
    ) -> Result<[Vec<f32>; M]> {
        let shape = chunks.shape();
        for (name, extent, data) in &inputs {
            extent.check(shape, name, data.len())?;
        }
        // Device calls run in error scopes (`GpuContext::scoped`): on a shared device their
        // errors come back from the readback, not from the owner's handler.
        let (host, _busy) = self.acquire(|| {
            let bytes = |e: Extent| {
                tensor_bytes(
                    e.span(shape, 0, chunks.per_chunk()).len(),
                    e.precision(chunks),
                )
            };
            let staging = ctx.scoped(|| Staging {
                inputs: inputs.map(|(name, e, _)| storage(ctx, name, bytes(e), true)),
                outputs: outputs.map(|(name, e)| {
                    (storage(ctx, name, bytes(e), false), readback(ctx, bytes(e)))
                }),
            });
            ctx.take_error()?;
            Ok(staging)
        })?;
        let mut out: [Vec<f32>; M] =
            outputs.map(|(_, e)| Vec::with_capacity(e.span(shape, 0, shape.bh()).len()));
        for chunk in chunks.iter() {
            let last = chunk.first + chunk.heads == shape.bh();
            // (output, readback, values, precision) for what this chunk reads back.
            let reads: Vec<_> = outputs
                .iter()
                .zip(&host.outputs)
                .zip(out.iter_mut())
                .filter_map(|(((_, extent), (buf, read)), out)| {
                    let words = extent.span(shape, chunk.first, chunk.heads).len();
                    let due = !matches!(extent, Extent::Whole(_)) || last;
                    (due && words > 0).then_some((buf, read, words, extent.precision(chunks), out))
                })
                .collect();
            ctx.scoped(|| -> Result<()> {
                for ((_, extent, data), buf) in inputs.iter().zip(&host.inputs) {
                    let span = extent.span(shape, chunk.first, chunk.heads);
                    let part = data.get(span).unwrap_or_default();
                    ctx.queue
                        .write_buffer(buf, 0, &encode_values(part, extent.precision(chunks)));
                }
                let mut encoder = ctx.device.create_command_encoder(&Default::default());
                let gpu_outputs = host.outputs.each_ref().map(|(b, _)| b);
                encode(chunk, &mut encoder, host.inputs.each_ref(), gpu_outputs)?;
                for (buf, read, words, precision, _) in &reads {
                    encoder.copy_buffer_to_buffer(
                        buf,
                        0,
                        read,
                        0,
                        tensor_bytes(*words, *precision),
                    );
                }
                ctx.queue.submit([encoder.finish()]);
                Ok(())
            })?;
            for (_, read, words, precision, out) in reads {
                let bytes = ctx.read_bytes(read, tensor_bytes(words, precision)).await?;
                out.extend(decode_values(&bytes, words, precision));
            }
        }
        Ok(out)
    }
}

/// The bytes of `values` stored at `precision` (f16: rounded to nearest, padded to whole
/// 4-byte words, as wgpu writes and copies them).
pub(crate) fn encode_values(values: &[f32], precision: Precision) -> Vec<u8> {
    match precision {
        Precision::F32 => bytemuck::cast_slice(values).to_vec(),
        Precision::F16 => {
            let mut half: Vec<half::f16> = values.iter().map(|&x| half::f16::from_f32(x)).collect();
            if half.len() % 2 == 1 {
                half.push(half::f16::ZERO);
            }
            bytemuck::cast_slice(&half).to_vec()
        }
    }
}

/// The first `values` values of `bytes` (stored at `precision`) as f32.
pub(crate) fn decode_values(bytes: &[u8], values: usize, precision: Precision) -> Vec<f32> {
    match precision {
        Precision::F32 => bytes
            .chunks_exact(4)
            .take(values)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Precision::F16 => bytes
            .chunks_exact(2)
            .take(values)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// Host staging of a forward: q, k, v in; o and lse out.
pub(crate) type ForwardStaging = Staging<3, 2>;

impl HostSlot<ForwardStaging> {
    /// A forward over host tensors: `encode` records a plan's work on one chunk's buffers.
    pub async fn forward(
        &self,
        ctx: &GpuContext,
        chunks: &Chunks,
        [q, k, v]: [&[f32]; 3],
        mut encode: impl FnMut(&Chunk, &mut wgpu::CommandEncoder, &AttentionIo<'_>) -> Result<()>,
    ) -> Result<Output> {
        let inputs = [("q", q), ("k", k), ("v", v)].map(|(name, t)| (name, Extent::Rows, t));
        let outputs = [("o", Extent::Rows), ("lse", Extent::PerQuery)];
        let [o, lse] = self
            .run(
                ctx,
                chunks,
                inputs,
                outputs,
                |chunk, encoder, [q, k, v], [o, lse]| {
                    encode(chunk, encoder, &AttentionIo { q, k, v, o, lse })
                },
            )
            .await?;
        Ok(Output { o, lse })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_split_host_tensors_by_head() {
        let shape = Shape::new(2, 3, 5, 4); // 6 heads of 5 x 4
        // heads 2, 3, 4: 20 values per head for rows, 5 for LSE
        assert_eq!(Extent::Rows.span(shape, 2, 3), 40..100);
        assert_eq!(Extent::PerQuery.span(shape, 2, 3), 10..25);
        // an unsplit tensor is the same whole range for every chunk
        assert_eq!(Extent::Whole(7).span(shape, 4, 2), 0..7);
    }

    #[test]
    fn wrong_host_lengths_are_errors() {
        let shape = Shape::new(2, 3, 5, 4);
        assert!(Extent::Rows.check(shape, "q", 120).is_ok());
        assert!(Extent::PerQuery.check(shape, "lse", 30).is_ok());
        for (extent, len) in [(Extent::Rows, 119), (Extent::PerQuery, 120)] {
            let err = extent.check(shape, "t", len).unwrap_err();
            assert!(matches!(err, FmaError::BadShape { .. }), "{err}");
        }
    }
}
