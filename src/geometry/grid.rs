//! The 2D rules of docs/fma.md §8: an image padded to a square of side m * 2^k, square cells,
//! Chebyshev neighbourhoods.

use super::{Dims, Geometry, Level};
use crate::config::FmaConfig;
use crate::error::{FmaError, Result};

pub(super) fn build(height: usize, width: usize, config: &FmaConfig) -> Result<Geometry> {
    let m = config.m;
    // Side S = m * 2^k, the smallest with k >= 1 and S >= max(height, width).
    let too_large = || FmaError::BadShape {
        what: "image size".into(),
        expected: "a padded grid that fits in memory".into(),
        got: format!("{height}x{width}"),
    };
    let mut side = m.checked_mul(2).ok_or_else(too_large)?;
    while side < height.max(width) {
        side = side.checked_mul(2).ok_or_else(too_large)?;
    }
    side.checked_mul(side).ok_or_else(too_large)?;
    let k = (side / m).trailing_zeros() as usize;
    let root = config.p.isqrt();
    let mut levels = Vec::new();
    let mut cell_offset = 0;
    for l in 1..=super::kept_levels(k, config) {
        let s = m << (l - 1);
        let lv = Level {
            group_h: s,
            group_w: s,
            groups_y: side / s,
            groups_x: side / s,
            seg_h: s / root,
            seg_w: s / root,
            cell_offset,
        };
        cell_offset += lv.groups();
        levels.push(lv);
    }
    Ok(Geometry {
        dims: Dims::Two,
        causal: false,
        p: config.p,
        real_h: height,
        real_w: width,
        pad_h: side,
        pad_w: side,
        cell_h: m,
        cell_w: m,
        levels,
    })
}

fn chebyshev(a: (usize, usize), b: (usize, usize)) -> usize {
    a.0.abs_diff(b.0).max(a.1.abs_diff(b.1))
}

/// The fine cells at Chebyshev distance <= 1 from fine cell f (a row-major id on a
/// `side x side` grid of cells): up to 3 x 3.
pub(super) fn near_cells(f: usize, side: usize) -> Vec<usize> {
    let (cy, cx) = (f / side, f % side);
    let rows = cy.saturating_sub(1)..=(cy + 1).min(side - 1);
    rows.flat_map(|y| (cx.saturating_sub(1)..=(cx + 1).min(side - 1)).map(move |x| y * side + x))
        .collect()
}

/// I_l for a query in cell c of a `side x side` level: the cells whose parent is within
/// distance 1 of c's parent and that are at distance >= 2 from c (up to 27).
pub(super) fn far_cells(c: usize, side: usize) -> Vec<usize> {
    let (cy, cx) = (c / side, c % side);
    // Children of the parent's neighbours lie within 3 cells of c along each axis.
    let span = |v: usize| v.saturating_sub(3)..=(v + 3).min(side - 1);
    span(cy)
        .flat_map(|y| span(cx).map(move |x| (y, x)))
        .filter(|&g| chebyshev((g.0 / 2, g.1 / 2), (cy / 2, cx / 2)) <= 1)
        .filter(|&g| chebyshev(g, (cy, cx)) >= 2)
        .map(|(y, x)| y * side + x)
        .collect()
}
