//! `frugal sft`: LoRA supervised fine-tuning of a local chat model on prompt→answer pairs;
//! `frugal sft merge`: the adapter folded into the base, written as a GGUF file any llama.cpp-
//! compatible runtime loads; `frugal eval-gen`: a chat model's answers scored against references
//! (exact match, ROUGE-L, length, speed, cost beside a hosted model's).

use crate::io::{progress, store, write_atomic};
use crate::train_cmd::{catch_ctrl_c, INTERRUPT};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use frugal_models::chat::lora::{Adapter, LoraConfig};
use frugal_models::chat::{ChatModel, GenerateOptions, SamplingParams};
use frugal_models::resolve::{resolve_model, ModelPath};
use frugal_train::sft::{email_subjects, load, SftExample, SftSpec};
use frugal_train::trainer::TrainConfig;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Body length of the built-in email-subject prompts, in characters.
pub const SUBJECT_BODY_CHARS: usize = 400;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SftArgs {
    #[command(subcommand)]
    cmd: Option<SftCmd>,
    #[command(flatten)]
    train: SftTrainArgs,
}

#[derive(Subcommand)]
pub enum SftCmd {
    /// Fold an adapter into its base and write the result as a GGUF file.
    Merge(MergeArgs),
}

#[derive(Args)]
pub struct SftTrainArgs {
    /// The chat model to adapt: asset name (smollm2) or .gguf file.
    #[arg(long, default_value = "smollm2")]
    base: String,
    /// Training pairs: JSONL of {"prompt","answer"} or {"messages":[...]} (the last assistant
    /// turn is the answer), or `email-subjects` (built-in: SpamAssassin ham bodies → subjects).
    #[arg(long, required = true)]
    data: Option<String>,
    /// Validation pairs (default for email-subjects: its validation split); the adapter with
    /// the lowest validation loss is kept.
    #[arg(long)]
    valid: Option<String>,
    /// Where the adapter goes (adapter.safetensors + adapter.json).
    #[arg(long, required = true, value_parser = crate::out_dir)]
    out: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    rank: u32,
    /// LoRA scale α (the update is α/rank · B·A).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Dropout on the adapters' input while training.
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f32,
    /// Projections to adapt (comma-separated): attn_q, attn_k, attn_v, attn_output, ffn_gate,
    /// ffn_up, ffn_down.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down"
    )]
    targets: Vec<String>,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Examples per optimiser step.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Longest prompt + answer in tokens; longer answers are cut (and counted), examples whose
    /// prompt alone fills it are left out (and counted).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..))]
    max_len: u32,
    /// Use only the first N training examples.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue an interrupted run from its saved state.
    #[arg(long)]
    resume: bool,
    /// Save the training state every N optimiser steps (0: at each epoch's end).
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MergeArgs {
    /// The base the adapter was trained on.
    #[arg(long, default_value = "smollm2")]
    base: String,
    #[arg(long)]
    adapter: PathBuf,
    /// The merged model (.gguf).
    #[arg(long)]
    out: PathBuf,
    /// Storage of the merged projections: q8_0 (what `--adapter` runs: the same weights, on
    /// fast integer kernels) or f16 (finer, slower here).
    #[arg(long, value_enum, default_value = "q8_0")]
    r#type: MergeType,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MergeType {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

/// The GGUF file of a chat model spec.
pub(crate) fn gguf_path(spec: &str, flag: &str, quiet: bool) -> Result<PathBuf> {
    match resolve_model(spec, &store(quiet)).with_context(|| format!("{flag} {spec}"))? {
        ModelPath::Gguf(p) => Ok(p),
        ModelPath::HfDir(d) => bail!(
            "{flag} {}: a folder is an encoder; this needs a GGUF chat model (smollm2, a .gguf file)",
            d.display()
        ),
    }
}

/// Pairs of a source: `email-subjects` (its `split`) or a JSONL file.
pub(crate) fn pairs(source: &str, split: &str, flag: &str, quiet: bool) -> Result<Vec<SftExample>> {
    if source == "email-subjects" {
        let dir = store(quiet).ensure("spamassassin")?;
        let s = email_subjects(&dir, SUBJECT_BODY_CHARS)?;
        return Ok(match split {
            "train" => s.train,
            "valid" => s.valid,
            _ => s.test,
        });
    }
    let p = Path::new(source);
    if !p.is_file() {
        bail!("{flag} {source}: no such file, and not a built-in task (email-subjects)");
    }
    load(p).with_context(|| flag.to_string())
}

pub fn sft_cmd(a: SftArgs, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Some(SftCmd::Merge(m)) => merge_cmd(m, ctx),
        None => train_cmd(a.train, ctx),
    }
}

fn train_cmd(a: SftTrainArgs, ctx: &Ctx) -> Result<()> {
    let (Some(data), Some(out)) = (a.data.clone(), a.out.clone()) else {
        bail!("--data and --out are required");
    };
    let lora = LoraConfig {
        rank: a.rank as usize,
        alpha: a.alpha,
        dropout: a.lora_dropout,
        targets: a.targets.clone(),
    };
    lora.check()?;
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be a positive number");
    }
    let base = gguf_path(&a.base, "--base", ctx.quiet)?;
    let mut train = pairs(&data, "train", "--data", ctx.quiet)?;
    if let Some(n) = a.limit {
        train.truncate(n);
    }
    let valid = match (&a.valid, data.as_str()) {
        (Some(v), _) => Some(pairs(v, "valid", "--valid", ctx.quiet)?),
        (None, "email-subjects") => Some(pairs(&data, "valid", "--data", ctx.quiet)?),
        _ => None,
    };
    let config = TrainConfig {
        epochs: a.epochs as usize,
        lr: a.lr,
        batch: a.batch as usize,
        weight_decay: 0.0,
        warmup: 0.05,
        seed: a.seed,
        patience: 0,
        ..Default::default()
    };
    let spec = SftSpec {
        base: &base,
        base_name: a.base.clone(),
        train: &train,
        valid: valid.as_deref(),
        lora,
        config,
        max_len: a.max_len as usize,
        out: &out,
        resume: a.resume,
        save_every: a.save_every,
        interrupt: Some(&INTERRUPT),
    };
    catch_ctrl_c();
    let steps = train.len().div_ceil(a.batch as usize) * a.epochs as usize;
    let pb = progress(steps as u64, ctx.quiet, "sft");
    let r = frugal_train::sft::train_sft(&spec, &mut |p| {
        pb.set_position(p.step as u64);
        pb.set_message(format!(
            "epoch {} loss {:.4} {:.2} ex/s",
            p.epoch + 1,
            p.loss,
            p.examples_per_s
        ));
    });
    pb.finish_and_clear();
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "adapter: {} ({} trainable weights, rank {})",
            out.display(),
            r.trainable_params,
            a.rank
        );
        println!(
            "trained on {} examples ({} tokens, {} answers cut at --max-len, {} left out) for {} epoch(s) in {:.1} s: {:.1} tokens/s",
            r.train.examples - r.train.dropped,
            r.train.tokens,
            r.train.truncated,
            r.train.dropped,
            r.fit.epochs_run,
            r.fit.seconds,
            r.tokens_per_s
        );
        if let (Some(b), Some(l)) = (r.valid_loss_before, r.valid_loss) {
            println!("validation loss of the answers: {b:.4} before, {l:.4} after");
        }
    }
    Ok(())
}

fn merge_cmd(a: MergeArgs, ctx: &Ctx) -> Result<()> {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    if a.out.extension().is_none_or(|e| e != "gguf") {
        bail!("--out {}: name the merged model *.gguf", a.out.display());
    }
    let base = gguf_path(&a.base, "--base", ctx.quiet)?;
    let adapter =
        Adapter::load(&a.adapter).with_context(|| format!("--adapter {}", a.adapter.display()))?;
    adapter
        .check_base(&base)
        .with_context(|| format!("--adapter {}", a.adapter.display()))?;
    let deltas: std::collections::BTreeMap<String, candle_core::Tensor> =
        adapter.deltas()?.into_iter().collect();
    let mut file = std::fs::File::open(&base).with_context(|| format!("{}", base.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", base.display()))?;
    let dev = candle_core::Device::Cpu;
    let mut tensors: Vec<(String, QTensor)> = vec![];
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    for name in names {
        let q = content.tensor(&mut file, name, &dev)?;
        let q = match deltas.get(name) {
            Some(d) => {
                let w = q.dequantize(&dev)?;
                let merged = (w + d.reshape(q.shape())?)?;
                let ty = match a.r#type {
                    MergeType::F16 => GgmlDType::F16,
                    MergeType::Q8_0 => GgmlDType::Q8_0,
                };
                QTensor::quantize(&merged, ty)?
            }
            None => q,
        };
        tensors.push((name.clone(), q));
    }
    let mut meta: Vec<(String, gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = a.out.with_extension("gguf.partial");
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        let m: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if let Err(e) = gguf_file::write(&mut f, &m, &t) {
            let _ = std::fs::remove_file(&tmp);
            bail!("writing {}: {e}", a.out.display());
        }
    }
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    if !ctx.quiet {
        eprintln!(
            "frugal: {} projections merged ({:?}); wrote {}",
            deltas.len(),
            match a.r#type {
                MergeType::F16 => "f16",
                MergeType::Q8_0 => "q8_0",
            },
            a.out.display()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalGenArgs {
    /// Chat model: asset name or .gguf file.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// A LoRA adapter from `frugal sft` to apply to the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Pairs to answer: JSONL of {"prompt","answer"} / {"messages"}, or `email-subjects` (its test split).
    #[arg(long)]
    data: String,
    /// Score only the first N pairs.
    #[arg(long)]
    limit: Option<usize>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// The hosted model priced for the same prompts and answers.
    #[arg(long, default_value = "gpt-4o")]
    reference: String,
    /// Write each prompt, reference and answer with its scores here (JSONL).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_parser = crate::non_negative_f64)]
    usd_per_hour: Option<f64>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    billing: crate::cost_cmd::BillingArgs,
    #[command(flatten)]
    sources: crate::cost_cmd::SourcesArgs,
}

/// Loads a chat model and applies `adapter` when given.
pub(crate) fn load_adapted(spec: &str, adapter: Option<&Path>, quiet: bool) -> Result<ChatModel> {
    let mut m = crate::io::load_chat(spec, quiet)?;
    if let Some(dir) = adapter {
        let ad = Adapter::load(dir).with_context(|| format!("--adapter {}", dir.display()))?;
        m.apply_adapter(&ad)
            .with_context(|| format!("--adapter {}", dir.display()))?;
    }
    Ok(m)
}

/// Scores of a chat model's greedy answers against reference answers, with speed and costs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GenScore {
    pub examples: usize,
    pub exact_match: f64,
    pub rouge_l: f64,
    pub mean_answer_words: f64,
    pub mean_reference_words: f64,
    pub tokens_per_s: f64,
    pub seconds_per_answer: f64,
    pub usd_per_1k_answers: f64,
    pub reference_usd_per_1k_answers: f64,
}

/// Answers every pair's prompt (greedy, up to `max_tokens`) and scores the answers: the summary
/// and one JSON row per pair.
pub(crate) fn score_generation(
    model: &ChatModel,
    data: &[SftExample],
    max_tokens: usize,
    pricing: &frugal_serve::pricing::Pricing,
    quiet: bool,
) -> Result<(GenScore, Vec<serde_json::Value>)> {
    let opts = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::default(),
        stop: vec![],
    };
    let pb = progress(data.len() as u64, quiet, "answering");
    let mut rows = vec![];
    let (mut exact, mut rouge, mut words, mut ref_words) = (0usize, 0.0, 0usize, 0usize);
    let (mut gen_tokens, mut secs, mut hosted) = (0usize, 0.0, 0.0);
    let norm = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    for (i, ex) in data.iter().enumerate() {
        let prompt = model.render(&ex.messages)?;
        let ids = model.tokenizer.encode(&prompt)?;
        let mut cache = model.new_cache();
        let t0 = Instant::now();
        let g = model.generate(&ids, &opts, &mut cache, &mut |_| true)?;
        secs += t0.elapsed().as_secs_f64();
        let answer = g.text.trim().to_string();
        let r = frugal_train::sft::rouge_l(&answer, &ex.answer);
        let em = norm(&answer) == norm(&ex.answer);
        exact += em as usize;
        rouge += r;
        words += answer.split_whitespace().count();
        ref_words += ex.answer.split_whitespace().count();
        gen_tokens += g.completion_tokens;
        // The hosted model is priced on the messages' text (its own template is its business).
        let asked: Vec<&str> = ex.messages.iter().map(|m| m.content.as_str()).collect();
        hosted += pricing
            .hosted_usd(&pricing.reference, &asked.join("\n"), &ex.answer)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        rows.push(serde_json::json!({
            "prompt": ex.prompt(), "reference": ex.answer, "answer": answer,
            "rouge_l": r, "exact": em, "completion_tokens": g.completion_tokens,
        }));
        pb.set_position(i as u64 + 1);
    }
    pb.finish_and_clear();
    let n = data.len().max(1) as f64;
    Ok((
        GenScore {
            examples: data.len(),
            exact_match: exact as f64 / n,
            rouge_l: rouge / n,
            mean_answer_words: words as f64 / n,
            mean_reference_words: ref_words as f64 / n,
            tokens_per_s: gen_tokens as f64 / secs.max(1e-9),
            seconds_per_answer: secs / n,
            usd_per_1k_answers: pricing.local_usd(secs / n) * 1000.0,
            reference_usd_per_1k_answers: hosted / n * 1000.0,
        },
        rows,
    ))
}

pub fn eval_gen_cmd(a: EvalGenArgs, ctx: &Ctx) -> Result<()> {
    let pricing = a
        .sources
        .pricing(&a.reference, a.usd_per_hour, a.billing.billing())?;
    let mut data = pairs(&a.data, "test", "--data", ctx.quiet)?;
    if let Some(n) = a.limit {
        data.truncate(n);
    }
    let model = load_adapted(&a.model, a.adapter.as_deref(), ctx.quiet)?;
    let (g, rows) = score_generation(&model, &data, a.max_tokens as usize, &pricing, ctx.quiet)?;
    let (local_per_1k, hosted_per_1k) = (g.usd_per_1k_answers, g.reference_usd_per_1k_answers);
    let mut summary = serde_json::to_value(&g)?;
    let extra = serde_json::json!({
        "model": a.model,
        "adapter": a.adapter,
        "data": a.data,
        "cost_basis": format!("measured: seconds per answer (prompt and generation) × ${:.4}/hour ({})", pricing.usd_per_hour, pricing.price_basis),
        "reference": a.reference,
        "reference_cost_basis": format!("computed: {}'s catalog price × the same prompts in and the reference answers out, counted with its tokenizer", a.reference),
        "savings_vs_reference": if hosted_per_1k > 0.0 { Some(1.0 - local_per_1k / hosted_per_1k) } else { None },
    });
    for (k, v) in extra.as_object().expect("an object") {
        summary[k] = v.clone();
    }
    let secs = g.seconds_per_answer;
    if let Some(p) = &a.out {
        let mut s = String::new();
        for r in &rows {
            s.push_str(&serde_json::to_string(r)?);
            s.push('\n');
        }
        write_atomic(p, s.as_bytes())?;
    }
    if a.json {
        println!("{summary}");
    } else {
        println!(
            "{} examples: exact match {:.4}, ROUGE-L {:.4}, {:.1} words per answer (references {:.1})",
            g.examples,
            summary["exact_match"].as_f64().unwrap_or(0.0),
            summary["rouge_l"].as_f64().unwrap_or(0.0),
            summary["mean_answer_words"].as_f64().unwrap_or(0.0),
            summary["mean_reference_words"].as_f64().unwrap_or(0.0),
        );
        println!(
            "{:.1} tokens/s, {secs:.2} s per answer: ${local_per_1k:.5} per 1,000 answers here; {} ${hosted_per_1k:.5} ({:.1}% saved)",
            g.tokens_per_s,
            a.reference,
            summary["savings_vs_reference"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    Ok(())
}
