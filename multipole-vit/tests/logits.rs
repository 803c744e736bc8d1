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
