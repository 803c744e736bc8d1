//! Any picture of a digit to what the model saw in training: a 28 x 28 grey digit, white on
//! black, its ink scaled into a 20 x 20 box and centred by its centre of mass, as MNIST was made.

use image::{DynamicImage, GrayImage, imageops};

use super::mnist::SIDE;
use crate::error::{FmaError, Result};

/// Side of the box the ink is scaled into (MNIST: 20 of 28).
const INK_BOX: u32 = 20;
/// Least contrast (of 255) between the darkest and brightest ink after the background is
/// removed for a picture to hold a digit: below it is blank paper, noise or compression
/// artefacts, which the model would otherwise classify with high confidence.
pub const MIN_INK: u8 = 32;

/// Decodes PNG or JPEG bytes (any size, colour or grey) into an MNIST-like digit.
/// `FmaError::NoDigit` if the picture is blank.
pub fn digit_from_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| FmaError::Model(format!("not a readable PNG or JPEG image ({e})")))?;
    digit_from_image(&img)
}

/// An MNIST-like digit from the RGBA pixels of a `width x height` picture (a page's canvas).
pub fn digit_from_rgba(rgba: Vec<u8>, width: u32, height: u32) -> Result<Vec<u8>> {
    let len = rgba.len();
    let img =
        image::RgbaImage::from_raw(width, height, rgba).ok_or_else(|| FmaError::BadShape {
            what: "RGBA pixels".into(),
            expected: format!("{width} x {height} x 4 bytes"),
            got: format!("{len} bytes"),
        })?;
    digit_from_image(&DynamicImage::ImageRgba8(img))
}

/// An MNIST-like digit from a decoded image. Dark ink on a light background is inverted
/// (the background is taken to be the colour of the border). `FmaError::NoDigit` if nothing
/// stands out from the background by at least `MIN_INK`.
pub fn digit_from_image(img: &DynamicImage) -> Result<Vec<u8>> {
    // Transparent pixels count as background: composite over black, after deciding polarity.
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut grey = GrayImage::new(w, h);
    for (x, y, p) in rgba.enumerate_pixels() {
        let [r, g, b, a] = p.0;
        let lum = (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32) * a as f32 / 255.0;
        grey.put_pixel(x, y, image::Luma([lum.round() as u8]));
    }
    let border: Vec<u8> = grey
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x + 1 == w || *y + 1 == h)
        .map(|(_, _, p)| p.0[0])
        .collect();
    let border_mean = border.iter().map(|&v| v as f32).sum::<f32>() / border.len().max(1) as f32;
    // Transparent backgrounds come out black, which is already the right polarity.
    if border_mean > 127.0 {
        imageops::invert(&mut grey);
    }
    // The background level becomes 0, so faint paper is not ink.
    let floor = border_mean.min(255.0 - border_mean) as u8;
    for p in grey.pixels_mut() {
        p.0[0] = p.0[0].saturating_sub(floor);
    }
    normalise(&grey)
}

/// Crops to the ink, scales its longer side to 20 pixels and centres its mass in 28 x 28.
fn normalise(grey: &GrayImage) -> Result<Vec<u8>> {
    let (w, h) = grey.dimensions();
    let max = grey.pixels().map(|p| p.0[0]).max().unwrap_or(0);
    let mut out = vec![0u8; SIDE * SIDE];
    if max < MIN_INK {
        return Err(FmaError::NoDigit);
    }
    let threshold = max / 4;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in grey.enumerate_pixels() {
        if p.0[0] > threshold {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    let crop = imageops::crop_imm(grey, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    let (cw, ch) = crop.dimensions();
    let scale = INK_BOX as f32 / cw.max(ch) as f32;
    let (nw, nh) = (
        ((cw as f32 * scale).round() as u32).clamp(1, INK_BOX),
        ((ch as f32 * scale).round() as u32).clamp(1, INK_BOX),
    );
    let small = imageops::resize(&crop, nw, nh, imageops::FilterType::Triangle);
    // Centre of mass of the scaled ink, moved to the centre of the 28 x 28 digit.
    let (mut mass, mut mx, mut my) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y, p) in small.enumerate_pixels() {
        let v = p.0[0] as f32;
        mass += v;
        mx += v * x as f32;
        my += v * y as f32;
    }
    let (cx, cy) = if mass > 0.0 {
        (mx / mass, my / mass)
    } else {
        (nw as f32 / 2.0, nh as f32 / 2.0)
    };
    let half = SIDE as f32 / 2.0;
    let (ox, oy) = (
        (half - cx - 0.5).round() as i64,
        (half - cy - 0.5).round() as i64,
    );
    for (x, y, p) in small.enumerate_pixels() {
        let (tx, ty) = (x as i64 + ox, y as i64 + oy);
        if (0..SIDE as i64).contains(&tx) && (0..SIDE as i64).contains(&ty) {
            out[ty as usize * SIDE + tx as usize] = p.0[0];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb, RgbImage};

    /// A bar drawn on a big canvas comes out as a bar of the MNIST size, centred.
    #[test]
    fn both_polarities_and_any_size_give_the_same_digit() {
        let draw = |fg: u8, bg: u8| {
            let mut img = RgbImage::from_pixel(90, 120, Rgb([bg; 3]));
            for y in 20..100 {
                for x in 10..30 {
                    img.put_pixel(x, y, Rgb([fg; 3]));
                }
            }
            DynamicImage::ImageRgb8(img)
        };
        let white_on_black = digit_from_image(&draw(255, 0)).unwrap();
        let black_on_white = digit_from_image(&draw(0, 255)).unwrap();
        assert_eq!(white_on_black, black_on_white);
        // The bar is 80 tall: scaled to 20 rows, centred on row 14.
        let rows: Vec<usize> = (0..SIDE)
            .filter(|y| {
                white_on_black[y * SIDE..(y + 1) * SIDE]
                    .iter()
                    .any(|&v| v > 128)
            })
            .collect();
        assert_eq!(rows.len(), 20, "{rows:?}");
        assert!((rows[0] as i64 - 4).abs() <= 1, "{rows:?}");
        let cols: Vec<usize> = (0..SIDE)
            .filter(|x| (0..SIDE).any(|y| white_on_black[y * SIDE + x] > 128))
            .collect();
        assert!(
            (4..=6).contains(&cols.len()) && (cols[0] as i64 - 12).abs() <= 1,
            "{cols:?}"
        );
    }

    #[test]
    fn blank_and_unreadable_inputs() {
        // One colour, any size (1 x 1 included), is no digit, and neither is faint noise.
        for (w, h, v) in [
            (10, 10, 255),
            (10, 10, 0),
            (1, 1, 0),
            (1, 1, 200),
            (1, 1, 100),
        ] {
            let blank = DynamicImage::ImageLuma8(GrayImage::from_pixel(w, h, Luma([v])));
            assert_eq!(
                digit_from_image(&blank),
                Err(FmaError::NoDigit),
                "{w}x{h} of {v}"
            );
        }
        let mut noisy = GrayImage::from_pixel(40, 40, Luma([250]));
        for i in 0..40 {
            noisy.put_pixel(i, (i * 7) % 40, Luma([235]));
        }
        let noisy = DynamicImage::ImageLuma8(noisy);
        assert_eq!(digit_from_image(&noisy), Err(FmaError::NoDigit));
        // A faint but real stroke is still a digit.
        let mut faint = GrayImage::from_pixel(40, 40, Luma([255]));
        for y in 5..35 {
            faint.put_pixel(20, y, Luma([200]));
        }
        assert!(digit_from_image(&DynamicImage::ImageLuma8(faint)).is_ok());
        let err = digit_from_bytes(b"GIF89a nonsense")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a readable"), "{err}");
    }
}
