//! The study's driver: every method at every FMA budget on one data set, into records.
//!
//! Budget matching: for each FMA (m, p) the budget B is FMA's measured mean keys per query
//! (near keys plus coarse keys, about 3m + 3p log2(n/m) in 1D). The others get: a window of
//! round(B) tokens; round(B) Performer features, Linformer projected rows and Nystromformer
//! landmarks; for clustered keys, the (C clusters, t exact ones) with t in 1..=3 whose
//! expected count t n / C + (C - t) is nearest B (ties to the larger t). Every record holds
//! the keys per query actually measured.

use super::clustered::{clustered, kmeans};
use super::fit::{FitOptions, fit, method_name};
use super::fma::{config, fma, keys_per_query, linear_config, linear_keys};
use super::linformer::{linformer, random_projection};
use super::nystrom::{Pinv, nystrom};
use super::performer::{features, performer};
use super::records::{Record, flops};
use super::window::window;
use super::{Approx, ErrorSum, Problem, exact::exact};
use crate::config::{Downsampling, Layout};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::rng::Rng;
use crate::weights::DownsampleWeights;

/// A baseline at one budget: its name, its run on one head, and its FLOPs per query given
/// the measured keys per query.
type Baseline<'a> = (
    &'static str,
    Box<dyn Fn(&Problem) -> Approx + 'a>,
    Box<dyn Fn(f64) -> f64 + 'a>,
);

/// What to sweep.
#[derive(Clone, Debug)]
pub struct Options {
    pub ms: Vec<usize>,
    pub ps: Vec<usize>,
    /// The (m, p) at which the unfitted learned kinds and the fitted ones are measured.
    pub main: (usize, usize),
    /// Fit Basis and Depthwise at `main` (needs training heads).
    pub fit: Option<FitOptions>,
    /// Queries evaluated per head: all of them up to this many, else a seeded random subset.
    pub max_rows: usize,
    pub kmeans_rounds: usize,
}

/// One group of heads that share downsampling weights (a ViT block; a 1D set has one): its
/// evaluation heads, its training heads, and weights a model shipped with (if any).
pub struct Group {
    pub test: Vec<Problem>,
    pub train: Vec<Problem>,
    pub shipped: Option<(usize, usize, Downsampling, DownsampleWeights)>,
}

/// The query rows evaluated for an n-token head.
pub fn eval_rows(n: usize, max_rows: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    if n <= max_rows {
        return all;
    }
    Rng::new(n as u64).shuffle(&mut all);
    let mut rows = all[..max_rows].to_vec();
    rows.sort_unstable();
    rows
}

/// (C, t) for clustered keys at budget B over n keys.
pub fn cluster_sizes(n: usize, budget: f64) -> (usize, usize) {
    let mut best = (f64::INFINITY, 1, 1);
    for t in 1..=3usize {
        for c in t + 1..=n {
            let k = (t * n) as f64 / c as f64 + (c - t) as f64;
            let gap = (k - budget).abs();
            if gap < best.0 || (gap == best.0 && t > best.2) {
                best = (gap, c, t);
            }
        }
    }
    (best.1.min(n), best.2.min(n))
}

/// Whether (m, p) is a valid FMA configuration for this layout.
fn valid(layout: Layout, m: usize, p: usize) -> bool {
    match layout {
        Layout::Sequence => p <= m && m.is_multiple_of(p),
        Layout::Image { .. } => {
            let r = p.isqrt();
            r * r == p && m.is_multiple_of(r)
        }
    }
}

/// Runs every method on `groups` (all heads of one shape) and returns the records.
pub fn evaluate(
    dataset: &str,
    groups: &[Group],
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Record>> {
    let first = groups
        .first()
        .and_then(|g| g.test.first())
        .ok_or_else(|| FmaError::InvalidConfig(format!("data set {dataset} has no heads")))?;
    let (n, d, layout) = (first.n, first.d, first.layout);
    let rows = eval_rows(n, opts.max_rows);
    let truth: Vec<Vec<Vec<f64>>> = groups
        .iter()
        .map(|g| g.test.iter().map(|p| exact(p, &rows).o).collect())
        .collect();
    // Measures one method over every test head: f(group index, head) -> output.
    let measure = |f: &dyn Fn(usize, &Problem) -> Result<Approx>| -> Result<ErrorSum> {
        let mut e = ErrorSum::default();
        for (gi, g) in groups.iter().enumerate() {
            for (h, prob) in g.test.iter().enumerate() {
                e.add(&f(gi, prob)?, &truth[gi][h], d);
            }
        }
        Ok(e)
    };
    let mut out = Vec::new();
    let record = |method: &str, mp: Option<(usize, usize)>, e: &ErrorSum, flops: f64| Record {
        dataset: dataset.into(),
        n,
        method: method.into(),
        m: mp.map(|x| x.0),
        p: mp.map(|x| x.1),
        keys_per_query: e.mean_keys(),
        flops_per_query: flops,
        relative_error: e.relative(),
        max_row_error: e.max_row(),
        split: None,
        budget_of: None,
    };
    for &m in &opts.ms {
        for &p in &opts.ps {
            if !valid(layout, m, p) {
                continue;
            }
            let cfg = config(first, m, p, Downsampling::Mean);
            let levels = Geometry::new(n, &cfg)?.num_levels();
            let budget = keys_per_query(first, m, p)?;
            log(&format!("{dataset} n={n} m={m} p={p}: budget {budget:.1}"));
            let e = measure(&|_, prob| fma(prob, &rows, &cfg, None))?;
            let fl = flops::fma(e.mean_keys(), d, levels, p, false);
            out.push(record("fma-mean", Some((m, p)), &e, fl));
            if p == 1 && layout == Layout::Sequence {
                out.push(record("h-transformer", Some((m, p)), &e, fl));
            }
            {
                // The O(n) variant at the same (m, p): as many keys per softmax, fewer scored.
                let lin = linear_config(first, m, p);
                let e = measure(&|_, prob| fma(prob, &rows, &lin, None))?;
                let (near, far) = linear_keys(first, m, p)?;
                let fl = flops::fma_linear(near, far, d, levels);
                out.push(record("fma-linear", Some((m, p)), &e, fl));
            }
            if (m, p) == opts.main {
                for kind in [Downsampling::Basis, Downsampling::Depthwise] {
                    let cfg = config(first, m, p, kind);
                    let fl = flops::fma(e.mean_keys(), d, levels, p, true);
                    let e = measure(&|gi, prob| {
                        let shipped = groups[gi]
                            .shipped
                            .as_ref()
                            .filter(|s| (s.0, s.1, s.2) == (m, p, kind))
                            .map(|s| &s.3);
                        fma(prob, &rows, &cfg, shipped)
                    })?;
                    out.push(record(method_name(kind, false), Some((m, p)), &e, fl));
                    let Some(fo) = opts.fit else { continue };
                    let mut fitted = Vec::new();
                    let mut train_err = ErrorSum::default();
                    for g in groups {
                        let f = fit(&g.train, &cfg, fo)?;
                        log(&format!(
                            "  fitted {kind:?}: train loss {:.4} -> {:.4}",
                            f.losses[0],
                            f.losses.iter().copied().fold(f64::INFINITY, f64::min)
                        ));
                        for prob in &g.train {
                            let a = fma(prob, &rows, &cfg, Some(&f.weights))?;
                            train_err.add(&a, &exact(prob, &rows).o, d);
                        }
                        fitted.push(f.weights);
                    }
                    let test_err = measure(&|gi, prob| fma(prob, &rows, &cfg, Some(&fitted[gi])))?;
                    for (split, e) in [("train", &train_err), ("test", &test_err)] {
                        let mut r = record(method_name(kind, true), Some((m, p)), e, fl);
                        r.split = Some(split.into());
                        out.push(r);
                    }
                }
            }
            // The baselines at this budget.
            let width = (budget.round() as usize).clamp(1, n);
            let w = features(width, d, 1);
            let proj = random_projection(width, n, 2);
            let (c, t) = cluster_sizes(n, budget);
            let runs: [Baseline; 4] = [
                (
                    "window",
                    Box::new(|prob| window(prob, &rows, width)),
                    Box::new(|k| flops::window(k, d)),
                ),
                (
                    "performer",
                    Box::new(|prob| performer(prob, &rows, &w)),
                    Box::new(|_| flops::performer(width, d)),
                ),
                (
                    "linformer",
                    Box::new(|prob| linformer(prob, &rows, &proj)),
                    Box::new(|_| flops::linformer(width, d)),
                ),
                (
                    "nystromformer",
                    Box::new(|prob| nystrom(prob, &rows, width, Pinv::NewtonSchulz(6))),
                    Box::new(|_| flops::nystrom(width, d, n, 6)),
                ),
            ];
            for (name, run, fl) in &runs {
                let e = measure(&|_, prob| Ok(run(prob)))?;
                let mut r = record(name, None, &e, fl(e.mean_keys()));
                r.budget_of = Some((m, p));
                out.push(r);
            }
            let e = measure(&|_, prob| {
                let cl = kmeans(prob, c, opts.kmeans_rounds, 3);
                Ok(clustered(prob, &rows, &cl, t))
            })?;
            let summaries = (c - t) as f64;
            let fl = flops::clustered(c, opts.kmeans_rounds, summaries, e.mean_keys(), d);
            let mut r = record("clustered", None, &e, fl);
            r.budget_of = Some((m, p));
            out.push(r);
        }
    }
    Ok(out)
}

/// The data seed of a 1D set: fixed per kind and n; the training head uses `seed + 1`.
pub fn seed(kind: super::datasets::Kind, n: usize) -> u64 {
    17_000 + 100 * kind as u64 + n.trailing_zeros() as u64
}

/// A 1D data set as one group: one evaluation head and `train` training heads (other seeds
/// of the same generator).
pub fn sequence_group(kind: super::datasets::Kind, n: usize, d: usize, train: usize) -> Group {
    let s = seed(kind, n);
    Group {
        test: vec![super::datasets::sequence(kind, n, d, s)],
        train: (1..=train as u64)
            .map(|t| super::datasets::sequence(kind, n, d, s + t))
            .collect(),
        shipped: None,
    }
}

/// The ViT set: one group per block, the test digits' heads for evaluation and the training
/// digits' heads for fitting, with the block's own (trained) downsampling weights.
pub fn vit_groups(
    weights: &crate::model::VitWeights,
    test: &crate::model::mnist::Digits,
    train: &crate::model::mnist::Digits,
) -> Result<Vec<Group>> {
    let cfg = &weights.config;
    let tests = super::datasets::vit(weights, test)?;
    let trains = super::datasets::vit(weights, train)?;
    tests
        .into_iter()
        .zip(trains)
        .enumerate()
        .map(|(b, (test, train))| {
            Ok(Group {
                test,
                train,
                shipped: Some((
                    cfg.m,
                    cfg.p,
                    cfg.downsampling,
                    weights.downsample_weights(b)?,
                )),
            })
        })
        .collect()
}
