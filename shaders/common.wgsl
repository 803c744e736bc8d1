// Shared by every FMA kernel: the uniform, the geometry tables and token arithmetic.
// The header (`source` in src/gpu/shaders/mod.rs) prepends the uniforms' structs and, as
// `const` declarations, the tiles, workgroup sizes, table strides and binding indices (B_*).
// Cell membership, near fields and interaction lists come from the tables built by
// src/geometry/tables.rs; this file only maps (cell, local index) to a token.

// `Params` (the shape, the hierarchy, the tables' offsets) is declared in the header, from
// its one definition in src/gpu/shaders/structs.rs.

@group(0) @binding(B_PARAMS) var<uniform> params: Params;
@group(0) @binding(B_GEOM) var<storage, read> geom: array<u32>;
// Q, K and V of [heads, n, d]; a kernel binds only those it reads. STORE (from the header) is
// f32, or f16 in the forward's f16 builds: reads convert with f32(...), writes with STORE(...).
@group(0) @binding(B_Q) var<storage, read> q_in: array<STORE>;
@group(0) @binding(B_K) var<storage, read> k_in: array<STORE>;
@group(0) @binding(B_V) var<storage, read> v_in: array<STORE>;

// Offsets of four consecutive elements (kernels that take rows or channels four at a time).
const LANES4: vec4<u32> = vec4<u32>(0u, 1u, 2u, 3u);

// The max of an empty softmax triple; exp(NEG_BIG - x) underflows to 0.
const NEG_BIG: f32 = -3.0e38;

// Which of channels 4c..4c+3 exist (< d).
fn channels(c: u32) -> vec4<bool> {
    return vec4<u32>(4u * c) + LANES4 < vec4<u32>(params.d);
}

// Word indices of channels 4c..4c+3 of the row starting at word `at`, clamped into the row:
// a kernel reads them from its own buffer (one small helper per buffer, since a buffer a
// function names is bound by every kernel that calls it) and zeroes those past d with
// `channels`. Clamped rather than guarded by a branch: llvmpipe reads an address that all
// lanes share once only outside conditional blocks.
fn row_words(at: u32, c: u32) -> vec4<u32> {
    return min(vec4<u32>(at + 4u * c) + LANES4, vec4<u32>(at + params.d - 1u));
}

// A coarse row's real tokens (0: all it would average is padding, and it is never seen) and
// its score offset (log multiplicity, or 0), from the geometry's row table.
fn row_count(row: u32) -> u32 {
    return geom[params.rows + 2u * row];
}

fn row_bias(row: u32) -> f32 {
    return bitcast<f32>(geom[params.rows + 2u * row + 1u]);
}

// Coarse row `row` of head `head` in the per-head arrays of coarse rows.
fn head_row(head: u32, row: u32) -> u32 {
    return head * params.total_rows + row;
}

// `RowRange`, the coarse rows one dispatch covers and their level, is declared in the header
// (src/gpu/shaders/structs.rs).

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

// Which head and fine cell a workgroup serves (uniform) and the first query of its tile.
struct QueryTile {
    head: u32,
    cell: u32,
    first: u32, // local index of the tile's first query within the cell
}

fn query_tile(wid: vec3<u32>, nwg: vec3<u32>) -> QueryTile {
    let tiles = params.fine_cells * params.tiles_per_cell;
    let w = workgroup_index(wid, nwg);
    let tile = w % tiles;
    return QueryTile(w / tiles, tile / params.tiles_per_cell, (tile % params.tiles_per_cell) * QUERY_TILE);
}

// Whether a workgroup lies past the last query tile (the surplus of a 2D grid): every
// query-tile kernel returns at once then, before `query_tile`.
fn past_query_tiles(wid: vec3<u32>, nwg: vec3<u32>) -> bool {
    return workgroup_index(wid, nwg) >= params.fine_cells * params.tiles_per_cell * params.bh;
}

// One coarse level's record in the level table (see src/geometry/tables.rs).
struct Level {
    h: u32,          // group (cell) size in grid rows and columns
    w: u32,
    groups_x: u32,   // groups per grid row
    seg_h: u32,      // segment (sub-block) size
    seg_w: u32,
    segs_x: u32,
    first: u32,      // global id of the level's first cell
    groups: u32,
    w_off: u32,      // the level's weights and biases in `weights`
    b_off: u32,
}

fn level(l: u32) -> Level {
    let at = params.level_table + l * LEVEL_WORDS;
    return Level(geom[at], geom[at + 1u], geom[at + 2u], geom[at + 3u], geom[at + 4u],
        geom[at + 5u], geom[at + 6u], geom[at + 7u], geom[at + 8u], geom[at + 9u]);
}

// The level (0-based) holding global cell `cell`.
fn level_index_of(cell: u32) -> u32 {
    var found = 0u;
    for (var l = 0u; l < params.levels; l++) {
        let lv = level(l);
        if (cell >= lv.first && cell < lv.first + lv.groups) {
            found = l;
        }
    }
    return found;
}

// Token at index t (row-major) of cell `local` of a level, -1 for padding.
fn cell_token(lv: Level, local: u32, t: u32) -> i32 {
    return token_at((local / lv.groups_x) * lv.h + t / lv.w, (local % lv.groups_x) * lv.w + t % lv.w);
}

// The largest token any query of the tile can have (an upper bound): causal masking hides
// every key past it from the whole workgroup.
fn tile_last_token(qt: QueryTile) -> i32 {
    let li = qt.first + QUERY_TILE - 1u;
    let y = (qt.cell / params.cells_x) * params.cell_h + li / params.cell_w;
    let x = (qt.cell % params.cells_x) * params.cell_w + params.cell_w - 1u;
    return i32(min(y, params.real_h - 1u) * params.real_w + min(x, params.real_w - 1u));
}

// The real tokens of fine cell `cell`: grid rows y0 .. y_end, columns x0 .. x_end (padding cut).
struct CellRect {
    y0: u32,
    x0: u32,
    y_end: u32,
    x_end: u32,
}

fn cell_rect(cell: u32) -> CellRect {
    let y0 = (cell / params.cells_x) * params.cell_h;
    let x0 = (cell % params.cells_x) * params.cell_w;
    return CellRect(y0, x0, min(y0 + params.cell_h, params.real_h), min(x0 + params.cell_w, params.real_w));
}

// Four sources at a time, whatever shape they come from: walking a cell row by row, or a far
// entry's p rows, four at a time would leave lanes idle where a cell is narrower than four
// (2 x 2 cells: half of them) or p < 4 (p = 1: three of four). Positions past the end repeat
// the first, with `live` false.
struct Quad {
    at: vec4<u32>,
    live: vec4<bool>,
}

fn quad_positions(i: u32, count: u32) -> Quad {
    let flat = vec4<u32>(i) + LANES4;
    let live = flat < vec4<u32>(count);
    return Quad(select(vec4<u32>(i), flat, live), live);
}

// Tokens in cell `r`: none for a cell wholly in the padding, whose ends come before its start.
fn rect_area(r: CellRect) -> u32 {
    return (max(r.y_end, r.y0) - r.y0) * (max(r.x_end, r.x0) - r.x0);
}

// The tokens at positions i .. i + 3 of the cell `r` in row-major order (so ascending).
fn rect_quad(r: CellRect, i: u32) -> Quad {
    let k = quad_positions(i, rect_area(r));
    let first = r.y0 * params.real_w + r.x0;
    // One row (every cell of a sequence): no division, which a CPU adapter pays per lane.
    if (r.y_end - r.y0 == 1u) {
        return Quad(vec4<u32>(first) + k.at, k.live);
    }
    let w = r.x_end - r.x0;
    return Quad(vec4<u32>(first) + (k.at / w) * params.real_w + k.at % w, k.live);
}

// The coarse rows at positions i .. i + 3 of the far list entries lo .. hi, p rows each, with
// their score offsets; `live` is false past the list and for rows standing for no token.
struct FarQuad {
    rows: vec4<u32>,
    live: vec4<bool>,
    bias: vec4<f32>,
}

fn far_quad(lo: u32, hi: u32, i: u32) -> FarQuad {
    let k = quad_positions(i, (hi - lo) * params.p);
    let e = vec4<u32>(params.far_entries + lo) + k.at / params.p;
    let cells = vec4<u32>(geom[e.x], geom[e.y], geom[e.z], geom[e.w]);
    let r = cells * params.p + k.at % params.p;
    let count = vec4<u32>(row_count(r.x), row_count(r.y), row_count(r.z), row_count(r.w));
    let bias = vec4<f32>(row_bias(r.x), row_bias(r.y), row_bias(r.z), row_bias(r.w));
    return FarQuad(r, k.live & (count != vec4<u32>(0u)), bias);
}

// Global coarse row (cell * p + r) of the segment of level `lv` that holds padded grid
// position (y, x): the twin of Geometry::segment_at.
fn segment_row(lv: Level, y: u32, x: u32) -> u32 {
    let cell = lv.first + (y / lv.h) * lv.groups_x + x / lv.w;
    return cell * params.p + ((y % lv.h) / lv.seg_h) * lv.segs_x + (x % lv.w) / lv.seg_w;
}
