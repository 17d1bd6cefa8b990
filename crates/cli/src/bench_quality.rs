//! `frugal bench quality`: every alternative of `frugal report`, with default flags, on each
//! task of the quality battery (public tasks nobody tuned frugal for), in one table. The
//! defaults are chosen on this table, never on one task.

use crate::io::write_atomic;
use crate::report::{run_report, Budget, ReportArgs, ALTERNATIVES};
use crate::Ctx;
use anyhow::{bail, Result};
use clap::{Args, Parser};
use frugal_train::battery::BATTERY;
use std::path::PathBuf;

#[derive(Args)]
pub struct QualityBench {
    /// Tasks, comma-separated (default: the whole battery; --list names them).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Alternatives, comma-separated (default: every row of the report; the reference and the
    /// majority class always run).
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    #[arg(long, value_enum, default_value = "quick")]
    budget: Budget,
    /// Where each task's report and the battery table go (a rerun reuses finished rows).
    #[arg(long, default_value = "bench-quality", value_parser = crate::out_dir)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Name the tasks and what they are, and stop.
    #[arg(long)]
    list: bool,
    #[arg(long)]
    json: bool,
}

/// Lets `bench quality` build a report's arguments as the command line would.
#[derive(Parser)]
struct ReportLine {
    #[command(flatten)]
    args: ReportArgs,
}

pub fn run(a: QualityBench, ctx: &Ctx) -> Result<()> {
    if a.list {
        let mut t = crate::io::table(["task", "asset", "what"]);
        for task in BATTERY {
            t.add_row([task.name, task.asset, task.about]);
        }
        println!("{t}");
        return Ok(());
    }
    if let Some(t) = a
        .tasks
        .iter()
        .find(|t| frugal_train::battery::task(t).is_none())
    {
        bail!(
            "--tasks {t}: not a battery task; the tasks are {}",
            frugal_train::battery::names()
        );
    }
    let tasks: Vec<&str> = if a.tasks.is_empty() {
        BATTERY.iter().map(|t| t.name).collect()
    } else {
        a.tasks.iter().map(String::as_str).collect()
    };
    let budget = format!("{:?}", a.budget).to_lowercase();
    let mut results = vec![];
    let mut failed = vec![];
    for task in &tasks {
        let out = a.out.join(task);
        let seed = a.seed.to_string();
        let mut line = vec![
            "report".to_string(),
            "--task".into(),
            task.to_string(),
            "--out".into(),
            out.to_string_lossy().into_owned(),
            "--budget".into(),
            budget.clone(),
            "--seed".into(),
            seed,
        ];
        if !a.rows.is_empty() {
            line.push("--rows".into());
            line.push(a.rows.join(","));
        }
        let args = ReportLine::try_parse_from(&line)?.args;
        if !ctx.quiet {
            eprintln!("frugal: battery task {task} …");
        }
        match run_report(&args, ctx) {
            Ok((report, _)) => results.push((task.to_string(), report)),
            Err(e) => {
                let msg = format!("{e:#}");
                if !ctx.quiet {
                    eprintln!("frugal: battery task {task} failed: {msg}");
                }
                failed.push((task.to_string(), msg));
            }
        }
    }
    let columns: Vec<&str> = ALTERNATIVES
        .iter()
        .copied()
        .filter(|n| *n != "reference")
        .filter(|n| a.rows.is_empty() || *n == "majority" || a.rows.iter().any(|r| r == n))
        .collect();
    let mut md = format!(
        "# frugal quality battery\n\nBudget `{budget}`, seed {}, default flags; accuracy on each task's test texts (↓ below the majority class).\n\n| task | train | test |",
        a.seed
    );
    for c in &columns {
        md.push_str(&format!(" {c} |"));
    }
    md.push_str(&format!(
        "\n|---|---|---|{}\n",
        "---|".repeat(columns.len())
    ));
    let mut table = vec![];
    for (task, report) in &results {
        let rows = report["rows"].as_array().cloned().unwrap_or_default();
        let acc = |n: &str| {
            rows.iter()
                .find(|r| r["name"] == n)
                .and_then(|r| r["accuracy"].as_f64())
        };
        let floor = acc("majority");
        md.push_str(&format!(
            "| {task} | {} | {} |",
            report["train_examples"], report["test_examples"]
        ));
        let mut cells = serde_json::Map::new();
        for c in &columns {
            let cell = match acc(c) {
                Some(q) => format!(
                    "{q:.4}{}",
                    if *c != "majority" && floor.is_some_and(|f| q < f) {
                        " ↓"
                    } else {
                        ""
                    }
                ),
                None => "—".into(),
            };
            md.push_str(&format!(" {cell} |"));
            cells.insert(c.to_string(), serde_json::json!(acc(c)));
        }
        md.push('\n');
        table.push(serde_json::json!({
            "task": task,
            "train_examples": report["train_examples"],
            "test_examples": report["test_examples"],
            "accuracy": cells,
        }));
    }
    for (task, msg) in &failed {
        md.push_str(&format!("\n- **{task}** failed: {msg}\n"));
    }
    let v = serde_json::json!({
        "budget": budget,
        "seed": a.seed,
        "tasks": table,
        "failed": failed.iter().map(|(t, m)| serde_json::json!({"task": t, "error": m})).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&a.out)?;
    write_atomic(&a.out.join("battery.md"), md.as_bytes())?;
    write_atomic(&a.out.join("battery.json"), &serde_json::to_vec_pretty(&v)?)?;
    if a.json {
        println!("{v}");
    } else {
        println!("{md}");
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} battery tasks failed ({}); the others' results are in {}",
            failed.len(),
            tasks.len(),
            failed
                .iter()
                .map(|f| f.0.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            a.out.join("battery.md").display()
        );
    }
    Ok(())
}
