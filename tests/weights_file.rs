//! Weights files of the vision transformer: every size in a file's metadata is checked.

/// The shipped weights with one metadata entry replaced.
fn shipped_with(key: &str, value: &str) -> Vec<u8> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/web/models/fma-vit-mnist.safetensors"
    ))
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    meta.insert(key.into(), value.into());
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// Every size in a weights file's metadata is checked before it is used: no overflow, no
/// unbounded allocation, no panic; each error names what is wrong.
#[test]
fn weights_metadata_sizes_are_checked() {
    use multipole::FmaError;
    use multipole::model::{VitConfig, VitWeights};
    for (key, value, want) in [
        ("canvas", "16", "canvas side 16"),
        ("canvas", "99999999999", "over the limit"),
        ("window", "18446744073709551615", "over the limit"),
        ("patch", "0", "patch side 0"),
        ("heads", "0", "at least 1"),
        ("dim", "4611686018427387904", "over the limit"),
        ("depth", "1000000000000", "over the limit"),
        ("window", "4096", "parameters"),
        ("classes", "0", "at least 1"),
        ("m", "3", "power of two"),
        ("p", "2", "square"),
        ("image", "-1", "not a number"),
        ("downsampling", "fourier", "unknown downsampling"),
        // The O(n) variant's flag: its query weights must be there, its value a boolean.
        (
            "downsample_queries",
            "true",
            "missing tensor 'blocks.0.ds.wq.1'",
        ),
        ("downsample_queries", "maybe", "not true or false"),
    ] {
        let started = std::time::Instant::now();
        let err = VitWeights::from_bytes(&shipped_with(key, value))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{key} = {value}: {err}");
        assert!(started.elapsed().as_secs() < 5, "{key} = {value}");
    }
    // A smaller model that is consistent in itself loads, every size and weight as written;
    // it is the classifier that refuses it (multipole-cli/tests/classify_cli.rs), since its
    // canvas cannot hold a 28 x 28 digit.
    let small = VitConfig {
        image: 16,
        canvas: 16,
        depth: 1,
        ..VitConfig::fma()
    };
    let written = VitWeights::init(&small, 1).unwrap();
    let loaded = VitWeights::from_bytes(&written.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded.config, small);
    assert!(
        loaded == written,
        "the weights read back differ from those written"
    );
    // The shipped tensors under sizes they were not trained for are refused, naming the first
    // tensor that does not fit: m = 4 has one coarse level where m = 2 had two.
    let err = VitWeights::from_bytes(&shipped_with("m", "4")).unwrap_err();
    assert!(
        matches!(&err, FmaError::Model(msg)
            if msg.contains("unexpected tensor 'blocks.0.ds.bk.2'")),
        "{err}"
    );
}
