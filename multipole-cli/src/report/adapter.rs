//! The adapter as the report describes it: name, backend, driver, features, key limits.

use std::collections::BTreeMap;

use multipole::{GpuContext, wgpu};
use serde::Serialize;

/// The adapter's part of the report's JSON.
#[derive(Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub vendor: u32,
    pub device: u32,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// Every feature the adapter offers.
    pub features: Vec<String>,
    /// The ones the library's device enables (timestamps, where offered).
    pub device_features: Vec<String>,
    pub limits: BTreeMap<&'static str, u64>,
    /// "timestamps" (GPU time of each pass) or "wall".
    pub timing: String,
}

/// The adapter's lines at the top of the report's output.
pub fn print(adapter: &AdapterReport) {
    println!(
        "adapter: {} ({} {}, {}, driver {} {})",
        adapter.name,
        adapter.device_type,
        adapter.backend,
        adapter.timing,
        adapter.driver,
        adapter.driver_info
    );
    println!("features: {}", adapter.features.join(", "));
    let limits: Vec<String> = adapter
        .limits
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("limits: {}", limits.join(", "));
}

/// The adapter's description, with the features the adapter offers (not only those the
/// context's device enables).
pub fn adapter_report(ctx: &GpuContext, timestamps: bool) -> AdapterReport {
    let info = &ctx.info;
    // The adapter's own features (the context's device enables only timestamps).
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        ..Default::default()
    }))
    .ok();
    let names = |f: wgpu::Features| -> Vec<String> {
        f.iter_names().map(|(name, _)| name.to_string()).collect()
    };
    let l = ctx.limits();
    let limits = BTreeMap::from([
        ("max_buffer_size", l.max_buffer_size),
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x as u64,
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension as u64,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage as u64,
        ),
    ]);
    AdapterReport {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        vendor: info.vendor,
        device: info.device,
        subgroup_min_size: info.subgroup_min_size,
        subgroup_max_size: info.subgroup_max_size,
        features: adapter.map_or_else(Vec::new, |a| names(a.features())),
        device_features: names(ctx.device.features()),
        limits,
        timing: if timestamps { "timestamps" } else { "wall" }.into(),
    }
}

/// A file name from the adapter's name and backend: lower case, runs of anything but
/// letters and digits as one '-'.
pub fn slug(a: &AdapterReport) -> String {
    let raw = format!("{} {}", a.name, a.backend).to_lowercase();
    let mut out = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "adapter".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names() {
        let mut a = AdapterReport {
            name: "llvmpipe (LLVM 19.1.7, 256 bits)".into(),
            backend: "Vulkan".into(),
            device_type: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            vendor: 0,
            device: 0,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            features: Vec::new(),
            device_features: Vec::new(),
            limits: BTreeMap::new(),
            timing: String::new(),
        };
        assert_eq!(slug(&a), "llvmpipe-llvm-19-1-7-256-bits-vulkan");
        a.name = "NVIDIA H100 80GB HBM3".into();
        assert_eq!(slug(&a), "nvidia-h100-80gb-hbm3-vulkan");
        a.name = "/..".into();
        a.backend = String::new();
        assert_eq!(slug(&a), "adapter");
    }
}
