//! Where each level's learned downsampling weights sit in the one packed vector the module
//! trains (`DownsampleWeights::packed`: `[wk of every level][wv][bk][bv][wq][bq]`), which is
//! also what the GPU kernels bind and what their backward writes.

use multipole::{Downsampling, FmaConfig, Geometry};

/// The packed weights' parts, in their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Wk = 0,
    Wv = 1,
    Bk = 2,
    Bv = 3,
    Wq = 4,
    Bq = 5,
}

/// Offsets and lengths of every (part, level) in the packed vector.
#[derive(Clone, Debug)]
pub(crate) struct WeightLayout {
    /// `spans[part][level - 1]` = (offset, length).
    spans: [Vec<(usize, usize)>; 6],
    pub len: usize,
}

impl WeightLayout {
    pub fn new(g: &Geometry, config: &FmaConfig, d: usize) -> Self {
        let kind = config.downsampling;
        let queries = config.downsample_queries;
        let p = g.p;
        let sizes = |part: usize, s: usize| -> usize {
            let (w, b) = match kind {
                Downsampling::Mean => (0, 0),
                Downsampling::Basis => (p * s, 0),
                Downsampling::Depthwise => (d * p * s, d * p),
            };
            match part {
                0 | 1 => w,
                2 | 3 => b,
                4 if queries => w,
                5 if queries => b,
                _ => 0,
            }
        };
        let mut spans: [Vec<(usize, usize)>; 6] = Default::default();
        let mut at = 0;
        for (part, list) in spans.iter_mut().enumerate() {
            for s in g.group_tokens() {
                let len = sizes(part, s);
                list.push((at, len));
                at += len;
            }
        }
        WeightLayout { spans, len: at }
    }

    /// (offset, length) of `part` at level `l` (1-based).
    pub fn span(&self, part: Part, l: usize) -> (usize, usize) {
        self.spans[part as usize][l - 1]
    }
}
