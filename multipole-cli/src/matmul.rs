//! The benchmark's calibration: an f32 matrix product C = A B (shaders/matmul.wgsl) timed in
//! the same run as the attention kernels. Its best variant's GFLOP/s is what this adapter
//! attains on dense f32 arithmetic here and now, so `fraction_of_matmul` (a kernel's rate over
//! it) says how much of the adapter a kernel uses, whatever the adapter.
//!
//! Which variant is fastest depends on the adapter: on a CPU adapter (lavapipe) invocations
//! that load their own vec4s and never wait at a barrier win; on a GPU, tiles staged in
//! workgroup memory do. Every variant is measured and the best one is the calibration.

use std::time::Instant;

use multipole::{FmaError, GpuContext, GpuTimer, Result, wgpu};

const SHADER: &str = include_str!("../../shaders/matmul.wgsl");

/// Binding indices of matmul.wgsl (`B_<NAME>` in its header).
const BINDINGS: [(&str, u32); 4] = [("B_DIMS", 0), ("B_A", 1), ("B_B", 2), ("B_C", 3)];
/// Workgroup of the register variants (invocations along a row of C, along a column).
const WG_X: u32 = 8;
const WG_Y: u32 = 8;
/// The tiled variant's block of C per workgroup; M and N must be multiples of it.
pub const TILE: usize = 64;
/// The tiled variant's K-step per barrier; K must be a multiple of it.
const TILE_K: usize = 16;

/// One way of computing the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Each invocation computes `rows` x (4 `cols`) outputs from vec4 loads straight from
    /// storage, with no workgroup memory.
    Register { rows: u32, cols: u32 },
    /// TILE x TILE blocks staged in workgroup memory, a barrier per K-step.
    Tiled,
}

/// Every variant the calibration measures.
pub const VARIANTS: [Variant; 4] = [
    Variant::Register { rows: 4, cols: 1 },
    Variant::Register { rows: 8, cols: 1 },
    Variant::Register { rows: 4, cols: 2 },
    Variant::Tiled,
];

impl Variant {
    /// The name in records: `register4x4` (rows x columns of C per invocation), `tiled64`.
    pub fn name(&self) -> String {
        match self {
            Variant::Register { rows, cols } => format!("register{rows}x{}", 4 * cols),
            Variant::Tiled => format!("tiled{TILE}"),
        }
    }

    fn entry(&self) -> &'static str {
        match self {
            Variant::Register { .. } => "matmul_register",
            Variant::Tiled => "matmul_tiled",
        }
    }

    /// matmul.wgsl with this variant's constants in its header.
    pub fn source(&self) -> String {
        let (rows, cols) = match *self {
            Variant::Register { rows, cols } => (rows, cols),
            Variant::Tiled => (1, 1),
        };
        let consts = [
            ("WG_X", WG_X),
            ("WG_Y", WG_Y),
            ("ROWS", rows),
            ("COLS", cols),
            ("TILE", TILE as u32),
            ("TILE_K", TILE_K as u32),
        ];
        let mut s = String::new();
        for (name, value) in consts.iter().chain(&BINDINGS) {
            s.push_str(&format!("const {name}: u32 = {value}u;\n"));
        }
        s.push_str(SHADER);
        s
    }

    /// Workgroups along N and along M for an M x N product.
    fn workgroups(&self, m: usize, n: usize) -> (u32, u32) {
        match *self {
            Variant::Register { rows, cols } => (
                (n as u32 / 4).div_ceil(cols * WG_X),
                (m as u32).div_ceil(rows * WG_Y),
            ),
            Variant::Tiled => ((n / TILE) as u32, (m / TILE) as u32),
        }
    }
}

/// An M x K by K x N product the kernels accept: M and N multiples of TILE (which the register
/// blocks divide too), K a multiple of TILE_K, all positive.
pub fn check_dims(m: usize, n: usize, k: usize) -> Result<()> {
    if m == 0
        || n == 0
        || k == 0
        || !m.is_multiple_of(TILE)
        || !n.is_multiple_of(TILE)
        || !k.is_multiple_of(TILE_K)
    {
        return Err(FmaError::InvalidConfig(format!(
            "matmul {m}x{k} by {k}x{n}: M and N must be positive multiples of {TILE}, K of {TILE_K}"
        )));
    }
    Ok(())
}

/// Values in [-1, 1) from a seeded generator, so runs repeat.
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One entry of A B in f64 and the sum of |a b| over its terms (the scale of f32 rounding).
fn entry(a: &[f32], b: &[f32], n: usize, k: usize, i: usize, j: usize) -> (f64, f64) {
    (0..k).fold((0.0, 0.0), |(s, abs), t| {
        let p = a[i * k + t] as f64 * b[t * n + j] as f64;
        (s + p, abs + p.abs())
    })
}

/// The largest error of `c` over `samples` entries spread over it, each relative to a bound
/// on f32 rounding (4 sqrt(K) eps sum |a b|): above 1 means wrong.
pub fn spot_check(a: &[f32], b: &[f32], c: &[f32], dims: (usize, usize, usize)) -> f64 {
    let (m, n, k) = dims;
    let samples = 64usize.min(m * n);
    let mut worst = 0.0f64;
    for s in 0..samples {
        // Rows spread evenly over all of C, columns by a stride coprime with most sizes.
        let at = (s * m / samples) * n + (s * 7919 + s / 3) % n;
        let (want, abs) = entry(a, b, n, k, at / n, at % n);
        let bound = 4.0 * (k as f64).sqrt() * f32::EPSILON as f64 * abs + 1e-30;
        let got = c[at] as f64;
        let err = if got.is_finite() {
            (got - want).abs() / bound
        } else {
            f64::INFINITY
        };
        worst = worst.max(err);
    }
    worst
}

/// One variant's timings and its spot check.
pub struct Measured {
    pub variant: Variant,
    pub median_ms: f64,
    pub min_ms: f64,
    pub wall_median_ms: f64,
    /// "timestamps" or "wall".
    pub timing: &'static str,
    /// `spot_check` of the last run's C.
    pub error: f64,
}

/// The GPU buffers of one product.
struct Buffers {
    dims: (usize, usize, usize),
    uniform: wgpu::Buffer,
    a: wgpu::Buffer,
    b: wgpu::Buffer,
    c: wgpu::Buffer,
}

impl Buffers {
    fn new(ctx: &GpuContext, dims: (usize, usize, usize), a: &[f32], b: &[f32]) -> Result<Self> {
        let (m, n, k) = dims;
        check_dims(m, n, k)?;
        let max = ctx
            .limits()
            .max_storage_buffer_binding_size
            .min(ctx.limits().max_buffer_size);
        let largest = (m.max(n) * k).max(m * n) as u64 * 4;
        if largest > max {
            return Err(FmaError::InvalidConfig(format!(
                "matmul of {m}x{k} by {k}x{n} needs {largest} bytes in one binding; the adapter allows {max}"
            )));
        }
        let storage = |label, data: &[f32]| {
            let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (data.len() * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
            buf
        };
        let uniform = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("matmul dims"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let words = [m as u32, n as u32, k as u32, 0];
        ctx.queue
            .write_buffer(&uniform, 0, bytemuck::cast_slice(&words));
        let c = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("matmul c"),
            size: (m * n * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Buffers {
            dims,
            uniform,
            a: storage("matmul a", a),
            b: storage("matmul b", b),
            c,
        })
    }

    fn pipeline(&self, ctx: &GpuContext, v: Variant) -> (wgpu::ComputePipeline, wgpu::BindGroup) {
        let module = ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("matmul"),
                source: wgpu::ShaderSource::Wgsl(v.source().into()),
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("matmul"),
                layout: None,
                module: &module,
                entry_point: Some(v.entry()),
                compilation_options: Default::default(),
                cache: None,
            });
        let entries = [&self.uniform, &self.a, &self.b, &self.c]
            .iter()
            .zip(BINDINGS)
            .map(|(buf, (_, binding))| wgpu::BindGroupEntry {
                binding,
                resource: buf.as_entire_binding(),
            })
            .collect::<Vec<_>>();
        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("matmul"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        (pipeline, group)
    }

    /// Clears C, then runs `v` once per element of the returned list: (GPU ms where timed,
    /// wall ms).
    fn run(
        &self,
        ctx: &GpuContext,
        v: Variant,
        timer: Option<&GpuTimer>,
        times: usize,
    ) -> Result<Vec<(Option<f64>, f64)>> {
        let (pipeline, group) = self.pipeline(ctx, v);
        let (m, n, _) = self.dims;
        let (x, y) = v.workgroups(m, n);
        let limit = ctx.limits().max_compute_workgroups_per_dimension;
        if x > limit || y > limit {
            return Err(FmaError::InvalidConfig(format!(
                "matmul {}: {x}x{y} workgroups, the adapter allows {limit} per dimension",
                v.name()
            )));
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.clear_buffer(&self.c, 0, None);
        ctx.queue.submit([enc.finish()]);
        let mut out = Vec::with_capacity(times);
        for _ in 0..times {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("matmul"),
                    timestamp_writes: timer.and_then(|t| t.pass(0)),
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
            if let Some(t) = timer {
                t.resolve(&mut enc);
            }
            let start = Instant::now();
            ctx.queue.submit([enc.finish()]);
            wait(ctx)?;
            let wall = start.elapsed().as_secs_f64() * 1e3;
            ctx.take_error()?;
            let gpu = match timer {
                Some(t) => pollster::block_on(t.read(ctx, 1))?.first().copied(),
                None => None,
            };
            out.push((gpu, wall));
        }
        Ok(out)
    }

    /// C, read back.
    fn read_c(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let bytes = self.c.size();
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("matmul readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&self.c, 0, &staging, 0, bytes);
        ctx.queue.submit([enc.finish()]);
        let (send, recv) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = send.send(r);
        });
        wait(ctx)?;
        recv.recv()
            .map_err(|e| FmaError::Gpu(e.to_string()))?
            .map_err(|e| FmaError::Gpu(e.to_string()))?;
        let data = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| FmaError::Gpu(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        staging.unmap();
        ctx.take_error()?;
        Ok(data)
    }
}

fn wait(ctx: &GpuContext) -> Result<()> {
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| FmaError::Gpu(e.to_string()))
}

/// C = A B on the GPU with one variant (A is M x K, B is K x N, row-major).
#[cfg(test)]
pub fn product(
    ctx: &GpuContext,
    v: Variant,
    dims: (usize, usize, usize),
    a: &[f32],
    b: &[f32],
) -> Result<Vec<f32>> {
    let bufs = Buffers::new(ctx, dims, a, b)?;
    bufs.run(ctx, v, None, 1)?;
    bufs.read_c(ctx)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Every variant on a `size`^3 product: one warm-up and `runs` timed runs each; a variant
/// whose C fails the spot check is an error (its rate would mean nothing).
pub fn measure(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    size: usize,
    runs: usize,
) -> Result<Vec<Measured>> {
    let dims = (size, size, size);
    let (a, b) = (values(size * size, 3), values(size * size, 5));
    let bufs = Buffers::new(ctx, dims, &a, &b)?;
    let mut out = Vec::new();
    for v in VARIANTS {
        let times = bufs.run(ctx, v, timer, runs.max(1) + 1)?;
        let timed = &times[1..];
        let mut wall: Vec<f64> = timed.iter().map(|t| t.1).collect();
        let gpu: Vec<f64> = timed.iter().filter_map(|t| t.0).collect();
        let timing = if gpu.len() == timed.len() {
            "timestamps"
        } else {
            "wall"
        };
        let mut used = if timing == "wall" { wall.clone() } else { gpu };
        let error = spot_check(&a, &b, &bufs.read_c(ctx)?, dims);
        if error > 1.0 {
            return Err(FmaError::Gpu(format!(
                "matmul {} computed a wrong product: error {error:.2e} of the rounding bound",
                v.name()
            )));
        }
        out.push(Measured {
            variant: v,
            min_ms: used.iter().copied().fold(f64::INFINITY, f64::min),
            median_ms: median(&mut used),
            wall_median_ms: median(&mut wall),
            timing,
            error,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_validates_with_naga() {
        for v in VARIANTS {
            let text = v.source();
            let module = naga::front::wgsl::parse_str(&text)
                .unwrap_or_else(|e| panic!("{}: {}", v.name(), e.emit_to_string(&text)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", v.name(), e.emit_to_string(&text)));
        }
    }

    #[test]
    fn names_say_the_block() {
        let names: Vec<String> = VARIANTS.iter().map(Variant::name).collect();
        assert_eq!(
            names,
            ["register4x4", "register8x4", "register4x8", "tiled64"]
        );
    }

    #[test]
    fn sizes_the_kernels_cannot_cover_are_refused() {
        assert!(check_dims(64, 128, 16).is_ok());
        for (m, n, k) in [(0, 64, 16), (65, 64, 16), (64, 96, 16), (64, 64, 20)] {
            assert!(check_dims(m, n, k).is_err(), "{m} {n} {k}");
        }
    }

    #[test]
    fn the_spot_check_catches_a_wrong_entry() {
        let (m, n, k) = (64, 64, 32);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let c: Vec<f32> = (0..m * n)
            .map(|at| entry(&a, &b, n, k, at / n, at % n).0 as f32)
            .collect();
        assert!(spot_check(&a, &b, &c, (m, n, k)) <= 1.0);
        let mut wrong = c.clone();
        wrong[0] += 0.01;
        assert!(spot_check(&a, &b, &wrong, (m, n, k)) > 1.0);
        let mut nan = c.clone();
        nan[0] = f32::NAN;
        assert!(spot_check(&a, &b, &nan, (m, n, k)).is_infinite());
        // A C right only in its first eighth of rows (a kernel that stopped early) fails: the
        // samples cover every part of C.
        let (big_m, big_n) = (2048, 2048);
        let (a, b) = (values(big_m * 4, 3), values(4 * big_n, 4));
        let partial: Vec<f32> = (0..big_m * big_n)
            .map(|at| {
                if at < big_m * big_n / 8 {
                    entry(&a, &b, big_n, 4, at / big_n, at % big_n).0 as f32
                } else {
                    0.0
                }
            })
            .collect();
        assert!(spot_check(&a, &b, &partial, (big_m, big_n, 4)) > 1.0);
    }

    /// Every variant against the CPU product on a non-square case (M != N != K), entry by
    /// entry: a wrong index in any of them shows here.
    #[test]
    fn every_variant_matches_the_cpu_product() {
        let ctx = GpuContext::new_blocking().expect("a GPU adapter (lavapipe will do)");
        let (m, n, k) = (128, 192, 48);
        let (a, b) = (values(m * k, 11), values(k * n, 12));
        for v in VARIANTS {
            let c = product(&ctx, v, (m, n, k), &a, &b).unwrap();
            assert_eq!(c.len(), m * n);
            for (at, &got) in c.iter().enumerate() {
                let (want, abs) = entry(&a, &b, n, k, at / n, at % n);
                let bound = 4.0 * (k as f64).sqrt() * f32::EPSILON as f64 * abs + 1e-30;
                let err = (got as f64 - want).abs();
                assert!(
                    err <= bound,
                    "{} at ({}, {}): got {got}, want {want}",
                    v.name(),
                    at / n,
                    at % n
                );
            }
        }
    }
}
