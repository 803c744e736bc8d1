//! Log-log SVG charts of series against n (the benchmark's figures are drawn by
//! `bench::charts`).

use plotters::prelude::*;

const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

/// One log-log chart. With `guides`, dashed n log n and n^2 lines start at the first point of
/// the `fma 1d` and `dense 1d` series, so a reader can see which growth each one follows.
pub(crate) fn chart(
    path: &str,
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    guides: bool,
) -> Result<(), String> {
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 <= 0.0 || y0 <= 0.0 || !y1.is_finite() {
        return Err("plot values must be positive and finite".into());
    }
    let (x0, x1, y0, y1) = (x0 / 1.5, x1 * 1.5, y0 / 2.0, y1 * 2.0);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("{path}: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("n (tokens)")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(e)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(e)?;
    }
    if guides {
        // Sampled on log-spaced n and cut where they leave the chart (a segment to a point
        // outside the range would be drawn to the clamped corner instead).
        let guide = |name: &str, f: fn(f64) -> f64, label: &str| {
            let (_, pts) = series.iter().find(|(n, _)| n == name)?;
            let &(n0, t0) = pts.first()?;
            let steps = 60;
            let curve: Vec<(f64, f64)> = (0..=steps)
                .map(|i| n0 * (x1 / 1.5 / n0).powf(i as f64 / steps as f64))
                .map(|x| (x, t0 * f(x) / f(n0)))
                .take_while(|&(_, y)| y <= y1)
                .collect();
            Some((label.to_string(), curve))
        };
        let lines = [
            guide("fma 1d", |n| n * n.ln(), "n log n (from fma 1d)"),
            guide("dense 1d", |n| n * n, "n^2 (from dense 1d)"),
        ];
        for (label, pts) in lines.into_iter().flatten() {
            chart
                .draw_series(DashedLineSeries::new(
                    pts,
                    6,
                    4,
                    BLACK.mix(0.5).stroke_width(1),
                ))
                .map_err(e)?
                .label(label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
