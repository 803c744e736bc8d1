//! FMA on Burn's wgpu backend through multipole's WGSL kernels, forward and backward.
//!
//! Burn's tensors are slices of its pooled buffers, and q, k, v may be slices of one buffer,
//! which wgpu will not bind read-only beside a written binding of itself. Each call therefore
//! copies the inputs' byte ranges into the plan's own buffers, runs the plan's passes and
//! copies the results into fresh Burn tensors, all in one command buffer on the shared queue:
//! no host round trip, and the extra memory is O(n) (one more copy of the inputs and outputs).

use std::sync::{Arc, Mutex};

#[cfg(feature = "fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::{FloatDType, Shape as BurnShape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl_wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use multipole::{
    AttentionIo, BackwardIo, DownsampleWeights, FmaConfig, FmaPlan, GpuContext, Shape,
};

use crate::error::Result;

/// The custom op Burn dispatches: `Cube` runs the kernels (wgpu only: the public functions
/// check the device first), `Autodiff` adds multipole's backward, and with the `fusion` feature
/// `Fusion` queues both as opaque operations among Burn's fused ones.
#[backend_extension(Cube, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait FmaKernelOps: Backend {
    /// O and LSE of FMA over q, k, v `[batch, heads, n, d]` with the packed weights `w` (one
    /// ignored value for `Mean`). Gradients flow through O; LSE is returned as a constant.
    #[fusion(meta = |q, _k, _v, _w, _plan| (q.clone(), lse_spec(q)))]
    fn fma_kernels(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        plan: PlanHandle,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// dQ, dK, dV and the packed weights' gradient (one zero for `Mean`) from the forward's
    /// inputs and outputs and dO.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |q, _k, _v, w, _o, _lse, _d_o, plan| (
        q.clone(), q.clone(), q.clone(), weights_spec(w, plan)
    ))]
    fn fma_kernels_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        plan: PlanHandle,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// LSE `[batch, heads, n]` beside a q `[batch, heads, n, d]`.
#[cfg(feature = "fusion")]
fn lse_spec(q: &TensorSpec) -> TensorSpec {
    let dims = q.shape.to_vec();
    TensorSpec::new(BurnShape::from(dims[..3].to_vec()), q.dtype)
}

/// The weights' gradient: the packed values, or the one placeholder of `Mean`.
#[cfg(feature = "fusion")]
fn weights_spec(w: &TensorSpec, plan: &PlanHandle) -> TensorSpec {
    TensorSpec::new(BurnShape::from(vec![plan.0.weights_len.max(1)]), w.dtype)
}

/// A shared, prepared plan: what the dispatch carries to the backend.
#[derive(Clone)]
pub struct PlanHandle(pub(crate) Arc<KernelPlan>);

impl std::fmt::Debug for PlanHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlanHandle({:?}, {:?})", self.0.shape, self.0.config)
    }
}

/// One `FmaPlan` with the buffers the copies land in, for one shape and configuration.
pub(crate) struct KernelPlan {
    pub ctx: Arc<GpuContext>,
    pub shape: Shape,
    pub config: FmaConfig,
    plan: FmaPlan,
    /// Packed weight values (0 for `Mean`).
    pub weights_len: usize,
    /// Held while a pass is encoded and submitted: the plan's scratch has one user at a time.
    scratch: Mutex<Scratch>,
}

/// The plan's copies of the inputs and outputs (made on first use: the backward's only by a
/// backward).
#[derive(Default)]
struct Scratch {
    forward: Option<[wgpu::Buffer; 5]>,
    backward: Option<[wgpu::Buffer; 5]>,
}

use multipole::wgpu;

impl KernelPlan {
    pub fn new(ctx: Arc<GpuContext>, shape: Shape, config: &FmaConfig) -> Result<Self> {
        let g = multipole::Geometry::new(shape.n, config)?;
        let kind = config.downsampling;
        // The plan's own weights are a placeholder: each call copies the caller's in.
        let init = kind.is_learned().then(|| {
            let w = DownsampleWeights::mean_init(kind, &g, shape.d);
            if config.downsample_queries {
                w.with_query_weights()
            } else {
                w
            }
        });
        let plan = FmaPlan::new(&ctx, shape, config, init.as_ref())?;
        if plan.chunk_count() > 1 {
            return Err(crate::Error::BadTensor {
                what: "q, k, v".into(),
                expected: "one head range that fits one storage binding of this device".into(),
                got: format!(
                    "{shape:?}, which needs {} passes: split the batch",
                    plan.chunk_count()
                ),
            });
        }
        let weights_len = init.map_or(0, |w| w.packed().len());
        Ok(KernelPlan {
            ctx,
            shape,
            config: config.clone(),
            plan,
            weights_len,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// GPU bytes this plan holds: the plan's own buffers (tables, weights, coarse rows; the
    /// backward's statistics once it ran) and the copies of the op's inputs and outputs.
    pub fn bytes(&self) -> u64 {
        let scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let copies: u64 = [&scratch.forward, &scratch.backward]
            .into_iter()
            .flatten()
            .flat_map(|set| set.iter().map(wgpu::Buffer::size))
            .sum();
        let backward = if scratch.backward.is_some() {
            self.plan.backward_extra_bytes()
        } else {
            0
        };
        self.plan.extra_bytes() + backward + copies
    }

    fn buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn tensor_bytes(&self) -> u64 {
        (self.shape.elements() * 4) as u64
    }

    fn lse_bytes(&self) -> u64 {
        (self.shape.bh() * self.shape.n * 4) as u64
    }

    /// O and LSE as fresh Burn tensors on the inputs' device.
    pub fn forward(
        &self,
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        w: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        let s = self.shape;
        let o = empty(&q, vec![s.batch, s.heads, s.n, s.d]);
        let lse = empty(&q, vec![s.batch, s.heads, s.n]);
        let [q, k, v, w] = [q, k, v, w].map(into_contiguous);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (e, l) = (self.tensor_bytes(), self.lse_bytes());
        let bufs = self.forward_buffers(&mut scratch);
        // The guards keep Burn's memory in place until our submit; taking them submits Burn's
        // queued work first, so our commands follow it on the shared queue.
        let guards: Vec<_> = [&q, &k, &v, &w, &o, &lse]
            .iter()
            .map(|t| resource(t))
            .collect();
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        for (src, dst) in guards[..3].iter().zip(&bufs[..3]) {
            copy_in(&mut enc, src.resource(), dst, e);
        }
        self.copy_weights(&mut enc, guards[3].resource());
        let io = AttentionIo {
            q: &bufs[0],
            k: &bufs[1],
            v: &bufs[2],
            o: &bufs[3],
            lse: &bufs[4],
        };
        self.plan
            .encode(&self.ctx, &mut enc, &io)
            .unwrap_or_else(|err| panic!("multipole forward: {err}"));
        copy_out(&mut enc, &bufs[3], guards[4].resource(), e);
        copy_out(&mut enc, &bufs[4], guards[5].resource(), l);
        self.submit(enc);
        drop(guards);
        (o, lse)
    }

    /// dQ, dK, dV and the packed weights' gradient (one zero for `Mean`) from the forward's
    /// inputs and outputs and dO.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        w: CubeTensor,
        o: CubeTensor,
        lse: CubeTensor,
        d_o: CubeTensor,
    ) -> [CubeTensor; 4] {
        let s = self.shape;
        let dims = vec![s.batch, s.heads, s.n, s.d];
        let [dq, dk, dv] = [0, 1, 2].map(|_| empty(&q, dims.clone()));
        // Mean's placeholder weight gets an exact zero gradient; learned weights are copied.
        let dw = if self.weights_len > 0 {
            empty(&q, vec![self.weights_len])
        } else {
            CubeBackend::float_zeros(BurnShape::from(vec![1]), &q.device, FloatDType::F32)
        };
        let inputs = [q, k, v, w, o, lse, d_o].map(into_contiguous);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (e, l) = (self.tensor_bytes(), self.lse_bytes());
        let wb = (self.weights_len.max(1) * 4) as u64;
        self.forward_buffers(&mut scratch);
        if scratch.backward.is_none() {
            let b = |name: &str, bytes| self.buffer(&format!("fma-burn {name}"), bytes);
            scratch.backward = Some([b("d_o", e), b("dq", e), b("dk", e), b("dv", e), b("dw", wb)]);
        }
        let (Some(fw), Some(bw)) = (&scratch.forward, &scratch.backward) else {
            unreachable!("both made above")
        };
        let guards: Vec<_> = inputs
            .iter()
            .chain([&dq, &dk, &dv, &dw])
            .map(resource)
            .collect();
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        // q, k, v, o, lse into the forward's buffers (another call may have used them since),
        // dO into the backward's.
        let sizes = [e, e, e, e, l];
        for (i, (dst, bytes)) in fw.iter().zip(sizes).enumerate() {
            let src = if i < 3 { &guards[i] } else { &guards[i + 1] };
            copy_in(&mut enc, src.resource(), dst, bytes);
        }
        copy_in(&mut enc, guards[6].resource(), &bw[0], e);
        self.copy_weights(&mut enc, guards[3].resource());
        let io = BackwardIo {
            q: &fw[0],
            k: &fw[1],
            v: &fw[2],
            o: &fw[3],
            lse: &fw[4],
            d_o: &bw[0],
            dq: &bw[1],
            dk: &bw[2],
            dv: &bw[3],
            dw: (self.weights_len > 0).then_some(&bw[4]),
        };
        self.plan
            .encode_backward(&self.ctx, &mut enc, &io)
            .unwrap_or_else(|err| panic!("multipole backward: {err}"));
        for (i, bytes) in [e, e, e].into_iter().enumerate() {
            copy_out(&mut enc, &bw[1 + i], guards[7 + i].resource(), bytes);
        }
        if self.weights_len > 0 {
            copy_out(&mut enc, &bw[4], guards[10].resource(), wb);
        }
        self.submit(enc);
        drop(guards);
        [dq, dk, dv, dw]
    }

    /// The copies of q, k, v, o and lse, made on first use.
    fn forward_buffers<'s>(&self, scratch: &'s mut Scratch) -> &'s [wgpu::Buffer; 5] {
        let (e, l) = (self.tensor_bytes(), self.lse_bytes());
        scratch.forward.get_or_insert_with(|| {
            let b = |name: &str, bytes| self.buffer(&format!("fma-burn {name}"), bytes);
            [b("q", e), b("k", e), b("v", e), b("o", e), b("lse", l)]
        })
    }

    fn copy_weights(&self, enc: &mut wgpu::CommandEncoder, w: &WgpuResource) {
        if let Some(dst) = self.plan.weights_buffer().filter(|_| self.weights_len > 0) {
            copy_in(enc, w, dst, (self.weights_len * 4) as u64);
        }
    }

    fn submit(&self, enc: wgpu::CommandEncoder) {
        self.ctx.queue.submit([enc.finish()]);
        if let Err(err) = self.ctx.take_error() {
            panic!("multipole kernels: {err}");
        }
    }
}

type Guard = cubecl_runtime::storage::ManagedResource<WgpuResource>;

fn resource(t: &CubeTensor) -> Guard {
    t.client
        .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
        .unwrap_or_else(|err| panic!("multipole: a Burn tensor's wgpu buffer: {err}"))
}

fn copy_in(enc: &mut wgpu::CommandEncoder, src: &WgpuResource, dst: &wgpu::Buffer, bytes: u64) {
    enc.copy_buffer_to_buffer(&src.buffer, src.offset, dst, 0, bytes);
}

fn copy_out(enc: &mut wgpu::CommandEncoder, src: &wgpu::Buffer, dst: &WgpuResource, bytes: u64) {
    enc.copy_buffer_to_buffer(src, 0, &dst.buffer, dst.offset, bytes);
}

/// A fresh tensor for a result the copies overwrite whole: no fill kernel (Burn's zeros cost a
/// launch each, six per forward and backward).
fn empty(like: &CubeTensor, dims: Vec<usize>) -> CubeTensor {
    CubeBackend::float_empty(BurnShape::from(dims), &like.device, FloatDType::F32)
}

impl FmaKernelOps for CubeBackend {
    fn fma_kernels(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        plan: PlanHandle,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        plan.0.forward(q, k, v, w)
    }

    fn fma_kernels_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        plan: PlanHandle,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let [dq, dk, dv, dw] = plan.0.backward(q, k, v, w, o, lse, d_o);
        (dq, dk, dv, dw)
    }
}
