//! `FmaAttention`: the attention op as a Burn module that owns the learned downsampling
//! weights as one trainable parameter.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use multipole::{DownsampleWeights, FmaConfig, Geometry};

use crate::error::Result;

/// FMA attention for inputs of `n` tokens (a sequence, or an image when `config.layout`
/// says so) and head dim `d`. The learned kinds' weights (one packed vector,
/// `DownsampleWeights::packed`'s layout) start at the mean initialisation; `Mean` has none.
#[derive(Module, Debug)]
pub struct FmaAttention {
    pub weights: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub config: FmaConfig,
}

impl FmaAttention {
    /// The module for `n` tokens of head dim `d` (the hierarchy, and so the weights' shapes,
    /// depend on n).
    pub fn new(config: &FmaConfig, n: usize, d: usize, device: &Device) -> Result<Self> {
        let g = Geometry::new(n, config)?;
        let kind = config.downsampling;
        let weights = kind.is_learned().then(|| {
            let mut w = DownsampleWeights::mean_init(kind, &g, d);
            if config.downsample_queries {
                w = w.with_query_weights();
            }
            let packed = w.packed();
            let len = packed.len();
            Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(packed, [len]),
                device,
            ))
        });
        Ok(FmaAttention {
            weights,
            config: config.clone(),
        })
    }

    /// O and LSE of q, k, v `[batch, heads, n, d]` (see `fma_attention`).
    pub fn forward(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Result<(Tensor<4>, Tensor<3>)> {
        crate::fma_attention(
            q,
            k,
            v,
            self.weights.as_ref().map(|w| w.val()),
            &self.config,
        )
    }
}
