//! What a run writes: `runs.csv` (one summary row per run), a figure per swept metric,
//! the TTFT-overhead distribution of the first run, and a table on stdout.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::metrics::Metrics;
use crate::scenario::{Scenario, Sweep};

/// One finished run: its sweep labels and its figures.
pub struct RunResult {
    /// (field path, value) of each swept field.
    pub labels: Vec<(String, String)>,
    /// What it measured.
    pub metrics: Metrics,
}

/// `runs.csv`: the labels, then every figure of [`Metrics::row`].
pub fn csv(results: &[RunResult]) -> String {
    let mut out = String::new();
    let Some(first) = results.first() else {
        return out;
    };
    let mut header: Vec<String> = first.labels.iter().map(|(k, _)| k.clone()).collect();
    header.extend(first.metrics.row().iter().map(|(k, _)| k.to_string()));
    out.push_str(&header.join(","));
    out.push('\n');
    for r in results {
        let mut cells: Vec<String> = r.labels.iter().map(|(_, v)| v.clone()).collect();
        cells.extend(r.metrics.row().iter().map(|(_, v)| number(*v)));
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// A figure as the CSV and the table print it: integers plainly, others to 6 digits.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.6}")
    }
}

/// The figures a reader looks at first, as a table.
pub fn table(scenario: &Scenario, results: &[RunResult]) -> String {
    const SHOWN: [&str; 12] = [
        "success_rate",
        "ttft_overhead_p50_ms",
        "ttft_overhead_p99_ms",
        "metering_error",
        "metering_bias",
        "fraud_detection_rate",
        "claims_settled",
        "honest_claims_refused",
        "credits_minus_debits",
        "gossip_bytes_per_node_s",
        "ledger_convergence_p99_ms",
        "sybil_share",
    ];
    let mut columns: Vec<&str> = Vec::new();
    if let Some(sweep) = &scenario.sweep {
        columns.extend(sweep.metrics.iter().map(String::as_str));
    }
    for c in SHOWN {
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = results
        .first()
        .map(|r| r.labels.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    header.extend(columns.iter().map(|c| c.to_string()));
    for r in results {
        let mut row: Vec<String> = r.labels.iter().map(|(_, v)| v.clone()).collect();
        row.extend(
            columns
                .iter()
                .map(|c| r.metrics.get(c).map_or("?".into(), number)),
        );
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "{} ({} run(s))", scenario.name, results.len());
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(out, "{}", line(&header));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

/// Writes the figures of a sweep: `<metric>-vs-<x>.svg` with one line per series value,
/// or with `combine` one `<scenario>-vs-<x>.svg` with a line per metric and series value.
pub fn sweep_figures(
    dir: &Path,
    name: &str,
    sweep: &Sweep,
    results: &[RunResult],
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let x_name = short(&sweep.x);
    let mut combined: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for metric in &sweep.metrics {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for r in results {
            let x = label_value(r, &sweep.x)
                .or_else(|| r.metrics.get(&sweep.x))
                .with_context(|| {
                    format!("sweep.x {} is neither a swept field nor a metric", sweep.x)
                })?;
            let y = r
                .metrics
                .get(metric)
                .with_context(|| format!("no metric named {metric}"))?;
            let name = match &sweep.series {
                Some(path) => format!(
                    "{} = {}",
                    short(path),
                    r.labels
                        .iter()
                        .find(|(k, _)| k == path)
                        .map_or("?", |(_, v)| v.as_str())
                ),
                None => metric.clone(),
            };
            let name = if sweep.combine && sweep.series.is_some() {
                format!("{metric}, {name}")
            } else {
                name
            };
            // An unbounded figure (a gain over nothing spent) has no place on an axis:
            // plotting it would ask for an infinite range. The CSV keeps it.
            let points: Vec<(f64, f64)> = [(x, y)]
                .into_iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            match series.iter_mut().find(|(n, _)| *n == name) {
                Some((_, have)) => have.extend(points),
                None => series.push((name, points)),
            }
        }
        for (_, points) in &mut series {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        if sweep.combine {
            combined.extend(series);
            continue;
        }
        let file = format!("{metric}-vs-{x_name}.svg");
        line_chart(
            &dir.join(&file),
            &format!("{metric} against {x_name}"),
            &sweep.x,
            metric,
            &series,
            sweep.log_x,
        )?;
        written.push(file);
    }
    if sweep.combine {
        let file = format!("{name}-vs-{x_name}.svg");
        line_chart(
            &dir.join(&file),
            &format!("{} against {x_name}", sweep.metrics.join(", ")),
            &sweep.x,
            "",
            &combined,
            sweep.log_x,
        )?;
        written.push(file);
    }
    Ok(written)
}

fn label_value(r: &RunResult, path: &str) -> Option<f64> {
    r.labels
        .iter()
        .find(|(k, _)| k == path)
        .and_then(|(_, v)| v.parse().ok())
}

fn short(path: &str) -> String {
    path.rsplit('.').next().unwrap_or(path).replace('_', "-")
}

/// The distribution of TTFT overhead (network, session opening, queueing, failover) of
/// one run, as a CDF: `ttft-overhead-cdf.svg` and `.csv`.
pub fn ttft_figure(dir: &Path, metrics: &Metrics) -> Result<Vec<String>> {
    let values = metrics.ttft_overhead_ms.values();
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let mut csv = String::from("quantile,ttft_overhead_ms\n");
    let mut points = Vec::new();
    for i in 0..=200 {
        let q = f64::from(i) / 200.0;
        let v = metrics.ttft_overhead_ms.quantile(q);
        let _ = writeln!(csv, "{q:.3},{}", number(v));
        points.push((v.max(0.1), q));
    }
    std::fs::write(dir.join("ttft-overhead-cdf.csv"), csv)?;
    line_chart(
        &dir.join("ttft-overhead-cdf.svg"),
        "TTFT overhead (network, session, queue, failover): CDF",
        "overhead, ms",
        "share of requests",
        &[("requests".to_string(), points)],
        true,
    )?;
    Ok(vec![
        "ttft-overhead-cdf.svg".into(),
        "ttft-overhead-cdf.csv".into(),
    ])
}

const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> Result<()> {
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for (x, y) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        // No point at all (every figure unbounded): an empty chart.
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let y1 = y1 + (y1 - y0) * 0.08;
    let root = SVGBackend::new(path, (760, 480)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let builder = |root| {
        let mut b = ChartBuilder::on(root);
        b.caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(64);
        b
    };
    macro_rules! plot {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .draw()
                .map_err(|e| draw(&e))?;
            for (i, (name, points)) in series.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| draw(&e))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))
                    .map_err(|e| draw(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| draw(&e))?;
        }};
    }
    if log_x && x0 > 0.0 {
        plot!(builder(&root)
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(|e| draw(&e))?);
    } else {
        plot!(builder(&root)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| draw(&e))?);
    }
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gain over nothing spent is infinite: the figure leaves it out (plotters asked
    /// for an infinite range ran for ever), and a chart with no finite point is empty.
    #[test]
    fn unbounded_figures_are_left_out_of_charts() {
        let dir = tempfile::tempdir().unwrap();
        let run = |share: &str, gain: f64| {
            let mut metrics = Metrics::default();
            metrics.attack_gain[1] = gain;
            RunResult {
                labels: vec![("adversaries.ack_pick".into(), share.into())],
                metrics,
            }
        };
        let sweep = Sweep {
            x: "adversaries.ack_pick".into(),
            series: None,
            metrics: vec!["gain_ack_pick".into()],
            grid: Default::default(),
            follow: Default::default(),
            log_x: false,
            combine: false,
        };
        let some = [run("0.1", f64::INFINITY), run("0.2", 0.5)];
        let files = sweep_figures(dir.path(), "t", &sweep, &some).unwrap();
        assert_eq!(files, ["gain_ack_pick-vs-ack-pick.svg"]);
        let none = [run("0.1", f64::INFINITY), run("0.2", f64::NAN)];
        sweep_figures(dir.path(), "t", &sweep, &none).unwrap();
    }
}
