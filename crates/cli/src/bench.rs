//! `frugal bench embed|generate`: throughput and peak memory, in the anchors' workloads, so the
//! numbers can be put beside sentence-transformers' and llama.cpp's from the same run.

use crate::generate::round1;
use crate::io::{lines_of, load_chat, load_encoder, peak_rss_mb};
use crate::Ctx;
use anyhow::Result;
use clap::{Args, Subcommand};
use frugal_models::chat::{GenerateOptions, SamplingParams};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Embedding throughput: one warm-up pass, then the best of --repeats passes.
    Embed(EmbedBench),
    /// Generation speed: prompt processing and greedy decoding, best of --repeats runs.
    Generate(GenerateBench),
    /// Full fine-tuning throughput (forward + backward + AdamW step), the PyTorch anchor's
    /// workload: SpamAssassin training texts in batches padded to exactly --max-len tokens.
    Train(TrainBench),
    /// LoRA fine-tuning throughput of a chat model (forward + backward + AdamW step on the
    /// adapters), the PyTorch + PEFT anchor's workload (anchors/sft_peft.py): the first pairs of
    /// --data in batches padded to the longest.
    Sft(SftBench),
    /// Load on a running server: concurrent clients for a fixed time; statuses, latency,
    /// throughput and the server's memory.
    Serve(crate::bench_serve::ServeBench),
    /// Every alternative of `frugal report`, default flags, on each task of the quality battery
    /// (public labelled tasks nobody tuned frugal for), in one table.
    Quality(crate::bench_quality::QualityBench),
    /// Every anchor workload in one go (embeddings in each precision, generation, fine-tuning),
    /// each in its own process; with --anchors, beside the reference implementations.
    All(crate::bench_all::AllBench),
}

#[derive(Args)]
pub struct TrainBench {
    #[arg(long, default_value = "minilm")]
    base: String,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=512))]
    max_len: u32,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    steps: u32,
    /// Seed of the head's initialisation and the dropout masks (the batches stay the
    /// anchor's, so runs with several seeds show the loss curve's noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SftBench {
    #[arg(long, default_value = "smollm2")]
    base: String,
    /// Prompt→answer pairs (JSONL) or `email-subjects` (its training split).
    #[arg(long, default_value = "email-subjects")]
    data: String,
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    rank: u32,
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..))]
    max_len: u32,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    steps: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EmbedBench {
    #[arg(long, default_value = "minilm")]
    model: String,
    /// One text per line.
    #[arg(long)]
    input: PathBuf,
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=8192))]
    max_len: u32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeats: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GenerateBench {
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// A user message, rendered as ChatML with one user turn (the llama.cpp anchor's prompt).
    #[arg(
        long,
        default_value = "Explain in two sentences why large language models are expensive to run."
    )]
    prompt: String,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeats: u32,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        BenchCmd::Embed(a) => embed(a, ctx),
        BenchCmd::Generate(a) => generate(a, ctx),
        BenchCmd::Train(a) => train(a, ctx),
        BenchCmd::Sft(a) => sft(a, ctx),
        BenchCmd::Serve(a) => crate::bench_serve::run(a),
        BenchCmd::All(a) => crate::bench_all::run(a, ctx),
        BenchCmd::Quality(a) => crate::bench_quality::run(a, ctx),
    }
}

fn print(json: bool, v: serde_json::Value) {
    if json {
        println!("{v}");
        return;
    }
    let mut table = crate::io::table(["metric", "value"]);
    for (k, val) in v.as_object().expect("object") {
        table.add_row([k.clone(), val.to_string()]);
    }
    println!("{table}");
}

fn embed(a: EmbedBench, ctx: &Ctx) -> Result<()> {
    let texts = lines_of(&a.input)?;
    let mut enc = load_encoder(&a.model, ctx.quiet)?;
    let precision = crate::io::apply_precision(&mut enc, ctx)?;
    enc.set_max_len(a.max_len as usize)
        .map_err(|e| anyhow::anyhow!("--max-len: {e}"))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut best = f64::MAX;
    let mut times = vec![];
    let mut tokens = 0;
    for run in 0..=a.repeats {
        let t = Instant::now();
        let e = enc.embed(&refs, a.batch as usize, &mut |_| {})?;
        let dt = t.elapsed().as_secs_f64();
        tokens = e.tokens;
        if run > 0 {
            best = best.min(dt);
            times.push(round3(dt));
        }
    }
    print(
        a.json,
        serde_json::json!({
            "sentences_per_s": round1(texts.len() as f64 / best),
            "tokens_per_s": round1(tokens as f64 / best),
            "peak_rss_mb": round1(peak_rss_mb()),
            "threads": ctx.threads,
            "precision": precision.name(),
            "texts": texts.len(),
            "tokens": tokens,
            "batch": a.batch,
            "max_len": a.max_len,
            "times_s": times,
        }),
    );
    Ok(())
}

fn generate(a: GenerateBench, ctx: &Ctx) -> Result<()> {
    let model = load_chat(&a.model, ctx.quiet)?;
    // The anchor's prompt: ChatML, one user turn, no system turn.
    let text = format!(
        "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
        a.prompt
    );
    let ids = model.tokenizer.encode(&text)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens as usize,
        sampling: SamplingParams {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        },
        stop: vec![],
    };
    let (mut best_p, mut best_g) = (0f64, 0f64);
    let mut completion = 0;
    for run in 0..=a.repeats {
        let mut cache = model.new_cache();
        let g = model.generate(&ids, &opts, &mut cache, &mut |_| true)?;
        if run > 0 {
            best_p = best_p.max(g.prompt_tokens_per_s());
            best_g = best_g.max(g.tokens_per_s());
        }
        completion = g.completion_tokens;
    }
    print(
        a.json,
        serde_json::json!({
            "prompt_tokens_per_s": round1(best_p),
            "tokens_per_s": round1(best_g),
            "peak_rss_mb": round1(peak_rss_mb()),
            "threads": ctx.threads,
            "prompt_tokens": ids.len(),
            "completion_tokens": completion,
        }),
    );
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Fixed batches of token ids padded to exactly `len`, as the anchor feeds PyTorch.
struct BenchTask {
    clf: frugal_train::classifier::Classifier,
    ids: Vec<Vec<u32>>,
    labels: Vec<u32>,
    len: usize,
    seed: u64,
}

impl frugal_train::trainer::Task for BenchTask {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn loss(&mut self, batch: &[usize]) -> candle_core::Result<candle_core::Tensor> {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let mut ids = Vec::with_capacity(batch.len() * self.len);
        let mut mask = Vec::with_capacity(batch.len() * self.len);
        for &i in batch {
            let t = &self.ids[i];
            ids.extend(t.iter().copied().chain(std::iter::repeat(0)).take(self.len));
            mask.extend((0..self.len).map(|k| u32::from(k < t.len())));
        }
        let ids = Tensor::from_vec(ids, (batch.len(), self.len), &dev)?;
        let mask = Tensor::from_vec(mask, (batch.len(), self.len), &dev)?;
        let model = &self.clf.encoder.model;
        model.reseed_dropout(
            self.seed
                .wrapping_mul(0x1_0000)
                .wrapping_add(batch[0] as u64),
        );
        let pooled = self
            .clf
            .encoder
            .pooled(&ids, &mask)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let logits = candle_nn::Module::forward(&self.clf.head, &pooled)?;
        let target = Tensor::new(
            batch.iter().map(|&i| self.labels[i]).collect::<Vec<_>>(),
            &dev,
        )?;
        candle_nn::loss::cross_entropy(&logits, &target)
    }
    fn validate(&mut self) -> frugal_train::Result<Option<f64>> {
        Ok(None)
    }
    fn on_best(&mut self, _: usize, _: Option<f64>) -> frugal_train::Result<()> {
        Ok(())
    }
    fn keep_order(&self) -> bool {
        true
    }
}

fn train(a: TrainBench, ctx: &Ctx) -> Result<()> {
    let base = crate::io::encoder_base(&a.base, ctx.quiet)?;
    let dir = crate::io::store(ctx.quiet).ensure("spamassassin")?;
    let n = (a.batch * (a.warmup + a.steps)) as usize;
    // The anchor's batches exactly: its training side (all but every 5th message in sorted
    // order), its texts (bodies without headers), shuffled as Python's random.Random(0) does.
    let mut data: Vec<(String, u32)> = frugal_train::data::spamassassin_raw(&dir)?
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 4)
        .map(|(_, (_, _, spam, raw))| (frugal_train::data::anchor_body(&raw), u32::from(spam)))
        .collect();
    frugal_train::data::python_shuffle(&mut data, 0);
    data.truncate(n);
    let mut clf = frugal_train::classifier::Classifier::new(
        &base,
        vec!["ham".into(), "spam".into()],
        a.seed,
    )?;
    clf.encoder
        .set_max_len(a.max_len as usize)
        .map_err(|e| anyhow::anyhow!("--max-len: {e}"))?;
    // The anchor's model: mean pooling into the head, without sentence-transformers'
    // normalisation (unit vectors give a 2e-5 learning rate a much flatter loss curve).
    clf.encoder.normalize = false;
    let texts: Vec<&str> = data.iter().map(|e| e.0.as_str()).collect();
    let ids = clf
        .encoder
        .tokenize(&texts)?
        .into_iter()
        .map(|t| t.ids)
        .collect();
    let labels = data.iter().map(|e| e.1).collect();
    clf.encoder.model.train = true;
    let vars = clf.trained_vars(frugal_train::classifier::Mode::Full);
    let mut task = BenchTask {
        clf,
        ids,
        labels,
        len: a.max_len as usize,
        seed: a.seed,
    };
    let config = frugal_train::trainer::TrainConfig {
        epochs: 1,
        lr: 2e-5,
        batch: a.batch as usize,
        accum: 1,
        weight_decay: 0.01,
        warmup: 0.0,
        clip: 0.0,
        seed: 0,
        patience: 0,
        optimizer: frugal_train::trainer::Optimizer::AdamW,
        // Constant, as the anchor's loop.
        decay: false,
    };
    let mut t_start = None;
    let mut t_end = std::time::Instant::now();
    let warm = a.warmup as usize;
    let control = frugal_train::trainer::Control::default();
    let mut losses = vec![];
    frugal_train::trainer::fit(&mut task, vars, &config, &control, &mut |p| {
        if p.step == warm {
            t_start = Some(std::time::Instant::now());
        }
        t_end = std::time::Instant::now();
        losses.push((p.loss * 1e5).round() / 1e5);
    })?;
    let timed = (t_end - t_start.unwrap_or(t_end)).as_secs_f64();
    let examples = (a.steps * a.batch) as f64;
    print(
        a.json,
        serde_json::json!({
            "examples_per_s": round1(examples / timed.max(1e-9)),
            "step_s": round3(timed / a.steps as f64),
            "peak_rss_mb": round1(peak_rss_mb()),
            "threads": ctx.threads,
            "batch": a.batch,
            "max_len": a.max_len,
            "steps": a.steps,
            "losses": losses,
        }),
    );
    Ok(())
}

/// The SFT loss on encoded pairs, counting the tokens each step processes.
struct SftBenchTask<'a> {
    model: &'a frugal_models::chat::lora::LoraLlama,
    data: Vec<frugal_train::sft::Encoded>,
    tokens: std::rc::Rc<std::cell::Cell<usize>>,
}

impl frugal_train::trainer::Task for SftBenchTask<'_> {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn loss(&mut self, batch: &[usize]) -> candle_core::Result<candle_core::Tensor> {
        let refs: Vec<_> = batch.iter().map(|&i| &self.data[i]).collect();
        self.tokens
            .set(self.tokens.get() + refs.iter().map(|e| e.ids.len()).sum::<usize>());
        frugal_train::sft::batch_loss(self.model, &refs)
    }
    fn validate(&mut self) -> frugal_train::Result<Option<f64>> {
        Ok(None)
    }
    fn on_best(&mut self, _: usize, _: Option<f64>) -> frugal_train::Result<()> {
        Ok(())
    }
}

fn sft(a: SftBench, ctx: &Ctx) -> Result<()> {
    use frugal_models::chat::lora::{LoraConfig, LoraLlama};
    let base = crate::sft_cmd::gguf_path(&a.base, "--base", ctx.quiet)?;
    let n = (a.batch * (a.warmup + a.steps)) as usize;
    let pairs: Vec<_> = crate::sft_cmd::pairs(&a.data, "train", "--data", ctx.quiet)?
        .into_iter()
        .take(n)
        .collect();
    if pairs.len() < n {
        anyhow::bail!(
            "--data {}: {} pairs, the benchmark needs batch × (warmup + steps) = {n}",
            a.data,
            pairs.len()
        );
    }
    let chat = frugal_models::chat::ChatModel::load(&base)?;
    let (data, _) = frugal_train::sft::encode(&chat, &pairs, a.max_len as usize)?;
    drop(chat);
    let lora = LoraConfig {
        rank: a.rank as usize,
        ..Default::default()
    };
    let mut model = LoraLlama::load(&base, lora, 0)?;
    model.train = true;
    let vars = model.adapter_vars();
    let tokens = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut task = SftBenchTask {
        model: &model,
        data,
        tokens: tokens.clone(),
    };
    let config = frugal_train::trainer::TrainConfig {
        epochs: 1,
        lr: 1e-3,
        batch: a.batch as usize,
        weight_decay: 0.0,
        warmup: 0.0,
        patience: 0,
        ..Default::default()
    };
    let (mut t_start, mut tok_start) = (None, 0);
    let mut t_end = Instant::now();
    let warm = a.warmup as usize;
    frugal_train::trainer::fit(
        &mut task,
        vars,
        &config,
        &frugal_train::trainer::Control::default(),
        &mut |p| {
            if p.step == warm {
                t_start = Some(Instant::now());
                tok_start = tokens.get();
            }
            t_end = Instant::now();
        },
    )?;
    let timed = (t_end - t_start.unwrap_or(t_end)).as_secs_f64();
    let timed_tokens = tokens.get() - tok_start;
    print(
        a.json,
        serde_json::json!({
            "tokens_per_s": round1(timed_tokens as f64 / timed.max(1e-9)),
            "examples_per_s": round3((a.steps * a.batch) as f64 / timed.max(1e-9)),
            "step_s": round3(timed / a.steps as f64),
            "tokens": timed_tokens,
            "trainable_params": model.trainable_params(),
            "peak_rss_mb": round1(peak_rss_mb()),
            "threads": ctx.threads,
            "batch": a.batch,
            "steps": a.steps,
        }),
    );
    Ok(())
}
