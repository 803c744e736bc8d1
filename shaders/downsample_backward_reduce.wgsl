// The weight-gradient kernels without subgroups (WebGPU today, and devices without them): the
// REDUCE_THREADS lanes' sums meet in workgroup memory, halved in a fixed tree order.

var<workgroup> red_k: array<f32, REDUCE_THREADS>;
var<workgroup> red_v: array<f32, REDUCE_THREADS>;
var<workgroup> red_q: array<f32, REDUCE_THREADS>;

fn reduce_store(lid: u32, s: WeightSums) {
    red_k[lid] = s.sk;
    red_v[lid] = s.sv;
    red_q[lid] = s.sq;
    for (var half = REDUCE_THREADS / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if (lid < half) {
            red_k[lid] += red_k[lid + half];
            red_v[lid] += red_v[lid + half];
            red_q[lid] += red_q[lid + half];
        }
    }
    if (lid == 0u) {
        store_weight(s, red_k[0], red_v[0], red_q[0]);
    }
}

@compute @workgroup_size(REDUCE_THREADS)
fn weight_grads_basis(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = workgroup_index(wid, nwg);
    if (w < range.count) {
        reduce_store(lid, basis_sums(w, lid));
    }
}

@compute @workgroup_size(REDUCE_THREADS)
fn weight_grads_depthwise(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = workgroup_index(wid, nwg);
    if (w < range.count) {
        reduce_store(lid, depthwise_sums(w, lid));
    }
}
