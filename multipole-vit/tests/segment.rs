//! The segmentation model runs on canvases of any size (multiples of its patch) with the same
//! weights, gives the same logits through FMA's kernels (Burn's wgpu device) and through Burn
//! tensor ops (ndarray), and refuses images it cannot take with typed errors.
#![allow(deprecated)] // Device::ndarray: the issue names ndarray, which Burn 0.22 deprecates for Flex

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use multipole_vit::canvas::{CLASSES, CanvasConfig, canvas};
use multipole_vit::segment::{SegAttention, SegConfig, SegVit};

fn page(side: usize, index: u64) -> Vec<f32> {
    // Synthetic digits are enough here: the model is untrained.
    let mut d = multipole::model::mnist::Digits::default();
    for c in 0..10u8 {
        let img: Vec<u8> = (0..784)
            .map(|i| ((i * 7 + c as usize * 31) % 256) as u8)
            .collect();
        d.pixels.extend(img);
        d.labels.push(c);
    }
    canvas(&d, &CanvasConfig::new(side), 1, index)
        .unwrap()
        .pixels
}

fn logits(model: &SegVit, pixels: Vec<f32>, side: usize, device: &Device) -> Vec<f32> {
    let input = Tensor::<3>::from_data(TensorData::new(pixels, [1, side, side]), device);
    let out = model.forward(input).unwrap();
    assert_eq!(out.dims(), [1, side, side, CLASSES]);
    let values: Vec<f32> = out.into_data().try_to_vec().unwrap();
    // The comparisons below take maxima, which a NaN would slip through.
    assert!(values.iter().all(|v| v.is_finite()));
    values
}

#[test]
fn one_model_runs_at_two_sizes_on_kernels_and_tensor_ops() {
    let wgpu = multipole_burn::init_wgpu().expect("Burn's wgpu device (lavapipe in CI)");
    let cpu = Device::ndarray();
    for attention in [
        SegAttention::Fma {
            m: 4,
            p: 4,
            linear: false,
        },
        SegAttention::Fma {
            m: 4,
            p: 4,
            linear: true,
        },
        SegAttention::Dense,
        SegAttention::Window { m: 4 },
    ] {
        let config = SegConfig {
            attention,
            ..SegConfig::new()
        };
        let model = SegVit::new(&config, &cpu).unwrap();
        let on_gpu = model.clone().fork(&wgpu);
        // 32 x 32 tokens, then twice the side: 64 x 64 tokens, one more coarse level. Exact
        // attention on the tensor-ops path gathers every key for every query: a small page.
        let sides: &[usize] = if attention == SegAttention::Dense {
            &[32]
        } else {
            &[64, 128]
        };
        for &side in sides {
            let pixels = page(side, side as u64);
            let a = logits(&on_gpu, pixels.clone(), side, &wgpu);
            let b = logits(&model, pixels, side, &cpu);
            let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            eprintln!(
                "{attention:?} at {side} x {side}: largest difference {worst:.1e} (scale {scale:.2})"
            );
            assert!(
                worst <= 1e-4 * scale.max(1.0),
                "{attention:?} at {side}: {worst}"
            );
        }
    }
}

#[test]
fn images_it_cannot_take_are_typed_errors() {
    let device = Device::ndarray();
    let model = SegVit::new(&SegConfig::new(), &device).unwrap();
    for [h, w] in [[63, 64], [64, 0], [3, 64]] {
        let input = Tensor::<3>::zeros([1, h, w], &device);
        let err = model.forward(input).unwrap_err();
        assert!(
            matches!(err, multipole_vit::Error::BadTensor { .. }),
            "{h} x {w}: {err}"
        );
    }
    let bad = SegConfig {
        heads: 3,
        ..SegConfig::new()
    };
    assert!(SegVit::new(&bad, &device).is_err());
}
