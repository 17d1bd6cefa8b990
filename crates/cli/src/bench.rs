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
