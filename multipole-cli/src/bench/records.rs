//! The benchmark's record: one measurement, with the fields anyone needs to recompute its
//! ratios, as `--json` writes it and `--replot` and the GPU report read it.

use std::collections::BTreeMap;
use std::path::Path;

use multipole::{FmaError, GpuContext, Result};
use serde::{Deserialize, Serialize};

/// Writes any mode's records (`--json`) as pretty JSON and says where.
pub fn write_json<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let text = serde_json::to_string_pretty(records)
        .map_err(|e| FmaError::InvalidConfig(format!("bench records: {e}")))?;
    std::fs::write(path, text).map_err(|e| FmaError::TensorFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    println!("wrote {} records to {}", records.len(), path.display());
    Ok(())
}

/// One measurement: the fields anyone needs to recompute the ratios.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    pub kernel: String,
    pub layout: String,
    pub n: usize,
    pub d: usize,
    pub heads: usize,
    pub m: Option<usize>,
    pub p: Option<usize>,
    pub causal: bool,
    pub downsampling: Option<String>,
    /// How Q, K, V, O and the coarse rows were stored ("f32" or "f16"; absent for the
    /// calibration and in records written before f16 existed).
    #[serde(default)]
    pub precision: Option<String>,
    /// The score scale (1/sqrt(d) unless `--scale` set it) and, for FMA, whether coarse
    /// scores carry log-multiplicity (`--no-multiplicity` turns it off). Absent in older
    /// records.
    #[serde(default)]
    pub scale: Option<f32>,
    #[serde(default)]
    pub multiplicity: Option<bool>,
    /// FMA's cap on its coarse levels (`--max-levels`; 0 is sliding-window attention);
    /// absent when uncapped and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_levels: Option<usize>,
    pub runs: usize,
    /// GPU time of one forward (timestamps), or wall time where there are none.
    pub median_ms: f64,
    pub min_ms: f64,
    pub wall_median_ms: f64,
    pub timing: String,
    /// Median GPU time of each stage (FMA: downsample, near_field, far_field; its backward:
    /// downsample, stats, dq, dkv_near, dkv_far, downsample_backward).
    pub stage_ms: BTreeMap<String, f64>,
    /// FLOPs the definition needs, never the padding or masked scores a kernel's tiling may
    /// evaluate, so a faster kernel is one that finishes sooner: 4 d per required score (a real
    /// query against a real key, or a coarse row holding a real token, that it must see),
    /// i.e. dense n^2 per head and exactly n (n + 1) / 2 when causal, FMA its near and coarse
    /// scores (`Geometry::score_pairs`), plus FMA's downsampling over the real tokens (Mean:
    /// 2 d per token and level; learned kinds: 4 p d). FMA's backward: 10 d per required score
    /// (recomputed score, dP, dq, dk, dv: the flash convention) plus the downsampling twice
    /// (recomputed and its adjoint; learned kinds three times: the weight gradient too).
    /// The calibration ("matmul"): 2 n^3.
    pub flops: f64,
    pub gflops: f64,
    /// This record's GFLOP/s over the best rate measured in the same run: the fastest of the
    /// matmul variants and dense attention (`yardstick`). An attained rate, not the
    /// hardware's peak: dense attention sometimes beats every matmul variant, and then it is
    /// the yardstick. Absent in records written before the calibration existed.
    #[serde(default)]
    pub fraction_of_matmul: Option<f64>,
    /// The yardstick's GFLOP/s and what reached it (a matmul variant, or "dense attention").
    #[serde(default)]
    pub matmul_gflops: Option<f64>,
    #[serde(default)]
    pub matmul_variant: Option<String>,
    /// Calibration records only (kernel "matmul", one per variant): the variant measured.
    #[serde(default)]
    pub variant: Option<String>,
    /// Dense attention's FLOPs over this kernel's time: the rate dense would need to match it.
    pub dense_equivalent_gflops: f64,
    pub peak_bytes: u64,
    pub peak_source: String,
    /// Bytes of the tensors in and out: Q + K + V + O (forward); Q, K, V, O, dO, dQ, dK,
    /// dV (backward).
    pub qkvo_bytes: u64,
    /// (peak - those tensors) / those tensors.
    pub extra_ratio: f64,
    pub adapter: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub features: String,
}

/// A record with the adapter's fields filled in and the measurement's left empty.
pub fn adapter_record(ctx: &GpuContext) -> Record {
    let info = &ctx.info;
    Record {
        kernel: String::new(),
        layout: String::new(),
        n: 0,
        d: 0,
        heads: 1,
        m: None,
        p: None,
        causal: false,
        downsampling: None,
        precision: None,
        scale: None,
        multiplicity: None,
        max_levels: None,
        runs: 0,
        median_ms: f64::NAN,
        min_ms: f64::NAN,
        wall_median_ms: f64::NAN,
        timing: String::new(),
        stage_ms: BTreeMap::new(),
        flops: 0.0,
        gflops: f64::NAN,
        fraction_of_matmul: None,
        matmul_gflops: None,
        matmul_variant: None,
        variant: None,
        dense_equivalent_gflops: f64::NAN,
        peak_bytes: 0,
        peak_source: String::new(),
        qkvo_bytes: 0,
        extra_ratio: 0.0,
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info),
        features: format!("{:?}", ctx.device.features()),
    }
}
