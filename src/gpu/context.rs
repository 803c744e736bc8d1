//! One device, its queue, its limits and the pipeline cache, shared by every kernel call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::shaders::{self, Family, Spec};
use crate::error::{FmaError, Result};

/// A GPU device ready for FMA work. Create one and share it: pipelines are cached inside.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    modules: Mutex<HashMap<(Family, Spec), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(Family, &'static str, Spec), wgpu::ComputePipeline>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl GpuContext {
    /// Finds an adapter (high-performance preferred; `WGPU_BACKEND` and friends are honoured
    /// natively) and opens a device with the adapter's own limits, so long sequences fit.
    /// Of the optional features only timestamp queries are enabled, where offered.
    pub async fn new() -> Result<GpuContext> {
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
                // Timestamps only time the passes (GpuTimer); nothing else needs a feature.
                required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| FmaError::RequestDevice(e.to_string()))?;
        Ok(Self::from_device(device, queue, adapter.get_info()))
    }

    /// Wraps a device the caller already has (to share it with other GPU work).
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> GpuContext {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut v) = lost.lock() {
                v.push(format!("device lost ({reason:?}): {message}"));
            }
        });
        let sink = errors.clone();
        // Report device errors through `Result`s instead of wgpu's default panic.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        GpuContext {
            device,
            queue,
            info,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            errors,
        }
    }

    /// Blocking `new` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<GpuContext> {
        pollster::block_on(Self::new())
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

    /// Returns the first device error (validation, out of memory, device lost) recorded since
    /// the last call. `FmaPlan::forward` checks it itself; callers of `FmaPlan::encode` call
    /// it after their own submission.
    pub fn take_error(&self) -> Result<()> {
        let mut v = self
            .errors
            .lock()
            .map_err(|_| FmaError::Gpu("error log poisoned".into()))?;
        match v.drain(..).next() {
            Some(e) => Err(FmaError::Gpu(e)),
            None => Ok(()),
        }
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
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut padded = contents.to_vec();
        padded.resize(size as usize, 0);
        self.queue.write_buffer(&buffer, 0, &padded);
        buffer
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
        let module = {
            let mut modules = self.modules.lock().map_err(poisoned)?;
            modules
                .entry((family, spec))
                .or_insert_with(|| {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(entry),
                            source: wgpu::ShaderSource::Wgsl(shaders::source(family, spec).into()),
                        })
                })
                .clone()
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        self.take_error()?;
        self.pipelines
            .lock()
            .map_err(poisoned)?
            .insert((family, entry, spec), pipeline.clone());
        Ok(pipeline)
    }

    /// Waits for `buffer` (MAP_READ) to map and returns its first `len` values as f32.
    pub(crate) async fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buffer, (len * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Waits for `buffer` (MAP_READ) to map and returns its first `bytes` bytes. Never blocks
    /// on the web: there the browser resolves the mapping.
    pub(crate) async fn read_bytes(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        buffer.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| FmaError::Gpu(e.to_string()))?;
        rx.await
            .map_err(|_| FmaError::Gpu("the device was lost before the readback finished".into()))?
            .map_err(|e| FmaError::Gpu(e.to_string()))?;
        self.take_error()?;
        let out = buffer
            .get_mapped_range(0..bytes)
            .map_err(|e| FmaError::Gpu(e.to_string()))?
            .to_vec();
        buffer.unmap();
        Ok(out)
    }
}

fn poisoned<T>(_: T) -> FmaError {
    FmaError::Gpu("pipeline cache poisoned".into())
}
