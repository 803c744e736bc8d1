//! The numbers layers.wgsl shares with its Rust twin (`gpu::layers`): workgroup size, output
//! block and binding indices, written into the shader's header.

/// Invocations per workgroup of every layer kernel (`LAYER_WG` in layers.wgsl).
pub const LAYER_WG: u32 = 64;

/// Rows and columns of the output block one `linear_forward` invocation computes
/// (`LINEAR_TILE` in layers.wgsl). The shader holds the block as four vec4 accumulators, so
/// this is 4.
pub const LINEAR_TILE: usize = 4;

/// The binding indices of layers.wgsl: the uniform, up to four inputs (read-only) and up to
/// three outputs (read-write). Injected into the shader as `const`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Bind {
    Params = 0,
    In0 = 1,
    In1 = 2,
    In2 = 3,
    Out0 = 4,
    Out1 = 5,
    Out2 = 6,
    In3 = 7,
}

impl Bind {
    pub(crate) const ALL: [(Bind, &'static str); 8] = [
        (Bind::Params, "BIND_PARAMS"),
        (Bind::In0, "BIND_IN0"),
        (Bind::In1, "BIND_IN1"),
        (Bind::In2, "BIND_IN2"),
        (Bind::In3, "BIND_IN3"),
        (Bind::Out0, "BIND_OUT0"),
        (Bind::Out1, "BIND_OUT1"),
        (Bind::Out2, "BIND_OUT2"),
    ];
    pub(crate) const OUTPUTS: [Bind; 3] = [Bind::Out0, Bind::Out1, Bind::Out2];
}

/// The `const` declarations layers.wgsl is compiled with: its workgroup size and bindings.
pub(crate) fn wgsl_header() -> String {
    let mut s =
        format!("const LAYER_WG: u32 = {LAYER_WG}u;\nconst LINEAR_TILE: u32 = {LINEAR_TILE}u;\n");
    for (b, name) in Bind::ALL {
        s.push_str(&format!("const {name}: u32 = {}u;\n", b as u32));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_declares_every_binding_once() {
        let h = wgsl_header();
        let mut seen: Vec<u32> = Bind::ALL.iter().map(|&(b, _)| b as u32).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<u32>>());
        assert!(h.contains("const LAYER_WG: u32 = 64u;"));
        assert!(h.contains("const BIND_IN3: u32 = 7u;"));
    }
}
