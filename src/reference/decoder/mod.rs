//! Causal decoding on the CPU (docs/fma.md §14), in f64: one token per sequence at a time, with
//! a state of O(d (m + p log n)) per head instead of a key-value cache of O(n d). The oracle of
//! the GPU decoder; its outputs equal the rows of the causal forward (`fma_forward`).

mod level;

use level::LevelState;

use super::dot;
use super::to_f64;
use super::{Output, Triple, fma_forward};
use crate::config::{Downsampling, FmaConfig, Shape};
use crate::error::{FmaError, Result};
use crate::geometry::Geometry;
use crate::weights::DownsampleWeights;

/// One head's state: the last 2m keys and values (token j in slot j mod 2m) and its levels.
#[derive(Clone, Debug, PartialEq)]
struct HeadState {
    ring_k: Vec<f64>,
    ring_v: Vec<f64>,
    levels: Vec<LevelState>,
}

/// A causal FMA decoder for `batch x heads` sequences of head dim d, stepped together.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoder {
    config: FmaConfig,
    weights: DownsampleWeights,
    batch: usize,
    heads: usize,
    d: usize,
    /// The hierarchy of the tokens so far (grown with the sequence for `Mean`; fixed by the
    /// weights' levels for the learned kinds).
    geometry: Geometry,
    len: usize,
    state: Vec<HeadState>,
}

/// Checks that `config` can decode: causal, and valid.
pub(crate) fn check_decoding_config(config: &FmaConfig) -> Result<()> {
    config.validate()?;
    if !config.causal {
        return Err(FmaError::InvalidConfig(
            "decoding needs a causal config (causal = true): a bidirectional output depends on tokens not generated yet".into(),
        ));
    }
    Ok(())
}

/// The hierarchy a decoder starts with and the weights it keeps: the learned kinds' levels
/// are fixed by their weights (validated here); `Mean` starts with one level and grows.
pub(crate) fn decoder_geometry(
    config: &FmaConfig,
    weights: Option<&DownsampleWeights>,
    d: usize,
) -> Result<(Geometry, DownsampleWeights)> {
    check_decoding_config(config)?;
    Shape::new(1, 1, 1, d).validate()?;
    let kind = config.downsampling;
    if !kind.is_learned() {
        return Ok((
            Geometry::causal_line(config, 1)?,
            DownsampleWeights::default(),
        ));
    }
    let w = weights.ok_or_else(|| {
        FmaError::Weights(format!(
            "{kind:?} downsampling needs weights: one level per doubling of the length to decode (DownsampleWeights::mean_init gives the initial ones)"
        ))
    })?;
    let g = Geometry::causal_line(config, w.levels.len())?;
    w.validate(kind, g.p, d, &g.group_tokens(), false)?;
    Ok((g, w.clone()))
}

/// The error of a step past the length the learned weights cover.
pub(crate) fn past_weights(kind: Downsampling, levels: usize, capacity: usize) -> FmaError {
    FmaError::Weights(format!(
        "the {kind:?} weights cover {levels} coarse levels, so sequences of at most {capacity} tokens; token {} would need level {}: give weights for more levels",
        capacity + 1,
        levels + 1
    ))
}

impl Decoder {
    /// A decoder for `batch x heads` sequences of head dim `d`. `config` must be causal;
    /// `weights` are required for the learned kinds, and their levels 1..L fix the longest
    /// sequence: m * 2^(L + 1) tokens.
    pub fn new(
        config: &FmaConfig,
        weights: Option<&DownsampleWeights>,
        batch: usize,
        heads: usize,
        d: usize,
    ) -> Result<Decoder> {
        Shape::new(batch, heads, 1, d).validate()?;
        let (geometry, weights) = decoder_geometry(config, weights, d)?;
        let mut dec = Decoder {
            config: config.clone(),
            weights,
            batch,
            heads,
            d,
            geometry,
            len: 0,
            state: Vec::new(),
        };
        dec.reset()?;
        Ok(dec)
    }

    /// Tokens decoded so far (per sequence).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Coarse levels the state holds now.
    pub fn levels(&self) -> usize {
        self.state.first().map_or(0, |h| h.levels.len())
    }

    /// Bytes of the decoding state of all sequences and heads (f64 here; the GPU's is f32).
    pub fn state_bytes(&self) -> usize {
        self.state
            .iter()
            .map(|h| {
                (h.ring_k.len() + h.ring_v.len()) * size_of::<f64>()
                    + h.levels.iter().map(LevelState::bytes).sum::<usize>()
            })
            .sum()
    }

    /// Forgets every token: the decoder is as new.
    pub fn reset(&mut self) -> Result<()> {
        let (geometry, _) = decoder_geometry(&self.config, Some(&self.weights), self.d)?;
        let (m, p, d) = (self.config.m, geometry.p, self.d);
        let levels = if self.config.downsampling.is_learned() {
            geometry.num_levels()
        } else {
            1
        };
        self.geometry = geometry;
        self.len = 0;
        self.state = vec![
            HeadState {
                ring_k: vec![0.0; 2 * m * d],
                ring_v: vec![0.0; 2 * m * d],
                levels: vec![LevelState::new(p, d); levels],
            };
            self.batch * self.heads
        ];
        Ok(())
    }

    /// The most tokens this decoder can hold: the learned weights' length, or unbounded.
    pub fn capacity(&self) -> Option<usize> {
        self.config
            .downsampling
            .is_learned()
            .then(|| self.geometry.capacity())
    }

    /// Decodes one token per sequence: q, k, v of shape [batch, heads, d]. Returns its output
    /// ([batch, heads, d]) and LSE ([batch, heads]): row `len()` of the causal forward.
    pub fn step(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Output> {
        let shape = Shape::new(self.batch, self.heads, 1, self.d);
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            shape.check_len(name, x.len())?;
        }
        self.make_room(1)?;
        let (d, t) = (self.d, self.len);
        let scale = self.config.scale_for(d) as f64;
        let mut out = Output {
            o: vec![0.0; self.batch * self.heads * d],
            lse: vec![0.0; self.batch * self.heads],
        };
        for h in 0..self.batch * self.heads {
            let row = h * d..(h + 1) * d;
            self.push(h, &to_f64(&k[row.clone()]), &to_f64(&v[row.clone()]));
            let qh: Vec<f64> = q[row.clone()].iter().map(|&x| x as f64 * scale).collect();
            let (o, lse) = self.attend(h, &qh).finish();
            for (dst, x) in out.o[row].iter_mut().zip(o) {
                *dst = x as f32;
            }
            out.lse[h] = lse as f32;
            self.accumulate(h, t);
        }
        self.finish_token();
        Ok(out)
    }

    /// Decodes a prompt of n tokens per sequence (q, k, v of [batch, heads, n, d]): returns
    /// their outputs ([batch, heads, n, d], LSE [batch, heads, n]) and leaves the state exactly
    /// as stepping them one by one would. On an empty decoder the outputs are one causal
    /// forward; after earlier tokens, the prompt is stepped.
    pub fn prefill(&mut self, q: &[f32], k: &[f32], v: &[f32], n: usize) -> Result<Output> {
        let (bh, d) = (self.batch * self.heads, self.d);
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            if x.len() != bh * n * d {
                return Err(FmaError::BadShape {
                    what: name.into(),
                    expected: format!(
                        "{} values for [batch={}, heads={}, n={n}, d={d}]",
                        bh * n * d,
                        self.batch,
                        self.heads
                    ),
                    got: format!("{} values", x.len()),
                });
            }
        }
        if n == 0 {
            return Ok(Output {
                o: Vec::new(),
                lse: Vec::new(),
            });
        }
        if let Some(cap) = self.capacity()
            && self.len + n > cap
        {
            return Err(past_weights(
                self.config.downsampling,
                self.geometry.num_levels(),
                cap,
            ));
        }
        if self.len > 0 {
            return self.prefill_by_steps(q, k, v, n);
        }
        let out = fma_forward(
            q,
            k,
            v,
            Shape::new(self.batch, self.heads, n, d),
            &self.config,
            Some(&self.weights_for(n)?),
        )?;
        self.absorb(k, v, n)?;
        Ok(out)
    }

    /// The weights a causal forward over n tokens takes: the first L(n) levels.
    pub(crate) fn weights_for(&self, n: usize) -> Result<DownsampleWeights> {
        let levels = Geometry::new(n, &self.config)?.num_levels();
        Ok(DownsampleWeights {
            levels: self.weights.levels.iter().take(levels).cloned().collect(),
        })
    }

    /// Adds n tokens per sequence ([batch, heads, n, d]) to the state without attending: the
    /// state build after a prefill's forward.
    pub(crate) fn absorb(&mut self, k: &[f32], v: &[f32], n: usize) -> Result<()> {
        let d = self.d;
        for i in 0..n {
            self.make_room(1)?;
            for h in 0..self.batch * self.heads {
                let row = (h * n + i) * d..(h * n + i + 1) * d;
                self.push(h, &to_f64(&k[row.clone()]), &to_f64(&v[row]));
                self.accumulate(h, self.len);
            }
            self.finish_token();
        }
        Ok(())
    }

    fn prefill_by_steps(&mut self, q: &[f32], k: &[f32], v: &[f32], n: usize) -> Result<Output> {
        let (bh, d) = (self.batch * self.heads, self.d);
        let mut out = Output {
            o: vec![0.0; bh * n * d],
            lse: vec![0.0; bh * n],
        };
        let token = |x: &[f32], i: usize| -> Vec<f32> {
            (0..bh)
                .flat_map(|h| x[(h * n + i) * d..(h * n + i + 1) * d].iter().copied())
                .collect()
        };
        for i in 0..n {
            let step = self.step(&token(q, i), &token(k, i), &token(v, i))?;
            for h in 0..bh {
                out.o[(h * n + i) * d..(h * n + i + 1) * d]
                    .copy_from_slice(&step.o[h * d..(h + 1) * d]);
                out.lse[h * n + i] = step.lse[h];
            }
        }
        Ok(out)
    }

    /// Checks that `extra` more tokens fit, and grows `Mean`'s hierarchy so that it places
    /// them and has a level above the state's (a new level is seeded from the one below).
    fn make_room(&mut self, extra: usize) -> Result<()> {
        let end = self.len + extra;
        if let Some(cap) = self.capacity() {
            if end > cap {
                return Err(past_weights(
                    self.config.downsampling,
                    self.geometry.num_levels(),
                    cap,
                ));
            }
            return Ok(());
        }
        while end > self.geometry.capacity() || self.geometry.num_levels() <= self.levels() {
            let levels = self.geometry.num_levels() + 1;
            self.geometry = Geometry::causal_line(&self.config, levels)?;
        }
        Ok(())
    }

    /// Writes head h's new key and value into the ring.
    fn push(&mut self, h: usize, k: &[f64], v: &[f64]) {
        let d = self.d;
        let slot = self.len % (2 * self.config.m);
        let st = &mut self.state[h];
        st.ring_k[slot * d..(slot + 1) * d].copy_from_slice(k);
        st.ring_v[slot * d..(slot + 1) * d].copy_from_slice(v);
    }

    /// The softmax triple of head h's token `len()` (already in the ring) with scaled query q.
    fn attend(&self, h: usize, q: &[f64]) -> Triple {
        let (d, t, g) = (self.d, self.len, &self.geometry);
        let st = &self.state[h];
        let ring = 2 * self.config.m;
        let mut near = Triple::empty(d);
        for j in g.near_keys(t) {
            let at = (j % ring) * d..(j % ring + 1) * d;
            near.add(
                dot(q, &st.ring_k[at.clone()]),
                st.ring_v[at].iter().copied(),
            );
        }
        let mut far = Triple::empty(d);
        for (li, lvl) in st.levels.iter().enumerate() {
            for grp in g.far_groups_of(li + 1, t) {
                // Every group an interaction list names is complete and kept (geometry's
                // CAUSAL_KEPT_GROUPS); a miss is a bug the oracle tests catch as a wrong row.
                let Some(rows) = lvl.kept(grp) else { continue };
                for (r, &count) in rows.count.iter().enumerate().filter(|(_, c)| **c > 0) {
                    let bias = if self.config.multiplicity {
                        (count as f64).ln()
                    } else {
                        0.0
                    };
                    far.add(
                        dot(q, &rows.k[r * d..(r + 1) * d]) + bias,
                        rows.v[r * d..(r + 1) * d].iter().copied(),
                    );
                }
            }
        }
        near.merge(&far)
    }

    /// Adds head h's token t (in the ring) to every level's open group, closing the groups it
    /// completes. `Mean` adds the level above when its top level's first group closes, seeded
    /// with that group's sums (the tokens before are gone, but the sums are all it needs).
    fn accumulate(&mut self, h: usize, t: usize) {
        let (d, g) = (self.d, &self.geometry);
        let kind = self.config.downsampling;
        let slot = t % (2 * self.config.m);
        let st = &mut self.state[h];
        let (k, v) = (
            st.ring_k[slot * d..(slot + 1) * d].to_vec(),
            st.ring_v[slot * d..(slot + 1) * d].to_vec(),
        );
        let present = st.levels.len();
        for li in 0..present {
            let l = li + 1;
            let s = g.levels[li].group_tokens();
            let (grp, offset) = g.group_of(l, t);
            let w = self.weights.levels.get(li);
            let lvl = &mut st.levels[li];
            lvl.add(kind, w, s, offset, g.segment_of(l, offset), &k, &v);
            if offset + 1 == s {
                lvl.close(kind, w, grp);
                if !kind.is_learned() && l == present && grp == 0 {
                    let next = seed_level(g, &st.levels[li], l + 1, d);
                    st.levels.push(next);
                }
            }
        }
    }

    fn finish_token(&mut self) {
        self.len += 1;
    }
}

/// The `Mean` state of level l (group 0 open) after the tokens of group 0 of level l - 1,
/// whose kept rows `below` hold their means: each segment's sums are those of its children
/// (`Geometry::segment_children`) that lie in that group, times their counts.
fn seed_level(g: &Geometry, below: &LevelState, l: usize, d: usize) -> LevelState {
    let p = g.p;
    let mut lvl = LevelState::new(p, d);
    let Some(rows) = below.kept(0) else {
        return lvl;
    };
    let offset = g.levels[l - 2].cell_offset;
    for r in 0..p {
        for child in g.segment_children(l, 0, r) {
            let (cell, seg) = (child / p - offset, child % p);
            if cell != 0 {
                continue; // the group's second half: its tokens are still to come
            }
            let count = rows.count[seg];
            lvl.open.count[r] += count;
            for c in 0..d {
                lvl.open.k[r * d + c] += rows.k[seg * d + c] * count as f64;
                lvl.open.v[r * d + c] += rows.v[seg * d + c] * count as f64;
            }
        }
    }
    lvl
}
