//! `frugal tco`: total cost of an LLM project over a horizon, the five drivers side by side for
//! several scenarios, break-even volumes, and a stacked-bar chart.

use crate::chart::{human, tco_bars};
use crate::cost_cmd::SourcesArgs;
use crate::Ctx;
use anyhow::{Context, Result};
use clap::Args;
use frugal_cost::tco::{evaluate, parse_spec};
use std::path::PathBuf;

#[derive(Args)]
pub struct TcoArgs {
    /// The project spec (TOML): horizon, volume and [[scenario]]s; see examples/tco/.
    spec: PathBuf,
    /// Every input and intermediate value as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write a stacked-bar chart of the five drivers per scenario (SVG).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Print the formula and inputs behind every number.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    sources: SourcesArgs,
}

pub fn run(a: TcoArgs, _ctx: &Ctx) -> Result<()> {
    if let Some(c) = &a.chart {
        if c.extension().is_none_or(|e| e != "svg") {
            anyhow::bail!(
                "--chart {}: the chart is an SVG file; name it *.svg",
                c.display()
            );
        }
    }
    let text = std::fs::read_to_string(&a.spec)
        .with_context(|| format!("reading {}", a.spec.display()))?;
    let spec = parse_spec(&text, &a.spec.display().to_string())?;
    let report = evaluate(&spec, &a.sources.catalog()?, &a.sources.profiles()?)
        .with_context(|| format!("in {}", a.spec.display()))?;
    if let Some(path) = &a.chart {
        tco_bars(&report, path)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} — {} years, {} requests a year",
        report.name,
        report.horizon_years,
        human(report.requests_per_year)
    );
    let mut header = vec!["USD".to_string()];
    header.extend(report.scenarios.iter().map(|s| s.name.clone()));
    let mut table = crate::io::table(header);
    for k in 0..5 {
        let mut row = vec![report.scenarios[0].drivers.parts()[k].0.to_string()];
        row.extend(
            report
                .scenarios
                .iter()
                .map(|s| format!("{:.0}", s.drivers.parts()[k].1)),
        );
        table.add_row(row);
    }
    let mut add = |label: &str, f: &dyn Fn(&frugal_cost::tco::ScenarioResult) -> String| {
        let mut row = vec![label.to_string()];
        row.extend(report.scenarios.iter().map(f));
        table.add_row(row);
    };
    add("total", &|s| format!("{:.0}", s.total_usd));
    add("per request", &|s| format!("{:.6}", s.usd_per_request));
    add("energy kWh", &|s| {
        format!("{:.0}", s.serving_kwh + s.training_kwh)
    });
    add("kg CO2", &|s| format!("{:.0}", s.kg_co2));
    println!("{table}");
    for b in &report.break_even {
        println!("break-even, {} vs {}: {}", b.a, b.b, b.note);
    }
    if a.explain {
        for s in &report.scenarios {
            println!("\n{}:", s.name);
            for line in &s.explain {
                println!("  {line}");
            }
        }
    }
    if let Some(path) = &a.chart {
        println!("chart: {}", path.display());
    }
    Ok(())
}
