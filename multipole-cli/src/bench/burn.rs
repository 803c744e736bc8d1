//! `bench --burn`: one training step (forward and backward) of Burn's own attention against
//! Burn + FMA (`multipole-burn`) on one wgpu device, side by side at each n: time, memory, and
//! where Burn's attention stops.
//!
//! Burn's attention under autodiff materialises the `[batch, heads, n, n]` scores; FMA's op
//! keeps O(n). Time is the wall clock of a step with the device synchronised at its end
//! (median of --runs after a warm-up step). Memory: the bytes Burn's pools hold after the
//! steps (its high-water mark: pools keep their pages), plus, for FMA, the buffers
//! multipole's plans own (their coarse rows, statistics and the copies of the op's inputs and
//! outputs).

use std::time::Instant;

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Tensor};
use multipole::{FmaConfig, FmaError, Result, wgpu};
use serde::Serialize;

use super::BenchArgs;

#[derive(Serialize)]
struct BurnRecord {
    kernel: &'static str,
    n: usize,
    heads: usize,
    d: usize,
    causal: bool,
    /// Median wall time of one step (forward, backward, synchronised), in ms; None where the
    /// kernel does not fit.
    step_ms: Option<f64>,
    /// Burn's pool reservation after the steps, plus multipole's own buffers (FMA).
    peak_bytes: Option<u64>,
    /// Why there is no measurement: the limit Burn's scores exceed.
    limit: Option<String>,
    adapter: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let device = multipole_burn::init_wgpu().map_err(to_fma)?.autodiff();
    let ctx = multipole_burn::context(&device)
        .ok_or_else(|| FmaError::Gpu("the wgpu device was not registered".into()))?;
    let limits = ctx.limits();
    let (heads, d) = (args.heads(), args.d);
    let ns = if args.n.is_empty() {
        vec![1024, 4096, 16384, 65536]
    } else {
        args.n.clone()
    };
    let runs = args.runs.max(1);
    let config = FmaConfig {
        causal: args.causal,
        ..args.fma.config()
    };
    println!(
        "bench --burn on {}: one training step (forward + backward), {heads} heads, d = {d}, {runs} runs after a warm-up",
        ctx.describe()
    );
    println!(
        "{:>7} | {:>14} {:>12} | {:>14} {:>12} | Burn's attention",
        "n", "Burn+FMA ms", "FMA MiB", "Burn ms", "Burn MiB"
    );
    let mut records = Vec::new();
    for &n in &ns {
        // Only this size's plan counts towards its memory.
        multipole_burn::release_plans();
        let fma = measure(&device, heads, n, d, runs, |q, k, v| {
            multipole_burn::fma_attention(q, k, v, None, &config)
                .map(|(o, _)| o)
                .map_err(to_fma)
        })?;
        let fma = (fma.0, fma.1 + multipole_burn::kernel_bytes());
        let limit = scores_limit(&limits, heads, n);
        let dense = match &limit {
            Some(_) => None,
            None => Some(measure(&device, heads, n, d, runs, |q, k, v| {
                let options = AttentionModuleOptions {
                    scale: None,
                    softcap: None,
                    is_causal: args.causal,
                };
                Ok(attention(q, k, v, None, None, options))
            })?),
        };
        print_row(n, fma, dense, limit.as_deref());
        let record = |kernel, step: Option<(f64, u64)>, limit| BurnRecord {
            kernel,
            n,
            heads,
            d,
            causal: args.causal,
            step_ms: step.map(|x| x.0),
            peak_bytes: step.map(|x| x.1),
            limit,
            adapter: ctx.info.name.clone(),
        };
        records.push(record("burn+fma", Some(fma), None));
        records.push(record("burn-attention", dense, limit));
    }
    if let Some(path) = &args.json {
        super::write_json(path, &records)?;
    }
    Ok(())
}

/// Why Burn's attention cannot run at n, if it cannot: its unfused attention holds the
/// scores and their softmax, one buffer each, and one must fit the device's limits.
fn scores_limit(limits: &wgpu::Limits, heads: usize, n: usize) -> Option<String> {
    let scores = (heads * n * n * 4) as u64;
    [
        ("storage binding", limits.max_storage_buffer_binding_size),
        ("buffer", limits.max_buffer_size),
    ]
    .into_iter()
    .find(|&(_, max)| scores > max)
    .map(|(what, max)| {
        format!(
            "its n x n scores need {} MiB; the device's largest {what} is {} MiB",
            scores >> 20,
            max >> 20
        )
    })
}

/// One row of the table: FMA's (ms, bytes) next to Burn's attention's, or why it has none.
fn print_row(n: usize, fma: (f64, u64), dense: Option<(f64, u64)>, limit: Option<&str>) {
    let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    println!(
        "{n:>7} | {:>14.1} {:>12} | {:>14} {:>12} | {}",
        fma.0,
        mib(fma.1),
        dense.map_or("-".into(), |x| format!("{:.1}", x.0)),
        dense.map_or("-".into(), |x| mib(x.1)),
        match (limit, dense) {
            (Some(why), _) => format!("does not fit: {why}"),
            (None, Some(x)) => format!(
                "{:.2}x FMA's time, {:.1}x its memory",
                x.0 / fma.0,
                x.1 as f64 / fma.1 as f64
            ),
            (None, None) => String::new(),
        }
    );
}

/// Median step time (ms) and Burn's pool reservation (bytes) of `attend` at this size.
fn measure(
    device: &Device,
    heads: usize,
    n: usize,
    d: usize,
    runs: usize,
    attend: impl Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Result<Tensor<4>>,
) -> Result<(f64, u64)> {
    device.memory_cleanup();
    let x = || Tensor::<4>::random([1, heads, n, d], Distribution::Default, device);
    let (q, k, v, g) = (x(), x(), x(), x());
    let sync = || {
        device
            .sync()
            .map_err(|e| FmaError::Gpu(format!("Burn: {e}")))
    };
    sync()?;
    let step = || -> Result<f64> {
        let (q, k, v) = (
            q.clone().require_grad(),
            k.clone().require_grad(),
            v.clone().require_grad(),
        );
        let start = Instant::now();
        let o = attend(q.clone(), k.clone(), v.clone())?;
        let grads = (o * g.clone()).sum().backward();
        let grads = [&q, &k, &v].map(|t| t.grad(&grads));
        sync()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if grads.iter().any(Option::is_none) {
            return Err(FmaError::Gpu("a tracked input got no gradient".into()));
        }
        Ok(ms)
    };
    step()?;
    let mut times: Vec<f64> = (0..runs).map(|_| step()).collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let bytes = device.memory_pool_usage().map_or(0, |u| u.bytes_reserved);
    Ok((times[times.len() / 2], bytes))
}

fn to_fma(e: multipole_burn::Error) -> FmaError {
    match e {
        multipole_burn::Error::Fma(e) => e,
        other => FmaError::Gpu(other.to_string()),
    }
}
