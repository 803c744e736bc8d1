// Backward of FMA attention (spec section 8), flash-style: every score is recomputed from the
// inputs and the saved LSE, so nothing of size n x n (or n per level) is stored. Each gradient
// element has exactly one owner invocation that sums its terms in a fixed order, so two runs
// give the same bits, with no atomics:
// - `backward_stats`: (LSE_i, D_i = dO_i . O_i) per query, read by all the others.
// - query-major, one invocation per query as in the forward: `backward_dq_near` writes dQ
//   from the near keys, `backward_dq_far` adds the coarse keys' share.
// - key-major: `backward_dkv_near`, one invocation per key, walks the queries of the cells
//   whose near field holds the key's cell (the transposed near list) and writes dK and dV.
// - row-major: `backward_dkv_far`, one workgroup per block of BACK_ROWS coarse rows of one
//   cell, walks the queries of the cells whose interaction list holds the cell (the
//   transposed far list) in tiles: first one query per lane (scores, the rows broadcast), then
//   one channel per lane (the rows' gradients, each pair's P and dS broadcast), so no lane
//   gathers across rows. The coarse rows' gradients go on to downsample_backward.wgsl.
// Those are the GPU kernels (`Tiled` in the Rust twin). CPU adapters (`Lanes`) run
// `backward_dq_lanes`, `backward_dkv_near_lanes` and `backward_dkv_far_rows` (at the end):
// the same owners without staged tiles or barriers.
// Per (query i, key): P = exp(z - LSE_i), dS = P (dO_i . v - D_i); dq_i += tau dS k,
// dk += tau dS q_i, dv += P dO_i.

@group(0) @binding(B_COARSE) var<storage, read> coarse: array<f32>;
@group(0) @binding(B_D_O) var<storage, read> do_in: array<f32>;
@group(0) @binding(B_O) var<storage, read> o_in: array<f32>;
@group(0) @binding(B_LSE) var<storage, read> lse_in: array<f32>;
@group(0) @binding(B_STATS_OUT) var<storage, read_write> stats_out: array<vec2<f32>>;
@group(0) @binding(B_STATS) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(B_DQ) var<storage, read_write> dq_out: array<f32>;
@group(0) @binding(B_DK) var<storage, read_write> dk_out: array<f32>;
@group(0) @binding(B_DV) var<storage, read_write> dv_out: array<f32>;
@group(0) @binding(B_DCOARSE) var<storage, read_write> dcoarse: array<f32>;

// Invocations that stage one row together, and rows staged per pass.
const ROW_THREADS: u32 = min(QUERY_TILE, HEAD_TILE);
const ROWS_PER_PASS: u32 = QUERY_TILE / ROW_THREADS;

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

// Rows of the inputs (zero past d and for token < 0); `load_q` scales q by tau.
fn load_q(head_base: u32, token: i32) -> array<vec4<f32>, HEAD_VEC> {
    var r: array<vec4<f32>, HEAD_VEC>;
    let at = (head_base + u32(max(token, 0))) * params.d;
    for (var e = 0u; e < HEAD_VEC; e++) {
        r[e] = select(vec4<f32>(0.0), q_vec(at, e) * params.scale, token >= 0);
    }
    return r;
}

fn load_do(head_base: u32, token: i32) -> array<vec4<f32>, HEAD_VEC> {
    var r: array<vec4<f32>, HEAD_VEC>;
    let at = (head_base + u32(max(token, 0))) * params.d;
    for (var e = 0u; e < HEAD_VEC; e++) {
        r[e] = select(vec4<f32>(0.0), do_vec(at, e), token >= 0);
    }
    return r;
}

fn load_stats(head_base: u32, token: i32) -> vec2<f32> {
    if (token < 0) {
        return vec2<f32>(0.0);
    }
    return stats[head_base + u32(token)];
}

// Writes element c of row kk of both tiles.
fn tile_put(kk: u32, c: u32, a: f32, b: f32) {
    let at = kk * HEAD_VEC + c / 4u;
    tile_a[at][c % 4u] = a;
    tile_b[at][c % 4u] = b;
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
        tile_put(kk, c, kx, vx);
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
        tile_put(kk, c, qx, dx);
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

@compute @workgroup_size(WG_ELEMENTS)
fn backward_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = workgroup_index(wid, nwg) * WG_ELEMENTS + lid;
    if (row >= params.bh * params.n) {
        return;
    }
    var delta = 0.0;
    for (var c = 0u; c < params.d; c++) {
        delta += do_in[row * params.d + c] * o_in[row * params.d + c];
    }
    stats_out[row] = vec2<f32>(lse_in[row], delta);
}

@compute @workgroup_size(QUERY_TILE)
fn backward_dq_near(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (workgroup_index(wid, nwg) >= params.fine_cells * params.tiles_per_cell * params.bh) {
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
    if (workgroup_index(wid, nwg) >= params.fine_cells * params.tiles_per_cell * params.bh) {
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
        workgroupBarrier();
        for (var kk = lid; kk < BACK_TILE; kk += QUERY_TILE) {
            var key = FarKey(-1, 0.0);
            if (k0 + kk < keys) {
                key = far_key(k0 + kk, &level);
            }
            tile_tag[kk] = key.row;
            tile_x[kk] = key.bias;
        }
        workgroupBarrier();
        for (var kk = lid / ROW_THREADS; kk < BACK_TILE; kk += ROWS_PER_PASS) {
            let row = tile_tag[kk];
            for (var c = lid % ROW_THREADS; c < HEAD_TILE; c += ROW_THREADS) {
                var kx = 0.0;
                var vx = 0.0;
                if (row >= 0 && c < params.d) {
                    let at = (coarse_base + u32(row)) * params.d + c;
                    kx = coarse[at];
                    vx = coarse[params.coarse_v_base + at];
                }
                tile_put(kk, c, kx, vx);
            }
        }
        workgroupBarrier();
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
    if (workgroup_index(wid, nwg) >= params.fine_cells * params.tiles_per_cell * params.bh) {
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
        used[r] = r0 + r < params.p && geom[params.rows + 2u * row] > 0u;
        if (used[r]) {
            bias[r] = bitcast<f32>(geom[params.rows + 2u * row + 1u]);
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

// backward_dkv_far_rows, the row-major kernel for CPU adapters (lavapipe, SwiftShader), which
// run a workgroup as SIMD loops over its lanes: there a load whose address differs per lane
// costs a load per lane, and a barrier switches every lane's context. Here each of ROW_LANES
// lanes owns one coarse row (its key and value in registers) of one of up to FAR_SIBLINGS
// neighbouring cells of a level, and all lanes walk the same queries together, so every query
// row is read at one address by all lanes: no workgroup memory, no barrier. The queries are
// the union of the cells' transposed far lists (each source cell once); a lane whose cell does
// not see a source adds exact zeros. Neighbouring cells share most of their lists (3 of 4
// sources in 1D, 27 of 30 in 2D).

// Rows per cell in one workgroup, cells per workgroup, row blocks per cell.
struct RowBlocks {
    rows: u32,
    cells: u32,
    blocks: u32,
}

fn row_blocks() -> RowBlocks {
    let rows = min(params.p, ROW_LANES);
    return RowBlocks(rows, min(ROW_LANES / rows, FAR_SIBLINGS), (params.p + rows - 1u) / rows);
}

// Workgroups of one level.
fn level_workgroups(l: u32, rb: RowBlocks) -> u32 {
    return (level(l).groups + rb.cells - 1u) / rb.cells * rb.blocks;
}

// Does cell `seen`'s transposed far list hold cell `source`?
fn sees(seen: u32, source: u32) -> bool {
    var found = false;
    for (var e = geom[params.far_t_offsets + seen]; e < geom[params.far_t_offsets + seen + 1u]; e++) {
        found = found || geom[params.far_t_entries + e] == source;
    }
    return found;
}

// Channels 4e .. 4e + 3 of the row that starts at word `at` of a buffer, zero past d (one
// helper per buffer: a buffer a function names is bound by every kernel that calls it). The
// loads are clamped into the row rather than guarded by a branch: llvmpipe reads an address
// that all lanes share once only outside conditional blocks.
fn q_vec(at: u32, e: u32) -> vec4<f32> {
    let c = vec4<u32>(4u * e) + vec4<u32>(0u, 1u, 2u, 3u);
    let x = min(vec4<u32>(at) + c, vec4<u32>(at + params.d - 1u));
    return select(vec4<f32>(0.0), vec4<f32>(q_in[x.x], q_in[x.y], q_in[x.z], q_in[x.w]), c < vec4<u32>(params.d));
}

fn do_vec(at: u32, e: u32) -> vec4<f32> {
    let c = vec4<u32>(4u * e) + vec4<u32>(0u, 1u, 2u, 3u);
    let x = min(vec4<u32>(at) + c, vec4<u32>(at + params.d - 1u));
    return select(vec4<f32>(0.0), vec4<f32>(do_in[x.x], do_in[x.y], do_in[x.z], do_in[x.w]), c < vec4<u32>(params.d));
}

fn k_vec(at: u32, e: u32) -> vec4<f32> {
    let c = vec4<u32>(4u * e) + vec4<u32>(0u, 1u, 2u, 3u);
    let x = min(vec4<u32>(at) + c, vec4<u32>(at + params.d - 1u));
    return select(vec4<f32>(0.0), vec4<f32>(k_in[x.x], k_in[x.y], k_in[x.z], k_in[x.w]), c < vec4<u32>(params.d));
}

fn v_vec(at: u32, e: u32) -> vec4<f32> {
    let c = vec4<u32>(4u * e) + vec4<u32>(0u, 1u, 2u, 3u);
    let x = min(vec4<u32>(at) + c, vec4<u32>(at + params.d - 1u));
    return select(vec4<f32>(0.0), vec4<f32>(v_in[x.x], v_in[x.y], v_in[x.z], v_in[x.w]), c < vec4<u32>(params.d));
}

fn coarse_vec(at: u32, e: u32) -> vec4<f32> {
    let c = vec4<u32>(4u * e) + vec4<u32>(0u, 1u, 2u, 3u);
    let x = min(vec4<u32>(at) + c, vec4<u32>(at + params.d - 1u));
    return select(vec4<f32>(0.0), vec4<f32>(coarse[x.x], coarse[x.y], coarse[x.z], coarse[x.w]), c < vec4<u32>(params.d));
}

@compute @workgroup_size(ROW_LANES)
fn backward_dkv_far_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let rb = row_blocks();
    var per_head = 0u;
    for (var l = 0u; l < params.levels; l++) {
        per_head += level_workgroups(l, rb);
    }
    let w = workgroup_index(wid, nwg);
    if (w >= per_head * params.bh) {
        return;
    }
    let head = w / per_head;
    // Coarsest level first: its few long workgroups start early and the short ones fill in.
    var rest = w % per_head;
    var l = params.levels - 1u;
    while (l > 0u && rest >= level_workgroups(l, rb)) {
        rest -= level_workgroups(l, rb);
        l -= 1u;
    }
    let lv = level(l);
    let first = lv.first + (rest / rb.blocks) * rb.cells;
    let cells = min(rb.cells, lv.first + lv.groups - first);
    let g = lid / rb.rows;
    let r = (rest % rb.blocks) * rb.rows + lid % rb.rows;
    let cell = first + g;
    let row = cell * params.p + r;
    let mine = g < cells && r < params.p;
    let used = mine && geom[params.rows + 2u * select(0u, row, mine)] > 0u;
    let head_base = head * params.n;
    let coarse_at = head * params.total_rows + row;

    // Rows past the block read row 0 and stay unused.
    let bias = select(0.0, bitcast<f32>(geom[params.rows + 2u * select(0u, row, mine) + 1u]), used);
    let own_at = select(0u, coarse_at, mine) * params.d;
    var k: array<vec4<f32>, HEAD_VEC>;
    var v: array<vec4<f32>, HEAD_VEC>;
    for (var x = 0u; x < HEAD_VEC; x++) {
        k[x] = select(vec4<f32>(0.0), coarse_vec(own_at, x), used);
        v[x] = select(vec4<f32>(0.0), coarse_vec(params.coarse_v_base + own_at, x), used);
    }
    var dk: array<vec4<f32>, HEAD_VEC>;
    var dv: array<vec4<f32>, HEAD_VEC>;
    let s = lv.h * lv.w;
    for (var a = 0u; a < cells; a++) {
        let seen = first + a;
        for (var e = geom[params.far_t_offsets + seen]; e < geom[params.far_t_offsets + seen + 1u]; e++) {
            let source = geom[params.far_t_entries + e];
            // A source an earlier cell of the block sees was walked with that cell.
            var walked = false;
            for (var b = 0u; b < a; b++) {
                walked = walked || sees(first + b, source);
            }
            if (walked) {
                continue;
            }
            let on = used && g >= a && (g == a || sees(cell, source));
            for (var t = 0u; t < s; t++) {
                let i = cell_token(lv, source - lv.first, t);
                if (i < 0) {
                    continue;
                }
                let qrow = head_base + u32(i);
                let st = stats[qrow];
                var q: array<vec4<f32>, HEAD_VEC>;
                var dout: array<vec4<f32>, HEAD_VEC>;
                for (var x = 0u; x < HEAD_VEC; x++) {
                    q[x] = q_vec(qrow * params.d, x) * params.scale;
                    dout[x] = do_vec(qrow * params.d, x);
                }
                var z = bias;
                var dp = 0.0;
                for (var x = 0u; x < HEAD_VEC; x++) {
                    z += dot(q[x], k[x]);
                    dp += dot(dout[x], v[x]);
                }
                let pr = select(0.0, exp(z - st.x), on);
                let ds = pr * (dp - st.y);
                for (var x = 0u; x < HEAD_VEC; x++) {
                    dk[x] += ds * q[x];
                    dv[x] += pr * dout[x];
                }
            }
        }
    }
    if (mine) {
        for (var c = 0u; c < params.d; c++) {
            dcoarse[coarse_at * params.d + c] = dk[c / 4u][c % 4u];
            dcoarse[params.coarse_v_base + coarse_at * params.d + c] = dv[c / 4u][c % 4u];
        }
    }
}

// The CPU adapters' dQ and near-field dK, dV: the same owners as backward_dq_near/_far and
// backward_dkv_near (one lane per query, or per key), but every lane reads each key (or query)
// from storage at one address instead of from a staged tile: no workgroup memory, no barrier.
// dQ takes the near and the far keys in one pass.

// dq += dS k for one key row (k at word `at` of k_in and v of v_in, or both of `coarse` when
// `far`; the choice is made once per loop, outside any branch around the loads); `keep` masks
// the pair (a causal or padded one adds exact zeros).
fn dq_key(dq: ptr<function, array<vec4<f32>, HEAD_VEC>>, q: ptr<function, array<vec4<f32>, HEAD_VEC>>,
          dout: ptr<function, array<vec4<f32>, HEAD_VEC>>, st: vec2<f32>, at: u32, far: bool,
          bias: f32, keep: bool) {
    var k: array<vec4<f32>, HEAD_VEC>;
    var z = bias;
    var dp = 0.0;
    for (var x = 0u; x < HEAD_VEC; x++) {
        var vx: vec4<f32>;
        if (far) {
            k[x] = coarse_vec(at, x);
            vx = coarse_vec(params.coarse_v_base + at, x);
        } else {
            k[x] = k_vec(at, x);
            vx = v_vec(at, x);
        }
        z += dot((*q)[x], k[x]);
        dp += dot((*dout)[x], vx);
    }
    let ds = select(0.0, exp(z - st.x), keep) * (dp - st.y);
    for (var x = 0u; x < HEAD_VEC; x++) {
        (*dq)[x] += ds * k[x];
    }
}

@compute @workgroup_size(QUERY_TILE)
fn backward_dq_lanes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (workgroup_index(wid, nwg) >= params.fine_cells * params.tiles_per_cell * params.bh) {
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
    for (var x = geom[params.near_offsets + qt.cell]; x < geom[params.near_offsets + qt.cell + 1u]; x++) {
        let f = geom[params.near_entries + x];
        for (var t = 0u; t < cell_tokens; t++) {
            let j = fine_token(f, t);
            if (j < 0) {
                continue;
            }
            let keep = token >= 0 && (params.causal == 0u || j <= token);
            dq_key(&dq, &q, &dout, st, (head_base + u32(j)) * params.d, false, 0.0, keep);
        }
    }
    // The far field: every level's interaction list of the cell's ancestors.
    let coarse_base = qt.head * params.total_rows;
    var c = qt.cell;
    for (var l = 0u; l < params.levels; l++) {
        for (var x = geom[params.far_offsets + c]; x < geom[params.far_offsets + c + 1u]; x++) {
            let b = geom[params.far_entries + x];
            for (var r = 0u; r < params.p; r++) {
                let row = b * params.p + r;
                if (geom[params.rows + 2u * row] == 0u) {
                    continue;
                }
                let bias = bitcast<f32>(geom[params.rows + 2u * row + 1u]);
                dq_key(&dq, &q, &dout, st, (coarse_base + row) * params.d, true, bias, token >= 0);
            }
        }
        c = geom[params.parent + c];
    }
    if (token >= 0) {
        let row = (head_base + u32(token)) * params.d;
        for (var c = 0u; c < params.d; c++) {
            dq_out[row + c] = dq[c / 4u][c % 4u] * params.scale;
        }
    }
}

@compute @workgroup_size(QUERY_TILE)
fn backward_dkv_near_lanes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (workgroup_index(wid, nwg) >= params.fine_cells * params.tiles_per_cell * params.bh) {
        return;
    }
    let kt = query_tile(wid, nwg); // here a tile of keys
    let token = fine_token(kt.cell, kt.first + lid);
    let head_base = kt.head * params.n;
    // A padded lane reads token 0 and keeps nothing.
    let own_at = (head_base + u32(max(token, 0))) * params.d;
    var k: array<vec4<f32>, HEAD_VEC>;
    var v: array<vec4<f32>, HEAD_VEC>;
    for (var e = 0u; e < HEAD_VEC; e++) {
        k[e] = k_vec(own_at, e);
        v[e] = v_vec(own_at, e);
    }
    var dk: array<vec4<f32>, HEAD_VEC>;
    var dv: array<vec4<f32>, HEAD_VEC>;
    let cell_tokens = params.cell_h * params.cell_w;
    for (var x = geom[params.near_t_offsets + kt.cell]; x < geom[params.near_t_offsets + kt.cell + 1u]; x++) {
        let f = geom[params.near_t_entries + x];
        for (var t = 0u; t < cell_tokens; t++) {
            let i = fine_token(f, t);
            if (i < 0) {
                continue;
            }
            let qrow = head_base + u32(i);
            let st = stats[qrow];
            var q: array<vec4<f32>, HEAD_VEC>;
            var dout: array<vec4<f32>, HEAD_VEC>;
            var z = 0.0;
            var dp = 0.0;
            for (var e = 0u; e < HEAD_VEC; e++) {
                q[e] = q_vec(qrow * params.d, e) * params.scale;
                dout[e] = do_vec(qrow * params.d, e);
                z += dot(q[e], k[e]);
                dp += dot(dout[e], v[e]);
            }
            let keep = token >= 0 && (params.causal == 0u || i >= token);
            let pr = select(0.0, exp(z - st.x), keep);
            let ds = pr * (dp - st.y);
            for (var e = 0u; e < HEAD_VEC; e++) {
                dk[e] += ds * q[e];
                dv[e] += pr * dout[e];
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
