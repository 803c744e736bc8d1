//! The 1D rules of docs/fma.md §4, written as the spec states them.

use super::{Dims, Geometry, Level};
use crate::config::FmaConfig;
use crate::error::{FmaError, Result};

pub(super) fn build(n: usize, config: &FmaConfig) -> Result<Geometry> {
    let m = config.m;
    // n' = m * 2^k, the smallest with k >= 1 and n' >= n.
    let too_long = || FmaError::BadShape {
        what: "sequence length n".into(),
        expected: "a padded length that fits in memory".into(),
        got: n.to_string(),
    };
    let mut n_pad = m.checked_mul(2).ok_or_else(too_long)?;
    while n_pad < n {
        n_pad = n_pad.checked_mul(2).ok_or_else(too_long)?;
    }
    let k = (n_pad / m).trailing_zeros() as usize;
    let mut levels = Vec::new();
    let mut cell_offset = 0;
    for l in 1..=super::kept_levels(k, config) {
        let s = m << (l - 1);
        let lv = Level {
            group_h: 1,
            group_w: s,
            groups_y: 1,
            groups_x: n_pad / s,
            seg_h: 1,
            seg_w: s / config.p,
            cell_offset,
        };
        cell_offset += lv.groups();
        levels.push(lv);
    }
    Ok(Geometry {
        dims: Dims::One,
        causal: config.causal,
        p: config.p,
        real_h: 1,
        real_w: n,
        pad_h: 1,
        pad_w: n_pad,
        cell_h: 1,
        cell_w: m,
        levels,
    })
}

/// N(i) as cells: the fine cell and both neighbours; causal keeps the left one and itself.
pub(super) fn near_cells(f: usize, cells: usize, causal: bool) -> Vec<usize> {
    let hi = if causal { f } else { (f + 1).min(cells - 1) };
    (f.saturating_sub(1)..=hi).collect()
}

/// I_l for a query in cell c: { g : |g/2 - c/2| <= 1 and |g - c| >= 2 }, causal: g <= c - 2.
pub(super) fn far_cells(c: usize, groups: usize, causal: bool) -> Vec<usize> {
    let (c, groups) = (c as i64, groups as i64);
    ((c - 3).max(0)..=(c + 3).min(groups - 1))
        .filter(|&g| (g / 2 - c / 2).abs() <= 1 && (g - c).abs() >= 2)
        .filter(|&g| !causal || g <= c - 2)
        .map(|g| g as usize)
        .collect()
}
