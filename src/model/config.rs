//! The ViT's sizes and its attention options, and the names and shapes of its parameters.

use std::collections::HashMap;

use crate::config::{Downsampling, FmaConfig};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;

/// Largest side of the digit, the canvas, a patch or a window, in pixels.
pub const MAX_SIDE: usize = 4096;
/// Largest width (dim, mlp), head count and class count.
pub const MAX_WIDTH: usize = 1 << 16;
/// Most transformer blocks.
pub const MAX_DEPTH: usize = 1024;
/// Most parameters in all (1 GiB of f32): every size comes from a file's metadata, which must
/// not be able to make the model allocate without bound.
pub const MAX_PARAMS: usize = 1 << 28;

/// Sizes of the vision transformer. The defaults (`VitConfig::fma`) are what the shipped
/// weights were trained with; see README.md for why.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    /// Side of the input digit (28 for MNIST).
    pub image: usize,
    /// Side of the canvas the digit is placed on (32: a power-of-two token grid).
    pub canvas: usize,
    /// Side of a square patch; one token per patch.
    pub patch: usize,
    /// Side of the pixel window a token's embedding reads, centred on its patch: wider than
    /// the patch, neighbouring windows overlap (a convolutional stem in one linear layer).
    pub window: usize,
    /// Width of the token vectors.
    pub dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads per block; `dim / heads` is the head dimension.
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp: usize,
    /// Output classes.
    pub classes: usize,
    /// FMA fine cell side over the token grid (half the grid side makes attention exact).
    pub m: usize,
    /// Coarse keys per cell.
    pub p: usize,
    /// How coarse keys are made.
    pub downsampling: Downsampling,
    /// The O(n) variant (docs/fma.md §13): queries are downsampled too, with their own learned
    /// weights (`ds.wq.L`, `ds.bq.L`).
    pub downsample_queries: bool,
}

/// Where one parameter tensor sits in `Params::tensors`, and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// Matrices get weight decay; biases, norms and position embeddings do not.
    pub decay: bool,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Indices into the parameter list of one block's tensors.
#[derive(Clone, Debug)]
pub struct BlockIndex {
    pub ln1: [usize; 2],
    pub qkv: [usize; 2],
    pub proj: [usize; 2],
    /// Per coarse level: wk, wv, bk, bv, wq, bq (None where the kind or the variant has no
    /// such tensor).
    pub ds: Vec<[Option<usize>; 6]>,
    pub ln2: [usize; 2],
    pub fc1: [usize; 2],
    pub fc2: [usize; 2],
}

/// Indices of every tensor, in the order of `VitConfig::params`.
#[derive(Clone, Debug)]
pub struct ParamIndex {
    pub patch: [usize; 2],
    pub pos: usize,
    pub blocks: Vec<BlockIndex>,
    pub norm: [usize; 2],
    pub head: [usize; 2],
}

impl VitConfig {
    /// The shipped FMA model: 16 x 16 tokens of 2 x 2 pixels, width 32, 2 heads of 16, 3
    /// blocks, FMA with 2 x 2 fine cells, one coarse key per cell, depthwise downsampling.
    pub fn fma() -> VitConfig {
        VitConfig {
            image: 28,
            canvas: 32,
            patch: 2,
            window: 4,
            dim: 32,
            depth: 3,
            heads: 2,
            mlp: 64,
            classes: 10,
            m: 2,
            p: 1,
            downsampling: Downsampling::Depthwise,
            downsample_queries: false,
        }
    }

    /// The shipped model with the O(n) variant of FMA (downsampled queries).
    pub fn fma_linear() -> VitConfig {
        VitConfig {
            downsample_queries: true,
            ..VitConfig::fma()
        }
    }

    /// The same model with exact attention: m = half the grid side leaves no coarse level.
    pub fn dense_twin(&self) -> VitConfig {
        VitConfig {
            m: self.grid() / 2,
            p: 1,
            downsampling: Downsampling::Mean,
            downsample_queries: false,
            ..self.clone()
        }
    }

    /// Tokens per side of the grid.
    pub fn grid(&self) -> usize {
        self.canvas / self.patch
    }
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
    /// Pixels a token's embedding reads.
    pub fn patch_pixels(&self) -> usize {
        self.window * self.window
    }

    /// The FMA options of every block's attention.
    pub fn attention(&self) -> FmaConfig {
        FmaConfig {
            downsampling: self.downsampling,
            downsample_queries: self.downsample_queries,
            ..FmaConfig::new(self.m, self.p)
        }
        .image(self.grid(), self.grid())
    }

    /// The attention's hierarchy over the token grid.
    pub fn geometry(&self) -> Result<Geometry> {
        Geometry::new(self.tokens(), &self.attention())
    }

    /// Checks that the sizes fit together and stay within `MAX_SIDE`, `MAX_WIDTH`,
    /// `MAX_DEPTH` and `MAX_PARAMS`, so no size read from a file can make arithmetic
    /// overflow, an index run out of range or an allocation run away.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FmaError::Model(m));
        for (name, v, max) in [
            ("image", self.image, MAX_SIDE),
            ("canvas", self.canvas, MAX_SIDE),
            ("patch", self.patch, MAX_SIDE),
            ("window", self.window, MAX_SIDE),
            ("dim", self.dim, MAX_WIDTH),
            ("depth", self.depth, MAX_DEPTH),
            ("heads", self.heads, MAX_WIDTH),
            ("mlp", self.mlp, MAX_WIDTH),
            ("classes", self.classes, MAX_WIDTH),
        ] {
            if v > max {
                return bad(format!("{name} = {v} is over the limit of {max}"));
            }
        }
        if self.image == 0 || self.image > self.canvas {
            return bad(format!(
                "image side {} must be between 1 and the canvas side {}",
                self.image, self.canvas
            ));
        }
        if self.patch == 0 || !self.canvas.is_multiple_of(self.patch) {
            return bad(format!(
                "patch side {} must divide the canvas side {}",
                self.patch, self.canvas
            ));
        }
        if self.window < self.patch || !(self.window - self.patch).is_multiple_of(2) {
            return bad(format!(
                "window {} must be at least the patch side {} and differ from it by an even number",
                self.window, self.patch
            ));
        }
        if [self.dim, self.depth, self.heads, self.mlp, self.classes].contains(&0) {
            return bad("dim, depth, heads, mlp and classes must all be at least 1".into());
        }
        if !self.dim.is_multiple_of(self.heads) {
            return bad(format!(
                "dim {} must be a multiple of heads {}",
                self.dim, self.heads
            ));
        }
        if self.head_dim() > crate::config::MAX_HEAD_DIM {
            return Err(FmaError::UnsupportedHeadDim(self.head_dim()));
        }
        self.geometry()?;
        // Counted in u64 and saturating: a product of bounded sizes can still pass usize on a
        // 32-bit target (wasm32 reads weight files too). Under the limit every tensor's
        // length fits any usize.
        let total = self
            .param_shapes()?
            .iter()
            .map(|t| {
                t.shape
                    .iter()
                    .fold(1u64, |a, &x| a.saturating_mul(x as u64))
            })
            .fold(0u64, u64::saturating_add);
        if total > MAX_PARAMS as u64 {
            return bad(format!(
                "{total} parameters is over the limit of {MAX_PARAMS}: use smaller dim, mlp, depth, window or canvas"
            ));
        }
        Ok(())
    }

    /// Every parameter tensor, in the fixed order training and files use.
    pub fn params(&self) -> Result<Vec<ParamInfo>> {
        self.validate()?;
        self.param_shapes()
    }

    /// `params` without the checks (`validate` uses it to count the parameters).
    fn param_shapes(&self) -> Result<Vec<ParamInfo>> {
        let g = self.geometry()?;
        let (d, hd, p) = (self.dim, self.head_dim(), self.p);
        let mut out = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, decay: bool| {
            out.push(ParamInfo { name, shape, decay })
        };
        add("patch.w".into(), vec![self.patch_pixels(), d], true);
        add("patch.b".into(), vec![d], false);
        add("pos".into(), vec![self.tokens(), d], false);
        for b in 0..self.depth {
            let name = |s: &str| format!("blocks.{b}.{s}");
            add(name("ln1.g"), vec![d], false);
            add(name("ln1.b"), vec![d], false);
            add(name("qkv.w"), vec![d, 3 * d], true);
            add(name("qkv.b"), vec![3 * d], false);
            add(name("proj.w"), vec![d, d], true);
            add(name("proj.b"), vec![d], false);
            for (li, s) in g.group_tokens().into_iter().enumerate() {
                let l = li + 1;
                // The O(n) variant adds the queries' weights after the keys' and values'.
                let q = self.downsample_queries;
                match self.downsampling {
                    Downsampling::Mean => {}
                    Downsampling::Basis => {
                        add(name(&format!("ds.wk.{l}")), vec![p, s], false);
                        add(name(&format!("ds.wv.{l}")), vec![p, s], false);
                        if q {
                            add(name(&format!("ds.wq.{l}")), vec![p, s], false);
                        }
                    }
                    Downsampling::Depthwise => {
                        add(name(&format!("ds.wk.{l}")), vec![hd, p, s], false);
                        add(name(&format!("ds.wv.{l}")), vec![hd, p, s], false);
                        add(name(&format!("ds.bk.{l}")), vec![hd, p], false);
                        add(name(&format!("ds.bv.{l}")), vec![hd, p], false);
                        if q {
                            add(name(&format!("ds.wq.{l}")), vec![hd, p, s], false);
                            add(name(&format!("ds.bq.{l}")), vec![hd, p], false);
                        }
                    }
                }
            }
            add(name("ln2.g"), vec![d], false);
            add(name("ln2.b"), vec![d], false);
            add(name("fc1.w"), vec![d, self.mlp], true);
            add(name("fc1.b"), vec![self.mlp], false);
            add(name("fc2.w"), vec![self.mlp, d], true);
            add(name("fc2.b"), vec![d], false);
        }
        add("norm.g".into(), vec![d], false);
        add("norm.b".into(), vec![d], false);
        add("head.w".into(), vec![d, self.classes], true);
        add("head.b".into(), vec![self.classes], false);
        Ok(out)
    }

    /// Where each tensor of `params()` sits.
    pub fn index(&self) -> Result<ParamIndex> {
        let infos = self.params()?;
        let at: HashMap<&str, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let find = |n: &str| at.get(n).copied();
        let get = |n: &str| {
            find(n).ok_or_else(|| FmaError::Model(format!("internal: no parameter '{n}'")))
        };
        // Norms hold a gain and a bias, the linear layers a weight and a bias.
        let pair = |n: &str| -> Result<[usize; 2]> {
            let first = if n.ends_with("ln1") || n.ends_with("ln2") || n == "norm" {
                "g"
            } else {
                "w"
            };
            Ok([get(&format!("{n}.{first}"))?, get(&format!("{n}.b"))?])
        };
        let levels = self.geometry()?.num_levels();
        let blocks = (0..self.depth)
            .map(|b| {
                let n = |s: &str| format!("blocks.{b}.{s}");
                Ok(BlockIndex {
                    ln1: pair(&n("ln1"))?,
                    qkv: pair(&n("qkv"))?,
                    proj: pair(&n("proj"))?,
                    ds: (1..=levels)
                        .map(|l| {
                            ["wk", "wv", "bk", "bv", "wq", "bq"]
                                .map(|t| find(&n(&format!("ds.{t}.{l}"))))
                        })
                        .collect(),
                    ln2: pair(&n("ln2"))?,
                    fc1: pair(&n("fc1"))?,
                    fc2: pair(&n("fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ParamIndex {
            patch: pair("patch")?,
            pos: get("pos")?,
            blocks,
            norm: pair("norm")?,
            head: pair("head")?,
        })
    }

    /// The sizes as text, stored in a weights file's metadata. `downsample_queries` is written
    /// only when on, so the files of the other models keep the metadata they always had.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let ds = match self.downsampling {
            Downsampling::Mean => "mean",
            Downsampling::Basis => "basis",
            Downsampling::Depthwise => "depthwise",
        };
        [
            ("image", self.image.to_string()),
            ("canvas", self.canvas.to_string()),
            ("patch", self.patch.to_string()),
            ("window", self.window.to_string()),
            ("dim", self.dim.to_string()),
            ("depth", self.depth.to_string()),
            ("heads", self.heads.to_string()),
            ("mlp", self.mlp.to_string()),
            ("classes", self.classes.to_string()),
            ("m", self.m.to_string()),
            ("p", self.p.to_string()),
            ("downsampling", ds.to_string()),
        ]
        .into_iter()
        .chain(
            self.downsample_queries
                .then(|| ("downsample_queries", "true".to_string())),
        )
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads the sizes back from a weights file's metadata.
    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<VitConfig> {
        let num = |k: &str| -> Result<usize> {
            let v = meta.get(k).ok_or_else(|| {
                FmaError::Model(format!(
                    "weights metadata lacks '{k}' (not a multipole ViT file?)"
                ))
            })?;
            v.parse().map_err(|_| {
                FmaError::Model(format!("weights metadata '{k}' = '{v}' is not a number"))
            })
        };
        let ds = meta
            .get("downsampling")
            .ok_or_else(|| FmaError::Model("weights metadata lacks 'downsampling'".into()))?
            .parse()?;
        // Absent in files written before the O(n) variant existed: off.
        let downsample_queries = match meta.get("downsample_queries").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(FmaError::Model(format!(
                    "weights metadata 'downsample_queries' = '{v}' is not true or false"
                )));
            }
        };
        let cfg = VitConfig {
            image: num("image")?,
            canvas: num("canvas")?,
            patch: num("patch")?,
            window: num("window")?,
            dim: num("dim")?,
            depth: num("depth")?,
            heads: num("heads")?,
            mlp: num("mlp")?,
            classes: num("classes")?,
            m: num("m")?,
            p: num("p")?,
            downsampling: ds,
            downsample_queries,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sizes_and_their_dense_twin() {
        let fma = VitConfig::fma();
        let g = fma.geometry().unwrap();
        assert_eq!((fma.grid(), fma.tokens(), g.num_levels()), (16, 256, 2));
        let dense = fma.dense_twin();
        assert_eq!(dense.geometry().unwrap().num_levels(), 0);
        let names: Vec<String> = fma.params().unwrap().into_iter().map(|p| p.name).collect();
        assert!(names.contains(&"blocks.1.ds.bv.2".to_string()));
        assert!(
            !dense
                .params()
                .unwrap()
                .iter()
                .any(|p| p.name.contains("ds."))
        );
        assert_eq!(VitConfig::from_metadata(&fma.to_metadata()).unwrap(), fma);
        let idx = fma.index().unwrap();
        assert_eq!(idx.blocks[1].ds.len(), 2);
        assert!(idx.blocks[0].ds[0][..4].iter().all(Option::is_some));
    }

    /// The O(n) variant: its query weights are parameters, its metadata says so, and a file
    /// without the key (written before the variant) is the O(n log n) model.
    #[test]
    fn linear_variant_has_query_weights_and_metadata() {
        let lin = VitConfig::fma_linear();
        assert!(lin.attention().downsample_queries);
        let names: Vec<String> = lin.params().unwrap().into_iter().map(|p| p.name).collect();
        let plain = VitConfig::fma().params().unwrap().len();
        // wq and bq at 2 levels of 3 blocks.
        assert_eq!(names.len(), plain + 12);
        assert!(names.contains(&"blocks.2.ds.wq.1".to_string()));
        assert!(names.contains(&"blocks.0.ds.bq.2".to_string()));
        let idx = lin.index().unwrap();
        assert!(idx.blocks[0].ds[1].iter().all(Option::is_some));
        assert!(VitConfig::fma().index().unwrap().blocks[0].ds[1][4].is_none());
        let meta = lin.to_metadata();
        assert_eq!(VitConfig::from_metadata(&meta).unwrap(), lin);
        assert!(
            !VitConfig::fma()
                .to_metadata()
                .contains_key("downsample_queries")
        );
        let mut off = meta.clone();
        off.remove("downsample_queries");
        assert_eq!(VitConfig::from_metadata(&off).unwrap(), VitConfig::fma());
        off.insert("downsample_queries".into(), "yes".into());
        let err = VitConfig::from_metadata(&off).unwrap_err().to_string();
        assert!(err.contains("not true or false"), "{err}");
        // Basis has no bias; the dense twin has no level and is not the variant.
        let basis = VitConfig {
            downsampling: Downsampling::Basis,
            ..lin.clone()
        };
        let names: Vec<String> = basis
            .params()
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert!(
            names.iter().any(|n| n.contains("ds.wq")) && !names.iter().any(|n| n.contains("ds.bq"))
        );
        assert!(!lin.dense_twin().downsample_queries);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let bad = [
            VitConfig {
                dim: 30,
                heads: 4,
                ..VitConfig::fma()
            },
            VitConfig {
                patch: 3,
                ..VitConfig::fma()
            },
            VitConfig {
                m: 3,
                ..VitConfig::fma()
            },
            VitConfig {
                depth: 0,
                ..VitConfig::fma()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    /// Sizes read from a file that would overflow, underflow or allocate without bound.
    #[test]
    fn sizes_from_a_file_are_bounded() {
        let fma = VitConfig::fma();
        let cases = [
            (
                "canvas",
                VitConfig {
                    canvas: 16,
                    ..fma.clone()
                },
                "canvas side 16",
            ),
            (
                "canvas",
                VitConfig {
                    canvas: 1 << 40,
                    ..fma.clone()
                },
                "over the limit",
            ),
            (
                "window",
                VitConfig {
                    window: usize::MAX,
                    ..fma.clone()
                },
                "over the limit",
            ),
            (
                "window",
                VitConfig {
                    window: 1,
                    ..fma.clone()
                },
                "at least the patch",
            ),
            (
                "patch",
                VitConfig {
                    patch: 0,
                    ..fma.clone()
                },
                "must divide",
            ),
            (
                "heads",
                VitConfig {
                    heads: 0,
                    ..fma.clone()
                },
                "at least 1",
            ),
            (
                "heads",
                VitConfig {
                    heads: 64,
                    ..fma.clone()
                },
                "multiple of heads",
            ),
            (
                "dim",
                VitConfig {
                    dim: usize::MAX,
                    ..fma.clone()
                },
                "over the limit",
            ),
            (
                "depth",
                VitConfig {
                    depth: 1 << 40,
                    ..fma.clone()
                },
                "over the limit",
            ),
            (
                "classes",
                VitConfig {
                    classes: 0,
                    ..fma.clone()
                },
                "at least 1",
            ),
            (
                "m",
                VitConfig {
                    m: 0,
                    ..fma.clone()
                },
                "power of two",
            ),
            (
                "p",
                VitConfig {
                    p: 3,
                    ..fma.clone()
                },
                "square",
            ),
            // Each size allowed, but 16 blocks of about 33 million weights each.
            (
                "depth",
                VitConfig {
                    dim: 2048,
                    heads: 16,
                    mlp: 4096,
                    depth: 16,
                    ..fma.clone()
                },
                "parameters",
            ),
        ];
        for (name, cfg, want) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
            // The same sizes through a file's metadata give the same error, not a panic.
            let err = VitConfig::from_metadata(&cfg.to_metadata())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{name} from metadata: {err}");
        }
    }
}
