//! Times one training step of the Burn ViT (forward, cross-entropy, backward, AdamW) on Burn's
//! wgpu device (FMA's kernels and GPU backward) and on ndarray (Burn tensor ops), for the FMA
//! model and its dense twin: which backend `train-mnist --burn` should use here.
//!
//! `cargo run --release -p multipole-vit --example train_step [-- STEPS [BATCH]]` (3 steps after
//! a warm-up, batch 32 by default)
#![allow(deprecated)] // Device::ndarray: Burn 0.22 prefers Flex

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use multipole::model::{VitConfig, VitWeights};
use multipole_vit::Vit;

fn median_step_ms(config: &VitConfig, device: &Device, steps: usize, batch: usize) -> f64 {
    let weights = VitWeights::init(config, 1).expect("a valid config");
    let mut model = Vit::from_weights(&weights, device).expect("the model");
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.05)
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let side = config.canvas;
    // A fixed pseudo-random batch: the time does not depend on the pixels.
    let pixels: Vec<f32> = (0..batch * side * side)
        .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 1000.0)
        .collect();
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
    let mut times = Vec::new();
    for _ in 0..=steps {
        let start = Instant::now();
        let images = Tensor::<2>::from_data(
            TensorData::new(pixels.clone(), [batch, side * side]),
            device,
        );
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [batch]), device);
        let logits = model.forward(images).expect("forward");
        let loss = loss_fn.forward(logits, targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        // Reading a parameter back waits for the step's work.
        let _: f32 = model.first_weight_value();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.remove(0); // the first step builds pipelines and plans
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a whole number"))
    };
    let (steps, batch) = (arg(1, 3), arg(2, 32));
    let wgpu = multipole_burn::init_wgpu()
        .expect("Burn's wgpu device")
        .autodiff();
    let ndarray = Device::ndarray().autodiff();
    let fma = VitConfig::fma();
    let dense = fma.dense_twin();
    let per_epoch = 8000usize.div_ceil(batch);
    println!(
        "one training step at batch {batch}, median of {steps} (ms); an epoch is {per_epoch} steps"
    );
    for (name, config) in [("fma", &fma), ("dense twin", &dense)] {
        for (backend, device) in [
            ("wgpu (kernels)", &wgpu),
            ("ndarray (tensor ops)", &ndarray),
        ] {
            let ms = median_step_ms(config, device, steps, batch);
            println!(
                "{name:>10} on {backend:<22} {ms:>9.1} ms/step  ~{:.0} s/epoch",
                ms * per_epoch as f64 / 1e3
            );
        }
    }
}
