//! Every layer kernel (shaders/layers.wgsl) against its CPU twin (src/model/layers.rs), on
//! awkward shapes; tolerance 1e-5 x (1 + |reference|) per element, the f64 twin as reference.

mod common;

use common::{gpu, random};
use multipole::gpu::LayerKernels;
use multipole::gpu::layers::{HeadDims, LinearDims, PatchDims, RowDims, TokenDims};
use multipole::model::layers as cpu;
use multipole::{FmaError, GpuContext};

fn upload(ctx: &GpuContext, data: &[f32]) -> multipole::wgpu::Buffer {
    let buf = ctx
        .device
        .create_buffer(&multipole::wgpu::BufferDescriptor {
            label: Some("test tensor"),
            size: (data.len().max(1) * 4) as u64,
            usage: multipole::wgpu::BufferUsages::STORAGE
                | multipole::wgpu::BufferUsages::COPY_DST
                | multipole::wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
    ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
    buf
}

fn zeros(ctx: &GpuContext, len: usize) -> multipole::wgpu::Buffer {
    upload(ctx, &vec![0.0; len])
}

fn read(ctx: &GpuContext, buf: &multipole::wgpu::Buffer, len: usize) -> Vec<f32> {
    let staging = ctx
        .device
        .create_buffer(&multipole::wgpu::BufferDescriptor {
            label: Some("test readback"),
            size: (len * 4) as u64,
            usage: multipole::wgpu::BufferUsages::MAP_READ
                | multipole::wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, (len * 4) as u64);
    ctx.queue.submit([enc.finish()]);
    let slice = staging.slice(..);
    slice.map_async(multipole::wgpu::MapMode::Read, |r| r.unwrap());
    ctx.device
        .poll(multipole::wgpu::PollType::wait_indefinitely())
        .unwrap();
    let view = slice.get_mapped_range().unwrap();
    bytemuck::pod_collect_to_vec(&view)
}

/// Records `f` into one encoder, submits it, checks the device recorded no error.
fn run(ctx: &GpuContext, f: impl FnOnce(&mut multipole::wgpu::CommandEncoder)) {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    f(&mut enc);
    ctx.queue.submit([enc.finish()]);
    ctx.take_error().unwrap();
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: GPU {g}, reference {w}"
        );
    }
}

#[test]
fn linear_forward_and_backward() {
    let ctx = gpu();
    let k = LayerKernels::new(ctx).unwrap();
    for (seed, (rows, inp, out)) in [(1, 4, 96), (17, 32, 1), (33, 17, 100), (256, 32, 96)]
        .into_iter()
        .enumerate()
    {
        let s = seed as u64 * 10;
        let (x, w, b, dy) = (
            random(s, rows * inp),
            random(s + 1, inp * out),
            random(s + 2, out),
            random(s + 3, rows * out),
        );
        let (dw0, db0) = (random(s + 4, inp * out), random(s + 5, out));
        let bufs = [&x, &w, &b, &dy, &dw0, &db0].map(|t| upload(ctx, t));
        let [bx, bw, bb, bdy, bdw, bdb] = &bufs;
        let (by, bdx) = (zeros(ctx, rows * out), zeros(ctx, rows * inp));
        let dims = LinearDims { rows, inp, out };
        let dispatches = [
            k.linear(ctx, [bx, bw, bb], &by, dims),
            k.linear_backward_input(ctx, [bdy, bw], &bdx, dims),
            k.linear_backward_weight(ctx, [bx, bdy], [bdw, bdb], dims),
        ]
        .map(Result::unwrap);
        run(ctx, |e| dispatches.iter().for_each(|d| d.encode(e)));
        let (x64, w64, dy64) = (f64s(&x), f64s(&w), f64s(&dy));
        let shape = format!("{rows}x{inp}x{out}");
        close(
            &format!("linear {shape}"),
            &read(ctx, &by, rows * out),
            &cpu::linear(&x64, &w64, &f64s(&b), inp, out),
            1e-5,
        );
        // The backward adds to the gradients already there.
        let (mut dw, mut db) = (f64s(&dw0), f64s(&db0));
        let dx = cpu::linear_backward(&x64, &w64, &dy64, &mut dw, &mut db, inp, out);
        let tol = 1e-5 * (rows as f64).sqrt();
        close(
            &format!("dx {shape}"),
            &read(ctx, &bdx, rows * inp),
            &dx,
            1e-5,
        );
        close(&format!("dw {shape}"), &read(ctx, bdw, inp * out), &dw, tol);
        close(&format!("db {shape}"), &read(ctx, bdb, out), &db, tol);
    }
}

#[test]
fn norm_gelu_softmax_forward_and_backward() {
    let ctx = gpu();
    let k = LayerKernels::new(ctx).unwrap();
    for (rows, dim) in [(1, 1), (3, 10), (70, 32), (513, 17)] {
        let n = rows * dim;
        let s = (rows * 100 + dim) as u64;
        let (x, g, b, dy) = (
            random(s, n)
                .iter()
                .map(|v| 3.0 * v + 0.5)
                .collect::<Vec<f32>>(),
            random(s + 1, dim),
            random(s + 2, dim),
            random(s + 3, n),
        );
        let (dg0, db0) = (random(s + 4, dim), random(s + 5, dim));
        let [bx, bg, bb, bdy, bdg, bdb] = [&x, &g, &b, &dy, &dg0, &db0].map(|t| upload(ctx, t));
        let outs: Vec<_> = (0..6).map(|_| zeros(ctx, n)).collect();
        let stats = zeros(ctx, 2 * rows);
        let dims = RowDims { rows, dim };
        // All six recorded in one compute pass, as the model records its layers.
        let dispatches = [
            k.layer_norm(ctx, [&bx, &bg, &bb], [&outs[0], &stats], dims),
            k.layer_norm_backward(ctx, [&bx, &bg, &bdy, &stats], &outs[1], dims),
            k.layer_norm_param_grads(ctx, [&bx, &bdy, &stats], [&bdg, &bdb], dims),
            k.gelu(ctx, &bx, &outs[2], n),
            k.gelu_backward(ctx, [&bx, &bdy], &outs[3], n),
            k.softmax(ctx, &bx, &outs[4], dims),
        ]
        .map(Result::unwrap);
        run(ctx, |e| {
            let mut pass = e.begin_compute_pass(&Default::default());
            dispatches.iter().for_each(|d| d.record(&mut pass));
        });
        let (x64, g64, dy64) = (f64s(&x), f64s(&g), f64s(&dy));
        let (y, st) = cpu::layer_norm(&x64, &g64, &f64s(&b), dim);
        let (mut dg, mut db) = (f64s(&dg0), f64s(&db0));
        let dx = cpu::layer_norm_backward(&x64, &st, &g64, &dy64, &mut dg, &mut db, dim);
        let at = format!("{rows}x{dim}");
        close(
            &format!("layer norm {at}"),
            &read(ctx, &outs[0], n),
            &y,
            1e-5,
        );
        // Rows of one element have zero variance: x - mean is rounding noise times 1/sqrt(eps).
        if dim > 1 {
            close(
                &format!("layer norm dx {at}"),
                &read(ctx, &outs[1], n),
                &dx,
                1e-4,
            );
            let tol = 1e-5 * (rows as f64).sqrt();
            close(&format!("dg {at}"), &read(ctx, &bdg, dim), &dg, tol);
        }
        close(
            &format!("db {at}"),
            &read(ctx, &bdb, dim),
            &db,
            1e-5 * (rows as f64).sqrt(),
        );
        close(
            &format!("gelu {at}"),
            &read(ctx, &outs[2], n),
            &cpu::gelu(&x64),
            1e-5,
        );
        close(
            &format!("gelu backward {at}"),
            &read(ctx, &outs[3], n),
            &cpu::gelu_backward(&x64, &dy64),
            1e-5,
        );
        let sm = cpu::softmax(&x64, dim);
        close(&format!("softmax {at}"), &read(ctx, &outs[4], n), &sm, 1e-5);
        // The softmax backward from the GPU's own forward output.
        let y_gpu = read(ctx, &outs[4], n);
        let by = upload(ctx, &y_gpu);
        let back = k
            .softmax_backward(ctx, [&by, &bdy], &outs[5], dims)
            .unwrap();
        run(ctx, |e| back.encode(e));
        close(
            &format!("softmax backward {at}"),
            &read(ctx, &outs[5], n),
            &cpu::softmax_backward(&f64s(&y_gpu), &dy64, dim),
            1e-5,
        );
    }
}

#[test]
fn patches_position_pooling_and_heads() {
    let ctx = gpu();
    let k = LayerKernels::new(ctx).unwrap();
    // Patches: plain and overlapping windows, 3 images.
    for (side, stride, window) in [(8, 2, 2), (8, 2, 4), (12, 4, 6), (32, 2, 4)] {
        let count = 3;
        let img = random(side as u64, count * side * side);
        let g = side / stride;
        let n = count * g * g * window * window;
        let (bi, bo) = (upload(ctx, &img), zeros(ctx, n));
        let dims = PatchDims {
            count,
            side,
            stride,
            window,
        };
        let d = k.patches(ctx, &bi, &bo, dims).unwrap();
        run(ctx, |e| d.encode(e));
        close(
            &format!("patches {side}/{stride}/{window}"),
            &read(ctx, &bo, n),
            &cpu::patches(&f64s(&img), side, stride, window),
            0.0,
        );
    }
    let (count, tokens, heads, hd) = (3, 20, 2, 5);
    let dim = heads * hd;
    let n = count * tokens * dim;
    let (x, pos, dy) = (
        random(1, n),
        random(2, tokens * dim),
        random(3, count * dim),
    );
    let [bx, bpos, bdy] = [&x, &pos, &dy].map(|t| upload(ctx, t));
    let (pooled, dpool) = (zeros(ctx, count * dim), zeros(ctx, n));
    let dims = TokenDims { count, tokens, dim };
    let dispatches = [
        k.add_position(ctx, &bx, &bpos, dims),
        k.mean_pool(ctx, &bx, &pooled, dims),
        k.mean_pool_backward(ctx, &bdy, &dpool, dims),
    ]
    .map(Result::unwrap);
    run(ctx, |e| dispatches.iter().for_each(|d| d.encode(e)));
    let mut x64 = f64s(&x);
    cpu::add_position(&mut x64, &f64s(&pos));
    close("add_position", &read(ctx, &bx, n), &x64, 1e-6);
    close(
        "mean_pool",
        &read(ctx, &pooled, count * dim),
        &cpu::mean_pool(&x64, tokens, dim),
        1e-5,
    );
    close(
        "mean_pool_backward",
        &read(ctx, &dpool, n),
        &cpu::mean_pool_backward(&f64s(&dy), tokens, dim),
        1e-6,
    );
    // Heads: split, merge and both backwards are exact permutations.
    let qkv = random(9, 3 * n);
    let bqkv = upload(ctx, &qkv);
    let [q, kk, v, merged, back, fused] = [n, n, n, n, n, 3 * n].map(|len| zeros(ctx, len));
    let dims = HeadDims {
        count,
        tokens,
        heads,
        hd,
    };
    let dispatches = [
        k.split_heads(ctx, &bqkv, [&q, &kk, &v], dims),
        k.merge_heads(ctx, &q, &merged, dims),
        k.merge_heads_backward(ctx, &merged, &back, dims),
        k.split_heads_backward(ctx, [&q, &kk, &v], &fused, dims),
    ]
    .map(Result::unwrap);
    run(ctx, |e| dispatches.iter().for_each(|d| d.encode(e)));
    let [cq, ck, cv] = cpu::split_heads(&f64s(&qkv), tokens, heads, hd);
    close("split q", &read(ctx, &q, n), &cq, 0.0);
    close("split k", &read(ctx, &kk, n), &ck, 0.0);
    close("split v", &read(ctx, &v, n), &cv, 0.0);
    let cm = cpu::merge_heads(&cq, tokens, heads, hd);
    close("merge", &read(ctx, &merged, n), &cm, 0.0);
    close(
        "merge backward",
        &read(ctx, &back, n),
        &cpu::merge_heads_backward(&cm, tokens, heads, hd),
        0.0,
    );
    close(
        "split backward",
        &read(ctx, &fused, 3 * n),
        &f64s(&qkv),
        0.0,
    );
    // add_into
    let (a, b) = (random(20, 77), random(21, 77));
    let (ba, bb) = (upload(ctx, &a), upload(ctx, &b));
    let add = k.add_into(ctx, &ba, &bb, 77).unwrap();
    run(ctx, |e| add.encode(e));
    let mut want = f64s(&a);
    cpu::add_into(&mut want, &f64s(&b));
    close("add_into", &read(ctx, &ba, 77), &want, 1e-7);
}

/// The weight gradient is a fixed-order sum: two runs agree bit for bit.
#[test]
fn weight_gradients_are_deterministic() {
    let ctx = gpu();
    let k = LayerKernels::new(ctx).unwrap();
    let (rows, inp, out) = (300, 24, 40);
    let (x, dy) = (
        upload(ctx, &random(1, rows * inp)),
        upload(ctx, &random(2, rows * out)),
    );
    let dims = LinearDims { rows, inp, out };
    let results: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            let (dw, db) = (zeros(ctx, inp * out), zeros(ctx, out));
            let d = k
                .linear_backward_weight(ctx, [&x, &dy], [&dw, &db], dims)
                .unwrap();
            run(ctx, |e| d.encode(e));
            let mut r = read(ctx, &dw, inp * out);
            r.extend(read(ctx, &db, out));
            r
        })
        .collect();
    assert!(
        results[0]
            .iter()
            .zip(&results[1])
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

/// Too-small buffers and aliased outputs are errors, not panics or device errors.
#[test]
fn bad_buffers_are_errors() {
    let ctx = gpu();
    let k = LayerKernels::new(ctx).unwrap();
    let small = zeros(ctx, 3);
    let big = zeros(ctx, 1000);
    let other = zeros(ctx, 1000);
    let dims = LinearDims {
        rows: 10,
        inp: 4,
        out: 4,
    };
    let err = k
        .linear(ctx, [&big, &big, &big], &small, dims)
        .err()
        .unwrap();
    assert!(err.to_string().contains("at least 160 bytes"), "{err}");
    // Sizes whose products overflow (or pass the kernels' 32-bit indices) are refused before
    // anything is multiplied unchecked.
    for dims in [
        LinearDims {
            rows: usize::MAX,
            inp: 2,
            out: 2,
        },
        LinearDims {
            rows: 1 << 20,
            inp: 1 << 12,
            out: 1,
        },
    ] {
        let err = k
            .linear(ctx, [&big, &big, &big], &other, dims)
            .err()
            .unwrap();
        assert!(
            matches!(err, FmaError::LimitExceeded { .. }),
            "{dims:?}: {err}"
        );
    }
    let err = k.add_into(ctx, &big, &big, 10).err().unwrap();
    assert!(err.to_string().contains("bound twice"), "{err}");
    let patches = |side, stride, window| PatchDims {
        count: 1,
        side,
        stride,
        window,
    };
    assert!(k.patches(ctx, &big, &other, patches(10, 3, 3)).is_err());
    assert!(k.patches(ctx, &big, &other, patches(8, 4, 2)).is_err());
    ctx.take_error().unwrap();
}
