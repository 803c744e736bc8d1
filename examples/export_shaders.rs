//! Writes every shader specialisation as JSON, for compiling them in a browser
//! (web/tests/shader_compile.mjs, run by `cargo xtask test`).
//!
//!   cargo run --example export_shaders -- OUT.json

use multipole::gpu::layers::LAYER_ENTRIES;
use multipole::gpu::shaders::{Family, Spec, source};

fn entries(family: Family) -> &'static [&'static str] {
    match family {
        Family::Downsample => &[
            "downsample_mean",
            "downsample_mean_merge",
            "downsample_basis",
            "downsample_depthwise",
        ],
        Family::Attention => &["near_field", "far_field", "dense_attention"],
        Family::AttentionBackward => &[
            "backward_stats",
            "backward_dq_near",
            "backward_dq_far",
            "backward_dkv_near",
            "backward_dkv_far",
        ],
        Family::DownsampleBackward => &[
            "tokens_mean",
            "tokens_basis",
            "tokens_depthwise",
            "weight_grads_basis",
            "weight_grads_depthwise",
        ],
        Family::Layers => &LAYER_ENTRIES,
    }
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
    let mut items = Vec::new();
    for spec in Spec::all() {
        for family in Family::ALL {
            let names: Vec<String> = entries(family).iter().map(|e| json_string(e)).collect();
            items.push(format!(
                "{{\"name\":{},\"entries\":[{}],\"code\":{}}}",
                json_string(&format!("{family:?} {spec:?}")),
                names.join(","),
                json_string(&source(family, spec))
            ));
        }
    }
    // The layers have no specialisation: one module.
    let names: Vec<String> = LAYER_ENTRIES.iter().map(|e| json_string(e)).collect();
    items.push(format!(
        "{{\"name\":\"Layers\",\"entries\":[{}],\"code\":{}}}",
        names.join(","),
        json_string(&source(Family::Layers, Spec::LAYERS))
    ));
    std::fs::write(&out, format!("[\n{}\n]\n", items.join(",\n")))?;
    println!("wrote {} shader modules to {out}", items.len());
    Ok(())
}
