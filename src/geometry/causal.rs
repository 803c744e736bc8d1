//! What a causal decoder (docs/fma.md §14) asks of the 1D hierarchy, token by token: the group
//! and segment a token falls in at each level, and which groups it sees. Answered from the
//! same rules as the forward (`near_cells`, `far_cells`, the levels' segment sizes), so the
//! decoder cannot drift from the forward it must equal.

use super::{Geometry, line};
use crate::config::FmaConfig;
use crate::error::{FmaError, Result};

/// Complete groups per level a causal decoder keeps. Token t at level l reads groups
/// c - 3 and c - 2 of its cell c (c odd) or c - 2 (c even), and group c - 1, complete too, is
/// read by the next cell: three groups, though never more than two are read at once (checked
/// by `kept_groups_cover_every_interaction_list` below).
pub const CAUSAL_KEPT_GROUPS: usize = 3;

impl Geometry {
    /// The causal 1D hierarchy of `config` with `levels` coarse levels: padded length
    /// m * 2^(levels + 1), every token real. A decoder grows it as its sequence grows.
    pub fn causal_line(config: &FmaConfig, levels: usize) -> Result<Geometry> {
        if let Some(cap) = config.max_levels {
            return Err(FmaError::InvalidConfig(format!(
                "max_levels = {cap}: a decoder grows its levels with the sequence and takes no cap"
            )));
        }
        let n = config
            .m
            .checked_shl(levels as u32 + 1)
            .filter(|&n| n >> (levels + 1) == config.m)
            .ok_or_else(|| {
                FmaError::InvalidConfig(format!(
                    "m = {} with {levels} coarse levels: the sequence length m * 2^{} overflows; use a smaller m",
                    config.m,
                    levels + 1
                ))
            })?;
        Geometry::new(
            n,
            &FmaConfig {
                causal: true,
                ..config.clone()
            },
        )
    }

    /// Tokens this hierarchy holds (padded length): the first token it cannot place.
    pub fn capacity(&self) -> usize {
        self.n_pad()
    }

    /// The group of level l (1-based) holding token t, and t's offset in it (1D).
    pub fn group_of(&self, l: usize, t: usize) -> (usize, usize) {
        let s = self.levels[l - 1].group_tokens();
        (t / s, t % s)
    }

    /// The segment of a level-l group holding the token at `offset` in it (1D).
    pub fn segment_of(&self, l: usize, offset: usize) -> usize {
        offset / self.levels[l - 1].seg_w
    }

    /// The causal line's near cells and interaction lists as distances back from the query's
    /// cell, indexed by the cell's parity: `(near[c % 2], far[c % 2])`, entries that would
    /// fall before the first cell dropped. The same at every level and for every cell (checked
    /// below), so a decoding kernel applies them to any token from a small table.
    pub fn causal_lists() -> ([Vec<usize>; 2], [Vec<usize>; 2]) {
        // Cells 4 and 5 of 8: far enough from both ends that no entry is clipped.
        let back = |c: usize, cells: Vec<usize>| cells.into_iter().map(|x| c - x).collect();
        let near = [4, 5].map(|f| back(f, line::near_cells(f, 8, true)));
        let far = [4, 5].map(|c| back(c, line::far_cells(c, 8, true)));
        (near, far)
    }

    /// The groups of level l token t sees through their coarse rows.
    pub fn far_groups_of(&self, l: usize, t: usize) -> Vec<usize> {
        self.far_cells(l, self.cell_at_level(self.fine_cell_of(t), l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_groups_cover_every_interaction_list() {
        // For every token and level: each group seen is complete (its last token is before
        // t) and among the last CAUSAL_KEPT_GROUPS complete groups; at most two are seen;
        // and some token needs the oldest kept group, so fewer would not do.
        for (m, p) in [(1, 1), (2, 1), (4, 2), (8, 4)] {
            let g = Geometry::causal_line(&FmaConfig::new(m, p), 6).unwrap();
            let mut oldest_needed = 0;
            for t in 0..g.capacity() {
                for l in 1..=g.num_levels() {
                    let (c, _) = g.group_of(l, t);
                    let seen = g.far_groups_of(l, t);
                    assert!(seen.len() <= 2, "m={m} t={t} l={l}: {seen:?}");
                    for &h in &seen {
                        let s = g.levels[l - 1].group_tokens();
                        assert!((h + 1) * s <= t, "group {h} of level {l} open at t={t}");
                        assert!(
                            h + CAUSAL_KEPT_GROUPS >= c,
                            "t={t} l={l} sees {h}, cell {c}"
                        );
                        oldest_needed = oldest_needed.max(c - h);
                    }
                }
            }
            assert_eq!(oldest_needed, CAUSAL_KEPT_GROUPS, "m={m}");
        }
    }

    #[test]
    fn causal_lists_by_parity_give_every_list() {
        let (near, far) = Geometry::causal_lists();
        assert_eq!((near[0].clone(), far[0].clone()), (vec![1, 0], vec![2]));
        assert_eq!(far[1], vec![3, 2]);
        let g = Geometry::causal_line(&FmaConfig::new(2, 1), 5).unwrap();
        let apply = |list: &[usize], c: usize| -> Vec<usize> {
            let mut v: Vec<usize> = list.iter().filter(|&&b| b <= c).map(|&b| c - b).collect();
            v.sort_unstable();
            v
        };
        for f in 0..g.fine_cells() {
            assert_eq!(g.near_cells(f), apply(&near[f % 2], f), "fine cell {f}");
        }
        for l in 1..=g.num_levels() {
            for c in 0..g.levels[l - 1].groups() {
                assert_eq!(
                    g.far_cells(l, c),
                    apply(&far[c % 2], c),
                    "level {l} cell {c}"
                );
            }
        }
    }

    #[test]
    fn levels_and_segments_of_the_causal_line() {
        let g = Geometry::causal_line(&FmaConfig::new(4, 2), 3).unwrap();
        assert_eq!((g.capacity(), g.num_levels(), g.p), (64, 3, 2));
        // level 2: groups of 8 tokens, segments of 4
        assert_eq!(g.group_of(2, 21), (2, 5));
        assert_eq!(g.segment_of(2, 5), 1);
        // t = 40 at level 1 is in cell 10 (even): it sees group 8 only
        assert_eq!(g.far_groups_of(1, 40), vec![8]);
        assert_eq!(g.far_groups_of(1, 44), vec![8, 9]);
        // a huge m cannot be doubled past usize
        assert!(Geometry::causal_line(&FmaConfig::new(1 << 62, 1), 3).is_err());
    }
}
