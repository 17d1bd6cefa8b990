//! `frugal data prepare|stats`: labelled text data sets made ready for training.

use crate::io::store;
use crate::Ctx;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use frugal_train::data::{load, stats, stratified_split, write_jsonl, Example, Fields, Splits};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum DataCmd {
    /// Split a data set into train.jsonl, valid.jsonl and test.jsonl.
    Prepare(PrepareArgs),
    /// Counts per label and length percentiles.
    Stats(StatsArgs),
}

#[derive(Args, Clone)]
pub struct FieldArgs {
    /// The field (JSONL) or column (CSV/TSV) holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// The field or column holding the label.
    #[arg(long, default_value = "label")]
    label_field: String,
}

impl FieldArgs {
    pub fn fields(&self) -> Fields {
        Fields {
            text: self.text_field.clone(),
            label: self.label_field.clone(),
        }
    }
}

#[derive(Args)]
pub struct PrepareArgs {
    /// `spamassassin` (the pinned corpus, split as the anchors split it), another task of the
    /// quality battery (`frugal bench quality --list`; split as `frugal report --task` splits
    /// it), `email-subjects` (SpamAssassin's ham messages as prompt→answer pairs: body → subject,
    /// for `frugal sft`) or a .jsonl/.csv/.tsv file.
    source: String,
    /// Folder for train.jsonl, valid.jsonl and test.jsonl.
    #[arg(long, value_parser = crate::out_dir)]
    out: PathBuf,
    #[command(flatten)]
    fields: FieldArgs,
    /// Fraction of each label held out for test (files only).
    #[arg(long, default_value_t = 0.2)]
    test_frac: f64,
    /// Fraction of each label held out for validation (files only).
    #[arg(long, default_value_t = 0.1)]
    valid_frac: f64,
    /// Seed of the stratified split (files only) and of the quick budget's subsample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `quick`: the examples `frugal report --budget quick` trains and tests on (at most 800
    /// training, 200 validation, 400 test, drawn with --seed), so that `train`, `fed simulate`
    /// and the rest can be run on exactly the report's data; `full`: every example.
    #[arg(long, value_enum, default_value = "full")]
    budget: crate::report::Budget,
}

#[derive(Args)]
pub struct StatsArgs {
    /// `spamassassin`, another task of the quality battery, or a .jsonl/.csv/.tsv file.
    source: String,
    #[command(flatten)]
    fields: FieldArgs,
    #[arg(long)]
    json: bool,
}

/// The splits of a built-in task (SpamAssassin or another battery task) named `source`, fetched
/// on first use; `None` when `source` names none.
pub(crate) fn battery_splits(source: &str, quiet: bool) -> Result<Option<Splits>> {
    let Some(t) = frugal_train::battery::task(source) else {
        return Ok(None);
    };
    let dir = store(quiet)
        .ensure(t.asset)
        .with_context(|| format!("{source}: fetching its data"))?;
    Ok(Some(
        frugal_train::battery::load(t, &dir).with_context(|| source.to_string())?,
    ))
}

/// Examples of a source: a built-in task by name (every split), else a file.
pub(crate) fn examples(source: &str, fields: &Fields, quiet: bool) -> Result<Vec<Example>> {
    if let Some(s) = battery_splits(source, quiet)? {
        return Ok([s.train, s.valid, s.test].concat());
    }
    let path = Path::new(source);
    if !path.is_file() {
        anyhow::bail!(
            "{source}: no such file, and not a built-in task ({})",
            frugal_train::battery::names()
        );
    }
    Ok(load(path, fields)?)
}

pub fn run(cmd: DataCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        DataCmd::Prepare(a) if a.source == "email-subjects" => {
            let dir = store(ctx.quiet).ensure("spamassassin")?;
            let s = frugal_train::sft::email_subjects(&dir, crate::sft_cmd::SUBJECT_BODY_CHARS)?;
            for (name, set) in [("train", &s.train), ("valid", &s.valid), ("test", &s.test)] {
                let path = a.out.join(format!("{name}.jsonl"));
                let mut text = String::new();
                for e in set {
                    text.push_str(&serde_json::to_string(
                        &serde_json::json!({"prompt": e.prompt(), "answer": e.answer}),
                    )?);
                    text.push('\n');
                }
                crate::io::write_atomic(&path, text.as_bytes())?;
                println!("{}\t{} pairs", path.display(), set.len());
            }
            Ok(())
        }
        DataCmd::Prepare(a) => {
            let splits = match battery_splits(&a.source, ctx.quiet)? {
                Some(s) => s,
                None => {
                    let all = examples(&a.source, &a.fields.fields(), ctx.quiet)?;
                    stratified_split(all, a.test_frac, a.valid_frac, a.seed)?
                }
            };
            let splits = match a.budget {
                crate::report::Budget::Quick => frugal_train::battery::quick(splits, a.seed),
                crate::report::Budget::Full => splits,
            };
            std::fs::create_dir_all(&a.out)
                .with_context(|| format!("creating {}", a.out.display()))?;
            for (name, set) in [
                ("train", &splits.train),
                ("valid", &splits.valid),
                ("test", &splits.test),
            ] {
                let path = a.out.join(format!("{name}.jsonl"));
                write_jsonl(&path, set)?;
                println!("{}\t{} examples", path.display(), set.len());
            }
            Ok(())
        }
        DataCmd::Stats(a) => {
            let s = stats(&examples(&a.source, &a.fields.fields(), ctx.quiet)?);
            if a.json {
                println!("{}", serde_json::to_string(&s)?);
                return Ok(());
            }
            println!("{} examples, {} labels", s.examples, s.labels.len());
            let mut t = crate::io::table(["label", "examples", "share"]);
            for (label, n) in &s.labels {
                t.add_row([
                    label.clone(),
                    n.to_string(),
                    format!("{:.1}%", 100.0 * *n as f64 / s.examples as f64),
                ]);
            }
            println!("{t}");
            println!(
                "words per text: p50 {}, p90 {}, p99 {}, max {}",
                s.words[0], s.words[1], s.words[2], s.words[3]
            );
            println!(
                "chars per text: p50 {}, p90 {}, p99 {}, max {}",
                s.chars[0], s.chars[1], s.chars[2], s.chars[3]
            );
            Ok(())
        }
    }
}
