//! The Burn-ops path on the ndarray backend against the f64 reference: O, LSE, and every
//! gradient through Burn's autodiff, for every option.

// ndarray, Burn's long-standing CPU backend, is deprecated in favour of Flex; either runs the
// Burn-ops path, and ndarray is the one the issue names.
#![allow(deprecated)]

mod common;

use burn::tensor::Device;
use common::check_against_reference;

#[test]
fn burn_ops_match_the_reference_on_ndarray() {
    let device = Device::ndarray().autodiff();
    check_against_reference(&device, |q, k, v, w, config| {
        multipole_burn::fma_attention(q, k, v, w, config).expect("valid case")
    });
}

#[test]
fn a_tiny_model_matches_finite_differences_on_ndarray() {
    let device = Device::ndarray().autodiff();
    common::finite_difference_check(&device, |q, k, v, w, config| {
        multipole_burn::fma_attention(q, k, v, w, config).expect("valid model")
    });
}
