// The running softmax triple (max, sum, accumulator) of spec section 4 and its merge.
// Scores are kept relative to the running max, so |scores| up to 1e4 (and beyond) never overflow.

const NEG_BIG: f32 = -3.0e38; // max of an empty triple; exp(NEG_BIG - x) underflows to 0

struct Triple {
    max: f32,
    sum: f32,
    acc: array<vec4<f32>, HEAD_VEC>,
}

fn triple_empty() -> Triple {
    var t: Triple;
    t.max = NEG_BIG;
    t.sum = 0.0;
    for (var c = 0u; c < HEAD_VEC; c++) {
        t.acc[c] = vec4<f32>(0.0);
    }
    return t;
}

// Rescales the triple to a new (larger) max before more keys are added.
fn triple_rescale(t: ptr<function, Triple>, new_max: f32) {
    let f = exp((*t).max - new_max);
    (*t).sum *= f;
    for (var c = 0u; c < HEAD_VEC; c++) {
        (*t).acc[c] *= f;
    }
    (*t).max = new_max;
}

// Merges a normalised partial result (output o and log-sum-exp l) into a triple and returns
// the normalised output in t.acc and the merged log-sum-exp.
fn triple_merge_normalised(t: ptr<function, Triple>, o: ptr<function, array<vec4<f32>, HEAD_VEC>>, l: f32) -> f32 {
    let m = max((*t).max, l);
    let a = exp((*t).max - m);
    let b = exp(l - m);
    let s = (*t).sum * a + b;
    for (var c = 0u; c < HEAD_VEC; c++) {
        (*t).acc[c] = ((*t).acc[c] * a + (*o)[c] * b) / s;
    }
    return m + log(s);
}

// Key and value tiles staged in workgroup memory, KEY_TILE rows of HEAD_VEC vec4s each, with
// per row a tag (near: the key's token, far: its coarse row; -1 for no key) and a score offset
// (far: log-multiplicity). Tags are found once per key, not once per query.
var<workgroup> k_tile: array<vec4<f32>, TILE_VECS>;
var<workgroup> v_tile: array<vec4<f32>, TILE_VECS>;
var<workgroup> tile_tag: array<i32, KEY_TILE>;
var<workgroup> tile_bias: array<f32, KEY_TILE>;

// Invocations that load one key row together, and key rows loaded per pass.
const ROW_THREADS: u32 = min(QUERY_TILE, HEAD_TILE);
const ROWS_PER_PASS: u32 = QUERY_TILE / ROW_THREADS;

// Writes element c of row kk of both tiles (zero past d or for a missing row).
fn tile_store(kk: u32, c: u32, kx: f32, vx: f32) {
    let at = kk * HEAD_VEC + c / 4u;
    k_tile[at][c % 4u] = kx;
    v_tile[at][c % 4u] = vx;
}

// Adds the tile rows whose bit is set in `valid` to the triple: score q . k + tile_bias[kk]
// (q already scaled by tau). Scores are computed first so the triple rescales once a tile.
fn triple_add_tile(t: ptr<function, Triple>, q: ptr<function, array<vec4<f32>, HEAD_VEC>>, valid: u32) {
    if (valid == 0u) {
        return;
    }
    var s: array<f32, KEY_TILE>;
    var tile_max = NEG_BIG;
    for (var kk = 0u; kk < KEY_TILE; kk++) {
        if (((valid >> kk) & 1u) != 0u) {
            var z = tile_bias[kk];
            for (var c = 0u; c < HEAD_VEC; c++) {
                z += dot((*q)[c], k_tile[kk * HEAD_VEC + c]);
            }
            s[kk] = z;
            tile_max = max(tile_max, z);
        }
    }
    if (tile_max > (*t).max) {
        triple_rescale(t, tile_max);
    }
    for (var kk = 0u; kk < KEY_TILE; kk++) {
        if (((valid >> kk) & 1u) != 0u) {
            let w = exp(s[kk] - (*t).max);
            (*t).sum += w;
            for (var c = 0u; c < HEAD_VEC; c++) {
                (*t).acc[c] += w * v_tile[kk * HEAD_VEC + c];
            }
        }
    }
}
