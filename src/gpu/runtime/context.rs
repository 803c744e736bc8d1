//! One device, its queue, its limits and the pipeline cache, shared by every kernel call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{FmaError, Result};
use crate::gpu::shaders::{self, Family, ForwardKernels, Spec};

/// The result of one popped error scope: ready at once natively, later on the web. wgpu's
/// future is Send natively and, on the web, only with its `fragile-send-sync-non-atomic-wasm`
/// feature (our `wasm-send`), which Burn turns on: then the context is Send there too.
#[cfg(any(not(target_arch = "wasm32"), feature = "wasm-send"))]
type ScopeResult = Pin<Box<dyn Future<Output = Option<wgpu::Error>> + Send>>;
#[cfg(all(target_arch = "wasm32", not(feature = "wasm-send")))]
type ScopeResult = Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

/// A GPU device ready for FMA work. Create one and share it: pipelines are cached inside.
///
/// # Errors of the device
///
/// The library wraps the device calls it makes in wgpu error scopes (on the calling thread)
/// and returns what they catch as [`FmaError::Gpu`], from plan creation and from
/// `forward`/`backward`. What else the device reports depends on who made it:
///
/// - [`GpuContext::new`] and [`GpuContext::with_limits`] create the device, so the context
///   owns its handlers: it installs a device-lost callback and an uncaptured-error handler
///   that record into [`take_error`](GpuContext::take_error). A lost device is an
///   `FmaError::Gpu` from the next call, plan creation included.
/// - [`GpuContext::from_device`] wraps a device the caller owns and installs nothing: the
///   caller's uncaptured-error handler and device-lost callback stay as they were and keep
///   receiving the caller's own errors (and wgpu's default, a panic, if none was set). The
///   library's errors still come back as `FmaError::Gpu`; a lost device shows as an
///   `FmaError::Gpu` from the next `forward` or `backward` (its readback fails), while the
///   caller's device-lost callback is the place to learn of the loss itself.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    modules: Mutex<HashMap<(Family, Spec), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(Family, &'static str, Spec), wgpu::ComputePipeline>>,
    /// Errors recorded for `take_error`: popped scopes, and the handlers `new` installs.
    errors: Arc<Mutex<Vec<String>>>,
    /// Popped error scopes whose result has not been read yet.
    pending: Mutex<Vec<ScopeResult>>,
    /// Whether plans made from now on get the Direct forward kernels (see `forward_kernels`).
    direct_forward: AtomicBool,
    /// Whether plans made from now on may use subgroup operations (see `subgroups`).
    subgroups: AtomicBool,
}

impl GpuContext {
    /// Finds an adapter (high-performance preferred; `WGPU_BACKEND` and friends are honoured
    /// natively) and opens a device with the adapter's own limits, so long sequences fit.
    /// Of the optional features timestamp queries and SHADER_F16 are enabled, where offered.
    /// The context owns the device and its error handlers (see the type's documentation).
    pub async fn new() -> Result<GpuContext> {
        Self::with_limits(|adapter_limits| adapter_limits).await
    }

    /// `new` with the limits `limits` makes of the adapter's (to test small devices, or to
    /// leave room for other work).
    pub async fn with_limits(
        limits: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
    ) -> Result<GpuContext> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|_| FmaError::NoAdapter)?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("multipole"),
                // Timestamps time the passes (GpuTimer); SHADER_F16 lets plans store f16
                // (Precision::F16); SUBGROUP speeds up reductions (`subgroups`). None is
                // required: each is enabled where offered.
                required_features: adapter.features()
                    & (wgpu::Features::TIMESTAMP_QUERY
                        | wgpu::Features::SHADER_F16
                        | wgpu::Features::SUBGROUP),
                required_limits: limits(adapter.limits()),
                ..Default::default()
            })
            .await
            .map_err(|e| FmaError::RequestDevice(e.to_string()))?;
        let ctx = Self::wrap(device, queue, adapter.get_info());
        // This device is ours: its loss and the errors of calls outside the library's scopes
        // (a caller's work on `ctx.device`) are reported through `take_error`, not by panics.
        let lost = ctx.errors.clone();
        ctx.device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut v) = lost.lock() {
                v.push(format!("device lost ({reason:?}): {message}"));
            }
        });
        let sink = ctx.errors.clone();
        ctx.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut v) = sink.lock() {
                    v.push(e.to_string());
                }
            }));
        Ok(ctx)
    }

    /// Wraps a device the caller already has, to share it with other GPU work. The device's
    /// uncaptured-error handler and device-lost callback are left to the caller; the library
    /// catches the errors of its own calls with error scopes (see the type's documentation).
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> GpuContext {
        Self::wrap(device, queue, info)
    }

    fn wrap(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> GpuContext {
        GpuContext {
            device,
            queue,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            errors: Arc::new(Mutex::new(Vec::new())),
            pending: Mutex::new(Vec::new()),
            direct_forward: AtomicBool::new(info.device_type == wgpu::DeviceType::Cpu),
            subgroups: AtomicBool::new(true),
            info,
        }
    }

    /// Blocking `new` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<GpuContext> {
        crate::gpu::runtime::block_on(Self::new())
    }

    /// The forward kernels that plans made from now on use: `Direct` on a CPU adapter
    /// (lavapipe, where reading keys straight from storage beats staging them), `Tiled`
    /// elsewhere (GPUs, and browsers, which do not say what the adapter is).
    pub fn forward_kernels(&self) -> ForwardKernels {
        if self.direct_forward.load(Ordering::Relaxed) {
            ForwardKernels::Direct
        } else {
            ForwardKernels::Tiled
        }
    }

    /// Overrides the adapter's choice of forward kernels for plans made from now on (plans
    /// already made keep theirs): to test or measure both on one adapter.
    pub fn set_forward_kernels(&self, kernels: ForwardKernels) {
        self.direct_forward
            .store(kernels == ForwardKernels::Direct, Ordering::Relaxed);
    }

    /// Whether plans made from now on reduce with subgroup operations: where the device has
    /// wgpu's `SUBGROUP` feature (never on the web backend today) and `set_subgroups` has not
    /// turned them off.
    pub fn subgroups(&self) -> bool {
        self.subgroups.load(Ordering::Relaxed)
            && self.device.features().contains(wgpu::Features::SUBGROUP)
    }

    /// Allows (`true`, the default) or forbids subgroup operations in plans made from now on:
    /// to test or measure both paths on one device.
    pub fn set_subgroups(&self, on: bool) {
        self.subgroups.store(on, Ordering::Relaxed);
    }

    /// The device's limits.
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// The largest buffer one storage binding may hold (the adapter's limits, and u32 range
    /// for the shaders' indices).
    pub(crate) fn max_binding(&self) -> u64 {
        let limits = self.limits();
        limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(u32::MAX as u64 & !3)
    }

    /// One line naming the adapter, backend and driver, for logs and benchmark records.
    pub fn describe(&self) -> String {
        // Browsers hide the adapter's name and driver.
        if self.info.name.is_empty() {
            return format!(
                "{:?} (the browser does not name the adapter)",
                self.info.backend
            );
        }
        format!(
            "{} ({:?}, {} {})",
            self.info.name, self.info.backend, self.info.driver, self.info.driver_info
        )
    }

    /// Returns the first device error (validation, out of memory, internal, device lost)
    /// recorded since the last call: errors caught by the library's error scopes whose result
    /// is in (natively at once; on the web once the browser has answered), and for contexts
    /// made by `new`, everything the device reported. `FmaPlan::forward` checks it itself;
    /// callers of `FmaPlan::encode` call it after their own submission (for a `from_device`
    /// context, errors of the caller's own submission go to the caller's handler instead).
    pub fn take_error(&self) -> Result<()> {
        self.collect_ready()?;
        let mut v = self
            .errors
            .lock()
            .map_err(|_| FmaError::Gpu("error log poisoned".into()))?;
        match v.drain(..).next() {
            Some(e) => Err(FmaError::Gpu(e)),
            None => Ok(()),
        }
    }

    /// Runs `calls` (device calls with no `.await` inside: wgpu's scopes belong to a thread)
    /// inside error scopes for validation, out-of-memory and internal errors, so that their
    /// errors come back from `take_error` instead of the device's uncaptured-error handler.
    pub(crate) fn scoped<T>(&self, calls: impl FnOnce() -> T) -> T {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let out = calls();
        // Innermost first, as wgpu requires.
        let results: [ScopeResult; 3] = [
            Box::pin(internal.pop()),
            Box::pin(validation.pop()),
            Box::pin(oom.pop()),
        ];
        match self.pending.lock() {
            Ok(mut p) => p.extend(results),
            Err(_) => self.record("error scopes poisoned".into()),
        }
        out
    }

    fn record(&self, error: String) {
        if let Ok(mut v) = self.errors.lock() {
            v.push(error);
        }
    }

    /// Moves the results of popped scopes that are in into the error log, without waiting.
    fn collect_ready(&self) -> Result<()> {
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| FmaError::Gpu("error scopes poisoned".into()))?;
        let mut cx = Context::from_waker(Waker::noop());
        let mut caught = Vec::new();
        pending.retain_mut(|f| match f.as_mut().poll(&mut cx) {
            Poll::Ready(Some(e)) => {
                caught.push(e.to_string());
                false
            }
            Poll::Ready(None) => false,
            Poll::Pending => true,
        });
        drop(pending);
        caught.into_iter().for_each(|e| self.record(e));
        Ok(())
    }

    /// Waits for every popped scope's result (on the web the browser answers asynchronously)
    /// and moves the errors into the log.
    async fn settle(&self) -> Result<()> {
        let waiting = std::mem::take(
            &mut *self
                .pending
                .lock()
                .map_err(|_| FmaError::Gpu("error scopes poisoned".into()))?,
        );
        for f in waiting {
            if let Some(e) = f.await {
                self.record(e.to_string());
            }
        }
        Ok(())
    }

    /// A buffer holding `contents`, written through the queue. (wgpu's `create_buffer_init`
    /// maps the buffer at creation and panics when the device is lost; this records an error.)
    pub(crate) fn buffer_with(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let size = (contents.len() as u64).next_multiple_of(4).max(4);
        let mut padded = contents.to_vec();
        padded.resize(size as usize, 0);
        self.scoped(|| {
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: usage | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.queue.write_buffer(&buffer, 0, &padded);
            buffer
        })
    }

    /// The cached pipeline of `entry` in `family` built for `spec`.
    pub(crate) fn pipeline(
        &self,
        family: Family,
        entry: &'static str,
        spec: Spec,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = self
            .pipelines
            .lock()
            .map_err(poisoned)?
            .get(&(family, entry, spec))
        {
            return Ok(p.clone());
        }
        let pipeline = self.scoped(|| -> Result<wgpu::ComputePipeline> {
            let module = {
                let mut modules = self.modules.lock().map_err(poisoned)?;
                modules
                    .entry((family, spec))
                    .or_insert_with(|| {
                        self.device
                            .create_shader_module(wgpu::ShaderModuleDescriptor {
                                label: Some(entry),
                                source: wgpu::ShaderSource::Wgsl(
                                    shaders::source(family, spec).into(),
                                ),
                            })
                    })
                    .clone()
            };
            Ok(self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                }))
        })?;
        self.take_error()?;
        self.pipelines
            .lock()
            .map_err(poisoned)?
            .insert((family, entry, spec), pipeline.clone());
        Ok(pipeline)
    }

    /// Waits for `buffer` (MAP_READ) to map and returns its first `len` values as f32 (the
    /// ViT's logits; the attention plans read through `host::decode_values`).
    #[cfg(feature = "vit")]
    pub(crate) async fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buffer, (len * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Waits for `buffer` (MAP_READ) to map and returns its first `bytes` bytes. Never blocks
    /// on the web: there the browser resolves the mapping.
    pub(crate) async fn read_bytes(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.scoped(|| {
            buffer.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
                let _ = tx.send(r);
            })
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| FmaError::Gpu(e.to_string()))?;
        rx.await
            .map_err(|_| FmaError::Gpu("the device was lost before the readback finished".into()))?
            .map_err(|e| FmaError::Gpu(e.to_string()))?;
        // Copy and unmap before anything can return early: the readback buffers are reused,
        // and one left mapped would fail every later call on the plan.
        let out = buffer
            .get_mapped_range(0..bytes)
            .map(|range| range.to_vec())
            .map_err(|e| FmaError::Gpu(e.to_string()));
        buffer.unmap();
        self.settle().await?;
        self.take_error()?;
        let out = out?;
        Ok(out)
    }
}

fn poisoned<T>(_: T) -> FmaError {
    FmaError::Gpu("pipeline cache poisoned".into())
}
