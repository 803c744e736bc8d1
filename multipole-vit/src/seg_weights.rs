//! The segmentation model's weight file: safetensors, one f32 tensor per parameter named by its
//! path in the module (`blocks.0.qkv.weight`), and the model's sizes in the metadata, so that a
//! file alone says which model it holds (as the classifier's files do) and any safetensors
//! tool reads it.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use multipole::FmaError;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
#[cfg(not(target_arch = "wasm32"))]
use safetensors::tensor::TensorView;

use crate::segment::{SegAttention, SegConfig, SegVit};
use crate::{Error, Result};

/// The metadata's model kind, which a classifier's file lacks.
const KIND: &str = "multipole-segvit";

impl SegVit {
    /// The model as safetensors bytes. Reads every parameter back from its device (blocking:
    /// native code only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut collect = Collect::default();
        self.visit(&mut collect);
        if let Some(e) = collect.error {
            return Err(e);
        }
        let bytes: Vec<Vec<u8>> = collect
            .tensors
            .iter()
            .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views = collect
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), bytes)| {
                let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map_err(|e| format_error(&format!("tensor {name}: {e}")))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(to_metadata(self.config())))
            .map_err(|e| format_error(&e.to_string()))
    }

    /// Writes `to_bytes` to `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()?).map_err(|e| file_error(path, &e.to_string()))
    }

    /// A model from safetensors bytes written by `to_bytes`, on `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<SegVit> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| format_error(&e.to_string()))?;
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| format_error(&e.to_string()))?;
        let config = from_metadata(&meta.metadata().clone().unwrap_or_default())?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(format_error(&format!(
                    "tensor {name} is {:?}, not F32",
                    view.dtype()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        let mut fill = Fill {
            tensors,
            path: Vec::new(),
            device: device.clone(),
            error: None,
        };
        let model = SegVit::new(&config, device)?.map(&mut fill);
        if let Some(e) = fill.error {
            return Err(e);
        }
        if let Some(name) = fill.tensors.keys().next() {
            return Err(format_error(&format!(
                "tensor {name} is not a parameter of the model {config:?}"
            )));
        }
        Ok(model)
    }

    /// `from_bytes` of the file at `path`.
    pub fn load(path: &std::path::Path, device: &Device) -> Result<SegVit> {
        let bytes = std::fs::read(path).map_err(|e| file_error(path, &e.to_string()))?;
        SegVit::from_bytes(&bytes, device).map_err(|e| match e {
            Error::Fma(FmaError::TensorFile { message, .. }) => file_error(path, &message),
            other => other,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn to_metadata(c: &SegConfig) -> HashMap<String, String> {
    let (attention, m, p, linear) = match c.attention {
        SegAttention::Fma { m, p, linear } => ("fma", m, p, linear),
        SegAttention::Dense => ("dense", 0, 0, false),
        SegAttention::Window { m } => ("window", m, 0, false),
    };
    [
        ("kind", KIND.to_string()),
        ("patch", c.patch.to_string()),
        ("window", c.window.to_string()),
        ("dim", c.dim.to_string()),
        ("heads", c.heads.to_string()),
        ("depth", c.depth.to_string()),
        ("mlp", c.mlp.to_string()),
        ("attention", attention.to_string()),
        ("m", m.to_string()),
        ("p", p.to_string()),
        ("linear", linear.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn from_metadata(meta: &HashMap<String, String>) -> Result<SegConfig> {
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| format_error(&format!("the metadata lacks \"{k}\"")))
    };
    let size = |k: &str| -> Result<usize> {
        get(k)?
            .parse()
            .map_err(|_| format_error(&format!("metadata \"{k}\" is not a size")))
    };
    if meta.get("kind").map(String::as_str) != Some(KIND) {
        return Err(format_error(&format!(
            "not a segmentation model: its metadata's kind is {:?}, not \"{KIND}\"",
            meta.get("kind")
        )));
    }
    let attention = match get("attention")?.as_str() {
        "fma" => SegAttention::Fma {
            m: size("m")?,
            p: size("p")?,
            linear: get("linear")? == "true",
        },
        "dense" => SegAttention::Dense,
        "window" => SegAttention::Window { m: size("m")? },
        other => return Err(format_error(&format!("unknown attention \"{other}\""))),
    };
    Ok(SegConfig {
        patch: size("patch")?,
        window: size("window")?,
        dim: size("dim")?,
        heads: size("heads")?,
        depth: size("depth")?,
        mlp: size("mlp")?,
        attention,
    })
}

/// Every float parameter's path, shape and values.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Default)]
struct Collect {
    path: Vec<String>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    error: Option<Error>,
}

#[cfg(not(target_arch = "wasm32"))]
impl burn::module::ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.path.join(".");
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        match crate::model::read_f32(tensor, &name) {
            Ok(values) => self.tensors.push((name, shape, values)),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// Replaces every float parameter by the file's tensor of the same path, which it takes.
struct Fill {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    path: Vec<String>,
    device: Device,
    error: Option<Error>,
}

impl ModuleMapper for Fill {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let want = param.shape().dims::<D>();
        let Some((shape, values)) = self.tensors.remove(&name) else {
            self.error
                .get_or_insert_with(|| format_error(&format!("tensor {name} is missing")));
            return param;
        };
        if shape.as_slice() != want.as_slice() {
            self.error.get_or_insert_with(|| {
                format_error(&format!(
                    "tensor {name} has shape {shape:?}, the model wants {want:?}"
                ))
            });
            return param;
        }
        let device = self.device.clone();
        param.map(|_| Tensor::from_data(TensorData::new(values, want), &device))
    }
}

fn format_error(message: &str) -> Error {
    Error::Fma(FmaError::TensorFile {
        path: "segmentation weights".into(),
        message: message.to_string(),
    })
}

fn file_error(path: &std::path::Path, message: &str) -> Error {
    Error::Fma(FmaError::TensorFile {
        path: path.display().to_string(),
        message: message.to_string(),
    })
}
