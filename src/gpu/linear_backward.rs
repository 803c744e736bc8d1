//! Rust twin of shaders/linear_backward.wgsl (in progress).
