//! f32 tensors in safetensors files, with errors that name the file and the tensor.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{FmaError, Result};

/// A safetensors file read into memory.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// One f32 tensor: its shape and its values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl TensorFile {
    /// Reads and checks the header of a safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<TensorFile> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| file_error(&path, e.to_string()))?;
        SafeTensors::deserialize(&bytes)
            .map_err(|e| file_error(&path, format!("not a safetensors file ({e})")))?;
        Ok(TensorFile { path, bytes })
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| file_error(&self.path, e.to_string()))
    }

    /// Whether the file holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.parsed()
            .map(|s| s.names().contains(&name))
            .unwrap_or(false)
    }

    /// The f32 tensor `name`; a missing tensor or another dtype is an error.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let st = self.parsed()?;
        let view = st.tensor(name).map_err(|_| {
            let mut names = st.names();
            names.sort();
            file_error(
                &self.path,
                format!(
                    "missing tensor '{name}' (the file holds: {})",
                    names.join(", ")
                ),
            )
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(file_error(
                &self.path,
                format!("tensor '{name}' is {:?}; f32 is required", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Tensor {
            shape: view.shape().to_vec(),
            data,
        })
    }

    /// The f32 tensor `name`, which must have exactly `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(file_error(
                &self.path,
                format!(
                    "tensor '{name}' has shape {:?}; expected {:?}",
                    t.shape, shape
                ),
            ));
        }
        Ok(t)
    }
}

/// Writes f32 tensors to a safetensors file.
pub fn write_tensors(path: impl AsRef<Path>, tensors: &[(&str, Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| bytemuck::cast_slice(&t.data).to_vec())
        .collect();
    let mut views = Vec::new();
    for ((name, t), b) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)
            .map_err(|e| file_error(path, format!("tensor '{name}': {e}")))?;
        views.push((*name, view));
    }
    let out = safetensors::serialize(views, None).map_err(|e| file_error(path, e.to_string()))?;
    std::fs::write(path, out).map_err(|e| file_error(path, e.to_string()))
}

fn file_error(path: &Path, message: String) -> FmaError {
    FmaError::TensorFile {
        path: path.display().to_string(),
        message,
    }
}
