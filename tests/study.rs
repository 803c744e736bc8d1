//! The approximation study's methods (issue 17): each baseline against a slow direct formula
//! on tiny inputs, the exact limits where they exist, the fitting, and the JSON records.

use multipole::Layout;
use multipole::study::clustered::{Clusters, clustered, kmeans};
use multipole::study::datasets::{Kind, sequence};
use multipole::study::exact::exact;
use multipole::study::fit::{FitOptions, fit};
use multipole::study::fma::{config, fma, linear_config, linear_keys};
use multipole::study::linformer::{linformer, random_projection};
use multipole::study::nystrom::{Pinv, nystrom};
use multipole::study::performer::{features, performer};
use multipole::study::records::FIELDS;
use multipole::study::sweep::{Group, Options, cluster_sizes, evaluate, sequence_group};
use multipole::study::window::{window, window_keys};
use multipole::study::{Approx, ErrorSum, Problem};
use multipole::{Downsampling, FmaConfig};

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Largest |a - b| over the outputs, failing with the index.
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: element {i}: {x} against {y}"
        );
    }
}

fn rel(a: &Approx, e: &Approx, d: usize) -> f64 {
    let mut s = ErrorSum::default();
    s.add(a, &e.o, d);
    s.relative()
}

/// Row-major matrix helpers of the direct formulas.
fn matmul(a: &[f64], b: &[f64], rows: usize, inner: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[i * cols + j] = (0..inner).map(|t| a[i * inner + t] * b[t * cols + j]).sum();
        }
    }
    out
}

/// Row-wise softmax of a score matrix, computed the plain way.
fn softmax(s: &[f64], cols: usize) -> Vec<f64> {
    s.chunks(cols)
        .flat_map(|row| {
            let z: f64 = row.iter().map(|x| x.exp()).sum();
            row.iter().map(move |x| x.exp() / z).collect::<Vec<_>>()
        })
        .collect()
}

fn scores(q: &[f64], k: &[f64], d: usize, scale: f64) -> (Vec<f64>, usize) {
    let cols = k.len() / d;
    let mut s = Vec::new();
    for qi in q.chunks(d) {
        for kj in k.chunks(d) {
            s.push(scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>());
        }
    }
    (s, cols)
}

fn tiny(n: usize, d: usize, seed: u64) -> Problem {
    let mut p = sequence(Kind::Gaussian, n, d, seed);
    // Smaller scores keep the random-feature estimates well conditioned.
    p.q.iter_mut().for_each(|x| *x *= 0.5);
    p
}

#[test]
fn window_is_masked_softmax_and_exact_when_it_covers_the_sequence() {
    let (n, d) = (11, 4);
    let prob = tiny(n, d, 1);
    let (q, k, v) = (
        prob.rows(&prob.q, 1.0),
        prob.rows(&prob.k, 1.0),
        prob.rows(&prob.v, 1.0),
    );
    for width in [1, 4, 5, 11] {
        let got = window(&prob, &all(n), width);
        for i in 0..n {
            let keys = window_keys(&prob, i, width);
            // width consecutive tokens holding i, as centred as the ends allow.
            assert_eq!(keys.len(), width);
            assert!(keys.contains(&i) && keys.windows(2).all(|w| w[1] == w[0] + 1));
            let (lo, hi) = (i - keys[0], keys[width - 1] - i);
            assert!(lo.abs_diff(hi) <= 1 || keys[0] == 0 || keys[width - 1] == n - 1);
            // Direct: dense scores with -inf outside the window.
            let (s, _) = scores(&q[i * d..(i + 1) * d], &k, d, prob.tau());
            let masked: Vec<f64> = s
                .iter()
                .enumerate()
                .map(|(j, &x)| {
                    if keys.contains(&j) {
                        x
                    } else {
                        f64::NEG_INFINITY
                    }
                })
                .collect();
            let p = softmax(&masked, n);
            let want = matmul(&p, &v, 1, n, d);
            assert_close(&got.o[i * d..(i + 1) * d], &want, 1e-12, "window");
        }
    }
    let full = window(&prob, &all(n), n);
    assert_close(&full.o, &exact(&prob, &all(n)).o, 1e-12, "window = n");
    assert!(rel(&window(&prob, &all(n), 3), &exact(&prob, &all(n)), d) > 1e-3);
}

#[test]
fn window_on_an_image_is_a_disc_of_nearest_tokens() {
    let mut prob = tiny(25, 4, 2);
    prob.layout = Layout::Image {
        height: 5,
        width: 5,
    };
    // Token 12 is the centre (2, 2): its 5 nearest are itself and its 4 direct neighbours.
    assert_eq!(window_keys(&prob, 12, 5), vec![7, 11, 12, 13, 17]);
    assert_eq!(window_keys(&prob, 0, 3), vec![0, 1, 5]);
    let full = window(&prob, &all(25), 25);
    assert_close(&full.o, &exact(&prob, &all(25)).o, 1e-12, "2D window = n");
    // One key: the query's own value.
    let one = window(&prob, &[6], 1);
    assert_close(&one.o, &prob.row(&prob.v, 6), 1e-12, "2D window of 1");
}

#[test]
fn performer_is_its_kernel_formula_and_converges_with_many_features() {
    let (n, d, r) = (7, 4, 16);
    let prob = tiny(n, d, 3);
    let w = features(r, d, 9);
    let got = performer(&prob, &all(n), &w);
    // Direct: explicit feature matrices, kernel matrix, row normalisation.
    let root = prob.tau().sqrt();
    let phi = |x: &[f64]| -> Vec<f64> {
        x.chunks(d)
            .flat_map(|xi| {
                let h: f64 = xi.iter().map(|a| a * a).sum::<f64>() / 2.0;
                w.chunks(d)
                    .map(move |wf| {
                        (wf.iter().zip(xi).map(|(a, b)| a * b).sum::<f64>() - h).exp()
                            / (r as f64).sqrt()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (pq, pk) = (
        phi(&prob.rows(&prob.q, root)),
        phi(&prob.rows(&prob.k, root)),
    );
    let mut pkt = vec![0.0; r * n];
    for j in 0..n {
        for f in 0..r {
            pkt[f * n + j] = pk[j * r + f];
        }
    }
    let a = matmul(&pq, &pkt, n, r, n);
    let av = matmul(&a, &prob.rows(&prob.v, 1.0), n, n, d);
    let want: Vec<f64> = (0..n * d)
        .map(|x| av[x] / a[(x / d) * n..(x / d + 1) * n].iter().sum::<f64>())
        .collect();
    assert_close(&got.o, &want, 1e-10, "performer");
    // An unbiased estimate of exp(tau q.k): many features approach exact attention.
    let truth = exact(&prob, &all(n));
    let few = rel(&performer(&prob, &all(n), &features(4, d, 9)), &truth, d);
    let many = rel(
        &performer(&prob, &all(n), &features(20000, d, 9)),
        &truth,
        d,
    );
    assert!(many < 0.15 && many < few / 5.0, "few {few}, many {many}");
}

#[test]
fn linformer_is_attention_over_projected_keys_and_exact_with_the_identity() {
    let (n, d, r) = (9, 4, 3);
    let prob = tiny(n, d, 4);
    let e = random_projection(r, n, 5);
    let got = linformer(&prob, &all(n), &e);
    let (pk, pv) = (
        matmul(&e, &prob.rows(&prob.k, 1.0), r, n, d),
        matmul(&e, &prob.rows(&prob.v, 1.0), r, n, d),
    );
    let (s, cols) = scores(&prob.rows(&prob.q, 1.0), &pk, d, prob.tau());
    let want = matmul(&softmax(&s, cols), &pv, n, r, d);
    assert_close(&got.o, &want, 1e-12, "linformer");
    let mut identity = vec![0.0; n * n];
    (0..n).for_each(|i| identity[i * n + i] = 1.0);
    let id = linformer(&prob, &all(n), &identity);
    assert_close(&id.o, &exact(&prob, &all(n)).o, 1e-12, "linformer, E = I");
    assert!(rel(&got, &exact(&prob, &all(n)), d) > 1e-3);
}

/// Inverse of a small square matrix by Gauss-Jordan elimination with partial pivoting.
fn inverse(a: &[f64], r: usize) -> Vec<f64> {
    let mut m: Vec<f64> = a.to_vec();
    let mut inv = vec![0.0; r * r];
    (0..r).for_each(|i| inv[i * r + i] = 1.0);
    for c in 0..r {
        let piv = (c..r)
            .max_by(|&x, &y| m[x * r + c].abs().total_cmp(&m[y * r + c].abs()))
            .unwrap();
        for t in 0..r {
            m.swap(c * r + t, piv * r + t);
            inv.swap(c * r + t, piv * r + t);
        }
        let p = m[c * r + c];
        for t in 0..r {
            m[c * r + t] /= p;
            inv[c * r + t] /= p;
        }
        for row in (0..r).filter(|&x| x != c) {
            let f = m[row * r + c];
            for t in 0..r {
                m[row * r + t] -= f * m[c * r + t];
                inv[row * r + t] -= f * inv[c * r + t];
            }
        }
    }
    inv
}

#[test]
fn nystromformer_is_its_three_softmaxes_and_exact_with_every_key_a_landmark() {
    let (n, d, r) = (8, 4, 4);
    let prob = tiny(n, d, 6);
    let got = nystrom(&prob, &all(n), r, Pinv::Exact);
    // Landmarks: means of the pairs (0, 1), (2, 3), ...
    let q = prob.rows(&prob.q, 1.0);
    let k = prob.rows(&prob.k, 1.0);
    let pair_means = |x: &[f64]| -> Vec<f64> {
        (0..r)
            .flat_map(|f| (0..d).map(move |c| (x[2 * f * d + c] + x[(2 * f + 1) * d + c]) / 2.0))
            .collect()
    };
    let (ql, kl) = (pair_means(&q), pair_means(&k));
    let tau = prob.tau();
    let f = softmax(&scores(&q, &kl, d, tau).0, r);
    let a = softmax(&scores(&ql, &kl, d, tau).0, r);
    let b = softmax(&scores(&ql, &k, d, tau).0, n);
    let bv = matmul(&b, &prob.rows(&prob.v, 1.0), r, n, d);
    let want = matmul(&matmul(&f, &inverse(&a, r), n, r, r), &bv, n, r, d);
    assert_close(&got.o, &want, 1e-7, "nystromformer");
    let every = nystrom(&prob, &all(n), n, Pinv::Exact);
    assert_close(
        &every.o,
        &exact(&prob, &all(n)).o,
        1e-7,
        "nystromformer, r = n",
    );
    // The paper's Newton-Schulz iterations converge to the inverse; 6 of them (the paper's
    // count, what the study runs) are close but not exact.
    let many = nystrom(&prob, &all(n), r, Pinv::NewtonSchulz(40));
    assert_close(&many.o, &want, 1e-7, "Newton-Schulz, 40 iterations");
    let six = nystrom(&prob, &all(n), r, Pinv::NewtonSchulz(6));
    assert!(
        rel(&six, &got, d) < 0.5,
        "6 iterations: {}",
        rel(&six, &got, d)
    );
}

#[test]
fn clustered_keys_are_exact_with_all_clusters_or_identical_members() {
    let (n, d) = (12, 4);
    let prob = tiny(n, d, 7);
    let truth = exact(&prob, &all(n));
    // Every cluster attended exactly, or every key its own cluster.
    let cl = kmeans(&prob, 3, 5, 1);
    assert_close(
        &clustered(&prob, &all(n), &cl, 3).o,
        &truth.o,
        1e-12,
        "all clusters exact",
    );
    let singles = kmeans(&prob, n, 2, 1);
    assert!(singles.size.iter().all(|&s| s == 1));
    let got = clustered(&prob, &all(n), &singles, 2);
    assert_close(&got.o, &truth.o, 1e-12, "single-key clusters");
    assert_eq!(got.keys, n as f64);
    // Keys repeated in threes with different values: a summary (mean key, log 3 offset,
    // mean value) stands exactly for its three members.
    let mut rep = prob.clone();
    for j in 0..n {
        let src = (j / 3) * 3;
        let row: Vec<f32> = prob.k[src * d..(src + 1) * d].to_vec();
        rep.k[j * d..(j + 1) * d].copy_from_slice(&row);
    }
    let assign: Vec<usize> = (0..n).map(|j| j / 3).collect();
    let mut key = vec![0.0; 4 * d];
    let mut value = vec![0.0; 4 * d];
    for j in 0..n {
        for c in 0..d {
            key[(j / 3) * d + c] += rep.k[j * d + c] as f64 / 3.0;
            value[(j / 3) * d + c] += rep.v[j * d + c] as f64 / 3.0;
        }
    }
    let cl = Clusters {
        assign,
        size: vec![3; 4],
        key,
        value,
    };
    let got = clustered(&rep, &all(n), &cl, 1);
    assert_close(&got.o, &exact(&rep, &all(n)).o, 1e-12, "identical members");
    assert_eq!(got.keys, 3.0 + 3.0);
    // Real keys are not identical within clusters: the summaries then cost accuracy.
    let cl = kmeans(&prob, 4, 5, 1);
    assert!(rel(&clustered(&prob, &all(n), &cl, 1), &truth, d) > 1e-3);
}

#[test]
fn fma_is_exact_at_two_cells_and_approximate_beyond() {
    let (n, d) = (32, 8);
    let prob = tiny(n, d, 8);
    let truth = exact(&prob, &all(n));
    for kind in [
        Downsampling::Mean,
        Downsampling::Basis,
        Downsampling::Depthwise,
    ] {
        let got = fma(&prob, &all(n), &config(&prob, 16, 4, kind), None).unwrap();
        // 1e-7: the reference scales queries by tau rounded to f32.
        assert_close(&got.o, &truth.o, 1e-7, "n = 2m");
        assert_eq!(got.keys, n as f64);
    }
    let coarse = fma(&prob, &all(n), &FmaConfig::new(4, 2), None).unwrap();
    assert!(coarse.keys < n as f64 && rel(&coarse, &truth, d) > 1e-3);
    // The same query rows in any subset give the same outputs.
    let some = fma(&prob, &[3, 17], &FmaConfig::new(4, 2), None).unwrap();
    assert_close(&some.o[d..], &coarse.o[17 * d..18 * d], 0.0, "subset");
}

#[test]
fn the_linear_variant_is_exact_at_two_cells_and_its_own_approximation_beyond() {
    let (n, d) = (32, 8);
    let prob = tiny(n, d, 9);
    let truth = exact(&prob, &all(n));
    let got = fma(&prob, &all(n), &linear_config(&prob, 16, 4), None).unwrap();
    assert_close(&got.o, &truth.o, 1e-7, "n = 2m");
    let lin = fma(&prob, &all(n), &linear_config(&prob, 4, 2), None).unwrap();
    let log_linear = fma(&prob, &all(n), &FmaConfig::new(4, 2), None).unwrap();
    // As many keys per softmax as the O(n log n) FMA, other coarse scores.
    assert_eq!(lin.keys, log_linear.keys);
    assert!(rel(&lin, &truth, d) > 1e-3 && rel(&lin, &log_linear, d) > 1e-4);
    // The coarse keys are scored once per segment, not once per query.
    let (near, far) = linear_keys(&prob, 4, 2).unwrap();
    assert!(
        far > 0.0 && near + far < lin.keys,
        "{near} + {far} against {}",
        lin.keys
    );
}

#[test]
fn fitted_weights_beat_mean_on_held_out_smooth_data() {
    let (n, d) = (256, 16);
    let test = sequence(Kind::Smooth, n, d, 1);
    let train: Vec<Problem> = (2..6).map(|s| sequence(Kind::Smooth, n, d, s)).collect();
    let rows = all(n);
    let truth = exact(&test, &rows);
    let mean = rel(
        &fma(&test, &rows, &FmaConfig::new(8, 2), None).unwrap(),
        &truth,
        d,
    );
    let cfg = config(&test, 8, 2, Downsampling::Basis);
    let f = fit(
        &train,
        &cfg,
        FitOptions {
            steps: 15,
            lr: 0.05,
        },
    )
    .unwrap();
    assert!(f.losses.last().unwrap() < &f.losses[0], "{:?}", f.losses);
    let fitted = rel(
        &fma(&test, &rows, &cfg, Some(&f.weights)).unwrap(),
        &truth,
        d,
    );
    assert!(
        fitted < mean,
        "held out: fitted {fitted} against mean {mean}"
    );
    // Fitting needs a learned kind.
    let mean_cfg = config(&test, 8, 2, Downsampling::Mean);
    assert!(fit(&train, &mean_cfg, FitOptions { steps: 1, lr: 0.05 }).is_err());
}

#[test]
fn budgets_are_matched() {
    // t n / C + (C - t) near the budget.
    let (c, t) = cluster_sizes(1024, 131.0);
    let k = (t * 1024) as f64 / c as f64 + (c - t) as f64;
    assert!((k - 131.0).abs() < 3.0, "C = {c}, t = {t}: {k}");
    assert!(cluster_sizes(64, 1000.0).0 <= 64);
}

#[test]
fn study_records_have_every_field() {
    let groups: Vec<Group> = vec![sequence_group(Kind::Smooth, 64, 8, 1)];
    let opts = Options {
        ms: vec![4, 8],
        ps: vec![1, 2],
        main: (4, 2),
        fit: Some(FitOptions { steps: 2, lr: 0.05 }),
        max_rows: 40,
        kmeans_rounds: 2,
    };
    let records = evaluate("smooth", &groups, &opts, &mut |_| {}).unwrap();
    // Every baseline ran at the budget the sweep gave it: its keys per query within a key (or
    // 5%) of the measured keys per query of the FMA configuration it is matched to.
    let mut matched = 0;
    for r in records.iter().filter(|r| r.budget_of.is_some()) {
        let (m, p) = r.budget_of.unwrap();
        let fma = records
            .iter()
            .find(|f| f.method == "fma-mean" && f.m == Some(m) && f.p == Some(p))
            .unwrap_or_else(|| panic!("no fma-mean record at m = {m}, p = {p}"));
        let budget = fma.keys_per_query;
        assert!(
            (r.keys_per_query - budget).abs() <= (0.05 * budget).max(1.0),
            "{} at m = {m}, p = {p}: {} keys per query against the budget {budget}",
            r.method,
            r.keys_per_query
        );
        matched += 1;
    }
    // Five baselines at each of the four (m, p) budgets.
    assert_eq!(matched, 5 * 4);
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&records).unwrap())
        .expect("records serialise to JSON");
    let list = json.as_array().expect("a list of records");
    let mut methods = std::collections::BTreeSet::new();
    for r in list {
        let obj = r.as_object().expect("a record is an object");
        for field in FIELDS {
            assert!(obj.contains_key(field), "{field} missing in {r}");
        }
        assert_eq!(obj.len(), FIELDS.len(), "extra fields in {r}");
        let method = obj["method"].as_str().unwrap().to_string();
        let fma_like = method.starts_with("fma") || method == "h-transformer";
        assert_eq!(obj["m"].is_null(), !fma_like, "{r}");
        assert_eq!(obj["split"].is_null(), !method.ends_with("fitted"), "{r}");
        for f in [
            "keys_per_query",
            "flops_per_query",
            "relative_error",
            "max_row_error",
        ] {
            let x = obj[f].as_f64().unwrap();
            assert!(x.is_finite() && x >= 0.0, "{f} in {r}");
        }
        methods.insert(method);
    }
    let want = [
        "clustered",
        "fma-basis",
        "fma-basis-fitted",
        "fma-depthwise",
        "fma-depthwise-fitted",
        "fma-linear",
        "fma-mean",
        "h-transformer",
        "linformer",
        "nystromformer",
        "performer",
        "window",
    ];
    assert_eq!(methods.into_iter().collect::<Vec<_>>(), want);
}
