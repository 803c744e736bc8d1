//! The checks the demo page runs on WebGPU (`multipole::browser_checks`), run natively
//! too, so a failure shows up here first; each must pass.

mod common;

#[test]
fn the_in_browser_checks_pass_natively() {
    let ctx = common::gpu();
    let results = pollster::block_on(multipole::browser_checks::run(ctx));
    // Five FMA cases and two vision transformers; web/tests/demo.mjs expects as many in the
    // browser.
    assert_eq!(results.len(), 7);
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    for (name, r) in &results {
        eprintln!("{name}: {r:?}");
    }
    assert!(failed.is_empty(), "failed checks: {failed:?}");
}
