//! `frugal cache eval`: the semantic cache's decision measured offline on labelled question
//! pairs (the user's own traffic, or the QQP sample in ../shared/data/qqp), so its threshold can
//! be chosen for a false-hit rate instead of guessed.

use crate::io::{load_encoder, progress};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use frugal_serve::cache::{
    evaluate_verified, min_prob_for, pair_text, same_label, threshold_for, PairCase,
    DEFAULT_MIN_PROB, DIFFERENT, SAME,
};
use frugal_train::classifier::{default_epochs, head_config, Classifier, Mode, TrainSpec};
use frugal_train::data::Example;
use frugal_train::trainer::TrainConfig;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CacheCmd {
    /// Hits, false hits and recall of the cache's rule (similarity threshold, then the
    /// negation and number guard, then the verifier when given) on labelled pairs.
    Eval(EvalArgs),
    /// A verifier for the cache: a pair classifier fine-tuned on labelled pairs (the cached
    /// request and the new one read together), for `serve --cache-verifier`.
    Train(TrainArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// JSONL of {"text_a", "text_b", "label"} (label 1: the same question).
    #[arg(long)]
    pairs: PathBuf,
    /// Validation pairs (default: the last 10% of --pairs); the best epoch on them is kept.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// The encoder to fine-tune (BERT family: the pair is joined by its [SEP] token).
    #[arg(long, default_value = "minilm")]
    base: String,
    /// Checkpoint folder.
    #[arg(long, value_parser = crate::out_dir)]
    out: PathBuf,
    /// Epochs (default: as `frugal train --mode full`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    epochs: Option<u32>,
    /// Tokens read of each pair.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u32).range(8..=512))]
    max_len: u32,
    /// Only the first N pairs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
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
    /// Also find the lowest threshold (or, with --verifier, the lowest verifier minimum at
    /// --threshold) whose false hits are at most this share of hits.
    #[arg(long, value_parser = crate::unit_interval)]
    target_false_hits: Option<f32>,
    /// A verifier from `frugal cache train` (as `serve --cache-verifier`).
    #[arg(long)]
    verifier: Option<PathBuf>,
    /// The verifier's minimum probability of the same question (as `serve --cache-verifier-min`).
    #[arg(long, default_value_t = DEFAULT_MIN_PROB, value_parser = crate::unit_interval, requires = "verifier")]
    min_prob: f32,
    /// Also write every pair's case (similarity, guard, verifier probability, label) to this
    /// JSONL file, to study the cache's mistakes on your own traffic.
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Skip the first N pairs (e.g. those a verifier was trained on).
    #[arg(long, default_value_t = 0)]
    skip: u64,
    #[arg(long)]
    json: bool,
}

type Pair = (String, String, bool);

fn read_pairs(path: &std::path::Path, skip: u64, limit: Option<u64>) -> Result<Vec<Pair>> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--pairs {name}: cannot read it"))?;
    let mut out = vec![];
    let mut seen = 0u64;
    for (i, l) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        seen += 1;
        if seen <= skip {
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
        if limit.is_some_and(|n| out.len() as u64 >= n) {
            break;
        }
    }
    if out.is_empty() {
        bail!(
            "--pairs {name}: no pairs{}",
            if skip > 0 { " after --skip" } else { "" }
        );
    }
    Ok(out)
}

/// The verifier's training examples of labelled pairs.
fn pair_examples(pairs: &[Pair]) -> Vec<Example> {
    pairs
        .iter()
        .map(|(a, b, same)| Example {
            text: pair_text(a, b),
            label: if *same { SAME } else { DIFFERENT }.to_string(),
        })
        .collect()
}

fn train_cmd(a: TrainArgs, ctx: &Ctx) -> Result<()> {
    let base = crate::io::encoder_base(&a.base, ctx.quiet)?;
    let mut train = pair_examples(&read_pairs(&a.pairs, 0, a.limit)?);
    let valid = match &a.valid {
        Some(v) => pair_examples(&read_pairs(v, 0, None)?),
        None => {
            let cut = train.len() - (train.len() / 10).max(1).min(train.len() - 1);
            if cut == 0 {
                bail!(
                    "--pairs {}: at least 2 pairs are needed (or give --valid)",
                    a.pairs.display()
                );
            }
            train.split_off(cut)
        }
    };
    for l in [SAME, DIFFERENT] {
        if !train.iter().any(|e| e.label == l) {
            bail!(
                "--pairs {}: no pair labelled {} in the training part; a verifier needs both",
                a.pairs.display(),
                if l == SAME { 1 } else { 0 }
            );
        }
    }
    let config = TrainConfig {
        epochs: a
            .epochs
            .map_or(default_epochs(train.len(), 16), |e| e as usize),
        lr: 5e-5,
        batch: 16,
        seed: a.seed,
        patience: 2,
        weight_decay: 0.01,
        ..Default::default()
    };
    let spec = TrainSpec {
        base: &base,
        base_name: a.base.clone(),
        train: &train,
        valid: Some(&valid),
        mode: Mode::Full,
        max_len: Some(a.max_len as usize),
        config,
        out: &a.out,
        resume: false,
        save_every: 0,
        interrupt: Some(&crate::train_cmd::INTERRUPT),
        labels: Some(vec![DIFFERENT.to_string(), SAME.to_string()]),
        soft: None,
        hidden: None,
        probe: Some(head_config(a.seed)),
    };
    let (report, _) = crate::train_cmd::run_training(&spec, ctx.quiet, "training the verifier")?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"report": report, "checkpoint": a.out, "train_pairs": train.len(), "valid_pairs": valid.len()})
        );
    } else {
        println!(
            "cache verifier trained on {} pairs ({} for validation), {} epochs in {:.0} s; best validation macro-F1 {}; checkpoint {}",
            train.len(),
            valid.len(),
            report.epochs_run,
            report.seconds,
            report.best_score.map_or("-".into(), |s| format!("{s:.4}")),
            a.out.display()
        );
        println!(
            "measure it: frugal cache eval --pairs FILE --verifier {} --target-false-hits 0.01",
            a.out.display()
        );
    }
    Ok(())
}

pub fn run(cmd: CacheCmd, ctx: &Ctx) -> Result<()> {
    let a = match cmd {
        CacheCmd::Eval(a) => a,
        CacheCmd::Train(t) => return train_cmd(t, ctx),
    };
    let pairs = read_pairs(&a.pairs, a.skip, a.limit)?;
    let enc = load_encoder(&a.model, ctx.quiet)?;
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|(x, y, _)| [x.as_str(), y.as_str()])
        .collect();
    let pb = progress(texts.len() as u64, ctx.quiet, "embedding");
    let emb = enc.embed(&texts, 32, &mut |done| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    let mut cases: Vec<PairCase> = pairs
        .iter()
        .enumerate()
        .map(|(i, (x, y, same))| {
            PairCase::of(x, y, &emb.vectors[2 * i], &emb.vectors[2 * i + 1], *same)
        })
        .collect();
    let min_prob = a.verifier.as_ref().map(|_| a.min_prob);
    if let Some(dir) = &a.verifier {
        judge(dir, &pairs, &mut cases, ctx)?;
    }
    if let Some(path) = &a.cases {
        let mut out = String::new();
        for ((x, y, _), c) in pairs.iter().zip(&cases) {
            out += &serde_json::json!({"text_a": x, "text_b": y, "same": c.same,
                "similarity": c.similarity, "compatible": c.compatible, "p_same": c.p_same})
            .to_string();
            out.push('\n');
        }
        crate::io::write_atomic(path, out.as_bytes())
            .with_context(|| format!("--cases {}", path.display()))?;
    }
    let at = evaluate_verified(&cases, a.threshold, min_prob);
    let target = a.target_false_hits.map(|t| {
        (
            t,
            match min_prob {
                None => threshold_for(&cases, t as f64, 1),
                Some(_) => min_prob_for(&cases, a.threshold, t as f64, 1),
            },
        )
    });
    let sweep: Vec<_> = match min_prob {
        None => [0.80f32, 0.85, 0.90, 0.93, 0.95, 0.97, 0.98, 0.99]
            .iter()
            .map(|&t| evaluate_verified(&cases, t, None))
            .collect(),
        Some(_) => [0.5f32, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
            .iter()
            .map(|&p| evaluate_verified(&cases, a.threshold, Some(p)))
            .collect(),
    };
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
    // The swept setting: the threshold alone, or the verifier's minimum at the asked threshold.
    let key = |e: &frugal_serve::cache::CacheEval| match e.min_prob {
        Some(p) => format!("{p}"),
        None => format!("{}", e.threshold),
    };
    let mut table = crate::io::table([
        if min_prob.is_some() {
            "verifier min"
        } else {
            "threshold"
        },
        "hits",
        "false hits",
        "false share of hits",
        "recall",
        "guarded",
        "unverified",
    ]);
    let asked_in_sweep = sweep.iter().any(|e| key(e) == key(&at));
    let rows = sweep
        .iter()
        .chain((!asked_in_sweep).then_some(&at))
        .collect::<Vec<_>>();
    for e in rows {
        table.add_row([
            format!(
                "{}{}",
                key(e),
                if key(e) == key(&at) { " (asked)" } else { "" }
            ),
            e.hits.to_string(),
            e.false_hits.to_string(),
            format!("{:.1}%", e.false_hit_rate * 100.0),
            format!("{:.1}%", e.recall * 100.0),
            e.guarded.to_string(),
            e.unverified.to_string(),
        ]);
    }
    println!(
        "{} pairs ({} the same question), encoder {}; a hit needs the similarity{} and the guard (negations, numbers){}",
        at.pairs,
        cases.iter().filter(|c| c.same).count(),
        a.model,
        if min_prob.is_some() {
            format!(" (≥ {})", a.threshold)
        } else {
            String::new()
        },
        match &a.verifier {
            Some(d) => format!(", then the verifier {}", d.display()),
            None => String::new(),
        }
    );
    println!("{table}");
    if let Some((t, found)) = target {
        let what = if min_prob.is_some() {
            "verifier minimum"
        } else {
            "threshold"
        };
        match found {
            Some(e) => println!(
                "lowest {what} with false hits ≤ {:.1}% of hits: {:.4} ({} hits, {} false, recall {:.1}%)",
                t * 100.0,
                e.min_prob.unwrap_or(e.threshold),
                e.hits,
                e.false_hits,
                e.recall * 100.0
            ),
            None => println!(
                "no {what} keeps false hits ≤ {:.1}% of hits on these pairs",
                t * 100.0
            ),
        }
    }
    Ok(())
}

/// The verifier's probability of the same question for every pair (run on all, so a sweep of
/// thresholds needs no second pass).
fn judge(dir: &std::path::Path, pairs: &[Pair], cases: &mut [PairCase], ctx: &Ctx) -> Result<()> {
    let (mut clf, info) =
        Classifier::load(dir).with_context(|| format!("--verifier {}", dir.display()))?;
    let same = same_label(&info.labels)
        .map_err(|e| anyhow::anyhow!("--verifier {}: {e}", dir.display()))?;
    crate::io::apply_precision(&mut clf.encoder, ctx)?;
    let texts: Vec<String> = pairs.iter().map(|(a, b, _)| pair_text(a, b)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let pb = progress(refs.len() as u64, ctx.quiet, "verifying");
    let mut probs = Vec::with_capacity(refs.len());
    for chunk in refs.chunks(256) {
        probs.extend(clf.predict(chunk, 32)?);
        pb.set_position(probs.len() as u64);
    }
    pb.finish_and_clear();
    for (c, p) in cases.iter_mut().zip(probs) {
        c.p_same = p.get(same).copied();
    }
    Ok(())
}
