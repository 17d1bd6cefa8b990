//! Charts as SVG files: the TCO stacked bars, the few-shot learning curve, federated rounds.

use anyhow::{Context, Result};
use frugal_cost::tco::Report;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 5] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
];

/// Draws into a temporary file beside `path`, then renames it, so a failed run leaves no
/// half-written chart.
fn atomically(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("svg.partial");
    let result = draw(&tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

type LineChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Horizontal reference lines across [x0, x1] (e.g. zero-shot, centralised), then the legend.
fn reference_lines<'a, 'b: 'a>(
    chart: &mut LineChart<'a, 'b>,
    refs: &[(String, f64)],
    x0: f64,
    x1: f64,
) -> Result<()> {
    for (i, (name, v)) in refs.iter().enumerate() {
        let color = COLORS[(i + 1) % COLORS.len()];
        chart
            .draw_series(LineSeries::new([(x0, *v), (x1, *v)], color.stroke_width(2)))?
            .label(format!("{name} ({v:.3})"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// One stacked bar per scenario, split into the five cost drivers.
pub fn tco_bars(report: &Report, path: &Path) -> Result<()> {
    atomically(path, |tmp| draw(report, tmp))
}

/// One point of a learning curve: examples per label, and the mean, lowest and highest
/// accuracy over seeds.
pub struct CurvePoint {
    pub shots: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Accuracy against examples per label (log₂ axis), with the spread over seeds as error bars,
/// and horizontal reference lines (zero-shot, full fine-tuning).
pub fn learning_curve(
    title: &str,
    points: &[CurvePoint],
    refs: &[(String, f64)],
    path: &Path,
) -> Result<()> {
    let svg = learning_curve_svg(title, "few-shot (mean over seeds)", points, refs)?;
    crate::io::write_atomic(path, svg.as_bytes())
}

/// The learning curve as an SVG string (`series` names the line).
pub fn learning_curve_svg(
    title: &str,
    series: &str,
    points: &[CurvePoint],
    refs: &[(String, f64)],
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let xs: Vec<f64> = points.iter().map(|p| (p.shots as f64).log2()).collect();
        let (x0, x1) = (
            xs.iter().copied().fold(f64::INFINITY, f64::min) - 0.3,
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max) + 0.3,
        );
        let lows = points.iter().map(|p| p.min).chain(refs.iter().map(|r| r.1));
        let y0 = (lows.fold(1.0, f64::min) - 0.05).max(0.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("labelled examples per label")
            .y_desc("accuracy")
            .x_labels(points.len() + 2)
            .x_label_formatter(&|x| {
                let k = 2f64.powf(*x);
                if (k - k.round()).abs() < 0.01 {
                    format!("{}", k.round())
                } else {
                    String::new()
                }
            })
            .draw()?;
        let c = COLORS[0];
        chart
            .draw_series(LineSeries::new(
                points.iter().zip(&xs).map(|(p, &x)| (x, p.mean)),
                c.stroke_width(2),
            ))?
            .label(series)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(
            points
                .iter()
                .zip(&xs)
                .map(|(p, &x)| ErrorBar::new_vertical(x, p.min, p.mean, p.max, c.filled(), 8)),
        )?;
        reference_lines(&mut chart, refs, x0, x1)?;
        root.present()?;
    }
    Ok(svg)
}

/// Accuracy per federated round as a line, with horizontal reference lines (centralised).
pub fn rounds(
    title: &str,
    points: &[(usize, f64)],
    refs: &[(String, f64)],
    path: &Path,
) -> Result<()> {
    atomically(path, |tmp| {
        let root = SVGBackend::new(tmp, (760, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let x1 = points.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64 + 0.5;
        let lows = points.iter().map(|p| p.1).chain(refs.iter().map(|r| r.1));
        let y0 = (lows.fold(1.0, f64::min) - 0.05).max(0.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5..x1, y0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("accuracy")
            .draw()?;
        let c = COLORS[0];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(r, a)| (r as f64, a)),
                c.stroke_width(2),
            ))?
            .label("federated")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        reference_lines(&mut chart, refs, 0.5, x1)?;
        root.present()?;
        Ok(())
    })
}

fn draw(report: &Report, path: &Path) -> Result<()> {
    let n = report.scenarios.len();
    let max = report
        .scenarios
        .iter()
        .map(|s| s.total_usd)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.45; // headroom for the legend
    let root = SVGBackend::new(path, (200 + 180 * n as u32, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} — total cost over {} years (USD)",
        report.name, report.horizon_years
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..n as f64, 0f64..max)?;
    let names: Vec<String> = report.scenarios.iter().map(|s| s.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("${}", human(*y)))
        .draw()?;
    for (k, color) in COLORS.iter().enumerate() {
        let label = report
            .scenarios
            .first()
            .map(|s| s.drivers.parts()[k].0)
            .unwrap_or("");
        chart
            .draw_series(report.scenarios.iter().enumerate().map(|(i, s)| {
                let parts = s.drivers.parts();
                let below: f64 = parts[..k].iter().map(|p| p.1).sum();
                let x = i as f64;
                Rectangle::new(
                    [(x + 0.2, below), (x + 0.8, below + parts[k].1)],
                    color.filled(),
                )
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// 1234567 → "1.23M".
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}B", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Alternatives on cost (log axis) against accuracy, the Pareto frontier joining those no other
/// beats on both, and the reference's cost as a vertical line. Returns the SVG text.
pub fn cost_quality_svg(
    points: &[(String, f64, f64)],
    reference: Option<(String, f64)>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let costs = points
            .iter()
            .map(|p| p.1)
            .chain(reference.iter().map(|r| r.1));
        let lo = costs.clone().fold(f64::INFINITY, f64::min).max(1e-9) / 3.0;
        let hi = costs.fold(0.0, f64::max).max(lo * 10.0) * 3.0;
        let y0 = (points.iter().map(|p| p.2).fold(1.0, f64::min) - 0.05).max(0.0);
        let mut chart = ChartBuilder::on(&root)
            .caption("quality against cost", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), y0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("USD per 1,000 requests (log)")
            .y_desc("accuracy")
            .x_label_formatter(&|x| format!("${x:.0e}"))
            .draw()?;
        // The frontier: by cost, each point more accurate than every cheaper one.
        let mut sorted: Vec<&(String, f64, f64)> = points.iter().collect();
        sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut frontier = vec![];
        let mut best = f64::NEG_INFINITY;
        for p in sorted {
            if p.2 > best {
                best = p.2;
                frontier.push((p.1, p.2));
            }
        }
        let c = COLORS[0];
        chart
            .draw_series(LineSeries::new(frontier, c.stroke_width(2)))?
            .label("Pareto frontier")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|(name, cost, acc)| {
            EmptyElement::at((*cost, *acc))
                + Circle::new((0, 0), 5, COLORS[1].filled())
                + Text::new(name.clone(), (7, -12), ("sans-serif", 13))
        }))?;
        if let Some((name, cost)) = reference {
            let r = COLORS[2];
            chart
                .draw_series(LineSeries::new(
                    [(cost, y0), (cost, 1.0)],
                    r.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], r.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// One horizontal bar per alternative: USD per 1,000 requests on a log axis. Returns the SVG.
pub fn cost_bars_svg(items: &[(String, f64)]) -> Result<String> {
    let mut svg = String::new();
    {
        let n = items.len().max(1);
        let root = SVGBackend::with_string(&mut svg, (760, 80 + 40 * n as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let lo = items
            .iter()
            .map(|i| i.1)
            .fold(f64::INFINITY, f64::min)
            .max(1e-9)
            / 3.0;
        let hi = items.iter().map(|i| i.1).fold(0.0, f64::max).max(lo * 10.0) * 3.0;
        let names: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption("USD per 1,000 requests (log)", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(30)
            .y_label_area_size(110)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| {
                let i = y.floor() as usize;
                if (y - i as f64 - 0.5).abs() < 0.01 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|x| format!("${x:.0e}"))
            .draw()?;
        chart.draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [(lo, i as f64 + 0.2), (*v, i as f64 + 0.8)],
                COLORS[i % COLORS.len()].filled(),
            )
        }))?;
        root.present()?;
    }
    Ok(svg)
}
