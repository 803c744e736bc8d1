//! Every bad input gives its own typed error, never a panic.

mod common;
use common::*;
use multipole::{
    DownsampleWeights, Downsampling, FmaConfig, FmaError, FmaPlan, GpuContext, Shape, reference,
};

#[test]
fn m_must_be_a_power_of_two() {
    for m in [0, 3, 12, 48] {
        let err = FmaConfig::new(m, 1).validate().unwrap_err();
        assert!(
            matches!(err, FmaError::InvalidConfig(ref s) if s.contains("power of two")),
            "{err}"
        );
    }
}

#[test]
fn p_must_divide_m() {
    for (m, p) in [(8, 3), (8, 0), (4, 8)] {
        let err = FmaConfig::new(m, p).validate().unwrap_err();
        assert!(
            matches!(err, FmaError::InvalidConfig(ref s) if s.contains("divide")),
            "{err}"
        );
    }
}

#[test]
fn unsupported_head_dims_are_refused() {
    let ctx = gpu();
    for d in [0, 129, 256] {
        let shape = Shape::new(1, 1, 16, d);
        let err = FmaPlan::new(ctx, shape, &FmaConfig::new(4, 1), None)
            .err()
            .unwrap();
        assert_eq!(err, FmaError::UnsupportedHeadDim(d));
        let x = vec![0.0; shape.elements()];
        assert_eq!(
            reference::fma_forward(&x, &x, &x, shape, &FmaConfig::new(4, 1), None).unwrap_err(),
            FmaError::UnsupportedHeadDim(d)
        );
    }
}

#[test]
fn empty_dimensions_are_refused() {
    let ctx = gpu();
    for shape in [
        Shape::new(0, 1, 8, 16),
        Shape::new(1, 0, 8, 16),
        Shape::new(1, 1, 0, 16),
    ] {
        let err = FmaPlan::new(ctx, shape, &FmaConfig::new(4, 1), None)
            .err()
            .unwrap();
        assert!(matches!(err, FmaError::BadShape { .. }), "{err}");
    }
}

#[test]
fn tensor_lengths_must_match_the_shape() {
    let ctx = gpu();
    let shape = Shape::new(1, 2, 20, 16);
    let plan = FmaPlan::new(ctx, shape, &FmaConfig::new(4, 1), None).unwrap();
    let good = vec![0.5; shape.elements()];
    let short = vec![0.5; shape.elements() - 1];
    let err = plan
        .forward_blocking(ctx, &good, &short, &good)
        .unwrap_err();
    assert!(
        matches!(err, FmaError::BadShape { ref what, .. } if what == "k"),
        "{err}"
    );
    let err = reference::fma_forward(&short, &good, &good, shape, &FmaConfig::new(4, 1), None)
        .unwrap_err();
    assert!(
        matches!(err, FmaError::BadShape { ref what, .. } if what == "q"),
        "{err}"
    );
}

#[test]
fn learned_kinds_need_weights_of_the_right_shape() {
    let ctx = gpu();
    let shape = Shape::new(1, 1, 64, 16);
    let cfg = FmaConfig {
        downsampling: Downsampling::Basis,
        ..FmaConfig::new(4, 2)
    };
    let err = FmaPlan::new(ctx, shape, &cfg, None).err().unwrap();
    assert!(
        matches!(err, FmaError::Weights(ref s) if s.contains("needs weights")),
        "{err}"
    );

    let g = multipole::Geometry::new(64, &cfg).unwrap();
    let mut w = DownsampleWeights::mean_init(Downsampling::Basis, &g, 16);
    w.levels[1].wv.pop();
    let err = FmaPlan::new(ctx, shape, &cfg, Some(&w)).err().unwrap();
    assert!(
        matches!(err, FmaError::Weights(ref s) if s.contains("wv.2")),
        "{err}"
    );

    let mut w = DownsampleWeights::mean_init(Downsampling::Basis, &g, 16);
    w.levels.pop();
    let err = reference::fma_forward(
        &[0.0; 1024],
        &[0.0; 1024],
        &[0.0; 1024],
        shape,
        &cfg,
        Some(&w),
    )
    .unwrap_err();
    assert!(
        matches!(err, FmaError::Weights(ref s) if s.contains("levels")),
        "{err}"
    );

    let dw = FmaConfig {
        downsampling: Downsampling::Depthwise,
        ..cfg
    };
    let mut w = DownsampleWeights::mean_init(Downsampling::Depthwise, &g, 16);
    w.levels[0].bk = vec![0.0; 3];
    let err = FmaPlan::new(ctx, shape, &dw, Some(&w)).err().unwrap();
    assert!(
        matches!(err, FmaError::Weights(ref s) if s.contains("bk.1")),
        "{err}"
    );

    // Weights meant for another length are refused even where no coarse level needs them.
    let short = Shape::new(1, 1, 8, 16);
    let w = DownsampleWeights::mean_init(Downsampling::Basis, &g, 16);
    let err = FmaPlan::new(ctx, short, &cfg, Some(&w)).err().unwrap();
    assert!(
        matches!(err, FmaError::Weights(ref s) if s.contains("0 coarse levels")),
        "{err}"
    );
    assert!(
        FmaPlan::new(ctx, short, &cfg, None).is_ok(),
        "n' = 2m needs no weights"
    );

    let mut w = DownsampleWeights::mean_init(Downsampling::Depthwise, &g, 16);
    w.levels[0].wk[0] = f32::NAN;
    let err = FmaPlan::new(ctx, shape, &dw, Some(&w)).err().unwrap();
    assert!(
        matches!(err, FmaError::Weights(ref s) if s.contains("non-finite")),
        "{err}"
    );
}

#[test]
fn inputs_over_the_binding_limit_are_split_over_heads() {
    let ctx = small_device();
    let shape = Shape::new(2, 3, 300, 32); // 38 KB per head, 230 KB per tensor
    let cfg = FmaConfig::new(8, 2);
    let (q, k, v) = qkv(4, shape);
    let plan = FmaPlan::new(&ctx, shape, &cfg, None).unwrap();
    let got = plan.forward_blocking(&ctx, &q, &k, &v).unwrap();
    let want = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
    assert_close("split o", &got.o, &want.o, &v, 1e-4);
    assert_close("split lse", &got.lse, &want.lse, &[1.0], 1e-4);

    // Whole GPU tensors of this shape cannot be bound at once: a clear error, no wgpu panic.
    let buf = |bytes: usize| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (t, l) = (buf(shape.elements() * 4), buf(shape.bh() * shape.n * 4));
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let io = multipole::AttentionIo {
        q: &t,
        k: &t,
        v: &t,
        o: &t,
        lse: &l,
    };
    let err = plan.encode(&ctx, &mut enc, &io).unwrap_err();
    assert!(
        matches!(err, FmaError::LimitExceeded { ref hint, .. } if hint.contains("forward")),
        "{err}"
    );

    // The dense baseline splits the same way, and refuses whole tensors the same way.
    let dense = multipole::DensePlan::new(&ctx, shape, true, 0.3).unwrap();
    let got = dense.forward_blocking(&ctx, &q, &k, &v).unwrap();
    let want = reference::dense(&q, &k, &v, shape, true, 0.3).unwrap();
    assert_close("dense split o", &got.o, &want.o, &v, 1e-4);
    let err = dense.encode(&ctx, &mut enc, &io, None).unwrap_err();
    assert!(
        matches!(err, FmaError::LimitExceeded { ref hint, .. } if hint.contains("forward")),
        "{err}"
    );
}

#[test]
fn a_head_over_the_binding_limit_is_refused_with_the_limit() {
    let ctx = small_device();
    let shape = Shape::new(1, 1, 1024, 32); // 128 KiB per head > 64 KiB
    let err = FmaPlan::new(&ctx, shape, &FmaConfig::new(8, 2), None)
        .err()
        .unwrap();
    match err {
        FmaError::LimitExceeded { needed, limit, .. } => {
            assert_eq!(limit, 1 << 16);
            assert_eq!(needed, 1024 * 32 * 4);
        }
        other => panic!("expected LimitExceeded, got {other}"),
    }
    let err = multipole::DensePlan::new(&ctx, shape, false, 1.0)
        .err()
        .unwrap();
    assert!(
        matches!(err, FmaError::LimitExceeded { needed, limit, .. } if needed == 1024 * 32 * 4 && limit == 1 << 16),
        "{err}"
    );
}

/// Two threads sharing one plan: each call returns its own correct result or `Busy`, never
/// the other thread's data.
#[test]
fn concurrent_forwards_on_one_plan_never_mix_results() {
    let ctx = gpu();
    let shape = Shape::new(1, 1, 200, 16);
    let cfg = FmaConfig::new(8, 2);
    let plan = FmaPlan::new(ctx, shape, &cfg, None).unwrap();
    let inputs: Vec<_> = (0..2).map(|t| qkv(100 + t, shape)).collect();
    let wants: Vec<_> = inputs
        .iter()
        .map(|(q, k, v)| reference::fma_forward(q, k, v, shape, &cfg, None).unwrap())
        .collect();
    let (mut ok, mut busy) = (0, 0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let (plan, (q, k, v)) = (&plan, &inputs[t]);
                s.spawn(move || {
                    (0..10)
                        .map(|_| plan.forward_blocking(ctx, q, k, v))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            for r in h.join().unwrap() {
                match r {
                    Ok(out) => {
                        assert_close("concurrent o", &out.o, &wants[t].o, &inputs[t].2, 1e-4);
                        ok += 1;
                    }
                    Err(e) => {
                        assert_eq!(e, FmaError::Busy);
                        busy += 1;
                    }
                }
            }
        }
    });
    assert!(ok >= 1, "at least one call must succeed ({busy} busy)");
}

/// GPU-resident tensors: too small, without STORAGE usage, or aliased outputs are refused.
#[test]
fn encode_checks_the_callers_buffers() {
    let ctx = gpu();
    let shape = Shape::new(1, 2, 64, 16);
    let plan = FmaPlan::new(ctx, shape, &FmaConfig::new(8, 2), None).unwrap();
    let buf = |bytes: usize, usage: wgpu::BufferUsages| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    let st = wgpu::BufferUsages::STORAGE;
    let (e, n) = (shape.elements() * 4, shape.bh() * shape.n * 4);
    let (q, k, v, o, lse) = (buf(e, st), buf(e, st), buf(e, st), buf(e, st), buf(n, st));
    let small = buf(e - 4, st);
    let uniform = buf(e, wgpu::BufferUsages::UNIFORM);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let cases = [
        (
            multipole::AttentionIo {
                q: &small,
                k: &k,
                v: &v,
                o: &o,
                lse: &lse,
            },
            "at least",
        ),
        (
            multipole::AttentionIo {
                q: &q,
                k: &uniform,
                v: &v,
                o: &o,
                lse: &lse,
            },
            "STORAGE",
        ),
        (
            multipole::AttentionIo {
                q: &q,
                k: &k,
                v: &v,
                o: &q,
                lse: &lse,
            },
            "distinct",
        ),
    ];
    for (io, what) in &cases {
        let err = plan.encode(ctx, &mut enc, io).unwrap_err();
        assert!(
            matches!(err, FmaError::BadShape { ref expected, .. } if expected.contains(what)),
            "{err}"
        );
    }
    let io = multipole::AttentionIo {
        q: &q,
        k: &k,
        v: &v,
        o: &o,
        lse: &lse,
    };
    plan.encode(ctx, &mut enc, &io).unwrap();
    submit_and_wait(ctx, enc);
}

/// A lost device (here destroyed on purpose) gives a typed error from the next call.
#[test]
fn a_lost_device_is_a_typed_error() {
    let ctx = small_device();
    let shape = Shape::new(1, 1, 64, 16);
    let plan = FmaPlan::new(&ctx, shape, &FmaConfig::new(8, 2), None).unwrap();
    let (q, k, v) = qkv(1, shape);
    plan.forward_blocking(&ctx, &q, &k, &v).unwrap();
    ctx.device.destroy();
    let err = plan.forward_blocking(&ctx, &q, &k, &v).unwrap_err();
    assert!(matches!(err, FmaError::Gpu(_)), "{err}");
    let err = FmaPlan::new(&ctx, shape, &FmaConfig::new(4, 2), None)
        .err()
        .unwrap();
    assert!(matches!(err, FmaError::Gpu(_)), "{err}");
}

#[test]
fn bad_image_configurations_are_refused() {
    let ctx = gpu();
    let expect = |cfg: FmaConfig, n: usize, needle: &str| {
        let shape = Shape::new(1, 1, n, 8);
        let x = vec![0.0; shape.elements()];
        for err in [
            FmaPlan::new(ctx, shape, &cfg, None).err().unwrap(),
            reference::fma_forward(&x, &x, &x, shape, &cfg, None).unwrap_err(),
        ] {
            assert!(err.to_string().contains(needle), "{cfg:?} n={n}: {err}");
        }
    };
    // n must equal H x W
    expect(FmaConfig::new(4, 1).image(5, 5), 24, "height x width = 25");
    expect(
        FmaConfig::new(4, 1).image(usize::MAX, 2),
        8,
        "height x width",
    );
    // empty sides
    expect(FmaConfig::new(4, 1).image(0, 4), 0, "at least 1");
    expect(FmaConfig::new(4, 1).image(4, 0), 4, "at least 1");
    // p must be a square, and its root must divide m
    for p in [2, 3, 8, 0] {
        expect(FmaConfig::new(4, p).image(8, 8), 64, "must be a square");
    }
    expect(
        FmaConfig::new(4, 64).image(8, 8),
        64,
        "sqrt(p) = 8 must divide m = 4",
    );
    expect(
        FmaConfig::new(2, 16).image(8, 8),
        64,
        "does not divide the 2 x 2 fine cell",
    );
    // causal masking has no meaning on an image
    let causal = FmaConfig {
        causal: true,
        ..FmaConfig::new(4, 1).image(8, 8)
    };
    expect(causal, 64, "sequences only");
    // the O(n) variant's coarse queries mix later tokens
    let linear_causal = FmaConfig {
        causal: true,
        downsample_queries: true,
        ..FmaConfig::new(4, 1)
    };
    expect(linear_causal, 64, "later tokens");
    // and the layout parser refuses malformed sizes
    for s in ["16", "0x4", "4x", "ax4", "4x-1"] {
        let err = s.parse::<multipole::Layout>().unwrap_err();
        assert!(err.to_string().contains("HEIGHTxWIDTH"), "{s}: {err}");
    }
    assert_eq!(
        "3x7".parse::<multipole::Layout>().unwrap(),
        multipole::Layout::Image {
            height: 3,
            width: 7
        }
    );
}

#[test]
fn backward_refuses_bad_input_with_clear_errors() {
    let ctx = gpu();
    let shape = Shape::new(1, 1, 64, 8);
    let (q, k, v) = qkv(1, shape);
    let cfg = FmaConfig {
        downsampling: Downsampling::Basis,
        ..FmaConfig::new(4, 2)
    };
    let g = multipole::Geometry::new(64, &cfg).unwrap();
    let w = DownsampleWeights::mean_init(Downsampling::Basis, &g, 8);
    let plan = FmaPlan::new(ctx, shape, &cfg, Some(&w)).unwrap();
    let tape = pollster::block_on(plan.forward_tape(ctx, &q, &k, &v)).unwrap();

    // dO of the wrong length
    let err = plan.backward_blocking(ctx, &tape, &q[..10]).unwrap_err();
    assert!(
        matches!(err, FmaError::BadShape { ref what, .. } if what == "d_o"),
        "{err}"
    );
    // a tape whose LSE was cut short
    let mut short = pollster::block_on(plan.forward_tape(ctx, &q, &k, &v)).unwrap();
    short.out.lse.pop();
    let err = plan.backward_blocking(ctx, &short, &q).unwrap_err();
    assert!(
        matches!(err, FmaError::BadShape { ref what, .. } if what == "lse"),
        "{err}"
    );
    // weights of the wrong shape, and weights for Mean
    let mut bad = w.clone();
    bad.levels[0].wk.pop();
    assert!(matches!(
        plan.set_weights(ctx, &bad),
        Err(FmaError::Weights(_))
    ));
    let mean = FmaPlan::new(ctx, shape, &FmaConfig::new(4, 2), None).unwrap();
    assert!(matches!(
        mean.set_weights(ctx, &w),
        Err(FmaError::Weights(_))
    ));

    // GPU-resident: learned kinds need a dw buffer; outputs may not alias inputs.
    let buf = |bytes: u64| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let e = (shape.elements() * 4) as u64;
    let [bq, bk, bv, bo, bdo, bdq, bdk, bdv] = [0; 8].map(|_| buf(e));
    let blse = buf(64 * 4);
    let io = multipole::BackwardIo {
        q: &bq,
        k: &bk,
        v: &bv,
        o: &bo,
        lse: &blse,
        d_o: &bdo,
        dq: &bdq,
        dk: &bdk,
        dv: &bdv,
        dw: None,
    };
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let err = plan.encode_backward(ctx, &mut enc, &io).unwrap_err();
    assert!(matches!(err, FmaError::Weights(_)), "{err}");
    let dw = buf(plan.weight_grad_bytes());
    let aliased = multipole::BackwardIo {
        dq: &bq,
        dw: Some(&dw),
        ..io
    };
    let err = plan.encode_backward(ctx, &mut enc, &aliased).unwrap_err();
    assert!(err.to_string().contains("distinct"), "{err}");
    let good = multipole::BackwardIo {
        dw: Some(&dw),
        ..io
    };
    plan.encode_backward(ctx, &mut enc, &good).unwrap();
    submit_and_wait(ctx, enc);
}

/// Runs the encoded work to the end and checks for errors. A test binary that exited with
/// work still in flight crashed once inside lavapipe (SIGSEGV after every test had passed).
fn submit_and_wait(ctx: &GpuContext, enc: wgpu::CommandEncoder) {
    ctx.queue.submit([enc.finish()]);
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    ctx.take_error().unwrap();
}

/// batch x heads x n x d that does not fit in usize is a shape error, even when batch x heads
/// alone overflows.
#[test]
fn shapes_too_large_to_count_are_refused() {
    for shape in [
        Shape::new(usize::MAX, 2, 1, 1),
        Shape::new(1 << 40, 1 << 40, 1, 1),
        Shape::new(1, 1, usize::MAX, 2),
    ] {
        let err = shape.validate().unwrap_err();
        assert!(matches!(err, FmaError::BadShape { .. }), "{shape:?}: {err}");
    }
}
