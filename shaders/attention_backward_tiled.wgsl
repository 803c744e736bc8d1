// The GPUs' backward kernels (`Kernels::Tiled`): a workgroup stages the other side's rows in
// workgroup memory, loaded by all its lanes together, and every lane reads them from there.
// - `backward_dq_near` writes dQ from the near keys, one query per lane; `backward_dq_far`
//   adds the coarse keys' share.
// - `backward_dkv_near`: one key per lane, the queries staged in tiles.
// - `backward_dkv_far`: one workgroup per block of BACK_ROWS coarse rows of one cell walks its
//   queries in tiles: first one query per lane (scores, the rows broadcast), then one channel
//   per lane (the rows' gradients, each pair's P and dS broadcast), so no lane gathers across
//   rows.

// Invocations that stage one row together, and rows staged per pass.
const ROW_THREADS: u32 = min(QUERY_TILE, HEAD_TILE);
const ROWS_PER_PASS: u32 = QUERY_TILE / ROW_THREADS;
// The far keys' staging (far_chain.wgsl, `stage_far_tile`): its tile and lanes.
const STAGE_TILE: u32 = BACK_TILE;
const STAGE_LANES: u32 = QUERY_TILE;

// BACK_TILE staged rows: keys and values (query-major), or tau * queries and dO (key-major),
// with a tag per row (token or coarse row, -1 for none) and two scalars (score offset; or the
// query's LSE and D).
var<workgroup> tile_a: array<vec4<f32>, BACK_VECS>;
var<workgroup> tile_b: array<vec4<f32>, BACK_VECS>;
var<workgroup> tile_tag: array<i32, BACK_TILE>;
var<workgroup> tile_x: array<f32, BACK_TILE>;
var<workgroup> tile_y: array<f32, BACK_TILE>;
// backward_dkv_far: FAR_LANES lanes; the block's coarse keys and values, and the token, P and
// dS of each (query, row) pair of a tile of FAR_LANES queries.
const CHANNEL_SLOTS: u32 = (HEAD_TILE + FAR_LANES - 1u) / FAR_LANES;
const ROW_SLOTS: u32 = CHANNEL_SLOTS * BACK_ROWS;
var<workgroup> row_k: array<vec4<f32>, BACK_ROW_VECS>;
var<workgroup> row_v: array<vec4<f32>, BACK_ROW_VECS>;
var<workgroup> far_tag: array<i32, FAR_LANES>;
var<workgroup> pair_p: array<f32, FAR_LANES * BACK_ROWS>;
var<workgroup> pair_ds: array<f32, FAR_LANES * BACK_ROWS>;

// Writes element c of row kk of both tiles.
fn tile_store(kk: u32, c: u32, a: f32, b: f32) {
    let at = kk * HEAD_VEC + c / 4u;
    tile_a[at][c % 4u] = a;
    tile_b[at][c % 4u] = b;
}

// Row kk's tag and score offset (`tile_x`): a far key's coarse row and log-multiplicity.
fn tile_set_key(kk: u32, key: FarKey) {
    tile_tag[kk] = key.row;
    tile_x[kk] = key.bias;
}

// Stages key token j's key and value as row kk (zeros for j < 0).
fn stage_kv(kk: u32, j: i32, head_base: u32, lid: u32) {
    if (lid % ROW_THREADS == 0u) {
        tile_tag[kk] = j;
    }
    for (var c = lid % ROW_THREADS; c < HEAD_TILE; c += ROW_THREADS) {
        var kx = 0.0;
        var vx = 0.0;
        if (j >= 0 && c < params.d) {
            let at = (head_base + u32(j)) * params.d + c;
            kx = k_in[at];
            vx = v_in[at];
        }
        tile_store(kk, c, kx, vx);
    }
}

// Stages query token i's tau * q and dO as row kk, with its LSE and D (zeros for i < 0).
fn stage_query(kk: u32, i: i32, head_base: u32, lid: u32) {
    if (lid % ROW_THREADS == 0u) {
        tile_tag[kk] = i;
        let st = load_stats(head_base, i);
        tile_x[kk] = st.x;
        tile_y[kk] = st.y;
    }
    for (var c = lid % ROW_THREADS; c < HEAD_TILE; c += ROW_THREADS) {
        var qx = 0.0;
        var dx = 0.0;
        if (i >= 0 && c < params.d) {
            let at = (head_base + u32(i)) * params.d + c;
            qx = q_in[at] * params.scale;
            dx = do_in[at];
        }
        tile_store(kk, c, qx, dx);
    }
}

// dq += dS * k for staged key row kk with score offset `bias`; st = (LSE, D) of the query.
fn add_dq(dq: ptr<function, array<vec4<f32>, HEAD_VEC>>, q: ptr<function, array<vec4<f32>, HEAD_VEC>>,
          dout: ptr<function, array<vec4<f32>, HEAD_VEC>>, st: vec2<f32>, kk: u32, bias: f32) {
    var z = bias;
    var dp = 0.0;
    for (var c = 0u; c < HEAD_VEC; c++) {
        z += dot((*q)[c], tile_a[kk * HEAD_VEC + c]);
        dp += dot((*dout)[c], tile_b[kk * HEAD_VEC + c]);
    }
    let ds = exp(z - st.x) * (dp - st.y);
    for (var c = 0u; c < HEAD_VEC; c++) {
        (*dq)[c] += ds * tile_a[kk * HEAD_VEC + c];
    }
}

@compute @workgroup_size(QUERY_TILE)
fn backward_dq_near(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (past_query_tiles(wid, nwg)) {
        return;
    }
    let qt = query_tile(wid, nwg);
    let token = fine_token(qt.cell, qt.first + lid);
    let head_base = qt.head * params.n;
    var q = load_q(head_base, token);
    var dout = load_do(head_base, token);
    let st = load_stats(head_base, token);
    var dq: array<vec4<f32>, HEAD_VEC>;
    let cell_tokens = params.cell_h * params.cell_w;
    let lo = geom[params.near_offsets + qt.cell];
    let keys = (geom[params.near_offsets + qt.cell + 1u] - lo) * cell_tokens;
    for (var k0 = 0u; k0 < keys; k0 += BACK_TILE) {
        workgroupBarrier(); // every query has read the previous tile
        for (var kk = lid / ROW_THREADS; kk < BACK_TILE; kk += ROWS_PER_PASS) {
            let x = k0 + kk;
            var j = -1;
            if (x < keys) {
                j = fine_token(geom[params.near_entries + lo + x / cell_tokens], x % cell_tokens);
            }
            stage_kv(kk, j, head_base, lid);
        }
        workgroupBarrier();
        if (token >= 0) {
            for (var kk = 0u; kk < BACK_TILE; kk++) {
                let j = tile_tag[kk];
                if (j >= 0 && (params.causal == 0u || j <= token)) {
                    add_dq(&dq, &q, &dout, st, kk, 0.0);
                }
            }
        }
    }
    if (token >= 0) {
        let row = (head_base + u32(token)) * params.d;
        for (var c = 0u; c < params.d; c++) {
            dq_out[row + c] = dq[c / 4u][c % 4u] * params.scale;
        }
    }
}

@compute @workgroup_size(QUERY_TILE)
fn backward_dq_far(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (past_query_tiles(wid, nwg)) {
        return;
    }
    let qt = query_tile(wid, nwg);
    let token = fine_token(qt.cell, qt.first + lid);
    let head_base = qt.head * params.n;
    var q = load_q(head_base, token);
    var dout = load_do(head_base, token);
    let st = load_stats(head_base, token);
    var dq: array<vec4<f32>, HEAD_VEC>;
    let coarse_base = qt.head * params.total_rows;

    let keys = far_chain(qt.cell, lid);
    var level = 0u;
    for (var k0 = 0u; k0 < keys; k0 += BACK_TILE) {
        stage_far_tile(k0, keys, coarse_base, &level, lid);
        if (token >= 0) {
            for (var kk = 0u; kk < BACK_TILE; kk++) {
                if (tile_tag[kk] >= 0) {
                    add_dq(&dq, &q, &dout, st, kk, tile_x[kk]);
                }
            }
        }
    }
    if (token >= 0) {
        let row = (head_base + u32(token)) * params.d;
        for (var c = 0u; c < params.d; c++) {
            dq_out[row + c] += dq[c / 4u][c % 4u] * params.scale;
        }
    }
}

@compute @workgroup_size(QUERY_TILE)
fn backward_dkv_near(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (past_query_tiles(wid, nwg)) {
        return;
    }
    let kt = query_tile(wid, nwg); // here a tile of keys
    let token = fine_token(kt.cell, kt.first + lid);
    let head_base = kt.head * params.n;
    var k: array<vec4<f32>, HEAD_VEC>;
    var v: array<vec4<f32>, HEAD_VEC>;
    if (token >= 0) {
        for (var c = 0u; c < params.d; c++) {
            let at = (head_base + u32(token)) * params.d + c;
            k[c / 4u][c % 4u] = k_in[at];
            v[c / 4u][c % 4u] = v_in[at];
        }
    }
    var dk: array<vec4<f32>, HEAD_VEC>;
    var dv: array<vec4<f32>, HEAD_VEC>;
    let cell_tokens = params.cell_h * params.cell_w;
    let lo = geom[params.near_t_offsets + kt.cell];
    let queries = (geom[params.near_t_offsets + kt.cell + 1u] - lo) * cell_tokens;
    for (var x0 = 0u; x0 < queries; x0 += BACK_TILE) {
        workgroupBarrier();
        for (var kk = lid / ROW_THREADS; kk < BACK_TILE; kk += ROWS_PER_PASS) {
            let x = x0 + kk;
            var i = -1;
            if (x < queries) {
                i = fine_token(geom[params.near_t_entries + lo + x / cell_tokens], x % cell_tokens);
            }
            stage_query(kk, i, head_base, lid);
        }
        workgroupBarrier();
        if (token >= 0) {
            for (var kk = 0u; kk < BACK_TILE; kk++) {
                let i = tile_tag[kk];
                if (i >= 0 && (params.causal == 0u || i >= token)) {
                    var z = 0.0;
                    var dp = 0.0;
                    for (var c = 0u; c < HEAD_VEC; c++) {
                        z += dot(tile_a[kk * HEAD_VEC + c], k[c]);
                        dp += dot(tile_b[kk * HEAD_VEC + c], v[c]);
                    }
                    let p = exp(z - tile_x[kk]);
                    let ds = p * (dp - tile_y[kk]);
                    for (var c = 0u; c < HEAD_VEC; c++) {
                        dk[c] += ds * tile_a[kk * HEAD_VEC + c];
                        dv[c] += p * tile_b[kk * HEAD_VEC + c];
                    }
                }
            }
        }
    }
    if (token >= 0) {
        let row = (head_base + u32(token)) * params.d;
        for (var c = 0u; c < params.d; c++) {
            dk_out[row + c] = dk[c / 4u][c % 4u];
            dv_out[row + c] = dv[c / 4u][c % 4u];
        }
    }
}

@compute @workgroup_size(FAR_LANES)
fn backward_dkv_far(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blocks = (params.p + BACK_ROWS - 1u) / BACK_ROWS;
    let per_head = (params.total_rows / params.p) * blocks;
    let w = workgroup_index(wid, nwg);
    if (w >= per_head * params.bh) {
        return;
    }
    let head = w / per_head;
    // Cells in reverse: the coarsest level's few long workgroups start first.
    let cell = params.total_rows / params.p - 1u - (w % per_head) / blocks;
    let r0 = ((w % per_head) % blocks) * BACK_ROWS;
    let head_base = head * params.n;
    let coarse_base = head * params.total_rows;
    let lv = level(level_index_of(cell));
    let s = lv.h * lv.w;

    // The block's rows: coarse keys and values, score offsets, and which rows are used.
    var bias: array<f32, BACK_ROWS>;
    var used: array<bool, BACK_ROWS>;
    for (var r = 0u; r < BACK_ROWS; r++) {
        let row = cell * params.p + r0 + r;
        used[r] = r0 + r < params.p && row_count(row) > 0u;
        if (used[r]) {
            bias[r] = row_bias(row);
        }
        for (var c = lid; c < HEAD_TILE; c += FAR_LANES) {
            var kx = 0.0;
            var vx = 0.0;
            if (used[r] && c < params.d) {
                let at = (coarse_base + row) * params.d + c;
                kx = coarse[at];
                vx = coarse[params.coarse_v_base + at];
            }
            row_k[r * HEAD_VEC + c / 4u][c % 4u] = kx;
            row_v[r * HEAD_VEC + c / 4u][c % 4u] = vx;
        }
    }

    // Per lane: BACK_ROWS rows x CHANNEL_SLOTS channels (lid, lid + FAR_LANES, ...).
    var acc_k: array<f32, ROW_SLOTS>;
    var acc_v: array<f32, ROW_SLOTS>;
    let lo = geom[params.far_t_offsets + cell];
    let queries = (geom[params.far_t_offsets + cell + 1u] - lo) * s;
    for (var x0 = 0u; x0 < queries; x0 += FAR_LANES) {
        workgroupBarrier(); // the rows are staged; the previous tile's pairs are read
        // Scores: one query per lane, the block's rows read by all lanes alike.
        let x = x0 + lid;
        var i = -1;
        if (x < queries) {
            i = cell_token(lv, geom[params.far_t_entries + lo + x / s] - lv.first, x % s);
        }
        far_tag[lid] = i;
        var q = load_q(head_base, i);
        var dout = load_do(head_base, i);
        let st = load_stats(head_base, i);
        for (var r = 0u; r < BACK_ROWS; r++) {
            var p = 0.0;
            var ds = 0.0;
            if (i >= 0 && used[r]) {
                var z = bias[r];
                var dp = 0.0;
                for (var e = 0u; e < HEAD_VEC; e++) {
                    z += dot(q[e], row_k[r * HEAD_VEC + e]);
                    dp += dot(dout[e], row_v[r * HEAD_VEC + e]);
                }
                p = exp(z - st.x);
                ds = p * (dp - st.y);
            }
            pair_p[lid * BACK_ROWS + r] = p;
            pair_ds[lid * BACK_ROWS + r] = ds;
        }
        workgroupBarrier();
        // Gradients: one channel per lane, each query's P and dS read by all lanes alike.
        for (var kk = 0u; kk < FAR_LANES; kk++) {
            let j = far_tag[kk];
            if (j < 0) {
                continue;
            }
            for (var slot = 0u; slot < CHANNEL_SLOTS; slot++) {
                let c = lid + slot * FAR_LANES;
                if (c < params.d) {
                    let at = (head_base + u32(j)) * params.d + c;
                    let qc = q_in[at] * params.scale;
                    let dc = do_in[at];
                    for (var r = 0u; r < BACK_ROWS; r++) {
                        acc_k[slot * BACK_ROWS + r] += pair_ds[kk * BACK_ROWS + r] * qc;
                        acc_v[slot * BACK_ROWS + r] += pair_p[kk * BACK_ROWS + r] * dc;
                    }
                }
            }
        }
    }
    for (var slot = 0u; slot < CHANNEL_SLOTS; slot++) {
        let c = lid + slot * FAR_LANES;
        if (c < params.d) {
            for (var r = 0u; r < BACK_ROWS; r++) {
                if (r0 + r < params.p) {
                    let at = (coarse_base + cell * params.p + r0 + r) * params.d + c;
                    dcoarse[at] = acc_k[slot * BACK_ROWS + r];
                    dcoarse[params.coarse_v_base + at] = acc_v[slot * BACK_ROWS + r];
                }
            }
        }
    }
}
