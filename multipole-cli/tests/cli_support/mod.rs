//! What the tests of the `multipole` binary share: a scratch folder per test binary and one
//! way to run a subcommand that reads an input file and writes an output file.
#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// `name` in a scratch folder of this process, `multipole-<tag>-<pid>` (made if missing).
pub fn scratch(tag: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multipole-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `multipole <command> --input <input> --output <output> <extra...>`: whether it succeeded,
/// and its stderr. A panic is never an acceptable answer, whatever the arguments.
pub fn run(command: &str, input: &Path, output: &Path, extra: &[&str]) -> (bool, String) {
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

/// `run("attend", ...)`.
pub fn attend(input: &Path, output: &Path, extra: &[&str]) -> (bool, String) {
    run("attend", input, output, extra)
}
