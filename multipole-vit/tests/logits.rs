//! The Burn model with the shipped weights against the CPU reference model (`CpuVit`, f64) on
//! held-out digits: on Burn's wgpu device (FMA's kernels) and on ndarray (Burn tensor ops),
//! for the FMA model, its dense twin and the O(n) variant.
#![allow(deprecated)] // Device::ndarray: the issue names ndarray, which Burn 0.22 deprecates for Flex

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use multipole::model::mnist::{Digits, place};
use multipole::model::{CpuVit, VitWeights};
use multipole_vit::Vit;

const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../web/models");

fn held_out() -> Digits {
    common::digits().1
}

/// `count` held-out digits centred on the model's canvas.
fn images(weights: &VitWeights, count: usize) -> Vec<f32> {
    let digits = held_out();
    let side = weights.config.canvas;
    let centre = (side - weights.config.image) / 2;
    let mut out = Vec::new();
    for i in 0..count {
        place(digits.image(i), side, centre, centre, &mut out).unwrap();
    }
    out
}

/// The Burn model's logits against CpuVit's, within 1e-4 of the largest logit.
fn check(file: &str, device: &Device, count: usize) {
    let weights = VitWeights::load(format!("{MODELS}/{file}")).expect("a shipped model");
    let pixels = images(&weights, count);
    let model = Vit::from_weights(&weights, device).unwrap();
    let side = weights.config.canvas;
    let input = Tensor::<2>::from_data(
        TensorData::new(pixels.clone(), [count, side * side]),
        device,
    );
    let got: Vec<f32> = model.forward(input).unwrap().into_data().to_vec().unwrap();
    let params = weights.params.cast::<f64>();
    let pixels64: Vec<f64> = pixels.iter().map(|&x| x as f64).collect();
    let want = CpuVit::new(&weights.config)
        .unwrap()
        .logits(&params, &pixels64)
        .unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    eprintln!("{file}: {count} digits, largest logit difference {worst:.2e} (scale {scale:.1})");
    assert!(
        worst <= 1e-4 * scale,
        "{file}: logits differ by {worst} (scale {scale})"
    );
}

#[test]
fn kernels_on_burns_wgpu_device_match_the_reference_model() {
    let device = multipole_burn::init_wgpu().expect("Burn's wgpu device (lavapipe in CI)");
    for file in [
        "fma-vit-mnist.safetensors",
        "dense-vit-mnist.safetensors",
        "fma-linear-vit-mnist.safetensors",
    ] {
        check(file, &device, 16);
    }
}

#[test]
fn burn_tensor_ops_on_ndarray_match_the_reference_model() {
    // Fewer digits: the ops path gathers every key a query sees.
    for file in [
        "fma-vit-mnist.safetensors",
        "fma-linear-vit-mnist.safetensors",
    ] {
        check(file, &Device::ndarray(), 4);
    }
}

/// The overlay's attention map (the block's q, k from the Burn model, probabilities from the
/// core reference) against CpuVit's (its own forward and its own sparse FMA), per token.
#[test]
fn attention_maps_match_the_reference_model() {
    let device = multipole_burn::init_wgpu().expect("Burn's wgpu device (lavapipe in CI)");
    for file in [
        "fma-vit-mnist.safetensors",
        "fma-linear-vit-mnist.safetensors",
    ] {
        let weights = VitWeights::load(format!("{MODELS}/{file}")).expect("a shipped model");
        let image = images(&weights, 1);
        let model = Vit::from_weights(&weights, &device).unwrap();
        let cpu = CpuVit::new(&weights.config).unwrap();
        let tokens = weights.config.tokens();
        for block in 0..weights.config.depth {
            for token in [0, 37, tokens / 2 + 5, tokens - 1] {
                let got =
                    pollster::block_on(multipole_vit::attention_map(&model, &image, block, token))
                        .unwrap();
                let want = cpu
                    .attention_map(&weights.params, &image, block, token)
                    .unwrap();
                let near: Vec<usize> = got.near.iter().map(|&(t, _)| t).collect();
                let want_near: Vec<usize> = want.near.iter().map(|&(t, _)| t).collect();
                assert_eq!(
                    near, want_near,
                    "{file} block {block} token {token}: near keys"
                );
                for (&(t, p), &(_, w)) in got.near.iter().zip(&want.near) {
                    assert!(
                        (p - w).abs() < 1e-4,
                        "{file} token {token} key {t}: {p} vs {w}"
                    );
                }
                assert_eq!(got.far.len(), want.far.len(), "{file}: far cells");
                for w in &want.far {
                    let g = got
                        .far
                        .iter()
                        .find(|g| (g.level, g.top, g.left) == (w.level, w.top, w.left))
                        .unwrap_or_else(|| panic!("{file}: cell {w:?} missing"));
                    assert_eq!((g.height, g.width), (w.height, w.width));
                    assert!(
                        (g.probability - w.probability).abs() < 1e-4,
                        "{file} token {token} cell {w:?}: {}",
                        g.probability
                    );
                }
                let total: f32 = got.near.iter().map(|n| n.1).sum::<f32>()
                    + got.far.iter().map(|f| f.probability).sum::<f32>();
                assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
            }
        }
    }
    let weights = VitWeights::load(format!("{MODELS}/fma-vit-mnist.safetensors")).unwrap();
    let model = Vit::from_weights(&weights, &device).unwrap();
    let image = images(&weights, 1);
    let too_far = weights.config.tokens();
    assert!(pollster::block_on(multipole_vit::attention_map(&model, &image, 0, too_far)).is_err());
    assert!(pollster::block_on(multipole_vit::attention_map(&model, &image, 9, 0)).is_err());
}
