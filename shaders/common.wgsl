// Shared by every FMA kernel: the uniform, the geometry tables and token arithmetic.
// The Rust twin prepends HEAD_TILE, KEY_TILE and QUERY_TILE as `const` declarations.
// Cell membership, near fields and interaction lists come from the tables built by
// src/geometry/tables.rs; this file only maps (cell, local index) to a token.

struct Params {
    n: u32,             // real tokens
    d: u32,             // head dimension (<= HEAD_TILE)
    bh: u32,            // heads in this dispatch (batch * heads, or a chunk of it)
    p: u32,             // coarse keys per group
    real_h: u32,        // real token grid (1D: 1 x n)
    real_w: u32,
    cell_h: u32,        // fine cell (1D: 1 x m)
    cell_w: u32,
    cells_x: u32,       // fine cells per padded grid row
    fine_cells: u32,
    levels: u32,        // coarse levels L
    causal: u32,
    scale: f32,         // score scale tau
    near_offsets: u32,  // table offsets (u32 words) in `geom`
    near_entries: u32,
    far_offsets: u32,
    far_entries: u32,
    parent: u32,
    rows: u32,
    level_table: u32,
    total_rows: u32,    // coarse rows per head (all cells of all levels, times p)
    wv_base: u32,       // offsets of the value weights and the biases in `weights`
    bk_base: u32,
    bv_base: u32,
    tiles_per_cell: u32, // query tiles per fine cell
    coarse_v_base: u32, // offset of the coarse values in `coarse`
    children: u32,      // table of each coarse row's finer rows (Mean, level by level)
    children_per_row: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> geom: array<u32>;

const LEVEL_WORDS: u32 = 12u;

// Token index at padded grid position (y, x), or -1 for padding.
fn token_at(y: u32, x: u32) -> i32 {
    if (y < params.real_h && x < params.real_w) {
        return i32(y * params.real_w + x);
    }
    return -1;
}

// Token of local index t (row-major) in fine cell f, or -1 for padding.
fn fine_token(f: u32, t: u32) -> i32 {
    let y = (f / params.cells_x) * params.cell_h + t / params.cell_w;
    let x = (f % params.cells_x) * params.cell_w + t % params.cell_w;
    return token_at(y, x);
}

// Flattened workgroup index: dispatches are split over x and y to stay under 65,535 per axis.
fn workgroup_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}
