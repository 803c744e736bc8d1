//! The study's records (one per data set, size, method and budget), their FLOP counts and the
//! markdown table.

use serde::{Deserialize, Serialize};

/// One measurement. `m`, `p` are FMA's (null for the other methods); `split` is `train` or
/// `test` for fitted weights (null otherwise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub dataset: String,
    pub n: usize,
    pub method: String,
    pub m: Option<usize>,
    pub p: Option<usize>,
    pub keys_per_query: f64,
    pub flops_per_query: f64,
    pub relative_error: f64,
    pub max_row_error: f64,
    pub split: Option<String>,
    /// The FMA (m, p) whose budget a baseline was matched to (not written out).
    #[serde(skip)]
    pub budget_of: Option<(usize, usize)>,
}

/// Every field a record must carry in the JSON file.
pub const FIELDS: [&str; 10] = [
    "dataset",
    "n",
    "method",
    "m",
    "p",
    "keys_per_query",
    "flops_per_query",
    "relative_error",
    "max_row_error",
    "split",
];

/// FLOPs per query (a multiply-add is 2), the work done once for all queries divided by n.
/// `keys` is the measured keys per query; the other arguments are the method's sizes.
pub mod flops {
    /// Exact attention: scores and the weighted sum over n keys.
    pub fn exact(n: usize, d: usize) -> f64 {
        4.0 * (n * d) as f64
    }
    /// FMA: 4d per key scored, plus the downsampling of K and V at every one of the L levels
    /// (Mean: one add per token and channel; Basis and Depthwise: p multiply-adds).
    pub fn fma(keys: f64, d: usize, levels: usize, p: usize, learned: bool) -> f64 {
        let down = if learned { 4 * p * d } else { 2 * d } * levels;
        4.0 * d as f64 * keys + down as f64
    }
    /// FMA's O(n) variant: 4d per near key, 4d per coarse key scored once per segment
    /// (`far`, already divided by n), the Mean downsampling of Q, K and V (one add per token,
    /// channel and level each) and about two d-vector merges per query (the downward pass's
    /// share and its own).
    pub fn fma_linear(near: f64, far: f64, d: usize, levels: usize) -> f64 {
        let d = d as f64;
        4.0 * d * (near + far) + 3.0 * d * levels as f64 + 4.0 * d
    }
    pub fn window(keys: f64, d: usize) -> f64 {
        4.0 * d as f64 * keys
    }
    /// Features of q and k, the key-value sums and the read-out: 2rd each.
    pub fn performer(r: usize, d: usize) -> f64 {
        (8 * r * d + 4 * r) as f64
    }
    /// Projecting K and V (2rd each per token), then attention over r keys.
    pub fn linformer(r: usize, d: usize) -> f64 {
        (8 * r * d) as f64
    }
    /// Query side 4rd, landmark side 4rd per token, and amortised over n: the
    /// Newton-Schulz (`iters` rounds of 4 r x r products) and pinv(A) times B V (2r^2 d).
    pub fn nystrom(r: usize, d: usize, n: usize, iters: usize) -> f64 {
        let (r, d, n) = (r as f64, d as f64, n as f64);
        8.0 * r * d + (8.0 * iters as f64 * r * r * r + 2.0 * r * r * d) / n
    }
    /// k-means (2Cd per token and round), centroid scores (2Cd), 4d per exact key and 2d per
    /// summary key.
    pub fn clustered(c: usize, rounds: usize, summaries: f64, keys: f64, d: usize) -> f64 {
        let (c, d) = (c as f64, d as f64);
        2.0 * c * d * (rounds as f64 + 1.0) + 4.0 * d * (keys - summaries) + 2.0 * d * summaries
    }
}

/// A markdown table of the records matched to one FMA budget (m, p) per data set and size:
/// one row per method, error and cost.
pub fn markdown(records: &[Record], main: &[(String, usize, usize, usize)]) -> String {
    let mut s = String::new();
    for (dataset, n, m, p) in main {
        s += &format!("\n**{dataset}, n = {n}, budget of FMA m = {m}, p = {p}**\n\n");
        s += "| method | keys/query | FLOPs/query | relative error | max row error |\n";
        s += "|---|---:|---:|---:|---:|\n";
        for r in records.iter().filter(|r| {
            &r.dataset == dataset
                && r.n == *n
                && (r.budget_of == Some((*m, *p)) || (r.m == Some(*m) && r.p == Some(*p)))
        }) {
            let name = match &r.split {
                Some(split) => format!("{} ({split})", r.method),
                None => r.method.clone(),
            };
            s += &format!(
                "| {name} | {:.0} | {:.3e} | {:.4} | {:.3} |\n",
                r.keys_per_query, r.flops_per_query, r.relative_error, r.max_row_error
            );
        }
    }
    s
}
