//! The kernels on Burn's wgpu backend (lavapipe in CI) against the f64 reference: O, LSE and
//! every gradient under `Autodiff`, for every option; the device shared with Burn; typed errors.
//! No adapter is a failure, never a skip.

// ndarray, Burn's long-standing CPU backend, is deprecated in favour of Flex; either runs the
// Burn-ops path, and ndarray is the one the issue names.
#![allow(deprecated)]

mod common;

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};
use common::{check_against_reference, host, tensor4, values};
use multipole::{FmaConfig, Shape};
use multipole_burn::Error;

/// Burn's wgpu device, shared with multipole once per test process.
fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| multipole_burn::init_wgpu().expect("a wgpu adapter (lavapipe in CI)"))
        .clone()
}

#[test]
fn kernels_match_the_reference_under_autodiff() {
    let device = device().autodiff();
    check_against_reference(&device, |q, k, v, w, config| {
        multipole_burn::fma_attention_kernels(q, k, v, w, config).expect("valid case")
    });
}

#[test]
fn kernels_without_autodiff_match_burn_ops_on_the_same_device() {
    let device = device();
    let s = Shape::new(1, 2, 70, 8);
    let config = FmaConfig {
        causal: true,
        ..FmaConfig::new(8, 4)
    };
    let x = |seed| tensor4(&values(s.elements(), seed), s, &device);
    let (q, k, v) = (x(7), x(8), x(9));
    let (o, lse) =
        multipole_burn::fma_attention_kernels(q.clone(), k.clone(), v.clone(), None, &config)
            .unwrap();
    let (o2, lse2) = multipole_burn::fma_attention_ops(q, k, v, None, &config).unwrap();
    common::assert_close("O", &host(o), &host(o2), 2e-5, 1e-4);
    common::assert_close("LSE", &host(lse), &host(lse2), 2e-5, 1e-4);
}

/// q, k and v as slices of one Burn tensor (one buffer), and Burn's own work before and after
/// the op on the shared device and queue.
#[test]
fn slices_of_one_buffer_and_burn_work_around_the_op() {
    let device = device();
    let s = Shape::new(1, 2, 40, 4);
    let config = FmaConfig::new(4, 2);
    let qkv = tensor4(
        &values(3 * s.elements(), 5),
        Shape::new(1, 2, 40, 12),
        &device,
    );
    // Burn work queued before the op: the op must see its result.
    let qkv = qkv.mul_scalar(2.0).add_scalar(-0.5);
    let q = qkv.clone().narrow(3, 0, 4);
    let k = qkv.clone().narrow(3, 4, 4);
    let v = qkv.clone().narrow(3, 8, 4);
    let host_of = |t: Tensor<4>| host(t);
    let (hq, hk, hv) = (host_of(q.clone()), host_of(k.clone()), host_of(v.clone()));
    let (o, _) = multipole_burn::fma_attention_kernels(q, k, v, None, &config).unwrap();
    // Burn work queued after the op reads its output.
    let o = host(o.mul_scalar(3.0));
    let want = multipole::reference::fma_forward(&hq, &hk, &hv, s, &config, None).unwrap();
    let want: Vec<f32> = want.o.iter().map(|x| x * 3.0).collect();
    common::assert_close("3 O", &o, &want, 6e-5, 1e-4);
}

#[test]
fn bad_inputs_get_typed_errors() {
    let device = device();
    let s = Shape::new(1, 1, 32, 4);
    let x = || tensor4(&values(s.elements(), 1), s, &device);
    let config = FmaConfig::new(4, 2);
    let short = tensor4(&values(31 * 4, 1), Shape::new(1, 1, 31, 4), &device);
    match multipole_burn::fma_attention(x(), short, x(), None, &config) {
        Err(Error::BadTensor { what, .. }) => assert_eq!(what, "k"),
        other => panic!("k of another shape: {:?}", other.map(|_| ())),
    }
    let bad_m = FmaConfig::new(3, 1);
    assert!(matches!(
        multipole_burn::fma_attention(x(), x(), x(), None, &bad_m),
        Err(Error::Fma(multipole::FmaError::InvalidConfig(_)))
    ));
    let basis = FmaConfig {
        downsampling: multipole::Downsampling::Basis,
        ..config.clone()
    };
    match multipole_burn::fma_attention(x(), x(), x(), None, &basis) {
        Err(Error::BadTensor { what, .. }) => assert_eq!(what, "weights"),
        other => panic!("basis without weights: {:?}", other.map(|_| ())),
    }
    let wrong = Tensor::<1>::zeros([3], &device);
    match multipole_burn::fma_attention(x(), x(), x(), Some(wrong), &basis) {
        Err(Error::BadTensor { what, .. }) => assert_eq!(what, "weights"),
        other => panic!("weights of the wrong length: {:?}", other.map(|_| ())),
    }
    // A tensor of another backend given to the kernel-only call.
    let cpu = Device::ndarray();
    let y = || tensor4(&values(s.elements(), 1), s, &cpu);
    assert!(matches!(
        multipole_burn::fma_attention_kernels(y(), y(), y(), None, &config),
        Err(Error::NotWgpu { .. })
    ));
}

#[test]
fn a_tiny_model_matches_finite_differences_on_the_kernels() {
    let device = device().autodiff();
    common::finite_difference_check(&device, |q, k, v, w, config| {
        multipole_burn::fma_attention_kernels(q, k, v, w, config).expect("valid model")
    });
}

/// Burn's wgpu runtime starts once per process: a second `init_wgpu` returns the same device,
/// still shared with multipole.
#[test]
fn init_wgpu_twice_gives_the_same_device() {
    let a = multipole_burn::init_wgpu().expect("a wgpu adapter (lavapipe in CI)");
    let b = multipole_burn::init_wgpu().expect("the same device again");
    assert_eq!(a, b);
    assert!(multipole_burn::context(&b).is_some());
}
