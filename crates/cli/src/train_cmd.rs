//! `frugal train`, `frugal eval`, `frugal predict`: text classifiers from a pretrained encoder,
//! by transfer learning (`--mode head`) or full fine-tuning (`--mode full`).

use crate::data_cmd::{battery_splits, examples, FieldArgs};
use crate::io::{progress, store};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use frugal_models::resolve::{resolve_model, ModelPath};
use frugal_train::classifier::{
    default_epochs, head_config, train, CheckpointInfo, Classifier, Mode, TrainSpec,
};
use frugal_train::data::Example;
use frugal_train::trainer::FitReport;
use frugal_train::trainer::TrainConfig;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which weights train (and, in federated runs, travel).
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
    /// Only the classification head, on frozen embeddings (transfer learning; a few KB).
    Head,
    /// Every weight (fine-tuning; ~90 MB for MiniLM).
    Full,
    /// Low-rank adapters (rank 8) on each layer's query and value projections, and the head
    /// (~300 KB); checkpoints fold them into the weights.
    Lora,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Head => Mode::Head,
            ModeArg::Full => Mode::Full,
            ModeArg::Lora => Mode::Lora,
        }
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// The pretrained encoder: asset name or Hugging Face folder.
    #[arg(long, default_value = "minilm")]
    base: String,
    /// Training data: `spamassassin` or another task of the quality battery (its train split;
    /// `frugal bench quality --list`) or a .jsonl/.csv/.tsv file.
    #[arg(long)]
    data: String,
    /// Validation data (default for a built-in task: its validation split; else none).
    #[arg(long)]
    valid: Option<String>,
    /// Which weights train.
    #[arg(long, value_enum, default_value = "head")]
    mode: ModeArg,
    /// Checkpoint folder (the best epoch by validation macro-F1 is kept).
    #[arg(long, value_parser = crate::out_dir)]
    out: PathBuf,
    /// Epochs (default: head 20; full and LoRA 3, more on small sets so that at least 100
    /// optimiser steps run, at most 30).
    #[arg(long)]
    epochs: Option<u32>,
    /// Full and LoRA modes: start the new head random instead of fitting it on frozen
    /// embeddings first (linear probing, the default, which keeps a fine-tuned model from
    /// ending below what the head alone reaches).
    #[arg(long)]
    no_probe: bool,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    accum: u32,
    /// Truncate texts to this many tokens (default 128; at most the model's limit).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=8192))]
    max_len: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many epochs without a better validation macro-F1 (0: never).
    #[arg(long, default_value_t = 2)]
    patience: u32,
    /// Continue an interrupted run (Ctrl-C, a crash) from the state it saved in `OUT.resume`;
    /// the other flags and the data must be the same as the interrupted run's.
    #[arg(long)]
    resume: bool,
    /// Save the resumable state every this many optimiser steps (0: only at each epoch's end).
    #[arg(long, default_value_t = 100)]
    save_every: u32,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

/// Set by Ctrl-C: training stops after the current step and saves its state; a second Ctrl-C
/// exits at once.
pub(crate) static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C stop training after the current step with its state saved (see `INTERRUPT`).
/// Without a handler (one is already set) Ctrl-C just ends the process: checkpoints and saved
/// state are written atomically either way.
pub(crate) fn catch_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPT.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!(
            "\nstopping after this step and saving the training state (Ctrl-C again to quit now)"
        );
    });
}

/// Runs `spec` with Ctrl-C caught and a progress bar (loss, examples/s, ETA).
pub(crate) fn run_training(
    spec: &TrainSpec,
    quiet: bool,
    what: &str,
) -> Result<(FitReport, CheckpointInfo)> {
    catch_ctrl_c();
    let steps = spec.train.len().div_ceil(spec.config.batch) * spec.config.epochs;
    let pb = progress(steps as u64, quiet, what);
    let out = train(spec, &mut |p| {
        pb.set_position(p.step as u64);
        pb.set_message(format!(
            "epoch {} loss {:.4} {:.1} ex/s",
            p.epoch + 1,
            p.loss,
            p.examples_per_s
        ));
    });
    pb.finish_and_clear();
    Ok(out?)
}

/// Training (and optionally validation) examples of a source name or file.
pub(crate) fn load_sets(
    data: &str,
    valid: Option<&str>,
    fields: &FieldArgs,
    quiet: bool,
) -> Result<(Vec<Example>, Option<Vec<Example>>)> {
    let valid = match valid {
        Some(v) => Some(match battery_splits(v, quiet)? {
            Some(s) => s.valid,
            None => examples(v, &fields.fields(), quiet)?,
        }),
        None => None,
    };
    if let Some(s) = battery_splits(data, quiet)? {
        return Ok((s.train, valid.or(Some(s.valid))));
    }
    Ok((examples(data, &fields.fields(), quiet)?, valid))
}

/// Evaluation examples: a built-in task's name means its test split.
pub(crate) fn load_eval(data: &str, fields: &FieldArgs, quiet: bool) -> Result<Vec<Example>> {
    if let Some(s) = battery_splits(data, quiet)? {
        return Ok(s.test);
    }
    examples(data, &fields.fields(), quiet)
}

pub fn train_cmd(a: TrainArgs, ctx: &Ctx) -> Result<()> {
    let base = match resolve_model(&a.base, &store(ctx.quiet))? {
        ModelPath::HfDir(d) => d,
        ModelPath::Gguf(p) => bail!(
            "--base {}: a GGUF chat model; train needs an encoder folder or asset (minilm)",
            p.display()
        ),
    };
    let (train_set, valid) = load_sets(&a.data, a.valid.as_deref(), &a.fields, ctx.quiet)?;
    let mode = Mode::from(a.mode);
    let config = TrainConfig {
        epochs: a.epochs.map_or(
            if mode == Mode::Head {
                20
            } else {
                default_epochs(train_set.len(), a.batch as usize)
            },
            |e| e as usize,
        ),
        lr: a.lr.unwrap_or(match mode {
            Mode::Head => 1e-2,
            Mode::Full => 5e-5,
            Mode::Lora => 5e-4,
        }),
        batch: a.batch as usize,
        accum: a.accum as usize,
        seed: a.seed,
        patience: a.patience as usize,
        weight_decay: if mode == Mode::Head { 0.0 } else { 0.01 },
        ..Default::default()
    };
    let spec = TrainSpec {
        base: &base,
        base_name: a.base.clone(),
        train: &train_set,
        valid: valid.as_deref(),
        mode,
        max_len: Some(a.max_len as usize),
        config: config.clone(),
        out: &a.out,
        resume: a.resume,
        save_every: a.save_every as usize,
        interrupt: Some(&INTERRUPT),
        labels: None,
        soft: None,
        hidden: None,
        probe: (mode != Mode::Head && !a.no_probe).then(|| head_config(a.seed)),
    };
    let (report, info) = run_training(&spec, ctx.quiet, "training")?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"report": report, "checkpoint": a.out, "info": info})
        );
    } else {
        println!(
            "trained {} examples, {} epochs, {} steps in {:.1} s ({:.1} examples/s); final loss {:.4}",
            train_set.len(),
            report.epochs_run,
            report.steps,
            report.seconds,
            report.examples_per_s,
            report.final_loss
        );
        if let Some(p) = report.probe_score {
            println!(
                "linear probe first (the head on frozen embeddings): validation macro-F1 {p:.4}"
            );
        }
        match (report.best_epoch, report.best_score) {
            (None, Some(s)) if report.probe_score.is_some() => println!(
                "no epoch beat the linear probe's validation macro-F1 {s:.4}: the probe is kept; checkpoint {}",
                a.out.display()
            ),
            (Some(e), Some(s)) => println!(
                "best validation macro-F1 {s:.4} at epoch {}; checkpoint {}",
                e + 1,
                a.out.display()
            ),
            _ => println!("checkpoint {}", a.out.display()),
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint folder written by `frugal train`.
    #[arg(long)]
    model: PathBuf,
    /// `spamassassin` or another task of the quality battery (its test split) or a
    /// .jsonl/.csv/.tsv file.
    #[arg(long)]
    data: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

pub fn eval_cmd(a: EvalArgs, ctx: &Ctx) -> Result<()> {
    let (mut clf, _) =
        Classifier::load(&a.model).with_context(|| format!("--model {}", a.model.display()))?;
    crate::io::apply_precision(&mut clf.encoder, ctx)?;
    let data = load_eval(&a.data, &a.fields, ctx.quiet)?;
    let m = clf.evaluate(&data, 32)?;
    if a.json {
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    println!(
        "{} examples: accuracy {:.4}, macro-F1 {:.4}",
        data.len(),
        m.accuracy,
        m.macro_f1
    );
    let mut t = crate::io::table(["label", "precision", "recall", "f1", "support"]);
    for (label, s) in &m.per_class {
        t.add_row([
            label.clone(),
            format!("{:.4}", s.precision),
            format!("{:.4}", s.recall),
            format!("{:.4}", s.f1),
            s.support.to_string(),
        ]);
    }
    println!("{t}");
    println!(
        "confusion (rows: true {:?}, columns: predicted): {:?}",
        m.labels, m.confusion
    );
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long)]
    model: PathBuf,
    /// Texts; without them (and without --input), one per line of stdin.
    texts: Vec<String>,
    /// A file of one text per line.
    #[arg(long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn predict_cmd(a: PredictArgs, ctx: &Ctx) -> Result<()> {
    let (mut clf, _) =
        Classifier::load(&a.model).with_context(|| format!("--model {}", a.model.display()))?;
    crate::io::apply_precision(&mut clf.encoder, ctx)?;
    let texts = match &a.input {
        Some(p) => crate::io::lines_of(p)?,
        None => crate::io::texts_from(a.texts)?,
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        bail!("text {} is empty; give some text to classify", i + 1);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let probs = clf.predict(&refs, 32)?;
    for (t, p) in texts.iter().zip(probs) {
        let best = frugal_models::chat::sampling::argmax(&p) as usize;
        if a.json {
            let probs: serde_json::Map<String, serde_json::Value> = clf
                .labels
                .iter()
                .zip(&p)
                .map(|(l, v)| (l.clone(), serde_json::json!(v)))
                .collect();
            println!(
                "{}",
                serde_json::json!({"text": t, "label": clf.labels[best], "probabilities": probs})
            );
        } else {
            let shown: String = t.chars().take(60).collect();
            println!("{}\t{:.3}\t{shown}", clf.labels[best], p[best]);
        }
    }
    Ok(())
}
