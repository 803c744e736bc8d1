//! `multipole decode` writes, for every token, the row `attend --causal` writes (GPU and CPU,
//! with and without a prefill), from the same input file.

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use multipole::tensor_file::{Tensor, TensorFile, write_tensors};
use multipole::{Downsampling, FmaConfig, Geometry, Shape};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multipole-decode-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run(command: &str, input: &Path, output: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .args([command, "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    (out.status.success(), stderr)
}

fn t(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        data,
    }
}

#[test]
fn decode_matches_attend_causal() {
    let dims = [1, 2, 70, 8];
    let (q, k, v) = qkv(5, Shape::new(1, 2, 70, 8));
    let cfg = FmaConfig {
        causal: true,
        downsampling: Downsampling::Basis,
        ..FmaConfig::new(4, 2)
    };
    let g = Geometry::new(70, &cfg).unwrap();
    let w = weights(4, Downsampling::Basis, &g, 8);
    let mut tensors = vec![
        ("q".to_string(), t(&dims, q)),
        ("k".into(), t(&dims, k)),
        ("v".into(), t(&dims, v)),
    ];
    for (i, (lw, &s)) in w.levels.iter().zip(&g.group_tokens()).enumerate() {
        tensors.push((format!("wk.{}", i + 1), t(&[2, s], lw.wk.clone())));
        tensors.push((format!("wv.{}", i + 1), t(&[2, s], lw.wv.clone())));
    }
    let named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, x)| (n.as_str(), x.clone()))
        .collect();
    let input = tmp("in.safetensors");
    write_tensors(&input, &named).unwrap();
    let flags = ["--m", "4", "--p", "2", "--downsampling", "basis"];
    let want = tmp("attend.safetensors");
    let (ok, err) = run(
        "attend",
        &input,
        &want,
        &[&flags[..], &["--causal", "--reference"]].concat(),
    );
    assert!(ok, "{err}");
    let want = TensorFile::open(&want).unwrap();
    for extra in [
        &["--reference"][..],
        &["--prefill", "9"],
        &["--prefill", "9", "--reference"],
    ] {
        let out = tmp("decode.safetensors");
        let (ok, err) = run("decode", &input, &out, &[&flags[..], extra].concat());
        assert!(ok, "{extra:?}: {err}");
        let got = TensorFile::open(&out).unwrap();
        for name in ["o", "lse"] {
            let (a, b) = (got.get(name).unwrap(), want.get(name).unwrap());
            assert_eq!(a.shape, b.shape, "{name}");
            let (e, at) = max_abs_diff(&a.data, &b.data);
            assert!(
                e <= 1e-4,
                "{extra:?} {name}[{at}]: {} vs {}",
                a.data[at],
                b.data[at]
            );
        }
    }
    // a prefill longer than the input is a clear error
    let (ok, err) = run(
        "decode",
        &input,
        &tmp("x.safetensors"),
        &[&flags[..], &["--prefill", "71"]].concat(),
    );
    assert!(!ok && err.contains("--prefill"), "{err}");
}
