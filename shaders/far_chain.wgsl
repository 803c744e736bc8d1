// The far field's coarse keys, walked by far_field and backward_dq_far: every level's
// interaction list of a fine cell's ancestors, flattened into one list of keys.

// MAX_LEVELS (from the header) bounds the chain: n' = m * 2^(MAX_LEVELS + 1) tokens, checked
// by the plan.
// Level l's interaction list starts at entry chain_lo[l] of the far table and at key
// chain_start[l] of the flattened list.
var<workgroup> chain_lo: array<u32, MAX_LEVELS>;
var<workgroup> chain_start: array<u32, MAX_LEVELS>;
var<workgroup> chain_keys: u32;

// Walks up the tree once per workgroup (the fine cell is the level-1 cell, then its parent at
// each level) and returns the number of flattened keys, uniform across the workgroup.
fn far_chain(cell: u32, lid: u32) -> u32 {
    if (lid == 0u) {
        var c = cell;
        var keys = 0u;
        for (var l = 0u; l < params.levels; l++) {
            let lo = geom[params.far_offsets + c];
            chain_lo[l] = lo;
            chain_start[l] = keys;
            keys += (geom[params.far_offsets + c + 1u] - lo) * params.p;
            c = geom[params.parent + c];
        }
        chain_keys = keys;
    }
    return workgroupUniformLoad(&chain_keys);
}

// A flattened key: its coarse row (-1 for a segment without real tokens, which is skipped)
// and its score offset, log(multiplicity).
struct FarKey {
    row: i32,
    bias: f32,
}

// Key x < the chain's length. `level` is the caller's cursor: an invocation's keys only move
// forward, so its level does too.
fn far_key(x: u32, level: ptr<function, u32>) -> FarKey {
    while (*level + 1u < params.levels && x >= chain_start[*level + 1u]) {
        *level += 1u;
    }
    let y = x - chain_start[*level];
    let row = geom[params.far_entries + chain_lo[*level] + y / params.p] * params.p + y % params.p;
    if (row_count(row) == 0u) {
        return FarKey(-1, 0.0);
    }
    return FarKey(i32(row), row_bias(row));
}

// Stages keys k0 .. k0 + STAGE_TILE of the chain in the including family's tiles, one tile of
// the forward's far field or of the backward's dQ: the first STAGE_TILE lanes find one key's
// coarse row and offset each (`tile_set_key`), then ROW_THREADS lanes per row copy its
// coarse key and value (`tile_store`; zeros past d and for no key). Barriers before and after,
// so the caller reads the tile at once. The family declares STAGE_TILE, STAGE_LANES,
// ROW_THREADS, ROWS_PER_PASS, `tile_tag`, `coarse`, `tile_set_key` and `tile_store`.
fn stage_far_tile(k0: u32, keys: u32, coarse_base: u32, level: ptr<function, u32>, lid: u32) {
    workgroupBarrier();
    for (var kk = lid; kk < STAGE_TILE; kk += STAGE_LANES) {
        var key = FarKey(-1, 0.0);
        if (k0 + kk < keys) {
            key = far_key(k0 + kk, level);
        }
        tile_set_key(kk, key);
    }
    workgroupBarrier();
    for (var kk = lid / ROW_THREADS; kk < STAGE_TILE; kk += ROWS_PER_PASS) {
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
}
