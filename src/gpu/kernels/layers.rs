//! Rust twin of shaders/layers.wgsl: the vision transformer's layers, forward and backward,
//! over GPU-resident f32 buffers. Each kernel call checks its buffers' sizes and returns a
//! `LayerDispatch` (pipeline, bind group with its own uniform, grid) made once and recorded as
//! often as wanted; nothing is submitted.

use crate::error::{FmaError, Result};
use crate::gpu::runtime::buffers;
use crate::gpu::runtime::context::GpuContext;
use crate::gpu::runtime::dispatch::{bind, grid};
use crate::gpu::shaders::layers::Bind;
pub use crate::gpu::shaders::layers::{LAYER_WG, LINEAR_TILE};
use crate::gpu::shaders::structs::LayerParams;
use crate::gpu::shaders::{Family, Spec};

/// A linear layer's shape: `rows` rows of `inp` values to rows of `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    pub rows: usize,
    pub inp: usize,
    pub out: usize,
}

/// `rows` rows of `dim` values (layer norm, softmax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowDims {
    pub rows: usize,
    pub dim: usize,
}

/// `count` images of `tokens` tokens of `dim` values (position, pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenDims {
    pub count: usize,
    pub tokens: usize,
    pub dim: usize,
}

/// `count` images of `tokens` tokens in `heads` heads of `hd` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadDims {
    pub count: usize,
    pub tokens: usize,
    pub heads: usize,
    pub hd: usize,
}

impl HeadDims {
    /// Values of one of q, k, v.
    fn len(&self) -> usize {
        self.count * self.tokens * self.heads * self.hd
    }

    fn params(&self) -> LayerParams {
        LayerParams {
            tokens: self.tokens as u32,
            heads: self.heads as u32,
            hd: self.hd as u32,
            ..Default::default()
        }
    }
}

/// `count` images of `side x side` pixels cut into tokens every `stride` pixels, each reading
/// a `window x window` pixel window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchDims {
    pub count: usize,
    pub side: usize,
    pub stride: usize,
    pub window: usize,
}

/// The product of `factors`, or `LimitExceeded` when it (or a factor) does not fit the
/// kernels' 32-bit indices: the sizes below are multiplied without further checks.
fn fits(what: &str, factors: &[usize]) -> Result<usize> {
    let product = factors
        .iter()
        .try_fold(1usize, |a, &f| a.checked_mul(f))
        .filter(|&p| p <= u32::MAX as usize && factors.iter().all(|&f| f <= u32::MAX as usize));
    product.ok_or_else(|| FmaError::LimitExceeded {
        what: format!("{what} {factors:?} (32-bit indices on the GPU)"),
        needed: factors
            .iter()
            .fold(1u64, |a, &f| a.saturating_mul(f as u64)),
        limit: u32::MAX as u64,
        hint: "use a smaller batch or smaller layers".into(),
    })
}

impl LinearDims {
    fn check(&self) -> Result<()> {
        fits("linear rows x inputs", &[self.rows, self.inp])?;
        fits("linear inputs x outputs", &[self.inp, self.out])?;
        fits("linear rows x outputs", &[self.rows, self.out]).map(drop)
    }
}

impl RowDims {
    fn check(&self) -> Result<()> {
        fits("rows x values", &[self.rows, self.dim])?;
        fits("rows x 2 statistics", &[self.rows, 2]).map(drop)
    }
}

impl TokenDims {
    fn check(&self) -> Result<()> {
        fits(
            "images x tokens x values",
            &[self.count, self.tokens, self.dim],
        )
        .map(drop)
    }
}

impl HeadDims {
    fn check(&self) -> Result<()> {
        // q, k and v side by side: 3 x what one of them holds.
        fits(
            "images x tokens x heads x head values x 3",
            &[self.count, self.tokens, self.heads, self.hd, 3],
        )
        .map(drop)
    }
}

impl PatchDims {
    fn check(&self) -> Result<()> {
        fits("images x side x side", &[self.count, self.side, self.side])?;
        let grid = self.side / self.stride.max(1);
        fits(
            "images x tokens x window pixels",
            &[self.count, grid, grid, self.window, self.window],
        )
        .map(drop)
    }
}

/// One layer kernel bound to its buffers and shape: record it into any number of passes.
pub struct LayerDispatch {
    entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    /// None when the kernel has nothing to do (zero elements).
    group: Option<wgpu::BindGroup>,
    grid: (u32, u32),
    /// The uniform the bind group reads, held as long as the dispatch.
    _params: Option<wgpu::Buffer>,
}

impl LayerDispatch {
    /// Records the dispatch into an open compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if let Some(group) = &self.group {
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
        }
    }

    /// Records the dispatch in a compute pass of its own.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.entry),
            timestamp_writes: None,
        });
        self.record(&mut pass);
    }
}

/// One buffer of a dispatch: its binding, the buffer and how many f32 it must hold.
type Slot<'a> = (Bind, &'a wgpu::Buffer, usize);

/// Handle to the layer kernels; pipelines are cached in the context.
pub struct LayerKernels {
    spec: Spec,
}

impl LayerKernels {
    /// Builds the inference kernels now (so a device that refuses them fails here); the
    /// backward kernels are built on first use.
    pub fn new(ctx: &GpuContext) -> Result<LayerKernels> {
        let k = LayerKernels { spec: Spec::LAYERS };
        for entry in [
            "linear_forward",
            "layer_norm_forward",
            "gelu_forward",
            "patches",
            "add_position",
            "add_into",
            "mean_pool",
            "split_heads",
            "merge_heads",
        ] {
            ctx.pipeline(Family::Layers, entry, k.spec)?;
        }
        Ok(k)
    }

    /// Checks the buffers and makes the dispatch of `entry` over `len` invocations.
    fn prepare(
        &self,
        ctx: &GpuContext,
        entry: &'static str,
        mut p: LayerParams,
        len: usize,
        slots: &[Slot<'_>],
    ) -> Result<LayerDispatch> {
        // The one check of bound buffers (sizes, STORAGE usage, a written buffer bound once).
        let names: Vec<String> = slots
            .iter()
            .map(|&(binding, _, _)| format!("{entry} binding {}", binding as u32))
            .collect();
        let checked: Vec<buffers::Slot<'_>> = slots
            .iter()
            .zip(&names)
            .map(|(&(binding, buf, need), name)| {
                let bytes = (need as u64).saturating_mul(4);
                if Bind::OUTPUTS.contains(&binding) {
                    buffers::Slot::written(name, buf, bytes)
                } else {
                    buffers::Slot::read(name, buf, bytes)
                }
            })
            .collect();
        buffers::check(&checked)?;
        let pipeline = ctx.pipeline(Family::Layers, entry, self.spec)?;
        if len == 0 {
            return Ok(LayerDispatch {
                entry,
                pipeline,
                group: None,
                grid: (0, 0),
                _params: None,
            });
        }
        p.len = u32::try_from(len).map_err(|_| FmaError::LimitExceeded {
            what: format!("{entry} elements"),
            needed: len as u64,
            limit: u32::MAX as u64,
            hint: "use a smaller batch".into(),
        })?;
        let grid = grid(
            (len as u64).div_ceil(LAYER_WG as u64),
            ctx.limits().max_compute_workgroups_per_dimension,
        )?;
        // In error scopes, so that a shared device's errors come back from `take_error`.
        let (uniform, group) = ctx.scoped(|| {
            let uniform = ctx.buffer_with(
                "layer params",
                bytemuck::bytes_of(&p),
                wgpu::BufferUsages::UNIFORM,
            );
            let mut buffers: Vec<(u32, &wgpu::Buffer)> = vec![(Bind::Params as u32, &uniform)];
            buffers.extend(slots.iter().map(|&(b, buf, _)| (b as u32, buf)));
            let group = bind(ctx, entry, &pipeline, &buffers);
            (uniform, group)
        });
        Ok(LayerDispatch {
            entry,
            pipeline,
            group: Some(group),
            grid,
            _params: Some(uniform),
        })
    }

    /// `y[rows, out] = x[rows, inp] w[inp, out] + b[out]`; inputs `[x, w, b]`. One invocation
    /// per `LINEAR_TILE x LINEAR_TILE` block of y.
    pub fn linear(
        &self,
        ctx: &GpuContext,
        [x, w, b]: [&wgpu::Buffer; 3],
        y: &wgpu::Buffer,
        d: LinearDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let slots = [
            (Bind::In0, x, d.rows * d.inp),
            (Bind::In1, w, d.inp * d.out),
            (Bind::In2, b, d.out),
            (Bind::Out0, y, d.rows * d.out),
        ];
        let blocks = d.rows.div_ceil(LINEAR_TILE) * d.out.div_ceil(LINEAR_TILE);
        self.prepare(ctx, "linear_forward", d.into(), blocks, &slots)
    }

    /// `dx[rows, inp] = dy[rows, out] w^T`; inputs `[dy, w]`.
    pub fn linear_backward_input(
        &self,
        ctx: &GpuContext,
        [dy, w]: [&wgpu::Buffer; 2],
        dx: &wgpu::Buffer,
        d: LinearDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let slots = [
            (Bind::In0, dy, d.rows * d.out),
            (Bind::In1, w, d.inp * d.out),
            (Bind::Out0, dx, d.rows * d.inp),
        ];
        let len = d.rows * d.inp;
        self.prepare(ctx, "linear_backward_input", d.into(), len, &slots)
    }

    /// `dw += x^T dy`, `db += column sums of dy` (adds to what the buffers hold); inputs
    /// `[x, dy]`, outputs `[dw, db]`.
    pub fn linear_backward_weight(
        &self,
        ctx: &GpuContext,
        [x, dy]: [&wgpu::Buffer; 2],
        [dw, db]: [&wgpu::Buffer; 2],
        d: LinearDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let slots = [
            (Bind::In0, x, d.rows * d.inp),
            (Bind::In1, dy, d.rows * d.out),
            (Bind::Out0, dw, d.inp * d.out),
            (Bind::Out1, db, d.out),
        ];
        let len = d.inp * d.out + d.out;
        self.prepare(ctx, "linear_backward_weight", d.into(), len, &slots)
    }

    /// Layer norm over rows: inputs `[x, gain, bias]`, outputs `[y, stats]` with `stats` =
    /// (mean, 1/std) per row.
    pub fn layer_norm(
        &self,
        ctx: &GpuContext,
        [x, g, b]: [&wgpu::Buffer; 3],
        [y, stats]: [&wgpu::Buffer; 2],
        d: RowDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.rows * d.dim;
        let slots = [
            (Bind::In0, x, n),
            (Bind::In1, g, d.dim),
            (Bind::In2, b, d.dim),
            (Bind::Out0, y, n),
            (Bind::Out1, stats, 2 * d.rows),
        ];
        self.prepare(ctx, "layer_norm_forward", d.into(), d.rows, &slots)
    }

    /// Layer norm's input gradient `dx`; inputs `[x, gain, dy, stats]`.
    pub fn layer_norm_backward(
        &self,
        ctx: &GpuContext,
        [x, g, dy, stats]: [&wgpu::Buffer; 4],
        dx: &wgpu::Buffer,
        d: RowDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.rows * d.dim;
        let slots = [
            (Bind::In0, x, n),
            (Bind::In1, g, d.dim),
            (Bind::In2, dy, n),
            (Bind::In3, stats, 2 * d.rows),
            (Bind::Out0, dx, n),
        ];
        self.prepare(ctx, "layer_norm_backward", d.into(), d.rows, &slots)
    }

    /// Layer norm's gain and bias gradients, added to `[dg, db]`; inputs `[x, dy, stats]`.
    pub fn layer_norm_param_grads(
        &self,
        ctx: &GpuContext,
        [x, dy, stats]: [&wgpu::Buffer; 3],
        [dg, db]: [&wgpu::Buffer; 2],
        d: RowDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.rows * d.dim;
        let slots = [
            (Bind::In0, x, n),
            (Bind::In2, dy, n),
            (Bind::In3, stats, 2 * d.rows),
            (Bind::Out0, dg, d.dim),
            (Bind::Out1, db, d.dim),
        ];
        let p = LayerParams {
            rows: d.rows as u32,
            ..d.into()
        };
        self.prepare(ctx, "layer_norm_param_grads", p, d.dim, &slots)
    }

    /// GELU (tanh form) of `len` values.
    pub fn gelu(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        len: usize,
    ) -> Result<LayerDispatch> {
        let slots = [(Bind::In0, x, len), (Bind::Out0, y, len)];
        self.prepare(ctx, "gelu_forward", LayerParams::default(), len, &slots)
    }

    /// GELU's input gradient; inputs `[x, dy]`.
    pub fn gelu_backward(
        &self,
        ctx: &GpuContext,
        [x, dy]: [&wgpu::Buffer; 2],
        dx: &wgpu::Buffer,
        len: usize,
    ) -> Result<LayerDispatch> {
        let slots = [
            (Bind::In0, x, len),
            (Bind::In1, dy, len),
            (Bind::Out0, dx, len),
        ];
        self.prepare(ctx, "gelu_backward", LayerParams::default(), len, &slots)
    }

    /// Row-wise softmax.
    pub fn softmax(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        d: RowDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.rows * d.dim;
        let slots = [(Bind::In0, x, n), (Bind::Out0, y, n)];
        self.prepare(ctx, "softmax_forward", d.into(), d.rows, &slots)
    }

    /// Softmax's input gradient from its output; inputs `[y, dy]`.
    pub fn softmax_backward(
        &self,
        ctx: &GpuContext,
        [y, dy]: [&wgpu::Buffer; 2],
        dx: &wgpu::Buffer,
        d: RowDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.rows * d.dim;
        let slots = [(Bind::In0, y, n), (Bind::In1, dy, n), (Bind::Out0, dx, n)];
        self.prepare(ctx, "softmax_backward", d.into(), d.rows, &slots)
    }

    /// One `window x window` pixel row per token.
    pub fn patches(
        &self,
        ctx: &GpuContext,
        images: &wgpu::Buffer,
        out: &wgpu::Buffer,
        d: PatchDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let PatchDims {
            count,
            side,
            stride,
            window,
        } = d;
        if stride == 0 || window < stride || !side.is_multiple_of(stride) {
            return Err(FmaError::InvalidConfig(format!(
                "patches: stride {stride} must divide side {side} and be at most window {window}"
            )));
        }
        let p = LayerParams {
            side: side as u32,
            stride: stride as u32,
            window: window as u32,
            ..Default::default()
        };
        let g = side / stride;
        let n = count * g * g * window * window;
        let slots = [
            (Bind::In0, images, count * side * side),
            (Bind::Out0, out, n),
        ];
        self.prepare(ctx, "patches", p, n, &slots)
    }

    /// `x[count * tokens, dim] += pos[tokens, dim]`.
    pub fn add_position(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        pos: &wgpu::Buffer,
        d: TokenDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.count * d.tokens * d.dim;
        let slots = [(Bind::In0, pos, d.tokens * d.dim), (Bind::Out0, x, n)];
        self.prepare(ctx, "add_position", d.into(), n, &slots)
    }

    /// `a += b` over `len` values.
    pub fn add_into(
        &self,
        ctx: &GpuContext,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        len: usize,
    ) -> Result<LayerDispatch> {
        let slots = [(Bind::In0, b, len), (Bind::Out0, a, len)];
        self.prepare(ctx, "add_into", LayerParams::default(), len, &slots)
    }

    /// Mean over each image's tokens: `[count * tokens, dim]` to `[count, dim]`.
    pub fn mean_pool(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        d: TokenDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let slots = [
            (Bind::In0, x, d.count * d.tokens * d.dim),
            (Bind::Out0, out, d.count * d.dim),
        ];
        self.prepare(ctx, "mean_pool", d.into(), d.count * d.dim, &slots)
    }

    /// `mean_pool`'s input gradient.
    pub fn mean_pool_backward(
        &self,
        ctx: &GpuContext,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        d: TokenDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.count * d.tokens * d.dim;
        let slots = [(Bind::In0, dy, d.count * d.dim), (Bind::Out0, dx, n)];
        self.prepare(ctx, "mean_pool_backward", d.into(), n, &slots)
    }

    /// Fused `qkv [count, tokens, 3 * heads * hd]` to q, k, v of `[count, heads, tokens, hd]`.
    pub fn split_heads(
        &self,
        ctx: &GpuContext,
        qkv: &wgpu::Buffer,
        [q, k, v]: [&wgpu::Buffer; 3],
        d: HeadDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.len();
        let slots = [
            (Bind::In0, qkv, 3 * n),
            (Bind::Out0, q, n),
            (Bind::Out1, k, n),
            (Bind::Out2, v, n),
        ];
        self.prepare(ctx, "split_heads", d.params(), 3 * n, &slots)
    }

    /// `split_heads`' backward: inputs `[dq, dk, dv]` into the fused layout.
    pub fn split_heads_backward(
        &self,
        ctx: &GpuContext,
        [dq, dk, dv]: [&wgpu::Buffer; 3],
        dqkv: &wgpu::Buffer,
        d: HeadDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.len();
        let slots = [
            (Bind::In0, dq, n),
            (Bind::In1, dk, n),
            (Bind::In2, dv, n),
            (Bind::Out0, dqkv, 3 * n),
        ];
        self.prepare(ctx, "split_heads_backward", d.params(), 3 * n, &slots)
    }

    /// `[count, heads, tokens, hd]` to `[count, tokens, heads * hd]`.
    pub fn merge_heads(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        d: HeadDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.len();
        let slots = [(Bind::In0, x, n), (Bind::Out0, out, n)];
        self.prepare(ctx, "merge_heads", d.params(), n, &slots)
    }

    /// `merge_heads`' backward.
    pub fn merge_heads_backward(
        &self,
        ctx: &GpuContext,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        d: HeadDims,
    ) -> Result<LayerDispatch> {
        d.check()?;
        let n = d.len();
        let slots = [(Bind::In0, dy, n), (Bind::Out0, dx, n)];
        self.prepare(ctx, "merge_heads_backward", d.params(), n, &slots)
    }
}

impl From<LinearDims> for LayerParams {
    fn from(d: LinearDims) -> Self {
        LayerParams {
            rows: d.rows as u32,
            inp: d.inp as u32,
            out: d.out as u32,
            ..Default::default()
        }
    }
}

impl From<RowDims> for LayerParams {
    fn from(d: RowDims) -> Self {
        LayerParams {
            dim: d.dim as u32,
            ..Default::default()
        }
    }
}

impl From<TokenDims> for LayerParams {
    fn from(d: TokenDims) -> Self {
        LayerParams {
            tokens: d.tokens as u32,
            dim: d.dim as u32,
            ..Default::default()
        }
    }
}

/// Every entry point of layers.wgsl (for validation and the browser compile check).
pub const LAYER_ENTRIES: [&str; 19] = [
    "linear_forward",
    "linear_backward_input",
    "linear_backward_weight",
    "layer_norm_forward",
    "layer_norm_backward",
    "layer_norm_param_grads",
    "gelu_forward",
    "gelu_backward",
    "softmax_forward",
    "softmax_backward",
    "patches",
    "add_position",
    "add_into",
    "mean_pool",
    "mean_pool_backward",
    "split_heads",
    "split_heads_backward",
    "merge_heads",
    "merge_heads_backward",
];
