//! One head's state at one coarse level: the open group's running sums and the coarse rows of
//! the last complete groups (docs/fma.md §14). Downsampling is linear in the tokens, so each
//! token is added to the open group as it arrives and the group is finished when it closes.

use crate::config::Downsampling;

use crate::geometry::CAUSAL_KEPT_GROUPS;
use crate::weights::LevelWeights;

/// p coarse key and value rows (d each, row-major) and the real tokens each stands for.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Rows {
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub count: Vec<usize>,
}

impl Rows {
    fn zero(p: usize, d: usize) -> Rows {
        Rows {
            k: vec![0.0; p * d],
            v: vec![0.0; p * d],
            count: vec![0; p],
        }
    }

    fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * size_of::<f64>() + self.count.len() * size_of::<usize>()
    }
}

/// The open group's accumulators and a ring of the last `CAUSAL_KEPT_GROUPS` complete groups
/// (slot g mod CAUSAL_KEPT_GROUPS, tagged with g).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct LevelState {
    pub open: Rows,
    kept: Vec<(Option<usize>, Rows)>,
}

impl LevelState {
    pub fn new(p: usize, d: usize) -> Self {
        LevelState {
            open: Rows::zero(p, d),
            kept: vec![(None, Rows::zero(p, d)); CAUSAL_KEPT_GROUPS],
        }
    }

    pub fn bytes(&self) -> usize {
        self.open.bytes()
            + self
                .kept
                .iter()
                .map(|(_, r)| size_of::<Option<usize>>() + r.bytes())
                .sum::<usize>()
    }

    /// The coarse rows of complete group g, if still kept.
    pub fn kept(&self, g: usize) -> Option<&Rows> {
        let (tag, rows) = &self.kept[g % CAUSAL_KEPT_GROUPS];
        (*tag == Some(g)).then_some(rows)
    }

    /// Adds the token at `offset` of the open group (segment `seg`, group size `s`): Mean adds
    /// it to its segment's sums, the learned kinds add W[r][offset] * token to every row r.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        kind: Downsampling,
        w: Option<&LevelWeights>,
        s: usize,
        offset: usize,
        seg: usize,
        k: &[f64],
        v: &[f64],
    ) {
        let (p, d) = (self.open.count.len(), k.len());
        self.open.count[seg] += 1;
        for (rows, x, wt) in [
            (&mut self.open.k, k, w.map(|w| &w.wk)),
            (&mut self.open.v, v, w.map(|w| &w.wv)),
        ] {
            match (kind, wt) {
                (Downsampling::Basis, Some(wt)) => {
                    for r in 0..p {
                        let a = wt[r * s + offset] as f64;
                        for c in 0..d {
                            rows[r * d + c] += a * x[c];
                        }
                    }
                }
                (Downsampling::Depthwise, Some(wt)) => {
                    for r in 0..p {
                        for c in 0..d {
                            rows[r * d + c] += wt[(c * p + r) * s + offset] as f64 * x[c];
                        }
                    }
                }
                // Mean, whose weights are the segment's 1/count, applied at close.
                _ => {
                    for c in 0..d {
                        rows[seg * d + c] += x[c];
                    }
                }
            }
        }
    }

    /// Finishes the open group g (Mean: sums to means; Depthwise: adds the bias), keeps its
    /// rows and starts the next group empty.
    pub fn close(&mut self, kind: Downsampling, w: Option<&LevelWeights>, g: usize) {
        let (p, d) = (
            self.open.count.len(),
            self.open.k.len() / self.open.count.len(),
        );
        let mut rows = std::mem::replace(&mut self.open, Rows::zero(p, d));
        for r in 0..p {
            for (x, bias) in [
                (&mut rows.k, w.map(|w| &w.bk)),
                (&mut rows.v, w.map(|w| &w.bv)),
            ] {
                for c in 0..d {
                    match (kind, bias) {
                        (Downsampling::Mean, _) if rows.count[r] > 0 => {
                            x[r * d + c] /= rows.count[r] as f64
                        }
                        (Downsampling::Depthwise, Some(b)) => x[r * d + c] += b[c * p + r] as f64,
                        _ => {}
                    }
                }
            }
        }
        self.kept[g % CAUSAL_KEPT_GROUPS] = (Some(g), rows);
    }
}
