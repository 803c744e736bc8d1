//! The dense GPU kernel (the benchmarks' baseline) against the f64 CPU reference, and the
//! timestamps that time both kernels.

mod common;
use common::*;
use multipole::{AttentionIo, DensePlan, FmaConfig, FmaPlan, GpuTimer, Shape, reference};

#[test]
fn dense_kernel_matches_reference() {
    for kernels in FORWARD_KERNELS {
        dense_matches_reference(gpu_with(kernels));
    }
}

fn dense_matches_reference(ctx: &multipole::GpuContext) {
    let mut worst = 0f32;
    for (i, (batch, heads, n, d, causal)) in [
        (1, 1, 1, 1, false),
        (1, 1, 1, 16, true),
        (2, 1, 63, 3, false),
        (1, 3, 64, 32, true),
        (1, 1, 65, 64, false),
        (2, 2, 300, 64, true),
        (1, 1, 777, 100, false),
        (1, 2, 1500, 128, true),
        (1, 1, 2048, 24, false),
    ]
    .into_iter()
    .enumerate()
    {
        let shape = Shape::new(batch, heads, n, d);
        let (q, k, v) = qkv(40 + i as u64, shape);
        let scale = if i % 3 == 0 {
            0.5
        } else {
            1.0 / (d as f32).sqrt()
        };
        let want = reference::dense(&q, &k, &v, shape, causal, scale).unwrap();
        let got = DensePlan::new(ctx, shape, causal, scale)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        let what = format!(
            "dense {shape:?} causal={causal} {:?}",
            ctx.forward_kernels()
        );
        assert_close(&what, &got.o, &want.o, &v, 1e-4);
        assert_close(&what, &got.lse, &want.lse, &[1.0], 1e-4);
        worst = worst.max(max_abs_diff(&got.o, &want.o).0);
    }
    eprintln!("dense kernel: largest error {worst:.3e} (values in [-1, 1))");
}

/// Scores of |z| ~ 1e4 stay finite and correct, as in the FMA kernels. The f32 dot product's
/// own rounding (about eps * zmax) is added to the tolerance, as in gpu_vs_reference.
#[test]
fn dense_kernel_survives_large_scores() {
    for kernels in FORWARD_KERNELS {
        dense_survives_large_scores(gpu_with(kernels));
    }
}

fn dense_survives_large_scores(ctx: &multipole::GpuContext) {
    let shape = Shape::new(1, 1, 300, 16);
    let (q, k, v) = qkv(5, shape);
    let (q, k): (Vec<f32>, Vec<f32>) = (
        q.iter().map(|x| x * 60.0).collect(),
        k.iter().map(|x| x * 60.0).collect(),
    );
    let scale = 0.25;
    let zmax = score_bound(&q, &k, shape.n, 16, scale);
    assert!(zmax > 5e3, "scores should reach ~1e4, got {zmax}");
    for causal in [false, true] {
        let out = DensePlan::new(ctx, shape, causal, scale)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert!(out.o.iter().chain(&out.lse).all(|x| x.is_finite()));
        let want = reference::dense(&q, &k, &v, shape, causal, scale).unwrap();
        let tol = 1e-4 + 8.0 * f32::EPSILON * zmax;
        assert_close("dense o, large scores", &out.o, &want.o, &v, tol);
        assert_close("dense lse, large scores", &out.lse, &want.lse, &[1.0], tol);
    }
}

#[test]
fn dense_kernel_refuses_bad_input() {
    let ctx = gpu();
    assert!(DensePlan::new(ctx, Shape::new(1, 1, 0, 8), false, 1.0).is_err());
    assert!(DensePlan::new(ctx, Shape::new(1, 1, 8, 129), false, 1.0).is_err());
    assert!(DensePlan::new(ctx, Shape::new(1, 1, 8, 8), false, f32::NAN).is_err());
    let plan = DensePlan::new(ctx, Shape::new(1, 1, 8, 8), false, 1.0).unwrap();
    assert!(
        plan.forward_blocking(ctx, &[0.0; 63], &[0.0; 64], &[0.0; 64])
            .is_err()
    );
}

/// Timestamps give each stage of a forward a positive duration, and timed forwards compute
/// the same output as untimed ones.
#[test]
fn timed_encoding_reports_every_stage() {
    let ctx = gpu();
    let Some(timer) = GpuTimer::new(ctx, 3) else {
        panic!(
            "the adapter offers no timestamp queries: {}",
            ctx.describe()
        );
    };
    let shape = Shape::new(1, 1, 1000, 32);
    let (q, k, v) = qkv(3, shape);
    let buffer = |data: &[f32], usage| {
        let b = ctx
            .device
            .create_buffer(&multipole::wgpu::BufferDescriptor {
                label: None,
                size: (data.len() * 4) as u64,
                usage,
                mapped_at_creation: false,
            });
        ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
        b
    };
    use multipole::wgpu::BufferUsages as U;
    let (qb, kb, vb) = (
        buffer(&q, U::STORAGE | U::COPY_DST),
        buffer(&k, U::STORAGE | U::COPY_DST),
        buffer(&v, U::STORAGE | U::COPY_DST),
    );
    let ob = buffer(
        &vec![0.0; shape.elements()],
        U::STORAGE | U::COPY_DST | U::COPY_SRC,
    );
    let lb = buffer(&vec![0.0; shape.n], U::STORAGE | U::COPY_DST);
    let io = AttentionIo {
        q: &qb,
        k: &kb,
        v: &vb,
        o: &ob,
        lse: &lb,
    };
    let cfg = FmaConfig::new(16, 2);
    let fma = FmaPlan::new(ctx, shape, &cfg, None).unwrap();
    let dense = DensePlan::new(ctx, shape, false, cfg.scale_for(32)).unwrap();
    let read = ctx
        .device
        .create_buffer(&multipole::wgpu::BufferDescriptor {
            label: None,
            size: (shape.elements() * 4) as u64,
            usage: U::MAP_READ | U::COPY_DST,
            mapped_at_creation: false,
        });
    for kernel in ["fma", "dense"] {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let stages = if kernel == "fma" {
            fma.encode_timed(ctx, &mut enc, &io, &timer).unwrap()
        } else {
            dense.encode(ctx, &mut enc, &io, Some(&timer)).unwrap();
            vec!["dense"]
        };
        timer.resolve(&mut enc);
        enc.copy_buffer_to_buffer(&ob, 0, &read, 0, read.size());
        ctx.queue.submit([enc.finish()]);
        let ms = pollster::block_on(timer.read(ctx, stages.len() as u32)).unwrap();
        assert_eq!(ms.len(), stages.len());
        assert!(
            ms.iter().all(|&t| t > 0.0 && t < 60_000.0),
            "{kernel} {stages:?}: {ms:?}"
        );
        let got = pollster::block_on(read_back(&read, shape.elements()));
        let want = if kernel == "fma" {
            reference::fma_forward(&q, &k, &v, shape, &cfg, None)
                .unwrap()
                .o
        } else {
            reference::dense(&q, &k, &v, shape, false, cfg.scale_for(32))
                .unwrap()
                .o
        };
        assert_close(&format!("timed {kernel}"), &got, &want, &v, 1e-4);
    }
    assert_eq!(fma.stage_names(), ["downsample", "near_field", "far_field"]);
    let small = GpuTimer::new(ctx, 2).unwrap();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    assert!(fma.encode_timed(ctx, &mut enc, &io, &small).is_err());
}

async fn read_back(buf: &multipole::wgpu::Buffer, len: usize) -> Vec<f32> {
    let ctx = gpu();
    buf.map_async(multipole::wgpu::MapMode::Read, .., |r| r.unwrap());
    ctx.device
        .poll(multipole::wgpu::PollType::wait_indefinitely())
        .unwrap();
    let out = bytemuck::cast_slice::<u8, f32>(&buf.get_mapped_range(..).unwrap())[..len].to_vec();
    buf.unmap();
    out
}
