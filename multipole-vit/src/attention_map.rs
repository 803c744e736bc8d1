//! Where one token's attention went in one block for one image, averaged over the heads: the
//! demo's overlay. The model computes the block's queries and keys on its device; the
//! probabilities come from the core's f64 reference (`reference::query_attention`), so they
//! are exactly the weights FMA mixes values with.

use burn::tensor::{Tensor, TensorData};
use multipole::reference::query_attention;
use multipole::{DownsampleWeights, Shape};

use crate::Vit;
use crate::model::read_f32_async;
use multipole_burn::{Error, Result};

/// The map's types are the CPU model's (`multipole::model`), so both overlays speak one format.
pub use multipole::model::{AttentionMap, FarCell};

/// Token `token`'s attention in block `block` of `model` for one image (`canvas²` pixels).
/// Async: it reads the block's queries and keys back from the device (which never blocks on
/// the web).
pub async fn attention_map(
    model: &Vit,
    image: &[f32],
    block: usize,
    token: usize,
) -> Result<AttentionMap> {
    let c = model.config();
    let tokens = c.tokens();
    if token >= tokens {
        return Err(Error::BadTensor {
            what: "token".into(),
            expected: format!("below {tokens}"),
            got: token.to_string(),
        });
    }
    let device = model.device();
    let images = Tensor::from_data(TensorData::new(image.to_vec(), [1, image.len()]), &device);
    let (q, k) = model.queries_keys(images, block)?;
    let (q, k) = (
        read_f32_async(q, "queries").await?,
        read_f32_async(k, "keys").await?,
    );
    let attn = model.attention(block).ok_or_else(|| Error::BadTensor {
        what: "block".into(),
        expected: format!("below {}", c.depth),
        got: block.to_string(),
    })?;
    let config = attn.config.clone();
    let geometry = multipole::Geometry::new(tokens, &config)?;
    let weights = match &attn.weights {
        Some(p) => Some(DownsampleWeights::from_packed(
            config.downsampling,
            &geometry,
            c.head_dim(),
            config.downsample_queries,
            &read_f32_async(p.val(), "downsampling weights").await?,
        )?),
        None => None,
    };
    let shape = Shape::new(1, c.heads, tokens, c.head_dim());
    let mut map = AttentionMap {
        near: Vec::new(),
        far: Vec::new(),
    };
    let share = 1.0 / c.heads as f64;
    for head in 0..c.heads {
        let a = query_attention(&q, &k, shape, &config, weights.as_ref(), head, token)?;
        if head == 0 {
            map.near = a.near.iter().map(|&(j, _)| (j, 0.0)).collect();
        }
        for (sum, &(_, p)) in map.near.iter_mut().zip(&a.near) {
            sum.1 += (p * share) as f32;
        }
        for f in a.far {
            let (top, left, height, width) = geometry.group_rect(f.level, f.group);
            let p = (f.probability * share) as f32;
            match map
                .far
                .iter_mut()
                .find(|c| (c.level, c.top, c.left) == (f.level, top, left))
            {
                Some(cell) => cell.probability += p,
                None => map.far.push(FarCell {
                    level: f.level,
                    top,
                    left,
                    height,
                    width,
                    probability: p,
                }),
            }
        }
    }
    Ok(map)
}
