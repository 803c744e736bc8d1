//! The segmentation page's API (wasm-bindgen; `web/segment.html` loads it from web/pkg-burn/):
//! the page segmenter on Burn's WebGPU device with FMA's kernels, and the same weights with
//! exact attention for the page's comparison. Every call that touches the GPU returns a
//! Promise; nothing blocks the page.

use std::rc::Rc;

use burn::tensor::Device;
use js_sys::{Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::canvas::INK;
use crate::segment::{PALETTE, SegAttention, SegVit, ink_from_grey};
use crate::web::js_err;

struct Inner {
    model: SegVit,
    /// The same weights with exact attention (FMA's kernels, one cell over the grid).
    exact: SegVit,
    adapter: String,
    max_binding: u64,
}

/// The page's segmenter on the GPU.
#[wasm_bindgen]
pub struct Segmenter {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl Segmenter {
    /// Opens WebGPU (Burn's device, shared with FMA's kernels) and uploads the weights
    /// (safetensors bytes from `multipole train-segment`). Resolves to a `Segmenter`.
    pub fn create(weights: Vec<u8>) -> Promise {
        future_to_promise(async move {
            let device: Device = multipole_burn::init_wgpu_async().await.map_err(js_err)?;
            let ctx = multipole_burn::context(&device);
            let adapter = ctx
                .as_ref()
                .map_or_else(|| "WebGPU".into(), |c| c.describe());
            let max_binding = ctx.map_or(0, |c| c.limits().max_storage_buffer_binding_size);
            let model = SegVit::from_bytes(&weights, &device).map_err(js_err)?;
            let exact = model
                .clone()
                .with_attention(SegAttention::Dense)
                .map_err(js_err)?;
            Ok(Segmenter {
                inner: Rc::new(Inner {
                    model,
                    exact,
                    adapter,
                    max_binding,
                }),
            }
            .into())
        })
    }

    /// The adapter the model runs on.
    pub fn adapter(&self) -> String {
        self.inner.adapter.clone()
    }

    /// Pixels per token side.
    pub fn patch(&self) -> usize {
        self.inner.model.config().patch
    }

    /// Attention heads per block (the page's estimate of exact attention's score matrix).
    pub fn heads(&self) -> usize {
        self.inner.model.config().heads
    }

    /// The device's largest storage binding, in bytes.
    pub fn max_binding(&self) -> f64 {
        self.inner.max_binding as f64
    }

    /// Each pixel's class (0-9 a digit, 10 background) for the RGBA pixels of a `width x
    /// height` canvas, either polarity; with `exact`, through exact attention instead of
    /// FMA. Resolves to a Uint8Array; rejects with an Error named `Empty` when nothing is
    /// inked.
    pub fn segment(&self, rgba: Vec<u8>, width: u32, height: u32, exact: bool) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let (w, h) = (width as usize, height as usize);
            if rgba.len() != w * h * 4 {
                return Err(js_err(format!(
                    "{} RGBA bytes for a {w} x {h} canvas",
                    rgba.len()
                )));
            }
            // Luminance, with transparent pixels as black: a cleared canvas is background.
            let grey: Vec<u8> = rgba
                .chunks_exact(4)
                .map(|p| {
                    let y = (u32::from(p[0]) * 3 + u32::from(p[1]) * 6 + u32::from(p[2])) / 10;
                    (y * u32::from(p[3]) / 255) as u8
                })
                .collect();
            let ink = ink_from_grey(&grey, w, h).map_err(js_err)?;
            if !ink.iter().any(|&v| v >= INK) {
                let err = js_sys::Error::new("the canvas is empty: draw some digits");
                err.set_name("Empty");
                return Err(err.into());
            }
            let model = if exact { &inner.exact } else { &inner.model };
            let labels = model.segment_async(&ink, w, h).await.map_err(js_err)?;
            Ok(Uint8Array::from(&labels[..]).into())
        })
    }
}

/// The mask colours, RGB per class (0-9, then the background), 33 bytes.
#[wasm_bindgen]
pub fn palette() -> Vec<u8> {
    PALETTE.iter().flatten().copied().collect()
}
