//! `frugal generate`: one completion from a GGUF chat model, streamed to stdout.

use crate::{Ctx, SamplingArgs};
use anyhow::Result;
use clap::Args;
use frugal_models::chat::{GenerateOptions, Message};
use std::io::Write;

#[derive(Args)]
pub struct GenerateArgs {
    /// Chat model: asset name or .gguf file.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// A LoRA adapter from `frugal sft` to apply to the model.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// The prompt (a user message, unless --raw).
    #[arg(long)]
    prompt: String,
    /// A system message to put before the prompt.
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Feed the prompt as-is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Print one JSON object with the text, token counts and speeds instead of streaming.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: GenerateArgs, ctx: &Ctx) -> Result<()> {
    if a.prompt.is_empty() {
        anyhow::bail!("--prompt is empty; give the text to respond to");
    }
    let model = crate::sft_cmd::load_adapted(&a.model, a.adapter.as_deref(), ctx.quiet)?;
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let mut msgs = vec![];
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s.clone()));
        }
        msgs.push(Message::new("user", a.prompt.clone()));
        model.render(&msgs)?
    };
    let ids = model.tokenizer.encode(&text)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens as usize,
        sampling: a.sampling.params(),
        stop: a.sampling.stop.clone(),
    };
    let mut cache = model.new_cache();
    let mut out = std::io::stdout().lock();
    let stream = !a.json;
    let mut write_error = None;
    let g = model.generate(&ids, &opts, &mut cache, &mut |piece| {
        if !stream {
            return true;
        }
        // Stop generating as soon as nobody reads the output.
        match out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                write_error = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if a.json {
        let v = serde_json::json!({
            "text": g.text,
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "finish_reason": g.finish_reason.as_str(),
            "prompt_tokens_per_s": round1(g.prompt_tokens_per_s()),
            "tokens_per_s": round1(g.tokens_per_s()),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out)?;
        if !ctx.quiet {
            eprintln!(
                "[{} prompt tokens at {:.0}/s, {} generated at {:.0}/s, finish: {}]",
                g.prompt_tokens,
                g.prompt_tokens_per_s(),
                g.completion_tokens,
                g.tokens_per_s(),
                g.finish_reason.as_str()
            );
        }
    }
    Ok(())
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
