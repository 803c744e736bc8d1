//! The one check of caller-supplied GPU buffers before a pass binds them: wgpu would otherwise
//! panic (or the device would be lost) on a buffer that is too small, lacks STORAGE usage, or
//! is bound writable beside another binding of itself.

use crate::error::{FmaError, Result};

/// One buffer a pass binds: its name in messages, the bytes the pass reads or writes, and
/// whether the pass writes it.
#[derive(Clone, Copy)]
pub(crate) struct Slot<'a> {
    pub name: &'a str,
    pub buffer: &'a wgpu::Buffer,
    pub bytes: u64,
    pub written: bool,
}

impl<'a> Slot<'a> {
    pub fn read(name: &'a str, buffer: &'a wgpu::Buffer, bytes: u64) -> Self {
        Slot {
            name,
            buffer,
            bytes,
            written: false,
        }
    }

    pub fn written(name: &'a str, buffer: &'a wgpu::Buffer, bytes: u64) -> Self {
        Slot {
            written: true,
            ..Slot::read(name, buffer, bytes)
        }
    }
}

/// Every slot holds its bytes and has STORAGE usage, and no written slot shares its buffer
/// with another slot (WebGPU forbids one buffer bound read-only and writable, or writable
/// twice, in one dispatch).
pub(crate) fn check(slots: &[Slot<'_>]) -> Result<()> {
    for s in slots {
        let bad = |expected: String| FmaError::BadShape {
            what: format!("GPU buffer {}", s.name),
            expected,
            got: format!("{:?}, {} bytes", s.buffer.usage(), s.buffer.size()),
        };
        if s.buffer.size() < s.bytes {
            return Err(bad(format!("at least {} bytes", s.bytes)));
        }
        if !s.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(bad("STORAGE usage".into()));
        }
    }
    for (i, w) in slots.iter().enumerate().filter(|(_, s)| s.written) {
        if let Some(other) = slots
            .iter()
            .enumerate()
            .find(|&(j, s)| j != i && s.buffer == w.buffer)
        {
            return Err(FmaError::BadShape {
                what: format!("GPU buffers {} and {}", w.name, other.1.name),
                expected: "a written buffer distinct from every other one of the pass".into(),
                got: "one buffer bound twice".into(),
            });
        }
    }
    Ok(())
}
