//! Training through Burn: the weights survive the trip to the shipped file format, a small
//! model trained on Burn's wgpu device (FMA's kernels and GPU backward) follows the CPU
//! trainer step for step, and the first steps give the same losses on ndarray (Burn tensor
//! ops), from the same seed.
#![allow(deprecated)] // Device::ndarray: the issue names ndarray, which Burn 0.22 deprecates for Flex

mod common;

use burn::tensor::Device;
use multipole::model::mnist::Digits;
use multipole::model::train::{EpochLog, TrainOptions};
use multipole::model::{VitConfig, VitWeights};
use multipole_vit::Vit;
use multipole_vit::train::train;

/// The first `n` digits of `d`.
fn first(d: &Digits, n: usize) -> Digits {
    let px = d.image(0).len();
    Digits {
        pixels: d.pixels[..n * px].to_vec(),
        labels: d.labels[..n].to_vec(),
    }
}

/// The shipped model's sizes, narrower and shallower, so that a test trains in seconds.
fn small(config: VitConfig) -> VitConfig {
    VitConfig {
        dim: 16,
        mlp: 32,
        depth: 1,
        ..config
    }
}

fn wgpu() -> Device {
    multipole_burn::init_wgpu()
        .expect("Burn's wgpu device (lavapipe in CI)")
        .autodiff()
}

#[test]
fn weights_round_trip_through_the_burn_model() {
    let device = Device::ndarray();
    for config in [
        VitConfig::fma(),
        VitConfig::fma().dense_twin(),
        VitConfig::fma_linear(),
    ] {
        // Seeded random matrices and position embeddings: a mix-up of two would show.
        let weights = VitWeights::init(&config, 3).unwrap();
        let back = Vit::from_weights(&weights, &device)
            .unwrap()
            .to_weights()
            .unwrap();
        assert_eq!(back.config, weights.config);
        for (i, (a, b)) in weights
            .params
            .tensors
            .iter()
            .zip(&back.params.tensors)
            .enumerate()
        {
            assert_eq!(a, b, "tensor {i} of {:?}", config.downsampling);
        }
    }
}

fn opts(epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        batch: 32,
        warmup: 10,
        ..TrainOptions::default()
    }
}

/// The same seed gives the same initial weights, batches, shifts and schedule in both
/// trainers, so their losses must agree step for step up to f32 rounding: Burn's model, loss,
/// autodiff through FMA's GPU backward, AdamW and its decay groups against the CPU trainer's
/// hand-written ones.
#[test]
fn the_burn_trainer_follows_the_cpu_trainer() {
    let (train_set, test_set) = common::digits();
    let (train_set, test_set) = (first(&train_set, 160), first(&test_set, 64));
    let config = small(VitConfig::fma());
    let opts = TrainOptions {
        threads: 2,
        ..opts(2)
    };
    let (cpu_weights, cpu) =
        multipole::model::train::train(&config, &opts, &train_set, &test_set, &mut |_| {})
            .expect("the CPU trainer");
    let (model, burn) = train(&config, &opts, &train_set, &test_set, &wgpu(), &mut |_| {})
        .expect("the Burn trainer");
    for (c, b) in cpu.iter().zip(&burn) {
        eprintln!(
            "epoch {}: train loss {:.6} (CPU) {:.6} (Burn), held-out loss {:.6} {:.6}",
            c.epoch, c.train_loss, b.train_loss, c.test_loss, b.test_loss
        );
        assert!(
            (c.train_loss - b.train_loss).abs() < 1e-4 * c.train_loss,
            "{c:?}\n{b:?}"
        );
        assert!(
            (c.test_loss - b.test_loss).abs() < 1e-4 * c.test_loss,
            "{c:?}\n{b:?}"
        );
        // A near tie of two logits may fall either way: one or two digits of 160.
        assert!(
            (c.train_accuracy - b.train_accuracy).abs() <= 2.0 / 160.0,
            "{c:?}\n{b:?}"
        );
    }
    // Ten steps moved the weights away from the start, and both trainers the same way.
    let start = VitWeights::init(&config, opts.seed).unwrap();
    let burn_weights = model.to_weights().unwrap();
    let (mut moved, mut apart) = (0.0f32, 0.0f32);
    for ((s, c), b) in start
        .params
        .tensors
        .iter()
        .zip(&cpu_weights.params.tensors)
        .zip(&burn_weights.params.tensors)
    {
        for ((s, c), b) in s.iter().zip(c).zip(b) {
            moved = moved.max((c - s).abs());
            apart = apart.max((c - b).abs());
        }
    }
    eprintln!("largest change {moved:.2e}, largest difference between the trainers {apart:.2e}");
    // Decay on a parameter that should have none would put them ~0.1 x apart here.
    assert!(apart < 0.02 * moved, "{apart} vs {moved}");
}

#[test]
fn first_steps_agree_between_kernels_and_tensor_ops() {
    let (train_set, test_set) = common::digits();
    let (train_set, test_set) = (first(&train_set, 96), first(&test_set, 32));
    for config in [small(VitConfig::fma()), small(VitConfig::fma_linear())] {
        let run = |device: &Device| -> Vec<EpochLog> {
            train(
                &config,
                &opts(1),
                &train_set,
                &test_set,
                device,
                &mut |_| {},
            )
            .expect("training")
            .1
        };
        let (gpu, cpu) = (run(&wgpu()), run(&Device::ndarray().autodiff()));
        // Three steps: the second and third losses follow from the first updates.
        let (a, b) = (gpu[0].train_loss, cpu[0].train_loss);
        let name = if config.downsample_queries {
            "O(n) variant"
        } else {
            "FMA"
        };
        eprintln!("{name}: train loss {a:.6} (wgpu) {b:.6} (ndarray)");
        assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        let (a, b) = (gpu[0].test_loss, cpu[0].test_loss);
        assert!(
            (a - b).abs() < 1e-3 * a.abs().max(1.0),
            "held-out loss {a} vs {b}"
        );
    }
}
