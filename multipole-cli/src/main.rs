//! The `multipole` command line: FMA on tensors from safetensors files.

mod bench;
mod burn_device;
mod classify;
mod decode;
mod fma_flags;
mod matmul;
mod plot;
mod report;
mod segment;
mod study;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use multipole::tensor_file::{Tensor, TensorFile, write_tensors};
use multipole::{
    DownsampleWeights, Downsampling, FmaConfig, FmaPlan, Geometry, GpuContext, Gradients, Layout,
    LevelWeights, Output, Precision, Shape, reference,
};

#[derive(Parser)]
#[command(
    name = "multipole",
    version,
    about = "Fast Multipole Attention on the GPU (wgpu) and on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// FMA over q, k, v of shape [batch, heads, n, d] from a safetensors file; writes o and lse.
    Attend(AttendArgs),
    /// Causal FMA one token at a time over the same tensors as `attend`: prefill, then steps.
    Decode(decode::DecodeArgs),
    /// FMA against dense attention on this machine's GPU: time, FLOP rates, memory, plots.
    Bench(bench::BenchArgs),
    /// A machine's GPU in one command (at most 8 minutes): adapter, GPU-vs-CPU checks, the
    /// calibration and the bench sweep, into OUT/<adapter>.json, .md and plots.
    GpuReport(report::ReportArgs),
    /// Classify digit images (PNG, JPEG) with the FMA vision transformer on the GPU.
    Classify(classify::ClassifyArgs),
    /// How good the approximation is: FMA against exact attention and other efficient
    /// attentions at matched key budgets (CPU, f64); JSON, markdown and SVG plots.
    Study(study::StudyArgs),
    /// Train the FMA vision transformer (or its dense twin) on MNIST digits, on the CPU.
    TrainMnist(train::TrainArgs),
    /// Train the page segmenter (pixels of many digits to their classes) through Burn, and
    /// score it on held-out canvases at its size and at 4x the side.
    TrainSegment(segment::TrainSegmentArgs),
    /// Colour every pixel of a picture of handwritten digits by its predicted class.
    Segment(segment::SegmentArgs),
}

#[derive(clap::Args)]
struct AttendArgs {
    /// Input safetensors: f32 `q`, `k`, `v` [batch, heads, n, d]; for learned downsampling also
    /// `wk.L`, `wv.L` (and `bk.L`, `bv.L` for depthwise) for each coarse level L = 1, 2, ...,
    /// and with `--downsample-queries` `wq.L` (and `bq.L`) shaped like `wk.L` (`bk.L`).
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors: `o` [batch, heads, n, d] and `lse` [batch, heads, n].
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    fma: fma_flags::FmaFlags,
    /// Treat the n tokens as an image of HxW tokens in row-major order (2D FMA; n = H*W).
    #[arg(long, value_name = "HxW")]
    image: Option<Layout>,
    /// Autoregressive masking.
    #[arg(long)]
    causal: bool,
    /// The O(n) variant: queries are downsampled like keys and the far field is computed once
    /// per segment (bidirectional only).
    #[arg(long)]
    downsample_queries: bool,
    /// Storage precision on the GPU: f32, or f16 (needs the adapter's SHADER_F16; forward
    /// only). Scores and sums stay f32; the output file holds f32 either way.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Run the f64 CPU reference instead of the GPU.
    #[arg(long)]
    reference: bool,
    /// Also run the backward pass for the upstream gradient `do` (shaped like `o`) in this
    /// safetensors file: OUT then also holds `dq`, `dk`, `dv` and, for learned downsampling,
    /// `dwk.L`, `dwv.L` (and `dbk.L`, `dbv.L` for depthwise; `dwq.L`, `dbq.L` with
    /// `--downsample-queries`), shaped like the weights.
    #[arg(long, value_name = "DO.safetensors")]
    grad: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attend(args) => attend(&args),
        Command::Decode(args) => decode::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::GpuReport(args) => report::run(&args),
        Command::TrainMnist(args) => train::run(&args),
        Command::Classify(args) => classify::run(&args),
        Command::Study(args) => study::run(&args),
        Command::TrainSegment(args) => segment::train_run(&args),
        Command::Segment(args) => segment::segment_run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn attend(args: &AttendArgs) -> multipole::Result<()> {
    let file = TensorFile::open(&args.input)?;
    let q = file.get("q")?;
    let [batch, heads, n, d] = q.shape[..] else {
        return Err(multipole::FmaError::BadShape {
            what: "tensor 'q'".into(),
            expected: "4 dimensions [batch, heads, n, d]".into(),
            got: format!("{:?}", q.shape),
        });
    };
    let k = file.get_shaped("k", &q.shape)?;
    let v = file.get_shaped("v", &q.shape)?;
    let shape = Shape::new(batch, heads, n, d);
    let config = FmaConfig {
        layout: args.image.unwrap_or_default(),
        causal: args.causal,
        precision: args.precision,
        downsample_queries: args.downsample_queries,
        ..args.fma.config()
    };
    shape.validate()?;
    let geometry = Geometry::new(n, &config)?;
    let weights = read_weights(&file, &config, &geometry, d)?;
    let d_o = match &args.grad {
        Some(path) => Some(TensorFile::open(path)?.get_shaped("do", &q.shape)?.data),
        None => None,
    };
    let (qkv, w) = ([&q.data[..], &k.data, &v.data], weights.as_ref());
    let (out, grads) = if args.reference {
        on_cpu(qkv, d_o.as_deref(), shape, &config, w)?
    } else {
        on_gpu(qkv, d_o.as_deref(), shape, &config, w)?
    };
    let mut tensors = vec![
        ("o".to_string(), tensor(&q.shape, out.o)),
        ("lse".to_string(), tensor(&[batch, heads, n], out.lse)),
    ];
    if let Some(g) = grads {
        tensors.extend(gradient_tensors(g, &config, &geometry, &q.shape));
    }
    let (names, tensors): (Vec<String>, Vec<Tensor>) = tensors.into_iter().unzip();
    let named: Vec<(&str, Tensor)> = names.iter().map(String::as_str).zip(tensors).collect();
    write_tensors(&args.output, &named)
}

/// The forward, and the backward for `d_o` where given, by the f64 CPU reference.
fn on_cpu(
    [q, k, v]: [&[f32]; 3],
    d_o: Option<&[f32]>,
    shape: Shape,
    config: &FmaConfig,
    w: Option<&DownsampleWeights>,
) -> multipole::Result<(Output, Option<Gradients>)> {
    let out = reference::fma_forward(q, k, v, shape, config, w)?;
    let grads = match d_o {
        Some(d_o) => Some(reference::fma_backward(q, k, v, d_o, shape, config, w)?),
        None => None,
    };
    Ok((out, grads))
}

/// The forward, and the backward for `d_o` where given, on the GPU.
fn on_gpu(
    [q, k, v]: [&[f32]; 3],
    d_o: Option<&[f32]>,
    shape: Shape,
    config: &FmaConfig,
    w: Option<&DownsampleWeights>,
) -> multipole::Result<(Output, Option<Gradients>)> {
    let ctx = GpuContext::new_blocking()?;
    let plan = FmaPlan::new(&ctx, shape, config, w)?;
    let tape = pollster::block_on(plan.forward_tape(&ctx, q, k, v))?;
    let grads = match d_o {
        Some(d_o) => Some(plan.backward_blocking(&ctx, &tape, d_o)?),
        None => None,
    };
    Ok((tape.out, grads))
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        data,
    }
}

/// `dq`, `dk`, `dv` shaped like q, and the weight gradients named and shaped like the
/// input's weights (`dwk.L` for `wk.L`, ...).
fn gradient_tensors(
    g: Gradients,
    config: &FmaConfig,
    geometry: &Geometry,
    q_shape: &[usize],
) -> Vec<(String, Tensor)> {
    let d = q_shape[3];
    let mut tensors = vec![
        ("dq".into(), tensor(q_shape, g.dq)),
        ("dk".into(), tensor(q_shape, g.dk)),
        ("dv".into(), tensor(q_shape, g.dv)),
    ];
    let p = geometry.p;
    for (i, (lw, s)) in
        g.dw.levels
            .into_iter()
            .zip(geometry.group_tokens())
            .enumerate()
    {
        let l = i + 1;
        let w_shape = match config.downsampling {
            Downsampling::Depthwise => vec![d, p, s],
            _ => vec![p, s],
        };
        tensors.push((format!("dwk.{l}"), tensor(&w_shape, lw.wk)));
        tensors.push((format!("dwv.{l}"), tensor(&w_shape, lw.wv)));
        let depthwise = config.downsampling == Downsampling::Depthwise;
        if depthwise {
            tensors.push((format!("dbk.{l}"), tensor(&[d, p], lw.bk)));
            tensors.push((format!("dbv.{l}"), tensor(&[d, p], lw.bv)));
        }
        if config.downsample_queries {
            tensors.push((format!("dwq.{l}"), tensor(&w_shape, lw.wq)));
            if depthwise {
                tensors.push((format!("dbq.{l}"), tensor(&[d, p], lw.bq)));
            }
        }
    }
    tensors
}

/// `wk.L`, `wv.L` (and `bk.L`, `bv.L`; `wq.L`, `bq.L` for the O(n) variant) for
/// L = 1..levels, shaped as the geometry requires.
fn read_weights(
    file: &TensorFile,
    config: &FmaConfig,
    g: &Geometry,
    d: usize,
) -> multipole::Result<Option<DownsampleWeights>> {
    // The geometry's p: the config's, or clipped to a cell that covers the whole input.
    let p = g.p;
    // Query weights exist only in the O(n) variant; without it they stay empty.
    let query = |name: String, shape: &[usize]| -> multipole::Result<Vec<f32>> {
        match config.downsample_queries {
            true => Ok(file.get_shaped(&name, shape)?.data),
            false => Ok(Vec::new()),
        }
    };
    let levels = match config.downsampling {
        Downsampling::Mean => return Ok(None),
        Downsampling::Basis => g
            .group_tokens()
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                Ok(LevelWeights {
                    wk: file.get_shaped(&format!("wk.{}", i + 1), &[p, s])?.data,
                    wv: file.get_shaped(&format!("wv.{}", i + 1), &[p, s])?.data,
                    wq: query(format!("wq.{}", i + 1), &[p, s])?,
                    ..Default::default()
                })
            })
            .collect::<multipole::Result<Vec<_>>>()?,
        Downsampling::Depthwise => g
            .group_tokens()
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let l = i + 1;
                Ok(LevelWeights {
                    wk: file.get_shaped(&format!("wk.{l}"), &[d, p, s])?.data,
                    wv: file.get_shaped(&format!("wv.{l}"), &[d, p, s])?.data,
                    bk: file.get_shaped(&format!("bk.{l}"), &[d, p])?.data,
                    bv: file.get_shaped(&format!("bv.{l}"), &[d, p])?.data,
                    wq: query(format!("wq.{l}"), &[d, p, s])?,
                    bq: query(format!("bq.{l}"), &[d, p])?,
                })
            })
            .collect::<multipole::Result<Vec<_>>>()?,
    };
    Ok(Some(DownsampleWeights { levels }))
}
