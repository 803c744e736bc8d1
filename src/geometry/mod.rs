//! The FMA geometry: padding, levels, cells, near fields, interaction lists and multiplicities.
//!
//! This module is the only place that knows the rules of docs/fma.md §3, §4 and §8. The CPU
//! reference, the GPU tables and the tests read it; no kernel re-derives it. Tokens live on a
//! generic `real_h x real_w` row-major grid (a sequence is a grid of one row), padded to a
//! `pad_h x pad_w` grid; a cell is a rectangle of that grid, so token arithmetic is shared
//! between 1D and 2D and only the neighbourhood rules differ.

mod causal;
mod grid;
mod line;
pub mod tables;

pub use causal::CAUSAL_KEPT_GROUPS;

use crate::config::{FmaConfig, Layout};
use crate::error::{FmaError, Result};

/// Most padded tokens a hierarchy may hold: GPU indices are 32-bit words.
pub const MAX_PADDED_TOKENS: u64 = u32::MAX as u64;
/// Most padded tokens per real token. A sequence pads to less than 2n and a square image to
/// less than 4n; only a long thin image (padded to a square) can exceed this.
pub const MAX_PADDING_RATIO: usize = 64;
/// Padded grids up to this size are always accepted, however small the input.
const PADDING_SLACK: usize = 1 << 12;
/// Most fine cells: the geometry tables hold a few words per cell of every level.
pub const MAX_FINE_CELLS: usize = 1 << 22;

/// Which neighbourhood rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dims {
    /// Sequences (docs/fma.md §4).
    One,
    /// Images (docs/fma.md §8).
    Two,
}

/// Layout of one coarse level l = 1..L: its groups (cells) and their p segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Group size in grid rows and columns.
    pub group_h: usize,
    pub group_w: usize,
    /// Groups per grid row and column of this level.
    pub groups_y: usize,
    pub groups_x: usize,
    /// Segment size (a group holds p segments, row-major).
    pub seg_h: usize,
    pub seg_w: usize,
    /// Global id of this level's first cell (level 1 starts at 0: its cells are the fine cells).
    pub cell_offset: usize,
}

impl Level {
    pub fn groups(&self) -> usize {
        self.groups_y * self.groups_x
    }
    /// Tokens per group, the `S` of the weight shapes.
    pub fn group_tokens(&self) -> usize {
        self.group_h * self.group_w
    }
    pub fn segs_x(&self) -> usize {
        self.group_w / self.seg_w
    }
}

/// The whole hierarchy for one input size and configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    pub dims: Dims,
    pub causal: bool,
    pub p: usize,
    /// Real token grid (1D: 1 x n; 2D: the image's height x width).
    pub real_h: usize,
    pub real_w: usize,
    /// Padded grid (1D: 1 x n'; 2D: S x S).
    pub pad_h: usize,
    pub pad_w: usize,
    /// Fine cell size (1D: 1 x m; 2D: m x m).
    pub cell_h: usize,
    pub cell_w: usize,
    /// Coarse levels 1..L (index 0 is level 1).
    pub levels: Vec<Level>,
}

impl Geometry {
    /// The hierarchy for `n` tokens laid out as `config.layout` says: docs/fma.md §4 for a
    /// sequence, section 5 for an image (where n must equal height x width).
    pub fn new(n: usize, config: &FmaConfig) -> Result<Geometry> {
        config.validate()?;
        if n == 0 {
            return Err(FmaError::BadShape {
                what: "token count n".into(),
                expected: "at least 1".into(),
                got: "0".into(),
            });
        }
        let g = match config.layout {
            Layout::Sequence => line::build(n, &covering(config, n))?,
            Layout::Image { height, width } => {
                if height.checked_mul(width) != Some(n) {
                    return Err(FmaError::BadShape {
                        what: format!("token count n for a {height}x{width} image"),
                        expected: format!("n = height x width = {}", height.saturating_mul(width)),
                        got: n.to_string(),
                    });
                }
                grid::build(height, width, &covering(config, height.max(width)))?
            }
        };
        g.check_size()?;
        Ok(g)
    }

    /// Refuses hierarchies whose padding or cell count would make the work or the tables
    /// far larger than the input, or whose indices would not fit the GPU's 32-bit words.
    fn check_size(&self) -> Result<()> {
        let pad = self.n_pad();
        let limit = |what: &str, needed: usize, limit: usize, hint: &str| {
            Err(FmaError::LimitExceeded {
                what: what.into(),
                needed: needed as u64,
                limit: limit as u64,
                hint: hint.into(),
            })
        };
        // In u64: on 32-bit targets (wasm32) usize cannot exceed the limit at all.
        if pad as u64 > MAX_PADDED_TOKENS {
            return limit(
                "the padded token grid",
                pad,
                MAX_PADDED_TOKENS as usize,
                "shorten the input; an image pads to a square of its longer side, so split a long thin image",
            );
        }
        let ratio_cap = self
            .n()
            .saturating_mul(MAX_PADDING_RATIO)
            .max(PADDING_SLACK);
        if pad > ratio_cap {
            return limit(
                "the padded token grid",
                pad,
                ratio_cap,
                "an image pads to a square of its longer side: split a long thin image into squarer tiles, or lay it out as a sequence",
            );
        }
        if self.fine_cells() > MAX_FINE_CELLS {
            return limit(
                "fine cells",
                self.fine_cells(),
                MAX_FINE_CELLS,
                "use a larger m",
            );
        }
        Ok(())
    }

    /// Number of real tokens.
    pub fn n(&self) -> usize {
        self.real_h * self.real_w
    }
    /// Number of padded tokens.
    pub fn n_pad(&self) -> usize {
        self.pad_h * self.pad_w
    }
    /// Number of coarse levels L.
    pub fn num_levels(&self) -> usize {
        self.levels.len()
    }
    pub fn cells_x(&self) -> usize {
        self.pad_w / self.cell_w
    }
    pub fn fine_cells(&self) -> usize {
        (self.pad_h / self.cell_h) * self.cells_x()
    }
    pub fn cell_tokens(&self) -> usize {
        self.cell_h * self.cell_w
    }
    /// Cells of all levels; coarse row `cell * p + r` summarises segment r of that cell.
    pub fn total_cells(&self) -> usize {
        self.levels.last().map_or(0, |l| l.cell_offset + l.groups())
    }
    /// Tokens per group at each level, the `S` of the learned weight shapes.
    pub fn group_tokens(&self) -> Vec<usize> {
        self.levels.iter().map(Level::group_tokens).collect()
    }
    /// (level, group) of every cell of every level, in global cell id order.
    pub fn cells(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(i, lv)| (0..lv.groups()).map(move |c| (i + 1, c)))
    }

    /// Level (1-based) of a global cell id, and the group index within it.
    pub fn cell_level(&self, cell: usize) -> Option<(usize, usize)> {
        self.levels
            .iter()
            .enumerate()
            .find(|(_, lv)| cell >= lv.cell_offset && cell < lv.cell_offset + lv.groups())
            .map(|(i, lv)| (i + 1, cell - lv.cell_offset))
    }

    /// Real token index at padded grid position (y, x), or None for padding.
    pub fn token_at(&self, y: usize, x: usize) -> Option<usize> {
        (y < self.real_h && x < self.real_w).then_some(y * self.real_w + x)
    }

    /// Padded grid position of a real token.
    pub fn position(&self, token: usize) -> (usize, usize) {
        (token / self.real_w, token % self.real_w)
    }

    /// Fine cell of a real token.
    pub fn fine_cell_of(&self, token: usize) -> usize {
        let (y, x) = self.position(token);
        self.fine_cell_at(y, x)
    }

    /// Fine cell of a padded grid position.
    pub fn fine_cell_at(&self, y: usize, x: usize) -> usize {
        (y / self.cell_h) * self.cells_x() + x / self.cell_w
    }

    /// Padded positions of a fine cell, row-major (padding included).
    pub fn fine_cell_positions(&self, f: usize) -> Vec<(usize, usize)> {
        let (y0, x0) = (
            (f / self.cells_x()) * self.cell_h,
            (f % self.cells_x()) * self.cell_w,
        );
        rect(y0, x0, self.cell_h, self.cell_w)
    }

    /// Padded positions of group g at level l (1-based), row-major: the weights' `t` order.
    pub fn group_positions(&self, l: usize, g: usize) -> Vec<(usize, usize)> {
        let (y0, x0, h, w) = self.group_rect(l, g);
        rect(y0, x0, h, w)
    }

    /// The padded-grid rectangle (top, left, height, width) of group g at level l.
    pub fn group_rect(&self, l: usize, g: usize) -> (usize, usize, usize, usize) {
        let lv = &self.levels[l - 1];
        (
            (g / lv.groups_x) * lv.group_h,
            (g % lv.groups_x) * lv.group_w,
            lv.group_h,
            lv.group_w,
        )
    }

    /// Index `t` (within the group) of each position of segment r of group g at level l.
    pub fn segment_offsets(&self, l: usize, r: usize) -> Vec<usize> {
        let lv = &self.levels[l - 1];
        let (sy, sx) = (r / lv.segs_x(), r % lv.segs_x());
        rect(sy * lv.seg_h, sx * lv.seg_w, lv.seg_h, lv.seg_w)
            .into_iter()
            .map(|(y, x)| y * lv.group_w + x)
            .collect()
    }

    /// Global coarse rows (`cell * p + r`) of the level-(l-1) segments that tile segment r of
    /// group g at level l >= 2. A level-l segment is twice as long as a level-(l-1) one along
    /// each grid axis that the group extends over, so there are 2 (1D) or 4 (2D) of them.
    pub fn segment_children(&self, l: usize, g: usize, r: usize) -> Vec<usize> {
        let (lv, fine) = (&self.levels[l - 1], &self.levels[l - 2]);
        let (y0, x0) = self.group_positions(l, g)[self.segment_offsets(l, r)[0]];
        rect(0, 0, lv.seg_h / fine.seg_h, lv.seg_w / fine.seg_w)
            .into_iter()
            .map(|(a, b)| {
                let (y, x) = (y0 + a * fine.seg_h, x0 + b * fine.seg_w);
                let cell = (y / fine.group_h) * fine.groups_x + x / fine.group_w;
                let seg = ((y % fine.group_h) / fine.seg_h) * fine.segs_x()
                    + (x % fine.group_w) / fine.seg_w;
                (fine.cell_offset + cell) * self.p + seg
            })
            .collect()
    }

    /// Global coarse row (`cell * p + r`) of the level-l segment that holds padded grid
    /// position (y, x): in the O(n) variant (docs/fma.md §13) the coarse query a token at that
    /// position scores level l's coarse keys with.
    pub fn segment_at(&self, l: usize, y: usize, x: usize) -> usize {
        let lv = &self.levels[l - 1];
        let cell = (y / lv.group_h) * lv.groups_x + x / lv.group_w;
        let seg = ((y % lv.group_h) / lv.seg_h) * lv.segs_x() + (x % lv.group_w) / lv.seg_w;
        (lv.cell_offset + cell) * self.p + seg
    }

    /// `segment_at` for a real token.
    pub fn token_segment(&self, l: usize, token: usize) -> usize {
        let (y, x) = self.position(token);
        self.segment_at(l, y, x)
    }

    /// The level-(l+1) segment (global coarse row) that holds segment r of group g at level
    /// l < L: every segment lies inside exactly one segment of the next coarser level, the
    /// parent of the O(n) variant's downward pass (the inverse of `segment_children`).
    pub fn segment_parent(&self, l: usize, g: usize, r: usize) -> usize {
        let (y, x) = self.group_positions(l, g)[self.segment_offsets(l, r)[0]];
        self.segment_at(l + 1, y, x)
    }

    /// Real tokens in segment r of group g at level l: the multiplicity mu of docs/fma.md §6-7.
    pub fn multiplicity(&self, l: usize, g: usize, r: usize) -> usize {
        let pos = self.group_positions(l, g);
        self.segment_offsets(l, r)
            .into_iter()
            .filter(|&t| self.token_at(pos[t].0, pos[t].1).is_some())
            .count()
    }

    /// Fine cells whose keys a query of fine cell f sees at full resolution (padding and the
    /// causal mask within a cell are applied per key, see `near_key_allowed`).
    pub fn near_cells(&self, f: usize) -> Vec<usize> {
        match self.dims {
            Dims::One => line::near_cells(f, self.fine_cells(), self.causal),
            Dims::Two => grid::near_cells(f, self.cells_x()),
        }
    }

    /// Interaction list of cell c at level l (1-based): the groups of level l it sees coarsely.
    pub fn far_cells(&self, l: usize, c: usize) -> Vec<usize> {
        let lv = &self.levels[l - 1];
        match self.dims {
            Dims::One => line::far_cells(c, lv.groups(), self.causal),
            Dims::Two => grid::far_cells(c, lv.groups_x),
        }
    }

    /// The level-(l+1) cell holding cell c of level l.
    pub fn parent(&self, l: usize, c: usize) -> usize {
        let (lv, up) = (&self.levels[l - 1], &self.levels[l]);
        let (y, x) = (c / lv.groups_x, c % lv.groups_x);
        (y * lv.group_h / up.group_h) * up.groups_x + x * lv.group_w / up.group_w
    }

    /// The level-l cell (1-based) that holds fine cell f.
    pub fn cell_at_level(&self, f: usize, l: usize) -> usize {
        (1..l).fold(f, |c, lev| self.parent(lev, c))
    }

    /// The (query, key) scores one forward evaluates over the real queries: near keys (real
    /// and allowed by the mask) and coarse keys (rows with at least one real token). Every
    /// score costs 4d FLOPs (q . k and the weighted sum of v); this is FMA's work count.
    pub fn score_pairs(&self) -> (u64, u64) {
        // Real tokens per coarse row, computed once per level instead of once per query cell.
        let counts: Vec<Vec<usize>> = (1..=self.num_levels())
            .map(|l| {
                (0..self.levels[l - 1].groups() * self.p)
                    .map(|row| self.multiplicity(l, row / self.p, row % self.p))
                    .collect()
            })
            .collect();
        let real = |f: usize| -> Vec<usize> {
            self.fine_cell_positions(f)
                .into_iter()
                .filter_map(|(y, x)| self.token_at(y, x))
                .collect()
        };
        let (mut near, mut far) = (0u64, 0u64);
        for f in 0..self.fine_cells() {
            let queries = real(f);
            if queries.is_empty() {
                continue;
            }
            let keys: Vec<usize> = self.near_cells(f).into_iter().flat_map(real).collect();
            near += queries
                .iter()
                .map(|&i| {
                    keys.iter()
                        .filter(|&&j| self.near_key_allowed(i, j))
                        .count() as u64
                })
                .sum::<u64>();
            let coarse: usize = (1..=self.num_levels())
                .map(|l| {
                    self.far_cells(l, self.cell_at_level(f, l))
                        .into_iter()
                        .flat_map(|g| (0..self.p).map(move |r| g * self.p + r))
                        .filter(|&row| counts[l - 1][row] > 0)
                        .count()
                })
                .sum();
            far += (queries.len() * coarse) as u64;
        }
        (near, far)
    }

    /// Whether query token i may see near key token j (causal mask; both real).
    pub fn near_key_allowed(&self, i: usize, j: usize) -> bool {
        !self.causal || j <= i
    }

    /// The real keys query i sees at full resolution: its near cells' tokens, padding skipped
    /// and the causal mask applied, in cell order.
    pub fn near_keys(&self, i: usize) -> Vec<usize> {
        self.near_cells(self.fine_cell_of(i))
            .into_iter()
            .flat_map(|cell| self.fine_cell_positions(cell))
            .filter_map(|(y, x)| self.token_at(y, x))
            .filter(|&j| self.near_key_allowed(i, j))
            .collect()
    }

    /// Real tokens coarse row `row` (`cell * p + r`) stands for; 0 for a row of padding only,
    /// which is never scored.
    pub fn row_multiplicity(&self, row: usize) -> usize {
        self.cell_level(row / self.p)
            .map_or(0, |(l, g)| self.multiplicity(l, g, row % self.p))
    }

    /// The coarse rows query i sees, as (level, row), level 1 first: each level's interaction
    /// list of the cell holding i, rows without real tokens skipped.
    pub fn far_rows(&self, i: usize) -> Vec<(usize, usize)> {
        let f = self.fine_cell_of(i);
        (1..=self.num_levels())
            .flat_map(|l| {
                let offset = self.levels[l - 1].cell_offset;
                self.far_cells(l, self.cell_at_level(f, l))
                    .into_iter()
                    .flat_map(move |grp| (0..self.p).map(move |r| (l, (offset + grp) * self.p + r)))
            })
            .filter(|&(_, row)| self.row_multiplicity(row) > 0)
            .collect()
    }
}

/// The configuration the hierarchy is built with for an input `extent` tokens long (1D) or
/// wide (2D, the longer side). Where two fine cells already cover the input, the padded size
/// is 2m and FMA is dense attention whatever m and p are (docs/fma.md §4): a larger m would
/// only add padding, so the smallest power-of-two cell with the same property is used, and p
/// (which then picks no coarse key) is clipped so that it still divides that cell.
fn covering(config: &FmaConfig, extent: usize) -> FmaConfig {
    let half = extent.div_ceil(2);
    if config.m <= half {
        return config.clone();
    }
    // m is a power of two above half, so this is at most m.
    let m = half.next_power_of_two();
    let p = match config.layout {
        Layout::Sequence => config.p.min(m),
        Layout::Image { .. } => config.p.isqrt().min(m).pow(2),
    };
    FmaConfig {
        m,
        p,
        ..config.clone()
    }
}

/// How many coarse levels a padding of m * 2^k keeps: levels 1..k-1 cover the input, and
/// `max_levels` keeps the finest of them.
fn kept_levels(k: usize, config: &FmaConfig) -> usize {
    let all = k.saturating_sub(1);
    config.max_levels.map_or(all, |cap| all.min(cap))
}

fn rect(y0: usize, x0: usize, h: usize, w: usize) -> Vec<(usize, usize)> {
    (0..h * w).map(|t| (y0 + t / w, x0 + t % w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_length_follows_spec() {
        // n' = m * 2^k, smallest with k >= 1 and n' >= n.
        for (n, m, want) in [
            (1, 1, 2),
            (8, 4, 8),
            (9, 4, 16),
            (100, 32, 128),
            (4096, 32, 4096),
        ] {
            let g = Geometry::new(n, &FmaConfig::new(m, 1)).unwrap();
            assert_eq!(g.n_pad(), want, "n={n} m={m}");
            let k = (want / m).trailing_zeros() as usize;
            assert_eq!(g.num_levels(), k - 1);
        }
    }

    #[test]
    fn a_cell_larger_than_the_input_shrinks_to_the_smallest_that_covers_it() {
        // n' = 2m makes FMA dense whatever m is, so a huge m must not pad: 64 tokens need
        // two cells of 32 (n' = 64), and p is clipped to the cell.
        for (m, p) in [(1usize << 31, 1), (1 << 30, 1 << 30), (64, 2), (1 << 62, 4)] {
            let g = Geometry::new(64, &FmaConfig::new(m, p)).unwrap();
            assert_eq!((g.cell_w, g.n_pad(), g.num_levels()), (32, 64, 0), "m={m}");
            assert_eq!(g.p, p.min(32), "m={m} p={p}");
        }
        // 65 tokens: cells of 64 (n' = 128 >= 65; 32 would need a coarse level).
        let g = Geometry::new(65, &FmaConfig::new(1 << 40, 1)).unwrap();
        assert_eq!((g.cell_w, g.n_pad(), g.num_levels()), (64, 128, 0));
        // A cell that leaves coarse levels is kept as given.
        let g = Geometry::new(64, &FmaConfig::new(8, 2)).unwrap();
        assert_eq!((g.cell_w, g.n_pad(), g.num_levels(), g.p), (8, 64, 2, 2));
        // Images: the longer side decides; sqrt(p) is clipped to the cell side.
        let g = Geometry::new(5 * 9, &FmaConfig::new(1 << 31, 64).image(5, 9)).unwrap();
        assert_eq!((g.cell_h, g.cell_w, g.pad_h, g.pad_w), (8, 8, 16, 16));
        assert_eq!((g.num_levels(), g.p), (0, 64));
        let g = Geometry::new(3 * 2, &FmaConfig::new(1 << 20, 16).image(3, 2)).unwrap();
        assert_eq!((g.cell_w, g.pad_w, g.p), (2, 4, 4));
    }

    #[test]
    fn padding_far_beyond_the_input_is_an_error() {
        // A 2 x 40000 image pads to a 65536 x 65536 square: 2^32 tokens for 80,000 real ones.
        for (h, w, m) in [(2, 40_000, 2), (2, 40_000, 1 << 15), (1, 1 << 20, 4)] {
            let err = Geometry::new(h * w, &FmaConfig::new(m, 1).image(h, w)).unwrap_err();
            assert!(
                matches!(err, FmaError::LimitExceeded { .. }),
                "{h}x{w} m={m}: {err}"
            );
            assert!(err.to_string().contains("split"), "{err}");
        }
        // 2^23 tokens in cells of one token: 2^23 fine cells.
        let err = Geometry::new(1 << 23, &FmaConfig::new(1, 1)).unwrap_err();
        assert!(err.to_string().contains("fine cells"), "{err}");
        // A 4 x 64 image (16 times padding) is fine.
        assert!(Geometry::new(256, &FmaConfig::new(4, 1).image(4, 64)).is_ok());
    }

    #[test]
    fn segment_children_tile_their_parent() {
        let g = Geometry::new(100, &FmaConfig::new(4, 2)).unwrap();
        // n' = 128, s_1 = 4 (segments of 2), s_2 = 8 (segments of 4): level-2 group 3,
        // segment 1 covers tokens 28..32 = level-1 group 7, segments 0 and 1.
        assert_eq!(g.segment_children(2, 3, 1), vec![7 * 2, 7 * 2 + 1]);
        for l in 2..=g.num_levels() {
            for grp in 0..g.levels[l - 1].groups() {
                for r in 0..g.p {
                    let kids = g.segment_children(l, grp, r);
                    let sum: usize = kids
                        .iter()
                        .map(|&row| {
                            let (lc, c) = g.cell_level(row / g.p).unwrap();
                            assert_eq!(lc, l - 1);
                            g.multiplicity(lc, c, row % g.p)
                        })
                        .sum();
                    assert_eq!(
                        sum,
                        g.multiplicity(l, grp, r),
                        "level {l} group {grp} segment {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn segment_parents_invert_children_and_hold_their_tokens() {
        for config in [FmaConfig::new(4, 2), FmaConfig::new(4, 4).image(28, 28)] {
            let n = match config.layout {
                crate::config::Layout::Image { height, width } => height * width,
                _ => 100,
            };
            let g = Geometry::new(n, &config).unwrap();
            // Parent and children are inverse maps between consecutive levels.
            for l in 2..=g.num_levels() {
                for grp in 0..g.levels[l - 1].groups() {
                    for r in 0..g.p {
                        let row = (g.levels[l - 1].cell_offset + grp) * g.p + r;
                        for kid in g.segment_children(l, grp, r) {
                            let (lc, c) = g.cell_level(kid / g.p).unwrap();
                            assert_eq!(g.segment_parent(lc, c, kid % g.p), row);
                        }
                    }
                }
            }
            // A token's segment at level l holds it.
            for i in (0..n).step_by(7) {
                let (y, x) = g.position(i);
                for l in 1..=g.num_levels() {
                    let row = g.token_segment(l, i);
                    let (lc, c) = g.cell_level(row / g.p).unwrap();
                    assert_eq!(lc, l);
                    let pos = g.group_positions(l, c);
                    assert!(
                        g.segment_offsets(l, row % g.p)
                            .iter()
                            .any(|&t| pos[t] == (y, x))
                    );
                }
            }
        }
    }

    #[test]
    fn images_pad_to_a_square_of_side_m_times_a_power_of_two() {
        for (h, w, m, side) in [(1, 1, 1, 2), (8, 3, 4, 8), (9, 2, 4, 16), (28, 28, 2, 32)] {
            let g = Geometry::new(h * w, &FmaConfig::new(m, 1).image(h, w)).unwrap();
            assert_eq!((g.pad_h, g.pad_w), (side, side), "{h}x{w} m={m}");
            assert_eq!(g.num_levels(), (side / m).trailing_zeros() as usize - 1);
            // a real token keeps its (y, x) and its row-major index in the image
            assert_eq!(g.position(w * (h - 1)), (h - 1, 0));
            assert_eq!(g.token_at(h - 1, w - 1), Some(h * w - 1));
            assert_eq!(g.token_at(0, w), None);
        }
    }

    #[test]
    fn image_segments_are_sub_blocks_with_four_children() {
        // 28 x 28 on m = 4, p = 4: S = 32, level 1 cells 4 x 4 (2 x 2 sub-blocks), level 2
        // cells 8 x 8 (4 x 4 sub-blocks), level 3 cells 16 x 16.
        let g = Geometry::new(28 * 28, &FmaConfig::new(4, 4).image(28, 28)).unwrap();
        assert_eq!(g.segment_offsets(1, 3), vec![10, 11, 14, 15]);
        // Level-2 cell 0, sub-block 1 (rows 0..4, columns 4..8) is level-1 cell 1 (whole).
        assert_eq!(g.segment_children(2, 0, 1), vec![4, 5, 6, 7]);
        // The last cell of level 1 holds rows 28..32: all padding.
        assert_eq!(g.multiplicity(1, 63, 0), 0);
        // Cell (6, 6) of level 1 covers rows and columns 24..28: all real.
        assert_eq!(g.multiplicity(1, 6 * 8 + 6, 3), 4);
        for l in 2..=g.num_levels() {
            for grp in 0..g.levels[l - 1].groups() {
                for r in 0..g.p {
                    let kids = g.segment_children(l, grp, r);
                    assert_eq!(kids.len(), 4);
                    let sum: usize = kids
                        .iter()
                        .map(|&row| {
                            let (lc, c) = g.cell_level(row / g.p).unwrap();
                            g.multiplicity(lc, c, row % g.p)
                        })
                        .sum();
                    assert_eq!(sum, g.multiplicity(l, grp, r));
                }
            }
        }
    }

    #[test]
    fn score_pairs_count_what_the_reference_visits() {
        // n' = 2m: no coarse keys; every query sees all n keys (causal: i + 1 of them).
        let g = Geometry::new(10, &FmaConfig::new(8, 1)).unwrap();
        assert_eq!(g.score_pairs(), (100, 0));
        let causal = FmaConfig {
            causal: true,
            ..FmaConfig::new(8, 1)
        };
        assert_eq!(Geometry::new(10, &causal).unwrap().score_pairs(), (55, 0));
        // n = 64, m = 4, p = 2, no padding: a query in an interior cell sees 12 near keys.
        let g = Geometry::new(64, &FmaConfig::new(4, 2)).unwrap();
        let (near, far) = g.score_pairs();
        assert_eq!(near, 64 * 12 - 2 * 4 * 4);
        // Each query's keys stand for all 64 tokens: near keys 1 each, coarse keys s_l / p.
        let mut covered = 0u64;
        for f in 0..g.fine_cells() {
            for l in 1..=g.num_levels() {
                let s = g.levels[l - 1].group_tokens();
                covered += 4 * (g.far_cells(l, g.cell_at_level(f, l)).len() * s) as u64;
            }
        }
        assert_eq!(near + covered, 64 * 64);
        assert!(far > 0 && far < covered);
    }

    #[test]
    fn multiplicity_counts_real_tokens_only() {
        // n = 10, m = 4 -> n' = 16, levels: s_1 = 4. Group 2 holds tokens 8..12, 2 real.
        let g = Geometry::new(10, &FmaConfig::new(4, 2)).unwrap();
        assert_eq!(g.multiplicity(1, 2, 0), 2);
        assert_eq!(g.multiplicity(1, 2, 1), 0);
        assert_eq!(g.multiplicity(1, 0, 1), 2);
    }
}
