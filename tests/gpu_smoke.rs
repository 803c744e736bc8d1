mod common;
use common::*;
use multipole::{Downsampling, FmaPlan, Shape, reference};

#[test]
fn smoke() {
    let ctx = gpu();
    for (n, m, p, causal, kind, d) in [
        (16, 4, 1, false, Downsampling::Mean, 16),
        (100, 8, 2, false, Downsampling::Mean, 16),
        (100, 8, 2, true, Downsampling::Basis, 32),
        (300, 16, 4, false, Downsampling::Depthwise, 64),
        (77, 4, 2, true, Downsampling::Mean, 5),
    ] {
        let shape = Shape::new(1, 2, n, d);
        let (q, k, v) = qkv(7, shape);
        let cfg = config(m, p, causal, kind, true);
        let g = multipole::Geometry::line(n, &cfg).unwrap();
        let w = weights(3, kind, p, d, &g.group_tokens());
        let want = reference::fma_forward(&q, &k, &v, shape, &cfg, Some(&w)).unwrap();
        let plan = FmaPlan::new(ctx, shape, &cfg, Some(&w)).unwrap();
        let got = plan.forward_blocking(ctx, &q, &k, &v).unwrap();
        assert_close(&format!("o n={n} m={m}"), &got.o, &want.o, &v, 1e-4);
        assert_close("lse", &got.lse, &want.lse, &[1.0], 1e-4);
    }
}
