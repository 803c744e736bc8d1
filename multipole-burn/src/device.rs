//! One wgpu device for Burn and multipole. Burn opens the device (and keeps its error
//! handlers); multipole wraps the same device and queue, and this registry maps Burn's device
//! to that context, since a Burn tensor does not give its wgpu device back.

use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use burn::tensor::wgpu::WgpuSetup;
use multipole::GpuContext;

use crate::error::{Error, Result};

static REGISTRY: Mutex<Vec<(Device, Arc<GpuContext>)>> = Mutex::new(Vec::new());

/// Opens Burn's default wgpu device, shares it with multipole's kernels and returns it. Call it
/// once, before any other use of Burn's wgpu runtime, and clone the device.
#[cfg(not(target_family = "wasm"))]
pub fn init_wgpu() -> Result<Device> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| Error::Device(e.to_string()))?;
    register_wgpu(&device, &setup);
    Ok(device)
}

/// `init_wgpu` for the browser (and async programs).
pub async fn init_wgpu_async() -> Result<Device> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map_err(|e| Error::Device(e.to_string()))?;
    register_wgpu(&device, &setup);
    Ok(device)
}

/// Shares a wgpu device that Burn opened (`init_with_setup`) with multipole's kernels.
/// Registering the same device again replaces its context.
pub fn register_wgpu(device: &Device, setup: &WgpuSetup) -> Arc<GpuContext> {
    let ctx = Arc::new(GpuContext::from_device(
        setup.device.clone(),
        setup.queue.clone(),
        setup.adapter.get_info(),
    ));
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.retain(|(d, _)| d != device);
    registry.push((device.clone(), ctx.clone()));
    ctx
}

/// The multipole context sharing `device`, if it is a registered wgpu device (autodiff or not:
/// Burn's device equality ignores it).
pub fn context(device: &Device) -> Option<Arc<GpuContext>> {
    let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry
        .iter()
        .find(|(d, _)| d == device)
        .map(|(_, ctx)| ctx.clone())
}
