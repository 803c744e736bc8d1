//! One wgpu device for Burn and multipole. Burn opens the device (and keeps its error
//! handlers); multipole wraps the same device and queue, and this registry maps Burn's device
//! to that context, since a Burn tensor does not give its wgpu device back.

use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use burn::tensor::wgpu::{WgpuOptions, WgpuSetup};
use multipole::GpuContext;

use crate::error::{Error, Result};

static REGISTRY: Mutex<Vec<(Device, Arc<GpuContext>)>> = Mutex::new(Vec::new());

/// Kernels Burn gathers into one submit (its default is 32). Each FMA call submits Burn's
/// queued work anyway; the count only stops Burn from splitting the work between two calls.
/// The demo's Burn model makes 8 submits per digit instead of 11 (docs/benchmarks.md).
const TASKS_PER_SUBMIT: usize = 256;

/// Burn's wgpu options with `TASKS_PER_SUBMIT`, unless `CUBECL_WGPU_MAX_TASKS` sets the
/// count (an explicit count would override it).
fn options() -> WgpuOptions {
    let options = Device::wgpu_options();
    if std::env::var_os("CUBECL_WGPU_MAX_TASKS").is_some() {
        options
    } else {
        options.tasks_max(TASKS_PER_SUBMIT)
    }
}

/// The device `init_wgpu` opened: Burn's runtime can be initialised once per process.
static DEFAULT: Mutex<Option<Device>> = Mutex::new(None);

fn opened() -> Option<Device> {
    DEFAULT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Opens Burn's default wgpu device, shares it with multipole's kernels and returns it; later
/// calls return the same device. Call it before any other use of Burn's wgpu runtime, which
/// Burn initialises once per process.
#[cfg(not(target_family = "wasm"))]
pub fn init_wgpu() -> Result<Device> {
    let mut default = DEFAULT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(device) = &*default {
        return Ok(device.clone());
    }
    let (device, setup) = options()
        .init_with_setup()
        .map_err(|e| Error::Device(e.to_string()))?;
    register_wgpu(&device, &setup);
    *default = Some(device.clone());
    Ok(device)
}

/// `init_wgpu` for the browser (and async programs). Two first calls at once both try to open
/// the device, and the second fails: await the first.
pub async fn init_wgpu_async() -> Result<Device> {
    if let Some(device) = opened() {
        return Ok(device);
    }
    let (device, setup) = options()
        .init_with_setup_async()
        .await
        .map_err(|e| Error::Device(e.to_string()))?;
    register_wgpu(&device, &setup);
    *DEFAULT.lock().unwrap_or_else(|e| e.into_inner()) = Some(device.clone());
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
