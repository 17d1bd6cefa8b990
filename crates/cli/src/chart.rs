//! Charts as SVG files: the TCO stacked bars.

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

/// One stacked bar per scenario, split into the five cost drivers. Written to a temporary file
/// beside `path`, then renamed, so a failed run leaves no half-written chart.
pub fn tco_bars(report: &Report, path: &Path) -> Result<()> {
    let tmp = path.with_extension("svg.partial");
    let result = draw(report, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
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
