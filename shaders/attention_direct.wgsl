// ForwardKernels::Direct (CPU adapters): every invocation reads the keys straight from
// storage, in the same order as the rest of its workgroup. A CPU runs a workgroup as SIMD loops
// over its invocations: a load whose address all of them share is one load and a broadcast,
// while a barrier is a switch between those loops and staging a gather and a scatter. Rows are
// read as vec4s (one bounds check for four channels), so d is a multiple of 4 here; rows of
// STORE (f16 in the f16 builds) become vec4<f32> as they are read.

@group(0) @binding(B_K4) var<storage, read> k4: array<vec4<STORE>>;
@group(0) @binding(B_V4) var<storage, read> v4: array<vec4<STORE>>;
@group(0) @binding(B_COARSE4) var<storage, read> coarse4: array<vec4<STORE>>;

// Rows are addressed in vec4s: a row starts at (its index) * dv, dv = d / 4.
fn row_vecs() -> u32 {
    return params.d / 4u;
}

// Key vec4 c of a row, zero past d: a neighbouring row's values must never meet q's zeros
// there (an infinity would make a NaN). Values need no mask: their channels past d land in
// accumulator channels that are never stored.
fn live(c: u32, x: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(0.0), x, c < row_vecs());
}

// Adds four token keys to every triple: rows starting at vec4 `at` of K and V, for query row
// r those set in valid[r]. The addresses are the same for every invocation. Each key element
// read serves the QUERY_ROWS queries.
fn triple_add_tokens(t: ptr<function, Triples>, q: ptr<function, Rows>, at: vec4<u32>, valid: Valid) {
    var z: array<vec4<f32>, QUERY_ROWS>;
    for (var c = 0u; c < HEAD_VEC; c++) {
        let k0 = live(c, vec4<f32>(k4[at.x + c]));
        let k1 = live(c, vec4<f32>(k4[at.y + c]));
        let k2 = live(c, vec4<f32>(k4[at.z + c]));
        let k3 = live(c, vec4<f32>(k4[at.w + c]));
        for (var r = 0u; r < QUERY_ROWS; r++) {
            let x = (*q)[r][c];
            z[r] += vec4<f32>(dot(x, k0), dot(x, k1), dot(x, k2), dot(x, k3));
        }
    }
    var w: array<vec4<f32>, QUERY_ROWS>;
    for (var r = 0u; r < QUERY_ROWS; r++) {
        w[r] = triple_weights(t, r, z[r], valid[r]);
    }
    for (var c = 0u; c < HEAD_VEC; c++) {
        let v0 = vec4<f32>(v4[at.x + c]);
        let v1 = vec4<f32>(v4[at.y + c]);
        let v2 = vec4<f32>(v4[at.z + c]);
        let v3 = vec4<f32>(v4[at.w + c]);
        for (var r = 0u; r < QUERY_ROWS; r++) {
            (*t)[r].acc[c] += w[r].x * v0 + w[r].y * v1 + w[r].z * v2 + w[r].w * v3;
        }
    }
}

// The same for four coarse keys: rows starting at vec4 `at` of the coarse keys (values
// coarse_v_base / 4 further), score offsets `bias`, the same for every query.
fn triple_add_coarse(t: ptr<function, Triples>, q: ptr<function, Rows>, at: vec4<u32>, bias: vec4<f32>, valid: vec4<bool>) {
    var z: array<vec4<f32>, QUERY_ROWS>;
    for (var c = 0u; c < HEAD_VEC; c++) {
        let k0 = live(c, vec4<f32>(coarse4[at.x + c]));
        let k1 = live(c, vec4<f32>(coarse4[at.y + c]));
        let k2 = live(c, vec4<f32>(coarse4[at.z + c]));
        let k3 = live(c, vec4<f32>(coarse4[at.w + c]));
        for (var r = 0u; r < QUERY_ROWS; r++) {
            let x = (*q)[r][c];
            z[r] += vec4<f32>(dot(x, k0), dot(x, k1), dot(x, k2), dot(x, k3));
        }
    }
    var w: array<vec4<f32>, QUERY_ROWS>;
    for (var r = 0u; r < QUERY_ROWS; r++) {
        w[r] = triple_weights(t, r, z[r] + bias, valid);
    }
    let vt = at + vec4<u32>(params.coarse_v_base / 4u);
    for (var c = 0u; c < HEAD_VEC; c++) {
        let v0 = vec4<f32>(coarse4[vt.x + c]);
        let v1 = vec4<f32>(coarse4[vt.y + c]);
        let v2 = vec4<f32>(coarse4[vt.z + c]);
        let v3 = vec4<f32>(coarse4[vt.w + c]);
        for (var r = 0u; r < QUERY_ROWS; r++) {
            (*t)[r].acc[c] += w[r].x * v0 + w[r].y * v1 + w[r].z * v2 + w[r].w * v3;
        }
    }
}

// Which of the four keys j (those in range) each query row may see: all, or under causal
// masking those j <= its token.
fn visible(in_range: vec4<bool>, j: vec4<u32>, tokens: Tokens, causal: bool) -> Valid {
    var valid: Valid;
    for (var r = 0u; r < QUERY_ROWS; r++) {
        valid[r] = in_range & ((vec4<i32>(j) <= vec4<i32>(tokens[r])) | vec4<bool>(!causal));
    }
    return valid;
}

// The near keys straight from storage, cell by cell, four tokens at a time (rect_quad): no
// tags to look up, and nothing but real keys in range.
fn near_keys(t: ptr<function, Triples>, q: ptr<function, Rows>, qt: QueryTile, tokens: Tokens, lid: u32) {
    let head_base = qt.head * params.n;
    let causal = params.causal != 0u;
    var last = i32(params.n);
    if (causal) {
        last = tile_last_token(qt);
    }
    let lo = geom[params.near_offsets + qt.cell];
    let hi = geom[params.near_offsets + qt.cell + 1u];
    for (var e = lo; e < hi; e++) {
        let cell = geom[params.near_entries + e];
        let rect = cell_rect(cell);
        let area = rect_area(rect);
        for (var i = 0u; i < area; i += 4u) {
            let j = rect_quad(rect, i);
            if (i32(j.at.x) > last) {
                break;
            }
            triple_add_tokens(t, q, (vec4<u32>(head_base) + j.at) * row_vecs(), visible(j.live, j.at, tokens, causal));
        }
    }
}

// The keys [0, keys) of one head, four at a time.
fn dense_keys(t: ptr<function, Triples>, q: ptr<function, Rows>, head_base: u32, keys: u32, tokens: Tokens, lid: u32) {
    let causal = params.causal != 0u;
    for (var k0 = 0u; k0 < keys; k0 += 4u) {
        let in_range = vec4<u32>(k0) + LANES4 < vec4<u32>(keys);
        let j = select(vec4<u32>(k0), vec4<u32>(k0) + LANES4, in_range);
        triple_add_tokens(t, q, (vec4<u32>(head_base) + j) * row_vecs(), visible(in_range, j, tokens, causal));
    }
}

// The coarse keys straight from storage: the fine cell's ancestors level by level, each far
// list's rows four at a time (far_quad; the order of far_chain's flattened list).
fn far_keys(t: ptr<function, Triples>, q: ptr<function, Rows>, qt: QueryTile, lid: u32) {
    let coarse_base = qt.head * params.total_rows;
    var cell = qt.cell;
    for (var l = 0u; l < params.levels; l++) {
        let lo = geom[params.far_offsets + cell];
        let hi = geom[params.far_offsets + cell + 1u];
        for (var i = 0u; i < (hi - lo) * params.p; i += 4u) {
            let f = far_quad(lo, hi, i);
            triple_add_coarse(t, q, (vec4<u32>(coarse_base) + f.rows) * row_vecs(), f.bias, f.live);
        }
        cell = geom[params.parent + cell];
    }
}
