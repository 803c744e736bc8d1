// FMA attention: `near_field` (full-resolution keys of the neighbouring fine cells) and
// `far_field` (coarse keys of every level's interaction list, merged into the near result);
// and `dense_attention`, exact attention, the baseline FMA is measured by.
//
// One workgroup serves QUERY_TILE queries of one fine cell, QUERY_ROWS per invocation; every
// query of a fine cell has the same near cells and the same interaction lists, so all its
// invocations walk the same keys in the same order. How the keys reach them (`near_keys`,
// `far_keys`, `dense_keys`) is in one of two files, chosen per adapter by the Rust twin
// (ForwardKernels): attention_tiled.wgsl stages key tiles in workgroup memory (GPUs),
// attention_direct.wgsl reads them straight from storage (CPU adapters). Both add keys four at
// a time (triple_weights). near_field writes a normalised partial (O, LSE); far_field merges
// its own triple into it, so no intermediate beyond O and LSE is stored.

@group(0) @binding(B_O) var<storage, read_write> o_out: array<STORE>;
@group(0) @binding(B_LSE) var<storage, read_write> lse_out: array<f32>;


// The query row scaled by tau, zero past d (and all zero for padding, token < 0).
fn load_query(head: u32, token: i32) -> array<vec4<f32>, HEAD_VEC> {
    var q: array<vec4<f32>, HEAD_VEC>;
    let e0 = (head * params.n + u32(max(token, 0))) * params.d;
    for (var c = 0u; c < HEAD_VEC; c++) {
        let e = e0 + 4u * c;
        let x = vec4<f32>(vec4<STORE>(q_in[e], q_in[e + 1u], q_in[e + 2u], q_in[e + 3u])) * params.scale;
        q[c] = select(vec4<f32>(0.0), x, channels(c) & vec4<bool>(token >= 0));
    }
    return q;
}

// Channels 4c..4c+3 of output row `row` (those < d).
fn load_output(row: u32, c: u32) -> vec4<f32> {
    let e = row * params.d + 4u * c;
    return select(vec4<f32>(0.0), vec4<f32>(vec4<STORE>(o_out[e], o_out[e + 1u], o_out[e + 2u], o_out[e + 3u])), channels(c));
}

fn store_output(row: u32, c: u32, x: vec4<f32>) {
    let e = row * params.d + 4u * c;
    let live = channels(c);
    if (live.x) {
        o_out[e] = STORE(x.x);
    }
    if (live.y) {
        o_out[e + 1u] = STORE(x.y);
    }
    if (live.z) {
        o_out[e + 2u] = STORE(x.z);
    }
    if (live.w) {
        o_out[e + 3u] = STORE(x.w);
    }
}

// The QUERY_ROWS queries of invocation `lid` in a tile of QUERY_TILE (query lid + r x
// QUERY_LANES): loads their q rows and empties their triples; returns their tokens.
fn load_rows(q: ptr<function, Rows>, t: ptr<function, Triples>, head: u32, cell: u32, first: u32, lid: u32) -> Tokens {
    var tokens: Tokens;
    for (var r = 0u; r < QUERY_ROWS; r++) {
        tokens[r] = fine_token(cell, first + lid + r * QUERY_LANES);
        (*q)[r] = load_query(head, tokens[r]);
        (*t)[r] = triple_empty();
    }
    return tokens;
}

@compute @workgroup_size(QUERY_LANES)
fn near_field(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (past_query_tiles(wid, nwg)) {
        return;
    }
    let qt = query_tile(wid, nwg);
    var q: Rows;
    var t: Triples;
    let tokens = load_rows(&q, &t, qt.head, qt.cell, qt.first, lid);
    near_keys(&t, &q, qt, tokens, lid);
    for (var r = 0u; r < QUERY_ROWS; r++) {
        if (tokens[r] >= 0) {
            store_normalised(qt.head * params.n + u32(tokens[r]), t[r]);
        }
    }
}

// Writes the normalised output and log-sum-exp of one query row.
fn store_normalised(row: u32, t: Triple) {
    let inv = 1.0 / t.sum;
    for (var c = 0u; c < HEAD_VEC; c++) {
        store_output(row, c, t.acc[c] * inv);
    }
    lse_out[row] = t.max + log(t.sum);
}

// Exact softmax attention over all keys: the benchmarks' baseline. It runs the same key
// feeding and triple as the FMA kernels, so a comparison measures the algorithm, not the
// code. One workgroup per QUERY_TILE consecutive queries of one head; causal stops at the
// tile's last query. Only n, d, bh, causal and scale of `params` are read.
@compute @workgroup_size(QUERY_LANES)
fn dense_attention(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tiles = (params.n + QUERY_TILE - 1u) / QUERY_TILE;
    let w = workgroup_index(wid, nwg);
    if (w >= tiles * params.bh) {
        return;
    }
    let head = w / tiles;
    let first = (w % tiles) * QUERY_TILE;
    var q: Rows;
    var t: Triples;
    var tokens: Tokens;
    for (var r = 0u; r < QUERY_ROWS; r++) {
        let x = first + lid + r * QUERY_LANES;
        tokens[r] = select(-1, i32(x), x < params.n);
        q[r] = load_query(head, tokens[r]);
        t[r] = triple_empty();
    }
    let head_base = head * params.n;
    var keys = params.n;
    if (params.causal != 0u) {
        keys = min(params.n, first + QUERY_TILE);
    }
    dense_keys(&t, &q, head_base, keys, tokens, lid);
    for (var r = 0u; r < QUERY_ROWS; r++) {
        if (tokens[r] >= 0) {
            store_normalised(head_base + u32(tokens[r]), t[r]);
        }
    }
}

@compute @workgroup_size(QUERY_LANES)
fn far_field(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (past_query_tiles(wid, nwg)) {
        return;
    }
    let qt = query_tile(wid, nwg);
    var q: Rows;
    var t: Triples;
    let tokens = load_rows(&q, &t, qt.head, qt.cell, qt.first, lid);
    far_keys(&t, &q, qt, lid);
    for (var r = 0u; r < QUERY_ROWS; r++) {
        if (tokens[r] >= 0) {
            let row = qt.head * params.n + u32(tokens[r]);
            var near: array<vec4<f32>, HEAD_VEC>;
            for (var c = 0u; c < HEAD_VEC; c++) {
                near[c] = load_output(row, c);
            }
            let lse = triple_merge_normalised(&t, r, &near, lse_out[row]);
            for (var c = 0u; c < HEAD_VEC; c++) {
                store_output(row, c, t[r].acc[c]);
            }
            lse_out[row] = lse;
        }
    }
}

