// The O(n) variant's far field (docs/fma.md §13), computed once per segment instead of once
// per query:
// - `linear_far`: one dispatch per level, coarsest first; one invocation per (head, coarse row
//   of the level) with a real token. It scores the row's coarse query (scaled by tau) against
//   the coarse keys of its cell's interaction list (the far table), merges the resulting
//   triple with the parent segment's result (written by the previous dispatch: the downward
//   pass) and stores the merge normalised, as (o, lse), in `down`.
// - `linear_merge`: one invocation per (head, token) merges its level-1 segment's (o, lse)
//   into the near field's normalised (O, LSE), as far_field does with its own triple.
// `down` holds o for every (head, coarse row) ([heads][total_rows][d]), then lse from word
// coarse_v_base on ([heads][total_rows]): O(n) floats. Rows without a real token are skipped
// here and never read: a real token's segments all hold it.

@group(0) @binding(B_COARSE) var<storage, read> coarse: array<f32>;
@group(0) @binding(B_DOWN) var<storage, read_write> down: array<f32>;
@group(0) @binding(B_O) var<storage, read_write> o_out: array<f32>;
@group(0) @binding(B_LSE) var<storage, read_write> lse_out: array<f32>;

@group(0) @binding(B_ROW_RANGE) var<uniform> range: RowRange;

// Channels 4e .. 4e + 3 of the coarse row starting at word `at`, zero past d (a neighbouring
// row's values must never meet q's zeros there).
fn coarse_vec(at: u32, e: u32) -> vec4<f32> {
    let x = row_words(at, e);
    return select(vec4<f32>(0.0), vec4<f32>(coarse[x.x], coarse[x.y], coarse[x.z], coarse[x.w]), channels(e));
}

fn down_vec(at: u32, e: u32) -> vec4<f32> {
    let x = row_words(at, e);
    return select(vec4<f32>(0.0), vec4<f32>(down[x.x], down[x.y], down[x.z], down[x.w]), channels(e));
}

@compute @workgroup_size(WG_ELEMENTS)
fn linear_far(
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
        return;
    }
    let d = params.d;
    let q_at = 2u * params.coarse_v_base + head_row(head, row) * d;
    var q: array<vec4<f32>, HEAD_VEC>;
    var acc: array<vec4<f32>, HEAD_VEC>;
    for (var e = 0u; e < HEAD_VEC; e++) {
        q[e] = coarse_vec(q_at, e) * params.scale;
    }
    var mx = NEG_BIG;
    var sum = 0.0;
    let cell = row / params.p;
    let hi = geom[params.far_offsets + cell + 1u];
    for (var entry = geom[params.far_offsets + cell]; entry < hi; entry++) {
        let first = geom[params.far_entries + entry] * params.p;
        for (var t = 0u; t < params.p; t++) {
            let key = first + t;
            if (row_count(key) == 0u) {
                continue; // a segment without real tokens is no key
            }
            let k_at = head_row(head, key) * d;
            var z = row_bias(key);
            for (var e = 0u; e < HEAD_VEC; e++) {
                z += dot(q[e], coarse_vec(k_at, e));
            }
            if (z > mx) {
                let rescale = exp(mx - z);
                sum *= rescale;
                for (var e = 0u; e < HEAD_VEC; e++) {
                    acc[e] *= rescale;
                }
                mx = z;
            }
            let w = exp(z - mx);
            sum += w;
            for (var e = 0u; e < HEAD_VEC; e++) {
                acc[e] += w * coarse_vec(params.coarse_v_base + k_at, e);
            }
        }
    }
    // The parent segment's result (nothing at the coarsest level: o = 0, lse = NEG_BIG).
    var parent_lse = NEG_BIG;
    let parent = geom[params.seg_parent + row];
    let p_at = head_row(head, parent) * d;
    if (parent != 0xffffffffu) {
        parent_lse = down[params.coarse_v_base + head_row(head, parent)];
    }
    let m = max(mx, parent_lse);
    let a = exp(mx - m);
    let b = exp(parent_lse - m);
    let s = sum * a + b;
    let at = head_row(head, row) * d;
    for (var e = 0u; e < HEAD_VEC; e++) {
        var o = acc[e] * a;
        if (parent != 0xffffffffu) {
            o += down_vec(p_at, e) * b;
        }
        o /= s;
        for (var j = 0u; j < 4u; j++) {
            if (4u * e + j < d) {
                down[at + 4u * e + j] = o[j];
            }
        }
    }
    down[params.coarse_v_base + head_row(head, row)] = m + log(s);
}

@compute @workgroup_size(WG_ELEMENTS)
fn linear_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = workgroup_index(wid, nwg) * WG_ELEMENTS + lid;
    if (i >= params.bh * params.n) {
        return;
    }
    let head = i / params.n;
    let token = i % params.n;
    let row = head_row(head, segment_row(level(0u), token / params.real_w, token % params.real_w));
    let near_lse = lse_out[i];
    let far_lse = down[params.coarse_v_base + row];
    let m = max(near_lse, far_lse);
    let a = exp(near_lse - m);
    let b = exp(far_lse - m);
    let s = a + b;
    let d = params.d;
    for (var c = 0u; c < d; c++) {
        o_out[i * d + c] = (o_out[i * d + c] * a + down[row * d + c] * b) / s;
    }
    lse_out[i] = m + log(s);
}
