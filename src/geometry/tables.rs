//! The geometry as flat u32 tables for the GPU kernels, so that no shader re-derives a rule.
//!
//! Everything lives in one buffer (fewer bindings, one upload per plan); the offsets of each
//! table go into the kernels' uniform. Memory is O(n / m): a few words per cell of each level.

use super::Geometry;
use crate::config::Downsampling;

/// Words per level record (padded to a multiple of 4 for readability in the shader).
pub const LEVEL_WORDS: usize = 12;

/// The packed tables and where each one starts (in u32 words).
#[derive(Clone, Debug)]
pub struct GeomTables {
    pub data: Vec<u32>,
    /// `fine_cells + 1` offsets into `near_entries` (CSR).
    pub near_offsets: u32,
    /// Fine cell ids of each fine cell's near field.
    pub near_entries: u32,
    /// `total_cells + 1` offsets into `far_entries` (CSR), indexed by global cell id.
    pub far_offsets: u32,
    /// Global cell ids of each cell's interaction list (same level as the cell).
    pub far_entries: u32,
    /// Global id of each cell's parent (u32::MAX at the coarsest level).
    pub parent: u32,
    /// Per coarse row (cell * p + r): [real token count, log-multiplicity as f32 bits].
    pub rows: u32,
    /// Per level: `LEVEL_WORDS` words (see `build`).
    pub levels: u32,
    /// Per coarse row: the `children_per_row` finer rows that tile its segment (level >= 2;
    /// u32::MAX at level 1), so `Mean` is computed level by level.
    pub children: u32,
    pub children_per_row: u32,
    /// `fine_cells + 1` offsets into `near_t_entries` (CSR): the transposed near lists.
    pub near_t_offsets: u32,
    /// Fine cells whose near field holds each fine cell (whose queries see its keys).
    pub near_t_entries: u32,
    /// `total_cells + 1` offsets into `far_t_entries` (CSR): the transposed far lists.
    pub far_t_offsets: u32,
    /// Global ids of the cells whose interaction list holds each cell (whose queries see
    /// its coarse keys).
    pub far_t_entries: u32,
    /// Per coarse row: the global row of the level-(l+1) segment that holds it (u32::MAX at
    /// the coarsest level): the O(n) variant's downward pass (`Geometry::segment_parent`).
    pub seg_parent: u32,
}

impl GeomTables {
    /// Builds the tables. `kind` and `d` fix the offsets of each level's weights.
    pub fn build(g: &Geometry, multiplicity: bool, kind: Downsampling, d: usize) -> GeomTables {
        let mut data: Vec<u32> = Vec::new();
        let fine = g.fine_cells();
        let cells: Vec<(usize, usize)> = g.cells().collect();

        let near_offsets = data.len() as u32;
        let near: Vec<Vec<usize>> = (0..fine).map(|f| g.near_cells(f)).collect();
        push_csr_offsets(&mut data, &near);
        let near_entries = data.len() as u32;
        data.extend(near.iter().flatten().map(|&c| c as u32));

        let far: Vec<Vec<usize>> = cells
            .iter()
            .map(|&(l, c)| {
                let base = g.levels[l - 1].cell_offset;
                g.far_cells(l, c).into_iter().map(|x| base + x).collect()
            })
            .collect();
        let far_offsets = data.len() as u32;
        push_csr_offsets(&mut data, &far);
        let far_entries = data.len() as u32;
        data.extend(far.iter().flatten().map(|&c| c as u32));

        let parent = data.len() as u32;
        for &(l, c) in &cells {
            let up = if l < g.num_levels() {
                (g.levels[l].cell_offset + g.parent(l, c)) as u32
            } else {
                u32::MAX
            };
            data.push(up);
        }

        let rows = data.len() as u32;
        for &(l, c) in &cells {
            for r in 0..g.p {
                let mu = g.multiplicity(l, c, r);
                let log_mu = if multiplicity && mu > 0 {
                    (mu as f32).ln()
                } else {
                    0.0
                };
                data.push(mu as u32);
                data.push(log_mu.to_bits());
            }
        }

        let levels = data.len() as u32;
        let (mut w_off, mut b_off) = (0usize, 0usize);
        for lv in &g.levels {
            let s = lv.group_tokens();
            data.extend_from_slice(&[
                lv.group_h as u32,
                lv.group_w as u32,
                lv.groups_x as u32,
                lv.seg_h as u32,
                lv.seg_w as u32,
                lv.segs_x() as u32,
                lv.cell_offset as u32,
                lv.groups() as u32,
                w_off as u32,
                b_off as u32,
                0,
                0,
            ]);
            match kind {
                Downsampling::Mean => {}
                Downsampling::Basis => w_off += g.p * s,
                Downsampling::Depthwise => {
                    w_off += d * g.p * s;
                    b_off += d * g.p;
                }
            }
        }
        let children = data.len() as u32;
        let children_per_row = if g.num_levels() >= 2 {
            g.segment_children(2, 0, 0).len()
        } else {
            0
        };
        for &(l, c) in &cells {
            for r in 0..g.p {
                if l >= 2 {
                    data.extend(g.segment_children(l, c, r).into_iter().map(|x| x as u32));
                } else {
                    data.extend(std::iter::repeat_n(u32::MAX, children_per_row));
                }
            }
        }

        // The backward pass walks the lists from the key's side: who sees this cell.
        let near_t_offsets = data.len() as u32;
        let near_t = transpose(&near, fine);
        push_csr_offsets(&mut data, &near_t);
        let near_t_entries = data.len() as u32;
        data.extend(near_t.iter().flatten().map(|&c| c as u32));
        let far_t_offsets = data.len() as u32;
        let far_t = transpose(&far, cells.len());
        push_csr_offsets(&mut data, &far_t);
        let far_t_entries = data.len() as u32;
        data.extend(far_t.iter().flatten().map(|&c| c as u32));

        let seg_parent = data.len() as u32;
        for &(l, c) in &cells {
            for r in 0..g.p {
                data.push(if l < g.num_levels() {
                    g.segment_parent(l, c, r) as u32
                } else {
                    u32::MAX
                });
            }
        }

        if data.is_empty() {
            data.push(0); // wgpu refuses zero-sized bindings
        }
        GeomTables {
            data,
            near_offsets,
            near_entries,
            far_offsets,
            far_entries,
            parent,
            rows,
            levels,
            children,
            children_per_row: children_per_row as u32,
            near_t_offsets,
            near_t_entries,
            far_t_offsets,
            far_t_entries,
            seg_parent,
        }
    }
}

/// `out[b]` lists every `a` with `b` in `lists[a]`, in increasing `a`.
fn transpose(lists: &[Vec<usize>], len: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); len];
    for (a, list) in lists.iter().enumerate() {
        for &b in list {
            out[b].push(a);
        }
    }
    out
}

fn push_csr_offsets(data: &mut Vec<u32>, lists: &[Vec<usize>]) {
    let mut acc = 0u32;
    data.push(0);
    for l in lists {
        acc += l.len() as u32;
        data.push(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FmaConfig;

    /// The CSR list `i` of a table.
    fn list(t: &GeomTables, offsets: u32, entries: u32, i: usize) -> Vec<usize> {
        let (o, e) = (offsets as usize, entries as usize);
        let (lo, hi) = (t.data[o + i] as usize, t.data[o + i + 1] as usize);
        t.data[e + lo..e + hi].iter().map(|&x| x as usize).collect()
    }

    #[test]
    fn segment_parents_invert_the_children() {
        for (n, cfg) in [
            (100, FmaConfig::new(4, 2)),
            (30 * 20, FmaConfig::new(2, 4).image(30, 20)),
        ] {
            let g = Geometry::new(n, &cfg).unwrap();
            let t = GeomTables::build(&g, true, Downsampling::Mean, 4);
            let rows = g.total_cells() * g.p;
            let mut seen = vec![0; rows];
            for (cell, (l, c)) in g.cells().enumerate() {
                for r in 0..g.p {
                    let up = t.data[t.seg_parent as usize + cell * g.p + r];
                    if l == g.num_levels() {
                        assert_eq!(up, u32::MAX);
                        continue;
                    }
                    let (pl, pc) = g.cell_level(up as usize / g.p).unwrap();
                    assert_eq!(pl, l + 1);
                    let children = g.segment_children(pl, pc, up as usize % g.p);
                    assert!(children.contains(&(cell * g.p + r)), "{l} {c} {r}");
                    seen[cell * g.p + r] += 1;
                }
            }
            let below_top = rows - g.levels.last().unwrap().groups() * g.p;
            assert_eq!(seen.iter().filter(|&&x| x == 1).count(), below_top);
        }
    }

    #[test]
    fn transposed_lists_invert_the_near_and_far_lists() {
        let causal = FmaConfig {
            causal: true,
            ..FmaConfig::new(4, 2)
        };
        for (n, cfg) in [
            (100, FmaConfig::new(4, 2)),
            (100, causal),
            (30 * 20, FmaConfig::new(2, 1).image(30, 20)),
        ] {
            let g = Geometry::new(n, &cfg).unwrap();
            let t = GeomTables::build(&g, true, Downsampling::Mean, 4);
            for a in 0..g.fine_cells() {
                for b in 0..g.fine_cells() {
                    let fwd = list(&t, t.near_offsets, t.near_entries, a).contains(&b);
                    let back = list(&t, t.near_t_offsets, t.near_t_entries, b).contains(&a);
                    assert_eq!(fwd, back, "near {a} -> {b}");
                }
            }
            let cells = g.total_cells();
            let mut pairs = 0;
            for a in 0..cells {
                for b in list(&t, t.far_offsets, t.far_entries, a) {
                    assert!(list(&t, t.far_t_offsets, t.far_t_entries, b).contains(&a));
                    pairs += 1;
                }
            }
            let back: usize = (0..cells)
                .map(|b| list(&t, t.far_t_offsets, t.far_t_entries, b).len())
                .sum();
            // The CPU adapters' dK~, dV~ kernels merge sibling cells' transposed lists.
            for b in 0..cells {
                let l = list(&t, t.far_t_offsets, t.far_t_entries, b);
                assert!(l.is_sorted_by(|x, y| x < y), "far_t {b}: {l:?}");
            }
            assert_eq!(
                pairs, back,
                "every transposed entry comes from one far entry"
            );
        }
    }
}
