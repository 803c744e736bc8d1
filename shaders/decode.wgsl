// Causal decoding (docs/fma.md §14): one new token per sequence, for every head of the batch
// in one dispatch sequence: decode_attend (its output), decode_update (the state), then
// decode_advance (the token count); decode_seed fills a level Mean adds as the sequence grows.
// The Rust twin is src/gpu/decode/mod.rs.
//
// State of head h (f32, one buffer): the last `ring` keys and values (token j in slot
// j mod ring), and per level the open group's running sums and the coarse rows of its last
// KEPT_GROUPS complete groups (group g in slot g mod KEPT_GROUPS). The dense key-value-cache
// baseline runs the same kernels with a ring as long as its capacity and no levels.
// Which cells and groups a token sees comes from `dgeom`, built by src/geometry (the near
// cells and interaction lists, each by the query cell's parity, and the levels' sizes).

// `DecodeParams` is declared in the header, from src/gpu/shaders/structs.rs.

// `DecodeCount`, the tokens one dispatch adds (1 for a step, the prompt's length for a
// prefill's state build), is declared in the header (src/gpu/shaders/structs.rs).

@group(0) @binding(B_DEC_PARAMS) var<uniform> dp: DecodeParams;
@group(0) @binding(B_DEC_COUNT) var<uniform> count: DecodeCount;
@group(0) @binding(B_DEC_GEOM) var<storage, read> dgeom: array<u32>;
@group(0) @binding(B_DEC_LEN) var<storage, read> len_in: array<u32>;
@group(0) @binding(B_DEC_LEN_W) var<storage, read_write> len_out: array<u32>;
@group(0) @binding(B_DEC_STATE) var<storage, read> state_in: array<f32>;
@group(0) @binding(B_DEC_STATE_W) var<storage, read_write> state: array<f32>;
@group(0) @binding(B_WEIGHTS) var<storage, read> weights: array<f32>;
// decode_seed: for each row r of the new level, its children in the level below (count, then
// up to DEC_LIST segments of that level's group 0).
@group(0) @binding(B_DEC_SEED) var<storage, read> seed: array<u32>;
// One token per sequence ([bh, d]); decode_update reads `count.tokens` of them ([bh, n, d]).
@group(0) @binding(B_Q) var<storage, read> q_in: array<STORE>;
@group(0) @binding(B_K) var<storage, read> k_in: array<STORE>;
@group(0) @binding(B_V) var<storage, read> v_in: array<STORE>;
@group(0) @binding(B_O) var<storage, read_write> o_out: array<STORE>;
@group(0) @binding(B_LSE) var<storage, read_write> lse_out: array<f32>;

// A key whose value is the new token's own (not yet in the ring).
const CURRENT: u32 = 0xffffffffu;
const NEG_BIG: f32 = -3.0e38;

// Level l's words in dgeom: tokens per group, tokens per segment, where its key weights and
// biases start.
fn group_tokens(l: u32) -> u32 { return dgeom[l * DEC_LEVEL_WORDS]; }
fn seg_tokens(l: u32) -> u32 { return dgeom[l * DEC_LEVEL_WORDS + 1u]; }
fn w_offset(l: u32) -> u32 { return dgeom[l * DEC_LEVEL_WORDS + 2u]; }
fn b_offset(l: u32) -> u32 { return dgeom[l * DEC_LEVEL_WORDS + 3u]; }

// A list of cells "back" from the query's cell, picked by the cell's parity: count, then
// up to DEC_LIST entries.
fn list_len(table: u32, parity: u32) -> u32 { return dgeom[table + parity * (DEC_LIST + 1u)]; }
fn list_at(table: u32, parity: u32, i: u32) -> u32 {
    return dgeom[table + parity * (DEC_LIST + 1u) + 1u + i];
}

// Where row r of kept slot `slot` of level l of head h starts in the state (keys).
// Level-major, so that a level added later extends each array at its end.
fn kept_row(h: u32, l: u32, slot: u32, r: u32) -> u32 {
    return (((l * dp.bh + h) * KEPT_GROUPS + slot) * dp.p + r) * dp.d;
}
fn open_row(h: u32, l: u32, r: u32) -> u32 {
    return ((l * dp.bh + h) * dp.p + r) * dp.d;
}

// Tokens of near cell i of token t, and the first of them.
fn near_range(t: u32, i: u32) -> vec2<u32> {
    let f = t / dp.cell;
    let back = list_at(dp.near_table, f % 2u, i);
    if (f < back) {
        return vec2<u32>(0u, 0u);
    }
    let start = (f - back) * dp.cell;
    return vec2<u32>(start, min(start + dp.cell, t + 1u) - start);
}

// Coarse keys token t sees: p per group of every level's interaction list.
fn far_keys(t: u32) -> u32 {
    var total = 0u;
    for (var l = 0u; l < dp.levels; l++) {
        let c = t / group_tokens(l);
        for (var i = 0u; i < list_len(dp.far_table, c % 2u); i++) {
            if (c >= list_at(dp.far_table, c % 2u, i)) {
                total += dp.p;
            }
        }
    }
    return total;
}

fn near_keys(t: u32) -> u32 {
    var total = 0u;
    let f = t / dp.cell;
    for (var i = 0u; i < list_len(dp.near_table, f % 2u); i++) {
        total += near_range(t, i).y;
    }
    return total;
}

struct Key {
    k: u32,     // where its key row starts in the state, or CURRENT
    v: u32,     // where its value row starts, or CURRENT
    bias: f32,  // log(multiplicity) of a coarse key with the option on
}

// Key e of token t of head h: near keys first, then coarse keys, level by level.
fn key_at(h: u32, t: u32, e0: u32) -> Key {
    var e = e0;
    let f = t / dp.cell;
    for (var i = 0u; i < list_len(dp.near_table, f % 2u); i++) {
        let r = near_range(t, i);
        if (e < r.y) {
            let j = r.x + e;
            if (j == t) {
                return Key(CURRENT, CURRENT, 0.0);
            }
            let at = (h * dp.ring + j % dp.ring) * dp.d;
            return Key(at, dp.ring_v + at, 0.0);
        }
        e -= r.y;
    }
    for (var l = 0u; l < dp.levels; l++) {
        let c = t / group_tokens(l);
        for (var i = 0u; i < list_len(dp.far_table, c % 2u); i++) {
            let back = list_at(dp.far_table, c % 2u, i);
            if (c < back) {
                continue;
            }
            if (e < dp.p) {
                let row = kept_row(h, l, (c - back) % KEPT_GROUPS, e);
                var bias = 0.0;
                if (dp.multiplicity != 0u) {
                    bias = log(f32(seg_tokens(l)));
                }
                return Key(dp.kept_k + row, dp.kept_v + row, bias);
            }
            e -= dp.p;
        }
    }
    return Key(CURRENT, CURRENT, 0.0); // not reached: e < the key count
}

var<workgroup> q_s: array<f32, DEC_MAX_D>;
var<workgroup> z_s: array<f32, WG_ELEMENTS>;
var<workgroup> v_s: array<u32, WG_ELEMENTS>;

// One workgroup per head: the keys in tiles of WG_ELEMENTS, one score per invocation, then
// every invocation folds the tile's scores into its channels' running softmax.
@compute @workgroup_size(WG_ELEMENTS)
fn decode_attend(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = wg.x + wg.y * nwg.x;
    if (h >= dp.bh) {
        return;
    }
    let d = dp.d;
    let t = len_in[0];
    for (var c = lid; c < d; c += WG_ELEMENTS) {
        q_s[c] = f32(q_in[h * d + c]) * dp.scale;
    }
    workgroupBarrier();
    let total = near_keys(t) + far_keys(t);
    var mx = NEG_BIG;
    var sum = 0.0;
    var acc: array<f32, DEC_CHANNELS>;
    for (var base = 0u; base < total; base += WG_ELEMENTS) {
        let e = base + lid;
        var z = NEG_BIG;
        var v_at = CURRENT;
        if (e < total) {
            let key = key_at(h, t, e);
            var dot = 0.0;
            for (var c = 0u; c < d; c++) {
                var kc: f32;
                if (key.k == CURRENT) {
                    kc = f32(k_in[h * d + c]);
                } else {
                    kc = state_in[key.k + c];
                }
                dot += q_s[c] * kc;
            }
            z = dot + key.bias;
            v_at = key.v;
        }
        z_s[lid] = z;
        v_s[lid] = v_at;
        workgroupBarrier();
        let tile = min(WG_ELEMENTS, total - base);
        for (var i = 0u; i < tile; i++) {
            let zi = z_s[i];
            let m_new = max(mx, zi);
            let a = exp(mx - m_new);
            let b = exp(zi - m_new);
            sum = sum * a + b;
            for (var j = 0u; j < DEC_CHANNELS; j++) {
                let c = lid + j * WG_ELEMENTS;
                if (c < d) {
                    var vc: f32;
                    if (v_s[i] == CURRENT) {
                        vc = f32(v_in[h * d + c]);
                    } else {
                        vc = state_in[v_s[i] + c];
                    }
                    acc[j] = acc[j] * a + b * vc;
                }
            }
            mx = m_new;
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < DEC_CHANNELS; j++) {
        let c = lid + j * WG_ELEMENTS;
        if (c < d) {
            o_out[h * d + c] = STORE(acc[j] / sum);
        }
    }
    if (lid == 0u) {
        lse_out[h] = mx + log(sum);
    }
}

// Adds token t (key x_k, value x_v of channel c of head h) to the ring and to every level's
// open group (Mean: its segment's sums; Basis, Depthwise: W[r][offset] x to every row r),
// and finishes the groups it completes (Mean: sums to means; Depthwise: plus the bias).
fn add_token(h: u32, c: u32, t: u32, x_k: f32, x_v: f32) {
    let d = dp.d;
    let slot = (h * dp.ring + t % dp.ring) * d + c;
    state[slot] = x_k;
    state[dp.ring_v + slot] = x_v;
    for (var l = 0u; l < dp.levels; l++) {
        let s = group_tokens(l);
        let off = t % s;
        let seg = off / seg_tokens(l);
        for (var r = 0u; r < dp.p; r++) {
            var wk = 0.0;
            var wv = 0.0;
            if (dp.kind == 0u) {
                if (r == seg) {
                    wk = 1.0;
                    wv = 1.0;
                }
            } else {
                var at = w_offset(l) + r * s + off;
                if (dp.kind == 2u) {
                    at = w_offset(l) + (c * dp.p + r) * s + off;
                }
                wk = weights[at];
                wv = weights[dp.wv_base + at];
            }
            let row = open_row(h, l, r) + c;
            state[dp.open_k + row] += wk * x_k;
            state[dp.open_v + row] += wv * x_v;
        }
        if (off + 1u == s) {
            let slot = (t / s) % KEPT_GROUPS;
            for (var r = 0u; r < dp.p; r++) {
                let row = open_row(h, l, r) + c;
                var k_row = state[dp.open_k + row];
                var v_row = state[dp.open_v + row];
                if (dp.kind == 0u) {
                    k_row /= f32(seg_tokens(l));
                    v_row /= f32(seg_tokens(l));
                } else if (dp.kind == 2u) {
                    k_row += weights[dp.bk_base + b_offset(l) + c * dp.p + r];
                    v_row += weights[dp.bv_base + b_offset(l) + c * dp.p + r];
                }
                let kept = kept_row(h, l, slot, r) + c;
                state[dp.kept_k + kept] = k_row;
                state[dp.kept_v + kept] = v_row;
                state[dp.open_k + row] = 0.0;
                state[dp.open_v + row] = 0.0;
            }
        }
    }
}

// One invocation per (head, channel): adds `count.tokens` tokens ([bh, n, d]) in order.
@compute @workgroup_size(WG_ELEMENTS)
fn decode_update(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wg.x + wg.y * nwg.x) * WG_ELEMENTS + lid;
    let d = dp.d;
    if (idx >= dp.bh * d) {
        return;
    }
    let h = idx / d;
    let c = idx % d;
    let n = count.tokens;
    let t0 = len_in[0];
    for (var i = 0u; i < n; i++) {
        let at = (h * n + i) * d + c;
        add_token(h, c, t0 + i, f32(k_in[at]), f32(v_in[at]));
    }
}

// Mean adds a level when the top level's first group closes: the new level's group 0 starts
// with the sums of that group's segments (kept as means over seg_tokens tokens each), and the
// tokens still to come are added to it as they arrive. One invocation per (head, channel).
@compute @workgroup_size(WG_ELEMENTS)
fn decode_seed(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wg.x + wg.y * nwg.x) * WG_ELEMENTS + lid;
    let d = dp.d;
    if (idx >= dp.bh * d) {
        return;
    }
    let h = idx / d;
    let c = idx % d;
    let l = dp.levels - 1u;
    let tokens = f32(seg_tokens(l - 1u));
    for (var r = 0u; r < dp.p; r++) {
        var sk = 0.0;
        var sv = 0.0;
        let at = r * (DEC_LIST + 1u);
        for (var i = 0u; i < seed[at]; i++) {
            let row = kept_row(h, l - 1u, 0u, seed[at + 1u + i]) + c;
            sk += state[dp.kept_k + row] * tokens;
            sv += state[dp.kept_v + row] * tokens;
        }
        let row = open_row(h, l, r) + c;
        state[dp.open_k + row] = sk;
        state[dp.open_v + row] = sv;
    }
}

// The token count moves on once every kernel of the step has read it.
@compute @workgroup_size(DEC_ADVANCE_THREADS)
fn decode_advance() {
    len_out[0] += count.tokens;
}
