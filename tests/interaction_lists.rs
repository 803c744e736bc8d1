//! The geometry module's near fields, interaction lists and multiplicities against the
//! formulas of docs/fma.md (§3, §4 and §8), evaluated here by brute force over every
//! candidate cell without calling the geometry's own rules. The partition tests in
//! oracles*.rs read the lists from the geometry on both sides; these tests do not.
//!
//! Padding (docs/fma.md §3) acts on keys, not on lists: the lists are defined over the padded
//! grid, so a group made only of padding stays in a list, and its coarse keys are the ones
//! skipped, because each has a multiplicity of zero. The multiplicity checks below pin that.

use multipole::{FmaConfig, Geometry};

/// The cell and rank the hierarchy uses for an input `extent` tokens long (or wide): a cell
/// larger than the smallest power of two m' with 2m' >= extent only adds padding (two cells
/// cover the input, so FMA is dense either way), so m' replaces it, and p (or sqrt(p) on an
/// image) is clipped to fit (FmaConfig's documented rule).
fn effective(extent: usize, m: usize, p: usize, image: bool) -> (usize, usize) {
    let mut cover = 1;
    while 2 * cover < extent {
        cover *= 2;
    }
    let m = m.min(cover);
    let p = if image {
        let mut root = 1;
        while (root + 1) * (root + 1) <= p {
            root += 1;
        }
        root.min(m).pow(2)
    } else {
        p.min(m)
    };
    (m, p)
}

/// n' = m * 2^k, the smallest with k >= 1 and n' >= n, and k.
fn padded(n: usize, m: usize) -> (usize, u32) {
    let mut k = 1;
    while m << k < n {
        k += 1;
    }
    (m << k, k)
}

/// Sorted copy, so lists compare as sets (and duplicates would show).
fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v
}

/// docs/fma.md §4 for one sequence configuration, every level and every cell.
fn check_line(n: usize, m: usize, p: usize, causal: bool) {
    let cfg = FmaConfig {
        causal,
        ..FmaConfig::new(m, p)
    };
    let g = Geometry::new(n, &cfg).unwrap();
    let what = format!("n={n} m={m} p={p} causal={causal}");
    let (m, p) = effective(n, m, p, false);
    assert_eq!((g.cell_w, g.p), (m, p), "{what}: effective cell and rank");
    let (np, k) = padded(n, m);
    assert_eq!(g.n_pad(), np, "{what}: padded length");
    let levels = k as usize - 1;
    assert_eq!(g.num_levels(), levels, "{what}: L = k - 1");

    // Near field: fine cells within distance 1; causal keeps cells not after the query's.
    let fine = np / m;
    assert_eq!(g.fine_cells(), fine, "{what}");
    for f in 0..fine {
        let want: Vec<usize> = (0..fine)
            .filter(|&j| j.abs_diff(f) <= 1 && (!causal || j <= f))
            .collect();
        assert_eq!(
            sorted(g.near_cells(f)),
            want,
            "{what}: near field of cell {f}"
        );
    }

    for l in 1..=levels {
        let s = m << (l - 1);
        let groups = np / s;
        assert_eq!(
            g.levels[l - 1].groups(),
            groups,
            "{what}: groups at level {l}"
        );
        // I_l = { g : |g/2 - c/2| <= 1, |g - c| >= 2 }; causal: g <= c - 2.
        for c in 0..groups {
            let want: Vec<usize> = (0..groups)
                .filter(|&x| (x / 2).abs_diff(c / 2) <= 1 && x.abs_diff(c) >= 2)
                .filter(|&x| !causal || x + 2 <= c)
                .collect();
            assert_eq!(
                sorted(g.far_cells(l, c)),
                want,
                "{what}: interaction list of cell {c} at level {l}"
            );
            // Multiplicity: real tokens (index < n) of each of the p equal segments.
            for r in 0..p {
                let start = c * s + r * (s / p);
                let want = (start..start + s / p).filter(|&t| t < n).count();
                assert_eq!(
                    g.multiplicity(l, c, r),
                    want,
                    "{what}: multiplicity of level {l} group {c} segment {r}"
                );
            }
        }
        // c_l(i) = floor(i / s_l) for every real token.
        for i in 0..n {
            assert_eq!(
                g.cell_at_level(g.fine_cell_of(i), l),
                i / s,
                "{what}: cell of token {i} at level {l}"
            );
        }
    }
}

/// Chebyshev distance between two (row, column) cells.
fn chebyshev(a: (usize, usize), b: (usize, usize)) -> usize {
    a.0.abs_diff(b.0).max(a.1.abs_diff(b.1))
}

/// docs/fma.md §8 for one image configuration, every level and every cell.
fn check_grid(h: usize, w: usize, m: usize, p: usize) {
    let g = Geometry::new(h * w, &FmaConfig::new(m, p).image(h, w)).unwrap();
    let what = format!("{h}x{w} m={m} p={p}");
    let (m, p) = effective(h.max(w), m, p, true);
    assert_eq!((g.cell_w, g.p), (m, p), "{what}: effective cell and rank");
    let (side, k) = padded(h.max(w), m);
    assert_eq!((g.pad_h, g.pad_w), (side, side), "{what}: padded square");
    let levels = k as usize - 1;
    assert_eq!(g.num_levels(), levels, "{what}: L = k - 1");
    let at = |id: usize, per_side: usize| (id / per_side, id % per_side);

    let fine = side / m;
    for f in 0..fine * fine {
        let want: Vec<usize> = (0..fine * fine)
            .filter(|&j| chebyshev(at(j, fine), at(f, fine)) <= 1)
            .collect();
        assert_eq!(
            sorted(g.near_cells(f)),
            want,
            "{what}: near field of cell {f}"
        );
    }

    let root = p.isqrt();
    for l in 1..=levels {
        let s = m << (l - 1);
        let per_side = side / s;
        assert_eq!(g.levels[l - 1].groups(), per_side * per_side, "{what}");
        let parent = |id: usize| {
            let (y, x) = at(id, per_side);
            (y / 2, x / 2)
        };
        for c in 0..per_side * per_side {
            let want: Vec<usize> = (0..per_side * per_side)
                .filter(|&x| chebyshev(parent(x), parent(c)) <= 1)
                .filter(|&x| chebyshev(at(x, per_side), at(c, per_side)) >= 2)
                .collect();
            assert_eq!(
                sorted(g.far_cells(l, c)),
                want,
                "{what}: interaction list of cell {c} at level {l}"
            );
            // Segment r: sub-block (r / root, r % root) of side s / root; real if inside h x w.
            let (cy, cx) = at(c, per_side);
            let sub = s / root;
            for r in 0..p {
                let (y0, x0) = (cy * s + (r / root) * sub, cx * s + (r % root) * sub);
                let want = (y0..y0 + sub).filter(|&y| y < h).count()
                    * (x0..x0 + sub).filter(|&x| x < w).count();
                assert_eq!(
                    g.multiplicity(l, c, r),
                    want,
                    "{what}: multiplicity of level {l} cell {c} segment {r}"
                );
            }
        }
        for t in 0..h * w {
            let (y, x) = (t / w, t % w);
            assert_eq!(
                g.cell_at_level(g.fine_cell_of(t), l),
                (y / s) * per_side + x / s,
                "{what}: cell of pixel ({y}, {x}) at level {l}"
            );
        }
    }
}

#[test]
fn sequence_lists_follow_the_spec_formulas() {
    let mut configs = 0;
    for causal in [false, true] {
        for m in [1, 2, 4, 8, 16] {
            let ps: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|p| m % p == 0).collect();
            let mut ns: Vec<usize> = (1..=8 * m + 3).collect();
            ns.extend([100, 255, 256, 257, 600, 1000]);
            for n in ns {
                // p only changes the segments; the lists are checked once per p anyway.
                let p = ps[n % ps.len()];
                check_line(n, m, p, causal);
                configs += 1;
            }
        }
    }
    assert!(configs > 300, "{configs} configurations");
}

#[test]
fn image_lists_follow_the_spec_formulas() {
    let mut configs = 0;
    for (m, ps) in [(1, &[1][..]), (2, &[1, 4]), (4, &[1, 4, 16]), (8, &[4])] {
        for (h, w) in [
            (1, 1),
            (1, 7),
            (5, 3),
            (8, 8),
            (9, 2),
            (12, 20),
            (16, 16),
            (17, 30),
            (28, 28),
            (33, 5),
        ] {
            for &p in ps {
                check_grid(h, w, m, p);
                configs += 1;
            }
        }
    }
    assert!(configs >= 70, "{configs} configurations");
}

/// The spec's examples worked by hand, so the brute-force formulas above are anchored too.
#[test]
fn hand_worked_lists() {
    // n = 64, m = 4: level 1 has 16 groups of 4 tokens. Cell 5 (parent 2): parents 1..=3
    // hold groups 2..=7; minus 4, 5, 6 (distance < 2) leaves 2, 3, 7.
    let g = Geometry::new(64, &FmaConfig::new(4, 1)).unwrap();
    assert_eq!(sorted(g.far_cells(1, 5)), vec![2, 3, 7]);
    // Cell 0: parents 0..=1 hold 0..=3; minus 0, 1 leaves 2, 3.
    assert_eq!(sorted(g.far_cells(1, 0)), vec![2, 3]);
    let causal = FmaConfig {
        causal: true,
        ..FmaConfig::new(4, 1)
    };
    let g = Geometry::new(64, &causal).unwrap();
    assert_eq!(sorted(g.far_cells(1, 5)), vec![2, 3]);
    assert_eq!(sorted(g.near_cells(5)), vec![4, 5]);
    // 16 x 16 image, m = 2: level 1 is 8 x 8 cells. Cell (3, 3) has parent (1, 1), whose
    // neighbours' children are rows and columns 0..=5: 36 cells, minus the 3 x 3 around
    // (3, 3), leaves 27.
    let g = Geometry::new(256, &FmaConfig::new(2, 1).image(16, 16)).unwrap();
    assert_eq!(g.far_cells(1, 3 * 8 + 3).len(), 27);
    // Corner cell (0, 0): children of parents (0..=1, 0..=1) are 4 x 4 = 16 cells, minus the
    // 2 x 2 near it, leaves 12.
    assert_eq!(g.far_cells(1, 0).len(), 12);
}
