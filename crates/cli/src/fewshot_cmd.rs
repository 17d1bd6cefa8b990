//! `frugal zeroshot`, `frugal fewshot`, `frugal curve`: classification with no or a handful of
//! labelled examples, and the learning curve that shows what each labelled example buys.

use crate::data_cmd::FieldArgs;
use crate::io::{progress, store};
use crate::train_cmd::load_eval;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_models::chat::sampling::argmax;
use frugal_models::chat::ChatModel;
use frugal_models::encoder::Encoder;
use frugal_models::resolve::{resolve_model, ModelPath};
use frugal_train::classifier::Classifier;
use frugal_train::data::{load, Example, Fields};
use frugal_train::fewshot::{
    nearest_demos, sample_shots, setfit, short_labels, zero_shot, LabelDescriptions, SetFitSpec,
};
use frugal_train::labeller::{default_prompt, ChatLabeller, Scoring};
use frugal_train::metrics::{evaluate, Metrics};
use frugal_train::trainer::TrainConfig;
use std::path::{Path, PathBuf};

pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((l, d)) if !l.trim().is_empty() => Ok((l.trim().into(), d.into())),
        _ => Err(format!(
            "'{s}': write NAME=\"description\", e.g. spam=\"an unsolicited advertising email\""
        )),
    }
}

/// Labelled examples, or unlabelled texts (label "") when the file has no label field.
fn texts_maybe_labelled(
    source: &str,
    fields: &FieldArgs,
    quiet: bool,
) -> Result<(Vec<Example>, bool)> {
    match load_eval(source, fields, quiet) {
        Ok(v) => Ok((v, true)),
        Err(e) => {
            let f = fields.fields();
            let unlabelled = Fields {
                text: f.text.clone(),
                label: String::new(),
            };
            match load(Path::new(source), &unlabelled) {
                Ok(v) if e.to_string().contains(&format!("'{}'", f.label)) => Ok((v, false)),
                _ => Err(e),
            }
        }
    }
}

/// A model by name: encoder folder or chat model.
enum Model {
    Encoder(Box<Encoder>),
    Chat(Box<ChatModel>),
}

fn load_model(spec: &str, quiet: bool) -> Result<Model> {
    Ok(match resolve_model(spec, &store(quiet))? {
        ModelPath::HfDir(d) => Model::Encoder(Box::new(Encoder::load(&d)?)),
        ModelPath::Gguf(p) => Model::Chat(Box::new(ChatModel::load(&p)?)),
    })
}

/// Chat-model settings shared by zero-shot and in-context few-shot.
#[derive(Args, Clone)]
pub struct ChatArgs {
    /// Chat models: the prompt, with {text}, {labels} (all label words) and {label} (channel
    /// scoring: this label's words) filled in.
    #[arg(long)]
    prompt: Option<String>,
    /// Chat models: how a label is scored, `answer` (the label words' likelihood as the answer)
    /// or `channel` (the text's likelihood after the label words; not with in-context examples).
    #[arg(long, default_value = "answer", value_parser = crate::distill_cmd::parse_scoring)]
    scoring: Scoring,
    /// Chat models: read at most this many tokens of each text.
    #[arg(long, default_value_t = 256)]
    max_text_tokens: usize,
    /// Chat models: raw answer probabilities, without contextual calibration.
    #[arg(long)]
    no_calibration: bool,
}

impl ChatArgs {
    fn labeller(&self, words: Vec<String>) -> ChatLabeller {
        ChatLabeller {
            prompt: self
                .prompt
                .clone()
                .unwrap_or_else(|| default_prompt(self.scoring).into()),
            words,
            max_text_tokens: self.max_text_tokens.max(1),
            calibrate: !self.no_calibration,
            scoring: self.scoring,
        }
    }
}

#[derive(Args)]
pub struct ZeroShotArgs {
    /// An encoder (minilm, a folder) or a chat model (smollm2, a .gguf).
    #[arg(long, default_value = "minilm")]
    model: String,
    /// A label and a description of it, NAME="description"; repeat a NAME to give it several
    /// (averaged). Chat models answer with the first description's words.
    #[arg(long = "label", value_parser = parse_label, required = true)]
    labels: Vec<(String, String)>,
    /// Texts to classify: `spamassassin` (its test split) or a .jsonl/.csv/.tsv file; with a
    /// label field, accuracy and F1 are reported, otherwise the predictions.
    #[arg(long)]
    data: String,
    /// Encoders: softmax temperature over the cosine similarities.
    #[arg(long, default_value_t = 0.05)]
    temperature: f64,
    #[command(flatten)]
    chat: ChatArgs,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

/// Prints metrics (with the majority-class baseline) or one prediction per text.
fn report(
    labels: &[String],
    data: &[Example],
    has_labels: bool,
    probs: &[Vec<f32>],
    json: bool,
    extra: serde_json::Value,
) -> Result<Option<Metrics>> {
    if !has_labels {
        for (e, p) in data.iter().zip(probs) {
            let label = &labels[argmax(p) as usize];
            if json {
                let probs: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .zip(p)
                    .map(|(l, x)| (l.clone(), (*x as f64).into()))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"text": e.text, "label": label, "probabilities": probs})
                );
            } else {
                println!(
                    "{label}\t{:.3}\t{}",
                    p[argmax(p) as usize],
                    e.text.replace('\n', " ")
                );
            }
        }
        return Ok(None);
    }
    let index: std::collections::BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    if let Some(e) = data.iter().find(|e| !index.contains_key(e.label.as_str())) {
        bail!(
            "the data has label '{}', which is not among --label ({}); describe every label of the data",
            e.label,
            labels.join(", ")
        );
    }
    let gold: Vec<usize> = data.iter().map(|e| index[e.label.as_str()]).collect();
    let pred: Vec<usize> = probs.iter().map(|p| argmax(p) as usize).collect();
    let m = evaluate(labels, &gold, &pred);
    let mut counts = vec![0usize; labels.len()];
    gold.iter().for_each(|&g| counts[g] += 1);
    let majority = *counts.iter().max().unwrap_or(&0) as f64 / gold.len().max(1) as f64;
    if json {
        let mut v = serde_json::to_value(&m)?;
        v["majority_class_accuracy"] = majority.into();
        if let serde_json::Value::Object(x) = extra {
            for (k, val) in x {
                v[k] = val;
            }
        }
        println!("{v}");
    } else {
        println!(
            "{} examples: accuracy {:.4}, macro-F1 {:.4} (majority class {:.4})",
            data.len(),
            m.accuracy,
            m.macro_f1,
            majority
        );
        println!(
            "confusion (rows: true {:?}, columns: predicted): {:?}",
            m.labels, m.confusion
        );
    }
    Ok(Some(m))
}

pub fn zeroshot_cmd(a: ZeroShotArgs, ctx: &Ctx) -> Result<()> {
    let descs = LabelDescriptions::from_pairs(&a.labels)?;
    let (data, has_labels) = texts_maybe_labelled(&a.data, &a.fields, ctx.quiet)?;
    let texts: Vec<&str> = data.iter().map(|e| e.text.as_str()).collect();
    let pb = progress(texts.len() as u64, ctx.quiet, "classifying");
    let probs = match load_model(&a.model, ctx.quiet)? {
        Model::Encoder(enc) => zero_shot(&enc, &texts, &descs, a.temperature, &mut |d| {
            pb.set_position(d as u64)
        })?,
        Model::Chat(m) => {
            let words = descs.descriptions.iter().map(|d| d[0].clone()).collect();
            a.chat
                .labeller(words)
                .label(&m, &texts, &mut |d| pb.set_position(d as u64))?
        }
    };
    pb.finish_and_clear();
    report(
        &descs.labels,
        &data,
        has_labels,
        &probs,
        a.json,
        serde_json::json!({}),
    )?;
    Ok(())
}

#[derive(Args)]
pub struct FewShotArgs {
    /// An encoder to fine-tune SetFit-style (minilm, a folder), or a chat model (smollm2, a
    /// .gguf) to show each test text its nearest labelled examples in context.
    #[arg(long, default_value = "minilm")]
    base: String,
    /// The labelled examples to draw the shots from: `spamassassin` (its train split) or a file.
    #[arg(long)]
    data: String,
    /// Examples per label.
    #[arg(long)]
    shots: usize,
    /// Checkpoint folder (encoders).
    #[arg(long, value_parser = crate::out_dir)]
    out: Option<PathBuf>,
    /// Data to evaluate on: `spamassassin` (its test split) or a file (required for chat models).
    #[arg(long)]
    test: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Encoders: rounds of contrastive pairs (each example gets one positive and one negative
    /// partner per round).
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Encoders: epochs over the pairs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=8192))]
    max_len: u32,
    /// Chat models: the encoder that finds each text's nearest examples.
    #[arg(long, default_value = "minilm")]
    embedder: String,
    /// Chat models: the words to answer for a label, LABEL=WORDS (default: the label).
    #[arg(long = "label-words", value_parser = parse_label)]
    label_words: Vec<(String, String)>,
    #[command(flatten)]
    chat: ChatArgs,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

/// The labelled pool: spamassassin's train split or a file.
fn train_pool(data: &str, fields: &FieldArgs, quiet: bool) -> Result<Vec<Example>> {
    Ok(crate::train_cmd::load_sets(data, None, fields, quiet)?.0)
}

/// Runs SetFit on `shots` into `out`, with quiet defaults shared by `fewshot` and `curve`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_setfit(
    base: &Path,
    base_name: &str,
    shots: &[Example],
    out: &Path,
    seed: u64,
    rounds: usize,
    epochs: usize,
    lr: f64,
    max_len: usize,
    quiet: bool,
) -> Result<frugal_train::fewshot::SetFitReport> {
    let pairs = 2 * rounds * shots.len();
    let pb = progress(
        (pairs.div_ceil(16) * epochs) as u64,
        quiet,
        "contrastive pairs",
    );
    let spec = SetFitSpec {
        base,
        base_name: base_name.into(),
        shots,
        rounds,
        body: TrainConfig {
            epochs,
            lr,
            batch: 16,
            warmup: 0.1,
            patience: 0,
            seed,
            ..Default::default()
        },
        head: frugal_train::fewshot::head_config(seed),
        max_len,
        out,
    };
    let (r, _) = setfit(&spec, &mut |stage, p| {
        if stage == "contrastive" {
            pb.set_position(p.step as u64);
        }
    })?;
    pb.finish_and_clear();
    Ok(r)
}

fn encoder_dir(spec: &str, quiet: bool, flag: &str) -> Result<Option<PathBuf>> {
    Ok(
        match resolve_model(spec, &store(quiet)).with_context(|| format!("{flag} {spec}"))? {
            ModelPath::HfDir(d) => Some(d),
            ModelPath::Gguf(_) => None,
        },
    )
}

pub fn fewshot_cmd(a: FewShotArgs, ctx: &Ctx) -> Result<()> {
    let pool = train_pool(&a.data, &a.fields, ctx.quiet)?;
    let shots = sample_shots(&pool, a.shots, a.seed)?;
    let short = short_labels(&pool, a.shots);
    if !short.is_empty() && !ctx.quiet {
        eprintln!(
            "frugal: --shots {}: taking every example of {} (fewer than {} each)",
            a.shots,
            short
                .iter()
                .map(|(l, n)| format!("'{l}' ({n})"))
                .collect::<Vec<_>>()
                .join(", "),
            a.shots
        );
    }
    let test = a
        .test
        .as_deref()
        .map(|t| load_eval(t, &a.fields, ctx.quiet))
        .transpose()?;
    match encoder_dir(&a.base, ctx.quiet, "--base")? {
        Some(base) => {
            let Some(out) = &a.out else {
                bail!("--out DIR: where to write the few-shot classifier");
            };
            let r = run_setfit(
                &base,
                &a.base,
                &shots,
                out,
                a.seed,
                a.pairs,
                a.epochs,
                a.lr,
                a.max_len as usize,
                ctx.quiet,
            )?;
            let extra = serde_json::json!({"shots": a.shots, "examples": shots.len(), "pairs": r.pairs, "seconds": r.body.seconds + r.head.seconds, "checkpoint": out});
            match &test {
                Some(test) => {
                    let (clf, _) = Classifier::load(out)?;
                    let texts: Vec<&str> = test.iter().map(|e| e.text.as_str()).collect();
                    let probs = clf.predict(&texts, 32)?;
                    report(&clf.labels, test, true, &probs, a.json, extra)?;
                }
                None if a.json => println!("{extra}"),
                None => println!(
                    "{} shots per label ({} examples, {} pairs) in {:.1} s; checkpoint {}",
                    a.shots,
                    shots.len(),
                    r.pairs,
                    r.body.seconds + r.head.seconds,
                    out.display()
                ),
            }
        }
        None => {
            let Some(test) = &test else {
                bail!(
                    "--test SOURCE: a chat model learns in context, so give the texts to classify"
                );
            };
            let Model::Chat(model) = load_model(&a.base, ctx.quiet)? else {
                unreachable!("a GGUF path is a chat model")
            };
            let labels = frugal_train::classifier::labels_of(&pool);
            let words = frugal_train::labeller::words_for(&labels, &a.label_words);
            let embedder = load_model(&a.embedder, ctx.quiet)?;
            let Model::Encoder(embedder) = embedder else {
                bail!(
                    "--embedder {}: needs an encoder (minilm, a folder)",
                    a.embedder
                );
            };
            let texts: Vec<&str> = test.iter().map(|e| e.text.as_str()).collect();
            let demos = nearest_demos(&embedder, &texts, &pool, &labels, a.shots)?;
            let pb = progress(texts.len() as u64, ctx.quiet, "classifying in context");
            let (probs, stats) = a.chat.labeller(words).label_with_demos(
                &model,
                &texts,
                Some(&demos),
                &mut |d| pb.set_position(d as u64),
            )?;
            pb.finish_and_clear();
            if stats.demos_dropped > 0 && !ctx.quiet {
                eprintln!(
                    "note: {} in-context examples were left out where a prompt would not fit the model's {}-token context; lower --shots or --max-text-tokens",
                    stats.demos_dropped,
                    model.context_length()
                );
            }
            let extra = serde_json::json!({"shots": a.shots, "demos_dropped": stats.demos_dropped});
            report(&labels, test, true, &probs, a.json, extra)?;
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct CurveArgs {
    /// The encoder fine-tuned at each point (minilm, a folder).
    #[arg(long, default_value = "minilm")]
    base: String,
    /// The labelled pool the shots are drawn from: `spamassassin` (train split) or a file.
    #[arg(long)]
    data: String,
    /// The test data: `spamassassin` (its test split) or a file.
    #[arg(long)]
    test: String,
    /// Examples per label at each point.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32")]
    shots: Vec<usize>,
    /// Seeds (draws of the shots) per point.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Zero-shot reference: label descriptions, NAME="description" (default: the label names).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Full fine-tuning reference: a checkpoint from `frugal train --mode full`, scored on the
    /// same test data (without it the curve has no full fine-tuning line).
    #[arg(long)]
    full: Option<PathBuf>,
    /// Contrastive pair rounds per point.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=8192))]
    max_len: u32,
    /// Write the chart here (SVG).
    #[arg(long)]
    chart: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

pub fn curve_cmd(a: CurveArgs, ctx: &Ctx) -> Result<()> {
    let Some(base) = encoder_dir(&a.base, ctx.quiet, "--base")? else {
        bail!(
            "--base {}: the curve fine-tunes an encoder (minilm, a folder)",
            a.base
        );
    };
    if a.seeds == 0 || a.shots.is_empty() {
        bail!("--seeds and --shots need at least one value");
    }
    if let Some(c) = &a.chart {
        if c.extension().is_none_or(|e| e != "svg") {
            bail!(
                "--chart {}: charts are SVG; name the file *.svg",
                c.display()
            );
        }
    }
    let pool = train_pool(&a.data, &a.fields, ctx.quiet)?;
    let test = load_eval(&a.test, &a.fields, ctx.quiet)?;
    // Every point's shots are drawn before anything runs: a K too large fails at once.
    for &k in &a.shots {
        sample_shots(&pool, k, 0)?;
        if let Some((l, n)) = short_labels(&pool, k).into_iter().min_by_key(|x| x.1) {
            bail!("--shots {k}: label '{l}' has only {n} examples, and a curve point is K per label; choose --shots {n} or fewer");
        }
    }
    let texts: Vec<&str> = test.iter().map(|e| e.text.as_str()).collect();
    let work = tempfile::tempdir()?;
    let mut points = vec![];
    let mut rows = vec![];
    for &k in &a.shots {
        let mut accs = vec![];
        for seed in 0..a.seeds {
            let shots = sample_shots(&pool, k, seed)?;
            let out = work.path().join(format!("k{k}-s{seed}"));
            let t0 = std::time::Instant::now();
            run_setfit(
                &base,
                &a.base,
                &shots,
                &out,
                seed,
                a.pairs,
                1,
                2e-5,
                a.max_len as usize,
                ctx.quiet,
            )?;
            let (clf, _) = Classifier::load(&out)?;
            let m = clf.evaluate(&test, 32)?;
            if !ctx.quiet {
                eprintln!(
                    "{k} shots, seed {seed}: accuracy {:.4} ({:.0} s)",
                    m.accuracy,
                    t0.elapsed().as_secs_f64()
                );
            }
            rows.push(serde_json::json!({"shots": k, "seed": seed, "accuracy": m.accuracy, "macro_f1": m.macro_f1}));
            accs.push(m.accuracy);
            let _ = std::fs::remove_dir_all(&out);
        }
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        points.push(crate::chart::CurvePoint {
            shots: k,
            mean,
            min: accs.iter().copied().fold(f64::INFINITY, f64::min),
            max: accs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        });
    }
    // References on the same test data.
    let labels = frugal_train::classifier::labels_of(&pool);
    let pairs: Vec<(String, String)> = if a.labels.is_empty() {
        labels.iter().map(|l| (l.clone(), l.clone())).collect()
    } else {
        a.labels.clone()
    };
    let descs = LabelDescriptions::from_pairs(&pairs)?;
    let enc = Encoder::load(&base)?;
    let zs = zero_shot(&enc, &texts, &descs, 0.05, &mut |_| {})?;
    let index: std::collections::BTreeMap<&str, usize> = descs
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let right = zs
        .iter()
        .zip(&test)
        .filter(|(p, e)| index.get(e.label.as_str()) == Some(&(argmax(p) as usize)))
        .count();
    let zero = right as f64 / test.len() as f64;
    let mut refs = vec![("zero-shot".to_string(), zero)];
    if let Some(full) = &a.full {
        let (clf, _) =
            Classifier::load(full).with_context(|| format!("--full {}", full.display()))?;
        refs.push(("full fine-tuning".into(), clf.evaluate(&test, 32)?.accuracy));
    }
    if let Some(c) = &a.chart {
        crate::chart::learning_curve(
            &format!(
                "accuracy against labelled examples ({} test texts)",
                test.len()
            ),
            &points,
            &refs,
            c,
        )?;
    }
    if a.json {
        let pts: Vec<serde_json::Value> = points
            .iter()
            .map(|p| serde_json::json!({"shots": p.shots, "mean": p.mean, "min": p.min, "max": p.max}))
            .collect();
        let r: serde_json::Map<String, serde_json::Value> =
            refs.iter().map(|(n, v)| (n.clone(), (*v).into())).collect();
        println!(
            "{}",
            serde_json::json!({"points": pts, "runs": rows, "references": r})
        );
        return Ok(());
    }
    let mut t = crate::io::table(["shots per label", "mean accuracy", "min", "max"]);
    for p in &points {
        t.add_row([
            p.shots.to_string(),
            format!("{:.4}", p.mean),
            format!("{:.4}", p.min),
            format!("{:.4}", p.max),
        ]);
    }
    println!("{t}");
    for (n, v) in &refs {
        println!("{n}: {v:.4}");
    }
    if let Some(c) = &a.chart {
        println!("chart {}", c.display());
    }
    Ok(())
}
