//! `frugal cache eval`: the semantic cache's decision measured offline on labelled question
//! pairs (the user's own traffic, or the QQP sample in ../shared/data/qqp), so its threshold can
//! be chosen for a false-hit rate instead of guessed.

use crate::io::{load_encoder, progress};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use frugal_serve::cache::{evaluate, threshold_for, PairCase};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CacheCmd {
    /// Hits, false hits and recall of the cache's rule (similarity threshold, then the
    /// negation and number guard) on labelled pairs.
    Eval(EvalArgs),
}

#[derive(Args)]
pub struct EvalArgs {
    /// JSONL of {"text_a", "text_b", "label"}: label 1 when the two ask the same thing; `b` is
    /// asked after `a` was answered.
    #[arg(long)]
    pairs: PathBuf,
    /// The encoder that embeds requests (as `serve --cache-model`).
    #[arg(long, default_value = "minilm")]
    model: String,
    /// The cosine threshold to judge (as `serve --cache-threshold`).
    #[arg(long, default_value_t = 0.95, value_parser = crate::unit_interval)]
    threshold: f32,
    /// Only the first N pairs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Also find the lowest threshold whose false hits are at most this share of hits.
    #[arg(long, value_parser = crate::unit_interval)]
    target_false_hits: Option<f32>,
    #[arg(long)]
    json: bool,
}

fn read_pairs(a: &EvalArgs) -> Result<Vec<(String, String, bool)>> {
    let name = a.pairs.display().to_string();
    let text = std::fs::read_to_string(&a.pairs)
        .with_context(|| format!("--pairs {name}: cannot read it"))?;
    let mut out = vec![];
    for (i, l) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(l)
            .with_context(|| format!("--pairs {name} line {}: invalid JSON", i + 1))?;
        let field = |k: &str| -> Result<String> {
            match v.get(k).and_then(|x| x.as_str()) {
                Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                _ => bail!(
                    "--pairs {name} line {}: no text in \"{k}\" (each line needs text_a, text_b and label 0 or 1)",
                    i + 1
                ),
            }
        };
        let label = match &v["label"] {
            serde_json::Value::Number(n) if n.as_u64() == Some(1) => true,
            serde_json::Value::Number(n) if n.as_u64() == Some(0) => false,
            serde_json::Value::Bool(b) => *b,
            other => bail!("--pairs {name} line {}: label {other} is not 0 or 1", i + 1),
        };
        out.push((field("text_a")?, field("text_b")?, label));
        if a.limit.is_some_and(|n| out.len() as u64 >= n) {
            break;
        }
    }
    if out.is_empty() {
        bail!("--pairs {name}: no pairs");
    }
    Ok(out)
}

pub fn run(cmd: CacheCmd, ctx: &Ctx) -> Result<()> {
    let CacheCmd::Eval(a) = cmd;
    let pairs = read_pairs(&a)?;
    let enc = load_encoder(&a.model, ctx.quiet)?;
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|(x, y, _)| [x.as_str(), y.as_str()])
        .collect();
    let pb = progress(texts.len() as u64, ctx.quiet, "embedding");
    let emb = enc.embed(&texts, 32, &mut |done| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    let cases: Vec<PairCase> = pairs
        .iter()
        .enumerate()
        .map(|(i, (x, y, same))| {
            PairCase::of(x, y, &emb.vectors[2 * i], &emb.vectors[2 * i + 1], *same)
        })
        .collect();
    let at = evaluate(&cases, a.threshold);
    let target = a
        .target_false_hits
        .map(|t| (t, threshold_for(&cases, t as f64, 1)));
    let sweep: Vec<_> = [0.80f32, 0.85, 0.90, 0.93, 0.95, 0.97, 0.98, 0.99]
        .iter()
        .map(|&t| evaluate(&cases, t))
        .collect();
    if a.json {
        let mut v = serde_json::to_value(at)?;
        v["sweep"] = serde_json::to_value(&sweep)?;
        if let Some((t, found)) = target {
            v["target_false_hit_rate"] = serde_json::json!(t);
            v["for_target"] = serde_json::to_value(found)?;
        }
        println!("{v}");
        return Ok(());
    }
    let mut table = crate::io::table([
        "threshold",
        "hits",
        "false hits",
        "false share of hits",
        "recall",
        "guarded",
    ]);
    let asked_in_sweep = sweep.iter().any(|e| e.threshold == at.threshold);
    let rows = sweep
        .iter()
        .chain((!asked_in_sweep).then_some(&at))
        .collect::<Vec<_>>();
    for e in rows {
        table.add_row([
            format!(
                "{}{}",
                e.threshold,
                if e.threshold == at.threshold {
                    " (asked)"
                } else {
                    ""
                }
            ),
            e.hits.to_string(),
            e.false_hits.to_string(),
            format!("{:.1}%", e.false_hit_rate * 100.0),
            format!("{:.1}%", e.recall * 100.0),
            e.guarded.to_string(),
        ]);
    }
    println!(
        "{} pairs ({} the same question), encoder {}; a hit needs the similarity and the guard (negations, numbers)",
        at.pairs,
        cases.iter().filter(|c| c.same).count(),
        a.model
    );
    println!("{table}");
    if let Some((t, found)) = target {
        match found {
            Some(e) => println!(
                "lowest threshold with false hits ≤ {:.1}% of hits: {:.4} ({} hits, {} false, recall {:.1}%)",
                t * 100.0,
                e.threshold,
                e.hits,
                e.false_hits,
                e.recall * 100.0
            ),
            None => println!(
                "no threshold keeps false hits ≤ {:.1}% of hits on these pairs",
                t * 100.0
            ),
        }
    }
    Ok(())
}
