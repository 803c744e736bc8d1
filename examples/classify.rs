//! Classifies digit images with the shipped FMA vision transformer on the GPU.
//!
//! `cargo run --release --example classify -- digit.png [more.png ...]`
//! (the CLI's `multipole classify` does the same with more options).

use multipole::GpuContext;
use multipole::model::mnist::place_centred;
use multipole::model::preprocess::digit_from_bytes;
use multipole::model::{Prediction, VitGpu, VitWeights};

fn main() -> multipole::Result<()> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: classify IMAGE.png [IMAGE.jpg ...]");
        std::process::exit(2);
    }
    let weights = VitWeights::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/web/models/fma-vit-mnist.safetensors"
    ))?;
    let ctx = GpuContext::new_blocking()?;
    let model = VitGpu::new(&ctx, &weights, 1)?;
    for file in files {
        // Decode, then scale and centre the ink as MNIST did.
        let digit = match std::fs::read(&file)
            .map_err(|e| multipole::FmaError::Model(e.to_string()))
            .and_then(|b| digit_from_bytes(&b))
        {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{file}: {e}");
                continue;
            }
        };
        let mut image = Vec::new();
        place_centred(&digit, &weights.config, &mut image)?;
        let logits = model.logits_blocking(&ctx, &image)?;
        let p = &Prediction::from_logits(&logits, weights.config.classes)[0];
        println!("{file}: {} ({:.1}%)", p.class, 100.0 * p.probs[p.class]);
    }
    Ok(())
}
