//! `multipole decode`: causal FMA one token at a time (docs/fma.md §14), over the same tensors
//! as `attend`: the first N tokens through `prefill`, the rest through `step`. Its `o` and
//! `lse` equal `attend --causal`'s.

use std::path::PathBuf;

use multipole::reference::Decoder;
use multipole::tensor_file::{Tensor, TensorFile, write_tensors};
use multipole::{FmaConfig, FmaDecoder, FmaError, Geometry, GpuContext, Output, Shape};

use crate::fma_flags::FmaFlags;

// Decoding is 1D only: p's help leaves out the images' rule.
#[derive(clap::Args)]
#[command(mut_arg("p", |a| a.help("Coarse keys per group (divides m)")))]
pub struct DecodeArgs {
    /// Input safetensors, as for `attend`: f32 `q`, `k`, `v` [batch, heads, n, d] and, for
    /// learned downsampling, the weights of the causal forward over n tokens.
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors: `o` [batch, heads, n, d] and `lse` [batch, heads, n].
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    fma: FmaFlags,
    /// Tokens fed through `prefill` (one causal forward) before stepping the rest.
    #[arg(long, default_value_t = 0)]
    prefill: usize,
    /// Run the f64 CPU decoder instead of the GPU.
    #[arg(long)]
    reference: bool,
}

/// Token i of every sequence of a [bh, n, d] tensor, or its first `len` tokens.
fn tokens(x: &[f32], shape: Shape, from: usize, len: usize) -> Vec<f32> {
    let (n, d) = (shape.n, shape.d);
    (0..shape.bh())
        .flat_map(|h| {
            x[(h * n + from) * d..(h * n + from + len) * d]
                .iter()
                .copied()
        })
        .collect()
}

/// Writes a [bh, len, d] output (and its [bh, len] LSE) at token `from` of `out`.
fn place(out: &mut Output, shape: Shape, from: usize, len: usize, part: &Output) {
    let (n, d) = (shape.n, shape.d);
    for h in 0..shape.bh() {
        out.o[(h * n + from) * d..(h * n + from + len) * d]
            .copy_from_slice(&part.o[h * len * d..(h + 1) * len * d]);
        out.lse[h * n + from..h * n + from + len]
            .copy_from_slice(&part.lse[h * len..(h + 1) * len]);
    }
}

pub fn run(args: &DecodeArgs) -> multipole::Result<()> {
    let file = TensorFile::open(&args.input)?;
    let q = file.get("q")?;
    let [batch, heads, n, d] = q.shape[..] else {
        return Err(FmaError::BadShape {
            what: "tensor 'q'".into(),
            expected: "4 dimensions [batch, heads, n, d]".into(),
            got: format!("{:?}", q.shape),
        });
    };
    let k = file.get_shaped("k", &q.shape)?;
    let v = file.get_shaped("v", &q.shape)?;
    let shape = Shape::new(batch, heads, n, d);
    shape.validate()?;
    if args.prefill > n {
        return Err(FmaError::InvalidConfig(format!(
            "--prefill {} is longer than the {n} tokens of the input",
            args.prefill
        )));
    }
    let config = FmaConfig {
        causal: true,
        ..args.fma.config()
    };
    let geometry = Geometry::new(n, &config)?;
    let weights = super::read_weights(&file, &config, &geometry, d)?;
    let w = weights.as_ref();
    let mut out = Output {
        o: vec![0.0; shape.elements()],
        lse: vec![0.0; shape.bh() * n],
    };
    let np = args.prefill;
    let [pq, pk, pv] = [&q.data, &k.data, &v.data].map(|x| tokens(x, shape, 0, np));
    if args.reference {
        let mut dec = Decoder::new(&config, w, batch, heads, d)?;
        place(&mut out, shape, 0, np, &dec.prefill(&pq, &pk, &pv, np)?);
        for i in np..n {
            let [tq, tk, tv] = [&q.data, &k.data, &v.data].map(|x| tokens(x, shape, i, 1));
            place(&mut out, shape, i, 1, &dec.step(&tq, &tk, &tv)?);
        }
    } else {
        let ctx = GpuContext::new_blocking()?;
        let mut dec = FmaDecoder::new(&ctx, &config, w, [batch, heads, d], n)?;
        place(
            &mut out,
            shape,
            0,
            np,
            &dec.prefill_blocking(&ctx, &pq, &pk, &pv, np)?,
        );
        for i in np..n {
            let [tq, tk, tv] = [&q.data, &k.data, &v.data].map(|x| tokens(x, shape, i, 1));
            place(
                &mut out,
                shape,
                i,
                1,
                &dec.step_blocking(&ctx, &tq, &tk, &tv)?,
            );
        }
    }
    let t = |shape: &[usize], data: Vec<f32>| Tensor {
        shape: shape.to_vec(),
        data,
    };
    write_tensors(
        &args.output,
        &[
            ("o", t(&q.shape, out.o)),
            ("lse", t(&[batch, heads, n], out.lse)),
        ],
    )
}
