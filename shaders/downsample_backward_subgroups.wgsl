// The weight-gradient kernels with subgroups (native devices with wgpu's SUBGROUP feature):
// each subgroup sums its lanes' partial sums at once, and one barrier brings the subgroups'
// totals together, added by lane 0 in subgroup order, instead of log2(REDUCE_THREADS) barriers
// of the tree. A device's subgroup sum has a fixed order, so the result stays deterministic.
// (No `enable subgroups;` here: naga takes subgroup operations from the device's capabilities
// and rejects the directive, which browsers need; the browser check adds it.)

var<workgroup> red_k: array<f32, REDUCE_THREADS>;
var<workgroup> red_v: array<f32, REDUCE_THREADS>;
var<workgroup> red_q: array<f32, REDUCE_THREADS>;

// The entry points pass their subgroup builtins: this lane's index in its subgroup, the
// subgroup's index in the workgroup and the number of subgroups.
struct Subgroup {
    lane: u32,
    id: u32,
    count: u32,
}

fn reduce_store(lid: u32, sg: Subgroup, s: WeightSums) {
    let tk = subgroupAdd(s.sk);
    let tv = subgroupAdd(s.sv);
    let tq = subgroupAdd(s.sq);
    if (sg.lane == 0u) {
        red_k[sg.id] = tk;
        red_v[sg.id] = tv;
        red_q[sg.id] = tq;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var sum_k = 0.0;
        var sum_v = 0.0;
        var sum_q = 0.0;
        for (var i = 0u; i < sg.count; i++) {
            sum_k += red_k[i];
            sum_v += red_v[i];
            sum_q += red_q[i];
        }
        store_weight(s, sum_k, sum_v, sum_q);
    }
}

@compute @workgroup_size(REDUCE_THREADS)
fn weight_grads_basis(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) id: u32,
    @builtin(num_subgroups) count: u32,
) {
    let w = workgroup_index(wid, nwg);
    if (w < range.count) {
        reduce_store(lid, Subgroup(lane, id, count), basis_sums(w, lid));
    }
}

@compute @workgroup_size(REDUCE_THREADS)
fn weight_grads_depthwise(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) id: u32,
    @builtin(num_subgroups) count: u32,
) {
    let w = workgroup_index(wid, nwg);
    if (w < range.count) {
        reduce_store(lid, Subgroup(lane, id, count), depthwise_sums(w, lid));
    }
}
