// Tiled FMA attention: `near_field` (full-resolution keys of the neighbouring fine cells) and
// `far_field` (coarse keys of every level's interaction list, merged into the near result).
//
// One workgroup serves QUERY_TILE queries of one fine cell, one query per invocation; every
// query of a fine cell has the same near cells and the same interaction lists, so the
// workgroup stages each key tile once in workgroup memory and all its queries read it.
// near_field writes a normalised partial (O, LSE); far_field merges its own triple into it,
// so no intermediate beyond O and LSE is stored.

@group(0) @binding(2) var<storage, read> q_in: array<f32>;
@group(0) @binding(3) var<storage, read> k_in: array<f32>;
@group(0) @binding(4) var<storage, read> v_in: array<f32>;
@group(0) @binding(5) var<storage, read> coarse: array<f32>;
@group(0) @binding(6) var<storage, read_write> o_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> lse_out: array<f32>;

struct QueryTile {
    head: u32,
    cell: u32,   // fine cell
    token: i32,  // this invocation's query, -1 for padding
}

// Which head, fine cell and query a workgroup invocation serves; token -1 past the end too.
fn query_tile(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> QueryTile {
    let tiles = params.fine_cells * params.tiles_per_cell;
    let w = workgroup_index(wid, nwg);
    var qt: QueryTile;
    qt.head = w / tiles;
    let tile = w % tiles;
    qt.cell = tile / params.tiles_per_cell;
    qt.token = fine_token(qt.cell, (tile % params.tiles_per_cell) * QUERY_TILE + lid);
    return qt;
}

// The query row scaled by tau, zero past d.
fn load_query(head: u32, token: i32) -> array<vec4<f32>, HEAD_VEC> {
    var q: array<vec4<f32>, HEAD_VEC>;
    for (var c = 0u; c < HEAD_TILE; c++) {
        var x = 0.0;
        if (token >= 0 && c < params.d) {
            x = q_in[(head * params.n + u32(token)) * params.d + c] * params.scale;
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
    let qt = query_tile(wid, nwg, lid);
    var q = load_query(qt.head, qt.token);
    var t = triple_empty();
    var zero_bias: array<f32, KEY_TILE>;
    let cell_tokens = params.cell_h * params.cell_w;
    let head_base = qt.head * params.n;

    let lo = geom[params.near_offsets + qt.cell];
    let hi = geom[params.near_offsets + qt.cell + 1u];
    for (var e = lo; e < hi; e++) {
        let key_cell = geom[params.near_entries + e];
        for (var k0 = 0u; k0 < cell_tokens; k0 += KEY_TILE) {
            workgroupBarrier(); // the previous tile has been read by every query
            for (var x = lid; x < KEY_TILE * HEAD_TILE; x += QUERY_TILE) {
                let kk = x / HEAD_TILE;
                let c = x % HEAD_TILE;
                var j = -1;
                if (k0 + kk < cell_tokens) {
                    j = fine_token(key_cell, k0 + kk);
                }
                var kx = 0.0;
                var vx = 0.0;
                if (j >= 0 && c < params.d) {
                    let at = (head_base + u32(j)) * params.d + c;
                    kx = k_in[at];
                    vx = v_in[at];
                }
                tile_store(kk, c, kx, vx);
            }
            workgroupBarrier();
            var valid = 0u;
            for (var kk = 0u; kk < KEY_TILE; kk++) {
                if (k0 + kk < cell_tokens) {
                    let j = fine_token(key_cell, k0 + kk);
                    // padding keys never receive attention; causal keeps j <= i
                    if (j >= 0 && (params.causal == 0u || j <= qt.token)) {
                        valid |= 1u << kk;
                    }
                }
            }
            if (qt.token >= 0) {
                triple_add_tile(&t, &q, valid, &zero_bias);
            }
        }
    }
    if (qt.token < 0) {
        return;
    }
    let row = head_base + u32(qt.token);
    let inv = 1.0 / t.sum;
    for (var c = 0u; c < params.d; c++) {
        o_out[row * params.d + c] = t.acc[c / 4u][c % 4u] * inv;
    }
    lse_out[row] = t.max + log(t.sum);
}

// Coarse row of the x-th coarse key of a cell's interaction list starting at entry `lo`.
fn far_row(lo: u32, x: u32) -> u32 {
    return geom[params.far_entries + lo + x / params.p] * params.p + x % params.p;
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
    let qt = query_tile(wid, nwg, lid);
    var q = load_query(qt.head, qt.token);
    var t = triple_empty();
    let coarse_base = qt.head * params.total_rows;

    // Walk up the tree: the fine cell is the level-1 cell, then its parent at each level.
    var cell = qt.cell;
    for (var l = 0u; l < params.levels; l++) {
        let lo = geom[params.far_offsets + cell];
        let keys = (geom[params.far_offsets + cell + 1u] - lo) * params.p;
        for (var r0 = 0u; r0 < keys; r0 += KEY_TILE) {
            workgroupBarrier();
            for (var x = lid; x < KEY_TILE * HEAD_TILE; x += QUERY_TILE) {
                let kk = x / HEAD_TILE;
                let c = x % HEAD_TILE;
                var kx = 0.0;
                var vx = 0.0;
                if (r0 + kk < keys && c < params.d) {
                    let at = (coarse_base + far_row(lo, r0 + kk)) * params.d + c;
                    kx = coarse[at];
                    vx = coarse[params.coarse_v_base + at];
                }
                tile_store(kk, c, kx, vx);
            }
            workgroupBarrier();
            var valid = 0u;
            var bias: array<f32, KEY_TILE>;
            for (var kk = 0u; kk < KEY_TILE; kk++) {
                if (r0 + kk < keys) {
                    let row = far_row(lo, r0 + kk);
                    // a segment without real tokens is skipped; else add log(multiplicity)
                    if (geom[params.rows + 2u * row] > 0u) {
                        valid |= 1u << kk;
                        bias[kk] = bitcast<f32>(geom[params.rows + 2u * row + 1u]);
                    }
                }
            }
            if (qt.token >= 0) {
                triple_add_tile(&t, &q, valid, &bias);
            }
        }
        cell = geom[params.parent + cell];
    }
    if (qt.token < 0) {
        return;
    }
    let row = qt.head * params.n + u32(qt.token);
    var near: array<vec4<f32>, HEAD_VEC>;
    for (var c = 0u; c < params.d; c++) {
        near[c / 4u][c % 4u] = o_out[row * params.d + c];
    }
    let lse = triple_merge_normalised(&t, &near, lse_out[row]);
    for (var c = 0u; c < params.d; c++) {
        o_out[row * params.d + c] = t.acc[c / 4u][c % 4u];
    }
    lse_out[row] = lse;
}
