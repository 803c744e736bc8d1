//! `multipole decode` writes, for every token, the row `attend --causal` writes (GPU and CPU,
//! with and without a prefill), from the same input file.

mod cli_support;
#[path = "../../tests/common/mod.rs"]
mod common;
use std::path::PathBuf;
use std::process::Command;

use cli_support::*;
use common::*;
use multipole::tensor_file::{Tensor, TensorFile, write_tensors};
use multipole::{Downsampling, FmaConfig, Geometry, Shape};

fn tmp(name: &str) -> PathBuf {
    scratch("decode-cli", name)
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

#[test]
fn bench_decode_writes_records_and_plots() {
    let json = tmp("decode-bench.json");
    let prefix = tmp("decode");
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .args([
            "bench",
            "--decode",
            "--n",
            "64,256",
            "--decode-batch",
            "1,2",
        ])
        .args([
            "--d",
            "16",
            "--m",
            "8",
            "--p",
            "2",
            "--runs",
            "1",
            "--decode-steps",
            "2",
        ])
        .args(["--dense-max", "64", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&prefix)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let records = records.as_array().unwrap();
    // FMA at both contexts and batches, dense at 64 only
    assert_eq!(records.len(), 6, "{records:?}");
    let get = |kernel: &str, context: u64, batch: u64| {
        records
            .iter()
            .find(|r| r["kernel"] == kernel && r["context"] == context && r["batch"] == batch)
            .unwrap_or_else(|| panic!("no {kernel} record at {context} x {batch}"))
    };
    for batch in [1, 2] {
        let (fma, dense) = (get("fma_decode", 64, batch), get("dense_decode", 64, batch));
        assert!(fma["tokens_per_s"].as_f64().unwrap() > 0.0);
        // d = 16, m = 8, p = 2: 4md + 8pd L floats per head; capacity 64 + 17 (the timed
        // steps and 16 host steps after a warm-up one): L = 3
        let levels = fma["levels"].as_u64().unwrap();
        assert_eq!(levels, 3);
        let want = batch * 4 * (4 * 8 * 16 + 8 * 2 * 16 * levels);
        assert_eq!(fma["state_bytes"].as_u64().unwrap(), want);
        // dense: 2 d floats per token of its capacity
        assert_eq!(
            dense["state_bytes"].as_u64().unwrap(),
            batch * 4 * 2 * 16 * 81
        );
        let at_256 = get("fma_decode", 256, batch)["state_bytes"]
            .as_u64()
            .unwrap();
        assert_eq!(at_256, want + batch * 4 * 8 * 2 * 16 * 2, "two more levels");
    }
    for suffix in ["decode-time.svg", "decode-state.svg"] {
        let svg = std::fs::read_to_string(format!("{}-{suffix}", prefix.display())).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("fma_decode, batch 1"),
            "{suffix}"
        );
    }
}

#[test]
fn bench_decode_refuses_zero_steps() {
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .args(["bench", "--decode", "--n", "64", "--decode-steps", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "zero steps measured nothing and must fail"
    );
    assert!(
        stderr.contains("--decode-steps must be at least 1"),
        "{stderr}"
    );
}
