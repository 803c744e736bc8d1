//! The `multipole attend` command: results equal the library's, bad files give clear errors.

mod cli_support;
#[path = "../../tests/common/mod.rs"]
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

use cli_support::*;
use common::*;
use multipole::tensor_file::{Tensor, TensorFile, write_tensors};
use multipole::{Downsampling, FmaConfig, Geometry, Shape, reference};

fn tmp(name: &str) -> PathBuf {
    scratch("cli", name)
}

fn t(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        data,
    }
}

#[test]
fn attend_takes_a_level_cap() {
    let shape = Shape::new(1, 2, 100, 8);
    let dims = [1, 2, 100, 8];
    let (q, k, v) = qkv(5, shape);
    let input = tmp("cap-in.safetensors");
    let named = [
        ("q", t(&dims, q.clone())),
        ("k", t(&dims, k.clone())),
        ("v", t(&dims, v.clone())),
    ];
    write_tensors(&input, &named).unwrap();
    let full = reference::fma_forward(&q, &k, &v, shape, &FmaConfig::new(8, 2), None).unwrap();
    for cap in [0usize, 1] {
        let cfg = FmaConfig::new(8, 2).max_levels(cap);
        let want = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
        // A CLI that dropped the flag would give the uncapped output: it must differ.
        let (apart, _) = max_abs_diff(&want.o, &full.o);
        assert!(apart > 1e-3, "cap {cap}: {apart}");
        let output = tmp(&format!("cap-out-{cap}.safetensors"));
        let cap_flag = cap.to_string();
        let args = ["--m", "8", "--p", "2", "--max-levels", cap_flag.as_str()];
        let (ok, err) = attend(&input, &output, &args);
        assert!(ok, "attend --max-levels {cap} failed: {err}");
        let o = TensorFile::open(&output)
            .unwrap()
            .get_shaped("o", &dims)
            .unwrap();
        assert_close(&format!("cli o, cap {cap}"), &o.data, &want.o, &v, 1e-4);
    }
}

#[test]
fn attend_matches_the_library_on_gpu_and_reference() {
    let shape = Shape::new(1, 2, 100, 16);
    let dims = [1, 2, 100, 16];
    let (q, k, v) = qkv(3, shape);
    let cfg = FmaConfig {
        causal: true,
        downsampling: Downsampling::Depthwise,
        ..FmaConfig::new(8, 2)
    };
    let g = Geometry::new(100, &cfg).unwrap();
    let w = weights(2, Downsampling::Depthwise, &g, 16);
    let mut tensors = vec![
        ("q".to_string(), t(&dims, q.clone())),
        ("k".into(), t(&dims, k.clone())),
        ("v".into(), t(&dims, v.clone())),
    ];
    for (i, (lw, &s)) in w.levels.iter().zip(&g.group_tokens()).enumerate() {
        let l = i + 1;
        tensors.push((format!("wk.{l}"), t(&[16, 2, s], lw.wk.clone())));
        tensors.push((format!("wv.{l}"), t(&[16, 2, s], lw.wv.clone())));
        tensors.push((format!("bk.{l}"), t(&[16, 2], lw.bk.clone())));
        tensors.push((format!("bv.{l}"), t(&[16, 2], lw.bv.clone())));
    }
    let named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let input = tmp("in.safetensors");
    write_tensors(&input, &named).unwrap();
    let want = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
    // f16 storage (lavapipe has SHADER_F16): the inputs are rounded to f16 too, hence the
    // wider bar (tests/gpu_f16.rs holds the kernels to 2e-3 on rounded inputs).
    let runs: [(&[&str], f32); 3] = [
        (&[], 1e-4),
        (&["--reference"], 1e-6),
        (&["--precision", "f16"], 5e-3),
    ];
    for (flag, tol) in runs {
        let output = tmp("out.safetensors");
        let mut args = vec![
            "--m",
            "8",
            "--p",
            "2",
            "--causal",
            "--downsampling",
            "depthwise",
        ];
        args.extend(flag);
        let (ok, err) = attend(&input, &output, &args);
        assert!(ok, "attend {flag:?} failed: {err}");
        let f = TensorFile::open(&output).unwrap();
        let o = f.get_shaped("o", &dims).unwrap();
        let lse = f.get_shaped("lse", &[1, 2, 100]).unwrap();
        assert_close(&format!("cli o {flag:?}"), &o.data, &want.o, &v, tol);
        assert_close(
            &format!("cli lse {flag:?}"),
            &lse.data,
            &want.lse,
            &[1.0],
            tol,
        );
    }
    // The backward runs in f32: asking for gradients of an f16 run is a clear error.
    let d_o = tmp("do16.safetensors");
    write_tensors(&d_o, &[("do", t(&dims, v.clone()))]).unwrap();
    let (ok, err) = attend(
        &input,
        &tmp("out16.safetensors"),
        &[
            "--m",
            "8",
            "--p",
            "2",
            "--causal",
            "--downsampling",
            "depthwise",
        ]
        .into_iter()
        .chain(["--precision", "f16", "--grad", d_o.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert!(!ok && err.contains("f32"), "{err}");
}

/// `--grad DO`: the backward's gradients, named and shaped as documented, equal the library's.
#[test]
fn attend_with_grad_writes_the_gradients() {
    let shape = Shape::new(1, 2, 100, 16);
    let dims = [1, 2, 100, 16];
    let (q, k, v) = qkv(5, shape);
    let d_o = random(9, shape.elements());
    let cfg = FmaConfig {
        downsampling: Downsampling::Depthwise,
        ..FmaConfig::new(8, 2)
    };
    let g = Geometry::new(100, &cfg).unwrap();
    let w = weights(4, Downsampling::Depthwise, &g, 16);
    let mut tensors = vec![
        ("q".to_string(), t(&dims, q.clone())),
        ("k".into(), t(&dims, k.clone())),
        ("v".into(), t(&dims, v.clone())),
    ];
    for (i, (lw, &s)) in w.levels.iter().zip(&g.group_tokens()).enumerate() {
        let l = i + 1;
        tensors.push((format!("wk.{l}"), t(&[16, 2, s], lw.wk.clone())));
        tensors.push((format!("wv.{l}"), t(&[16, 2, s], lw.wv.clone())));
        tensors.push((format!("bk.{l}"), t(&[16, 2], lw.bk.clone())));
        tensors.push((format!("bv.{l}"), t(&[16, 2], lw.bv.clone())));
    }
    let named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let input = tmp("grad-in.safetensors");
    write_tensors(&input, &named).unwrap();
    let grad = tmp("grad-do.safetensors");
    write_tensors(&grad, &[("do", t(&dims, d_o.clone()))]).unwrap();
    let want = reference::fma_backward(&q, &k, &v, &d_o, shape, &cfg, Some(&w)).unwrap();
    for flag in [None, Some("--reference")] {
        let output = tmp("grad-out.safetensors");
        let mut args = vec!["--m", "8", "--p", "2", "--downsampling", "depthwise"];
        args.extend(flag);
        args.extend(["--grad", grad.to_str().unwrap()]);
        let (ok, err) = attend(&input, &output, &args);
        assert!(ok, "attend --grad failed: {err}");
        let f = TensorFile::open(&output).unwrap();
        for (name, want) in [("dq", &want.dq), ("dk", &want.dk), ("dv", &want.dv)] {
            let got = f.get_shaped(name, &dims).unwrap();
            assert_close(&format!("cli {name}"), &got.data, want, want, 1e-4);
        }
        for (i, (lw, &s)) in want.dw.levels.iter().zip(&g.group_tokens()).enumerate() {
            let l = i + 1;
            for (name, shape, want) in [
                (format!("dwk.{l}"), vec![16, 2, s], &lw.wk),
                (format!("dwv.{l}"), vec![16, 2, s], &lw.wv),
                (format!("dbk.{l}"), vec![16, 2], &lw.bk),
                (format!("dbv.{l}"), vec![16, 2], &lw.bv),
            ] {
                let got = f.get_shaped(&name, &shape).unwrap();
                assert_close(&format!("cli {name}"), &got.data, want, want, 1e-4);
            }
        }
    }
    // A gradient of the wrong shape is refused with a message naming the tensor.
    let bad = tmp("grad-bad.safetensors");
    write_tensors(&bad, &[("do", t(&[1, 2, 99, 16], vec![0.0; 2 * 99 * 16]))]).unwrap();
    let args = [
        "--m",
        "8",
        "--p",
        "2",
        "--downsampling",
        "depthwise",
        "--grad",
    ];
    let mut args = args.to_vec();
    args.push(bad.to_str().unwrap());
    let (ok, err) = attend(&input, &tmp("grad-out2.safetensors"), &args);
    assert!(!ok && err.contains("do"), "{err}");
}

/// `--image HxW`: 2D FMA with learned weights, on the GPU and the reference.
#[test]
fn attend_on_an_image_matches_the_library() {
    let (h, w) = (12, 20);
    let shape = Shape::new(1, 2, h * w, 8);
    let dims = [1, 2, h * w, 8];
    let (q, k, v) = qkv(5, shape);
    let cfg = FmaConfig {
        downsampling: Downsampling::Basis,
        ..FmaConfig::new(2, 4).image(h, w)
    };
    let g = Geometry::new(h * w, &cfg).unwrap();
    assert!(g.num_levels() >= 2);
    let wts = weights(4, Downsampling::Basis, &g, 8);
    let mut tensors = vec![
        ("q".to_string(), t(&dims, q.clone())),
        ("k".into(), t(&dims, k.clone())),
        ("v".into(), t(&dims, v.clone())),
    ];
    for (i, (lw, &s)) in wts.levels.iter().zip(&g.group_tokens()).enumerate() {
        tensors.push((format!("wk.{}", i + 1), t(&[4, s], lw.wk.clone())));
        tensors.push((format!("wv.{}", i + 1), t(&[4, s], lw.wv.clone())));
    }
    let named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let input = tmp("image-in.safetensors");
    write_tensors(&input, &named).unwrap();
    let want = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&wts)).unwrap();
    let image = format!("{h}x{w}");
    // f16 storage (lavapipe has SHADER_F16): the inputs are rounded to f16 too, hence the
    // wider bar (tests/gpu_f16.rs holds the kernels to 2e-3 on rounded inputs).
    let runs: [(&[&str], f32); 3] = [
        (&[], 1e-4),
        (&["--reference"], 1e-6),
        (&["--precision", "f16"], 5e-3),
    ];
    for (flag, tol) in runs {
        let output = tmp("image-out.safetensors");
        let mut args = vec!["--m", "2", "--p", "4", "--downsampling", "basis"];
        args.extend(["--image", image.as_str()]);
        args.extend(flag);
        let (ok, err) = attend(&input, &output, &args);
        assert!(ok, "attend {flag:?} failed: {err}");
        let o = TensorFile::open(&output)
            .unwrap()
            .get_shaped("o", &dims)
            .unwrap();
        assert_close("cli 2d o", &o.data, &want.o, &v, tol);
    }
    // n must equal H x W, and the size must parse
    let output = tmp("image-bad.safetensors");
    let (ok, err) = attend(
        &input,
        &output,
        &["--m", "2", "--p", "4", "--image", "12x21"],
    );
    assert!(!ok && err.contains("height x width = 252"), "{err}");
    let (ok, err) = attend(
        &input,
        &output,
        &["--m", "2", "--p", "4", "--image", "12by20"],
    );
    assert!(!ok && err.contains("HEIGHTxWIDTH"), "{err}");
    let (ok, err) = attend(
        &input,
        &output,
        &["--m", "2", "--p", "2", "--image", "12x20"],
    );
    assert!(!ok && err.contains("must be a square"), "{err}");
}

#[test]
fn bad_files_give_clear_errors() {
    let dims = [1, 1, 16, 4];
    let x = random(1, 64);
    let good = |name: &str| -> PathBuf {
        let p = tmp(name);
        write_tensors(
            &p,
            &[
                ("q", t(&dims, x.clone())),
                ("k", t(&dims, x.clone())),
                ("v", t(&dims, x.clone())),
            ],
        )
        .unwrap();
        p
    };
    let out = tmp("bad-out.safetensors");
    let base = ["--m", "4", "--p", "2"];

    let (ok, err) = attend(&tmp("does-not-exist.safetensors"), &out, &base);
    assert!(!ok && err.contains("does-not-exist"), "{err}");

    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"this is not a tensor file").unwrap();
    let (ok, err) = attend(&junk, &out, &base);
    assert!(!ok && err.contains("not a safetensors file"), "{err}");

    let missing = tmp("missing.safetensors");
    write_tensors(
        &missing,
        &[("q", t(&dims, x.clone())), ("k", t(&dims, x.clone()))],
    )
    .unwrap();
    let (ok, err) = attend(&missing, &out, &base);
    assert!(!ok && err.contains("missing tensor 'v'"), "{err}");

    let wrong = tmp("wrong-shape.safetensors");
    write_tensors(
        &wrong,
        &[
            ("q", t(&dims, x.clone())),
            ("k", t(&[1, 1, 8, 8], x.clone())),
            ("v", t(&dims, x.clone())),
        ],
    )
    .unwrap();
    let (ok, err) = attend(&wrong, &out, &base);
    assert!(!ok && err.contains("'k' has shape [1, 1, 8, 8]"), "{err}");

    let f64_file = tmp("f64.safetensors");
    let bytes = vec![0u8; 64 * 8];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, dims.to_vec(), &bytes)
        .unwrap();
    std::fs::write(
        &f64_file,
        safetensors::serialize([("q", view)], None).unwrap(),
    )
    .unwrap();
    let (ok, err) = attend(&f64_file, &out, &base);
    assert!(!ok && err.contains("f32 is required"), "{err}");

    let rank3 = tmp("rank3.safetensors");
    write_tensors(&rank3, &[("q", t(&[1, 16, 4], x.clone()))]).unwrap();
    let (ok, err) = attend(&rank3, &out, &base);
    assert!(!ok && err.contains("4 dimensions"), "{err}");

    let (ok, err) = attend(
        &good("basis.safetensors"),
        &out,
        &["--m", "4", "--p", "2", "--downsampling", "basis"],
    );
    assert!(!ok && err.contains("missing tensor 'wk.1'"), "{err}");

    let (ok, err) = attend(&good("m.safetensors"), &out, &["--m", "6", "--p", "2"]);
    assert!(!ok && err.contains("power of two"), "{err}");
}

/// `attend`, killed and failed if it runs longer than `secs` (a hang is a bug, not a wait).
fn attend_within(input: &Path, output: &Path, extra: &[&str], secs: u64) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .args(["attend", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed().as_secs() >= secs {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("attend {extra:?} still ran after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    (status.success(), stderr)
}

/// A fine cell far larger than the input: 2^31 used to wrap to NaN output, 2^30 to pad 64
/// tokens to 2^31 and run for more than ten minutes. Both are dense attention (n' = 2m), on
/// the GPU and on the reference, in 1D and 2D.
#[test]
fn attend_with_a_cell_larger_than_the_input_is_dense_and_quick() {
    let shape = Shape::new(1, 2, 64, 8);
    let dims = [1, 2, 64, 8];
    let (q, k, v) = qkv(31, shape);
    let input = tmp("huge-m-in.safetensors");
    write_tensors(
        &input,
        &[
            ("q", t(&dims, q.clone())),
            ("k", t(&dims, k.clone())),
            ("v", t(&dims, v.clone())),
        ],
    )
    .unwrap();
    let want = reference::dense(&q, &k, &v, shape, false, 1.0 / 8f32.sqrt()).unwrap();
    for m in ["2147483648", "1073741824", "18446744073709551616"] {
        for extra in [&[][..], &["--reference"], &["--image", "8x8"]] {
            let output = tmp("huge-m-out.safetensors");
            let _ = std::fs::remove_file(&output);
            let mut args = vec!["--m", m, "--p", "1"];
            args.extend(extra);
            let (ok, err) = attend_within(&input, &output, &args, 120);
            if m.len() > 19 {
                // Over usize: clap refuses the flag itself, with a message.
                assert!(!ok && err.contains("--m"), "m = {m}: {err}");
                continue;
            }
            assert!(ok, "m = {m} {extra:?}: {err}");
            let o = TensorFile::open(&output)
                .unwrap()
                .get_shaped("o", &dims)
                .unwrap();
            assert_close(&format!("m = {m} {extra:?}"), &o.data, &want.o, &v, 1e-4);
        }
    }
}

/// A 2 x 40,000 image pads to a square of 2^32 tokens: a clear error, at once.
#[test]
fn attend_refuses_padding_far_beyond_the_input() {
    let dims = [1, 1, 80_000, 1];
    let x = vec![0.5f32; 80_000];
    let input = tmp("thin-in.safetensors");
    write_tensors(
        &input,
        &[
            ("q", t(&dims, x.clone())),
            ("k", t(&dims, x.clone())),
            ("v", t(&dims, x)),
        ],
    )
    .unwrap();
    for flag in [None, Some("--reference")] {
        let mut args = vec!["--m", "2", "--p", "1", "--image", "2x40000"];
        args.extend(flag);
        let (ok, err) = attend_within(&input, &tmp("thin-out.safetensors"), &args, 60);
        assert!(!ok, "a 2 x 40000 image must be refused");
        assert!(
            err.contains("padded token grid") && err.contains("split"),
            "{err}"
        );
    }
}

/// `train-mnist` flags that would overflow, divide by zero or poison the weights are refused
/// with a message before any digit is read (a --dim near usize::MAX used to overflow).
#[test]
fn train_mnist_refuses_bad_flags() {
    let out = tmp("never-written.safetensors");
    for (flags, want) in [
        (&["--dim", "9223372036854775807"][..], "over the limit"),
        (&["--batch", "0"], "--batch and --epochs"),
        (&["--epochs", "0"], "--batch and --epochs"),
        (&["--epochs", "18446744073709551615"], "--epochs"),
        (&["--lr", "NaN"], "--lr"),
        (&["--weight-decay=-1"], "--weight-decay"),
        (&["--depth", "0"], "at least 1"),
        // The O(n) variant of the dense twin means nothing: the flags exclude each other.
        (&["--linear", "--dense"], "cannot be used with"),
    ] {
        let res = Command::new(env!("CARGO_BIN_EXE_multipole"))
            .args(["train-mnist", "--data", "/nonexistent-mnist", "--out"])
            .arg(&out)
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(!stderr.contains("panicked"), "{flags:?}: {stderr}");
        assert!(!res.status.success(), "{flags:?}");
        assert!(stderr.contains(want), "{flags:?}: {stderr}");
        assert!(!out.exists());
    }
}

/// `multipole study` on a tiny size writes records with every field, a table and a plot, and
/// refuses bad flags (a missing MNIST folder before any work).
#[test]
fn study_writes_records_and_refuses_bad_flags() {
    let dir = tmp("study-out");
    let res = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .args([
            "study", "--sizes", "64", "--no-vit", "--steps", "1", "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    let json = std::fs::read_to_string(dir.join("approximation.json")).unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert!(records.len() > 30, "{} records", records.len());
    for r in &records {
        for field in multipole::study::records::FIELDS {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
    }
    let md = std::fs::read_to_string(dir.join("approximation.md")).unwrap();
    assert!(
        md.contains("smooth, n = 64") && md.contains("| clustered |"),
        "{md}"
    );
    assert!(dir.join("approximation-local-64.svg").exists());
    for (flags, want) in [
        (&["--lr", "NaN", "--no-vit"][..], "--lr"),
        (&["--sizes", "0", "--no-vit"], "--sizes"),
        (&["--mnist", "/nonexistent-mnist"], "cargo xtask mnist"),
    ] {
        // From the workspace root, where the defaults (the shipped ViT weights) point.
        let res = Command::new(env!("CARGO_BIN_EXE_multipole"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .arg("study")
            .args(flags)
            .arg("--out")
            .arg(tmp("study-never"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(
            !res.status.success() && stderr.contains(want),
            "{flags:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{flags:?}: {stderr}");
    }
}
