//! FMA in Burn tensor ops: runs on every Burn backend (ndarray, CUDA, the CPU runtime, ...)
//! and differentiates through Burn's own autodiff. Gathers and batched matmuls over the index
//! tables of `tables.rs`: memory O(n log n) (each query's near keys and coarse rows, gathered),
//! never n x n. The wgpu backend takes the kernels instead (`kernels.rs`).

use burn::tensor::{Int, Tensor, TensorData};
use multipole::{Downsampling, FmaConfig};

use crate::layout::{Part, WeightLayout};
use crate::tables::Tables;

/// O `[batch, heads, n, d]` and LSE `[batch, heads, n]` of FMA over q, k, v `[batch, heads, n,
/// d]`, with the packed learned weights (None for `Mean`). Inputs are checked by the caller.
pub(crate) fn forward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    weights: Option<Tensor<1>>,
    config: &FmaConfig,
    tables: &Tables,
    layout: &WeightLayout,
) -> (Tensor<4>, Tensor<3>) {
    let [b, h, n, d] = q.dims();
    let bh = b * h;
    let device = q.device();
    let scale = config.scale_for(d);
    let (q, k, v) = (
        q.reshape([bh, n, d]),
        k.reshape([bh, n, d]),
        v.reshape([bh, n, d]),
    );
    let down = Downsample {
        kind: config.downsampling,
        tables,
        layout,
        weights: weights.as_ref(),
        bh,
        d,
    };
    let zero = Tensor::<3>::zeros([bh, 1, d], &device);
    let width = tables.width;
    let index = |values: &[i32]| {
        Tensor::<1, Int>::from_data(TensorData::new(values.to_vec(), [values.len()]), &device)
    };
    let keys = index(&tables.keys);
    let gather = |fine: Tensor<3>, coarse: Option<Tensor<3>>, at: Tensor<1, Int>| {
        let mut parts = vec![fine];
        parts.extend(coarse);
        parts.push(zero.clone());
        Tensor::cat(parts, 1)
            .select(1, at)
            .reshape([bh, n, width, d])
    };
    let has_far = !tables.levels.is_empty();
    let kc = has_far.then(|| down.rows(k.clone(), Part::Wk, Part::Bk));
    let vc = has_far.then(|| down.rows(v.clone(), Part::Wv, Part::Bv));
    let kg = gather(k, kc, keys.clone());
    let vg = gather(v, vc, keys);
    let qs = q.clone().mul_scalar(scale);
    let scores = match &tables.queries {
        // Each source scored by its own query: q_i near, the segment's coarse query far.
        Some(at) if has_far => {
            let qc = down.rows(q, Part::Wq, Part::Bq).mul_scalar(scale);
            let qg = Tensor::cat(vec![qs, qc], 1)
                .select(1, index(at))
                .reshape([bh, n, width, d]);
            (qg * kg).sum_dim(3).reshape([bh, n, width])
        }
        _ => qs
            .reshape([bh, n, 1, d])
            .matmul(kg.swap_dims(2, 3))
            .reshape([bh, n, width]),
    };
    let bias = Tensor::<3>::from_data(TensorData::new(tables.bias.clone(), [1, n, width]), &device);
    let scores = scores + bias.expand([bh, n, width]);
    // Softmax with its log-normaliser; the max only shifts, so it carries no gradient.
    let max = scores.clone().max_dim(2).detach();
    let e = (scores - max.clone()).exp();
    let sum = e.clone().sum_dim(2);
    let lse = max + sum.clone().log();
    let weights = e / sum;
    let o = weights
        .reshape([bh, n, 1, width])
        .matmul(vg)
        .reshape([b, h, n, d]);
    (o, lse.reshape([b, h, n]))
}

/// The coarse rows of one tensor, every level, as Burn ops.
struct Downsample<'a> {
    kind: Downsampling,
    tables: &'a Tables,
    layout: &'a WeightLayout,
    weights: Option<&'a Tensor<1>>,
    bh: usize,
    d: usize,
}

impl Downsample<'_> {
    /// `[bh, rows, d]`: the coarse rows of x `[bh, n, d]`, level 1 first (row `cell * p + r`).
    fn rows(&self, x: Tensor<3>, w_part: Part, b_part: Part) -> Tensor<3> {
        let (bh, d) = (self.bh, self.d);
        let device = x.device();
        let p = self.tables.geometry.p;
        let padded = Tensor::cat(vec![x, Tensor::zeros([bh, 1, d], &device)], 1);
        let levels = self.tables.levels.iter().enumerate().map(|(i, lt)| {
            let (groups, s) = (lt.groups, lt.tokens);
            let at = Tensor::<1, Int>::from_data(
                TensorData::new(lt.gather.clone(), [lt.gather.len()]),
                &device,
            );
            // [bh, groups, s, d]: each group's tokens, zero rows for padding.
            let xg = padded.clone().select(1, at).reshape([bh, groups, s, d]);
            let rows = match self.kind {
                Downsampling::Mean => {
                    let mean = Tensor::<4>::from_data(
                        TensorData::new(lt.mean.clone(), [1, groups, p, s]),
                        &device,
                    );
                    mean.expand([bh, groups, p, s]).matmul(xg)
                }
                Downsampling::Basis => self
                    .part(w_part, i + 1)
                    .reshape([1, 1, p, s])
                    .expand([bh, groups, p, s])
                    .matmul(xg),
                Downsampling::Depthwise => {
                    // out[g, r, c] = sum_t w[c, r, t] x[g, t, c] + b[c, r]: a matmul per channel.
                    let w = self
                        .part(w_part, i + 1)
                        .reshape([1, d, p, s])
                        .swap_dims(2, 3)
                        .expand([bh, d, s, p]);
                    let bias = self.part(b_part, i + 1).reshape([1, d, 1, p]);
                    (xg.permute([0, 3, 1, 2]).matmul(w) + bias.expand([bh, d, groups, p]))
                        .permute([0, 2, 3, 1])
                }
            };
            rows.reshape([bh, groups * p, d])
        });
        Tensor::cat(levels.collect(), 1)
    }

    fn part(&self, part: Part, l: usize) -> Tensor<1> {
        let (at, len) = self.layout.span(part, l);
        self.weights
            .expect("learned kinds are checked to have weights")
            .clone()
            .narrow(0, at, len)
    }
}
