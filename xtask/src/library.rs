//! Checks of the library as a plain dependency sees it (no features): it builds natively, for
//! the browser, and for the DX12 and Metal backends that only other machines can run; its docs
//! build without warnings; and its dependency tree holds none of the demo's crates.

use std::process::Command;

use super::{Result, cargo, ensure_target, run};

/// Targets whose wgpu backends (DX12, Metal, WebGPU) this machine cannot run but must compile.
const CHECK_TARGETS: [&str; 3] = [
    "wasm32-unknown-unknown",
    "x86_64-pc-windows-msvc",
    "aarch64-apple-darwin",
];

/// Crates only the optional features may bring in natively. (On wasm32, wgpu's WebGPU backend
/// itself needs wasm-bindgen; the demo's exports are what the `web` feature adds there.)
const FEATURE_ONLY: [&str; 8] = [
    "clap",
    "plotters",
    "indicatif",
    "image",
    "wasm-bindgen",
    "serde",
    "serde_json",
    "safetensors",
];

pub fn check() -> Result {
    cargo(&[
        "clippy",
        "--lib",
        "--no-default-features",
        "--",
        "-D",
        "warnings",
    ])?;
    for target in CHECK_TARGETS {
        ensure_target(target)?;
        cargo(&[
            "check",
            "--lib",
            "--no-default-features",
            "--target",
            target,
        ])?;
    }
    // Each library feature builds on its own, not only as part of --all-features (cli is
    // all of them but web, which only wasm32 compiles).
    for feature in ["safetensors", "vit"] {
        cargo(&["check", "--all-targets", "--features", feature])?;
    }
    // The browser demo's bindings build for wasm32 (the page itself is built later).
    cargo(&[
        "check",
        "--lib",
        "--features",
        "web",
        "--target",
        "wasm32-unknown-unknown",
    ])?;
    for features in [&["--no-default-features"][..], &["--all-features"]] {
        let mut doc = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        doc.args(["doc", "--no-deps", "--lib", "-p", "multipole"])
            .args(features)
            .env("RUSTDOCFLAGS", "-D warnings");
        run(&mut doc)?;
    }
    let deps = dependencies(None)?;
    let bad: Vec<&str> = FEATURE_ONLY
        .into_iter()
        .filter(|c| deps.iter().any(|d| d == c))
        .collect();
    if !bad.is_empty() {
        return Err(format!(
            "the library without features depends on {bad:?}: put them behind a feature"
        ));
    }
    println!(
        "xtask: the library without features has {} dependencies here, {} over all targets",
        deps.len(),
        dependencies(Some("all"))?.len()
    );
    Ok(())
}

/// The names of the crates the featureless library depends on, for this machine's target or
/// `target` ("all" for every target).
fn dependencies(target: Option<&str>) -> Result<Vec<String>> {
    let mut tree = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    tree.args([
        "tree",
        "-p",
        "multipole",
        "--no-default-features",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    if let Some(t) = target {
        tree.args(["--target", t]);
    }
    let out = tree.output().map_err(|e| format!("cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "multipole")
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}
