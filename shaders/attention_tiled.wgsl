// ForwardKernels::Tiled (GPUs): a workgroup stages each tile of keys and values once in
// workgroup memory, loaded by all its invocations together (coalesced), and every query reads
// it from there.

@group(0) @binding(B_COARSE) var<storage, read> coarse: array<STORE>;

// Key and value tiles staged in workgroup memory, KEY_TILE rows of
// HEAD_VEC vec4s each, with per row a tag (near: the key's token, far: its coarse row; -1 for
// no key) and a score offset (far: log-multiplicity). Tags are found once per key, not once
// per query. KEY_TILE is a multiple of 4.
var<workgroup> k_tile: array<vec4<f32>, TILE_VECS>;
var<workgroup> v_tile: array<vec4<f32>, TILE_VECS>;
var<workgroup> tile_tag: array<i32, KEY_TILE>;
var<workgroup> tile_bias: array<f32, KEY_TILE>;

// Invocations that load one key row together, and key rows loaded per pass.
const ROW_THREADS: u32 = min(QUERY_LANES, HEAD_TILE);
const ROWS_PER_PASS: u32 = QUERY_LANES / ROW_THREADS;
// The far keys' staging (far_chain.wgsl, `stage_far_tile`): its tile and lanes.
const STAGE_TILE: u32 = KEY_TILE;
const STAGE_LANES: u32 = QUERY_LANES;

// Writes element c of row kk of both tiles (zero past d or for a missing row).
fn tile_store(kk: u32, c: u32, kx: f32, vx: f32) {
    let at = kk * HEAD_VEC + c / 4u;
    k_tile[at][c % 4u] = kx;
    v_tile[at][c % 4u] = vx;
}

// Row kk's tag and score offset: a far key's coarse row and log-multiplicity.
fn tile_set_key(kk: u32, key: FarKey) {
    tile_tag[kk] = key.row;
    tile_bias[kk] = key.bias;
}

// Adds staged rows kk..kk+3 to every triple: score q . k + tile_bias (q already scaled by
// tau), for the rows the query may see (tag >= 0; under causal masking, for near and dense
// keys, tag <= its token). Each q element read serves four keys, each accumulator element
// four values.
fn triple_add_staged(t: ptr<function, Triples>, q: ptr<function, Rows>, kk: u32, tokens: Tokens, causal: bool) {
    let row = kk * HEAD_VEC;
    let tag = vec4<i32>(tile_tag[kk], tile_tag[kk + 1u], tile_tag[kk + 2u], tile_tag[kk + 3u]);
    let bias = vec4<f32>(tile_bias[kk], tile_bias[kk + 1u], tile_bias[kk + 2u], tile_bias[kk + 3u]);
    for (var r = 0u; r < QUERY_ROWS; r++) {
        var z = bias;
        for (var c = 0u; c < HEAD_VEC; c++) {
            let x = (*q)[r][c];
            z += vec4<f32>(dot(x, k_tile[row + c]), dot(x, k_tile[row + HEAD_VEC + c]),
                dot(x, k_tile[row + 2u * HEAD_VEC + c]), dot(x, k_tile[row + 3u * HEAD_VEC + c]));
        }
        let valid = (tag >= vec4<i32>(0)) & ((tag <= vec4<i32>(tokens[r])) | vec4<bool>(!causal));
        let w = triple_weights(t, r, z, valid);
        for (var c = 0u; c < HEAD_VEC; c++) {
            (*t)[r].acc[c] += w.x * v_tile[row + c] + w.y * v_tile[row + HEAD_VEC + c]
                + w.z * v_tile[row + 2u * HEAD_VEC + c] + w.w * v_tile[row + 3u * HEAD_VEC + c];
        }
    }
}

// The near keys through workgroup tiles, flattened over the near cells so that tiles are full.
fn near_keys(t: ptr<function, Triples>, q: ptr<function, Rows>, qt: QueryTile, tokens: Tokens, lid: u32) {
    let cell_tokens = params.cell_h * params.cell_w;
    let head_base = qt.head * params.n;
    let lo = geom[params.near_offsets + qt.cell];
    let keys = (geom[params.near_offsets + qt.cell + 1u] - lo) * cell_tokens;
    for (var k0 = 0u; k0 < keys; k0 += KEY_TILE) {
        workgroupBarrier(); // every query has read the previous tile
        for (var kk = lid / ROW_THREADS; kk < KEY_TILE; kk += ROWS_PER_PASS) {
            let x = k0 + kk;
            var j = -1;
            if (x < keys) {
                j = fine_token(geom[params.near_entries + lo + x / cell_tokens], x % cell_tokens);
            }
            stage_token(kk, j, head_base, lid);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KEY_TILE && k0 + kk < keys; kk += 4u) {
            triple_add_staged(t, q, kk, tokens, params.causal != 0u);
        }
    }
}

// Stages token j's key and value (zeros for j < 0) as row kk of the tiles; the ROW_THREADS
// invocations that share a row split its channels.
fn stage_token(kk: u32, j: i32, head_base: u32, lid: u32) {
    if (lid % ROW_THREADS == 0u) {
        tile_tag[kk] = j;
        tile_bias[kk] = 0.0;
    }
    for (var c = lid % ROW_THREADS; c < HEAD_TILE; c += ROW_THREADS) {
        var kx = 0.0;
        var vx = 0.0;
        if (j >= 0 && c < params.d) {
            let at = (head_base + u32(j)) * params.d + c;
            kx = f32(k_in[at]);
            vx = f32(v_in[at]);
        }
        tile_store(kk, c, kx, vx);
    }
}

// The keys [0, keys) of one head through workgroup tiles.
fn dense_keys(t: ptr<function, Triples>, q: ptr<function, Rows>, head_base: u32, keys: u32, tokens: Tokens, lid: u32) {
    for (var k0 = 0u; k0 < keys; k0 += KEY_TILE) {
        workgroupBarrier(); // every query has read the previous tile
        for (var kk = lid / ROW_THREADS; kk < KEY_TILE; kk += ROWS_PER_PASS) {
            var j = -1;
            if (k0 + kk < keys) {
                j = i32(k0 + kk);
            }
            stage_token(kk, j, head_base, lid);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KEY_TILE && k0 + kk < keys; kk += 4u) {
            triple_add_staged(t, q, kk, tokens, params.causal != 0u);
        }
    }
}

// The coarse keys of the far chain through workgroup tiles.
fn far_keys(t: ptr<function, Triples>, q: ptr<function, Rows>, qt: QueryTile, lid: u32) {
    let coarse_base = qt.head * params.total_rows;
    let keys = far_chain(qt.cell, lid);
    var level = 0u;
    for (var k0 = 0u; k0 < keys; k0 += KEY_TILE) {
        stage_far_tile(k0, keys, coarse_base, &level, lid);
        for (var kk = 0u; kk < KEY_TILE && k0 + kk < keys; kk += 4u) {
            triple_add_staged(t, q, kk, Tokens(), false);
        }
    }
}
