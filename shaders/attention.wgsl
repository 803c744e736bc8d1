// Tiled FMA attention: `near_field` (full-resolution keys of the neighbouring fine cells) and
// `far_field` (coarse keys of every level's interaction list, merged into the near result);
// and `dense_attention`, exact attention with the same tiles, the baseline FMA is measured by.
//
// One workgroup serves QUERY_TILE queries of one fine cell, one query per invocation; every
// query of a fine cell has the same near cells and the same interaction lists, so the
// workgroup stages each key tile once in workgroup memory and all its queries read it.
// near_field writes a normalised partial (O, LSE); far_field merges its own triple into it,
// so no intermediate beyond O and LSE is stored.

@group(0) @binding(B_COARSE) var<storage, read> coarse: array<STORE>;
@group(0) @binding(B_O) var<storage, read_write> o_out: array<STORE>;
@group(0) @binding(B_LSE) var<storage, read_write> lse_out: array<f32>;


// The query row scaled by tau, zero past d.
fn load_query(head: u32, token: i32) -> array<vec4<f32>, HEAD_VEC> {
    var q: array<vec4<f32>, HEAD_VEC>;
    for (var c = 0u; c < HEAD_TILE; c++) {
        var x = 0.0;
        if (token >= 0 && c < params.d) {
            x = f32(q_in[(head * params.n + u32(token)) * params.d + c]) * params.scale;
        }
        q[c / 4u][c % 4u] = x;
    }
    return q;
}

@compute @workgroup_size(QUERY_TILE)
fn near_field(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (workgroup_index(wid, nwg) >= params.fine_cells * params.tiles_per_cell * params.bh) {
        return;
    }
    let qt = query_tile(wid, nwg);
    let token = fine_token(qt.cell, qt.first + lid);
    var q = load_query(qt.head, token);
    var t = triple_empty();
    let cell_tokens = params.cell_h * params.cell_w;
    let head_base = qt.head * params.n;

    // The near keys, flattened over the near cells so that tiles are full.
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
        if (token >= 0) {
            triple_add_tile(&t, &q, token_mask(token));
        }
    }
    if (token >= 0) {
        store_normalised(head_base + u32(token), t);
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

// The staged token keys query `token` may see: padding never; causal keeps j <= token.
fn token_mask(token: i32) -> u32 {
    var valid = 0u;
    for (var kk = 0u; kk < KEY_TILE; kk++) {
        let j = tile_tag[kk];
        if (j >= 0 && (params.causal == 0u || j <= token)) {
            valid |= 1u << kk;
        }
    }
    return valid;
}

// Writes the normalised output and log-sum-exp of one query row.
fn store_normalised(row: u32, t: Triple) {
    let inv = 1.0 / t.sum;
    for (var c = 0u; c < params.d; c++) {
        o_out[row * params.d + c] = STORE(t.acc[c / 4u][c % 4u] * inv);
    }
    lse_out[row] = t.max + log(t.sum);
}

// Exact softmax attention over all keys: the benchmarks' baseline. It runs the same tiles,
// staging and triple as the FMA kernels, so a comparison measures the algorithm, not the
// code. One workgroup per QUERY_TILE consecutive queries of one head; causal stops at the
// tile's last query. Only n, d, bh, causal and scale of `params` are read.
@compute @workgroup_size(QUERY_TILE)
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
    var token = -1;
    if (first + lid < params.n) {
        token = i32(first + lid);
    }
    var q = load_query(head, token);
    var t = triple_empty();
    let head_base = head * params.n;
    var keys = params.n;
    if (params.causal != 0u) {
        keys = min(params.n, first + QUERY_TILE);
    }
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
        if (token >= 0) {
            triple_add_tile(&t, &q, token_mask(token));
        }
    }
    if (token >= 0) {
        store_normalised(head_base + u32(token), t);
    }
}

@compute @workgroup_size(QUERY_TILE)
fn far_field(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (workgroup_index(wid, nwg) >= params.fine_cells * params.tiles_per_cell * params.bh) {
        return;
    }
    let qt = query_tile(wid, nwg);
    let token = fine_token(qt.cell, qt.first + lid);
    var q = load_query(qt.head, token);
    var t = triple_empty();
    let coarse_base = qt.head * params.total_rows;

    let keys = far_chain(qt.cell, lid);
    var level = 0u;
    for (var k0 = 0u; k0 < keys; k0 += KEY_TILE) {
        workgroupBarrier();
        // The first KEY_TILE invocations find the coarse row of one key each...
        for (var kk = lid; kk < KEY_TILE; kk += QUERY_TILE) {
            var key = FarKey(-1, 0.0);
            if (k0 + kk < keys) {
                key = far_key(k0 + kk, &level);
            }
            tile_tag[kk] = key.row;
            tile_bias[kk] = key.bias;
        }
        workgroupBarrier();
        // ...then all of them stage the rows.
        for (var kk = lid / ROW_THREADS; kk < KEY_TILE; kk += ROWS_PER_PASS) {
            let row = tile_tag[kk];
            for (var c = lid % ROW_THREADS; c < HEAD_TILE; c += ROW_THREADS) {
                var kx = 0.0;
                var vx = 0.0;
                if (row >= 0 && c < params.d) {
                    let at = (coarse_base + u32(row)) * params.d + c;
                    kx = f32(coarse[at]);
                    vx = f32(coarse[params.coarse_v_base + at]);
                }
                tile_store(kk, c, kx, vx);
            }
        }
        workgroupBarrier();
        var valid = 0u;
        for (var kk = 0u; kk < KEY_TILE; kk++) {
            if (tile_tag[kk] >= 0) {
                valid |= 1u << kk;
            }
        }
        if (token >= 0) {
            triple_add_tile(&t, &q, valid);
        }
    }
    if (token < 0) {
        return;
    }
    let row = qt.head * params.n + u32(token);
    var near: array<vec4<f32>, HEAD_VEC>;
    for (var c = 0u; c < params.d; c++) {
        near[c / 4u][c % 4u] = f32(o_out[row * params.d + c]);
    }
    let lse = triple_merge_normalised(&t, &near, lse_out[row]);
    for (var c = 0u; c < params.d; c++) {
        o_out[row * params.d + c] = STORE(t.acc[c / 4u][c % 4u]);
    }
    lse_out[row] = lse;
}
