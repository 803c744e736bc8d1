//! Inputs at the edges of what the library accepts: a fine cell far larger than the input, and
//! padding that would dwarf the input. Each either gives dense attention (docs/fma.md §4:
//! n' = 2m leaves no coarse level) or a typed error, never NaN, a wrap or a hang.

mod common;
use common::*;
use multipole::{Downsampling, FmaConfig, FmaError, FmaPlan, Shape, reference};

/// Dense attention over the same tensors, in f64 (the exact answer, worked out without FMA).
fn dense(q: &[f32], k: &[f32], v: &[f32], shape: Shape, causal: bool) -> Vec<f32> {
    let scale = 1.0 / (shape.d as f32).sqrt();
    reference::dense(q, k, v, shape, causal, scale).unwrap().o
}

#[test]
fn a_huge_fine_cell_on_a_short_sequence_is_dense_attention_on_the_gpu() {
    let ctx = gpu();
    let shape = Shape::new(1, 2, 64, 16);
    let (q, k, v) = qkv(64, shape);
    // 2^31 used to wrap n' = 2m to 0 in the kernels' 32-bit uniform (NaN everywhere), and 2^30
    // padded 64 tokens to 2^31; a huge p is clipped with the cell.
    for (m, p, causal) in [
        (1usize << 31, 1, false),
        (1 << 30, 1, true),
        (1 << 40, 1 << 20, false),
        (128, 4, false),
    ] {
        let cfg = FmaConfig {
            causal,
            ..FmaConfig::new(m, p)
        };
        let started = std::time::Instant::now();
        let plan = FmaPlan::new(ctx, shape, &cfg, None).unwrap();
        let out = plan.forward_blocking(ctx, &q, &k, &v).unwrap();
        let want = dense(&q, &k, &v, shape, causal);
        assert_close(&format!("m = {m}, p = {p}"), &out.o, &want, &v, 1e-4);
        assert!(out.lse.iter().all(|x| x.is_finite()), "m = {m}: lse");
        assert!(
            started.elapsed().as_secs() < 60,
            "m = {m} took {:?}: the input must not be padded to 2m",
            started.elapsed()
        );
    }
}

#[test]
fn a_huge_fine_cell_on_a_small_image_is_dense_attention() {
    let ctx = gpu();
    let (h, w) = (5, 9);
    let shape = Shape::new(1, 1, h * w, 8);
    let (q, k, v) = qkv(45, shape);
    let want = dense(&q, &k, &v, shape, false);
    for (m, p) in [(1usize << 31, 1), (1 << 16, 16), (16, 4)] {
        let cfg = FmaConfig::new(m, p).image(h, w);
        let out = FmaPlan::new(ctx, shape, &cfg, None)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert_close(&format!("image m = {m}"), &out.o, &want, &v, 1e-4);
        let cpu = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
        assert_close(&format!("image m = {m}, CPU"), &cpu.o, &want, &v, 1e-6);
    }
}

#[test]
fn learned_kinds_with_a_huge_cell_need_no_weights() {
    // No coarse level: the learned kinds have nothing to learn, as with m = n / 2.
    let ctx = gpu();
    let shape = Shape::new(1, 1, 40, 4);
    let (q, k, v) = qkv(40, shape);
    let want = dense(&q, &k, &v, shape, false);
    for kind in [Downsampling::Basis, Downsampling::Depthwise] {
        let cfg = FmaConfig {
            downsampling: kind,
            ..FmaConfig::new(1 << 35, 8)
        };
        let out = FmaPlan::new(ctx, shape, &cfg, None)
            .unwrap()
            .forward_blocking(ctx, &q, &k, &v)
            .unwrap();
        assert_close(&format!("{kind:?}"), &out.o, &want, &v, 1e-4);
    }
}

#[test]
fn a_long_thin_image_is_refused_before_any_work() {
    // 2 x 40,000 tokens pad to a 65,536 x 65,536 square: 2^32 tokens, 54,000 times the input.
    let ctx = gpu();
    let shape = Shape::new(1, 1, 80_000, 4);
    let cfg = FmaConfig::new(1 << 20, 1).image(2, 40_000);
    let started = std::time::Instant::now();
    let err = FmaPlan::new(ctx, shape, &cfg, None).err().unwrap();
    assert!(matches!(err, FmaError::LimitExceeded { .. }), "{err}");
    let x = vec![0.0; shape.elements()];
    let err = reference::fma_forward(&x, &x, &x, shape, &cfg, None).unwrap_err();
    assert!(matches!(err, FmaError::LimitExceeded { .. }), "{err}");
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}
