//! Index tables of the portable path, built on the host from the library's geometry once per
//! (n, options) and cached: which tokens each coarse group gathers, and which keys (fine or
//! coarse) each query scores, padded to one width so that gathers and matmuls do the rest.

use std::sync::{Arc, Mutex};

use multipole::{FmaConfig, Geometry};

/// One coarse level: its groups' token positions and, for `Mean`, the averaging weights.
pub(crate) struct LevelTable {
    pub groups: usize,
    /// Tokens per group (the `S` of the weight shapes).
    pub tokens: usize,
    /// `[groups * tokens]`: the real token at each group position, or `n` (a zero row) for
    /// padding.
    pub gather: Vec<i32>,
    /// `[groups, p, tokens]`: 1 / (real tokens of the segment) on the segment's real tokens.
    pub mean: Vec<f32>,
}

pub(crate) struct Tables {
    pub geometry: Geometry,
    pub levels: Vec<LevelTable>,
    /// Sources per query after padding.
    pub width: usize,
    /// `[n, width]` into `[fine keys (n)][coarse rows][one zero row]`.
    pub keys: Vec<i32>,
    /// `[n, width]` score offsets: log(multiplicity) on coarse rows (with the option), a large
    /// negative number on padding.
    pub bias: Vec<f32>,
    /// The O(n) variant: `[n, width]` into `[queries (n)][coarse queries]`, the query each
    /// source is scored with; None otherwise.
    pub queries: Option<Vec<i32>>,
}

/// A score that drops out of every softmax: exp underflows to 0, and it stays finite in f32.
const MASKED: f32 = -1.0e30;

impl Tables {
    fn build(n: usize, config: &FmaConfig) -> multipole::Result<Tables> {
        let g = Geometry::new(n, config)?;
        let p = g.p;
        let levels: Vec<LevelTable> = (1..=g.num_levels())
            .map(|l| {
                let lv = &g.levels[l - 1];
                let s = lv.group_tokens();
                let mut gather = Vec::with_capacity(lv.groups() * s);
                let mut mean = vec![0.0f32; lv.groups() * p * s];
                for grp in 0..lv.groups() {
                    let pos = g.group_positions(l, grp);
                    let token = |t: usize| g.token_at(pos[t].0, pos[t].1);
                    gather.extend((0..s).map(|t| token(t).map_or(n as i32, |j| j as i32)));
                    for r in 0..p {
                        let count = g.multiplicity(l, grp, r);
                        for t in g.segment_offsets(l, r) {
                            if count > 0 && token(t).is_some() {
                                mean[(grp * p + r) * s + t] = 1.0 / count as f32;
                            }
                        }
                    }
                }
                LevelTable {
                    groups: lv.groups(),
                    tokens: s,
                    gather,
                    mean,
                }
            })
            .collect();
        let rows = g.total_cells() * p;
        let zero_row = (n + rows) as i32;
        // Each query's near keys and (level, coarse row) pairs.
        type Sources = (Vec<usize>, Vec<(usize, usize)>);
        let lists: Vec<Sources> = (0..n).map(|i| (g.near_keys(i), g.far_rows(i))).collect();
        let width = lists
            .iter()
            .map(|(near, far)| near.len() + far.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut keys = vec![zero_row; n * width];
        let mut bias = vec![MASKED; n * width];
        let variant = config.downsample_queries;
        let mut queries = variant.then(|| vec![0i32; n * width]);
        for (i, (near, far)) in lists.iter().enumerate() {
            let at = i * width;
            for (slot, &j) in near.iter().enumerate() {
                keys[at + slot] = j as i32;
                bias[at + slot] = 0.0;
                if let Some(qs) = &mut queries {
                    qs[at + slot] = i as i32;
                }
            }
            for (slot, &(l, row)) in far.iter().enumerate() {
                let slot = at + near.len() + slot;
                keys[slot] = (n + row) as i32;
                bias[slot] = if config.multiplicity {
                    (g.row_multiplicity(row) as f32).ln()
                } else {
                    0.0
                };
                if let Some(qs) = &mut queries {
                    // The coarse query of the level-l segment that holds query i.
                    qs[slot] = (n + g.token_segment(l, i)) as i32;
                }
            }
            if let Some(qs) = &mut queries {
                // Padding slots score against query i; their bias masks them.
                for slot in near.len() + far.len()..width {
                    qs[at + slot] = i as i32;
                }
            }
        }
        Ok(Tables {
            geometry: g,
            levels,
            width,
            keys,
            bias,
            queries,
        })
    }

    /// The tables of (n, config), built on first use.
    pub fn get(n: usize, config: &FmaConfig) -> multipole::Result<Arc<Tables>> {
        type Cache = Mutex<Vec<(usize, FmaConfig, Arc<Tables>)>>;
        static CACHE: Cache = Mutex::new(Vec::new());
        // Precision and scale do not change the tables.
        let key = FmaConfig {
            precision: multipole::Precision::F32,
            scale: None,
            ..config.clone()
        };
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, t)) = cache.iter().find(|(m, c, _)| *m == n && *c == key) {
            return Ok(t.clone());
        }
        let tables = Arc::new(Tables::build(n, &key)?);
        // A handful of shapes per model: keep the most recent few.
        if cache.len() >= 16 {
            cache.remove(0);
        }
        cache.push((n, key, tables.clone()));
        Ok(tables)
    }
}
