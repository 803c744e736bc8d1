//! The FMA options `attend`, `decode` and `bench` share, declared once so that the three
//! commands spell, explain and apply them alike (each flattens `FmaFlags` into its own
//! arguments and adds what is its own: layout, causal masking, precision, ...).

use multipole::{Downsampling, FmaConfig};

#[derive(clap::Args)]
pub struct FmaFlags {
    /// Fine cell size (a power of two).
    #[arg(long)]
    pub m: usize,
    /// Coarse keys per group (1D: divides m; 2D: a square whose root divides m).
    #[arg(long)]
    pub p: usize,
    /// mean, basis or depthwise.
    #[arg(long, default_value = "mean")]
    pub downsampling: Downsampling,
    /// Do not add log(multiplicity) to coarse scores.
    #[arg(long)]
    pub no_multiplicity: bool,
    /// Score scale (default 1/sqrt(d)).
    #[arg(long)]
    pub scale: Option<f32>,
    /// Keep at most this many coarse levels, the finest (0: sliding-window attention over
    /// each query's near field). Decoding takes no cap.
    #[arg(long)]
    pub max_levels: Option<usize>,
}

impl FmaFlags {
    /// The options these flags set; the rest as `FmaConfig::new` leaves them (a bidirectional
    /// sequence in f32), for each command to set from its own flags.
    pub fn config(&self) -> FmaConfig {
        FmaConfig {
            downsampling: self.downsampling,
            multiplicity: !self.no_multiplicity,
            scale: self.scale,
            max_levels: self.max_levels,
            ..FmaConfig::new(self.m, self.p)
        }
    }
}
