//! Every shader, in every specialisation the crate can build, parses and validates with naga
//! under WebGPU's default capabilities (what a browser accepts).

use multipole::gpu::shaders::{Family, Spec, source};

fn validate(family: Family, spec: Spec) -> Result<(), String> {
    let text = source(family, spec);
    let module = naga::front::wgsl::parse_str(&text).map_err(|e| e.emit_to_string(&text))?;
    // f16 builds need WebGPU's optional shader-f16, subgroup builds its subgroups (compute
    // only), nothing else.
    let mut capabilities = naga::valid::Capabilities::default();
    if spec.f16 {
        capabilities |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    if spec.subgroups {
        capabilities |= naga::valid::Capabilities::SUBGROUP;
    }
    let mut validator =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
    if spec.subgroups {
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator
        .validate(&module)
        .map_err(|e| e.emit_to_string(&text))?;
    Ok(())
}

#[test]
fn every_specialisation_validates() {
    let specs = Spec::all();
    assert_eq!(specs.len(), 4 * 7, "head tiles x query tiles");
    let builds = Spec::builds();
    assert_eq!(
        builds.len(),
        specs.len() * (Family::ALL.len() + Family::STORES_F16.len() + 4) + 1 + 2 * 4,
        "every family in f32, the forward families in f16 too, the Direct attention \
         kernels in both, the backward's Lanes kernels in f32, the downsampling backward \
         with subgroups, the decoders' one build, and the O(n) variant's two families per \
         head tile"
    );
    for (family, spec) in builds {
        if let Err(e) = validate(family, spec) {
            panic!("{family:?} {spec:?} does not validate:\n{e}");
        }
    }
    // The Direct forward kernels (CPU adapters) are native only, but validated the same way.
    let forward = Spec::all_forward();
    assert_eq!(forward.len(), 2 * specs.len(), "Tiled and Direct");
    for spec in forward {
        if let Err(e) = validate(Family::Attention, spec) {
            panic!("Attention {spec:?} does not validate:\n{e}");
        }
    }
}

/// An f16 build really stores f16 (and only there): its tensors are declared through STORE.
#[test]
fn f16_builds_store_f16() {
    let spec = Spec::for_shape(64, 32).unwrap();
    for family in Family::ALL {
        let f32_text = source(family, spec);
        assert!(f32_text.contains("alias STORE = f32;"), "{family:?}");
        assert!(!f32_text.contains("enable f16;"), "{family:?}");
        let f16_text = source(family, spec.with_f16(true));
        assert_eq!(
            f16_text.starts_with("enable f16;\nalias STORE = f16;"),
            family.stores_f16(),
            "{family:?}"
        );
    }
}

/// Workgroup memory as WebGPU counts it: every workgroup variable rounded up to 16 bytes.
fn workgroup_bytes(family: Family, spec: Spec) -> u32 {
    let module = naga::front::wgsl::parse_str(&source(family, spec)).unwrap();
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    module
        .global_variables
        .iter()
        .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
        .map(|(_, v)| layouter[v.ty].size.div_ceil(16) * 16)
        .sum()
}

#[test]
fn direct_forward_kernels_count_their_workgroup_memory() {
    for spec in Spec::all_forward() {
        let bytes = workgroup_bytes(Family::Attention, spec);
        assert_eq!(bytes, spec.attention_workgroup_bytes(), "{spec:?}");
        assert!(bytes <= 16384, "{spec:?}: {bytes} bytes");
    }
}

#[test]
fn workgroup_memory_fits_webgpu_default() {
    for spec in Spec::all() {
        let bytes = workgroup_bytes(Family::Attention, spec);
        assert_eq!(
            bytes,
            spec.attention_workgroup_bytes(),
            "{spec:?}: the Rust twin must count as the shader declares"
        );
        assert!(
            bytes <= 16384,
            "{spec:?}: attention uses {bytes} bytes of workgroup memory"
        );
        assert!(spec.key_tile() >= 8 && spec.key_tile() <= 32, "{spec:?}");
        assert_eq!(
            spec.key_tile() % 4,
            0,
            "{spec:?}: keys are added four at a time"
        );
        let bytes = workgroup_bytes(Family::AttentionBackward, spec);
        assert_eq!(bytes, spec.backward_workgroup_bytes(), "{spec:?}: backward");
        assert!(bytes <= 16384, "{spec:?}: backward uses {bytes} bytes");
        assert!(
            spec.back_tile() >= 8,
            "{spec:?}: backward tile {}",
            spec.back_tile()
        );
        for family in [Family::Downsample, Family::DownsampleBackward] {
            let bytes = workgroup_bytes(family, spec);
            assert!(
                bytes <= 16384,
                "{spec:?}: {family:?} uses {bytes} bytes of workgroup memory"
            );
        }
    }
}

/// The layer kernels (one build, no specialisation) validate, every entry point exists, and
/// they use no workgroup memory.
#[cfg(feature = "vit")]
#[test]
fn layer_kernels_validate() {
    use multipole::gpu::layers::LAYER_ENTRIES;
    if let Err(e) = validate(Family::Layers, Spec::LAYERS) {
        panic!("layers.wgsl does not validate:\n{e}");
    }
    let module = naga::front::wgsl::parse_str(&source(Family::Layers, Spec::LAYERS)).unwrap();
    let mut names: Vec<&str> = module
        .entry_points
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    names.sort();
    let mut want = LAYER_ENTRIES.to_vec();
    want.sort();
    assert_eq!(
        names, want,
        "LAYER_ENTRIES must list every entry point once"
    );
    assert_eq!(workgroup_bytes(Family::Layers, Spec::LAYERS), 0);
}
