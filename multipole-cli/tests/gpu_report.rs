//! `multipole gpu-report --quick`: the report writes its JSON, summary and plots, its checks
//! pass on this adapter, and it says what its budget made it skip.

use std::process::Command;

/// Runs `gpu-report --quick --cases 2 --runs 1 --name NAME --out DIR` with `extra` flags,
/// asserts it neither panicked nor failed, and returns its stdout and the folder.
fn report(name: &str, extra: &[&str]) -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("multipole-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .args([
            "gpu-report",
            "--quick",
            "--cases",
            "2",
            "--runs",
            "1",
            "--name",
            name,
        ])
        .args(extra)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("panicked"),
        "gpu-report panicked: {stderr}"
    );
    assert!(
        out.status.success(),
        "gpu-report failed: {stderr}\n{stdout}"
    );
    (stdout, dir)
}

#[test]
fn gpu_report_writes_its_files_and_its_checks_pass() {
    let (stdout, dir) = report("test-adapter", &[]);
    assert!(stdout.contains("adapter: "), "{stdout}");
    assert!(stdout.contains("checks passed"), "{stdout}");

    let json = std::fs::read_to_string(dir.join("test-adapter.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    let adapter = &r["adapter"];
    for key in ["name", "backend", "device_type", "driver", "timing"] {
        assert!(adapter[key].is_string(), "adapter.{key}: {adapter}");
    }
    assert!(!adapter["features"].as_array().unwrap().is_empty());
    assert!(adapter["limits"]["max_storage_buffer_binding_size"].as_u64() > Some(0));

    // The browser page's checks (5 FMA cases and 2 ViTs) and the random cases, all passed.
    assert_eq!(r["checks_passed"], true);
    let checks = r["checks"].as_array().unwrap();
    let browser = checks.iter().filter(|c| c["group"] == "browser").count();
    assert!(browser >= 7, "{checks:#?}");
    let random = checks.iter().filter(|c| c["group"] == "random").count();
    // At least one random case ran: a report whose budget skipped them all checked nothing.
    assert!(random >= 1, "no random case ran: {checks:#?}");
    assert_eq!(
        random as u64 + r["random_cases_skipped"].as_u64().unwrap(),
        2,
        "{checks:#?}"
    );
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:#?}");

    // The calibration and the sweep: every record has its fraction of the calibration.
    assert!(r["matmul_gflops"].as_f64().unwrap() > 0.0);
    assert!(r["matmul_variant"].is_string());
    let records = r["records"].as_array().unwrap();
    assert!(records.iter().any(|x| x["kernel"] == "matmul"));
    for kernel in ["fma", "fma_backward", "dense"] {
        for layout in ["1d", "2d 32x32"] {
            assert!(
                records
                    .iter()
                    .any(|x| x["kernel"] == kernel && x["layout"] == layout && x["n"] == 1024),
                "{kernel} {layout}: {records:#?}"
            );
        }
    }
    for x in records {
        assert!(x["fraction_of_matmul"].as_f64().unwrap() > 0.0, "{x}");
        assert!(x["gflops"].as_f64().unwrap() > 0.0, "{x}");
    }
    // Whatever the budget skipped is listed with a reason (and printed).
    for s in r["skipped"].as_array().unwrap() {
        let reason = s["reason"].as_str().unwrap();
        assert!(!reason.is_empty(), "{s}");
        assert!(stdout.contains(reason), "{reason} not printed");
    }

    let md = std::fs::read_to_string(dir.join("test-adapter.md")).unwrap();
    assert!(
        md.contains("| kernel | input |") && md.contains("Calibration"),
        "{md}"
    );
    for suffix in ["time.svg", "memory.svg"] {
        let svg = std::fs::read_to_string(dir.join(format!("test-adapter-{suffix}"))).unwrap();
        assert!(svg.starts_with("<svg"), "{suffix}");
    }
}

#[test]
fn a_tiny_budget_skips_and_says_why() {
    let (stdout, dir) = report("tiny", &["--budget-s", "0.001"]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tiny.json")).unwrap()).unwrap();
    // The budget is spent before the random cases and the sweep: both are skipped, and said.
    assert_eq!(r["random_cases_skipped"], 2);
    let skipped = r["skipped"].as_array().unwrap();
    assert!(skipped.len() >= 6, "{skipped:#?}");
    assert!(
        stdout.contains("skipped fma 1d n=1024: the 0 s budget is spent"),
        "{stdout}"
    );
}

#[test]
fn an_out_path_that_is_a_file_fails_before_measuring() {
    let file = std::env::temp_dir().join(format!("multipole-report-file-{}", std::process::id()));
    std::fs::write(&file, "not a folder").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_multipole"))
        .args(["gpu-report", "--quick", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("--out must be a folder"), "{stderr}");
    // Refused before the adapter was even opened: nothing was measured.
    assert!(!stdout.contains("adapter: "), "{stdout}");
}
