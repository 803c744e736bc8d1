// The benchmark's calibration (`multipole bench`, multipole-cli/src/matmul.rs): C = A B in
// f32, row-major, every row stored as vec4s. Its rate is what the adapter attains in this run,
// the yardstick of `fraction_of_matmul`. Not part of the library.
//
// The header written by matmul.rs declares WG_X, WG_Y (the workgroup of `matmul_register`),
// ROWS and COLS (its register block: ROWS rows x COLS vec4 columns), TILE and TILE_K (the
// workgroup tile of `matmul_tiled`: TILE x TILE outputs, TILE_K of the inner dimension per
// barrier) and the B_* binding indices. Sizes are checked on the host:
// M and N are multiples of TILE, K of TILE_K, so no invocation reads past a row.

struct Dims {
    m: u32,
    n: u32,
    k: u32,
    pad: u32,
}

@group(0) @binding(B_DIMS) var<uniform> dims: Dims;
@group(0) @binding(B_A) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(B_B) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(B_C) var<storage, read_write> c: array<vec4<f32>>;

// Each invocation computes ROWS x (4 COLS) outputs, loading its A rows and B rows as vec4s
// straight from storage: no workgroup memory and no barrier, which suits a CPU adapter (large
// caches, costly barriers).
@compute @workgroup_size(WG_X, WG_Y)
fn matmul_register(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kv = dims.k / 4u;
    let nv = dims.n / 4u;
    let col = gid.x * COLS;
    let row = gid.y * ROWS;
    if row >= dims.m || col >= nv {
        return;
    }
    var acc: array<vec4<f32>, ROWS * COLS>;
    for (var k = 0u; k < kv; k++) {
        // Four rows of B (the four k of this step), COLS vec4s each.
        var bk: array<vec4<f32>, 4u * COLS>;
        for (var j = 0u; j < 4u; j++) {
            for (var q = 0u; q < COLS; q++) {
                bk[j * COLS + q] = b[(4u * k + j) * nv + col + q];
            }
        }
        for (var r = 0u; r < ROWS; r++) {
            let av = a[(row + r) * kv + k];
            for (var q = 0u; q < COLS; q++) {
                let i = r * COLS + q;
                acc[i] = fma(vec4(av.x), bk[q], acc[i]);
                acc[i] = fma(vec4(av.y), bk[COLS + q], acc[i]);
                acc[i] = fma(vec4(av.z), bk[2u * COLS + q], acc[i]);
                acc[i] = fma(vec4(av.w), bk[3u * COLS + q], acc[i]);
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        for (var q = 0u; q < COLS; q++) {
            c[(row + r) * nv + col + q] = acc[r * COLS + q];
        }
    }
}

// A TILE x TILE block of C per workgroup: each K-step stages TILE rows of A and TILE_K rows of
// B in workgroup memory behind a barrier, and every invocation computes 4 rows x one vec4 of
// the block from there. The usual shape on a GPU, where workgroup memory is fast and the
// staged rows serve many invocations.
const TILE_KV: u32 = TILE_K / 4u;
const TILE_V: u32 = TILE / 4u;
// TILE_V x TILE / 4 invocations: one vec4 column and four rows of the block each.
const THREADS: u32 = TILE_V * TILE / 4u;
var<workgroup> tile_a: array<vec4<f32>, TILE * TILE_KV>;
var<workgroup> tile_b: array<vec4<f32>, TILE_K * TILE_V>;

@compute @workgroup_size(TILE_V, TILE / 4u)
fn matmul_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let kv = dims.k / 4u;
    let nv = dims.n / 4u;
    let row0 = wg.y * TILE;
    let colv0 = wg.x * TILE_V;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < kv; k0 += TILE_KV) {
        for (var e = li; e < TILE * TILE_KV; e += THREADS) {
            tile_a[e] = a[(row0 + e / TILE_KV) * kv + k0 + e % TILE_KV];
        }
        for (var e = li; e < TILE_K * TILE_V; e += THREADS) {
            tile_b[e] = b[(4u * k0 + e / TILE_V) * nv + colv0 + e % TILE_V];
        }
        workgroupBarrier();
        for (var kq = 0u; kq < TILE_KV; kq++) {
            let b0 = tile_b[(4u * kq) * TILE_V + lid.x];
            let b1 = tile_b[(4u * kq + 1u) * TILE_V + lid.x];
            let b2 = tile_b[(4u * kq + 2u) * TILE_V + lid.x];
            let b3 = tile_b[(4u * kq + 3u) * TILE_V + lid.x];
            for (var i = 0u; i < 4u; i++) {
                let av = tile_a[(4u * lid.y + i) * TILE_KV + kq];
                acc[i] = fma(vec4(av.x), b0, acc[i]);
                acc[i] = fma(vec4(av.y), b1, acc[i]);
                acc[i] = fma(vec4(av.z), b2, acc[i]);
                acc[i] = fma(vec4(av.w), b3, acc[i]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        c[(row0 + 4u * lid.y + i) * nv + colv0 + lid.x] = acc[i];
    }
}
