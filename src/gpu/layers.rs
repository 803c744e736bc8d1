//! Rust twin of shaders/layers.wgsl: the vision transformer's layers, forward and backward,
//! encoded over GPU-resident f32 buffers. Each call checks its buffers' sizes and records one
//! compute pass; nothing is submitted.

use super::context::GpuContext;
use super::params::{bind, dispatch};
use super::shaders::{Family, Spec};
use crate::error::{FmaError, Result};

/// The `LayerParams` uniform of layers.wgsl (same fields, same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct LayerParams {
    rows: u32,
    inp: u32,
    out: u32,
    dim: u32,
    tokens: u32,
    heads: u32,
    hd: u32,
    side: u32,
    stride: u32,
    window: u32,
    count: u32,
    len: u32,
}

/// Invocations per workgroup (WG in the shader).
const WG: u64 = 64;

/// Handle to the layer kernels; pipelines are cached in the context.
pub struct LayerKernels {
    spec: Spec,
}

/// One buffer of a dispatch: its binding, the buffer and how many f32 it must hold.
type Slot<'a> = (u32, &'a wgpu::Buffer, usize);

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

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        entry: &'static str,
        mut p: LayerParams,
        len: usize,
        slots: &[Slot<'_>],
    ) -> Result<()> {
        for &(binding, buf, need) in slots {
            if buf.size() < (need * 4) as u64 {
                return Err(FmaError::BadShape {
                    what: format!("{entry} buffer at binding {binding}"),
                    expected: format!("at least {} bytes ({need} f32)", need * 4),
                    got: format!("{} bytes", buf.size()),
                });
            }
        }
        // WebGPU forbids a buffer bound as read-only and writable in one dispatch.
        let writes = slots.iter().filter(|s| (4..=6).contains(&s.0));
        for w in writes {
            if slots.iter().any(|s| s.0 != w.0 && s.1 == w.1) {
                return Err(FmaError::BadShape {
                    what: format!("{entry} buffers"),
                    expected: "outputs distinct from inputs and from each other".into(),
                    got: "a buffer used twice".into(),
                });
            }
        }
        if len == 0 {
            return Ok(());
        }
        p.len = u32::try_from(len).map_err(|_| FmaError::LimitExceeded {
            what: format!("{entry} elements"),
            needed: len as u64,
            limit: u32::MAX as u64,
            hint: "use a smaller batch".into(),
        })?;
        let pipeline = ctx.pipeline(Family::Layers, entry, self.spec)?;
        let uniform = ctx.buffer_with(
            "layer params",
            bytemuck::bytes_of(&p),
            wgpu::BufferUsages::UNIFORM,
        );
        let mut buffers: Vec<(u32, &wgpu::Buffer)> = vec![(0, &uniform)];
        buffers.extend(slots.iter().map(|&(b, buf, _)| (b, buf)));
        let group = bind(ctx, entry, &pipeline, &buffers);
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(entry),
            timestamp_writes: None,
        });
        dispatch(ctx, &mut pass, &pipeline, &group, (len as u64).div_ceil(WG))
    }

    /// `y[rows, out] = x[rows, inp] w[inp, out] + b[out]`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        b: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        inp: usize,
        out: usize,
    ) -> Result<()> {
        let p = LayerParams {
            rows: rows as u32,
            inp: inp as u32,
            out: out as u32,
            ..Default::default()
        };
        let slots = [
            (1, x, rows * inp),
            (2, w, inp * out),
            (3, b, out),
            (4, y, rows * out),
        ];
        self.run(ctx, enc, "linear_forward", p, rows * out, &slots)
    }

    /// `dx[rows, inp] = dy[rows, out] w^T`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_input(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        dy: &wgpu::Buffer,
        w: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        rows: usize,
        inp: usize,
        out: usize,
    ) -> Result<()> {
        let p = LayerParams {
            rows: rows as u32,
            inp: inp as u32,
            out: out as u32,
            ..Default::default()
        };
        let slots = [(1, dy, rows * out), (2, w, inp * out), (4, dx, rows * inp)];
        self.run(ctx, enc, "linear_backward_input", p, rows * inp, &slots)
    }

    /// `dw += x^T dy`, `db += column sums of dy` (adds to what the buffers hold).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_weight(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        dw: &wgpu::Buffer,
        db: &wgpu::Buffer,
        rows: usize,
        inp: usize,
        out: usize,
    ) -> Result<()> {
        let p = LayerParams {
            rows: rows as u32,
            inp: inp as u32,
            out: out as u32,
            ..Default::default()
        };
        let slots = [
            (1, x, rows * inp),
            (2, dy, rows * out),
            (4, dw, inp * out),
            (5, db, out),
        ];
        self.run(
            ctx,
            enc,
            "linear_backward_weight",
            p,
            inp * out + out,
            &slots,
        )
    }

    /// Layer norm over rows of `dim`: y, and `stats` = (mean, 1/std) per row.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        g: &wgpu::Buffer,
        b: &wgpu::Buffer,
        y: &wgpu::Buffer,
        stats: &wgpu::Buffer,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let p = LayerParams {
            dim: dim as u32,
            ..Default::default()
        };
        let n = rows * dim;
        let slots = [
            (1, x, n),
            (2, g, dim),
            (3, b, dim),
            (4, y, n),
            (5, stats, 2 * rows),
        ];
        self.run(ctx, enc, "layer_norm_forward", p, rows, &slots)
    }

    /// Layer norm's input gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        g: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        stats: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let p = LayerParams {
            dim: dim as u32,
            ..Default::default()
        };
        let n = rows * dim;
        let slots = [
            (1, x, n),
            (2, g, dim),
            (3, dy, n),
            (7, stats, 2 * rows),
            (4, dx, n),
        ];
        self.run(ctx, enc, "layer_norm_backward", p, rows, &slots)
    }

    /// Layer norm's gain and bias gradients, added to `dg` and `db`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_param_grads(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        stats: &wgpu::Buffer,
        dg: &wgpu::Buffer,
        db: &wgpu::Buffer,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let p = LayerParams {
            rows: rows as u32,
            dim: dim as u32,
            ..Default::default()
        };
        let n = rows * dim;
        let slots = [
            (1, x, n),
            (3, dy, n),
            (7, stats, 2 * rows),
            (4, dg, dim),
            (5, db, dim),
        ];
        self.run(ctx, enc, "layer_norm_param_grads", p, dim, &slots)
    }

    /// GELU (tanh form) of `len` values.
    pub fn gelu(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        len: usize,
    ) -> Result<()> {
        self.run(
            ctx,
            enc,
            "gelu_forward",
            LayerParams::default(),
            len,
            &[(1, x, len), (4, y, len)],
        )
    }

    /// GELU's input gradient.
    pub fn gelu_backward(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        len: usize,
    ) -> Result<()> {
        let slots = [(1, x, len), (2, dy, len), (4, dx, len)];
        self.run(
            ctx,
            enc,
            "gelu_backward",
            LayerParams::default(),
            len,
            &slots,
        )
    }

    /// Row-wise softmax over rows of `dim`.
    #[allow(clippy::too_many_arguments)]
    pub fn softmax(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let p = LayerParams {
            dim: dim as u32,
            ..Default::default()
        };
        self.run(
            ctx,
            enc,
            "softmax_forward",
            p,
            rows,
            &[(1, x, rows * dim), (4, y, rows * dim)],
        )
    }

    /// Softmax's input gradient from its output `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn softmax_backward(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        y: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let p = LayerParams {
            dim: dim as u32,
            ..Default::default()
        };
        let n = rows * dim;
        self.run(
            ctx,
            enc,
            "softmax_backward",
            p,
            rows,
            &[(1, y, n), (2, dy, n), (4, dx, n)],
        )
    }

    /// One `window x window` pixel row per token of `count` images of `side x side`.
    #[allow(clippy::too_many_arguments)]
    pub fn patches(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        images: &wgpu::Buffer,
        out: &wgpu::Buffer,
        count: usize,
        side: usize,
        stride: usize,
        window: usize,
    ) -> Result<()> {
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
        self.run(
            ctx,
            enc,
            "patches",
            p,
            n,
            &[(1, images, count * side * side), (4, out, n)],
        )
    }

    /// `x[count * tokens, dim] += pos[tokens, dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_position(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        pos: &wgpu::Buffer,
        count: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<()> {
        let p = LayerParams {
            tokens: tokens as u32,
            dim: dim as u32,
            ..Default::default()
        };
        let n = count * tokens * dim;
        self.run(
            ctx,
            enc,
            "add_position",
            p,
            n,
            &[(1, pos, tokens * dim), (4, x, n)],
        )
    }

    /// `a += b` over `len` values.
    pub fn add_into(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        len: usize,
    ) -> Result<()> {
        self.run(
            ctx,
            enc,
            "add_into",
            LayerParams::default(),
            len,
            &[(1, b, len), (4, a, len)],
        )
    }

    /// Mean over each image's tokens: `[count * tokens, dim]` to `[count, dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn mean_pool(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        count: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<()> {
        let p = LayerParams {
            tokens: tokens as u32,
            dim: dim as u32,
            ..Default::default()
        };
        let slots = [(1, x, count * tokens * dim), (4, out, count * dim)];
        self.run(ctx, enc, "mean_pool", p, count * dim, &slots)
    }

    /// `mean_pool`'s input gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn mean_pool_backward(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        count: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<()> {
        let p = LayerParams {
            tokens: tokens as u32,
            dim: dim as u32,
            ..Default::default()
        };
        let n = count * tokens * dim;
        self.run(
            ctx,
            enc,
            "mean_pool_backward",
            p,
            n,
            &[(1, dy, count * dim), (4, dx, n)],
        )
    }

    fn heads_params(tokens: usize, heads: usize, hd: usize) -> LayerParams {
        LayerParams {
            tokens: tokens as u32,
            heads: heads as u32,
            hd: hd as u32,
            ..Default::default()
        }
    }

    /// Fused `qkv [count, tokens, 3 * heads * hd]` to q, k, v of `[count, heads, tokens, hd]`.
    #[allow(clippy::too_many_arguments)]
    pub fn split_heads(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        qkv: &wgpu::Buffer,
        [q, k, v]: [&wgpu::Buffer; 3],
        count: usize,
        tokens: usize,
        heads: usize,
        hd: usize,
    ) -> Result<()> {
        let n = count * tokens * heads * hd;
        let slots = [(1, qkv, 3 * n), (4, q, n), (5, k, n), (6, v, n)];
        let p = Self::heads_params(tokens, heads, hd);
        self.run(ctx, enc, "split_heads", p, 3 * n, &slots)
    }

    /// `split_heads`' backward: dq, dk, dv into the fused layout.
    #[allow(clippy::too_many_arguments)]
    pub fn split_heads_backward(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        [dq, dk, dv]: [&wgpu::Buffer; 3],
        dqkv: &wgpu::Buffer,
        count: usize,
        tokens: usize,
        heads: usize,
        hd: usize,
    ) -> Result<()> {
        let n = count * tokens * heads * hd;
        let slots = [(1, dq, n), (2, dk, n), (3, dv, n), (4, dqkv, 3 * n)];
        let p = Self::heads_params(tokens, heads, hd);
        self.run(ctx, enc, "split_heads_backward", p, 3 * n, &slots)
    }

    /// `[count, heads, tokens, hd]` to `[count, tokens, heads * hd]`.
    #[allow(clippy::too_many_arguments)]
    pub fn merge_heads(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        count: usize,
        tokens: usize,
        heads: usize,
        hd: usize,
    ) -> Result<()> {
        let n = count * tokens * heads * hd;
        let p = Self::heads_params(tokens, heads, hd);
        self.run(ctx, enc, "merge_heads", p, n, &[(1, x, n), (4, out, n)])
    }

    /// `merge_heads`' backward.
    #[allow(clippy::too_many_arguments)]
    pub fn merge_heads_backward(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        count: usize,
        tokens: usize,
        heads: usize,
        hd: usize,
    ) -> Result<()> {
        let n = count * tokens * heads * hd;
        let p = Self::heads_params(tokens, heads, hd);
        self.run(
            ctx,
            enc,
            "merge_heads_backward",
            p,
            n,
            &[(1, dy, n), (4, dx, n)],
        )
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
