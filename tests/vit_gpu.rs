//! The whole ViT on the GPU against the CPU model in f64, on freshly initialised weights with
//! their norms, biases and downsampling moved off the initial values: FMA (every downsampling
//! kind) and the dense twin, batches split unevenly.

mod common;

use multipole::Downsampling;
use multipole::model::{CpuVit, VitConfig, VitGpu, VitWeights};

fn perturbed(cfg: &VitConfig, seed: u64) -> VitWeights {
    let mut w = VitWeights::init(cfg, seed).unwrap();
    for (i, t) in w.params.tensors.iter_mut().enumerate() {
        let noise = common::random(seed * 1000 + i as u64, t.len());
        for (x, n) in t.iter_mut().zip(noise) {
            *x += 0.1 * n;
        }
    }
    w
}

#[test]
fn gpu_logits_match_the_cpu_model() {
    let ctx = common::gpu();
    let small = VitConfig {
        depth: 2,
        ..VitConfig::fma()
    };
    let configs = [
        small.clone(),
        VitConfig {
            downsampling: Downsampling::Basis,
            ..small.clone()
        },
        VitConfig {
            downsampling: Downsampling::Mean,
            p: 4,
            m: 4,
            ..small.clone()
        },
        small.dense_twin(),
    ];
    for (i, cfg) in configs.iter().enumerate() {
        let w = perturbed(cfg, i as u64 + 1);
        let images: Vec<f32> = common::random(50 + i as u64, 5 * 32 * 32)
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        // Batches of 2: the last one is partial.
        let gpu = VitGpu::new(ctx, &w, 2)
            .unwrap()
            .logits_blocking(ctx, &images)
            .unwrap();
        let images64: Vec<f64> = images.iter().map(|&v| v as f64).collect();
        let cpu = CpuVit::new(cfg)
            .unwrap()
            .logits(&w.params.cast::<f64>(), &images64)
            .unwrap();
        assert_eq!(gpu.len(), 5 * 10);
        let scale = cpu.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for (j, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert!(
                (*g as f64 - c).abs() <= 1e-4 * scale,
                "{cfg:?} logit {j}: GPU {g}, CPU {c}"
            );
        }
    }
}

/// The O(n) variant's model runs on the GPU and gives the CPU model's logits.
#[test]
fn linear_variant_matches_the_cpu() {
    let ctx = common::gpu();
    let cfg = VitConfig {
        depth: 1,
        ..VitConfig::fma_linear()
    };
    let w = perturbed(&cfg, 9);
    let images: Vec<f32> = common::random(60, 2 * 32 * 32)
        .iter()
        .map(|v| v.max(0.0))
        .collect();
    let images64: Vec<f64> = images.iter().map(|&v| v as f64).collect();
    let cpu = CpuVit::new(&cfg)
        .unwrap()
        .logits(&w.params.cast::<f64>(), &images64)
        .unwrap();
    let gpu = VitGpu::new(ctx, &w, 2)
        .unwrap()
        .logits_blocking(ctx, &images)
        .unwrap();
    assert_eq!(gpu.len(), cpu.len());
    let scale = cpu.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (g, c) in gpu.iter().zip(&cpu) {
        assert!((*g as f64 - c).abs() <= 1e-4 * scale, "GPU {g}, CPU {c}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let ctx = common::gpu();
    let cfg = VitConfig {
        depth: 1,
        ..VitConfig::fma()
    };
    let w = VitWeights::init(&cfg, 1).unwrap();
    let model = VitGpu::new(ctx, &w, 2).unwrap();
    assert!(model.logits_blocking(ctx, &[0.0; 100]).is_err());
    assert!(model.logits_blocking(ctx, &[]).is_err());
    assert!(VitGpu::new(ctx, &w, 0).is_err());
    let mut bad = w.clone();
    bad.params.tensors[0].pop();
    assert!(VitGpu::new(ctx, &bad, 1).is_err());
}
