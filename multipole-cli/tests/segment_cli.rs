//! `multipole segment`: the labels it prints and the mask it writes for a picture (dark ink on
//! paper, a size that is no multiple of the patch) are the library's for the same file and
//! weights; bad pictures, weight files and flags get errors, never a panic.
#![allow(deprecated)] // Device::ndarray: Burn 0.22 prefers Flex

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use image::{Luma, Rgb, RgbImage};
use multipole_vit::segment::{PALETTE, SegConfig, SegVit, ink_from_grey};

fn tmp(name: &str) -> PathBuf {
    cli_support::scratch("segment", name)
}

fn segment(args: &[&str], image: &Path) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .arg("segment")
        .arg(image)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    (out, stderr)
}

/// A small untrained model (its labels are arbitrary but deterministic) and its file, named
/// per test: the tests run at once, each with its own random weights.
fn weights(name: &str) -> (SegVit, PathBuf) {
    let config = SegConfig {
        dim: 16,
        depth: 1,
        ..SegConfig::new()
    };
    let model = SegVit::new(&config, &Device::ndarray()).unwrap();
    let path = tmp(name);
    model.save(&path).unwrap();
    (model, path)
}

/// Three dark strokes on light paper, 45 x 30 pixels.
fn picture() -> PathBuf {
    let path = tmp("page.png");
    RgbImage::from_fn(45, 30, |x, y| {
        let ink = (5..9).contains(&x) && (4..26).contains(&y)
            || (18..36).contains(&x) && (10..13).contains(&y)
            || (x + y).is_multiple_of(17) && x > 30;
        if ink {
            Rgb([20, 20, 30])
        } else {
            Rgb([250, 248, 240])
        }
    })
    .save(&path)
    .unwrap();
    path
}

#[test]
fn labels_and_mask_are_the_librarys() {
    let (model, weights) = weights("labels.safetensors");
    let pic = picture();
    let mask = tmp("mask.png");
    let w = weights.to_str().unwrap();
    let (out, stderr) = segment(
        &[
            "--weights",
            w,
            "--burn",
            "ndarray",
            "--json",
            "--output",
            mask.to_str().unwrap(),
        ],
        &pic,
    );
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["width"], 45);
    assert_eq!(json["height"], 30);
    let labels: Vec<u8> = json["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    // The library on the same file.
    let grey = image::open(&pic).unwrap().to_luma8();
    let ink = ink_from_grey(grey.as_raw(), 45, 30).unwrap();
    // Dark strokes became bright ink, the paper background.
    let Luma([paper]) = *grey.get_pixel(0, 0);
    assert!(paper > 200 && ink[0] < 0.05 && ink[4 * 45 + 5] > 0.8);
    assert_eq!(labels, model.segment(&ink, 45, 30).unwrap());
    // The mask: one palette colour per pixel, the picture's size.
    let mask = image::open(&mask).unwrap().to_rgb8();
    assert_eq!(mask.dimensions(), (45, 30));
    for (i, px) in mask.pixels().enumerate() {
        assert_eq!(px.0, PALETTE[usize::from(labels[i])], "pixel {i}");
    }
}

#[test]
fn bad_pictures_weights_and_flags_are_errors() {
    let (_, weights) = weights("errors.safetensors");
    let w = weights.to_str().unwrap();
    let pic = picture();
    // Not an image.
    let text = tmp("not-an-image.png");
    std::fs::write(&text, b"this is text").unwrap();
    let (out, stderr) = segment(&["--weights", w, "--json"], &text);
    assert!(
        !out.status.success() && stderr.contains("not a readable"),
        "{stderr}"
    );
    // Missing file.
    let (out, stderr) = segment(&["--weights", w, "--json"], Path::new("/nonexistent.png"));
    assert!(
        !out.status.success() && stderr.contains("nonexistent"),
        "{stderr}"
    );
    // A classifier's weights.
    let classifier = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../web/models/fma-vit-mnist.safetensors"
    );
    let (out, stderr) = segment(&["--weights", classifier, "--json"], &pic);
    assert!(
        !out.status.success() && stderr.contains("not a segmentation model"),
        "{stderr}"
    );
    // Nothing to write.
    let (out, stderr) = segment(&["--weights", w], &pic);
    assert!(
        !out.status.success() && stderr.contains("--output"),
        "{stderr}"
    );
    // Too large a picture.
    let big = tmp("big.png");
    image::GrayImage::new(2049, 4).save(&big).unwrap();
    let (out, stderr) = segment(&["--weights", w, "--json"], &big);
    assert!(!out.status.success() && stderr.contains("2048"), "{stderr}");
}
