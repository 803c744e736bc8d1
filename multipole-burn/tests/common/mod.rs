//! Shared by the tests: the cases, random inputs, and the f64 reference's answers.

#![allow(dead_code)]

use burn::tensor::{Device, Tensor, TensorData};
use multipole::{DownsampleWeights, Downsampling, FmaConfig, Geometry, Shape, reference};

/// One checked configuration.
pub struct Case {
    pub name: &'static str,
    pub shape: Shape,
    pub config: FmaConfig,
}

/// Every option the op takes: 1D both ways, 2D, each kind, multiplicity off, the O(n) variant,
/// padding (n not a multiple of the cell), batch x heads > 1, a level cap and none.
pub fn cases() -> Vec<Case> {
    let seq = |m, p| FmaConfig::new(m, p);
    vec![
        Case {
            name: "1D mean, padded",
            shape: Shape::new(2, 2, 37, 4),
            config: seq(4, 2),
        },
        Case {
            name: "1D causal basis",
            shape: Shape::new(1, 3, 40, 3),
            config: FmaConfig {
                causal: true,
                downsampling: Downsampling::Basis,
                ..seq(4, 2)
            },
        },
        Case {
            name: "1D depthwise, no multiplicity",
            shape: Shape::new(1, 2, 33, 5),
            config: FmaConfig {
                downsampling: Downsampling::Depthwise,
                multiplicity: false,
                ..seq(4, 4)
            },
        },
        Case {
            name: "2D depthwise, padded image",
            shape: Shape::new(1, 2, 9 * 11, 4),
            config: FmaConfig {
                downsampling: Downsampling::Depthwise,
                ..seq(2, 4).image(9, 11)
            },
        },
        Case {
            name: "2D mean",
            shape: Shape::new(2, 1, 16 * 16, 8),
            config: seq(4, 4).image(16, 16),
        },
        Case {
            name: "O(n) variant, basis",
            shape: Shape::new(1, 2, 50, 4),
            config: FmaConfig {
                downsampling: Downsampling::Basis,
                downsample_queries: true,
                ..seq(4, 2)
            },
        },
        Case {
            name: "O(n) variant 2D, depthwise",
            shape: Shape::new(1, 1, 12 * 12, 4),
            config: FmaConfig {
                downsampling: Downsampling::Depthwise,
                downsample_queries: true,
                ..seq(2, 4).image(12, 12)
            },
        },
        Case {
            name: "levels capped at 1, depthwise",
            shape: Shape::new(1, 2, 70, 4),
            config: FmaConfig {
                downsampling: Downsampling::Depthwise,
                ..seq(4, 2).max_levels(1)
            },
        },
        Case {
            name: "2D sliding window (no level)",
            shape: Shape::new(1, 2, 10 * 13, 4),
            config: seq(2, 4).image(10, 13).max_levels(0),
        },
    ]
}

/// Deterministic values in [-1, 1) from a seed (no RNG crate needed).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The learned weights of a case: the mean initialisation, perturbed so that a kernel reading
/// the wrong weight shows.
pub fn weights(case: &Case) -> Option<DownsampleWeights> {
    let c = &case.config;
    if !c.downsampling.is_learned() {
        return None;
    }
    let g = Geometry::new(case.shape.n, c).unwrap();
    let mut w = DownsampleWeights::mean_init(c.downsampling, &g, case.shape.d);
    if c.downsample_queries {
        w = w.with_query_weights();
    }
    let packed = w.packed();
    let noise = values(packed.len(), 99);
    let packed: Vec<f32> = packed.iter().zip(noise).map(|(a, b)| a + 0.2 * b).collect();
    Some(
        DownsampleWeights::from_packed(
            c.downsampling,
            &g,
            case.shape.d,
            c.downsample_queries,
            &packed,
        )
        .unwrap(),
    )
}

pub fn tensor4(data: &[f32], s: Shape, device: &Device) -> Tensor<4> {
    Tensor::from_data(
        TensorData::new(data.to_vec(), [s.batch, s.heads, s.n, s.d]),
        device,
    )
}

pub fn tensor1(data: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(data.to_vec(), [data.len()]), device)
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// |a - b| <= atol + rtol |b| everywhere; the first failure names the index and both values.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, reference {w}"
        );
    }
}

/// Runs `attend` (an FMA call on autodiff tensors of `device`) on every case and checks O,
/// LSE and every gradient of sum(O * G) against the f64 reference.
pub fn check_against_reference(
    device: &Device,
    attend: impl Fn(
        Tensor<4>,
        Tensor<4>,
        Tensor<4>,
        Option<Tensor<1>>,
        &FmaConfig,
    ) -> (Tensor<4>, Tensor<3>),
) {
    for case in cases() {
        let s = case.shape;
        let e = s.elements();
        let (q, k, v, g) = (values(e, 1), values(e, 2), values(e, 3), values(e, 4));
        let w = weights(&case);
        let want = reference::fma_forward(&q, &k, &v, s, &case.config, w.as_ref()).unwrap();
        let grads = reference::fma_backward(&q, &k, &v, &g, s, &case.config, w.as_ref()).unwrap();

        let tq = tensor4(&q, s, device).require_grad();
        let tk = tensor4(&k, s, device).require_grad();
        let tv = tensor4(&v, s, device).require_grad();
        let tw = w
            .as_ref()
            .map(|w| tensor1(&w.packed(), device).require_grad());
        let (o, lse) = attend(tq.clone(), tk.clone(), tv.clone(), tw.clone(), &case.config);
        let name = case.name;
        assert_close(&format!("{name}: O"), &host(o.clone()), &want.o, 2e-5, 1e-4);
        assert_close(&format!("{name}: LSE"), &host(lse), &want.lse, 2e-5, 1e-4);

        let loss = (o * tensor4(&g, s, device)).sum();
        let back = loss.backward();
        let grad = |t: &Tensor<4>| host(t.grad(&back).expect("tracked input has a gradient"));
        assert_close(&format!("{name}: dQ"), &grad(&tq), &grads.dq, 5e-5, 1e-3);
        assert_close(&format!("{name}: dK"), &grad(&tk), &grads.dk, 5e-5, 1e-3);
        assert_close(&format!("{name}: dV"), &grad(&tv), &grads.dv, 5e-5, 1e-3);
        if let Some(tw) = &tw {
            let dw = host(tw.grad(&back).expect("tracked weights have a gradient"));
            assert_close(&format!("{name}: dW"), &dw, &grads.dw.packed(), 2e-4, 1e-3);
        }
    }
}

/// A tiny model end to end: x `[1, n, c]` projected to q, k, v by three weight matrices, FMA
/// with learned (basis) downsampling, and a fixed readout. The autodiff gradients of the
/// projections and of the downsampling weights must match central differences of the loss.
pub fn finite_difference_check(
    device: &Device,
    attend: impl Fn(
        Tensor<4>,
        Tensor<4>,
        Tensor<4>,
        Option<Tensor<1>>,
        &FmaConfig,
    ) -> (Tensor<4>, Tensor<3>),
) {
    let (n, c, h, d) = (24, 6, 2, 3);
    let config = FmaConfig {
        downsampling: Downsampling::Basis,
        ..FmaConfig::new(4, 2)
    };
    let g = Geometry::new(n, &config).unwrap();
    assert!(g.num_levels() > 0, "the model must have a far field");
    let x = values(n * c, 11);
    let readout = values(h * n * d, 12);
    let init = [
        values(c * h * d, 13),
        values(c * h * d, 14),
        values(c * h * d, 15),
    ];
    let w0: Vec<f32> = DownsampleWeights::mean_init(config.downsampling, &g, d)
        .packed()
        .iter()
        .zip(values(1 << 12, 16))
        .map(|(a, b)| a + 0.3 * b)
        .collect();
    let loss = |p: &[Vec<f32>; 3], w: &[f32], track: bool| {
        let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [1, n, c]), device);
        let params: Vec<Tensor<2>> = p
            .iter()
            .map(|m| {
                let t = Tensor::<2>::from_data(TensorData::new(m.clone(), [c, h * d]), device);
                if track { t.require_grad() } else { t }
            })
            .collect();
        let wt = tensor1(w, device);
        let wt = if track { wt.require_grad() } else { wt };
        let proj = |m: &Tensor<2>| {
            xt.clone()
                .matmul(m.clone().unsqueeze::<3>())
                .reshape([1, n, h, d])
                .swap_dims(1, 2)
        };
        let (o, _) = attend(
            proj(&params[0]),
            proj(&params[1]),
            proj(&params[2]),
            Some(wt.clone()),
            &config,
        );
        let r = Tensor::<4>::from_data(TensorData::new(readout.clone(), [1, h, n, d]), device);
        ((o * r).sum(), params, wt)
    };
    let (l, params, wt) = loss(&init, &w0, true);
    let grads = l.backward();
    let eps = 1e-2f32;
    let scalar = |t: Tensor<1>| host(t)[0] as f64;
    // A few entries of each projection and of the downsampling weights.
    for (which, param) in params.iter().enumerate() {
        let analytic = host(param.grad(&grads).expect("projection gradient"));
        for idx in [0, 7, 17, c * h * d - 1] {
            let mut up = init.clone();
            let mut down = init.clone();
            up[which][idx] += eps;
            down[which][idx] -= eps;
            let fd = (scalar(loss(&up, &w0, false).0) - scalar(loss(&down, &w0, false).0))
                / (2.0 * eps as f64);
            let a = analytic[idx] as f64;
            assert!(
                (fd - a).abs() <= 2e-3 + 2e-2 * fd.abs(),
                "projection {which}[{idx}]: autodiff {a}, finite difference {fd}"
            );
        }
    }
    let analytic = host(wt.grad(&grads).expect("weights gradient"));
    for idx in [0, 3, w0.len() / 2, w0.len() - 1] {
        let (mut up, mut down) = (w0.clone(), w0.clone());
        up[idx] += eps;
        down[idx] -= eps;
        let fd = (scalar(loss(&init, &up, false).0) - scalar(loss(&init, &down, false).0))
            / (2.0 * eps as f64);
        let a = analytic[idx] as f64;
        assert!(
            (fd - a).abs() <= 2e-3 + 2e-2 * fd.abs(),
            "downsampling weight [{idx}]: autodiff {a}, finite difference {fd}"
        );
    }
}
