//! `multipole bench`: FMA against exact (dense) attention on the same adapter, in one run.
//!
//! Each measurement builds its plan first (pipeline creation is not timed), puts random
//! Q, K, V on the GPU, runs one warm-up forward and then `--runs` timed ones, and records the
//! median. GPU time comes from timestamp queries around each stage's pass where the adapter
//! has them (wall time, submit to finish, is recorded too). Memory is what the GPU allocator
//! reports for the measurement's buffers (Q, K, V, O, LSE and the plan's own).
//!
//! Every run first times the calibration (`matmul.rs`: an f32 matrix product, the best of a
//! few variants), and every record carries `fraction_of_matmul`, its rate over the
//! calibration's in the same run.
//!
//! The modules: `sweep` (the default run: which inputs, which kernels), `measure` (one
//! measurement), `calibration`, `records` (what `--json` writes), `flops` (the FLOP
//! conventions), `summary` (what is printed); `decode` and `burn` are the other modes.

use std::path::PathBuf;

use multipole::{FmaError, Layout, Precision, Result};

mod burn;
mod calibration;
mod charts;
mod decode;
mod flops;
mod measure;
mod records;
mod segment;
mod summary;
mod sweep;

pub use calibration::{apply_calibration, calibration, yardstick};
pub use charts::draw;
pub use measure::{Bench, Kernel};
pub use records::{Record, write_json};
pub use summary::{print_progress, summarise};

use crate::fma_flags::FmaFlags;

// The shared FMA flags as a benchmark wants them: --m and --p default to a sweep's sequence
// options (images have --image-m and --image-p) where attend and decode, which compute a given
// model's output, require them; learned kinds run at their initial weights.
#[derive(clap::Args)]
#[command(
    mut_arg("m", |a| a
        .required(false)
        .default_value("32")
        .help("Fine cell size for sequences")),
    mut_arg("p", |a| a
        .required(false)
        .default_value("4")
        .help("Coarse keys per group for sequences")),
    mut_arg("downsampling", |a| a.help(
        "FMA downsampling: mean, basis or depthwise (learned kinds at their initial weights)"
    )),
)]
pub struct BenchArgs {
    /// Sequence lengths (1D), comma separated.
    #[arg(long, value_delimiter = ',')]
    n: Vec<usize>,
    /// Images (2D), comma separated, e.g. 32x32,64x64.
    #[arg(long, value_delimiter = ',', value_name = "HxW,...")]
    image: Vec<Layout>,
    /// Head dimension.
    #[arg(long, default_value_t = 64)]
    d: usize,
    #[command(flatten)]
    fma: FmaFlags,
    /// Fine cell side for images.
    #[arg(long, default_value_t = 4)]
    image_m: usize,
    /// Coarse keys per cell for images (a square).
    #[arg(long, default_value_t = 4)]
    image_p: usize,
    /// Causal attention (sequences only).
    #[arg(long)]
    causal: bool,
    /// batch x heads of every input (default 1; 8 with --burn).
    #[arg(long)]
    heads: Option<usize>,
    /// Timed runs per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Largest n for dense attention (default: 16384 on a software adapter, else 1048576).
    #[arg(long)]
    dense_max: Option<usize>,
    /// Write one JSON record per measurement here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw PREFIX-time.svg and PREFIX-memory.svg.
    #[arg(long, value_name = "PREFIX")]
    plot: Option<PathBuf>,
    /// Redraw the table and plots from a JSON file written earlier; measures nothing.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["n", "image", "quick"])]
    replot: Option<PathBuf>,
    /// Also time FMA's backward pass (dQ, dK, dV and weight gradients) at every input, next to
    /// its forward.
    #[arg(long)]
    backward: bool,
    /// A sweep that finishes in well under a minute on a 2-core software GPU (CI runs it):
    /// n = 1024, 4096, a 32x32 image, 3 runs, a 1024^3 calibration, unless --n, --image or
    /// --matmul-size say otherwise.
    #[arg(long)]
    quick: bool,
    /// Side of the calibration's square f32 matrix product (a multiple of 64; default 2048,
    /// 1024 with --quick).
    #[arg(long)]
    matmul_size: Option<usize>,
    /// Storage precisions of FMA's forward, comma separated: f32, f16 (f16 needs the adapter's
    /// SHADER_F16; its records are kernel "fma_f16"). The backward and dense run in f32.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// With --backward, where the adapter has subgroups: time the backward again with them
    /// turned off (kernel "fma_backward_no_subgroups"), the path browsers take.
    #[arg(long, requires = "backward")]
    without_subgroups: bool,
    /// Time causal decoding instead (FMA's decoder and a dense key-value cache, Mean, d, m,
    /// p as given): tokens/s and state bytes at contexts --n (default 1K..1M; dense up to
    /// --dense-max, default 64K), one record per (kernel, context, batch); --plot draws
    /// PREFIX-decode-time.svg and PREFIX-decode-state.svg.
    #[arg(long)]
    decode: bool,
    /// Batches (sequences of --heads heads) of --decode, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    decode_batch: Vec<usize>,
    /// Steps recorded into one encoder per --decode measurement.
    #[arg(long, default_value_t = 64)]
    decode_steps: usize,
    /// Also time the O(n) variant (coarse queries, docs/fma.md §13; kernel "fma-linear", and
    /// "fma-linear_backward" with --backward) next to FMA and dense at every input.
    #[arg(long)]
    downsample_queries: bool,
    /// Time one training step (forward, backward) of Burn's own attention against Burn + FMA
    /// (`multipole-burn`) on Burn's wgpu device instead: n = --n (default 1K, 4K, 16K, 64K),
    /// --heads (default 8) heads of --d, FMA with --m, --p, --downsampling, --causal; where
    /// Burn's n x n scores exceed the device's binding or buffer limits it reports the limit.
    #[arg(long, conflicts_with_all = ["decode", "image", "backward", "replot"])]
    burn: bool,
    /// Time the page segmenter instead (`multipole-vit`, Burn's wgpu device): its forward and
    /// read-back per canvas with FMA, its sliding window and exact attention, on canvases of
    /// --image pixels (default 64x64, 128x128, 256x256: 1K, 4K, 16K tokens).
    #[arg(long, conflicts_with_all = ["decode", "burn", "backward", "replot"])]
    segment: bool,
}

impl BenchArgs {
    /// Heads of every input: --heads, else 8 for --burn and 1 otherwise.
    pub fn heads(&self) -> usize {
        self.heads.unwrap_or(if self.burn { 8 } else { 1 })
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.decode {
        return decode::run(args);
    }
    if args.burn {
        return burn::run(args);
    }
    if args.segment {
        return segment::run(args);
    }
    if let Some(path) = &args.replot {
        return report(args, &read_records(path)?);
    }
    let records = sweep::run(args)?;
    report(args, &records)
}

/// The records a run wrote with --json, for --replot.
fn read_records(path: &std::path::Path) -> Result<Vec<Record>> {
    let file_err = |message: String| FmaError::TensorFile {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| file_err(format!("not bench records: {e}")))
}

/// Prints the summary, then writes the JSON and the plots where asked.
fn report(args: &BenchArgs, records: &[Record]) -> Result<()> {
    summarise(records);
    if let Some(path) = &args.json {
        records::write_json(path, records)?;
    }
    if let Some(prefix) = &args.plot {
        let files = charts::draw(records, prefix).map_err(|e| FmaError::TensorFile {
            path: prefix.display().to_string(),
            message: e,
        })?;
        println!("plots: {}", files.join(", "));
    }
    Ok(())
}
