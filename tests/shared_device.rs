//! A device wrapped by `GpuContext::from_device` stays its owner's: the library catches its own
//! errors with error scopes and returns them as `FmaError::Gpu`, while the owner's
//! uncaptured-error handler and device-lost callback keep receiving everything else.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use multipole::{FmaConfig, FmaError, FmaPlan, GpuContext, Shape};

/// A device with `limits` applied to the adapter's, with an uncaptured-error handler and a
/// device-lost callback that record what they receive, wrapped by `from_device`.
struct Owned {
    ctx: GpuContext,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<AtomicUsize>,
}

fn owned_device(limits: impl FnOnce(wgpu::Limits) -> wgpu::Limits) -> Owned {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("GPU tests need an adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits(adapter.limits()),
        ..Default::default()
    }))
    .expect("a device");
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        sink.lock().unwrap().push(e.to_string());
    }));
    let lost = Arc::new(AtomicUsize::new(0));
    let count = lost.clone();
    device.set_device_lost_callback(move |_, _| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    Owned {
        ctx: GpuContext::from_device(device, queue, adapter.get_info()),
        errors,
        lost,
    }
}

/// A validation error made by the caller, outside the library: a buffer may not be both
/// mappable for reading and a storage buffer.
fn callers_own_mistake(device: &wgpu::Device) {
    let _ = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's bad buffer"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
}

#[test]
fn the_callers_handler_still_receives_the_callers_errors() {
    let owned = owned_device(|l| l);
    // The library's own work on the device runs and leaves the handler alone.
    let shape = Shape::new(1, 1, 64, 16);
    let plan = FmaPlan::new(&owned.ctx, shape, &FmaConfig::new(8, 2), None).unwrap();
    let (q, k, v) = common::qkv(3, shape);
    plan.forward_blocking(&owned.ctx, &q, &k, &v).unwrap();
    assert!(owned.errors.lock().unwrap().is_empty());

    callers_own_mistake(&owned.ctx.device);
    let seen = owned.errors.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the caller's handler got {seen:?}");
    assert!(seen[0].contains("caller's bad buffer"), "{seen:?}");
    // ... and the library does not report the caller's error as its own.
    owned.ctx.take_error().unwrap();
}

#[test]
fn library_errors_come_back_typed_and_skip_the_callers_handler() {
    // Workgroups of at most 4 invocations: the kernels' pipelines are invalid on this device,
    // which wgpu reports as a validation error when the plan builds them.
    let owned = owned_device(|l| wgpu::Limits {
        max_compute_invocations_per_workgroup: 4,
        max_compute_workgroup_size_x: 4,
        max_compute_workgroup_size_y: 4,
        max_compute_workgroup_size_z: 4,
        ..l
    });
    let shape = Shape::new(1, 1, 64, 16);
    let err = FmaPlan::new(&owned.ctx, shape, &FmaConfig::new(8, 2), None)
        .err()
        .expect("a plan whose pipelines the device refuses");
    assert!(
        matches!(err, FmaError::Gpu(ref s) if s.to_lowercase().contains("workgroup")),
        "{err}"
    );
    let err = multipole::DensePlan::new(&owned.ctx, shape, false, 1.0)
        .err()
        .expect("a dense plan whose pipeline the device refuses");
    assert!(matches!(err, FmaError::Gpu(_)), "{err}");
    let seen = owned.errors.lock().unwrap().clone();
    assert!(
        seen.is_empty(),
        "library errors reached the caller: {seen:?}"
    );

    // The owner's handler is still the one installed.
    callers_own_mistake(&owned.ctx.device);
    assert_eq!(owned.errors.lock().unwrap().len(), 1);
}

#[test]
fn a_lost_shared_device_is_a_typed_error_and_the_owner_is_told() {
    let owned = owned_device(|l| l);
    let shape = Shape::new(1, 1, 64, 16);
    let plan = FmaPlan::new(&owned.ctx, shape, &FmaConfig::new(8, 2), None).unwrap();
    let (q, k, v) = common::qkv(1, shape);
    plan.forward_blocking(&owned.ctx, &q, &k, &v).unwrap();
    owned.ctx.device.destroy();
    let err = plan.forward_blocking(&owned.ctx, &q, &k, &v).unwrap_err();
    assert!(matches!(err, FmaError::Gpu(_)), "{err}");
    assert_eq!(
        owned.lost.load(Ordering::SeqCst),
        1,
        "the owner's device-lost callback was replaced"
    );
}
