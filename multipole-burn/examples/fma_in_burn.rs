//! FMA in a Burn training step: one forward and backward on Burn's wgpu device, shared with
//! multipole's kernels. The README's and the crate documentation's example, compiled by
//! `cargo test --workspace --all-targets`; run it with
//! `cargo run --release -p multipole-burn --example fma_in_burn`.

use burn::tensor::{Distribution, Tensor};
use multipole::FmaConfig;

fn main() -> multipole_burn::Result<()> {
    let device = multipole_burn::init_wgpu()?.autodiff();
    let x = || Tensor::<4>::random([1, 8, 4096, 64], Distribution::Default, &device).require_grad();
    let (q, k, v) = (x(), x(), x());
    let (o, _lse) = multipole_burn::fma_attention(q.clone(), k, v, None, &FmaConfig::new(32, 4))?;
    let grads = o.sum().backward();
    let dq = q.grad(&grads).expect("q is tracked");
    println!(
        "dQ: {:?}, |dQ| sum {}",
        dq.dims(),
        dq.abs().sum().into_scalar::<f32>()
    );
    Ok(())
}
