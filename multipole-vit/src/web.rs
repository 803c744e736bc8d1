//! The demo page's API (wasm-bindgen) for the Burn model, the same calls as the core's `web`
//! (`web/app.js` loads this build from web/pkg-burn/ when the address has `?burn`): the
//! vision transformer on Burn's WebGPU device with FMA's kernels, the same preprocessing as
//! `multipole classify`, and the attention map of a token.
//!
//! Every call that touches the GPU returns a Promise; nothing blocks the page.

use std::rc::Rc;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use js_sys::{Array, Float32Array, Object, Promise, Reflect};
use multipole::FmaError;
use multipole::model::mnist::place_centred;
use multipole::model::{VitConfig, VitWeights, preprocess};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::Vit;
use crate::model::read_f32_async;

struct Inner {
    device: Device,
    model: Vit,
    adapter: String,
}

/// The demo's model on the GPU.
#[wasm_bindgen]
pub struct Classifier {
    inner: Rc<Inner>,
}

pub(crate) fn js_err(e: impl std::fmt::Display) -> JsValue {
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

unsafe extern "C" {
    /// The constructors wasm-ld collects (Burn's and cubecl's `inventory` registrations).
    fn __wasm_call_ctors();
}

/// Runs the constructors once, when the module starts. Without an explicit call wasm-ld wraps
/// every export in one that runs them all again: that cost the page about 1 s per digit.
#[wasm_bindgen(start)]
fn start() {
    // SAFETY: called once, before any other export, as the linker's convention requires.
    unsafe { __wasm_call_ctors() }
}

fn set(obj: &Object, key: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(obj, &JsValue::from_str(key), value).map(|_| ())
}

#[wasm_bindgen]
impl Classifier {
    /// Opens WebGPU (Burn's device, shared with FMA's kernels) and uploads the weights
    /// (safetensors bytes). Resolves to a `Classifier`.
    pub fn create(weights: Vec<u8>) -> Promise {
        future_to_promise(async move {
            let weights = VitWeights::from_bytes(&weights).map_err(js_err)?;
            let device = multipole_burn::init_wgpu_async().await.map_err(js_err)?;
            let adapter = multipole_burn::context(&device)
                .map_or_else(|| "WebGPU".into(), |ctx| ctx.describe());
            let model = Vit::from_weights(&weights, &device).map_err(js_err)?;
            Ok(Classifier {
                inner: Rc::new(Inner {
                    device,
                    model,
                    adapter,
                }),
            }
            .into())
        })
    }

    /// The adapter the model runs on.
    pub fn adapter(&self) -> String {
        self.inner.adapter.clone()
    }

    /// Tokens per side of the attention grid.
    pub fn grid(&self) -> usize {
        self.inner.model.config().grid()
    }

    /// Transformer blocks.
    pub fn depth(&self) -> usize {
        self.inner.model.config().depth
    }

    /// Probabilities of the 10 classes for a 28 x 28 digit (784 bytes, 0 = background), on
    /// the GPU. Resolves to a Float32Array.
    pub fn classify(&self, digit: Vec<u8>) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let image = canvas_of(inner.model.config(), &digit)?;
            let pixels = image.len();
            let images = Tensor::from_data(TensorData::new(image, [1, pixels]), &inner.device);
            let logits = inner.model.forward(images).map_err(js_err)?;
            let probs = read_f32_async(softmax(logits, 1), "probabilities")
                .await
                .map_err(js_err)?;
            Ok(Float32Array::from(&probs[..]).into())
        })
    }

    /// Where token `token` (row-major on the grid) attended in block `block` for this digit,
    /// averaged over heads. Resolves to `{near: [[token, p], ...], far: [[level, top, left,
    /// height, width, p], ...]}` in token-grid coordinates.
    pub fn attention(&self, digit: Vec<u8>, block: usize, token: usize) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let image = canvas_of(inner.model.config(), &digit)?;
            let map = crate::attention_map(&inner.model, &image, block, token)
                .await
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
        })
    }
}

fn canvas_of(config: &VitConfig, digit: &[u8]) -> Result<Vec<f32>, JsValue> {
    let mut image = Vec::new();
    place_centred(digit, config, &mut image).map_err(js_err)?;
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
