//! The calibration (an f32 matrix product, `matmul.rs`) and the yardstick every record's
//! `fraction_of_matmul` is measured against.

use std::collections::BTreeMap;

use multipole::{GpuContext, GpuTimer, Result};

use super::records::{Record, adapter_record};
use crate::matmul;

/// The calibration: one record (kernel "matmul") per variant of a `size`^3 f32 product.
pub fn calibration(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    size: usize,
    runs: usize,
) -> Result<Vec<Record>> {
    let measured = matmul::measure(ctx, timer, size, runs)?;
    let flops = 2.0 * (size as f64).powi(3);
    let bytes = 3 * (size * size * 4) as u64;
    let records: Vec<Record> = measured
        .iter()
        .map(|m| Record {
            kernel: "matmul".into(),
            layout: "matmul".into(),
            n: size,
            d: size,
            variant: Some(m.variant.name()),
            runs,
            median_ms: m.median_ms,
            min_ms: m.min_ms,
            wall_median_ms: m.wall_median_ms,
            timing: m.timing.into(),
            stage_ms: BTreeMap::from([("matmul".to_string(), m.median_ms)]),
            flops,
            gflops: flops / m.median_ms / 1e6,
            dense_equivalent_gflops: flops / m.median_ms / 1e6,
            peak_bytes: bytes,
            peak_source: "computed".into(),
            qkvo_bytes: bytes,
            extra_ratio: 0.0,
            ..adapter_record(ctx)
        })
        .collect();
    for (r, m) in records.iter().zip(&measured) {
        println!(
            "matmul {:>12} {}^3 {:>10.2} ms ({}) {:>8.1} GFLOP/s  (spot check: {:.2} of the rounding bound)",
            r.variant.as_deref().unwrap_or("?"),
            size,
            r.median_ms,
            r.timing,
            r.gflops,
            m.error
        );
    }
    Ok(records)
}

/// The best matmul record (the calibration), if the records hold one.
pub fn best_matmul(records: &[Record]) -> Option<&Record> {
    records
        .iter()
        .filter(|r| r.kernel == "matmul" && r.gflops.is_finite())
        .max_by(|a, b| a.gflops.total_cmp(&b.gflops))
}

/// The best rate measured among `records`, the denominator of `fraction_of_matmul`: the
/// fastest matmul variant or, where it was faster, dense attention; with what reached it.
/// None without a calibration.
pub fn yardstick(records: &[Record]) -> Option<(f64, Option<String>)> {
    let matmul = best_matmul(records)?;
    let dense = records
        .iter()
        .filter(|r| r.kernel == "dense" && r.gflops.is_finite())
        .max_by(|a, b| a.gflops.total_cmp(&b.gflops));
    Some(match dense {
        Some(d) if d.gflops > matmul.gflops => (d.gflops, Some("dense attention".into())),
        _ => (matmul.gflops, matmul.variant.clone()),
    })
}

/// Sets every record's `fraction_of_matmul` against the run's yardstick (`yardstick`).
pub fn apply_calibration(records: &mut [Record]) {
    let Some((gflops, variant)) = yardstick(records) else {
        return;
    };
    for r in records.iter_mut() {
        r.fraction_of_matmul = Some(r.gflops / gflops);
        r.matmul_gflops = Some(gflops);
        r.matmul_variant = variant.clone();
    }
}
