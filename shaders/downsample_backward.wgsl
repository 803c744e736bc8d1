// Backward of the downsampling (docs/fma.md §5 and §10): the gradients of the coarse keys and
// values (written by backward_dkv_far) flow on to the tokens' dK and dV and to the weights.
// In the O(n) variant (params.queries = 1) the coarse queries' gradients (the third part of
// dcoarse, written with the others by linear_backward.wgsl) flow the same way on to dQ and to
// the query weights wq, bq.
// - `tokens_mean`, `tokens_basis`, `tokens_depthwise`: one invocation per (head, token,
//   channel) adds the token's share from every level (a token lies in one cell per level),
//   so each dK and dV element has one owner; `tokens_mean_quads` (CPU adapters): one per four
//   channels.
// - `weight_grads_basis`, `weight_grads_depthwise` (GPUs): one workgroup per weight (or bias)
//   element sums over every cell and head that shares it (`basis_sums`, `depthwise_sums`
//   here); the REDUCE_THREADS lanes' sums are reduced in a fixed order, so the result is
//   deterministic: in workgroup memory (downsample_backward_reduce.wgsl), or with subgroup sums
//   where the device has subgroups (downsample_backward_subgroups.wgsl).
// - `weight_grads_basis_serial`, `weight_grads_depthwise_serial` (CPU adapters): one
//   invocation per element (`serial_sums`). `range.accumulate` adds to the previous chunk of
//   heads instead of overwriting.

@group(0) @binding(B_WEIGHTS) var<storage, read> weights: array<f32>;
@group(0) @binding(B_DCOARSE) var<storage, read> dcoarse: array<f32>;
@group(0) @binding(B_DK) var<storage, read_write> dk_out: array<f32>;
@group(0) @binding(B_DV) var<storage, read_write> dv_out: array<f32>;
@group(0) @binding(B_DQ) var<storage, read_write> dq_out: array<f32>;
@group(0) @binding(B_DW) var<storage, read_write> dw_out: array<f32>;

// `GradRange` (the header, from src/gpu/shaders/structs.rs): first, count, accumulate.
@group(0) @binding(B_GRAD_RANGE) var<uniform> range: GradRange;

// One element of dK and dV: its head, token, channel and grid position. A workgroup holds
// TOKEN_ROWS rows (head, token) of dK and dV, a lane per channel; with one row (HEAD_TILE >= 32)
// the row's index arithmetic (divisions by every level's sizes) is the same for all lanes, so
// a CPU adapter computes it once per SIMD loop instead of once per lane.
struct Element {
    at: u32,
    head: u32,
    c: u32,
    y: u32,
    x: u32,
    real: bool, // inside the tensors (c < d, row < bh * n)
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Element {
    let row = workgroup_index(wid, nwg) * TOKEN_ROWS + (lid / HEAD_TILE) % TOKEN_ROWS;
    let c = lid % HEAD_TILE;
    let token = row % params.n;
    let real = c < params.d && row < params.bh * params.n;
    return Element(row * params.d + c, row / params.n, c, token / params.real_w, token % params.real_w, real);
}

// Gradient of coarse row `row` (key part, or value part with `value`) at channel c.
fn dcoarse_at(head: u32, row: u32, c: u32, value: bool) -> f32 {
    var at = (head * params.total_rows + row) * params.d + c;
    if (value) {
        at += params.coarse_v_base;
    }
    return dcoarse[at];
}

// Gradient of coarse query row `row` at channel c (0 unless the O(n) variant).
fn dcoarse_query(head: u32, row: u32, c: u32) -> f32 {
    if (params.queries == 0u) {
        return 0.0;
    }
    return dcoarse[2u * params.coarse_v_base + (head * params.total_rows + row) * params.d + c];
}

// Adds a token's share of the coarse queries' gradients to dQ (the O(n) variant only).
fn add_dq(e: Element, gq: f32) {
    if (params.queries != 0u) {
        dq_out[e.at] += gq;
    }
}

@compute @workgroup_size(TOKEN_LANES)
fn tokens_mean(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = element(wid, nwg, lid);
    if (!e.real) {
        return;
    }
    var gk = 0.0;
    var gv = 0.0;
    var gq = 0.0;
    for (var l = 0u; l < params.levels; l++) {
        let row = segment_row(level(l), e.y, e.x);
        // the token is real, so its segment's count is at least 1
        let inv = 1.0 / f32(row_count(row));
        gk += dcoarse_at(e.head, row, e.c, false) * inv;
        gv += dcoarse_at(e.head, row, e.c, true) * inv;
        gq += dcoarse_query(e.head, row, e.c) * inv;
    }
    dk_out[e.at] += gk;
    dv_out[e.at] += gv;
    add_dq(e, gq);
}

// tokens_mean_quads: tokens_mean for CPU adapters (chosen with the Direct forward). A lane takes
// four channels of a row (TOKEN_ROWS x 4 rows per workgroup), so the per-level index arithmetic
// and the segment's count, per lane on a CPU's SIMD loops, are paid once per four elements
// (lavapipe, 1D n = 16K, d = 64: 125 ms to 46).
@compute @workgroup_size(TOKEN_LANES)
fn tokens_mean_quads(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let quads = HEAD_TILE / 4u;
    let row = workgroup_index(wid, nwg) * TOKEN_ROWS * 4u + lid / quads;
    let c0 = (lid % quads) * 4u;
    if (c0 >= params.d || row >= params.bh * params.n) {
        return;
    }
    let token = row % params.n;
    let head = row / params.n;
    let y = token / params.real_w;
    let x = token % params.real_w;
    var gk = vec4<f32>(0.0);
    var gv = vec4<f32>(0.0);
    var gq = vec4<f32>(0.0);
    let live = (vec4<u32>(c0) + LANES4) < vec4<u32>(params.d);
    for (var l = 0u; l < params.levels; l++) {
        let crow = segment_row(level(l), y, x);
        // the token is real, so its segment's count is at least 1
        let inv = 1.0 / f32(row_count(crow));
        for (var j = 0u; j < 4u; j++) {
            if (live[j]) {
                gk[j] += dcoarse_at(head, crow, c0 + j, false) * inv;
                gv[j] += dcoarse_at(head, crow, c0 + j, true) * inv;
                gq[j] += dcoarse_query(head, crow, c0 + j) * inv;
            }
        }
    }
    let at = row * params.d + c0;
    for (var j = 0u; j < 4u; j++) {
        if (live[j]) {
            dk_out[at + j] += gk[j];
            dv_out[at + j] += gv[j];
            if (params.queries != 0u) {
                dq_out[at + j] += gq[j];
            }
        }
    }
}

// Basis (W[l][r][t], shared by the channels) or depthwise (W[l][c][r][t]).
fn tokens_learned(e: Element, depthwise: bool) {
    var gk = 0.0;
    var gv = 0.0;
    var gq = 0.0;
    for (var l = 0u; l < params.levels; l++) {
        let lv = level(l);
        let s = lv.h * lv.w;
        let t = (e.y % lv.h) * lv.w + e.x % lv.w;
        let cell = lv.first + (e.y / lv.h) * lv.groups_x + e.x / lv.w;
        for (var r = 0u; r < params.p; r++) {
            let row = cell * params.p + r;
            if (row_count(row) == 0u) {
                continue; // never used by the attention
            }
            var wi = lv.w_off + r * s + t;
            if (depthwise) {
                wi = lv.w_off + (e.c * params.p + r) * s + t;
            }
            gk += weights[wi] * dcoarse_at(e.head, row, e.c, false);
            gv += weights[params.wv_base + wi] * dcoarse_at(e.head, row, e.c, true);
            if (params.queries != 0u) {
                gq += weights[params.wq_base + wi] * dcoarse_query(e.head, row, e.c);
            }
        }
    }
    dk_out[e.at] += gk;
    dv_out[e.at] += gv;
    add_dq(e, gq);
}

@compute @workgroup_size(TOKEN_LANES)
fn tokens_basis(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = element(wid, nwg, lid);
    if (e.real) {
        tokens_learned(e, false);
    }
}

@compute @workgroup_size(TOKEN_LANES)
fn tokens_depthwise(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = element(wid, nwg, lid);
    if (e.real) {
        tokens_learned(e, true);
    }
}

// One lane's partial sums for one weight element (key, value and, in the O(n) variant, query
// parts) and where the gradients go in `dw_out`.
struct WeightSums {
    sk: f32,
    sv: f32,
    sq: f32,
    k_at: u32,
    v_at: u32,
    q_at: u32,
}

// Writes (or, for a later chunk of heads, adds) one element's reduced gradients.
fn store_weight(s: WeightSums, tk: f32, tv: f32, tq: f32) {
    var old_k = 0.0;
    var old_v = 0.0;
    var old_q = 0.0;
    let queries = params.queries != 0u;
    if (range.accumulate != 0u) {
        old_k = dw_out[s.k_at];
        old_v = dw_out[s.v_at];
        if (queries) {
            old_q = dw_out[s.q_at];
        }
    }
    dw_out[s.k_at] = old_k + tk;
    dw_out[s.v_at] = old_v + tv;
    if (queries) {
        dw_out[s.q_at] = old_q + tq;
    }
}

// Channel c of the query row at `at` (0 unless the O(n) variant).
fn query_at(at: u32) -> f32 {
    if (params.queries == 0u) {
        return 0.0;
    }
    return q_in[at];
}

// The level (0-based) whose block of `weights` (or biases) holds element `local`.
fn level_of_element(local: u32, bias: bool) -> u32 {
    var found = 0u;
    for (var l = 0u; l < params.levels; l++) {
        let lv = level(l);
        var start = lv.w_off;
        if (bias) {
            start = lv.b_off;
        }
        if (local >= start) {
            found = l;
        }
    }
    return found;
}

// Weight (or bias) element `w` of this dispatch: its level, channel (Depthwise), coarse row
// r within the cell and token t within the cell (weights only), and where its gradients go.
struct WeightElement {
    lv: Level,
    c: u32,
    r: u32,
    t: u32,
    bias: bool,
    sums: WeightSums, // zero sums, the targets set
}

fn basis_element(w: u32) -> WeightElement {
    let local = range.first + w;
    let lv = level(level_of_element(local, false));
    let s = lv.h * lv.w;
    let at = WeightSums(0.0, 0.0, 0.0, local, params.wv_base + local, params.wq_base + local);
    return WeightElement(lv, 0u, (local - lv.w_off) / s, (local - lv.w_off) % s, false, at);
}

fn depthwise_element(w: u32) -> WeightElement {
    // Weights [wk of all levels] come first (wv_base of them), then the biases.
    let element = range.first + w;
    let bias = element >= params.wv_base;
    if (bias) {
        let local = element - params.wv_base;
        let lv = level(level_of_element(local, true));
        let at = WeightSums(0.0, 0.0, 0.0, params.bk_base + local, params.bv_base + local, params.bq_base + local);
        return WeightElement(lv, (local - lv.b_off) / params.p, (local - lv.b_off) % params.p, 0u, true, at);
    }
    let lv = level(level_of_element(element, false));
    let s = lv.h * lv.w;
    let o = element - lv.w_off;
    let at = WeightSums(0.0, 0.0, 0.0, element, params.wv_base + element, params.wq_base + element);
    return WeightElement(lv, o / (params.p * s), (o / s) % params.p, o % s, false, at);
}

// Adds one (head, cell g, channel c) term of element `el` to its sums: dKc[g, r][c] times
// K[token(g, t)][c] (1 for a bias), and the same for V and (O(n) variant) Q.
fn add_term(sums: ptr<function, WeightSums>, el: WeightElement, head: u32, g: u32, c: u32, j: i32) {
    let row = (el.lv.first + g) * params.p + el.r;
    if (el.bias) {
        (*sums).sk += dcoarse_at(head, row, c, false);
        (*sums).sv += dcoarse_at(head, row, c, true);
        (*sums).sq += dcoarse_query(head, row, c);
    } else if (j >= 0) {
        let at = (head * params.n + u32(j)) * params.d + c;
        (*sums).sk += dcoarse_at(head, row, c, false) * k_in[at];
        (*sums).sv += dcoarse_at(head, row, c, true) * v_in[at];
        (*sums).sq += dcoarse_query(head, row, c) * query_at(at);
    }
}

// Every term of element `el` in one invocation (`weight_grads_*_serial`, CPU adapters): heads,
// cell rows, cell columns and (Basis) channels in nested loops, so that no term pays a
// division (a CPU runs each lane's division on its own, the slowest step of the strided
// sums). A fixed order: deterministic.
fn serial_sums(el: WeightElement, channels_too: bool) -> WeightSums {
    var sums = el.sums;
    let groups_y = el.lv.groups / el.lv.groups_x;
    let ty = el.t / el.lv.w;
    let tx = el.t % el.lv.w;
    var c_end = el.c + 1u;
    if (channels_too) {
        c_end = params.d;
    }
    for (var head = 0u; head < params.bh; head++) {
        for (var gy = 0u; gy < groups_y; gy++) {
            for (var gx = 0u; gx < el.lv.groups_x; gx++) {
                let j = token_at(gy * el.lv.h + ty, gx * el.lv.w + tx);
                for (var c = select(el.c, 0u, channels_too); c < c_end; c++) {
                    add_term(&sums, el, head, gy * el.lv.groups_x + gx, c, j);
                }
            }
        }
    }
    return sums;
}

// Weight element `w` of this dispatch in one invocation: Basis sums over every channel,
// Depthwise over its own.
fn store_serial(w: u32, depthwise: bool) {
    if (w >= range.count) {
        return;
    }
    var s: WeightSums;
    if (depthwise) {
        s = serial_sums(depthwise_element(w), false);
    } else {
        s = serial_sums(basis_element(w), true);
    }
    store_weight(s, s.sk, s.sv, s.sq);
}

@compute @workgroup_size(WG_ELEMENTS)
fn weight_grads_basis_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    store_serial(workgroup_index(wid, nwg) * WG_ELEMENTS + lid, false);
}

@compute @workgroup_size(WG_ELEMENTS)
fn weight_grads_depthwise_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    store_serial(workgroup_index(wid, nwg) * WG_ELEMENTS + lid, true);
}

// Lane `lid`'s share of weight element `w` of this dispatch (Basis).
fn basis_sums(w: u32, lid: u32) -> WeightSums {
    // dW[l][r][t] = sum over heads, cells g and channels c of dKc[g, r][c] * K[token(g, t)][c]
    let el = basis_element(w);
    let lv = el.lv;
    let t = el.t;
    let items = params.bh * lv.groups * params.d;
    var sums = el.sums;
    for (var it = lid; it < items; it += REDUCE_THREADS) {
        let g = (it / params.d) % lv.groups;
        add_term(&sums, el, it / (params.d * lv.groups), g, it % params.d, cell_token(lv, g, t));
    }
    return sums;
}

// Lane `lid`'s share of weight (or bias) element `w` of this dispatch (Depthwise).
fn depthwise_sums(w: u32, lid: u32) -> WeightSums {
    // dW[l][c][r][t] = sum over heads and cells g of dKc[g, r][c] * K[token(g, t)][c];
    // db[l][c][r] = sum over heads and cells g of dKc[g, r][c].
    let el = depthwise_element(w);
    let items = params.bh * el.lv.groups;
    var sums = el.sums;
    for (var it = lid; it < items; it += REDUCE_THREADS) {
        let g = it % el.lv.groups;
        var j = -1; // a bias reads no token
        if (!el.bias) {
            j = cell_token(el.lv, g, el.t);
        }
        add_term(&sums, el, it / el.lv.groups, g, el.c, j);
    }
    return sums;
}
