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
    // FMA's own rules: p must be a square for images.
    let bad = SegConfig {
        attention: SegAttention::Fma {
            m: 4,
            p: 2,
            linear: false,
        },
        ..SegConfig::new()
    };
    assert!(SegVit::new(&bad, &device).is_err());
}

#[test]
fn weight_files_round_trip_and_bad_ones_are_typed_errors() {
    let device = Device::ndarray();
    for attention in [
        SegAttention::Fma {
            m: 4,
            p: 1,
            linear: true,
        },
        SegAttention::Dense,
        SegAttention::Window { m: 8 },
    ] {
        let config = SegConfig {
            attention,
            dim: 16,
            depth: 2,
            ..SegConfig::new()
        };
        let model = SegVit::new(&config, &device).unwrap();
        let bytes = model.to_bytes().unwrap();
        let back = SegVit::from_bytes(&bytes, &device).unwrap();
        assert_eq!(back.config(), &config);
        let pixels = page(32, 7);
        assert_eq!(
            logits(&model, pixels.clone(), 32, &device),
            logits(&back, pixels, 32, &device),
            "{attention:?}"
        );
        // A fresh model of the same sizes differs: the file carried the weights.
        let fresh = SegVit::new(&config, &device).unwrap();
        assert_ne!(
            logits(&fresh, page(32, 7), 32, &device),
            logits(&back, page(32, 7), 32, &device)
        );
        // Truncated bytes.
        let err = SegVit::from_bytes(&bytes[..bytes.len() / 2], &device).unwrap_err();
        assert!(matches!(
            err,
            multipole_vit::Error::Fma(multipole::FmaError::TensorFile { .. })
        ));
    }
    // A classifier's weight file is not a segmenter's.
    let shipped = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../web/models/fma-vit-mnist.safetensors"
    ))
    .unwrap();
    let err = SegVit::from_bytes(&shipped, &device).unwrap_err();
    assert!(
        err.to_string().contains("not a segmentation model"),
        "{err}"
    );
    let err = SegVit::load(
        std::path::Path::new("/nonexistent/seg.safetensors"),
        &device,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/seg.safetensors"),
        "{err}"
    );
}

#[test]
fn any_picture_size_is_padded_with_background_and_cropped_back() {
    let device = Device::ndarray();
    let config = SegConfig {
        dim: 16,
        depth: 1,
        ..SegConfig::new()
    };
    let model = SegVit::new(&config, &device).unwrap();
    let (w, h) = (37usize, 23usize);
    let grey: Vec<u8> = (0..w * h).map(|i| ((i * 37) % 251) as u8).collect();
    let ink = multipole_vit::segment::ink_from_grey(&grey, w, h).unwrap();
    let labels = model.segment(&ink, w, h).unwrap();
    assert_eq!(labels.len(), w * h);
    // By hand: the picture in the top-left of a 38 x 24 canvas of background.
    let mut padded = vec![0.0f32; 38 * 24];
    for y in 0..h {
        padded[y * 38..y * 38 + w].copy_from_slice(&ink[y * w..(y + 1) * w]);
    }
    let input = Tensor::<3>::from_data(TensorData::new(padded, [1, 24, 38]), &device);
    let full = multipole_vit::segment::predict(&model, input).unwrap();
    for y in 0..h {
        assert_eq!(
            labels[y * w..(y + 1) * w],
            full[y * 38..y * 38 + w],
            "row {y}"
        );
    }
    // Dark ink on paper reads as light ink on black.
    let inverted: Vec<u8> = grey.iter().map(|g| 255 - g).collect();
    let median_dark = {
        let mut s = grey.clone();
        s.sort_unstable();
        s[s.len() / 2] < 128
    };
    let a = multipole_vit::segment::ink_from_grey(&grey, w, h).unwrap();
    let b = multipole_vit::segment::ink_from_grey(&inverted, w, h).unwrap();
    if median_dark {
        assert_eq!(a, b);
    }
    // Pictures it cannot take.
    assert!(multipole_vit::segment::ink_from_grey(&grey, w + 1, h).is_err());
    assert!(multipole_vit::segment::ink_from_grey(&[], 0, 0).is_err());
    assert!(model.segment(&ink, w, h + 1).is_err());
}

#[test]
fn training_lowers_the_loss_on_the_gpu_adapter() {
    use multipole_vit::segment_train::{SegTrainOptions, train};
    let device = multipole_burn::init_wgpu()
        .expect("Burn's wgpu device (lavapipe in CI)")
        .autodiff();
    let digits = synthetic_digits();
    let opts = SegTrainOptions {
        steps: 30,
        batch: 2,
        warmup: 5,
        canvas: CanvasConfig::new(32),
        ..SegTrainOptions::default()
    };
    let config = SegConfig {
        dim: 16,
        depth: 1,
        ..SegConfig::new()
    };
    let mut losses = Vec::new();
    train(&config, &opts, &digits, &device, &mut |s, _| {
        losses.push(s.loss)
    })
    .unwrap();
    assert_eq!(losses.len(), 30);
    // An untrained model is no better than a guess among eleven classes.
    assert!(losses[0] > 0.8 * 11f64.ln(), "{}", losses[0]);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    assert!(mean(&losses[25..]) < mean(&losses[..5]) - 0.3, "{losses:?}");
    let bad = SegTrainOptions {
        canvas: CanvasConfig::new(33),
        ..opts
    };
    assert!(train(&config, &bad, &digits, &device, &mut |_, _| {}).is_err());
}

fn synthetic_digits() -> multipole::model::mnist::Digits {
    let mut d = multipole::model::mnist::Digits::default();
    for c in 0..10u8 {
        let img: Vec<u8> = (0..784)
            .map(|i| {
                if (i / 28 + c as usize).is_multiple_of(5) {
                    220
                } else {
                    0
                }
            })
            .collect();
        d.pixels.extend(img);
        d.labels.push(c);
    }
    d
}
