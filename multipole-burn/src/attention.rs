//! The public calls: checks, then the kernels (registered wgpu devices) or Burn tensor ops.

use std::sync::{Arc, Mutex};

use burn::tensor::{DType, Tensor};
use multipole::{FmaConfig, GpuContext, Precision, Shape};

use crate::error::{Error, Result};
use crate::kernels::{FmaKernelOps, KernelPlan, PlanHandle};
use crate::layout::WeightLayout;
use crate::tables::Tables;
use crate::{device, ops};

/// FMA attention over Burn tensors `[batch, heads, n, d]` (the n tokens of a head in
/// `config.layout`: a sequence or a row-major image): O `[batch, heads, n, d]` and the
/// log-sum-exp of each query's scores, LSE `[batch, heads, n]`.
///
/// `weights` holds the learned downsampling weights packed as `DownsampleWeights::packed` lays
/// them out (`FmaAttention` owns them as a trainable parameter); `Mean` takes none.
///
/// On a wgpu device registered with this crate (`init_wgpu`) the call runs multipole's WGSL
/// kernels, and under autodiff their backward; on every other device (ndarray, CUDA, the CPU
/// runtime, an unregistered wgpu device) it runs the same definition in Burn tensor ops, which
/// Burn differentiates. Gradients flow through O; LSE is a constant.
pub fn fma_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    weights: Option<Tensor<1>>,
    config: &FmaConfig,
) -> Result<(Tensor<4>, Tensor<3>)> {
    match device::context(&q.device()) {
        Some(ctx) => kernels(ctx, q, k, v, weights, config),
        None => fma_attention_ops(q, k, v, weights, config),
    }
}

/// `fma_attention` on the kernels only: an error unless the tensors live on a registered wgpu
/// device.
pub fn fma_attention_kernels(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    weights: Option<Tensor<1>>,
    config: &FmaConfig,
) -> Result<(Tensor<4>, Tensor<3>)> {
    let ctx = device::context(&q.device()).ok_or_else(|| Error::NotWgpu {
        device: format!("{:?}", q.device()),
    })?;
    kernels(ctx, q, k, v, weights, config)
}

/// `fma_attention` in Burn tensor ops, on any backend: gathers and batched matmuls, memory
/// O(n log n).
pub fn fma_attention_ops(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    weights: Option<Tensor<1>>,
    config: &FmaConfig,
) -> Result<(Tensor<4>, Tensor<3>)> {
    let checked = check(&q, &k, &v, weights.as_ref(), config)?;
    let tables = Tables::get(checked.shape.n, config)?;
    let weights = config
        .downsampling
        .is_learned()
        .then_some(weights)
        .flatten();
    Ok(ops::forward(
        q,
        k,
        v,
        weights,
        config,
        &tables,
        &checked.layout,
    ))
}

fn kernels(
    ctx: Arc<GpuContext>,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    weights: Option<Tensor<1>>,
    config: &FmaConfig,
) -> Result<(Tensor<4>, Tensor<3>)> {
    let checked = check(&q, &k, &v, weights.as_ref(), config)?;
    let plan = plan(ctx, checked.shape, config)?;
    let w = match weights {
        Some(w) if config.downsampling.is_learned() => w,
        // Mean reads no weights; the op still takes one tensor in their place.
        _ => Tensor::zeros([1], &q.device()),
    };
    let (o, lse) = <burn::backend::Dispatch as FmaKernelOps>::fma_kernels(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        w.into_dispatch(),
        plan,
    );
    Ok((Tensor::from_dispatch(o), Tensor::from_dispatch(lse)))
}

type Plans = Mutex<Vec<(Arc<GpuContext>, Shape, FmaConfig, PlanHandle)>>;
/// The kernels' plans, one per (device, shape, options) in use.
static PLANS: Plans = Mutex::new(Vec::new());

/// GPU bytes held by the kernels' cached plans (outside Burn's memory pools): what the op adds
/// to a model's memory besides its input and output tensors.
pub fn kernel_bytes() -> u64 {
    let plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    plans.iter().map(|(.., p)| p.0.bytes()).sum()
}

/// Drops the cached plans and their buffers (each is made again on its next use).
pub fn release_plans() {
    PLANS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The cached plan of (device, shape, options), made on first use.
fn plan(ctx: Arc<GpuContext>, shape: Shape, config: &FmaConfig) -> Result<PlanHandle> {
    let mut plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((.., p)) = plans
        .iter()
        .find(|(c, s, f, _)| Arc::ptr_eq(c, &ctx) && *s == shape && f == config)
    {
        return Ok(p.clone());
    }
    let p = PlanHandle(Arc::new(KernelPlan::new(ctx.clone(), shape, config)?));
    // A model uses a handful of shapes; the oldest plan (and its buffers) goes first.
    if plans.len() >= 16 {
        plans.remove(0);
    }
    plans.push((ctx, shape, config.clone(), p.clone()));
    Ok(p)
}

struct Checked {
    shape: Shape,
    layout: WeightLayout,
}

/// Shapes, dtype, options and weights, checked before any work is queued.
fn check(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    weights: Option<&Tensor<1>>,
    config: &FmaConfig,
) -> Result<Checked> {
    let dims = q.dims();
    for (name, t) in [("k", k), ("v", v)] {
        if t.dims() != dims {
            return Err(Error::BadTensor {
                what: name.into(),
                expected: format!("q's shape {dims:?}"),
                got: format!("{:?}", t.dims()),
            });
        }
    }
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.dtype() != DType::F32 {
            return Err(Error::BadTensor {
                what: name.into(),
                expected: "f32".into(),
                got: format!("{:?}", t.dtype()),
            });
        }
    }
    if config.precision != Precision::F32 {
        return Err(Error::Fma(multipole::FmaError::InvalidConfig(
            "through Burn the tensors' dtype decides storage, and FMA runs in f32: use Precision::F32".into(),
        )));
    }
    let [b, h, n, d] = dims;
    let shape = Shape::new(b, h, n, d);
    shape.validate()?;
    let g = multipole::Geometry::new(n, config)?;
    let layout = WeightLayout::new(&g, config, d);
    if config.downsampling.is_learned() {
        match weights {
            None if layout.len > 0 => {
                return Err(Error::BadTensor {
                    what: "weights".into(),
                    expected: format!(
                        "{:?} downsampling weights, {} packed values (FmaAttention makes them)",
                        config.downsampling, layout.len
                    ),
                    got: "none".into(),
                });
            }
            Some(w) if w.dims()[0] != layout.len && layout.len > 0 => {
                return Err(Error::BadTensor {
                    what: "weights".into(),
                    expected: format!("{} packed values", layout.len),
                    got: format!("{}", w.dims()[0]),
                });
            }
            _ => {}
        }
    }
    Ok(Checked { shape, layout })
}
