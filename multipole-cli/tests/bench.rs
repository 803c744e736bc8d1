//! `multipole bench`: the records it writes carry what the ratios need, and the plots exist.

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "bench panicked: {stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

#[test]
fn bench_writes_one_record_per_measurement_and_plots() {
    let dir = std::env::temp_dir().join(format!("multipole-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let prefix = dir.join("plot");
    let (ok, stdout, stderr) = bench(&[
        "--n",
        "256,1024",
        "--image",
        "16x16",
        "--d",
        "32",
        "--m",
        "16",
        "--p",
        "2",
        "--runs",
        "2",
        "--matmul-size",
        "256",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        prefix.to_str().unwrap(),
    ]);
    assert!(ok, "bench failed: {stderr}");
    assert!(stdout.contains("fma 1d time grows as n^"), "{stdout}");
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let all = records.as_array().unwrap();
    // The calibration first: one record per matmul variant, the best one's rate the yardstick
    // of every record's fraction.
    let (matmul, records): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) =
        all.iter().partition(|r| r["kernel"] == "matmul");
    assert!(matmul.len() >= 2, "{matmul:#?}");
    // Every rate from the primary fields, not from the record's own derived ones: the FLOPs
    // of its convention over its median time.
    let rate = |r: &serde_json::Value| {
        r["flops"].as_f64().unwrap() / (r["median_ms"].as_f64().unwrap() * 1e6)
    };
    // The yardstick: the best of the matmul variants and dense attention.
    let best = all
        .iter()
        .filter(|r| r["kernel"] == "matmul" || r["kernel"] == "dense")
        .map(&rate)
        .fold(0.0, f64::max);
    assert!(best > 0.0);
    for r in all {
        let g = r["gflops"].as_f64().unwrap();
        assert!((g - rate(r)).abs() <= 1e-6 * g, "{r}");
        // Dense attention's FLOPs by the convention, from the shape alone.
        if r["kernel"] == "dense" {
            let (n, d) = (r["n"].as_f64().unwrap(), r["d"].as_f64().unwrap());
            let heads = r["heads"].as_f64().unwrap();
            assert_eq!(r["flops"].as_f64().unwrap(), 4.0 * heads * n * n * d, "{r}");
        }
    }
    for r in &matmul {
        assert_eq!(r["n"], 256);
        assert_eq!(r["flops"].as_f64().unwrap(), 2.0 * 256f64.powi(3));
        assert!(r["variant"].as_str().is_some_and(|v| !v.is_empty()), "{r}");
    }
    for r in all {
        let f = r["fraction_of_matmul"].as_f64().unwrap();
        let want = rate(r) / best;
        assert!((f - want).abs() <= 1e-6 * want.abs().max(1.0), "{r}");
        let m = r["matmul_gflops"].as_f64().unwrap();
        assert!((m - best).abs() <= 1e-6 * best, "{r}");
        assert!(r["matmul_variant"].as_str().is_some(), "{r}");
    }
    assert!(
        stdout.contains("calibration: f32 matmul 256x256x256"),
        "{stdout}"
    );
    assert!(stdout.contains("fma/mm"), "{stdout}");
    // FMA and dense for each of the three inputs (all under the default dense limit).
    assert_eq!(records.len(), 6, "{records:#?}");
    for r in &records {
        let kernel = r["kernel"].as_str().unwrap();
        assert!(kernel == "fma" || kernel == "dense");
        let n = r["n"].as_u64().unwrap();
        assert!([256, 1024].contains(&n) || (n == 256 && r["layout"] == "2d 16x16"));
        assert_eq!(r["d"], 32);
        assert!(r["median_ms"].as_f64().unwrap() > 0.0);
        assert!(!r["adapter"].as_str().unwrap().is_empty());
        let peak = r["peak_bytes"].as_u64().unwrap();
        let qkvo = r["qkvo_bytes"].as_u64().unwrap();
        assert_eq!(qkvo, 4 * n * 32 * 4);
        assert!(peak >= qkvo, "{r}");
        assert!(r["flops"].as_f64().unwrap() > 0.0);
    }
    let dense_1k = records
        .iter()
        .find(|r| r["kernel"] == "dense" && r["n"] == 1024 && r["layout"] == "1d")
        .unwrap();
    assert_eq!(
        dense_1k["flops"].as_f64().unwrap(),
        4.0 * 1024.0 * 1024.0 * 32.0
    );
    for suffix in ["time.svg", "memory.svg"] {
        let svg = std::fs::read_to_string(dir.join(format!("plot-{suffix}"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("fma 1d"),
            "{suffix}"
        );
    }
}

#[test]
fn bench_refuses_bad_arguments() {
    let (ok, _, err) = bench(&["--n", "256", "--runs", "0"]);
    assert!(!ok && err.contains("--runs"), "{err}");
    let (ok, _, err) = bench(&["--image", "0x4"]);
    assert!(!ok && err.contains("HEIGHTxWIDTH"), "{err}");
    let (ok, _, err) = bench(&["--n", "256", "--m", "3"]);
    assert!(!ok && err.contains("power of two"), "{err}");
    let (ok, _, err) = bench(&["--n", "256", "--matmul-size", "100"]);
    assert!(!ok && err.contains("multiples of 64"), "{err}");
}
