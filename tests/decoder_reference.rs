//! The CPU decoder (docs/fma.md §14) against the causal forward: for every token t, its output
//! and LSE equal row t of `fma_forward` (prefill of any length, then steps), its state depends
//! only on the number of levels, and bad inputs are typed errors.

mod common;

use common::{max_abs_diff, qkv, random, weights};
use multipole::reference::{self, Decoder};
use multipole::{DownsampleWeights, Downsampling, FmaConfig, FmaError, Geometry, Output, Shape};

const KINDS: [Downsampling; 3] = [
    Downsampling::Mean,
    Downsampling::Basis,
    Downsampling::Depthwise,
];

fn causal(m: usize, p: usize, kind: Downsampling, multiplicity: bool) -> FmaConfig {
    FmaConfig {
        causal: true,
        downsampling: kind,
        multiplicity,
        ..FmaConfig::new(m, p)
    }
}

/// Token i of every sequence of a [bh, n, d] tensor, as [bh, d].
fn token(x: &[f32], bh: usize, n: usize, d: usize, i: usize) -> Vec<f32> {
    (0..bh)
        .flat_map(|h| x[(h * n + i) * d..(h * n + i + 1) * d].iter().copied())
        .collect()
}

/// Feeds `prefill` tokens through `prefill` and the rest through `step`; returns every
/// token's output laid out as the forward's.
fn decode(
    dec: &mut Decoder,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    prefill: usize,
) -> Output {
    let (bh, n, d) = (shape.bh(), shape.n, shape.d);
    let head = |x: &[f32]| -> Vec<f32> {
        (0..bh)
            .flat_map(|h| x[h * n * d..(h * n + prefill) * d].iter().copied())
            .collect()
    };
    let first = dec.prefill(&head(q), &head(k), &head(v), prefill).unwrap();
    assert_eq!(dec.len(), prefill);
    let mut out = Output {
        o: vec![f32::NAN; bh * n * d],
        lse: vec![f32::NAN; bh * n],
    };
    for h in 0..bh {
        for i in 0..prefill {
            out.o[(h * n + i) * d..(h * n + i + 1) * d]
                .copy_from_slice(&first.o[(h * prefill + i) * d..(h * prefill + i + 1) * d]);
            out.lse[h * n + i] = first.lse[h * prefill + i];
        }
    }
    for i in prefill..n {
        let s = dec
            .step(
                &token(q, bh, n, d, i),
                &token(k, bh, n, d, i),
                &token(v, bh, n, d, i),
            )
            .unwrap();
        for h in 0..bh {
            out.o[(h * n + i) * d..(h * n + i + 1) * d].copy_from_slice(&s.o[h * d..(h + 1) * d]);
            out.lse[h * n + i] = s.lse[h];
        }
    }
    assert_eq!(dec.len(), n);
    out
}

/// Rows `rows` of every sequence of two outputs laid out as the forward's: the largest
/// difference of O and of LSE, asserted to be at most `tol`.
fn rows_close(
    what: &str,
    got: &Output,
    want: &Output,
    shape: Shape,
    rows: std::ops::Range<usize>,
    tol: f32,
) -> f32 {
    let (bh, n, d) = (shape.bh(), shape.n, shape.d);
    let pick = |out: &Output| -> (Vec<f32>, Vec<f32>) {
        let o = (0..bh)
            .flat_map(|h| out.o[(h * n + rows.start) * d..(h * n + rows.end) * d].to_vec())
            .collect();
        let lse = (0..bh)
            .flat_map(|h| out.lse[h * n + rows.start..h * n + rows.end].to_vec())
            .collect();
        (o, lse)
    };
    let ((go, gl), (wo, wl)) = (pick(got), pick(want));
    let len = rows.len();
    let (eo, at) = max_abs_diff(&go, &wo);
    assert!(
        eo <= tol,
        "{what}: o of head {} row {} got {} want {}",
        at / (len * d).max(1),
        rows.start + at / d.max(1) % len.max(1),
        go.get(at).copied().unwrap_or(0.0),
        wo.get(at).copied().unwrap_or(0.0),
    );
    let (el, at) = max_abs_diff(&gl, &wl);
    assert!(
        el <= tol,
        "{what}: lse of head {} row {} got {} want {}",
        at / len.max(1),
        rows.start + at % len.max(1),
        gl.get(at).copied().unwrap_or(0.0),
        wl.get(at).copied().unwrap_or(0.0),
    );
    eo.max(el)
}

/// A prefill on an empty decoder returns one causal forward over the prompt, so its rows are
/// checked against the decoder stepped token by token from empty (which shares no code with
/// the forward, and is itself checked against it); the steps after a prefill against the
/// forward.
#[test]
fn every_token_equals_its_row_of_the_causal_forward() {
    // n = 100 on m = 4: n' = 128, four coarse levels crossed as the sequence grows.
    let (m, p, n, d) = (4, 2, 100, 5);
    let shape = Shape::new(2, 2, n, d);
    let (q, k, v) = qkv(7, shape);
    let mut worst = 0f32;
    for kind in KINDS {
        for multiplicity in [true, false] {
            let cfg = causal(m, p, kind, multiplicity);
            let g = Geometry::new(n, &cfg).unwrap();
            assert_eq!(g.num_levels(), 4);
            let w = weights(3, kind, &g, d);
            let want = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
            let what = format!("{kind:?} multiplicity={multiplicity}");
            let mut dec = Decoder::new(&cfg, Some(&w), 2, 2, d).unwrap();
            let stepped = decode(&mut dec, &q, &k, &v, shape, 0);
            let err = rows_close(
                &format!("{what} stepped"),
                &stepped,
                &want,
                shape,
                0..n,
                1e-5,
            );
            worst = worst.max(err);
            for prefill in [1, m - 1, m, 2 * m + 1, 37, n] {
                let mut dec = Decoder::new(&cfg, Some(&w), 2, 2, d).unwrap();
                let got = decode(&mut dec, &q, &k, &v, shape, prefill);
                let what = format!("{what} prefill={prefill}");
                let err = rows_close(
                    &format!("{what}: prefill vs stepped"),
                    &got,
                    &stepped,
                    shape,
                    0..prefill,
                    1e-5,
                );
                worst = worst.max(err);
                let err = rows_close(
                    &format!("{what}: steps vs forward"),
                    &got,
                    &want,
                    shape,
                    prefill..n,
                    1e-5,
                );
                worst = worst.max(err);
            }
        }
    }
    eprintln!("largest decoder-vs-forward difference: {worst:e}");
}

#[test]
fn other_cells_and_ranks_match_too() {
    // p = 1 (one coarse key per group), p = m (every token its own segment), m = 1.
    for (m, p, n, d) in [(2, 1, 70, 3), (4, 4, 64, 2), (1, 1, 40, 4), (8, 2, 130, 3)] {
        for kind in KINDS {
            let cfg = causal(m, p, kind, true);
            let shape = Shape::new(1, 1, n, d);
            let (q, k, v) = qkv(11 + m as u64, shape);
            let w = weights(5, kind, &Geometry::new(n, &cfg).unwrap(), d);
            let want = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
            let what = format!("m={m} p={p} {kind:?}");
            let mut dec = Decoder::new(&cfg, Some(&w), 1, 1, d).unwrap();
            let stepped = decode(&mut dec, &q, &k, &v, shape, 0);
            rows_close(
                &format!("{what} stepped"),
                &stepped,
                &want,
                shape,
                0..n,
                1e-5,
            );
            // The prefill's rows against the stepped decoder (the prefill runs the forward).
            let prefill = 2 * m + 1;
            let mut dec = Decoder::new(&cfg, Some(&w), 1, 1, d).unwrap();
            let got = decode(&mut dec, &q, &k, &v, shape, prefill);
            let what = format!("{what} prefill={prefill}");
            rows_close(&what, &got, &stepped, shape, 0..prefill, 1e-5);
            rows_close(&what, &got, &want, shape, prefill..n, 1e-5);
        }
    }
}

#[test]
fn prefill_leaves_the_state_stepping_leaves() {
    let (m, n, d) = (4, 45, 3);
    let shape = Shape::new(1, 2, n, d);
    let (q, k, v) = qkv(21, shape);
    for kind in KINDS {
        let cfg = causal(m, 2, kind, true);
        let w = weights(2, kind, &Geometry::new(64, &cfg).unwrap(), d);
        let mut stepped = Decoder::new(&cfg, Some(&w), 1, 2, d).unwrap();
        decode(&mut stepped, &q, &k, &v, shape, 0);
        let mut prefilled = Decoder::new(&cfg, Some(&w), 1, 2, d).unwrap();
        prefilled.prefill(&q, &k, &v, n).unwrap();
        assert_eq!(prefilled, stepped, "{kind:?}");
        // A prefill after earlier tokens continues the sequence.
        let mut split = Decoder::new(&cfg, Some(&w), 1, 2, d).unwrap();
        decode(&mut split, &q, &k, &v, Shape::new(1, 2, n, d), 9);
        assert_eq!(split, stepped, "{kind:?}");
        // reset forgets everything.
        split.reset().unwrap();
        assert_eq!(split, Decoder::new(&cfg, Some(&w), 1, 2, d).unwrap());
    }
}

#[test]
fn state_bytes_grow_with_the_levels_only() {
    // Mean, m = 32, p = 4, d = 4, stepped to 1M tokens generated on the fly (nothing stored):
    // the state at every length is a fixed part plus a fixed size per level, and a level is
    // added each time the length doubles.
    let (m, p, d) = (32, 4, 4);
    let mut dec = Decoder::new(&causal(m, p, Downsampling::Mean, true), None, 1, 1, d).unwrap();
    let base = dec.state_bytes();
    let one_level = dec.levels();
    let mut per_level = None;
    let mut seen = Vec::new();
    for i in 0..(1usize << 20) {
        let x = random(i as u64, 3 * d);
        let out = dec.step(&x[..d], &x[d..2 * d], &x[2 * d..]).unwrap();
        assert!(out.lse[0].is_finite(), "token {i}");
        let len = dec.len();
        // levels: 1, plus one each time the length reaches a group size m, 2m, 4m, ...
        let want_levels = 1 + (0..).take_while(|&l| m << l <= len).count();
        assert_eq!(dec.levels(), want_levels, "after {len} tokens");
        let extra = dec.state_bytes() - base;
        let levels = dec.levels() - one_level;
        match extra.checked_div(levels) {
            Some(per) => assert_eq!(extra, *per_level.get_or_insert(per) * levels, "at {len}"),
            None => assert_eq!(extra, 0),
        }
        if [1 << 10, 1 << 16, 1 << 20].contains(&len) {
            seen.push((len, dec.levels(), dec.state_bytes()));
        }
    }
    eprintln!("Mean m={m} p={p} d={d}: (tokens, levels, state bytes) {seen:?}");
    assert_eq!(
        seen.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![7, 13, 17]
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let d = 4;
    let cfg = causal(4, 2, Downsampling::Mean, true);
    // a bidirectional config
    let err = Decoder::new(&FmaConfig::new(4, 2), None, 1, 1, d).unwrap_err();
    assert!(matches!(err, FmaError::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("causal"), "{err}");
    // head dims the kernels do not support
    for bad in [0, 129] {
        let err = Decoder::new(&cfg, None, 1, 1, bad).unwrap_err();
        assert_eq!(err, FmaError::UnsupportedHeadDim(bad));
    }
    // no sequences
    assert!(matches!(
        Decoder::new(&cfg, None, 0, 1, d),
        Err(FmaError::BadShape { .. })
    ));
    // wrong shapes
    let mut dec = Decoder::new(&cfg, None, 2, 1, d).unwrap();
    let x = random(1, 2 * d);
    let err = dec.step(&x[..d], &x, &x).unwrap_err();
    assert!(matches!(err, FmaError::BadShape { .. }), "{err}");
    let err = dec.prefill(&x, &x, &x, 2).unwrap_err();
    assert!(matches!(err, FmaError::BadShape { .. }), "{err}");
    assert_eq!(dec.len(), 0, "a failed call changes nothing");
    // learned kinds need weights, of the right shape
    let basis = causal(4, 2, Downsampling::Basis, true);
    let err = Decoder::new(&basis, None, 1, 1, d).unwrap_err();
    assert!(matches!(err, FmaError::Weights(_)), "{err}");
    let g = Geometry::new(32, &basis).unwrap(); // 2 levels: up to 32 tokens
    let w = DownsampleWeights::mean_init(Downsampling::Depthwise, &g, d);
    let err = Decoder::new(&basis, Some(&w), 1, 1, d).unwrap_err();
    assert!(matches!(err, FmaError::Weights(_)), "{err}");
    // steps past the learned weights' length name that length
    let w = DownsampleWeights::mean_init(Downsampling::Basis, &g, d);
    let mut dec = Decoder::new(&basis, Some(&w), 1, 1, d).unwrap();
    assert_eq!(dec.capacity(), Some(32));
    let x = random(2, 33 * d);
    dec.prefill(&x[..32 * d], &x[..32 * d], &x[..32 * d], 32)
        .unwrap();
    let err = dec.step(&x[..d], &x[..d], &x[..d]).unwrap_err();
    assert!(matches!(err, FmaError::Weights(_)), "{err}");
    assert!(err.to_string().contains("32 tokens"), "{err}");
    let mut dec = Decoder::new(&basis, Some(&w), 1, 1, d).unwrap();
    let err = dec.prefill(&x, &x, &x, 33).unwrap_err();
    assert!(err.to_string().contains("32 tokens"), "{err}");
    assert_eq!(dec.len(), 0);
}
