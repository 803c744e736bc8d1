//! Without a usable adapter, `GpuContext::new` returns `NoAdapter` with advice, no panic.
//! (Its own test binary: it changes the process environment.)

#[cfg(target_os = "linux")]
#[test]
fn no_adapter_is_a_typed_error() {
    // Metal does not exist on Linux, so restricting wgpu to it leaves no adapter.
    unsafe { std::env::set_var("WGPU_BACKEND", "metal") };
    let err = multipole::GpuContext::new_blocking()
        .err()
        .expect("no adapter should be found");
    assert_eq!(err, multipole::FmaError::NoAdapter);
    assert!(err.to_string().contains("mesa-vulkan-drivers"));
}
