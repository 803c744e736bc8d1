//! Writes every shader specialisation the crate can build as JSON, for compiling them in a
//! browser (web/tests/shader_compile.mjs, run by `cargo xtask test`): each module with its
//! WGSL and every compute entry point in it (read with naga, so a new kernel cannot be left
//! out), whether it needs WebGPU's shader-f16 or subgroups (those modules get the `enable
//! subgroups;` browsers require and naga refuses), and the totals the page must reach:
//! `{"modules": M, "pipelines": P, "shaders": [...]}`.
//!
//!   cargo run --example export_shaders -- OUT.json

use multipole::gpu::layers::LAYER_ENTRIES;
use multipole::gpu::shaders::{Family, Spec, source};

/// The compute entry points declared in `code`, in declaration order.
fn entry_points(name: &str, code: &str) -> Result<Vec<String>, String> {
    let module = naga::front::wgsl::parse_str(code)
        .map_err(|e| format!("{name} does not parse:\n{}", e.emit_to_string(code)))?;
    Ok(module
        .entry_points
        .iter()
        .filter(|e| e.stage == naga::ShaderStage::Compute)
        .map(|e| e.name.clone())
        .collect())
}

/// A JSON string literal (the sources are ASCII; quotes, backslashes and control bytes escaped).
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: export_shaders OUT.json")?;
    // (name, code, needs shader-f16, needs subgroups)
    let mut modules: Vec<(String, String, bool, bool)> = Vec::new();
    for (family, spec) in Spec::builds() {
        modules.push((
            format!("{family:?} {spec:?}"),
            source(family, spec),
            spec.f16,
            spec.subgroups,
        ));
    }
    // The layers have no specialisation: one module.
    let layers = source(Family::Layers, Spec::LAYERS);
    modules.push(("Layers".into(), layers, false, false));

    let mut items = Vec::new();
    let mut pipelines = 0;
    for (name, code, f16, subgroups) in &modules {
        let entries = entry_points(name, code)?;
        let code = if *subgroups {
            format!("enable subgroups;\n{code}")
        } else {
            code.clone()
        };
        if entries.is_empty() {
            return Err(format!("{name} declares no compute entry point").into());
        }
        if name == "Layers" && entries.len() != LAYER_ENTRIES.len() {
            return Err(format!(
                "layers.wgsl has {} entry points but LAYER_ENTRIES lists {}",
                entries.len(),
                LAYER_ENTRIES.len()
            )
            .into());
        }
        pipelines += entries.len();
        let names: Vec<String> = entries.iter().map(|e| json_string(e)).collect();
        items.push(format!(
            "{{\"name\":{},\"f16\":{f16},\"subgroups\":{subgroups},\"entries\":[{}],\"code\":{}}}",
            json_string(name),
            names.join(","),
            json_string(&code)
        ));
    }
    std::fs::write(
        &out,
        format!(
            "{{\"modules\":{},\"pipelines\":{pipelines},\"shaders\":[\n{}\n]}}\n",
            items.len(),
            items.join(",\n")
        ),
    )?;
    println!(
        "wrote {} shader modules ({pipelines} pipelines) to {out}",
        items.len()
    );
    Ok(())
}
