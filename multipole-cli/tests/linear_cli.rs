//! `multipole attend --downsample-queries` (the O(n) variant, docs/fma.md §13) on the GPU,
//! against the f64 reference computed in the test: query weights read, gradients written,
//! the causal combination refused (on both paths).

mod cli_support;
#[path = "../../tests/common/mod.rs"]
mod common;
use std::path::{Path, PathBuf};

use cli_support::*;
use common::*;
use multipole::tensor_file::{Tensor, TensorFile, write_tensors};
use multipole::{DownsampleWeights, Downsampling, FmaConfig, Geometry, Shape, reference};

fn tmp(name: &str) -> PathBuf {
    scratch("linear-cli", name)
}

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        data: data.to_vec(),
    }
}

/// q, k, v and every weight the variant reads, as the CLI names them; `skip` is left out.
fn write_input(
    path: &Path,
    dims: [usize; 4],
    [q, k, v]: [&[f32]; 3],
    w: &DownsampleWeights,
    g: &Geometry,
    skip: &str,
) {
    let (d, p) = (dims[3], g.p);
    let mut tensors = vec![
        ("q".to_string(), t(&dims, q)),
        ("k".into(), t(&dims, k)),
        ("v".into(), t(&dims, v)),
    ];
    for (i, (lw, &s)) in w.levels.iter().zip(&g.group_tokens()).enumerate() {
        let l = i + 1;
        let w_shape = if lw.bk.is_empty() {
            vec![p, s]
        } else {
            vec![d, p, s]
        };
        for (name, x) in [("wk", &lw.wk), ("wv", &lw.wv), ("wq", &lw.wq)] {
            tensors.push((format!("{name}.{l}"), t(&w_shape, x)));
        }
        for (name, x) in [("bk", &lw.bk), ("bv", &lw.bv), ("bq", &lw.bq)] {
            if !x.is_empty() {
                tensors.push((format!("{name}.{l}"), t(&[d, p], x)));
            }
        }
    }
    tensors.retain(|(name, _)| name != skip);
    let named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    write_tensors(path, &named).unwrap();
}

/// Mean-initialised weights, perturbed so that a part read into the wrong slot shows.
fn perturbed(kind: Downsampling, g: &Geometry, d: usize) -> DownsampleWeights {
    let mut w = DownsampleWeights::mean_init(kind, g, d).with_query_weights();
    for (i, lw) in w.levels.iter_mut().enumerate() {
        for (j, part) in [
            &mut lw.wk, &mut lw.wv, &mut lw.bk, &mut lw.bv, &mut lw.wq, &mut lw.bq,
        ]
        .into_iter()
        .enumerate()
        {
            let noise = random((i * 6 + j) as u64, part.len());
            for (x, e) in part.iter_mut().zip(noise) {
                *x += 0.05 * e;
            }
        }
    }
    w
}

#[test]
fn attend_downsample_queries_matches_the_reference_with_gradients() {
    let (n, d) = (100, 8);
    let shape = Shape::new(1, 2, n, d);
    let dims = [1, 2, n, d];
    let (q, k, v) = qkv(21, shape);
    let d_o = random(22, shape.elements());
    let cfg = FmaConfig {
        downsampling: Downsampling::Depthwise,
        downsample_queries: true,
        ..FmaConfig::new(8, 2)
    };
    let g = Geometry::new(n, &cfg).unwrap();
    let w = perturbed(Downsampling::Depthwise, &g, d);
    let input = tmp("in.safetensors");
    write_input(&input, dims, [&q, &k, &v], &w, &g, "");
    let grad = tmp("do.safetensors");
    write_tensors(&grad, &[("do", t(&dims, &d_o))]).unwrap();
    let want = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
    let want_grads = reference::fma_backward(&q, &k, &v, &d_o, shape, &cfg, Some(&w)).unwrap();
    let output = tmp("out.safetensors");
    let args = [
        "--m",
        "8",
        "--p",
        "2",
        "--downsampling",
        "depthwise",
        "--downsample-queries",
        "--grad",
        grad.to_str().unwrap(),
    ];
    // The GPU path (the O(n) variant's kernels, forward and backward) against the f64
    // reference computed here.
    let (ok, err) = attend(&input, &output, &args);
    assert!(ok, "attend --downsample-queries failed: {err}");
    let f = TensorFile::open(&output).unwrap();
    assert_close(
        "o",
        &f.get_shaped("o", &dims).unwrap().data,
        &want.o,
        &v,
        1e-4,
    );
    let lse = f.get_shaped("lse", &[1, 2, n]).unwrap();
    assert_close("lse", &lse.data, &want.lse, &want.lse, 1e-4);
    for (name, want) in [
        ("dq", &want_grads.dq),
        ("dk", &want_grads.dk),
        ("dv", &want_grads.dv),
    ] {
        let got = f.get_shaped(name, &dims).unwrap();
        assert_close(name, &got.data, want, want, 1e-3);
    }
    for (i, (lw, &s)) in want_grads
        .dw
        .levels
        .iter()
        .zip(&g.group_tokens())
        .enumerate()
    {
        let l = i + 1;
        for (name, shape, want) in [
            (format!("dwq.{l}"), vec![d, 2, s], &lw.wq),
            (format!("dbq.{l}"), vec![d, 2], &lw.bq),
            (format!("dwk.{l}"), vec![d, 2, s], &lw.wk),
        ] {
            assert!(!want.is_empty(), "{name}");
            let got = f.get_shaped(&name, &shape).unwrap();
            assert_close(&name, &got.data, want, want, 1e-3);
        }
    }
    // The flag matters: without it the same file gives the O(n log n) FMA's output, which
    // differs (and the query weights in the file are simply not read).
    let plain = tmp("plain.safetensors");
    let args = ["--m", "8", "--p", "2", "--downsampling", "depthwise"];
    let (ok, err) = attend(&input, &plain, &args);
    assert!(ok, "{err}");
    let o = TensorFile::open(&plain).unwrap().get("o").unwrap().data;
    let gap = o
        .iter()
        .zip(&want.o)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(gap > 1e-4, "the flag changed nothing");
}

#[test]
fn attend_downsample_queries_on_an_image() {
    let (h, w_img, d) = (12, 10, 4);
    let n = h * w_img;
    let shape = Shape::new(2, 1, n, d);
    let dims = [2, 1, n, d];
    let (q, k, v) = qkv(31, shape);
    let cfg = FmaConfig {
        downsampling: Downsampling::Basis,
        downsample_queries: true,
        ..FmaConfig::new(2, 4).image(h, w_img)
    };
    let g = Geometry::new(n, &cfg).unwrap();
    let w = perturbed(Downsampling::Basis, &g, d);
    let input = tmp("img.safetensors");
    write_input(&input, dims, [&q, &k, &v], &w, &g, "");
    let want = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
    let output = tmp("img-out.safetensors");
    let args = [
        "--m",
        "2",
        "--p",
        "4",
        "--image",
        "12x10",
        "--downsampling",
        "basis",
        "--downsample-queries",
    ];
    // The GPU path against the f64 reference computed here.
    let (ok, err) = attend(&input, &output, &args);
    assert!(ok, "{err}");
    let o = TensorFile::open(&output).unwrap().get("o").unwrap().data;
    assert_close("image o", &o, &want.o, &v, 1e-4);
    // A missing query weight is named.
    let missing = tmp("img-missing.safetensors");
    write_input(&missing, dims, [&q, &k, &v], &w, &g, "wq.2");
    let (ok, err) = attend(&missing, &tmp("img-out2.safetensors"), &args);
    assert!(!ok && err.contains("wq.2"), "{err}");
}

#[test]
fn attend_refuses_causal_downsample_queries() {
    let shape = Shape::new(1, 1, 64, 4);
    let dims = [1, 1, 64, 4];
    let (q, k, v) = qkv(41, shape);
    let input = tmp("causal.safetensors");
    let g = Geometry::new(64, &FmaConfig::new(4, 1)).unwrap();
    write_input(
        &input,
        dims,
        [&q, &k, &v],
        &DownsampleWeights::default(),
        &g,
        "",
    );
    for extra in [&["--reference"][..], &[]] {
        let mut args = vec!["--m", "4", "--p", "1", "--causal", "--downsample-queries"];
        args.extend(extra);
        let (ok, err) = attend(&input, &tmp("causal-out.safetensors"), &args);
        assert!(!ok && err.contains("later tokens"), "{extra:?}: {err}");
    }
}
