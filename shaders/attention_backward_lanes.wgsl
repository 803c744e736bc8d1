// The CPU adapters' backward kernels (`Kernels::Lanes`; built with the Direct forward, so d is
// a multiple of 4). A CPU runs a workgroup as SIMD loops over its lanes: a load whose address
// differs per lane costs a load per lane, a load at an address all lanes share is one load and
// a broadcast, and a barrier switches every lane's context. So each lane owns its rows (queries,
// keys or coarse rows) in registers, and all lanes read the other side together, straight from
// storage and a vec4 at a time: no workgroup memory, no barrier. The owners are those of the
// Tiled kernels:
// - `backward_dq_lanes`: LANE_ROWS queries per lane, near and far keys in one pass, four keys
//   at a time, so each element read serves 4 x LANE_ROWS pairs per lane;
// - `backward_dkv_near_lanes`: LANE_ROWS keys per lane, four queries at a time;
// - `backward_dkv_far_rows`: one coarse row per lane, of up to FAR_SIBLINGS neighbouring
//   cells of a level.

@group(0) @binding(B_Q4) var<storage, read> q4: array<vec4<f32>>;
@group(0) @binding(B_D_O4) var<storage, read> do4: array<vec4<f32>>;
@group(0) @binding(B_K4) var<storage, read> k4: array<vec4<f32>>;
@group(0) @binding(B_V4) var<storage, read> v4: array<vec4<f32>>;
@group(0) @binding(B_COARSE4) var<storage, read> coarse4: array<vec4<f32>>;

alias Row = array<vec4<f32>, HEAD_VEC>;
alias LaneRows = array<Row, LANE_ROWS>;
alias LaneMask = array<vec4<bool>, LANE_ROWS>;

// vec4s per row: a row starts at (its index) x row_vecs() of a vec4 view. The loops over a row
// stop there (channels past d are never read and stay zero in the private rows): a uniform
// bound that llvmpipe keeps as a loop, where HEAD_VEC would be unrolled into code that took
// about twice as long to compile and ran no faster (lavapipe, within its noise).
fn row_vecs() -> u32 {
    return params.d / 4u;
}

// A query row (at vec4 `at`, or zeros for padding, `live` false) times tau, and its dO row.
fn own_q(at: u32, live: bool) -> Row {
    var r: Row;
    for (var e = 0u; e < row_vecs(); e++) {
        r[e] = select(vec4<f32>(0.0), q4[at + e] * params.scale, live);
    }
    return r;
}

fn own_do(at: u32, live: bool) -> Row {
    var r: Row;
    for (var e = 0u; e < row_vecs(); e++) {
        r[e] = select(vec4<f32>(0.0), do4[at + e], live);
    }
    return r;
}

// Vec4 e of a key (or its value, `value`) that starts at vec4 `at`: a token's from K / V, or a
// coarse row's (`far`). One helper for both, so the choice is a uniform branch per call.
fn key_vec(at: u32, e: u32, far: bool, value: bool) -> vec4<f32> {
    if (far) {
        return coarse4[select(at, params.coarse_v_base / 4u + at, value) + e];
    }
    if (value) {
        return v4[at + e];
    }
    return k4[at + e];
}

// The tokens of lane `lid`'s rows in a tile (row lid + r x LANE_COUNT), -1 for padding.
fn lane_tokens(qt: QueryTile, lid: u32) -> array<i32, LANE_ROWS> {
    var tokens: array<i32, LANE_ROWS>;
    for (var r = 0u; r < LANE_ROWS; r++) {
        tokens[r] = fine_token(qt.cell, qt.first + lid + r * LANE_COUNT);
    }
    return tokens;
}

// Which of four other-side tokens `j` (those `in_range`) each of the lane's rows pairs with:
// all, or under causal masking those on the allowed side of the row's token (`rows_are_queries`:
// keys j <= token; else queries j >= token). Padded rows pair with none.
fn lane_mask(in_range: vec4<bool>, j: vec4<u32>, tokens: array<i32, LANE_ROWS>, rows_are_queries: bool) -> LaneMask {
    var keep: LaneMask;
    let jj = vec4<i32>(j);
    for (var r = 0u; r < LANE_ROWS; r++) {
        let t = vec4<i32>(tokens[r]);
        let side = select(jj >= t, jj <= t, rows_are_queries) | vec4<bool>(params.causal == 0u);
        keep[r] = in_range & side & vec4<bool>(tokens[r] >= 0);
    }
    return keep;
}

// dq += dS k for four keys (rows at vec4s `at`, score offsets `bias`) and every row of the
// lane; pairs outside `keep` add exact zeros.
fn dq_keys(dq: ptr<function, LaneRows>, q: ptr<function, LaneRows>, dout: ptr<function, LaneRows>,
           st: ptr<function, array<vec2<f32>, LANE_ROWS>>, at: vec4<u32>, far: bool,
           bias: vec4<f32>, keep: LaneMask) {
    var z: array<vec4<f32>, LANE_ROWS>;
    var dp: array<vec4<f32>, LANE_ROWS>;
    for (var e = 0u; e < row_vecs(); e++) {
        let k0 = key_vec(at.x, e, far, false);
        let k1 = key_vec(at.y, e, far, false);
        let k2 = key_vec(at.z, e, far, false);
        let k3 = key_vec(at.w, e, far, false);
        let v0 = key_vec(at.x, e, far, true);
        let v1 = key_vec(at.y, e, far, true);
        let v2 = key_vec(at.z, e, far, true);
        let v3 = key_vec(at.w, e, far, true);
        for (var r = 0u; r < LANE_ROWS; r++) {
            let x = (*q)[r][e];
            let y = (*dout)[r][e];
            z[r] += vec4<f32>(dot(x, k0), dot(x, k1), dot(x, k2), dot(x, k3));
            dp[r] += vec4<f32>(dot(y, v0), dot(y, v1), dot(y, v2), dot(y, v3));
        }
    }
    var ds: array<vec4<f32>, LANE_ROWS>;
    for (var r = 0u; r < LANE_ROWS; r++) {
        let pr = select(vec4<f32>(0.0), exp(z[r] + bias - (*st)[r].x), keep[r]);
        ds[r] = pr * (dp[r] - (*st)[r].y);
    }
    for (var e = 0u; e < row_vecs(); e++) {
        let k0 = key_vec(at.x, e, far, false);
        let k1 = key_vec(at.y, e, far, false);
        let k2 = key_vec(at.z, e, far, false);
        let k3 = key_vec(at.w, e, far, false);
        for (var r = 0u; r < LANE_ROWS; r++) {
            (*dq)[r][e] += ds[r].x * k0 + ds[r].y * k1 + ds[r].z * k2 + ds[r].w * k3;
        }
    }
}

@compute @workgroup_size(LANE_COUNT)
fn backward_dq_lanes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (past_query_tiles(wid, nwg)) {
        return;
    }
    let qt = query_tile(wid, nwg);
    let tokens = lane_tokens(qt, lid);
    let head_base = qt.head * params.n;
    let dv = row_vecs();
    var q: LaneRows;
    var dout: LaneRows;
    var st: array<vec2<f32>, LANE_ROWS>;
    for (var r = 0u; r < LANE_ROWS; r++) {
        let at = (head_base + u32(max(tokens[r], 0))) * dv;
        q[r] = own_q(at, tokens[r] >= 0);
        dout[r] = own_do(at, tokens[r] >= 0);
        st[r] = load_stats(head_base, tokens[r]);
    }
    // Under causal masking no key after the tile's last token is needed.
    let last = tile_last_token(qt);
    var dq: LaneRows;
    // The near keys, cell by cell, four tokens at a time (rect_quad).
    for (var e = geom[params.near_offsets + qt.cell]; e < geom[params.near_offsets + qt.cell + 1u]; e++) {
        let rect = cell_rect(geom[params.near_entries + e]);
        let area = rect_area(rect);
        for (var i = 0u; i < area; i += 4u) {
            let j = rect_quad(rect, i);
            if (params.causal != 0u && i32(j.at.x) > last) {
                break;
            }
            let at = (vec4<u32>(head_base) + j.at) * dv;
            dq_keys(&dq, &q, &dout, &st, at, false, vec4<f32>(0.0), lane_mask(j.live, j.at, tokens, true));
        }
    }
    // The far field: every level's interaction list of the cell's ancestors, four rows at a time
    // (none in the O(n) variant: its coarse queries take the far field's share, linear_backward).
    let coarse_base = qt.head * params.total_rows;
    var c = qt.cell;
    let far_levels = select(params.levels, 0u, params.queries != 0u);
    for (var l = 0u; l < far_levels; l++) {
        let lo = geom[params.far_offsets + c];
        let hi = geom[params.far_offsets + c + 1u];
        for (var i = 0u; i < (hi - lo) * params.p; i += 4u) {
            let f = far_quad(lo, hi, i);
            var keep: LaneMask;
            for (var x = 0u; x < LANE_ROWS; x++) {
                keep[x] = f.live & vec4<bool>(tokens[x] >= 0);
            }
            let at = (vec4<u32>(coarse_base) + f.rows) * dv;
            dq_keys(&dq, &q, &dout, &st, at, true, select(vec4<f32>(0.0), f.bias, f.live), keep);
        }
        c = geom[params.parent + c];
    }
    for (var r = 0u; r < LANE_ROWS; r++) {
        if (tokens[r] >= 0) {
            let row = (head_base + u32(tokens[r])) * params.d;
            for (var x = 0u; x < params.d; x++) {
                dq_out[row + x] = dq[r][x / 4u][x % 4u] * params.scale;
            }
        }
    }
}

// dk += dS q, dv += P dO (q unscaled: tau is applied once to the sums) for four queries (rows
// at vec4s `at`, their LSE and D) and every key row of the lane.
fn dkv_queries(dk: ptr<function, LaneRows>, dv: ptr<function, LaneRows>, k: ptr<function, LaneRows>,
               v: ptr<function, LaneRows>, at: vec4<u32>, lse: vec4<f32>, delta: vec4<f32>, keep: LaneMask) {
    var z: array<vec4<f32>, LANE_ROWS>;
    var dp: array<vec4<f32>, LANE_ROWS>;
    for (var e = 0u; e < row_vecs(); e++) {
        let q0 = q4[at.x + e];
        let q1 = q4[at.y + e];
        let q2 = q4[at.z + e];
        let q3 = q4[at.w + e];
        let d0 = do4[at.x + e];
        let d1 = do4[at.y + e];
        let d2 = do4[at.z + e];
        let d3 = do4[at.w + e];
        for (var r = 0u; r < LANE_ROWS; r++) {
            let x = (*k)[r][e];
            let y = (*v)[r][e];
            z[r] += vec4<f32>(dot(q0, x), dot(q1, x), dot(q2, x), dot(q3, x));
            dp[r] += vec4<f32>(dot(d0, y), dot(d1, y), dot(d2, y), dot(d3, y));
        }
    }
    var pr: array<vec4<f32>, LANE_ROWS>;
    var ds: array<vec4<f32>, LANE_ROWS>;
    for (var r = 0u; r < LANE_ROWS; r++) {
        pr[r] = select(vec4<f32>(0.0), exp(z[r] * params.scale - lse), keep[r]);
        ds[r] = pr[r] * (dp[r] - delta);
    }
    for (var e = 0u; e < row_vecs(); e++) {
        let q0 = q4[at.x + e];
        let q1 = q4[at.y + e];
        let q2 = q4[at.z + e];
        let q3 = q4[at.w + e];
        let d0 = do4[at.x + e];
        let d1 = do4[at.y + e];
        let d2 = do4[at.z + e];
        let d3 = do4[at.w + e];
        for (var r = 0u; r < LANE_ROWS; r++) {
            (*dk)[r][e] += ds[r].x * q0 + ds[r].y * q1 + ds[r].z * q2 + ds[r].w * q3;
            (*dv)[r][e] += pr[r].x * d0 + pr[r].y * d1 + pr[r].z * d2 + pr[r].w * d3;
        }
    }
}

@compute @workgroup_size(LANE_COUNT)
fn backward_dkv_near_lanes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (past_query_tiles(wid, nwg)) {
        return;
    }
    let kt = query_tile(wid, nwg); // here a tile of keys
    let tokens = lane_tokens(kt, lid);
    let head_base = kt.head * params.n;
    let dv = row_vecs();
    var k: LaneRows;
    var v: LaneRows;
    for (var r = 0u; r < LANE_ROWS; r++) {
        // A padded row reads token 0 and keeps nothing.
        let at = (head_base + u32(max(tokens[r], 0))) * dv;
        for (var e = 0u; e < row_vecs(); e++) {
            k[r][e] = k4[at + e];
            v[r][e] = v4[at + e];
        }
    }
    // The tile's first token: under causal masking no query before it sees the tile's keys.
    let first_y = (kt.cell / params.cells_x) * params.cell_h + kt.first / params.cell_w;
    let first_key = first_y * params.real_w + (kt.cell % params.cells_x) * params.cell_w;
    var dk: LaneRows;
    var dvs: LaneRows;
    for (var e = geom[params.near_t_offsets + kt.cell]; e < geom[params.near_t_offsets + kt.cell + 1u]; e++) {
        let rect = cell_rect(geom[params.near_t_entries + e]);
        let area = rect_area(rect);
        for (var at = 0u; at < area; at += 4u) {
            let i = rect_quad(rect, at);
            if (params.causal != 0u && all(i.at < vec4<u32>(first_key))) {
                continue;
            }
            let rows = vec4<u32>(head_base) + i.at;
            let s0 = stats[rows.x];
            let s1 = stats[rows.y];
            let s2 = stats[rows.z];
            let s3 = stats[rows.w];
            dkv_queries(&dk, &dvs, &k, &v, rows * dv, vec4<f32>(s0.x, s1.x, s2.x, s3.x),
                        vec4<f32>(s0.y, s1.y, s2.y, s3.y), lane_mask(i.live, i.at, tokens, false));
        }
    }
    for (var r = 0u; r < LANE_ROWS; r++) {
        if (tokens[r] >= 0) {
            let row = (head_base + u32(tokens[r])) * params.d;
            for (var x = 0u; x < params.d; x++) {
                dk_out[row + x] = dk[r][x / 4u][x % 4u] * params.scale;
                dv_out[row + x] = dvs[r][x / 4u][x % 4u];
            }
        }
    }
}

// backward_dkv_far_rows: each of ROW_LANES lanes owns one coarse row (its key and value in
// registers) of one of up to FAR_SIBLINGS neighbouring cells of a level, and all lanes walk the
// same queries together. The queries are the union of the cells' transposed far lists (each
// source cell once); a lane whose cell does not see a source adds exact zeros. Neighbouring
// cells share most of their lists (3 of 4 sources in 1D, 27 of 30 in 2D).

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

// The union of up to four cells' transposed far lists, walked once in ascending order with the
// set of cells that see each source: a merge of the lists, which GeomTables builds sorted
// (transpose fills them in cell order). Testing every source against every other list instead
// cost a list walk per source and cell, most of a workgroup's time where a cell has few
// queries and few rows (2 x 2 cells, p = 1).
struct Merge {
    at: array<u32, 4>,
    end: array<u32, 4>,
    lists: u32,
}

// The walk over the transposed far lists of `cells[0 .. lists]`.
fn merge_start(cells: array<u32, 4>, lists: u32) -> Merge {
    var m: Merge;
    m.lists = lists;
    for (var g = 0u; g < lists; g++) {
        m.at[g] = geom[params.far_t_offsets + cells[g]];
        m.end[g] = geom[params.far_t_offsets + cells[g] + 1u];
    }
    return m;
}

const MERGE_DONE: u32 = 0xffffffffu;

// The next source and the mask of the lists holding it (bit g for list g); MERGE_DONE once all
// are walked. The same for every lane of a workgroup.
fn merge_next(m: ptr<function, Merge>) -> vec2<u32> {
    var source = MERGE_DONE;
    for (var g = 0u; g < (*m).lists; g++) {
        if ((*m).at[g] < (*m).end[g]) {
            source = min(source, geom[params.far_t_entries + (*m).at[g]]);
        }
    }
    var mask = 0u;
    for (var g = 0u; g < (*m).lists; g++) {
        if ((*m).at[g] < (*m).end[g] && geom[params.far_t_entries + (*m).at[g]] == source) {
            mask |= 1u << g;
            (*m).at[g] += 1u;
        }
    }
    return vec2<u32>(source, mask);
}

// Queries t .. t + 3 of level cell `source` (global id): their rows of Q and dO (vec4 `at`;
// token 0 for those past the cell, whose `real` is false) and their (LSE, D).
struct SourceQueries {
    at: vec4<u32>,
    lse: vec4<f32>,
    delta: vec4<f32>,
    real: vec4<bool>,
}

fn source_queries(lv: Level, source: u32, t: u32, head_base: u32) -> SourceQueries {
    var i = vec4<i32>(-1);
    for (var x = 0u; x < 4u; x++) {
        if (t + x < lv.h * lv.w) {
            i[x] = cell_token(lv, source - lv.first, t + x);
        }
    }
    let rows = vec4<u32>(head_base) + vec4<u32>(max(i, vec4<i32>(0)));
    let s0 = stats[rows.x];
    let s1 = stats[rows.y];
    let s2 = stats[rows.z];
    let s3 = stats[rows.w];
    return SourceQueries(rows * row_vecs(), vec4<f32>(s0.x, s1.x, s2.x, s3.x),
                         vec4<f32>(s0.y, s1.y, s2.y, s3.y), i >= vec4<i32>(0));
}

// A coarse row's dK~ (times tau, once) and dV~.
fn store_row_grads(own_row: u32, dk: Row, dv: Row) {
    for (var c = 0u; c < params.d; c++) {
        dcoarse[own_row * params.d + c] = dk[c / 4u][c % 4u] * params.scale;
        dcoarse[params.coarse_v_base + own_row * params.d + c] = dv[c / 4u][c % 4u];
    }
}

// dkv_queries for one coarse row per lane (score offset `bias`): four queries at a time, so
// the lane's private rows are read and written once per four queries.
fn row_queries(dk: ptr<function, Row>, dv: ptr<function, Row>, k: ptr<function, Row>, v: ptr<function, Row>,
               at: vec4<u32>, lse: vec4<f32>, delta: vec4<f32>, keep: vec4<bool>, bias: f32) {
    var z = vec4<f32>(0.0);
    var dp = vec4<f32>(0.0);
    for (var e = 0u; e < row_vecs(); e++) {
        let x = (*k)[e];
        let y = (*v)[e];
        z += vec4<f32>(dot(q4[at.x + e], x), dot(q4[at.y + e], x), dot(q4[at.z + e], x), dot(q4[at.w + e], x));
        dp += vec4<f32>(dot(do4[at.x + e], y), dot(do4[at.y + e], y), dot(do4[at.z + e], y), dot(do4[at.w + e], y));
    }
    let pr = select(vec4<f32>(0.0), exp(bias + z * params.scale - lse), keep);
    let ds = pr * (dp - delta);
    for (var e = 0u; e < row_vecs(); e++) {
        (*dk)[e] += ds.x * q4[at.x + e] + ds.y * q4[at.y + e] + ds.z * q4[at.z + e] + ds.w * q4[at.w + e];
        (*dv)[e] += pr.x * do4[at.x + e] + pr.y * do4[at.y + e] + pr.z * do4[at.z + e] + pr.w * do4[at.w + e];
    }
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
    let used = mine && row_count(select(0u, row, mine)) > 0u;
    let head_base = head * params.n;
    let own_row = head * params.total_rows + row;
    let dv = row_vecs();

    // Rows past the block read row 0 and stay unused.
    let bias = select(0.0, row_bias(select(0u, row, mine)), used);
    let own_at = select(0u, own_row, mine) * dv;
    var k: Row;
    var v: Row;
    for (var e = 0u; e < row_vecs(); e++) {
        k[e] = select(vec4<f32>(0.0), coarse4[own_at + e], used);
        v[e] = select(vec4<f32>(0.0), coarse4[params.coarse_v_base / 4u + own_at + e], used);
    }
    var dk: Row;
    var dvs: Row;
    let s = lv.h * lv.w;
    var merge = merge_start(array<u32, 4>(first, first + 1u, first + 2u, first + 3u), min(cells, 4u));
    loop {
        let next = merge_next(&merge);
        if (next.x == MERGE_DONE) {
            break;
        }
        let on = used && (next.y & (1u << g)) != 0u;
        for (var t = 0u; t < s; t += 4u) {
            let qs = source_queries(lv, next.x, t, head_base);
            row_queries(&dk, &dvs, &k, &v, qs.at, qs.lse, qs.delta, qs.real & vec4<bool>(on), bias);
        }
    }
    if (mine) {
        store_row_grads(own_row, dk, dvs);
    }
}

// backward_dkv_far_quads (2D): the four sibling cells of a level (a 2 x 2 quad) in one
// workgroup, QUAD_LANES lanes per cell and two coarse rows per lane, so that every query read
// serves two rows of each lane. A quad's cells share most of their transposed far lists (each
// sees 27 of the 32 sources the quad walks), so 84% of the work is useful against 90% for a
// pair of cells with one row per lane, which pays a query read per row.
const QUAD_LANES: u32 = QUAD_ROWS / 2u; // lanes per cell

// Workgroups of one level: a quad per four cells, times the row blocks of a cell.
fn quad_workgroups(l: u32) -> u32 {
    return level(l).groups / 4u * ((params.p + QUAD_ROWS - 1u) / QUAD_ROWS);
}

// The level cell (global id) of cell g (0 .. 3, row-major) of quad `quad`.
fn quad_cell(lv: Level, quad: u32, g: u32) -> u32 {
    let quads_x = lv.groups_x / 2u;
    return lv.first + (2u * (quad / quads_x) + g / 2u) * lv.groups_x + 2u * (quad % quads_x) + g % 2u;
}

// row_queries for the lane's two rows: each q and dO element read serves both.
fn quad_queries(dk: ptr<function, array<Row, 2>>, dv: ptr<function, array<Row, 2>>,
                k: ptr<function, array<Row, 2>>, v: ptr<function, array<Row, 2>>,
                at: vec4<u32>, lse: vec4<f32>, delta: vec4<f32>, keep: array<vec4<bool>, 2>, bias: vec2<f32>) {
    var z0 = vec4<f32>(0.0);
    var z1 = vec4<f32>(0.0);
    var dp0 = vec4<f32>(0.0);
    var dp1 = vec4<f32>(0.0);
    for (var e = 0u; e < row_vecs(); e++) {
        let q0 = q4[at.x + e];
        let q1 = q4[at.y + e];
        let q2 = q4[at.z + e];
        let q3 = q4[at.w + e];
        let d0 = do4[at.x + e];
        let d1 = do4[at.y + e];
        let d2 = do4[at.z + e];
        let d3 = do4[at.w + e];
        let ka = (*k)[0][e];
        let kb = (*k)[1][e];
        let va = (*v)[0][e];
        let vb = (*v)[1][e];
        z0 += vec4<f32>(dot(q0, ka), dot(q1, ka), dot(q2, ka), dot(q3, ka));
        z1 += vec4<f32>(dot(q0, kb), dot(q1, kb), dot(q2, kb), dot(q3, kb));
        dp0 += vec4<f32>(dot(d0, va), dot(d1, va), dot(d2, va), dot(d3, va));
        dp1 += vec4<f32>(dot(d0, vb), dot(d1, vb), dot(d2, vb), dot(d3, vb));
    }
    let p0 = select(vec4<f32>(0.0), exp(bias.x + z0 * params.scale - lse), keep[0]);
    let p1 = select(vec4<f32>(0.0), exp(bias.y + z1 * params.scale - lse), keep[1]);
    let s0 = p0 * (dp0 - delta);
    let s1 = p1 * (dp1 - delta);
    for (var e = 0u; e < row_vecs(); e++) {
        let q0 = q4[at.x + e];
        let q1 = q4[at.y + e];
        let q2 = q4[at.z + e];
        let q3 = q4[at.w + e];
        let d0 = do4[at.x + e];
        let d1 = do4[at.y + e];
        let d2 = do4[at.z + e];
        let d3 = do4[at.w + e];
        (*dk)[0][e] += s0.x * q0 + s0.y * q1 + s0.z * q2 + s0.w * q3;
        (*dk)[1][e] += s1.x * q0 + s1.y * q1 + s1.z * q2 + s1.w * q3;
        (*dv)[0][e] += p0.x * d0 + p0.y * d1 + p0.z * d2 + p0.w * d3;
        (*dv)[1][e] += p1.x * d0 + p1.y * d1 + p1.z * d2 + p1.w * d3;
    }
}

@compute @workgroup_size(ROW_LANES)
fn backward_dkv_far_quads(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    var per_head = 0u;
    for (var l = 0u; l < params.levels; l++) {
        per_head += quad_workgroups(l);
    }
    let w = workgroup_index(wid, nwg);
    if (w >= per_head * params.bh) {
        return;
    }
    let head = w / per_head;
    // Coarsest level first, as in backward_dkv_far_rows.
    var rest = w % per_head;
    var l = params.levels - 1u;
    while (l > 0u && rest >= quad_workgroups(l)) {
        rest -= quad_workgroups(l);
        l -= 1u;
    }
    let lv = level(l);
    let blocks = (params.p + QUAD_ROWS - 1u) / QUAD_ROWS;
    let quad = rest / blocks;
    let g = lid / QUAD_LANES;
    let cell = quad_cell(lv, quad, g);
    let first_row = (rest % blocks) * QUAD_ROWS + (lid % QUAD_LANES) * 2u;
    let head_base = head * params.n;
    let dv = row_vecs();

    var mine: array<bool, 2>;
    var used: array<bool, 2>;
    var own: array<u32, 2>;
    var bias = vec2<f32>(0.0);
    var k: array<Row, 2>;
    var v: array<Row, 2>;
    for (var x = 0u; x < 2u; x++) {
        let r = first_row + x;
        // Rows past p read row 0 of the cell and stay unused.
        let row = cell * params.p + select(0u, r, r < params.p);
        mine[x] = r < params.p;
        used[x] = mine[x] && row_count(row) > 0u;
        bias[x] = select(0.0, row_bias(row), used[x]);
        own[x] = head * params.total_rows + row;
        for (var e = 0u; e < row_vecs(); e++) {
            k[x][e] = select(vec4<f32>(0.0), coarse4[own[x] * dv + e], used[x]);
            v[x][e] = select(vec4<f32>(0.0), coarse4[params.coarse_v_base / 4u + own[x] * dv + e], used[x]);
        }
    }
    var dk: array<Row, 2>;
    var dvs: array<Row, 2>;
    let s = lv.h * lv.w;
    let quad_cells = array<u32, 4>(quad_cell(lv, quad, 0u), quad_cell(lv, quad, 1u), quad_cell(lv, quad, 2u), quad_cell(lv, quad, 3u));
    var merge = merge_start(quad_cells, 4u);
    loop {
        let next = merge_next(&merge);
        if (next.x == MERGE_DONE) {
            break;
        }
        let on = (next.y & (1u << g)) != 0u;
        for (var t = 0u; t < s; t += 4u) {
            let qs = source_queries(lv, next.x, t, head_base);
            let real = qs.real & vec4<bool>(on);
            let keep = array<vec4<bool>, 2>(real & vec4<bool>(used[0]), real & vec4<bool>(used[1]));
            quad_queries(&dk, &dvs, &k, &v, qs.at, qs.lse, qs.delta, keep, bias);
        }
    }
    for (var x = 0u; x < 2u; x++) {
        if (mine[x]) {
            store_row_grads(own[x], dk[x], dvs[x]);
        }
    }
}
