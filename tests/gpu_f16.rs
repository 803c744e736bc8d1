//! `Precision::F16`: Q, K, V, O and the coarse rows stored as f16 on the GPU, scores and sums
//! in f32. Checked against the f64 reference run on the same inputs rounded to f16, so the bar
//! covers what f16 storage adds on the GPU (the coarse rows, the near field's partial output
//! and the output itself, each rounded once to 11 significant bits), not the rounding of the
//! inputs, which is the caller's choice.
//!
//! Bar: max |O_gpu - O_ref| <= 2e-3 x max |V| and |LSE_gpu - LSE_ref| <= 2e-3 (measured:
//! 3.5e-4 x max |V| over the sweeps). A rounded value is off by at most 2^-11 = 4.9e-4 of
//! itself: the output and the near partial each add that (x max |V|), and a coarse key off by
//! that fraction moves a score by at most 4.9e-4 x tau sum |q k|, 1e-3 or so for these inputs
//! (|q|, |k| < 1), which moves O and LSE by about as much. The f32 path keeps its own 1e-4 bar
//! (gpu_vs_reference.rs).

mod common;
use common::*;
use multipole::{
    AttentionIo, Downsampling, FmaConfig, FmaError, FmaPlan, Geometry, GpuContext, Precision,
    Shape, reference,
};
use proptest::prelude::*;

const TOL: f32 = 2e-3;

fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

#[derive(Debug, Clone)]
struct Case {
    bh: (usize, usize),
    n: usize,
    d: usize,
    m: usize,
    p: usize,
    causal: bool,
    kind: Downsampling,
    multiplicity: bool,
    image: Option<(usize, usize)>,
    seed: u64,
}

fn case_1d() -> impl Strategy<Value = Case> {
    (
        head_dim_and_m(&SPECS_1D),
        0u32..4,
        prop::sample::select(vec![
            Downsampling::Mean,
            Downsampling::Basis,
            Downsampling::Depthwise,
        ]),
        prop_oneof![1usize..64, 64usize..1000],
        (any::<bool>(), any::<bool>()),
        (1usize..3, 1usize..3),
        any::<u64>(),
    )
        .prop_map(
            |((d, m), p_log, kind, n, (causal, multiplicity), bh, seed)| Case {
                bh,
                n,
                d,
                m,
                p: 1 << p_log.min(m.trailing_zeros()),
                causal,
                kind,
                multiplicity,
                image: None,
                seed,
            },
        )
}

fn case_2d() -> impl Strategy<Value = Case> {
    (
        head_dim_and_m(&SPECS_2D),
        prop::sample::select(vec![1usize, 4]),
        prop::sample::select(vec![
            Downsampling::Mean,
            Downsampling::Basis,
            Downsampling::Depthwise,
        ]),
        (1usize..=48, 1usize..=48),
        any::<bool>(),
        (1usize..3, 1usize..3),
        any::<u64>(),
    )
        .prop_map(|((d, m), p, kind, (h, w), multiplicity, bh, seed)| Case {
            bh,
            n: h * w,
            d,
            m,
            p,
            causal: false,
            kind,
            multiplicity,
            image: Some((h, w)),
            seed,
        })
}

fn f16_config(c: &Case) -> FmaConfig {
    let mut cfg = FmaConfig {
        precision: Precision::F16,
        ..config(c.m, c.p, c.causal, c.kind, c.multiplicity)
    };
    if let Some((h, w)) = c.image {
        cfg = cfg.image(h, w);
    }
    cfg
}

/// One case against the reference on the rounded inputs; returns the O error / max |V|.
fn run(c: &Case) -> f32 {
    let ctx = gpu();
    let shape = Shape::new(c.bh.0, c.bh.1, c.n, c.d);
    let cfg = f16_config(c);
    let g = Geometry::new(c.n, &cfg).unwrap();
    let w = weights(c.seed, c.kind, &g, c.d);
    let (q, k, v) = qkv(c.seed, shape);
    let (q, k, v) = (round_f16(&q), round_f16(&k), round_f16(&v));
    let want = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
    let got = FmaPlan::new(ctx, shape, &cfg, Some(&w))
        .unwrap()
        .forward_blocking(ctx, &q, &k, &v)
        .unwrap();
    let what = format!("{c:?}");
    assert_close(&format!("o {what}"), &got.o, &want.o, &v, TOL);
    assert_close(&format!("lse {what}"), &got.lse, &want.lse, &[1.0], TOL);
    max_abs_diff(&got.o, &want.o).0 / multipole::compare::max_abs(&v, 1e-30)
}

#[test]
fn f16_storage_matches_reference() {
    sweep("f16 1D (x max|V|)", case_1d(), 32, run);
}

#[test]
fn f16_storage_matches_reference_2d() {
    sweep("f16 2D (x max|V|)", case_2d(), 24, run);
}

/// Scores up to |z| = 1e4 stay finite in f16 storage: the scores and the running max are f32,
/// so only the stored values (|q|, |k| <= 60, well inside f16's 65504) are f16. Each output is
/// a convex combination of values, so it must lie within max |V|; and it is the reference's.
#[test]
fn f16_large_scores_stay_finite() {
    let ctx = gpu();
    let (n, d) = (1024, 64);
    let shape = Shape::new(1, 2, n, d);
    for kind in [Downsampling::Mean, Downsampling::Depthwise] {
        let cfg = FmaConfig {
            precision: Precision::F16,
            ..config(16, 4, false, kind, true)
        };
        let g = Geometry::new(n, &cfg).unwrap();
        let w = weights(3, kind, &g, d);
        let (q, k, v) = qkv(11, shape);
        // tau = 1/8 and entries up to 60: the score bound tau sum |q k| passes 1e4.
        let (q, k) = (
            q.iter().map(|x| x * 60.0).collect::<Vec<_>>(),
            k.iter().map(|x| x * 60.0).collect::<Vec<_>>(),
        );
        let bound = (0..2)
            .map(|h| {
                let head = h * n * d..(h + 1) * n * d;
                score_bound(&q[head.clone()], &k[head], n, d, 1.0 / 8.0)
            })
            .fold(0f32, f32::max);
        assert!(bound > 1e4, "the test must reach large scores: {bound}");
        let out = FmaPlan::new(ctx, shape, &cfg, Some(&w))
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        let vmax = multipole::compare::max_abs(&v, 0.0);
        for (i, &x) in out.o.iter().enumerate() {
            assert!(
                x.is_finite() && x.abs() <= vmax * 1.002,
                "{kind:?}: o[{i}] = {x}"
            );
        }
        assert!(out.lse.iter().all(|x| x.is_finite()), "{kind:?}: lse");
        // ... and near the reference on the inputs rounded to f16 (what the GPU stores), which
        // all-zero or otherwise wrong outputs are not: O within the f16 bar (measured 3.1e-4
        // x max |V|); the LSE within the score shift a coarse key rounded to f16 can cause,
        // 2^-11 x tau sum |q k| (over 5 here; measured 0.25 on LSEs in the thousands).
        let (q16, k16, v16) = (round_f16(&q), round_f16(&k), round_f16(&v));
        let want = reference::fma_forward(&q16, &k16, &v16, shape, &cfg, Some(&w)).unwrap();
        assert_close(&format!("{kind:?}: o"), &out.o, &want.o, &v16, TOL);
        let lse_bar = (bound / 2048.0).max(TOL);
        assert_close(
            &format!("{kind:?}: lse"),
            &out.lse,
            &want.lse,
            &[1.0],
            lse_bar,
        );
    }
}

/// `encode` over f16 buffers the caller made gives what the host call gives (which converts),
/// both within the f16 bar of the reference on the inputs rounded to f16, and f16 halves the
/// coarse rows, the plan's only memory that grows with n.
#[test]
fn f16_encode_takes_f16_buffers_and_halves_the_coarse_rows() {
    let ctx = gpu();
    let shape = Shape::new(1, 2, 301, 5); // an odd count of values: the buffers are padded
    let cfg = FmaConfig {
        precision: Precision::F16,
        ..FmaConfig::new(8, 2)
    };
    let plan = FmaPlan::new(ctx, shape, &cfg, None).unwrap();
    let (q, k, v) = qkv(5, shape);
    let host = plan.forward_blocking(ctx, &q, &k, &v).unwrap();

    let upload = |x: &[f32]| {
        let mut h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        h.resize(h.len().next_multiple_of(2), half::f16::ZERO);
        wgpu::util::DeviceExt::create_buffer_init(
            &ctx.device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("f16 input"),
                contents: bytemuck::cast_slice(&h),
                usage: wgpu::BufferUsages::STORAGE,
            },
        )
    };
    let values = shape.elements();
    let o_bytes = (values as u64 * 2).next_multiple_of(4);
    let lse_bytes = (shape.bh() * shape.n * 4) as u64;
    let out = |bytes| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("f16 test output"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    };
    let (qb, kb, vb, ob, lb) = (
        upload(&q),
        upload(&k),
        upload(&v),
        out(o_bytes),
        out(lse_bytes),
    );
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    plan.encode(
        ctx,
        &mut enc,
        &AttentionIo {
            q: &qb,
            k: &kb,
            v: &vb,
            o: &ob,
            lse: &lb,
        },
    )
    .unwrap();
    let readback = |bytes| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("f16 test readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (read_o, read_lse) = (readback(o_bytes), readback(lse_bytes));
    enc.copy_buffer_to_buffer(&ob, 0, &read_o, 0, o_bytes);
    enc.copy_buffer_to_buffer(&lb, 0, &read_lse, 0, lse_bytes);
    ctx.queue.submit([enc.finish()]);
    for r in [&read_o, &read_lse] {
        r.slice(..).map_async(wgpu::MapMode::Read, |r| r.unwrap());
    }
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let got: Vec<f32> = {
        let bytes = read_o.slice(..).get_mapped_range().unwrap();
        let h: &[half::f16] = bytemuck::cast_slice(&bytes[..]);
        h[..values].iter().map(|x| x.to_f32()).collect()
    };
    let got_lse: Vec<f32> = {
        let bytes = read_lse.slice(..).get_mapped_range().unwrap();
        bytemuck::cast_slice::<u8, f32>(&bytes[..]).to_vec()
    };
    assert_eq!(
        got, host.o,
        "encode on f16 buffers and the host call differ"
    );
    assert_eq!(
        got_lse, host.lse,
        "encode on f16 buffers and the host call differ in the LSE"
    );
    // Both run the same kernels: the f64 reference on the inputs the f16 buffers hold checks
    // what they computed.
    let (q16, k16, v16) = (round_f16(&q), round_f16(&k), round_f16(&v));
    let want = reference::fma_forward(&q16, &k16, &v16, shape, &cfg, None).unwrap();
    assert_close("encode o vs reference", &got, &want.o, &v16, TOL);
    assert_close("encode lse vs reference", &got_lse, &want.lse, &[1.0], TOL);

    let f32_plan = FmaPlan::new(ctx, shape, &FmaConfig::new(8, 2), None).unwrap();
    let g = plan.geometry();
    let coarse_f32 = 2 * g.total_cells() * g.p * shape.d * 4 * shape.bh();
    assert_eq!(
        f32_plan.extra_bytes() - plan.extra_bytes(),
        (coarse_f32 / 2) as u64,
        "f16 must halve the coarse rows and leave the tables as they are"
    );
}

/// Without SHADER_F16 an f16 plan is a typed error that names the feature; the backward of an
/// f16 plan is refused (it runs in f32).
#[test]
fn f16_errors() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("GPU tests need an adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    // A device without the feature, as a browser without shader-f16 would give.
    let (device, queue) =
        pollster::block_on(adapter.request_device(&Default::default())).expect("a device");
    let plain = GpuContext::from_device(device, queue, adapter.get_info());
    let shape = Shape::new(1, 1, 64, 16);
    let cfg = FmaConfig {
        precision: Precision::F16,
        ..FmaConfig::new(8, 2)
    };
    match FmaPlan::new(&plain, shape, &cfg, None) {
        Err(FmaError::MissingFeature { feature, .. }) => assert_eq!(feature, "SHADER_F16"),
        other => panic!("expected MissingFeature, got {:?}", other.map(|_| ())),
    }

    let ctx = gpu();
    assert!(
        ctx.device.features().contains(wgpu::Features::SHADER_F16),
        "the test adapter (lavapipe) offers SHADER_F16, and the context must enable it"
    );
    let plan = FmaPlan::new(ctx, shape, &cfg, None).unwrap();
    let (q, k, v) = qkv(1, shape);
    let tape = pollster::block_on(plan.forward_tape(ctx, &q, &k, &v)).unwrap();
    let err = plan.backward_blocking(ctx, &tape, &q).unwrap_err();
    assert!(
        matches!(&err, FmaError::InvalidConfig(m) if m.contains("f32")),
        "{err}"
    );
}
