//! The GPU decoders against the CPU: `FmaDecoder` equals `reference::Decoder` (and so the causal
//! forward) at f32 tolerance for every kind, across level boundaries, after prefills of several
//! lengths (a prefill, which runs a forward, against the CPU decoder stepped from empty);
//! steps recorded back to back in one encoder equal steps run one by one; `DenseDecoder`
//! equals causal dense attention.

mod common;

use common::{gpu, max_abs_diff, qkv, random, weights};
use multipole::reference::{self, Decoder};
use multipole::wgpu;
use multipole::{
    DecodeIo, DenseDecoder, Downsampling, FmaConfig, FmaDecoder, FmaError, Geometry, Output,
    Precision, Shape,
};

/// f32 against f64: 1e-4 of max |V| (inputs in [-1, 1)), docs/fma.md §11.
const TOL: f32 = 1e-4;

fn causal(m: usize, p: usize, kind: Downsampling, multiplicity: bool) -> FmaConfig {
    FmaConfig {
        causal: true,
        downsampling: kind,
        multiplicity,
        ..FmaConfig::new(m, p)
    }
}

fn token(x: &[f32], shape: Shape, i: usize) -> Vec<f32> {
    let (bh, n, d) = (shape.bh(), shape.n, shape.d);
    (0..bh)
        .flat_map(|h| x[(h * n + i) * d..(h * n + i + 1) * d].iter().copied())
        .collect()
}

fn prompt(x: &[f32], shape: Shape, len: usize) -> Vec<f32> {
    let (bh, n, d) = (shape.bh(), shape.n, shape.d);
    (0..bh)
        .flat_map(|h| x[h * n * d..(h * n + len) * d].iter().copied())
        .collect()
}

/// The first `len` tokens stepped one by one through the CPU decoder (from empty: no prefill,
/// so no forward), laid out as a prefill's output: [bh, len, d] and [bh, len].
fn step_prompt(
    cpu: &mut Decoder,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    len: usize,
) -> Output {
    assert!(
        cpu.is_empty(),
        "stepping a prompt starts from an empty decoder"
    );
    let (bh, d) = (shape.bh(), shape.d);
    let mut out = Output {
        o: vec![f32::NAN; bh * len * d],
        lse: vec![f32::NAN; bh * len],
    };
    for i in 0..len {
        let [tq, tk, tv] = [q, k, v].map(|x| token(x, shape, i));
        let s = cpu.step(&tq, &tk, &tv).unwrap();
        for h in 0..bh {
            out.o[(h * len + i) * d..(h * len + i + 1) * d]
                .copy_from_slice(&s.o[h * d..(h + 1) * d]);
            out.lse[h * len + i] = s.lse[h];
        }
    }
    out
}

fn close(what: &str, got: &Output, want: &Output) -> f32 {
    let (eo, at) = max_abs_diff(&got.o, &want.o);
    assert!(
        eo <= TOL,
        "{what}: o[{at}] gpu {} cpu {}",
        got.o[at],
        want.o[at]
    );
    let (el, at) = max_abs_diff(&got.lse, &want.lse);
    assert!(
        el <= TOL,
        "{what}: lse[{at}] gpu {} cpu {}",
        got.lse[at],
        want.lse[at]
    );
    eo.max(el)
}

#[test]
fn gpu_decoder_equals_the_cpu_decoder_and_the_forward() {
    let ctx = gpu();
    // n = 100 on m = 4: four coarse levels crossed.
    let (m, p, n, d) = (4, 2, 100, 5);
    let shape = Shape::new(2, 2, n, d);
    let (q, k, v) = qkv(31, shape);
    let mut worst = 0f32;
    for (kind, multiplicity, prefill) in [
        (Downsampling::Mean, true, 0),
        (Downsampling::Mean, false, 2 * m + 1),
        (Downsampling::Basis, true, m - 1),
        (Downsampling::Depthwise, true, 37),
        (Downsampling::Depthwise, false, 1),
        (Downsampling::Basis, false, m),
    ] {
        let cfg = causal(m, p, kind, multiplicity);
        let w = weights(9, kind, &Geometry::new(n, &cfg).unwrap(), d);
        let forward = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
        let mut cpu = Decoder::new(&cfg, Some(&w), 2, 2, d).unwrap();
        let mut dec = FmaDecoder::new(ctx, &cfg, Some(&w), [2, 2, d], n).unwrap();
        let what = format!("{kind:?} multiplicity={multiplicity} prefill={prefill}");
        let [pq, pk, pv] = [&q, &k, &v].map(|x| prompt(x, shape, prefill));
        let got = dec.prefill_blocking(ctx, &pq, &pk, &pv, prefill).unwrap();
        // The prefill runs a causal forward: against the CPU decoder stepped token by token.
        let want = step_prompt(&mut cpu, &q, &k, &v, shape, prefill);
        worst = worst.max(close(&format!("{what} prefill"), &got, &want));
        for i in prefill..n {
            let [tq, tk, tv] = [&q, &k, &v].map(|x| token(x, shape, i));
            let got = dec.step_blocking(ctx, &tq, &tk, &tv).unwrap();
            let want = cpu.step(&tq, &tk, &tv).unwrap();
            worst = worst.max(close(&format!("{what} token {i}"), &got, &want));
            // Mean adds levels as the CPU twin does (up to the 4 the capacity needs), and
            // the state is 4md + 8pd floats per head and level
            let levels = dec.levels();
            assert_eq!(levels, cpu.levels().min(4), "{what} token {i}");
            let want_bytes = 4 * 4 * (4 * m * d + 8 * p * d * levels) as u64;
            assert_eq!(dec.state_bytes(), want_bytes, "{what} token {i}");
            // and row i of the causal forward
            let row = Output {
                o: token(&forward.o, shape, i),
                lse: (0..4).map(|h| forward.lse[h * n + i]).collect(),
            };
            close(&format!("{what} token {i} vs forward"), &got, &row);
        }
        assert_eq!(dec.len(), n);
        // reset starts over: the first token again
        dec.reset(ctx).unwrap();
        let [tq, tk, tv] = [&q, &k, &v].map(|x| token(x, shape, 0));
        let got = dec.step_blocking(ctx, &tq, &tk, &tv).unwrap();
        let row = Output {
            o: token(&forward.o, shape, 0),
            lse: (0..4).map(|h| forward.lse[h * n]).collect(),
        };
        close(&format!("{what} after reset"), &got, &row);
    }
    eprintln!("largest GPU-vs-CPU decoder difference: {worst:e}");
}

/// Steps recorded back to back in one encoder (GPU-resident q, k, v and outputs).
#[test]
fn steps_recorded_in_one_encoder_equal_steps_one_by_one() {
    let ctx = gpu();
    let (m, n, d) = (2, 24, 4);
    let shape = Shape::new(1, 3, n, d);
    let (q, k, v) = qkv(41, shape);
    let cfg = causal(m, 1, Downsampling::Mean, true);
    let want = reference::fma_forward(&q, &k, &v, shape, &cfg, None).unwrap();
    let mut dec = FmaDecoder::new(ctx, &cfg, None, [1, 3, d], n).unwrap();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let make = |bytes: usize, usage| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    let out_usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let rows = 3 * d * 4;
    let all = out_usage | wgpu::BufferUsages::COPY_DST;
    let (o_all, lse_all) = (make(n * rows, all), make(n * 12, all));
    for i in 0..n {
        let [bq, bk, bv] = [&q, &k, &v].map(|x| {
            let b = make(rows, usage);
            ctx.queue
                .write_buffer(&b, 0, bytemuck::cast_slice(&token(x, shape, i)));
            b
        });
        let (o, lse) = (make(rows, out_usage), make(12, out_usage));
        let io = DecodeIo {
            q: &bq,
            k: &bk,
            v: &bv,
            o: &o,
            lse: &lse,
        };
        dec.encode_step(ctx, &mut encoder, &io).unwrap();
        encoder.copy_buffer_to_buffer(&o, 0, &o_all, (i * rows) as u64, rows as u64);
        encoder.copy_buffer_to_buffer(&lse, 0, &lse_all, (i * 12) as u64, 12);
    }
    ctx.queue.submit([encoder.finish()]);
    let o = read(ctx, &o_all, n * 3 * d);
    let lse = read(ctx, &lse_all, n * 3);
    // o holds [token][head][d]; the forward [head][token][d]
    for i in 0..n {
        for h in 0..3 {
            for c in 0..d {
                let (g, w) = (o[(i * 3 + h) * d + c], want.o[(h * n + i) * d + c]);
                assert!((g - w).abs() <= TOL, "token {i} head {h}: {g} vs {w}");
            }
            let (g, w) = (lse[i * 3 + h], want.lse[h * n + i]);
            assert!((g - w).abs() <= TOL, "lse token {i} head {h}: {g} vs {w}");
        }
    }
}

fn read(ctx: &multipole::GpuContext, buf: &wgpu::Buffer, values: usize) -> Vec<f32> {
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (values * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buf, 0, &staging, 0, (values * 4) as u64);
    ctx.queue.submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let data = staging.slice(..).get_mapped_range().unwrap();
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn dense_decoder_equals_causal_dense_attention() {
    let ctx = gpu();
    let (n, d) = (70, 6);
    let shape = Shape::new(2, 1, n, d);
    let (q, k, v) = qkv(51, shape);
    let scale = 1.0 / (d as f32).sqrt();
    let want = reference::dense(&q, &k, &v, shape, true, scale).unwrap();
    for prefill in [0, 33] {
        let mut dec = DenseDecoder::new(ctx, [2, 1, d], n, scale).unwrap();
        let [pq, pk, pv] = [&q, &k, &v].map(|x| prompt(x, shape, prefill));
        let first = dec.prefill_blocking(ctx, &pq, &pk, &pv, prefill).unwrap();
        let rows = Output {
            o: prompt(&want.o, shape, prefill),
            lse: (0..2)
                .flat_map(|h| want.lse[h * n..h * n + prefill].iter().copied())
                .collect(),
        };
        close(&format!("dense prefill={prefill}"), &first, &rows);
        for i in prefill..n {
            let [tq, tk, tv] = [&q, &k, &v].map(|x| token(x, shape, i));
            let got = dec.step_blocking(ctx, &tq, &tk, &tv).unwrap();
            let row = Output {
                o: token(&want.o, shape, i),
                lse: (0..2).map(|h| want.lse[h * n + i]).collect(),
            };
            close(&format!("dense prefill={prefill} token {i}"), &got, &row);
        }
        let x = random(1, 2 * d);
        let err = dec.step_blocking(ctx, &x, &x, &x).unwrap_err();
        assert!(matches!(err, FmaError::LimitExceeded { .. }), "{err}");
    }
}

#[test]
fn gpu_decoder_errors_are_typed() {
    let ctx = gpu();
    let d = 4;
    let cfg = causal(4, 2, Downsampling::Mean, true);
    let err = fails(FmaDecoder::new(
        ctx,
        &FmaConfig::new(4, 2),
        None,
        [1, 1, d],
        64,
    ));
    assert!(matches!(err, FmaError::InvalidConfig(_)), "{err}");
    let err = fails(FmaDecoder::new(ctx, &cfg, None, [1, 1, 129], 64));
    assert_eq!(err, FmaError::UnsupportedHeadDim(129));
    let f16 = FmaConfig {
        precision: Precision::F16,
        ..cfg.clone()
    };
    let err = fails(FmaDecoder::new(ctx, &f16, None, [1, 1, d], 64));
    assert!(matches!(err, FmaError::InvalidConfig(_)), "{err}");
    // learned weights of 2 levels cover 32 tokens: a capacity of 33 names that length
    let basis = causal(4, 2, Downsampling::Basis, true);
    let w = multipole::DownsampleWeights::mean_init(
        Downsampling::Basis,
        &Geometry::new(32, &basis).unwrap(),
        d,
    );
    let err = fails(FmaDecoder::new(ctx, &basis, Some(&w), [1, 1, d], 33));
    assert!(matches!(err, FmaError::Weights(_)), "{err}");
    assert!(err.to_string().contains("32 tokens"), "{err}");
    // wrong shapes, and steps past the capacity
    let mut dec = FmaDecoder::new(ctx, &cfg, None, [1, 2, d], 3).unwrap();
    let x = random(2, 2 * d);
    let err = dec.step_blocking(ctx, &x[..d], &x, &x).unwrap_err();
    assert!(matches!(err, FmaError::BadShape { .. }), "{err}");
    let err = dec.prefill_blocking(ctx, &x, &x, &x, 2).unwrap_err();
    assert!(matches!(err, FmaError::BadShape { .. }), "{err}");
    for _ in 0..3 {
        dec.step_blocking(ctx, &x, &x, &x).unwrap();
    }
    let err = dec.step_blocking(ctx, &x, &x, &x).unwrap_err();
    assert!(matches!(err, FmaError::LimitExceeded { .. }), "{err}");
    assert_eq!(dec.len(), 3);
}

fn fails<T>(r: Result<T, FmaError>) -> FmaError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// Many levels: 3000 tokens on m = 2 (10 levels), a prefill of 2700 (its state built in one
/// dispatch), then steps; every output against the CPU decoder, stepped from empty.
#[test]
fn gpu_decoder_follows_the_cpu_over_many_levels() {
    let ctx = gpu();
    let (m, n, d, prefill) = (2, 3000, 8, 2700);
    let shape = Shape::new(1, 2, n, d);
    let (q, k, v) = qkv(61, shape);
    for kind in [Downsampling::Mean, Downsampling::Depthwise] {
        let cfg = causal(m, 2, kind, true);
        let w = weights(13, kind, &Geometry::new(n, &cfg).unwrap(), d);
        let mut cpu = Decoder::new(&cfg, Some(&w), 1, 2, d).unwrap();
        let mut dec = FmaDecoder::new(ctx, &cfg, Some(&w), [1, 2, d], n).unwrap();
        let [pq, pk, pv] = [&q, &k, &v].map(|x| prompt(x, shape, prefill));
        let got = dec.prefill_blocking(ctx, &pq, &pk, &pv, prefill).unwrap();
        // The prefill runs a causal forward: against the CPU decoder stepped token by token.
        let want = step_prompt(&mut cpu, &q, &k, &v, shape, prefill);
        close(&format!("{kind:?} prefill"), &got, &want);
        for i in prefill..n {
            let [tq, tk, tv] = [&q, &k, &v].map(|x| token(x, shape, i));
            let got = dec.step_blocking(ctx, &tq, &tk, &tv).unwrap();
            let want = cpu.step(&tq, &tk, &tv).unwrap();
            close(&format!("{kind:?} token {i}"), &got, &want);
        }
        assert_eq!(dec.levels(), cpu.levels().min(10), "{kind:?}");
    }
}
