//! The ViT's parameters: initialisation, and safetensors files that carry the sizes in their
//! metadata, so a file alone says which model it holds.

use std::collections::HashMap;

use num_traits::Float;
use safetensors::{Dtype, SafeTensors};

use super::config::VitConfig;
use crate::error::{FmaError, Result};
use crate::rng::Rng;
use crate::weights::{DownsampleWeights, LevelWeights};

/// Every parameter tensor of a model, in the order of `VitConfig::params`.
#[derive(Clone, Debug, PartialEq)]
pub struct Params<T> {
    pub tensors: Vec<Vec<T>>,
}

/// A model's sizes and its f32 weights.
#[derive(Clone, Debug, PartialEq)]
pub struct VitWeights {
    pub config: VitConfig,
    pub params: Params<f32>,
}

impl<T: Float> Params<T> {
    /// Zeros shaped like `config`'s parameters (gradients, optimiser moments).
    pub fn zeros(config: &VitConfig) -> Result<Params<T>> {
        Ok(Params {
            tensors: config
                .params()?
                .iter()
                .map(|p| vec![T::zero(); p.len()])
                .collect(),
        })
    }

    /// Zeros shaped like `self`.
    pub fn zeros_like(&self) -> Params<T> {
        Params {
            tensors: self
                .tensors
                .iter()
                .map(|t| vec![T::zero(); t.len()])
                .collect(),
        }
    }

    /// Element-wise `self += other`.
    pub fn add(&mut self, other: &Params<T>) {
        for (a, b) in self.tensors.iter_mut().zip(&other.tensors) {
            super::layers::add_into(a, b);
        }
    }

    /// The same values in another float type.
    pub fn cast<U: Float>(&self) -> Params<U> {
        Params {
            tensors: self
                .tensors
                .iter()
                .map(|t| {
                    t.iter()
                        .map(|&x| U::from(x).unwrap_or_else(U::nan))
                        .collect()
                })
                .collect(),
        }
    }

    /// Block `b`'s downsampling weights per level (wk, wv, bk, bv, wq, bq; empty where
    /// absent). A block past the model's depth, or parameters not shaped like `config`'s, are
    /// errors.
    pub fn level_refs(&self, config: &VitConfig, b: usize) -> Result<Vec<[&[T]; 6]>> {
        let idx = config.index()?;
        let block = idx.blocks.get(b).ok_or_else(|| {
            FmaError::Model(format!("block {b} out of range ({} blocks)", config.depth))
        })?;
        let tensor = |i: usize| {
            self.tensors.get(i).map(Vec::as_slice).ok_or_else(|| {
                FmaError::Model(format!(
                    "{} parameter tensors where the model has more",
                    self.tensors.len()
                ))
            })
        };
        block
            .ds
            .iter()
            .map(|parts| {
                let mut out: [&[T]; 6] = [&[]; 6];
                for (o, i) in out.iter_mut().zip(parts) {
                    if let Some(i) = *i {
                        *o = tensor(i)?;
                    }
                }
                Ok(out)
            })
            .collect()
    }
}

impl VitWeights {
    /// Fresh weights for `config` from `seed`: linear layers scaled by 1/sqrt(fan-in),
    /// position embeddings small, norms at identity, downsampling at the mean (docs/fma.md §5;
    /// the queries' weights of the O(n) variant too, like the keys').
    pub fn init(config: &VitConfig, seed: u64) -> Result<VitWeights> {
        let infos = config.params()?;
        let mut rng = Rng::new(seed);
        let mean = DownsampleWeights::mean_init(
            config.downsampling,
            &config.geometry()?,
            config.head_dim(),
        );
        let tensors = infos
            .iter()
            .map(|p| {
                let last = p.name.rsplit('.').next().unwrap_or("");
                if p.name.contains(".ds.") {
                    let level: usize = last.parse().unwrap_or(1);
                    let lw = &mean.levels[level - 1];
                    return match p.name.split('.').nth(3) {
                        Some("wk" | "wq") => lw.wk.clone(),
                        Some("wv") => lw.wv.clone(),
                        Some("bk" | "bq") => lw.bk.clone(),
                        _ => lw.bv.clone(),
                    };
                }
                match (p.name.as_str(), last) {
                    ("pos", _) => (0..p.len()).map(|_| 0.02 * rng.normal() as f32).collect(),
                    (_, "g") => vec![1.0; p.len()],
                    (_, "b") => vec![0.0; p.len()],
                    _ => {
                        let std = 1.0 / (p.shape[0] as f64).sqrt();
                        (0..p.len()).map(|_| (std * rng.normal()) as f32).collect()
                    }
                }
            })
            .collect();
        Ok(VitWeights {
            config: config.clone(),
            params: Params { tensors },
        })
    }

    /// Block `b`'s downsampling weights in the form `FmaPlan` takes.
    pub fn downsample_weights(&self, b: usize) -> Result<DownsampleWeights> {
        let levels = self
            .params
            .level_refs(&self.config, b)?
            .into_iter()
            .map(|[wk, wv, bk, bv, wq, bq]| LevelWeights {
                wk: wk.to_vec(),
                wv: wv.to_vec(),
                bk: bk.to_vec(),
                bv: bv.to_vec(),
                wq: wq.to_vec(),
                bq: bq.to_vec(),
            })
            .collect();
        Ok(DownsampleWeights { levels })
    }

    /// The safetensors encoding: every tensor as f32, the sizes in the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let infos = self.config.params()?;
        let bytes: Vec<&[u8]> = self
            .params
            .tensors
            .iter()
            .map(|t| bytemuck::cast_slice(t))
            .collect();
        let mut views = Vec::new();
        for (info, b) in infos.iter().zip(bytes) {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, info.shape.clone(), b)
                .map_err(|e| FmaError::Model(format!("tensor '{}': {e}", info.name)))?;
            views.push((info.name.clone(), view));
        }
        safetensors::serialize(views, Some(self.config.to_metadata()))
            .map_err(|e| FmaError::Model(format!("could not encode the weights: {e}")))
    }

    /// Reads weights from safetensors bytes: the sizes from the metadata, then every tensor
    /// the model needs with its exact name, shape and dtype (f32). Missing, extra, misshapen
    /// or non-finite tensors are errors that name the tensor.
    pub fn from_bytes(bytes: &[u8]) -> Result<VitWeights> {
        let bad = |m: String| FmaError::Model(format!("weights: {m}"));
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        let config = VitConfig::from_metadata(&meta)?;
        let infos = config.params()?;
        let mut names = st.names();
        names.sort();
        if let Some(extra) = names.iter().find(|n| !infos.iter().any(|p| p.name == ***n)) {
            return Err(bad(format!(
                "unexpected tensor '{extra}' for a model of these sizes"
            )));
        }
        let tensors = infos
            .iter()
            .map(|p| {
                let view = st.tensor(&p.name).map_err(|_| {
                    bad(format!("missing tensor '{}' (shape {:?})", p.name, p.shape))
                })?;
                if view.dtype() != Dtype::F32 {
                    return Err(bad(format!(
                        "tensor '{}' is {:?}; f32 is required",
                        p.name,
                        view.dtype()
                    )));
                }
                if view.shape() != p.shape.as_slice() {
                    return Err(bad(format!(
                        "tensor '{}' has shape {:?}; expected {:?}",
                        p.name,
                        view.shape(),
                        p.shape
                    )));
                }
                let data: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if data.iter().any(|x| !x.is_finite()) {
                    return Err(bad(format!("tensor '{}' holds a non-finite value", p.name)));
                }
                Ok(data)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VitWeights {
            config,
            params: Params { tensors },
        })
    }

    /// Writes the weights to a safetensors file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()?).map_err(|e| FmaError::TensorFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Reads a safetensors file written by `save`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<VitWeights> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| FmaError::TensorFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        VitWeights::from_bytes(&bytes).map_err(|e| FmaError::TensorFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor as written: name, shape, dtype, bytes.
    type Entry = (String, Vec<usize>, Dtype, Vec<u8>);
    type Edit<'a> = &'a dyn Fn(&mut Vec<Entry>);

    #[test]
    fn downsampling_weights_of_a_missing_block_are_an_error() {
        let cfg = VitConfig {
            depth: 2,
            ..VitConfig::fma()
        };
        let w = VitWeights::init(&cfg, 1).unwrap();
        assert_eq!(w.downsample_weights(1).unwrap().levels.len(), 2);
        let err = w.downsample_weights(2).unwrap_err().to_string();
        assert!(err.contains("block 2 out of range (2 blocks)"), "{err}");
        let short = Params::<f32> {
            tensors: w.params.tensors[..4].to_vec(),
        };
        assert!(short.level_refs(&cfg, 0).is_err());
    }

    /// The O(n) variant's query weights start at the keys' (the mean) and reach
    /// `downsample_weights`; its files round-trip with the variant on.
    #[test]
    fn linear_variant_weights_start_at_the_keys() {
        let cfg = VitConfig {
            depth: 1,
            ..VitConfig::fma_linear()
        };
        let w = VitWeights::init(&cfg, 2).unwrap();
        let dw = w.downsample_weights(0).unwrap();
        for lw in &dw.levels {
            assert!(!lw.wq.is_empty() && !lw.bq.is_empty());
            assert_eq!((&lw.wq, &lw.bq), (&lw.wk, &lw.bk));
        }
        let g = cfg.geometry().unwrap();
        dw.validate(
            cfg.downsampling,
            cfg.p,
            cfg.head_dim(),
            &g.group_tokens(),
            true,
        )
        .unwrap();
        let back = VitWeights::from_bytes(&w.to_bytes().unwrap()).unwrap();
        assert_eq!(back, w);
        assert!(back.config.downsample_queries);
    }

    #[test]
    fn bytes_round_trip_and_bad_files_are_errors() {
        let cfg = VitConfig {
            depth: 1,
            ..VitConfig::fma()
        };
        let w = VitWeights::init(&cfg, 3).unwrap();
        let bytes = w.to_bytes().unwrap();
        assert_eq!(VitWeights::from_bytes(&bytes).unwrap(), w);
        assert_ne!(VitWeights::init(&cfg, 4).unwrap(), w);

        assert!(VitWeights::from_bytes(b"not a file").is_err());
        // A tensor of the wrong shape, a missing one, an extra one, another dtype.
        let infos = cfg.params().unwrap();
        let encode = |edit: Edit<'_>| {
            let mut list: Vec<Entry> = infos
                .iter()
                .zip(&w.params.tensors)
                .map(|(p, t)| {
                    (
                        p.name.clone(),
                        p.shape.clone(),
                        Dtype::F32,
                        bytemuck::cast_slice(t).to_vec(),
                    )
                })
                .collect();
            edit(&mut list);
            let views: Vec<_> = list
                .iter()
                .map(|(n, s, d, b)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                    )
                })
                .collect();
            safetensors::serialize(views, Some(cfg.to_metadata())).unwrap()
        };
        let cases: [(&str, Edit<'_>); 4] = [
            ("has shape", &|l| l[0].1 = vec![l[0].1[1], l[0].1[0]]),
            ("missing tensor 'head.b'", &|l| {
                l.pop();
            }),
            ("unexpected tensor 'extra'", &|l| {
                l.push(("extra".into(), vec![1], Dtype::F32, vec![0; 4]))
            }),
            ("f32 is required", &|l| {
                let n = l[1].3.len();
                l[1].2 = Dtype::I32;
                l[1].3 = vec![0; n];
            }),
        ];
        for (want, edit) in cases {
            let err = VitWeights::from_bytes(&encode(edit))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        let mut no_meta = w.clone();
        no_meta.config.dim = 31;
        assert!(no_meta.to_bytes().is_err());
    }
}
