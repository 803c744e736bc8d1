//! `multipole classify IMAGE...`: digits in PNG or JPEG files through the FMA ViT on the GPU.

use std::path::PathBuf;

use multipole::model::mnist::{centre_offset, place_centred};
use multipole::model::preprocess::digit_from_bytes;
use multipole::model::{CpuVit, Prediction, VitGpu, VitWeights};
use multipole::{FmaError, GpuContext};

use crate::burn_device::BurnDevice;

/// The shipped FMA model, built into the binary so that `classify` works from anywhere.
const SHIPPED: &[u8] = include_bytes!("../../web/models/fma-vit-mnist.safetensors");

#[derive(clap::Args)]
pub struct ClassifyArgs {
    /// PNG or JPEG files, any size, colour or grey, dark-on-light or light-on-dark.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Weights (safetensors from `multipole train-mnist`); default: the shipped FMA model.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// One JSON object per image and line: file, class, probs (and error for unreadable files).
    #[arg(long)]
    json: bool,
    /// How many classes to print per image (text output).
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Run the CPU model instead of the GPU.
    #[arg(long)]
    cpu: bool,
    /// Run the ViT of `multipole-vit` (Burn's layers around FMA) on this Burn device instead.
    #[arg(long, value_enum, conflicts_with = "cpu")]
    burn: Option<BurnDevice>,
}

/// Classifies every readable file; reports each unreadable or blank one and fails at the end
/// if any was.
pub fn run(args: &ClassifyArgs) -> multipole::Result<()> {
    let weights = match &args.weights {
        Some(path) => VitWeights::load(path)?,
        None => VitWeights::from_bytes(SHIPPED)?,
    };
    let cfg = &weights.config;
    // A model that cannot take these digits fails once, not once per file.
    centre_offset(cfg)?;
    let mut images = Vec::new();
    let mut readable = Vec::new();
    let mut failed = 0;
    for path in &args.images {
        // A blank picture (no digit) is reported like an unreadable file.
        let placed = std::fs::read(path)
            .map_err(|e| FmaError::Model(format!("cannot read the file ({e})")))
            .and_then(|bytes| digit_from_bytes(&bytes))
            .and_then(|d| place_centred(&d, cfg, &mut images));
        match placed {
            Ok(()) => readable.push(path),
            Err(e) => {
                failed += 1;
                report_error(args.json, path, &e);
            }
        }
    }
    if !readable.is_empty() {
        let logits = if args.cpu {
            CpuVit::new(cfg)?.logits(&weights.params, &images)?
        } else if let Some(device) = args.burn {
            device.logits(&weights, &images)?
        } else {
            let ctx = GpuContext::new_blocking()?;
            VitGpu::new(&ctx, &weights, readable.len())?.logits_blocking(&ctx, &images)?
        };
        for (path, p) in readable
            .iter()
            .zip(Prediction::from_logits(&logits, cfg.classes))
        {
            if args.json {
                let line = serde_json::json!({
                    "file": path.display().to_string(),
                    "class": p.class,
                    "probs": p.probs,
                });
                println!("{line}");
            } else {
                let top: Vec<String> = p
                    .ranked()
                    .into_iter()
                    .take(args.top.max(1))
                    .map(|(c, prob)| format!("{c} ({:.1}%)", 100.0 * prob))
                    .collect();
                println!("{}: {}", path.display(), top.join(", "));
            }
        }
    }
    if failed > 0 {
        return Err(FmaError::Model(format!(
            "{failed} of {} files could not be classified",
            args.images.len()
        )));
    }
    Ok(())
}

fn report_error(json: bool, path: &std::path::Path, e: &FmaError) {
    if json {
        let line =
            serde_json::json!({ "file": path.display().to_string(), "error": e.to_string() });
        println!("{line}");
    }
    eprintln!("error: {}: {e}", path.display());
}
