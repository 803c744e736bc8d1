//! The check behind `Entry`: every kernel entry point's declared binding roles are exactly
//! the bindings its WGSL uses, in every build that holds it, and every entry point of every
//! build has a declaration. naga finds the bindings an entry point statically uses, which is
//! what wgpu puts in the pipeline's layout.

use std::collections::BTreeSet;

use crate::gpu::runtime::dispatch::Entry;
use crate::gpu::shaders::{Family, Spec, source};

fn declared() -> Vec<&'static Entry> {
    use crate::gpu::{decode, kernels};
    [
        &kernels::attention::ENTRIES[..],
        &kernels::attention_backward::ENTRIES,
        &kernels::downsample::ENTRIES,
        &kernels::downsample_backward::ENTRIES,
        &kernels::linear::ENTRIES,
        &kernels::linear_backward::ENTRIES,
        &decode::ENTRIES,
    ]
    .concat()
}

/// (entry point, bindings of group 0 it uses) of one build.
fn used(family: Family, spec: Spec) -> Vec<(String, BTreeSet<u32>)> {
    let text = source(family, spec);
    let module = naga::front::wgsl::parse_str(&text).expect("the build parses");
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .expect("the build validates");
    module
        .entry_points
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let f = info.get_entry_point(i);
            let bindings = module
                .global_variables
                .iter()
                .filter(|&(h, _)| !f[h].is_empty())
                .filter_map(|(_, g)| g.binding.as_ref())
                .map(|b| {
                    assert_eq!(b.group, 0, "{}: one bind group", ep.name);
                    b.binding
                })
                .collect();
            (ep.name.clone(), bindings)
        })
        .collect()
}

#[test]
fn every_entry_binds_what_its_wgsl_uses() {
    let entries = declared();
    let mut checked = vec![0usize; entries.len()];
    for (family, spec) in Spec::builds() {
        #[cfg(feature = "vit")]
        if family == Family::Layers {
            continue; // its own bindings (shaders/layers.rs)
        }
        let tiles = spec.head_tile == 64 && [1, 16].contains(&spec.query_tile);
        if spec.f16 || !(tiles || family == Family::Decode) {
            continue; // the bindings do not depend on the tiles or the storage type
        }
        for (name, bindings) in used(family, spec) {
            let matching: Vec<usize> = (0..entries.len())
                .filter(|&i| {
                    let e = entries[i];
                    e.family == family
                        && e.name == name
                        && e.forward.is_none_or(|f| f == spec.forward)
                })
                .collect();
            assert_eq!(
                matching.len(),
                1,
                "{family:?} {:?}: entry point {name} needs one declaration, found {}",
                spec.forward,
                matching.len()
            );
            let i = matching[0];
            let declared: BTreeSet<u32> = entries[i].roles.iter().copied().collect();
            assert_eq!(
                declared, bindings,
                "{family:?} {spec:?}: {name} declares bindings {declared:?}, its WGSL uses {bindings:?}"
            );
            assert_eq!(
                declared.len(),
                entries[i].roles.len(),
                "{name}: a role twice"
            );
            checked[i] += 1;
        }
    }
    for (e, n) in entries.iter().zip(checked) {
        assert!(n > 0, "{e:?} matches no entry point of any build");
    }
}
