//! The browser API (wasm-bindgen) behind the demo page in web/: the FMA vision transformer on
//! WebGPU, the same preprocessing as `multipole classify`, the attention map of a token, and
//! the library's GPU checks, runnable in the page.
//!
//! Every call that touches the GPU returns a Promise; nothing blocks the page.

use std::rc::Rc;

use js_sys::{Array, Float32Array, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::error::FmaError;
use crate::gpu::GpuContext;
use crate::model::VitGpu;
use crate::model::mnist::place_centred;
use crate::model::{CpuVit, VitWeights, preprocess};

struct Inner {
    ctx: GpuContext,
    gpu: VitGpu,
    cpu: CpuVit,
    weights: VitWeights,
}

/// The demo's model: weights on the GPU and a CPU twin for the attention maps.
#[wasm_bindgen]
pub struct Classifier {
    inner: Rc<Inner>,
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// A preprocessing error for the page: a blank picture throws an Error named `NoDigit`, so
/// the page can say "no digit found" instead of showing a failure.
fn digit_err(e: FmaError) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    if e == FmaError::NoDigit {
        err.set_name("NoDigit");
    }
    err.into()
}

fn set(obj: &Object, key: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(obj, &JsValue::from_str(key), value).map(|_| ())
}

#[wasm_bindgen]
impl Classifier {
    /// Opens WebGPU and uploads the weights (safetensors bytes). Resolves to a `Classifier`.
    pub fn create(weights: Vec<u8>) -> Promise {
        future_to_promise(async move {
            let weights = VitWeights::from_bytes(&weights).map_err(js_err)?;
            let ctx = GpuContext::new().await.map_err(js_err)?;
            let gpu = VitGpu::new(&ctx, &weights, 1).map_err(js_err)?;
            let cpu = CpuVit::new(&weights.config).map_err(js_err)?;
            Ok(Classifier {
                inner: Rc::new(Inner {
                    ctx,
                    gpu,
                    cpu,
                    weights,
                }),
            }
            .into())
        })
    }

    /// The adapter the model runs on.
    pub fn adapter(&self) -> String {
        self.inner.ctx.describe()
    }

    /// Tokens per side of the attention grid.
    pub fn grid(&self) -> usize {
        self.inner.weights.config.grid()
    }

    /// Transformer blocks.
    pub fn depth(&self) -> usize {
        self.inner.weights.config.depth
    }

    /// Probabilities of the 10 classes for a 28 x 28 digit (784 bytes, 0 = background), on
    /// the GPU. Resolves to a Float32Array.
    pub fn classify(&self, digit: Vec<u8>) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let image = canvas_of(&inner.weights, &digit)?;
            let logits = inner.gpu.logits(&inner.ctx, &image).await.map_err(js_err)?;
            let p = crate::model::Prediction::from_logits(&logits, inner.weights.config.classes);
            Ok(Float32Array::from(&p[0].probs[..]).into())
        })
    }

    /// Where token `token` (row-major on the grid) attended in block `block` for this digit,
    /// averaged over heads: `{near: [[token, p], ...], far: [[level, top, left, height, width,
    /// p], ...]}` in token-grid coordinates.
    pub fn attention(
        &self,
        digit: Vec<u8>,
        block: usize,
        token: usize,
    ) -> Result<JsValue, JsValue> {
        let inner = &self.inner;
        let image = canvas_of(&inner.weights, &digit)?;
        let map = inner
            .cpu
            .attention_map(&inner.weights.params, &image, block, token)
            .map_err(js_err)?;
        let near = Array::new();
        for (t, p) in map.near {
            near.push(&Array::of2(&(t as u32).into(), &p.into()));
        }
        let far = Array::new();
        for c in map.far {
            let row = Array::new();
            for v in [c.level, c.top, c.left, c.height, c.width] {
                row.push(&(v as u32).into());
            }
            row.push(&c.probability.into());
            far.push(&row);
        }
        let out = Object::new();
        set(&out, "near", &near)?;
        set(&out, "far", &far)?;
        Ok(out.into())
    }
}

fn canvas_of(weights: &VitWeights, digit: &[u8]) -> Result<Vec<f32>, JsValue> {
    let mut image = Vec::new();
    place_centred(digit, &weights.config, &mut image).map_err(js_err)?;
    Ok(image)
}

/// An MNIST-like digit (784 bytes) from RGBA pixels of a `width x height` canvas, with the
/// same preprocessing as `multipole classify`. Throws an Error named `NoDigit` for a blank
/// canvas.
#[wasm_bindgen]
pub fn digit_from_rgba(rgba: Vec<u8>, width: u32, height: u32) -> Result<Vec<u8>, JsValue> {
    preprocess::digit_from_rgba(rgba, width, height).map_err(digit_err)
}

/// An MNIST-like digit (784 bytes) from the bytes of a PNG or JPEG file. Throws an Error
/// named `NoDigit` for a blank picture.
#[wasm_bindgen]
pub fn digit_from_file(bytes: Vec<u8>) -> Result<Vec<u8>, JsValue> {
    preprocess::digit_from_bytes(&bytes).map_err(digit_err)
}

/// The library's GPU checks in the browser: FMA forward and backward on WebGPU against the
/// CPU reference compiled to wasm, over 1D and 2D configurations. Resolves to a report
/// `{passed, failed, lines}`; `lines` holds one line per check.
#[wasm_bindgen]
pub fn run_gpu_checks() -> Promise {
    future_to_promise(async move {
        let ctx = GpuContext::new().await.map_err(js_err)?;
        let results = crate::browser_checks::run(&ctx).await;
        let lines = Array::new();
        let (mut passed, mut failed) = (0u32, 0u32);
        for (name, r) in results {
            match r {
                Ok(detail) => {
                    passed += 1;
                    lines.push(&format!("ok {name}: {detail}").into());
                }
                Err(e) => {
                    failed += 1;
                    lines.push(&format!("FAILED {name}: {e}").into());
                }
            }
        }
        let out = Object::new();
        set(&out, "passed", &passed.into())?;
        set(&out, "failed", &failed.into())?;
        set(&out, "lines", &lines)?;
        set(&out, "adapter", &ctx.describe().into())?;
        Ok(out.into())
    })
}
