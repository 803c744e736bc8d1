//! Synthetic pages of handwriting for segmentation: several MNIST digits per square canvas at
//! random positions and scales with little overlap, every ink pixel labelled with its digit's
//! class (0-9) and every other pixel `BACKGROUND`. Canvas `index` of a seed is the same on every
//! machine and can be made on its own, so a data set needs no storage and no ordering.
//!
//! Which digits a canvas may use is the caller's: training canvases from the training split,
//! evaluation canvases from the held-out split (`Digits::split`).

use multipole::model::mnist::{Digits, SIDE};
use multipole::rng::Rng;

use crate::{Error, Result};

/// The label of a pixel no digit inked: class 10 of 11.
pub const BACKGROUND: u8 = 10;
/// Classes a pixel can take: the ten digits and the background.
pub const CLASSES: usize = 11;
/// A resampled digit's pixel is ink from this grey value (of 1) on: the classifier's threshold
/// for a picture holding a digit (`preprocess::MIN_INK`, 32 of 255).
pub const INK: f32 = 32.0 / 255.0;
/// Tries to find a place for each digit before it is left out.
const TRIES: usize = 20;
/// The largest canvas side: 16,384 tokens at one token per 2 x 2 pixels is 256 x 256; 4x that
/// side again for the size-generalisation test, with room to spare.
pub const MAX_SIDE: usize = 2048;

/// How canvases are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct CanvasConfig {
    /// Side of the square canvas in pixels.
    pub side: usize,
    /// Digits tried per canvas, drawn uniformly from this range (inclusive); a digit that finds
    /// no place within the overlap bound is left out.
    pub digits: (usize, usize),
    /// Digit side in pixels, drawn uniformly from this range (inclusive; MNIST's is 28).
    pub digit_side: (usize, usize),
    /// Largest fraction of a digit's box that may lie over boxes placed before it.
    pub max_overlap: f64,
}

impl CanvasConfig {
    /// Canvases of `side` pixels with about one digit per 48 x 48 pixels, each 20 to 40 pixels
    /// tall (at most the canvas), overlapping at most 10% of their boxes.
    pub fn new(side: usize) -> CanvasConfig {
        let area = (side * side) as f64 / (48.0 * 48.0);
        let most = (area.round() as usize).max(1);
        CanvasConfig {
            side,
            digits: ((most / 2).max(1), most),
            digit_side: (20.min(side).max(1), 40.min(side).max(1)),
            max_overlap: 0.1,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Fma(multipole::FmaError::Model(m)));
        let (lo, hi) = self.digit_side;
        if self.side == 0 || self.side > MAX_SIDE {
            return bad(format!(
                "a canvas side must be 1 to {MAX_SIDE}, got {}",
                self.side
            ));
        }
        if lo == 0 || lo > hi || hi > self.side {
            return bad(format!(
                "digit sides {lo}..={hi} must be at least 1, ascending and fit the canvas of {}",
                self.side
            ));
        }
        if self.digits.0 > self.digits.1 || self.digits.1 > usize::from(u16::MAX) {
            return bad(format!(
                "digit counts {:?} must ascend and stay below {}",
                self.digits,
                u16::MAX
            ));
        }
        if !(0.0..=1.0).contains(&self.max_overlap) {
            return bad(format!(
                "max_overlap {} must be in [0, 1]",
                self.max_overlap
            ));
        }
        Ok(())
    }
}

/// One digit on a canvas: its class, its box and which digit of the source set it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub class: u8,
    pub y: usize,
    pub x: usize,
    pub side: usize,
    pub source: usize,
}

/// A canvas, row-major: grey values in [0, 1], a class per pixel, and which placed digit
/// inked each pixel (`None` for background), for per-digit scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Canvas {
    pub side: usize,
    pub pixels: Vec<f32>,
    pub labels: Vec<u8>,
    pub owner: Vec<Option<u16>>,
    pub digits: Vec<Placed>,
}

/// Canvas `index` of `seed` drawn from `digits`.
pub fn canvas(digits: &Digits, config: &CanvasConfig, seed: u64, index: u64) -> Result<Canvas> {
    config.validate()?;
    if digits.is_empty() {
        return Err(Error::Fma(multipole::FmaError::Model(
            "canvases need at least one source digit".into(),
        )));
    }
    // One stream per canvas: canvas i does not depend on how many were made before it.
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let side = config.side;
    let mut out = Canvas {
        side,
        pixels: vec![0.0; side * side],
        labels: vec![BACKGROUND; side * side],
        owner: vec![None; side * side],
        digits: Vec::new(),
    };
    let (lo, hi) = config.digits;
    let count = lo + rng.below(hi - lo + 1);
    for _ in 0..count {
        let source = rng.below(digits.len());
        let (slo, shi) = config.digit_side;
        let size = slo + rng.below(shi - slo + 1);
        let free = side - size + 1;
        let spot = (0..TRIES)
            .map(|_| (rng.below(free), rng.below(free)))
            .find(|&(y, x)| overlap(&out.digits, y, x, size) <= config.max_overlap);
        let Some((y, x)) = spot else {
            continue;
        };
        let placed = Placed {
            class: digits.labels[source],
            y,
            x,
            side: size,
            source,
        };
        let id = out.digits.len() as u16;
        draw(&mut out, digits.image(source), placed, id);
        out.digits.push(placed);
    }
    Ok(out)
}

/// The fraction of a `size` box at (y, x) that lies over the boxes in `placed` (summed: a
/// pixel under two boxes counts twice, which only makes the bound stricter).
fn overlap(placed: &[Placed], y: usize, x: usize, size: usize) -> f64 {
    let span =
        |a: usize, la: usize, b: usize, lb: usize| (a + la).min(b + lb).saturating_sub(a.max(b));
    let covered: usize = placed
        .iter()
        .map(|p| span(y, size, p.y, p.side) * span(x, size, p.x, p.side))
        .sum();
    covered as f64 / (size * size) as f64
}

/// Draws a `SIDE x SIDE` digit resampled (bilinear) to its box; where it is ink and brighter
/// than what is there, the pixel takes its value, class and owner.
fn draw(canvas: &mut Canvas, digit: &[u8], p: Placed, id: u16) {
    let at = |y: isize, x: isize| -> f32 {
        if y < 0 || x < 0 || y >= SIDE as isize || x >= SIDE as isize {
            0.0
        } else {
            f32::from(digit[y as usize * SIDE + x as usize]) / 255.0
        }
    };
    let ratio = SIDE as f32 / p.side as f32;
    for dy in 0..p.side {
        let sy = (dy as f32 + 0.5) * ratio - 0.5;
        let (y0, fy) = (sy.floor(), sy - sy.floor());
        for dx in 0..p.side {
            let sx = (dx as f32 + 0.5) * ratio - 0.5;
            let (x0, fx) = (sx.floor(), sx - sx.floor());
            let (yi, xi) = (y0 as isize, x0 as isize);
            let v = (1.0 - fy) * ((1.0 - fx) * at(yi, xi) + fx * at(yi, xi + 1))
                + fy * ((1.0 - fx) * at(yi + 1, xi) + fx * at(yi + 1, xi + 1));
            let i = (p.y + dy) * canvas.side + p.x + dx;
            if v >= INK && v > canvas.pixels[i] {
                canvas.pixels[i] = v;
                canvas.labels[i] = p.class;
                canvas.owner[i] = Some(id);
            } else if v > canvas.pixels[i] {
                // Faint edges keep their grey but not a class: below INK is background.
                canvas.pixels[i] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten synthetic digits: digit c is a filled square of grey 200 in a band that depends on c.
    fn digits() -> Digits {
        let mut d = Digits::default();
        for c in 0..10u8 {
            let mut img = vec![0u8; SIDE * SIDE];
            for y in 4..24 {
                for x in 4 + c as usize..14 + c as usize {
                    img[y * SIDE + x] = 200;
                }
            }
            d.pixels.extend(img);
            d.labels.push(c);
        }
        d
    }

    #[test]
    fn canvases_are_reproducible_and_differ_by_index() {
        let (d, c) = (digits(), CanvasConfig::new(128));
        let a = canvas(&d, &c, 5, 3).unwrap();
        assert_eq!(a, canvas(&d, &c, 5, 3).unwrap());
        assert_ne!(a.pixels, canvas(&d, &c, 5, 4).unwrap().pixels);
        assert_ne!(a.pixels, canvas(&d, &c, 6, 3).unwrap().pixels);
    }

    #[test]
    fn ink_is_labelled_with_its_digit_and_the_rest_is_background() {
        let (d, c) = (digits(), CanvasConfig::new(192));
        for index in 0..20 {
            let cv = canvas(&d, &c, 1, index).unwrap();
            assert!(cv.digits.len() <= c.digits.1 && !cv.digits.is_empty());
            for i in 0..cv.side * cv.side {
                match cv.owner[i] {
                    None => {
                        assert_eq!(cv.labels[i], BACKGROUND);
                        assert!(cv.pixels[i] < INK);
                    }
                    Some(k) => {
                        let p = cv.digits[k as usize];
                        assert_eq!(cv.labels[i], p.class);
                        assert_eq!(p.class, d.labels[p.source]);
                        assert!(cv.pixels[i] >= INK);
                        let (y, x) = (i / cv.side, i % cv.side);
                        assert!(
                            (p.y..p.y + p.side).contains(&y) && (p.x..p.x + p.side).contains(&x)
                        );
                    }
                }
            }
            // Every placed digit kept some ink of its own.
            for k in 0..cv.digits.len() {
                assert!(cv.owner.contains(&Some(k as u16)), "digit {k} lost");
            }
        }
    }

    #[test]
    fn boxes_respect_the_overlap_bound() {
        let (d, c) = (digits(), CanvasConfig::new(160));
        for index in 0..30 {
            let cv = canvas(&d, &c, 2, index).unwrap();
            for (k, p) in cv.digits.iter().enumerate() {
                let before = overlap(&cv.digits[..k], p.y, p.x, p.side);
                assert!(before <= c.max_overlap, "{before}");
            }
        }
    }

    #[test]
    fn a_digit_keeps_its_ink_when_drawn_at_its_own_size() {
        let d = digits();
        let c = CanvasConfig {
            digits: (1, 1),
            digit_side: (SIDE, SIDE),
            ..CanvasConfig::new(SIDE)
        };
        let cv = canvas(&d, &c, 0, 0).unwrap();
        let src = d.image(cv.digits[0].source);
        // At scale 1 the bilinear sample is the source pixel.
        for (i, &v) in src.iter().enumerate() {
            assert!((cv.pixels[i] - f32::from(v) / 255.0).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_configs_are_errors() {
        let d = digits();
        for c in [
            CanvasConfig {
                side: 0,
                ..CanvasConfig::new(64)
            },
            CanvasConfig {
                side: MAX_SIDE + 1,
                ..CanvasConfig::new(64)
            },
            CanvasConfig {
                digit_side: (30, 20),
                ..CanvasConfig::new(64)
            },
            CanvasConfig {
                digit_side: (20, 65),
                ..CanvasConfig::new(64)
            },
            CanvasConfig {
                digits: (3, 2),
                ..CanvasConfig::new(64)
            },
            CanvasConfig {
                max_overlap: f64::NAN,
                ..CanvasConfig::new(64)
            },
        ] {
            assert!(canvas(&d, &c, 0, 0).is_err(), "{c:?}");
        }
        assert!(canvas(&Digits::default(), &CanvasConfig::new(64), 0, 0).is_err());
        // The defaults fit any canvas.
        for side in [1, 16, 32, 64, MAX_SIDE] {
            canvas(&d, &CanvasConfig::new(side), 0, 0).unwrap();
        }
    }
}
