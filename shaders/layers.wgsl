// The vision transformer's layers, forward and backward. Twin: src/gpu/kernels/layers.rs; CPU twins:
// src/model/layers.rs (same layouts: row-major, a linear weight is [in, out], y = x w + b).
//
// One invocation owns one output element (or one row) and sums in a fixed order, so every
// kernel is deterministic and needs no atomics. Shapes live in the uniform, so a new batch
// size never recompiles. Workgroups are laid out on a 2D grid (65,535 per axis) and flattened.
// LAYER_WG and the BIND_* indices come from the header (src/gpu/shaders/layers.rs).

// `LayerParams` is declared in the header, from src/gpu/shaders/structs.rs.

@group(0) @binding(BIND_PARAMS) var<uniform> P: LayerParams;
@group(0) @binding(BIND_IN0) var<storage, read> in0: array<f32>;
@group(0) @binding(BIND_IN1) var<storage, read> in1: array<f32>;
@group(0) @binding(BIND_IN2) var<storage, read> in2: array<f32>;
@group(0) @binding(BIND_IN3) var<storage, read> in3: array<f32>;
@group(0) @binding(BIND_OUT0) var<storage, read_write> out0: array<f32>;
@group(0) @binding(BIND_OUT1) var<storage, read_write> out1: array<f32>;
@group(0) @binding(BIND_OUT2) var<storage, read_write> out2: array<f32>;

const LN_EPS: f32 = 1e-5;
const GELU_K: f32 = 0.7978845608028654;
const GELU_A: f32 = 0.044715;

fn flat(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * LAYER_WG + lid;
}

// y[rows, out] = x[rows, in] w[in, out] + b[out]. in0 = x, in1 = w, in2 = b, out0 = y.
// Each invocation computes a block of 4 rows x 4 columns (LINEAR_TILE = 4, the width of a
// vec4), so each loaded x value serves 4 outputs and each w row 4 rows: a quarter of the loads
// of one output per invocation, which is what a CPU-emulated GPU (SwiftShader) pays for. The
// sum order (bias, then k ascending) is unchanged. Indices past the matrix are clamped so the
// loop has no branches; those lanes are never stored.
@compute @workgroup_size(LAYER_WG)
fn linear_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let col_blocks = (P.out + LINEAR_TILE - 1u) / LINEAR_TILE;
    let r0 = (i / col_blocks) * LINEAR_TILE;
    let c0 = (i % col_blocks) * LINEAR_TILE;
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let rr = min(vec4<u32>(r0) + lanes, vec4<u32>(P.rows - 1u)) * P.inp;
    let cc = min(vec4<u32>(c0) + lanes, vec4<u32>(P.out - 1u));
    let bias = vec4<f32>(in2[cc.x], in2[cc.y], in2[cc.z], in2[cc.w]);
    var a0 = bias;
    var a1 = bias;
    var a2 = bias;
    var a3 = bias;
    for (var k = 0u; k < P.inp; k++) {
        let wk = k * P.out;
        let w = vec4<f32>(in1[wk + cc.x], in1[wk + cc.y], in1[wk + cc.z], in1[wk + cc.w]);
        a0 += in0[rr.x + k] * w;
        a1 += in0[rr.y + k] * w;
        a2 += in0[rr.z + k] * w;
        a3 += in0[rr.w + k] * w;
    }
    store_linear_row(r0, c0, a0);
    store_linear_row(r0 + 1u, c0, a1);
    store_linear_row(r0 + 2u, c0, a2);
    store_linear_row(r0 + 3u, c0, a3);
}

// The columns c0 .. c0 + 3 of output row r that lie inside the matrix.
fn store_linear_row(r: u32, c0: u32, a: vec4<f32>) {
    if (r >= P.rows) { return; }
    for (var c = 0u; c < LINEAR_TILE; c++) {
        if (c0 + c < P.out) {
            out0[r * P.out + c0 + c] = a[c];
        }
    }
}

// dx[rows, in] = dy w^T. in0 = dy, in1 = w, out0 = dx.
@compute @workgroup_size(LAYER_WG)
fn linear_backward_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let r = i / P.inp;
    let k = i % P.inp;
    var acc = 0.0;
    for (var j = 0u; j < P.out; j++) {
        acc += in0[r * P.out + j] * in1[k * P.out + j];
    }
    out0[i] = acc;
}

// dw[in, out] += x^T dy (elements 0..in*out) and db[out] += column sums of dy (the next out
// elements). in0 = x, in1 = dy, out0 = dw, out1 = db.
@compute @workgroup_size(LAYER_WG)
fn linear_backward_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let weights = P.inp * P.out;
    if (i < weights) {
        let k = i / P.out;
        let j = i % P.out;
        var acc = 0.0;
        for (var r = 0u; r < P.rows; r++) {
            acc += in0[r * P.inp + k] * in1[r * P.out + j];
        }
        out0[i] += acc;
    } else {
        let j = i - weights;
        var acc = 0.0;
        for (var r = 0u; r < P.rows; r++) {
            acc += in1[r * P.out + j];
        }
        out1[j] += acc;
    }
}

// One row per invocation. in0 = x, in1 = g, in2 = b; out0 = y, out1 = [mean, rstd] per row.
@compute @workgroup_size(LAYER_WG)
fn layer_norm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = flat(wg, nwg, lid);
    if (r >= P.len) { return; }
    let base = r * P.dim;
    var sum = 0.0;
    for (var i = 0u; i < P.dim; i++) { sum += in0[base + i]; }
    let mean = sum / f32(P.dim);
    var var_sum = 0.0;
    for (var i = 0u; i < P.dim; i++) {
        let c = in0[base + i] - mean;
        var_sum += c * c;
    }
    let rstd = 1.0 / sqrt(var_sum / f32(P.dim) + LN_EPS);
    for (var i = 0u; i < P.dim; i++) {
        out0[base + i] = (in0[base + i] - mean) * rstd * in1[i] + in2[i];
    }
    out1[2u * r] = mean;
    out1[2u * r + 1u] = rstd;
}

// dx per row. in0 = x, in1 = g, in2 = dy, in3 = stats; out0 = dx.
@compute @workgroup_size(LAYER_WG)
fn layer_norm_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let r = flat(wg, nwg, lid);
    if (r >= P.len) { return; }
    let base = r * P.dim;
    let mean = in3[2u * r];
    let rstd = in3[2u * r + 1u];
    var sum_dh = 0.0;
    var sum_dh_xh = 0.0;
    for (var i = 0u; i < P.dim; i++) {
        let dh = in2[base + i] * in1[i];
        sum_dh += dh;
        sum_dh_xh += dh * (in0[base + i] - mean) * rstd;
    }
    let mean_dh = sum_dh / f32(P.dim);
    let mean_dh_xh = sum_dh_xh / f32(P.dim);
    for (var i = 0u; i < P.dim; i++) {
        let xh = (in0[base + i] - mean) * rstd;
        out0[base + i] = rstd * (in2[base + i] * in1[i] - mean_dh - xh * mean_dh_xh);
    }
}

// dg[dim] += sum over rows of dy * xhat, db[dim] += sum of dy. in0 = x, in2 = dy, in3 = stats;
// out0 = dg, out1 = db. One channel per invocation.
@compute @workgroup_size(LAYER_WG)
fn layer_norm_param_grads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    var dg = 0.0;
    var db = 0.0;
    for (var r = 0u; r < P.rows; r++) {
        let at = r * P.dim + i;
        let xh = (in0[at] - in3[2u * r]) * in3[2u * r + 1u];
        dg += in2[at] * xh;
        db += in2[at];
    }
    out0[i] += dg;
    out1[i] += db;
}

// in0 = x, out0 = gelu(x) (tanh form, as the CPU twin).
@compute @workgroup_size(LAYER_WG)
fn gelu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let v = in0[i];
    let t = tanh(GELU_K * (v + GELU_A * v * v * v));
    out0[i] = 0.5 * v * (1.0 + t);
}

// in0 = x, in1 = dy, out0 = dx.
@compute @workgroup_size(LAYER_WG)
fn gelu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let v = in0[i];
    let t = tanh(GELU_K * (v + GELU_A * v * v * v));
    let du = GELU_K * (1.0 + 3.0 * GELU_A * v * v);
    out0[i] = in1[i] * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
}

// One row of width dim per invocation, max-subtracted. in0 = x, out0 = y.
@compute @workgroup_size(LAYER_WG)
fn softmax_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = flat(wg, nwg, lid);
    if (r >= P.len) { return; }
    let base = r * P.dim;
    var m = in0[base];
    for (var i = 1u; i < P.dim; i++) { m = max(m, in0[base + i]); }
    var sum = 0.0;
    for (var i = 0u; i < P.dim; i++) { sum += exp(in0[base + i] - m); }
    for (var i = 0u; i < P.dim; i++) { out0[base + i] = exp(in0[base + i] - m) / sum; }
}

// dx = y (dy - sum(dy y)) per row. in0 = y, in1 = dy, out0 = dx.
@compute @workgroup_size(LAYER_WG)
fn softmax_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = flat(wg, nwg, lid);
    if (r >= P.len) { return; }
    let base = r * P.dim;
    var s = 0.0;
    for (var i = 0u; i < P.dim; i++) { s += in0[base + i] * in1[base + i]; }
    for (var i = 0u; i < P.dim; i++) { out0[base + i] = in0[base + i] * (in1[base + i] - s); }
}

// Images [count, side, side] to one window x window row per token of the (side/stride)^2 grid;
// windows centred on their stride x stride block, zero outside. in0 = images, out0 = rows.
@compute @workgroup_size(LAYER_WG)
fn patches(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let g = P.side / P.stride;
    let per_token = P.window * P.window;
    let w = i % per_token;
    let token = (i / per_token) % (g * g);
    let img = i / (per_token * g * g);
    let pad = (P.window - P.stride) / 2u;
    // Signed, since a window may start left of or above the image.
    let y = i32((token / g) * P.stride + w / P.window) - i32(pad);
    let x = i32((token % g) * P.stride + w % P.window) - i32(pad);
    var v = 0.0;
    if (y >= 0 && x >= 0 && y < i32(P.side) && x < i32(P.side)) {
        v = in0[img * P.side * P.side + u32(y) * P.side + u32(x)];
    }
    out0[i] = v;
}

// out0 [count * tokens, dim] += in0 [tokens, dim] (position embeddings).
@compute @workgroup_size(LAYER_WG)
fn add_position(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    out0[i] += in0[i % (P.tokens * P.dim)];
}

// out0 += in0 (residual connections, gradient accumulation).
@compute @workgroup_size(LAYER_WG)
fn add_into(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    out0[i] += in0[i];
}

// Mean over each image's tokens: in0 [count * tokens, dim] to out0 [count, dim].
@compute @workgroup_size(LAYER_WG)
fn mean_pool(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let img = i / P.dim;
    let j = i % P.dim;
    var acc = 0.0;
    for (var t = 0u; t < P.tokens; t++) {
        acc += in0[(img * P.tokens + t) * P.dim + j];
    }
    out0[i] = acc / f32(P.tokens);
}

// Each token row receives dy / tokens: in0 [count, dim] to out0 [count * tokens, dim].
@compute @workgroup_size(LAYER_WG)
fn mean_pool_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let img = i / (P.tokens * P.dim);
    out0[i] = in0[img * P.dim + i % P.dim] / f32(P.tokens);
}

// Fused qkv [count, tokens, 3 * heads * hd] (columns q | k | v) to q, k, v of
// [count, heads, tokens, hd] in out0, out1, out2. One element of the fused tensor each.
@compute @workgroup_size(LAYER_WG)
fn split_heads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let dim = P.heads * P.hd;
    let col = i % (3u * dim);
    let row = i / (3u * dim);
    let t = row % P.tokens;
    let img = row / P.tokens;
    let part = col / dim;
    let h = (col % dim) / P.hd;
    let c = col % P.hd;
    let at = ((img * P.heads + h) * P.tokens + t) * P.hd + c;
    let v = in0[i];
    if (part == 0u) { out0[at] = v; } else if (part == 1u) { out1[at] = v; } else { out2[at] = v; }
}

// Backward of split_heads: in0, in1, in2 = dq, dk, dv to the fused layout in out0.
@compute @workgroup_size(LAYER_WG)
fn split_heads_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let dim = P.heads * P.hd;
    let col = i % (3u * dim);
    let row = i / (3u * dim);
    let t = row % P.tokens;
    let img = row / P.tokens;
    let part = col / dim;
    let h = (col % dim) / P.hd;
    let c = col % P.hd;
    let at = ((img * P.heads + h) * P.tokens + t) * P.hd + c;
    var v = in2[at];
    if (part == 0u) { v = in0[at]; } else if (part == 1u) { v = in1[at]; }
    out0[i] = v;
}

// [count, heads, tokens, hd] to [count, tokens, heads * hd]: one output element each.
@compute @workgroup_size(LAYER_WG)
fn merge_heads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let dim = P.heads * P.hd;
    let col = i % dim;
    let row = i / dim;
    let t = row % P.tokens;
    let img = row / P.tokens;
    let h = col / P.hd;
    let c = col % P.hd;
    out0[i] = in0[((img * P.heads + h) * P.tokens + t) * P.hd + c];
}

// Backward of merge_heads: [count, tokens, heads * hd] back to [count, heads, tokens, hd].
@compute @workgroup_size(LAYER_WG)
fn merge_heads_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wg, nwg, lid);
    if (i >= P.len) { return; }
    let dim = P.heads * P.hd;
    let c = i % P.hd;
    let t = (i / P.hd) % P.tokens;
    let h = (i / (P.hd * P.tokens)) % P.heads;
    let img = i / (P.hd * P.tokens * P.heads);
    out0[i] = in0[(img * P.tokens + t) * dim + h * P.hd + c];
}
