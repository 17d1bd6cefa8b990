//! `frugal embed`: sentence vectors from an encoder.

use crate::io::{load_encoder, progress, texts_from};
use crate::Ctx;
use anyhow::Result;
use clap::Args;
use std::io::Write;

#[derive(Args)]
pub struct EmbedArgs {
    /// Encoder: asset name, or a Hugging Face model folder.
    #[arg(long, default_value = "minilm")]
    model: String,
    /// Texts to embed; without them, one text per line of stdin.
    texts: Vec<String>,
    /// One JSON line per text: {"text", "embedding"}.
    #[arg(long)]
    json: bool,
    /// Texts per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Truncate texts to this many tokens (default: the model's own max length).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=8192))]
    max_len: Option<u32>,
}

pub fn run(a: EmbedArgs, ctx: &Ctx) -> Result<()> {
    let texts = texts_from(a.texts)?;
    let mut enc = load_encoder(&a.model, ctx.quiet)?;
    crate::io::apply_precision(&mut enc, ctx)?;
    if let Some(m) = a.max_len {
        enc.set_max_len(m as usize)
            .map_err(|e| anyhow::anyhow!("--max-len: {e}"))?;
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let pb = progress(refs.len() as u64, ctx.quiet, "embedding");
    let emb = enc.embed(&refs, a.batch as usize, &mut |done| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    let mut out = std::io::stdout().lock();
    for (text, v) in texts.iter().zip(&emb.vectors) {
        if a.json {
            writeln!(out, "{}", serde_json::json!({"text": text, "embedding": v}))?;
        } else {
            let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:+.4}")).collect();
            let shown: String = text.chars().take(48).collect();
            let ell = if text.chars().count() > 48 { "…" } else { "" };
            writeln!(
                out,
                "{shown}{ell}\t[{}, … {} dims]",
                head.join(", "),
                v.len()
            )?;
        }
    }
    if emb.truncated > 0 && !ctx.quiet {
        eprintln!(
            "frugal: {} of {} texts were longer than {} tokens and were truncated",
            emb.truncated,
            texts.len(),
            enc.max_len()
        );
    }
    Ok(())
}
