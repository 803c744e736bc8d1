//! The whole ViT on the CPU, forward and backward, generic over the float type: what training
//! runs (f32) and what the GPU model and the gradient checks are compared with (f64).

use num_traits::Float;

use super::attention::{HeadCache, SparseFma};
use super::config::{ParamIndex, VitConfig};
use super::layers::*;
use super::params::Params;
use crate::error::{FmaError, Result};

/// A model's fixed parts: sizes, parameter index and the attention's key lists.
#[derive(Clone, Debug)]
pub struct CpuVit {
    pub config: VitConfig,
    index: ParamIndex,
    attention: SparseFma,
}

/// Where one token's attention went in one block, averaged over the heads: every key it sees
/// at full resolution and every coarse cell, with the probability it received.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionMap {
    /// (token, probability) of the near field.
    pub near: Vec<(usize, f32)>,
    /// The coarse cells: level (1 = finest), top, left, height, width in token-grid
    /// coordinates, and the probability (summed over the cell's p coarse keys).
    pub far: Vec<FarCell>,
}

/// One coarse cell of an `AttentionMap`.
#[derive(Clone, Debug, PartialEq)]
pub struct FarCell {
    pub level: usize,
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
    pub probability: f32,
}

/// What one block's backward needs from its forward.
struct BlockCache<T> {
    x: Vec<T>,
    a: Vec<T>,
    ln1: Vec<[T; 2]>,
    qkv: [Vec<T>; 3],
    heads: Vec<HeadCache<T>>,
    merged: Vec<T>,
    x1: Vec<T>,
    c: Vec<T>,
    ln2: Vec<[T; 2]>,
    u: Vec<T>,
    g: Vec<T>,
}

/// Everything the backward needs from a forward over a batch of images.
pub struct Cache<T> {
    images: usize,
    patches: Vec<T>,
    blocks: Vec<BlockCache<T>>,
    x: Vec<T>,
    ln: Vec<[T; 2]>,
    pooled: Vec<T>,
}

impl<T> Cache<T> {
    /// Block `block`'s queries, keys and values, each `[images * heads, tokens, head_dim]`
    /// (what the approximation study compares attentions on).
    pub fn qkv(&self, block: usize) -> Option<&[Vec<T>; 3]> {
        self.blocks.get(block).map(|b| &b.qkv)
    }
}

impl CpuVit {
    pub fn new(config: &VitConfig) -> Result<CpuVit> {
        Ok(CpuVit {
            config: config.clone(),
            index: config.index()?,
            attention: SparseFma::new(config.tokens(), config.head_dim(), &config.attention())?,
        })
    }

    /// The attention's key lists (which tokens and coarse rows each token sees).
    pub fn attention(&self) -> &SparseFma {
        &self.attention
    }

    fn check(&self, params: &Params<impl Float>, images: usize, len: usize) -> Result<()> {
        let want = self.config.params()?;
        if params.tensors.len() != want.len()
            || params
                .tensors
                .iter()
                .zip(&want)
                .any(|(t, p)| t.len() != p.len())
        {
            return Err(FmaError::Model(
                "parameters do not match the model's sizes".into(),
            ));
        }
        let side = self.config.canvas;
        if images == 0 || len != images * side * side {
            return Err(FmaError::BadShape {
                what: "images".into(),
                expected: format!("a positive multiple of {side} x {side} values"),
                got: format!("{len} values"),
            });
        }
        Ok(())
    }

    /// Logits `[images, classes]` of `images` (`[images, canvas, canvas]`).
    pub fn logits<T: Float>(&self, params: &Params<T>, images: &[T]) -> Result<Vec<T>> {
        self.forward(params, images).map(|(l, _)| l)
    }

    /// Logits and the cache for `backward`.
    pub fn forward<T: Float>(
        &self,
        params: &Params<T>,
        images: &[T],
    ) -> Result<(Vec<T>, Cache<T>)> {
        let cfg = &self.config;
        let side = cfg.canvas;
        let count = images.len() / (side * side).max(1);
        self.check(params, count, images.len())?;
        let (t, d, h, hd) = (cfg.tokens(), cfg.dim, cfg.heads, cfg.head_dim());
        let p = &params.tensors;
        let ix = &self.index;
        let patches = patches(images, side, cfg.patch, cfg.window);
        let mut x = linear(
            &patches,
            &p[ix.patch[0]],
            &p[ix.patch[1]],
            cfg.patch_pixels(),
            d,
        );
        add_position(&mut x, &p[ix.pos]);
        let mut blocks = Vec::with_capacity(cfg.depth);
        for (bi, b) in ix.blocks.iter().enumerate() {
            let (a, ln1) = layer_norm(&x, &p[b.ln1[0]], &p[b.ln1[1]], d);
            let qkv = linear(&a, &p[b.qkv[0]], &p[b.qkv[1]], d, 3 * d);
            let [q, k, v] = split_heads(&qkv, t, h, hd);
            let weights = params.level_refs(cfg, bi)?;
            let mut o = Vec::with_capacity(q.len());
            let mut heads = Vec::with_capacity(count * h);
            for span in (0..count * h).map(|i| i * t * hd..(i + 1) * t * hd) {
                let (oh, cache) =
                    self.attention
                        .forward(&q[span.clone()], &k[span.clone()], &v[span], &weights);
                o.extend(oh);
                heads.push(cache);
            }
            let merged = merge_heads(&o, t, h, hd);
            let mut x1 = linear(&merged, &p[b.proj[0]], &p[b.proj[1]], d, d);
            add_into(&mut x1, &x);
            let (c, ln2) = layer_norm(&x1, &p[b.ln2[0]], &p[b.ln2[1]], d);
            let u = linear(&c, &p[b.fc1[0]], &p[b.fc1[1]], d, cfg.mlp);
            let g = gelu(&u);
            let mut x2 = linear(&g, &p[b.fc2[0]], &p[b.fc2[1]], cfg.mlp, d);
            add_into(&mut x2, &x1);
            blocks.push(BlockCache {
                x: std::mem::replace(&mut x, x2),
                a,
                ln1,
                qkv: [q, k, v],
                heads,
                merged,
                x1,
                c,
                ln2,
                u,
                g,
            });
        }
        let (f, ln) = layer_norm(&x, &p[ix.norm[0]], &p[ix.norm[1]], d);
        let pooled = mean_pool(&f, t, d);
        let logits = linear(&pooled, &p[ix.head[0]], &p[ix.head[1]], d, cfg.classes);
        let cache = Cache {
            images: count,
            patches,
            blocks,
            x,
            ln,
            pooled,
        };
        Ok((logits, cache))
    }

    /// Where `token`'s attention went in block `block` for one image (`[canvas, canvas]`),
    /// from a real forward pass.
    pub fn attention_map(
        &self,
        params: &Params<f32>,
        image: &[f32],
        block: usize,
        token: usize,
    ) -> Result<AttentionMap> {
        let cfg = &self.config;
        if block >= cfg.depth || token >= cfg.tokens() {
            return Err(FmaError::Model(format!(
                "block {block} or token {token} out of range ({} blocks, {} tokens)",
                cfg.depth,
                cfg.tokens()
            )));
        }
        let (_, cache) = self.forward(params, image)?;
        let heads = &cache.blocks[block].heads;
        if cache.images != 1 {
            return Err(FmaError::Model("attention_map takes one image".into()));
        }
        let (near, far) = self.attention.lists(token);
        let mut sum = vec![0.0f32; near.len() + far.len()];
        for hc in heads {
            for (a, &p) in sum.iter_mut().zip(self.attention.query_probs(hc, token)) {
                *a += p / heads.len() as f32;
            }
        }
        let near_map = near.iter().zip(&sum).map(|(&t, &p)| (t, p)).collect();
        let mut cells: Vec<FarCell> = Vec::new();
        for (&(row, _), &p) in far.iter().zip(&sum[near.len()..]) {
            let (level, top, left, height, width) = self.attention.row_rect(row);
            match cells
                .iter_mut()
                .find(|c| (c.level, c.top, c.left) == (level, top, left))
            {
                Some(c) => c.probability += p,
                None => cells.push(FarCell {
                    level,
                    top,
                    left,
                    height,
                    width,
                    probability: p,
                }),
            }
        }
        Ok(AttentionMap {
            near: near_map,
            far: cells,
        })
    }

    /// Gradients of the loss with respect to every parameter, given the loss's gradient with
    /// respect to the logits.
    pub fn backward<T: Float>(
        &self,
        params: &Params<T>,
        cache: &Cache<T>,
        d_logits: &[T],
    ) -> Result<Params<T>> {
        let cfg = &self.config;
        let (t, d, h, hd) = (cfg.tokens(), cfg.dim, cfg.heads, cfg.head_dim());
        if d_logits.len() != cache.images * cfg.classes {
            return Err(FmaError::BadShape {
                what: "logit gradients".into(),
                expected: format!("{} values", cache.images * cfg.classes),
                got: format!("{} values", d_logits.len()),
            });
        }
        let p = &params.tensors;
        let ix = &self.index;
        let mut gr = params.zeros_like();
        let g = &mut gr.tensors;
        // Two gradients of one layer's (weight, bias) pair at once.
        fn two<T>(g: &mut [Vec<T>], [a, b]: [usize; 2]) -> (&mut [T], &mut [T]) {
            assert_ne!(a, b);
            if a < b {
                let (lo, hi) = g.split_at_mut(b);
                (&mut lo[a], &mut hi[0])
            } else {
                let (lo, hi) = g.split_at_mut(a);
                (&mut hi[0], &mut lo[b])
            }
        }
        let (dw, db) = two(g, ix.head);
        let d_pooled = linear_backward(
            &cache.pooled,
            &p[ix.head[0]],
            d_logits,
            dw,
            db,
            d,
            cfg.classes,
        );
        let d_f = mean_pool_backward(&d_pooled, t, d);
        let (dg, db) = two(g, ix.norm);
        let mut dx = layer_norm_backward(&cache.x, &cache.ln, &p[ix.norm[0]], &d_f, dg, db, d);
        for (bi, (b, bc)) in ix.blocks.iter().zip(&cache.blocks).enumerate().rev() {
            // x2 = x1 + fc2(gelu(fc1(ln2(x1)))).
            let (dw, db) = two(g, b.fc2);
            let d_g = linear_backward(&bc.g, &p[b.fc2[0]], &dx, dw, db, cfg.mlp, d);
            let d_u = gelu_backward(&bc.u, &d_g);
            let (dw, db) = two(g, b.fc1);
            let d_c = linear_backward(&bc.c, &p[b.fc1[0]], &d_u, dw, db, d, cfg.mlp);
            let (dg, db) = two(g, b.ln2);
            let d_x1 = layer_norm_backward(&bc.x1, &bc.ln2, &p[b.ln2[0]], &d_c, dg, db, d);
            add_into(&mut dx, &d_x1);
            // x1 = x + proj(merge(attention(split(qkv(ln1(x)))))).
            let (dw, db) = two(g, b.proj);
            let d_merged = linear_backward(&bc.merged, &p[b.proj[0]], &dx, dw, db, d, d);
            let d_o = merge_heads_backward(&d_merged, t, h, hd);
            let weights = params.level_refs(cfg, bi)?;
            let mut dw_levels = ds_grads(g, &b.ds);
            let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
            let [q, k, v] = &bc.qkv;
            for (i, hc) in bc.heads.iter().enumerate() {
                let span = i * t * hd..(i + 1) * t * hd;
                let [a, b2, c2] = self.attention.backward(
                    &q[span.clone()],
                    &k[span.clone()],
                    &v[span.clone()],
                    &weights,
                    hc,
                    &d_o[span],
                    &mut dw_levels,
                );
                dq.extend(a);
                dk.extend(b2);
                dv.extend(c2);
            }
            let d_qkv = split_heads_backward([&dq, &dk, &dv], t, h, hd);
            let (dw, db) = two(g, b.qkv);
            let d_a = linear_backward(&bc.a, &p[b.qkv[0]], &d_qkv, dw, db, d, 3 * d);
            let (dg, db) = two(g, b.ln1);
            let d_x = layer_norm_backward(&bc.x, &bc.ln1, &p[b.ln1[0]], &d_a, dg, db, d);
            add_into(&mut dx, &d_x);
        }
        for img in dx.chunks_exact(t * d) {
            add_into(&mut g[ix.pos], img);
        }
        let (dw, db) = two(g, ix.patch);
        linear_backward(
            &cache.patches,
            &p[ix.patch[0]],
            &dx,
            dw,
            db,
            cfg.patch_pixels(),
            d,
        );
        Ok(gr)
    }
}

/// Mutable views of one block's downsampling gradients, per level (wk, wv, bk, bv, wq, bq).
fn ds_grads<'a, T>(g: &'a mut [Vec<T>], ds: &[[Option<usize>; 6]]) -> Vec<[&'a mut [T]; 6]> {
    // The indices are distinct; hand out each tensor once, in level order.
    let mut slots: Vec<Option<&'a mut Vec<T>>> = g.iter_mut().map(Some).collect();
    ds.iter()
        .map(|parts| {
            parts.map(|i| match i.and_then(|i| slots[i].take()) {
                Some(v) => &mut v[..],
                None => &mut [][..],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Downsampling;
    use crate::model::params::VitWeights;

    /// Every parameter's gradient through the whole model (patches, blocks with FMA and learned
    /// downsampling, pooling, head, cross-entropy) against central finite differences, in f64;
    /// also with the O(n) variant (its query weights included).
    #[test]
    fn gradients_match_finite_differences() {
        for (kind, downsample_queries) in [
            (Downsampling::Depthwise, false),
            (Downsampling::Basis, false),
            (Downsampling::Depthwise, true),
        ] {
            let cfg = VitConfig {
                image: 12,
                canvas: 16,
                patch: 2,
                window: 4,
                dim: 8,
                depth: 2,
                heads: 2,
                mlp: 12,
                classes: 3,
                m: 2,
                p: 1,
                downsampling: kind,
                downsample_queries,
            };
            let model = CpuVit::new(&cfg).unwrap();
            let mut w = VitWeights::init(&cfg, 5).unwrap().params.cast::<f64>();
            // Move norms, biases and downsampling off their initial values.
            for (i, t) in w.tensors.iter_mut().enumerate() {
                for (j, x) in t.iter_mut().enumerate() {
                    *x += 0.1 * ((i * 31 + j) as f64 * 0.7).sin();
                }
            }
            let images: Vec<f64> = (0..2 * 256)
                .map(|i| ((i as f64) * 0.37).sin().max(0.0))
                .collect();
            let labels = [1u8, 2];
            let loss = |p: &Params<f64>| {
                let l = model.logits(p, &images).unwrap();
                cross_entropy(&l, &labels, 3).0
            };
            let (logits, cache) = model.forward(&w, &images).unwrap();
            let (_, dl) = cross_entropy(&logits, &labels, 3);
            let grads = model.backward(&w, &cache, &dl).unwrap();
            let infos = cfg.params().unwrap();
            let h = 1e-5;
            let mut worst = 0.0f64;
            for (ti, info) in infos.iter().enumerate() {
                // Every entry of small tensors, a spread of entries of large ones.
                let len = info.len();
                let step = (len / 40).max(1);
                for j in (0..len).step_by(step) {
                    let mut a = w.clone();
                    a.tensors[ti][j] += h;
                    let mut b = w.clone();
                    b.tensors[ti][j] -= h;
                    let fd = (loss(&a) - loss(&b)) / (2.0 * h);
                    let got = grads.tensors[ti][j];
                    let err = (fd - got).abs() / (1e-4 + fd.abs().max(got.abs()));
                    worst = worst.max(err);
                    assert!(
                        (fd - got).abs() <= 1e-6 + 1e-5 * fd.abs(),
                        "{kind:?} {}[{j}]: finite difference {fd}, backward {got}",
                        info.name
                    );
                }
            }
            assert!(worst.is_finite());
        }
    }

    /// A token's map covers its near field and coarse cells, and the probabilities sum to 1.
    #[test]
    fn attention_map_is_a_distribution_over_the_hierarchy() {
        let cfg = VitConfig::fma();
        let model = CpuVit::new(&cfg).unwrap();
        let w = VitWeights::init(&cfg, 2).unwrap().params;
        let image: Vec<f32> = (0..1024).map(|i| (i * 7 % 13) as f32 / 13.0).collect();
        let map = model.attention_map(&w, &image, 1, 0).unwrap();
        let total: f32 = map.near.iter().map(|n| n.1).sum::<f32>()
            + map.far.iter().map(|c| c.probability).sum::<f32>();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        // Token 0 (a corner): 2 x 2 fine cells of 2 x 2 tokens near; coarse cells at both
        // levels, and together everything covers the 16 x 16 grid exactly once.
        assert_eq!(map.near.len(), 16);
        assert!(map.far.iter().any(|c| c.level == 1) && map.far.iter().any(|c| c.level == 2));
        let mut covered = vec![0; 256];
        for &(t, _) in &map.near {
            covered[t] += 1;
        }
        for c in &map.far {
            for y in c.top..c.top + c.height {
                for x in c.left..c.left + c.width {
                    covered[y * 16 + x] += 1;
                }
            }
        }
        assert!(covered.iter().all(|&c| c == 1), "{covered:?}");
        assert!(model.attention_map(&w, &image, 3, 0).is_err());
        assert!(model.attention_map(&w, &image, 0, 256).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = VitConfig {
            depth: 1,
            ..VitConfig::fma()
        };
        let model = CpuVit::new(&cfg).unwrap();
        let w = VitWeights::init(&cfg, 1).unwrap().params;
        assert!(model.logits(&w, &[0.0; 100]).is_err());
        assert!(model.logits(&w, &[]).is_err());
        let other = VitWeights::init(
            &VitConfig {
                mlp: 8,
                ..cfg.clone()
            },
            1,
        )
        .unwrap()
        .params;
        assert!(model.logits(&other, &vec![0.0; 1024]).is_err());
        let (_, cache) = model.forward(&w, &vec![0.0; 1024]).unwrap();
        assert!(model.backward(&w, &cache, &[0.0; 3]).is_err());
    }
}
