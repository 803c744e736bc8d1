// Backward of the O(n) variant's far field (docs/fma.md §13 "Backward"), in O(n). A coarse key
// (h, t) seen by segment (g, r) through its coarse query Qc has, for every query i of the
// segment, the score z = tau Qc . Kc + ln mu (the same for all of them) and the weight
// P_i = exp(z - LSE_i). The sums over the segment's queries then factor:
//   sum_i P_i dO_i              = exp(z + M) A,
//   sum_i P_i (dO_i . Vc - D_i) = exp(z + M) (A . Vc - B),
// with the segment's aggregates M = max_i(-LSE_i), A = sum_i exp(-LSE_i - M) dO_i and
// B = sum_i exp(-LSE_i - M) D_i. z + M <= 0 since z <= LSE_i, so nothing overflows.
// - `linear_up`: one dispatch per level, finest first; one invocation per (head, coarse row)
//   with a real token builds (M, A, B): level 1 from its tokens, coarser levels from the 2 or 4
//   finer segments that tile it (the children table), rescaled to the new max.
// - `linear_dcoarse`: one invocation per (head, coarse row) writes the row's whole gradient:
//   dKc and dVc as a key (over the segments whose cell's interaction list holds its cell: the
//   transposed far list) and dQc as a segment's query (over its cell's interaction list).
//   Rows without a real token get zeros. dcoarse then goes through the downsampling backward.
// `up` holds A for every (head, row) ([heads][total_rows][d]), then (M, B) pairs from word
// coarse_v_base on.

@group(0) @binding(B_COARSE) var<storage, read> coarse: array<f32>;
@group(0) @binding(B_D_O) var<storage, read> do_in: array<f32>;
@group(0) @binding(B_STATS) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(B_UP) var<storage, read_write> up: array<f32>;
@group(0) @binding(B_DCOARSE) var<storage, read_write> dcoarse: array<f32>;

@group(0) @binding(B_ROW_RANGE) var<uniform> range: RowRange;

alias Row = array<vec4<f32>, HEAD_VEC>;

// Channels 4e .. 4e + 3 of the row starting at word `at` of a buffer, zero past d (one helper
// per buffer, so that a kernel binds only what it reads).
fn coarse_vec(at: u32, e: u32) -> vec4<f32> {
    let x = row_words(at, e);
    return select(vec4<f32>(0.0), vec4<f32>(coarse[x.x], coarse[x.y], coarse[x.z], coarse[x.w]), channels(e));
}

fn up_vec(at: u32, e: u32) -> vec4<f32> {
    let x = row_words(at, e);
    return select(vec4<f32>(0.0), vec4<f32>(up[x.x], up[x.y], up[x.z], up[x.w]), channels(e));
}

fn do_vec(at: u32, e: u32) -> vec4<f32> {
    let x = row_words(at, e);
    return select(vec4<f32>(0.0), vec4<f32>(do_in[x.x], do_in[x.y], do_in[x.z], do_in[x.w]), channels(e));
}

fn coarse_row(at: u32) -> Row {
    var r: Row;
    for (var e = 0u; e < HEAD_VEC; e++) {
        r[e] = coarse_vec(at, e);
    }
    return r;
}

fn dot_rows(a: ptr<function, Row>, b: ptr<function, Row>) -> f32 {
    var s = 0.0;
    for (var e = 0u; e < HEAD_VEC; e++) {
        s += dot((*a)[e], (*b)[e]);
    }
    return s;
}

// Writes the first d channels of `r` at word `at` of dcoarse.
fn store_dcoarse(at: u32, r: ptr<function, Row>) {
    for (var e = 0u; e < HEAD_VEC; e++) {
        for (var j = 0u; j < 4u; j++) {
            if (4u * e + j < params.d) {
                dcoarse[at + 4u * e + j] = (*r)[e][j];
            }
        }
    }
}

// A segment's running aggregates.
struct Aggregate {
    m: f32,
    b: f32,
    a: Row,
}

// Adds a term with log-weight x (rescaling to a new max): its weight times `a_term` to A and
// times `b_term` to B.
fn aggregate_add(g: ptr<function, Aggregate>, x: f32, a_term: ptr<function, Row>, b_term: f32) {
    if (x > (*g).m) {
        let rescale = exp((*g).m - x);
        (*g).b *= rescale;
        for (var e = 0u; e < HEAD_VEC; e++) {
            (*g).a[e] *= rescale;
        }
        (*g).m = x;
    }
    let w = exp(x - (*g).m);
    (*g).b += w * b_term;
    for (var e = 0u; e < HEAD_VEC; e++) {
        (*g).a[e] += w * (*a_term)[e];
    }
}

@compute @workgroup_size(WG_ELEMENTS)
fn linear_up(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = workgroup_index(wid, nwg) * WG_ELEMENTS + lid;
    if (i >= range.count * params.bh) {
        return;
    }
    let head = i / range.count;
    let row = range.first + i % range.count;
    if (row_count(row) == 0u) {
        return; // never read: only real rows are children or sources
    }
    var g: Aggregate;
    g.m = NEG_BIG;
    if (range.level == 0u) {
        // the segment's real tokens: x = -LSE_i, terms dO_i and D_i
        let lv = level(0u);
        let idx = row / params.p - lv.first;
        let r = row % params.p;
        let y0 = (idx / lv.groups_x) * lv.h + (r / lv.segs_x) * lv.seg_h;
        let x0 = (idx % lv.groups_x) * lv.w + (r % lv.segs_x) * lv.seg_w;
        for (var t = 0u; t < lv.seg_h * lv.seg_w; t++) {
            let j = token_at(y0 + t / lv.seg_w, x0 + t % lv.seg_w);
            if (j >= 0) {
                let q = head * params.n + u32(j);
                let st = stats[q];
                var d_o: Row;
                for (var e = 0u; e < HEAD_VEC; e++) {
                    d_o[e] = do_vec(q * params.d, e);
                }
                aggregate_add(&g, -st.x, &d_o, st.y);
            }
        }
    } else {
        // the finer segments that tile it: x = their M, terms their A and B
        for (var c = 0u; c < params.children_per_row; c++) {
            let child = geom[params.children + row * params.children_per_row + c];
            if (row_count(child) == 0u) {
                continue;
            }
            let at = head_row(head, child);
            var a: Row;
            for (var e = 0u; e < HEAD_VEC; e++) {
                a[e] = up_vec(at * params.d, e);
            }
            aggregate_add(&g, up[params.coarse_v_base + 2u * at], &a, up[params.coarse_v_base + 2u * at + 1u]);
        }
    }
    let at = head_row(head, row);
    for (var e = 0u; e < HEAD_VEC; e++) {
        for (var j = 0u; j < 4u; j++) {
            if (4u * e + j < params.d) {
                up[at * params.d + 4u * e + j] = g.a[e][j];
            }
        }
    }
    up[params.coarse_v_base + 2u * at] = g.m;
    up[params.coarse_v_base + 2u * at + 1u] = g.b;
}

// The terms of one (segment, key) pair: the segment's aggregates at row `seg` of `up`, the key
// row's Kc and Vc (at word k_at of coarse) and the segment's coarse query q (scaled by tau).
// Returns w = exp(z + M) and s = w (A . Vc - B); `a` receives A.
fn pair_weights(head: u32, seg: u32, key: u32, q: ptr<function, Row>, k: ptr<function, Row>,
    v: ptr<function, Row>, a: ptr<function, Row>) -> vec2<f32> {
    let at = head_row(head, seg);
    for (var e = 0u; e < HEAD_VEC; e++) {
        (*a)[e] = up_vec(at * params.d, e);
    }
    let z = dot_rows(q, k) + row_bias(key);
    let w = exp(z + up[params.coarse_v_base + 2u * at]);
    return vec2<f32>(w, w * (dot_rows(a, v) - up[params.coarse_v_base + 2u * at + 1u]));
}

@compute @workgroup_size(WG_ELEMENTS)
fn linear_dcoarse(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = workgroup_index(wid, nwg) * WG_ELEMENTS + lid;
    if (i >= params.total_rows * params.bh) {
        return;
    }
    let head = i / params.total_rows;
    let row = i % params.total_rows;
    let d = params.d;
    let tau = params.scale;
    let at = head_row(head, row) * d;
    var dk: Row;
    var dv: Row;
    var dq: Row;
    if (row_count(row) != 0u) {
        let cell = row / params.p;
        // As a key: the segments of the cells that see this cell.
        var k = coarse_row(at);
        var v = coarse_row(params.coarse_v_base + at);
        var a: Row;
        let t_hi = geom[params.far_t_offsets + cell + 1u];
        for (var entry = geom[params.far_t_offsets + cell]; entry < t_hi; entry++) {
            let first = geom[params.far_t_entries + entry] * params.p;
            for (var r = 0u; r < params.p; r++) {
                let seg = first + r;
                if (row_count(seg) == 0u) {
                    continue;
                }
                var q = coarse_row(2u * params.coarse_v_base + head_row(head, seg) * d);
                for (var e = 0u; e < HEAD_VEC; e++) {
                    q[e] *= tau;
                }
                let ws = pair_weights(head, seg, row, &q, &k, &v, &a);
                for (var e = 0u; e < HEAD_VEC; e++) {
                    dv[e] += ws.x * a[e];
                    dk[e] += ws.y * q[e]; // tau s Qc: q is scaled
                }
            }
        }
        // As a segment's query: the keys of its cell's interaction list.
        var q = coarse_row(2u * params.coarse_v_base + at);
        for (var e = 0u; e < HEAD_VEC; e++) {
            q[e] *= tau;
        }
        let hi = geom[params.far_offsets + cell + 1u];
        for (var entry = geom[params.far_offsets + cell]; entry < hi; entry++) {
            let first = geom[params.far_entries + entry] * params.p;
            for (var t = 0u; t < params.p; t++) {
                let key = first + t;
                if (row_count(key) == 0u) {
                    continue;
                }
                let k_at = head_row(head, key) * d;
                var kk = coarse_row(k_at);
                var vk = coarse_row(params.coarse_v_base + k_at);
                let ws = pair_weights(head, row, key, &q, &kk, &vk, &a);
                for (var e = 0u; e < HEAD_VEC; e++) {
                    dq[e] += (tau * ws.y) * kk[e];
                }
            }
        }
    }
    store_dcoarse(at, &dk);
    store_dcoarse(params.coarse_v_base + at, &dv);
    store_dcoarse(2u * params.coarse_v_base + at, &dq);
}
