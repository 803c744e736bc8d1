// Coarse keys and values (docs/fma.md §5). A coarse row is `cell * p + r` over the cells of all
// levels; each dispatch writes the rows of `range`.
//
// From tokens: `downsample_mean` for level 1, one workgroup per (head, coarse row); and
// `downsample_basis` and `downsample_depthwise` for all levels, one workgroup per (head, cell,
// block of up to ROW_BLOCK rows), reading the cell's tokens once for the whole block. The
// DS_THREADS invocations split as HEAD_TILE channels x LANES lanes (DOWNSAMPLE_LANES, 1 today:
// a workgroup of HEAD_TILE invocations); each lane sums a strided share of the tokens for its
// channel, and the lanes are reduced in workgroup memory.
// Reads of K and V are contiguous across channels.
// From the finer level (`downsample_mean_merge`, levels >= 2, one dispatch per level): the
// mean of a segment is the count-weighted mean of the 2 (1D) or 4 (2D) finer segments that
// tile it, so `Mean` reads each token once instead of once per level.
// The O(n) variant (params.queries = 1) makes coarse queries from Q the same way, with their
// own weights (wq, bq), stored after the coarse values (at 2 x coarse_v_base); the uniform
// branch costs the other variant nothing but Q's binding.

@group(0) @binding(B_WEIGHTS) var<storage, read> weights: array<f32>;
@group(0) @binding(B_COARSE) var<storage, read_write> coarse: array<STORE>;

@group(0) @binding(B_ROW_RANGE) var<uniform> range: RowRange;

const LANES: u32 = DOWNSAMPLE_LANES;
const DS_THREADS: u32 = HEAD_TILE * LANES;

var<workgroup> red_k: array<f32, DS_THREADS>;
var<workgroup> red_v: array<f32, DS_THREADS>;
var<workgroup> red_q: array<f32, DS_THREADS>;

// Channel c of the query row of token j, or 0 unless the plan downsamples queries.
fn query_at(at: u32) -> f32 {
    if (params.queries == 0u) {
        return 0.0;
    }
    return f32(q_in[at]);
}

struct Group {
    head: u32,
    row: u32,     // coarse row within the head
    r: u32,       // segment
    count: u32,   // real tokens in the segment
    y0: u32,      // top-left padded grid position of the group
    x0: u32,
    h: u32,       // group size
    w: u32,
    seg_h: u32,
    seg_w: u32,
    segs_x: u32,
    w_off: u32,   // this level's weights in `weights`
    b_off: u32,
}

// The group of coarse row `row` (cell * p + r) of head `head`, with its level's layout.
fn group_of(head: u32, row: u32) -> Group {
    var g: Group;
    g.head = head;
    g.row = row;
    let cell = g.row / params.p;
    g.r = g.row % params.p;
    g.count = row_count(g.row);
    let lv = level(level_index_of(cell));
    let idx = cell - lv.first;
    g.h = lv.h;
    g.w = lv.w;
    g.y0 = (idx / lv.groups_x) * lv.h;
    g.x0 = (idx % lv.groups_x) * lv.w;
    g.seg_h = lv.seg_h;
    g.seg_w = lv.seg_w;
    g.segs_x = lv.segs_x;
    g.w_off = lv.w_off;
    g.b_off = lv.b_off;
    return g;
}

// Token at index t (row-major) of the group, -1 for padding.
fn group_token(g: Group, t: u32) -> i32 {
    return token_at(g.y0 + t / g.w, g.x0 + t % g.w);
}

// Reduces the lanes of channel c and writes the coarse key and value (scaled, plus bias), and
// the coarse query in the O(n) variant.
fn finish(g: Group, lid: u32, s: vec3<f32>, factor: f32, b: vec3<f32>) {
    red_k[lid] = s.x;
    red_v[lid] = s.y;
    red_q[lid] = s.z;
    workgroupBarrier();
    let c = lid % HEAD_TILE;
    if (lid < HEAD_TILE && c < params.d) {
        var t = vec3<f32>(0.0);
        for (var lane = 0u; lane < LANES; lane++) {
            let x = lane * HEAD_TILE + c;
            t += vec3<f32>(red_k[x], red_v[x], red_q[x]);
        }
        let at = (g.head * params.total_rows + g.row) * params.d + c;
        coarse[at] = STORE(t.x * factor + b.x);
        coarse[params.coarse_v_base + at] = STORE(t.y * factor + b.y);
        if (params.queries != 0u) {
            coarse[2u * params.coarse_v_base + at] = STORE(t.z * factor + b.z);
        }
    }
}

// Mean of the real tokens of segment r: the lanes sum, `finish` divides by the count.
fn mean_row(g: Group, lid: u32) {
    let c = lid % HEAD_TILE;
    let lane = lid / HEAD_TILE;
    let sy = (g.r / g.segs_x) * g.seg_h;
    let sx = (g.r % g.segs_x) * g.seg_w;
    var s = vec3<f32>(0.0);
    if (c < params.d) {
        for (var t = lane; t < g.seg_h * g.seg_w; t += LANES) {
            let j = token_at(g.y0 + sy + t / g.seg_w, g.x0 + sx + t % g.seg_w);
            if (j >= 0) {
                let at = (g.head * params.n + u32(j)) * params.d + c;
                s += vec3<f32>(f32(k_in[at]), f32(v_in[at]), query_at(at));
            }
        }
    }
    // an empty segment is skipped by the attention; its row stays finite
    finish(g, lid, s, 1.0 / f32(max(g.count, 1u)), vec3<f32>(0.0));
}

// A learned-downsampling workgroup computes ROW_BLOCK rows of one cell together: the cell's
// tokens are read once for all of them.

// Weighted sums over the whole group for rows r0 .. r0 + ROW_BLOCK of one cell: `Basis`
// weights W[l][r][t] are shared by the channels, `Depthwise` weights W[l][c][r][t] are per
// channel and come with a bias b[l][c][r].
fn learned_rows(head: u32, cell: u32, r0: u32, lid: u32, depthwise: bool) {
    let g = group_of(head, cell * params.p);
    let c = lid % HEAD_TILE;
    let lane = lid / HEAD_TILE;
    let s = g.h * g.w;
    let rows = min(ROW_BLOCK, params.p - r0);
    var sk: array<f32, ROW_BLOCK>;
    var sv: array<f32, ROW_BLOCK>;
    var sq: array<f32, ROW_BLOCK>;
    let queries = params.queries != 0u;
    if (c < params.d) {
        for (var t = lane; t < s; t += LANES) {
            let j = group_token(g, t);
            if (j >= 0) {
                let at = (head * params.n + u32(j)) * params.d + c;
                let kx = f32(k_in[at]);
                let vx = f32(v_in[at]);
                let qx = query_at(at);
                for (var i = 0u; i < rows; i++) {
                    var wi = g.w_off + (r0 + i) * s + t;
                    if (depthwise) {
                        wi = g.w_off + (c * params.p + r0 + i) * s + t;
                    }
                    sk[i] += weights[wi] * kx;
                    sv[i] += weights[params.wv_base + wi] * vx;
                    if (queries) {
                        sq[i] += weights[params.wq_base + wi] * qx;
                    }
                }
            }
        }
    }
    for (var i = 0u; i < rows; i++) {
        var b = vec3<f32>(0.0);
        if (depthwise && c < params.d) {
            let bi = g.b_off + c * params.p + r0 + i;
            b = vec3<f32>(weights[params.bk_base + bi], weights[params.bv_base + bi], 0.0);
            if (queries) {
                b.z = weights[params.bq_base + bi];
            }
        }
        var gi = g;
        gi.row = cell * params.p + r0 + i;
        finish(gi, lid, vec3<f32>(sk[i], sv[i], sq[i]), 1.0, b);
        workgroupBarrier(); // the lanes' partial sums are read before the next row's are written
    }
}

// One learned-downsampling workgroup: (head, cell, block of ROW_BLOCK rows).
fn learned_entry(w: u32, lid: u32, depthwise: bool) {
    let blocks = (params.p + ROW_BLOCK - 1u) / ROW_BLOCK;
    let item = w % range.count;
    learned_rows(w / range.count, item / blocks, (item % blocks) * ROW_BLOCK, lid, depthwise);
}

@compute @workgroup_size(DS_THREADS)
fn downsample_mean(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = workgroup_index(wid, nwg);
    if (w < range.count * params.bh) {
        mean_row(group_of(w / range.count, range.first + w % range.count), lid);
    }
}

@compute @workgroup_size(DS_THREADS)
fn downsample_basis(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = workgroup_index(wid, nwg);
    if (w < range.count * params.bh) {
        learned_entry(w, lid, false);
    }
}

@compute @workgroup_size(DS_THREADS)
fn downsample_depthwise(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = workgroup_index(wid, nwg);
    if (w < range.count * params.bh) {
        learned_entry(w, lid, true);
    }
}

@compute @workgroup_size(WG_ELEMENTS)
fn downsample_mean_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // one invocation per (head, row of this level, channel)
    let i = workgroup_index(wid, nwg) * WG_ELEMENTS + lid;
    if (i >= params.bh * range.count * params.d) {
        return;
    }
    let c = i % params.d;
    let row = range.first + (i / params.d) % range.count;
    let head = i / (params.d * range.count);
    var sk = 0.0;
    var sv = 0.0;
    var sq = 0.0;
    let queries = params.queries != 0u;
    for (var e = 0u; e < params.children_per_row; e++) {
        let child = geom[params.children + row * params.children_per_row + e];
        let weight = f32(row_count(child)); // its real tokens
        let at = (head * params.total_rows + child) * params.d + c;
        sk += weight * f32(coarse[at]);
        sv += weight * f32(coarse[params.coarse_v_base + at]);
        if (queries) {
            sq += weight * f32(coarse[2u * params.coarse_v_base + at]);
        }
    }
    let inv = 1.0 / f32(max(row_count(row), 1u));
    let at = (head * params.total_rows + row) * params.d + c;
    coarse[at] = STORE(sk * inv);
    coarse[params.coarse_v_base + at] = STORE(sv * inv);
    if (queries) {
        coarse[2u * params.coarse_v_base + at] = STORE(sq * inv);
    }
}
