// Backward of FMA attention (docs/fma.md §10), flash-style: every score is recomputed from the
// inputs and the saved LSE, so nothing of size n x n (or n per level) is stored. Each gradient
// element has exactly one owner invocation that sums its terms in a fixed order, so two runs
// give the same bits, with no atomics. This file holds what both layouts share: the buffers,
// the row loaders and `backward_stats`, (LSE_i, D_i = dO_i . O_i) per query, which all the
// other kernels read. The owners:
// - dQ, query-major: one invocation per query (or LANE_ROWS of them), as in the forward;
// - dK and dV of the tokens, key-major: the queries of the cells whose near field holds the
//   key's cell (the transposed near list);
// - dK~ and dV~ of the coarse rows, row-major: the queries of the cells whose interaction list
//   holds the row's cell (the transposed far list); they go on to downsample_backward.wgsl.
// GPUs run attention_backward_tiled.wgsl (rows staged in workgroup memory, `Kernels::Tiled` in
// the Rust twin), CPU adapters attention_backward_lanes.wgsl (`Kernels::Lanes`).
// Per (query i, key): P = exp(z - LSE_i), dS = P (dO_i . v - D_i); dq_i += tau dS k,
// dk += tau dS q_i, dv += P dO_i.

@group(0) @binding(B_COARSE) var<storage, read> coarse: array<f32>;
@group(0) @binding(B_D_O) var<storage, read> do_in: array<f32>;
@group(0) @binding(B_O) var<storage, read> o_in: array<f32>;
@group(0) @binding(B_LSE) var<storage, read> lse_in: array<f32>;
@group(0) @binding(B_STATS_OUT) var<storage, read_write> stats_out: array<vec2<f32>>;
@group(0) @binding(B_STATS) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(B_DQ) var<storage, read_write> dq_out: array<f32>;
@group(0) @binding(B_DK) var<storage, read_write> dk_out: array<f32>;
@group(0) @binding(B_DV) var<storage, read_write> dv_out: array<f32>;
@group(0) @binding(B_DCOARSE) var<storage, read_write> dcoarse: array<f32>;

// Rows of the inputs (zero past d and for token < 0); `load_q` scales q by tau.
fn load_q(head_base: u32, token: i32) -> array<vec4<f32>, HEAD_VEC> {
    var r: array<vec4<f32>, HEAD_VEC>;
    let at = (head_base + u32(max(token, 0))) * params.d;
    for (var e = 0u; e < HEAD_VEC; e++) {
        r[e] = select(vec4<f32>(0.0), q_vec(at, e) * params.scale, token >= 0);
    }
    return r;
}

fn load_do(head_base: u32, token: i32) -> array<vec4<f32>, HEAD_VEC> {
    var r: array<vec4<f32>, HEAD_VEC>;
    let at = (head_base + u32(max(token, 0))) * params.d;
    for (var e = 0u; e < HEAD_VEC; e++) {
        r[e] = select(vec4<f32>(0.0), do_vec(at, e), token >= 0);
    }
    return r;
}

fn load_stats(head_base: u32, token: i32) -> vec2<f32> {
    if (token < 0) {
        return vec2<f32>(0.0);
    }
    return stats[head_base + u32(token)];
}

// Channels 4e .. 4e + 3 of a row of Q or dO starting at word `at`, zero past d.
fn q_vec(at: u32, e: u32) -> vec4<f32> {
    let x = row_words(at, e);
    return select(vec4<f32>(0.0), vec4<f32>(q_in[x.x], q_in[x.y], q_in[x.z], q_in[x.w]), channels(e));
}

fn do_vec(at: u32, e: u32) -> vec4<f32> {
    let x = row_words(at, e);
    return select(vec4<f32>(0.0), vec4<f32>(do_in[x.x], do_in[x.y], do_in[x.z], do_in[x.w]), channels(e));
}

@compute @workgroup_size(WG_ELEMENTS)
fn backward_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = workgroup_index(wid, nwg) * WG_ELEMENTS + lid;
    if (row >= params.bh * params.n) {
        return;
    }
    var delta = 0.0;
    for (var c = 0u; c < params.d; c++) {
        delta += do_in[row * params.d + c] * o_in[row * params.d + c];
    }
    stats_out[row] = vec2<f32>(lse_in[row], delta);
}
